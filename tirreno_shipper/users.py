"""Session key → user record, through the operator's own SQL.

The key is taken from the request (a cookie, a logged field or a logged
header), optionally hashed the way the application stores it, and bound as
``:key`` into the configured query, run through SQLAlchemy Core. Values are
only ever bound, never formatted into SQL: a cookie is attacker-controlled.

Results are cached (hits for ``cache_ttl``, misses for the shorter
``negative_ttl``) in one bounded LRU. A failing database is never a miss: it
raises `ResolverError`, the daemon pauses the site's tail and retries the same
lines later, so a database outage loses no attribution.

Session keys are credentials: they never appear in logs or error messages
(at most the first hex digits of their SHA-256, in debug logs).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy
import structlog
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from tirreno_shipper.config import (
    CREDENTIAL_QUERY_KEYS,
    UsersConfig,
    database_url_problem,
    scrub_urls,
)
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.metrics import RESOLVER_CACHE, RESOLVER_ERRORS, RESOLVER_QUERY_LATENCY
from tirreno_shipper.records import Request, User

log = structlog.get_logger(__name__)

# A logout is logged after the application deleted the session row, so the
# row is gone by the time the line is resolved. Remembering who used a key for
# a day attributes that logout (and the requests racing it) to the right user.
LAST_SEEN_TTL = 24 * 3600.0
LAST_SEEN_MIN_SIZE = 10_000

# Result column name, lower-cased and without underscores -> User field.
# The normalisation makes ``user_name``, ``userName`` and PostgreSQL's folded
# ``username`` (an unquoted ``AS userName``) all the same column.
_COLUMN_FIELDS: dict[str, str] = {
    "username": "user_name",
    "emailaddress": "email_address",
    "email": "email_address",
    "firstname": "first_name",
    "lastname": "last_name",
    "fullname": "full_name",
    "phonenumber": "phone_number",
    "phone": "phone_number",
    "usercreated": "user_created",
    "datejoined": "user_created",
    "createdat": "user_created",
}

# Request attributes a ``key: {field: ...}`` may name; anything else is looked
# up in ``Request.extra`` under its nginx variable name.
# Longer keys are no session id any framework issues: the request has no key.
MAX_KEY_CHARS = 4096
# Longer keys are cached under their digest, bounding the cache's memory.
_CACHE_KEY_CHARS = 128

_REQUEST_FIELDS = frozenset(
    {"remote_addr", "remote_user", "referer", "user_agent", "accept_language", "session"}
)

_DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
}

# Warned about once per process: ignored result columns, and (under a name no
# column can have) a result without a user name column.
_reported_unknown: set[str] = set()
_NO_NAME_COLUMN = "\x00no user_name column"


def mask_ip(ip: str) -> str:
    """Mask an address exactly as tirreno's PHP tracker does for its default userName.

    Source: tirrenotechnologies/tirreno-php-tracker, ``TirrenoTracker.php``,
    ``maskIp()`` (used by ``getUserName()`` when no user name was set): with a
    ``:`` the last colon-separated group becomes ``*``; otherwise an address of
    four dot-separated parts gets its last part replaced by ``*``; anything else
    is returned unchanged. Doing the same keeps one anonymous visitor the same
    "user" in tirreno whether the PHP tracker or this shipper reported them.
    """
    if ":" in ip:
        parts = ip.split(":")
        parts[-1] = "*"
        return ":".join(parts)
    parts = ip.split(".")
    if len(parts) == 4:
        parts[3] = "*"
    return ".".join(parts)


def anonymous_user(ip: str) -> User:
    """The user tirreno's PHP tracker reports for a visitor without an account."""
    return User(user_name=mask_ip(ip))


