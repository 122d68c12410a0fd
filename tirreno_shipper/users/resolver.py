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
import secrets
import threading
import time
from collections.abc import Callable, Iterator

import sqlalchemy
import structlog
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from tirreno_shipper.config import UsersConfig, database_url_problem, scrub_urls
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.metrics import RESOLVER_CACHE, RESOLVER_ERRORS, RESOLVER_QUERY_LATENCY
from tirreno_shipper.records import Request, User
from tirreno_shipper.users.cache import TtlLru
from tirreno_shipper.users.keys import KeyExtractor, key_digest, sha256_hex
from tirreno_shipper.users.rows import COLUMN_FIELDS, column_field, map_row
from tirreno_shipper.users.sql import (
    connect_args,
    driver_hint,
    mask_secrets,
    option_hint,
    read_only_sqlite,
    safe_url,
    url_secrets,
)

log = structlog.get_logger(__name__)

# A logout is logged after the application deleted the session row, so the
# row is gone by the time the line is resolved. Remembering who used a key for
# a day attributes that logout (and the requests racing it) to the right user.
LAST_SEEN_TTL = 24 * 3600.0
LAST_SEEN_MIN_SIZE = 10_000
# Longer keys are cached under their digest, bounding the cache's memory.
_CACHE_KEY_CHARS = 128


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
        self._key_of = KeyExtractor(config)
        self._stmt = sqlalchemy.text(config.query)
        self._cache = TtlLru(config.cache_size)
        self._last_seen = TtlLru(max(config.cache_size, LAST_SEEN_MIN_SIZE))
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
            self._secrets = url_secrets(url)
            self._safe_url = safe_url(url)
            url = read_only_sqlite(url)
            self._engine: Engine = sqlalchemy.create_engine(
                url,
                pool_pre_ping=True,
                # Keeps bound values (session keys) out of SQLAlchemy's messages.
                hide_parameters=True,
                connect_args=connect_args(url, config.timeout),
            )
        except NoSuchModuleError as exc:
            raise ResolverError(
                f"users.database: no SQLAlchemy dialect for this URL ({exc}); "
                + driver_hint(config.database)
            ) from None
        except ImportError as exc:
            raise ResolverError(
                f"users.database: the database driver is not installed ({exc.name}); "
                + driver_hint(config.database)
            ) from None
        except (SQLAlchemyError, ValueError) as exc:
            # A driver refuses an option (?read_timeout=abc: "invalid literal for
            # int() with base 10: 'abc'"): its words, naming the option, no secret.
            text = (str(exc).strip().splitlines() or [""])[0]
            hint = option_hint(url, text) if url is not None else ""
            detail = self._scrub(text) + hint if url is not None else ""
            raise ResolverError(
                f"users.database: cannot use this URL: {type(exc).__name__}"
                + (f": {detail}" if detail else "")
            ) from None

    def _scrub(self, text: str) -> str:
        """``text`` without this URL's credentials (nor those of any URL it quotes)."""
        return scrub_urls(mask_secrets(text, self._secrets))

    def key_for(self, request: Request) -> str | None:
        """The (transformed) lookup key of a request, or ``None`` when it has none."""
        return self._key_of(request)

    # --- resolving -------------------------------------------------------------

    def resolve(self, key: str) -> User | None:
        """The user for ``key``, or ``None``; raises `ResolverError` if the database fails."""
        now = self._clock()
        ck = key if len(key) <= _CACHE_KEY_CHARS else "#" + sha256_hex(key)
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
            log.debug("resolver_last_seen_used", site=self.site, key_tag=key_digest(key))
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
                key_tag=key_digest(key),
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
        fields = {column_field(c) for c in columns}
        if "user_name" not in fields:
            raise ResolverError(
                f"user database {self._safe_url}: the query returns no user name column "
                f"(got {', '.join(map(str, columns)) or 'none'}); select one AS user_name"
            )
        ignored = [str(c) for c in columns if column_field(c) is None]
        if ignored:
            log.warning(
                "resolver_columns_ignored",
                site=self.site,
                columns=ignored,
                hint=f"columns ignored: {', '.join(ignored)} (a user's fields are taken from "
                f"columns named {', '.join(sorted(set(COLUMN_FIELDS.values())))}: alias them "
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
