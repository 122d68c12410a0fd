"""The users database through SQLAlchemy Core: one held, read-only connection,
driver options that bound a hang, errors told apart by whose fault they are, and
URLs and messages with no credential in them.

A statement's error caused by the value bound into it (a collation a 4-byte
character cannot be compared in, a text where a number was expected, a
character the connection's encoding lacks) is `ValueFailed`: the one line goes
on unresolved, since asking again can never succeed and any visitor chooses
the value. An error of the connection (refused, reset, timed out) is
`ResolverError`: the site pauses and the lines are read again later.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import sqlalchemy
import structlog
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
    StatementError,
)

from tirreno_shipper.config import CREDENTIAL_QUERY_KEYS, database_url_problem, scrub_urls
from tirreno_shipper.errors import ResolverError

log = structlog.get_logger(__name__)

# A connection idle this long is pinged before use: a server or proxy may have
# closed it meanwhile. Busier connections are used without the round trip.
IDLE_PING_SECONDS = 30.0

# MySQL/MariaDB errors caused by the bound value or the statement, not the server:
# illegal mix of collations (1267, 1270, 1271), incorrect string value (1366),
# invalid character string (1300), conversion (3988), and a write refused by the
# read-only session (1792: the query writes, which no key can fix).
_MYSQL_VALUE_ERRORS = frozenset({1267, 1270, 1271, 1300, 1366, 1792, 3988})
# ... and those that no key can cause either: the query itself is wrong (no such
# table or column, a syntax error): pause, say so, and let the operator fix it.
_MYSQL_QUERY_ERRORS = frozenset({1054, 1064, 1146})
# PostgreSQL: a write refused by the read-only session (25006); like MySQL's 1792.
_PG_VALUE_ERRORS = frozenset({"25006"})
# PostgreSQL SQLSTATEs of a wrong query: no such table (42P01), column (42703),
# function (42883), schema (3F000), or a syntax error (42601).
_PG_QUERY_ERRORS = frozenset({"42P01", "42703", "42883", "3F000", "42601"})


# SQLite OperationalErrors that no value causes: the file, its lock, or the query.
_SQLITE_NOT_VALUE = (
    "locked",
    "unable to open",
    "disk i/o",
    "no such table",
    "no such column",
    "no such function",
    "syntax error",
    "not a database",
    "malformed database",
    "interrupted",
)


class ValueFailed(Exception):
    """The statement failed because of the value bound into it (``message`` has no key)."""


def _codes(exc: DBAPIError) -> set[object]:
    """The error's SQLSTATE (psycopg) and number (PyMySQL), whichever it has."""
    orig = exc.orig
    args = getattr(orig, "args", ())
    return {getattr(orig, "sqlstate", None), args[0] if args else None}


def value_error(exc: BaseException) -> bool:
    """Whether ``exc`` belongs to the statement and its value, not to the connection."""
    if isinstance(exc, UnicodeError):  # a character the connection's encoding lacks
        return True
    if isinstance(exc, DBAPIError):
        codes = _codes(exc)
        if isinstance(exc, DataError | IntegrityError):
            return True
        if isinstance(exc, ProgrammingError):
            return not codes & (_PG_QUERY_ERRORS | _MYSQL_QUERY_ERRORS)
        if codes & _PG_VALUE_ERRORS:
            return True
        if isinstance(exc, OperationalError):
            if codes & _MYSQL_VALUE_ERRORS:
                return True
            if type(exc.orig).__module__.startswith("sqlite3"):
                # SQLite says OperationalError for a function failing on this value
                # (json_extract: "malformed JSON") as for a locked or lost file.
                text = str(exc.orig).lower()
                return not any(words in text for words in _SQLITE_NOT_VALUE)
            return False
        orig = exc.orig
        # The driver refused the value before sending it (psycopg wraps encodings).
        return isinstance(orig, UnicodeError) or isinstance(
            getattr(orig, "__cause__", None), UnicodeError
        )
    # SQLAlchemy could not even build the statement's parameters from the value.
    return isinstance(exc, StatementError)


def connect_args(url: URL, timeout: float) -> dict[str, Any]:
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


def driver_hint(database: str) -> str:
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


def url_secrets(url: URL) -> tuple[str, ...]:
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


def safe_url(url: URL) -> str:
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