def _format_time(value: datetime | date) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.strftime("%Y-%m-%d 00:00:00")


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime | date):
        return _format_time(value)
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", errors="replace")
    elif (
        field == "user_created"
        and isinstance(value, int | float | Decimal)
        and not isinstance(value, bool)
    ):
        # An integer creation date is a Unix timestamp (a common schema choice);
        # as a bare number it would mean nothing to tirreno.
        try:
            return _format_time(datetime.fromtimestamp(float(value), UTC))
        except (OverflowError, OSError, ValueError):
            return str(value)
    text = value if isinstance(value, str) else str(value)
    if field == "user_created":
        # SQLite and string columns hand back ISO text; normalise it when it parses.
        try:
            return _format_time(datetime.fromisoformat(text.strip()))
        except ValueError:
            pass
    return text if text.strip() else None


def map_row(row: Mapping[str, Any]) -> User | None:
    """Map a result row to a `User` by column name; ``None`` without a user name."""
    values: dict[str, str] = {}
    unknown: list[str] = []
    named = False
    for column, raw in row.items():
        field = _column_field(column)
        if field is None:
            unknown.append(str(column))
            continue
        named = named or field == "user_name"
        if field in values:  # the first non-empty column of several aliases wins
            continue
        value = _text(raw, field)
        if value is not None:
            values[field] = value
    new = [c for c in unknown if c not in _reported_unknown]
    if new:
        # Once per column: bounded by the query's column list, which the operator wrote.
        _reported_unknown.update(new)
        log.warning(
            "resolver_columns_ignored",
            columns=new,
            known=sorted(set(_COLUMN_FIELDS.values())),
            hint="a user's fields come from columns named as in `known`: alias yours AS one",
        )
    if not named and _NO_NAME_COLUMN not in _reported_unknown:
        _reported_unknown.add(_NO_NAME_COLUMN)
        log.warning(
            "resolver_no_user_name_column",
            columns=[str(c) for c in row],
            hint="every matched session is treated as nobody's (anonymous or dropped, as "
            "users.unresolved says): select the user's name AS user_name",
        )
    if "user_name" not in values:
        return None
    return User(**values)


def _column_field(column: object) -> str | None:
    """The `User` field a result column feeds (``e_mail`` and ``EMAIL`` alike), if any."""
    return _COLUMN_FIELDS.get(str(column).lower().replace("_", ""))


def _sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _key_digest(key: str) -> str:
    """A short, non-reversible tag for a key, for debug logs only."""
    return _sha256_hex(key)[:8]


def _header_variable(header: str) -> str:
    return "http_" + header.strip().lower().replace("-", "_")


def _connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Driver options that bound how long a dead or hung database can block us."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    whole = max(1, math.ceil(timeout))  # several drivers accept whole seconds only
    args: dict[str, Any] = {}
    if backend == "postgresql" and driver in {"psycopg", "psycopg2"}:
        args["connect_timeout"] = max(2, whole)  # libpq treats less than 2 as 2
        # A query that hangs (locks, a runaway plan) is cut by the server. Behind
        # a pgbouncer that rejects startup options, set ?options= in the URL.
        args["options"] = f"-c statement_timeout={int(timeout * 1000)}"
        # A host that is gone, or a network that drops packets, is only noticed by
        # TCP itself: data unacknowledged for the timeout ends the connection, and
        # an idle pooled one is probed. (A proxy that accepts and never answers is
        # caught by the daemon instead: see SiteRunner.check_stuck.)
        args["tcp_user_timeout"] = int(timeout * 1000)
        args["keepalives"] = 1
        args["keepalives_idle"] = whole
        args["keepalives_interval"] = whole
        args["keepalives_count"] = 3
    elif backend in {"mysql", "mariadb"} and driver in {"pymysql", "mysqldb", "mariadbconnector"}:
        args["connect_timeout"] = whole
        args["read_timeout"] = whole
        args["write_timeout"] = whole
    elif backend == "sqlite":
        args["timeout"] = timeout
    # Options the operator wrote in the URL win over ours.
    return {k: v for k, v in args.items() if k not in url.query}


def _driver_hint(database: str) -> str:
    """What to write instead: the URL schemes whose drivers our extras install."""
    scheme = database.partition(":")[0].lower()
    if scheme.startswith("postgres"):
        return (
            "write postgresql+psycopg://user@host/db (psycopg 3, installed by "
            "pip install 'tirreno-shipper[postgres]')"
        )
    if scheme.startswith(("mysql", "mariadb")):
        return (
            "write mysql+pymysql://user@host/db (PyMySQL, installed by "
            "pip install 'tirreno-shipper[mysql]'; it speaks to MariaDB too)"
        )
    return (
        "use postgresql+psycopg://, mysql+pymysql:// or sqlite:///PATH with "
        "pip install 'tirreno-shipper[postgres]' or '[mysql]', or install this URL's driver"
    )


def _values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A URL query parameter's values (SQLAlchemy gives a repeated one as a tuple)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _url_secrets(url: URL) -> tuple[str, ...]:
    """The credentials a URL holds (password, ``?password=`` and the like), longest first,
    each also as the URL writes it percent-encoded: the texts masked in every message."""
    found: set[str] = set()
    values: list[str] = [url.password] if isinstance(url.password, str) else []
    for key, value in url.query.items():
        if key.lower() in CREDENTIAL_QUERY_KEYS:
            values.extend(_values(value))
    for value in values:
        if value:
            found.update(
                {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
            )
    return tuple(sorted(found, key=len, reverse=True))


def _safe_url(url: URL) -> str:
    """The URL as shown in messages: no password, and no value of a credential parameter."""
    text = url.set(query={}).render_as_string(hide_password=True)
    if url.query:
        text += "?" + "&".join(
            f"{urllib.parse.quote_plus(key)}="
            + ("***" if key.lower() in CREDENTIAL_QUERY_KEYS else urllib.parse.quote_plus(value))
            for key in sorted(url.query)
            for value in _values(url.query[key])
        )
    return text


def _mask_secrets(text: str, secrets_: tuple[str, ...]) -> str:
    for secret in secrets_:
        text = text.replace(secret, "***")
    return text


def _option_hint(url: URL, text: str) -> str:
    """Which URL options' values the message of a failed URL names (``read_timeout``)."""
    named = [
        key for key, value in url.query.items() for v in _values(value) if v and repr(v) in text
    ]
    return f" (check the URL option {', '.join(sorted(set(named)))})" if named else ""


def _read_only_sqlite(url: URL) -> URL:
    """A SQLite file URL opened read-only; a file that does not exist is an error.

    sqlite3 would otherwise create an empty database at a mistyped path (even in
    a dry run, which promises to write nothing) and fail later with "no such
    table", hiding the real mistake. We only ever read the users database.
    """
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if database.startswith("file:") or url.query.get("uri"):
        return url  # the operator wrote a URI filename: their mode wins
    if not os.path.isfile(database):
        raise ResolverError(
            f"users.database: no SQLite file at {os.path.abspath(database)} "
            "(a relative sqlite:/// path is taken from the config file's folder)"
        )
    return url.set(
        database="file:" + urllib.parse.quote(os.path.abspath(database)),
        query={**url.query, "mode": "ro", "uri": "true"},
    )


class _TtlLru:
    """A bounded LRU whose entries expire; not thread-safe on its own."""

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[str, tuple[float, User | None]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[bool, User | None]:
        entry = self._data.get(key)
        if entry is None:
            return False, None
        if entry[0] <= now:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, entry[1]

    def put(self, key: str, value: User | None, expires: float) -> None:
        if self._size <= 0:
            return
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class UserResolver:
    """Resolves a request's session key to the user the application knows."""

    def __init__(
        self,
        site: str,
        config: UsersConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.site = site
        self.config = config
        self._clock = clock
        self._key_of = self._key_getter(config)
        self._digest = _DIGESTS.get(config.key.transform)
        self._stmt = sqlalchemy.text(config.query)
        self._cache = _TtlLru(config.cache_size)
        self._last_seen = _TtlLru(max(config.cache_size, LAST_SEEN_MIN_SIZE))
        self._lock = threading.Lock()
        self._failing = False
        # When the query in flight began (monotonic), for the daemon to notice one
        # that hangs past every timeout; None between queries.
        self.query_started: float | None = None
        self._hit = RESOLVER_CACHE.labels(site=site, result="hit")
        self._miss = RESOLVER_CACHE.labels(site=site, result="miss")
        self._latency = RESOLVER_QUERY_LATENCY.labels(site=site)
        self._errors = RESOLVER_ERRORS.labels(site=site)
        problem = database_url_problem(config.database)
        if problem is not None:  # config loading refuses it first; a direct caller too
            raise ResolverError(f"users.database: {problem}")
        self._secrets: tuple[str, ...] = ()
        self._safe_url = "(unparsed URL)"
        url: URL | None = None
        try:
            url = sqlalchemy.make_url(config.database)
            self._secrets = _url_secrets(url)
            self._safe_url = _safe_url(url)
            url = _read_only_sqlite(url)
            self._engine: Engine = sqlalchemy.create_engine(
                url,
                pool_pre_ping=True,
                # Keeps bound values (session keys) out of SQLAlchemy's messages.
                hide_parameters=True,
                connect_args=_connect_args(url, config.timeout),
            )
        except NoSuchModuleError as exc:
            raise ResolverError(
                f"users.database: no SQLAlchemy dialect for this URL ({exc}); "
                + _driver_hint(config.database)
            ) from None
        except ImportError as exc:
            raise ResolverError(
                f"users.database: the database driver is not installed ({exc.name}); "
                + _driver_hint(config.database)
            ) from None
        except (SQLAlchemyError, ValueError) as exc:
            # A driver refuses an option (?read_timeout=abc: "invalid literal for
            # int() with base 10: 'abc'"): its words, naming the option, no secret.
            text = (str(exc).strip().splitlines() or [""])[0]
            hint = _option_hint(url, text) if url is not None else ""
            detail = self._scrub(text) + hint if url is not None else ""
            raise ResolverError(
                f"users.database: cannot use this URL: {type(exc).__name__}"
                + (f": {detail}" if detail else "")
            ) from None

    def _scrub(self, text: str) -> str:
        """``text`` without this URL's credentials (nor those of any URL it quotes)."""
        return scrub_urls(_mask_secrets(text, self._secrets))

    # --- the key ---------------------------------------------------------------

    @staticmethod
    def _key_getter(config: UsersConfig) -> Callable[[Request], str | None]:
        spec = config.key
        if spec.cookie:
            # The parser already extracted the configured cookie into ``session``.
            return lambda r: r.session
        if spec.header:
            name = _header_variable(spec.header)
            return lambda r: r.extra.get(name)
        assert spec.field is not None
        field = spec.field.strip().lstrip("$")
        if field in _REQUEST_FIELDS:
            return lambda r: getattr(r, field)
        return lambda r: r.extra.get(field)

    def key_for(self, request: Request) -> str | None:
        """The (transformed) lookup key of a request, or ``None`` when it has none."""
        value = self._key_of(request)
        if value is None or value == "-" or not value.strip():
            return None
        if len(value) > MAX_KEY_CHARS or "\x00" in value:
            # No framework issues such keys; binding them only invites errors
            # (PostgreSQL refuses NUL) and memory growth in the cache.
            return None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: no driver could send it
                return None
        if self._digest is None:
            return value
        return str(self._digest(value.encode("utf-8")).hexdigest())

    # --- resolving -------------------------------------------------------------

    def resolve(self, key: str) -> User | None:
        """The user for ``key``, or ``None``; raises `ResolverError` if the database fails."""
        now = self._clock()
        ck = key if len(key) <= _CACHE_KEY_CHARS else "#" + _sha256_hex(key)
        with self._lock:
            found, user = self._cache.get(ck, now)
        if found:
            self._hit.inc()
            if user is not None:
                # Last-seen was refreshed when this entry came from the database
                # (at least once per cache_ttl): no need to touch it per request.
                return user
        else:
            self._miss.inc()
            user = self._query(key)
            ttl = self.config.cache_ttl if user is not None else self.config.negative_ttl
            if ttl > 0:
                with self._lock:
                    self._cache.put(ck, user, now + ttl)
        with self._lock:
            if user is not None:
                self._last_seen.put(ck, user, now + LAST_SEEN_TTL)
                return user
            seen, last = self._last_seen.get(ck, now)
        if seen and last is not None:
            log.debug("resolver_last_seen_used", site=self.site, key_tag=_key_digest(key))
            return last
        return None

    def _query(self, key: str) -> User | None:
        started = time.perf_counter()
        self.query_started = time.monotonic()
        try:
            with self._connect() as conn:
                row = conn.execute(self._stmt, {"key": key}).mappings().first()
        except DataError as exc:
            # The database refused this value (text for an integer column, a NUL,
            # an unrepresentable date in the row): asking again can never succeed,
            # and a client-chosen cookie must not be able to pause the site forever.
            self._errors.inc()
            log.info(
                "resolver_key_rejected",
                site=self.site,
                key_tag=_key_digest(key),
                error=self._describe(exc, key),
            )
            return None
        except (SQLAlchemyError, OSError) as exc:
            raise self._failure(exc, key) from None
        finally:
            self.query_started = None
            self._latency.observe(time.perf_counter() - started)
        if self._failing:
            self._failing = False
            log.info("resolver_recovered", site=self.site, database=self._safe_url)
        return None if row is None else map_row(dict(row))

    def _describe(self, exc: BaseException, key: str | None) -> str:
        """The database's own message, first line, with no key or password in it."""
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        text = (str(detail).strip().splitlines() or [""])[0]
        # The server may echo a bound value ("invalid input syntax ...: <key>").
        # Keys too short to be a credential are left, so a message stays readable.
        if key and len(key) >= 4:
            text = text.replace(key, "<key>")
        return f"user database {self._safe_url}: {type(detail).__name__}: {self._scrub(text)}"

    def _failure(self, exc: BaseException, key: str | None) -> ResolverError:
        """Translate a database failure into `ResolverError` without secrets in it."""
        self._errors.inc()
        message = self._describe(exc, key)
        if not self._failing:
            self._failing = True
            log.warning("resolver_failed", site=self.site, error=message)
        return ResolverError(message)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A pooled connection; a URL option the driver does not know is a `ResolverError`.

        PyMySQL raises TypeError for an unknown keyword (``?pwd=``): not a database
        failure, but retrying cannot help either, and it must not be a traceback.
        """
        try:
            conn = self._engine.connect()
        except TypeError as exc:
            raise ResolverError(
                f"{self._describe(exc, None)} (the driver refused an option of the URL's "
                "query string: remove or fix it)"
            ) from None
        with conn:
            yield conn

    def check(self) -> None:
        """Run the query once with a key that cannot exist; raise `ResolverError` if it fails."""
        # A random text key first; a query keyed on an integer column rejects
        # text, so then "-1", which no id or session key is in practice.
        keys = ("tirreno-shipper-check-" + secrets.token_hex(16), "-1")
        for attempt, key in enumerate(keys):
            try:
                with self._connect() as conn:
                    result = conn.execute(self._stmt, {"key": key})
                    columns = list(result.keys())
                    row = result.mappings().first()
                break
            except (SQLAlchemyError, OSError) as exc:
                if isinstance(exc, DataError) and attempt + 1 < len(keys):
                    continue
                raise self._failure(exc, key) from None
        fields = {_COLUMN_FIELDS.get(str(c).lower().replace("_", "")) for c in columns}
        if "user_name" not in fields:
            raise ResolverError(
                f"user database {self._safe_url}: the query returns no user name column "
                f"(got {', '.join(map(str, columns)) or 'none'}); select one AS user_name"
            )
        ignored = [str(c) for c in columns if _column_field(c) is None]
        if ignored:
            log.warning(
                "resolver_columns_ignored",
                site=self.site,
                columns=ignored,
                hint=f"columns ignored: {', '.join(ignored)} (a user's fields are taken from "
                f"columns named {', '.join(sorted(set(_COLUMN_FIELDS.values())))}: alias them "
                "AS one of these)",
            )
        if row is not None:
            log.warning(
                "resolver_check_matched_unknown_key",
                site=self.site,
                hint="a key that cannot exist matched a row: does the query filter on :key?",
            )

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    @property
    def cached(self) -> int:
        """Entries in the cache (hits and misses), for status output."""
        return len(self._cache)