def mask_secrets(text: str, secrets_: tuple[str, ...]) -> str:
    for secret in secrets_:
        text = text.replace(secret, "***")
    return text


def option_hint(url: URL, text: str) -> str:
    """Which URL options' values the message of a failed URL names (``read_timeout``)."""
    named = [
        key for key, value in url.query.items() for v in _values(value) if v and repr(v) in text
    ]
    return f" (check the URL option {', '.join(sorted(set(named)))})" if named else ""


def read_only_sqlite(url: URL) -> URL:
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


def _read_only(engine: Engine) -> None:
    """Every connection of ``engine`` refuses writes, whatever the query says.

    The query is the operator's text and runs with a visitor's value: a mistake
    (``DELETE ... WHERE :key IS NOT NULL``) must not be able to change the
    application's data. Set per connection, so a URL's options cannot undo it.
    """
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        statement = "PRAGMA query_only = ON"
    elif backend == "postgresql":
        statement = "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
    elif backend in {"mysql", "mariadb"}:
        statement = "SET SESSION TRANSACTION READ ONLY"
    else:
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        if backend == "postgresql" and not getattr(dbapi_connection, "autocommit", True):
            dbapi_connection.commit()


class Database:
    """One users database: a held, read-only, autocommit connection and its errors.

    Held rather than checked out of the pool per key: opening and pre-pinging a
    pooled connection cost more than the query itself. It is pinged only when it
    was idle for `IDLE_PING_SECONDS`, and dropped after a connection error.
    Not thread-safe: each site's resolver owns one.
    """

    def __init__(
        self,
        database: str,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        problem = database_url_problem(database)
        if problem is not None:  # config loading refuses it first; a direct caller too
            raise ResolverError(f"users.database: {problem}")
        self.secrets: tuple[str, ...] = ()
        self.safe_url = "(unparsed URL)"
        url: URL | None = None
        try:
            url = sqlalchemy.make_url(database)
            self.secrets = url_secrets(url)
            self.safe_url = safe_url(url)
            url = read_only_sqlite(url)
            self.engine: Engine = sqlalchemy.create_engine(
                url,
                pool_size=1,
                # Keeps bound values (session keys) out of SQLAlchemy's messages.
                hide_parameters=True,
                isolation_level="AUTOCOMMIT",
                connect_args=connect_args(url, timeout),
            )
        except NoSuchModuleError as exc:
            raise ResolverError(
                f"users.database: no SQLAlchemy dialect for this URL ({exc}); "
                + driver_hint(database)
            ) from None
        except ImportError as exc:
            raise ResolverError(
                f"users.database: the database driver is not installed ({exc.name}); "
                + driver_hint(database)
            ) from None
        except (SQLAlchemyError, ValueError) as exc:
            # A driver refuses an option (?read_timeout=abc: "invalid literal for
            # int() with base 10: 'abc'"): its words, naming the option, no secret.
            text = (str(exc).strip().splitlines() or [""])[0]
            hint = option_hint(url, text) if url is not None else ""
            detail = self.scrub(text) + hint if url is not None else ""
            raise ResolverError(
                f"users.database: cannot use this URL: {type(exc).__name__}"
                + (f": {detail}" if detail else "")
            ) from None
        _read_only(self.engine)
        self._conn: Connection | None = None
        self._used = 0.0
        self._statements: dict[sqlalchemy.TextClause, tuple[str, list[str] | None]] = {}
        self._cursor: Any = None
        self._dbapi_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        # SQLite: a group of lookups shares one read transaction. Each statement
        # on its own takes and drops the file's shared lock and checks whether the
        # file changed: about half of a small lookup's time. A server (PostgreSQL,
        # MariaDB) would pay a round trip for BEGIN and one for COMMIT instead.
        self._group_reads = self.engine.url.get_backend_name() == "sqlite"
        self._grouped = False
        self._reading = False

    def scrub(self, text: str) -> str:
        """``text`` without this URL's credentials (nor those of any URL it quotes)."""
        return scrub_urls(mask_secrets(text, self.secrets))

    def describe(self, exc: BaseException, key: str | None) -> str:
        """The database's own message, first line, with no key or password in it."""
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        text = (str(detail).strip().splitlines() or [""])[0]
        # The server may echo a bound value ("invalid input syntax ...: <key>"), in
        # any case or cast; keys too short to be a credential are left readable.
        if key and len(key) >= 4:
            text = _replace_folded(text, key)
        return f"user database {self.safe_url}: {type(detail).__name__}: {self.scrub(text)}"

    def _connection(self) -> Connection:
        conn = self._conn
        now = self._clock()
        if conn is not None and now - self._used > IDLE_PING_SECONDS:
            try:
                conn.exec_driver_sql("SELECT 1")
            except (SQLAlchemyError, OSError):
                self.drop()
                conn = None
        if conn is None:
            try:
                conn = self.engine.connect()
            except TypeError as exc:
                # PyMySQL raises TypeError for an unknown keyword (``?pwd=``): not a
                # database failure, but retrying cannot help, and it is no traceback.
                raise ResolverError(
                    f"{self.describe(exc, None)} (the driver refused an option of the URL's "
                    "query string: remove or fix it)"
                ) from None
            self._conn = conn
        self._used = now
        return conn

    def execute(
        self, statement: sqlalchemy.TextClause, params: Mapping[str, object], key: str
    ) -> tuple[list[str], Mapping[str, Any] | None]:
        """(columns, first row or ``None``) of ``statement``; raises `ValueFailed` for
        an error of the value, `ResolverError` for one of the connection."""
        try:
            conn = self._connection()
        except (SQLAlchemyError, OSError) as exc:
            # Whatever failed while connecting (an option the server refuses
            # included) is no value's fault.
            raise ResolverError(self.describe(exc, None)) from None
        sql, names = self._compiled(statement)
        values: Any = (
            [params[n] for n in names] if names is not None else {n: params[n] for n in params}
        )
        dbapi_error = self._dbapi_error
        try:
            # The driver's own cursor, on the held connection: SQLAlchemy's result
            # machinery costs several times the query on a small SQLite lookup.
            cursor = self._cursor
            if cursor is None:
                cursor = self._cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            if self._grouped and not self._reading:
                cursor.execute("BEGIN")
                self._reading = True
            cursor.execute(sql, values)
            columns = [str(d[0]) for d in cursor.description or ()]
            row = cursor.fetchone()
            if row is not None:
                cursor.fetchall()  # the rest, so that the cursor is free for the next
        except (dbapi_error, OSError, UnicodeError) as raw:
            error: BaseException = raw
            if isinstance(raw, dbapi_error):
                error = DBAPIError.instance(
                    sql, None, raw, dbapi_error, hide_parameters=True, dialect=self.engine.dialect
                )
            message = self.describe(error, key)
            if value_error(error):
                raise ValueFailed(message) from None
            self.drop()
            raise ResolverError(message) from None
        return columns, None if row is None else dict(zip(columns, row, strict=False))

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Run the lookups made inside in one read transaction where that is cheaper
        (SQLite); a no-op elsewhere. Not reentrant."""
        if not self._group_reads:
            yield
            return
        self._grouped = True
        try:
            yield
        finally:
            self._grouped = False
            if self._reading:
                self._reading = False
                cursor = self._cursor
                if cursor is not None:  # None: dropped after an error, with its transaction
                    try:
                        cursor.execute("COMMIT")
                    except (self._dbapi_error, OSError):
                        self.drop()

    def _compiled(self, statement: sqlalchemy.TextClause) -> tuple[str, list[str] | None]:
        """The driver's SQL text of ``statement`` and, for a positional paramstyle, the
        order of its parameters (``None``: named), compiled once."""
        found = self._statements.get(statement)
        if found is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            positional = compiled.positiontup
            found = (compiled.string, list(positional or ()) if compiled.positional else None)
            self._statements[statement] = found
        return found

    def drop(self) -> None:
        """Forget the held connection (after an error: the next use opens another)."""
        conn, self._conn, self._cursor = self._conn, None, None
        self._reading = False
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except (SQLAlchemyError, OSError):
                pass

    def close(self) -> None:
        self.drop()
        self.engine.dispose()


def _replace_folded(text: str, key: str) -> str:
    """``text`` with every case-insensitive occurrence of ``key`` replaced by ``<key>``."""
    lowered, needle = text.lower(), key.lower()
    out: list[str] = []
    start = 0
    while (i := lowered.find(needle, start)) >= 0:
        out.append(text[start:i] + "<key>")
        start = i + len(key)
    return "".join(out) + text[start:]
