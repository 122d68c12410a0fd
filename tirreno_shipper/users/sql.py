"""SQLAlchemy engines for the users database: driver options, read-only opening, and
URLs and messages with no credential in them."""

from __future__ import annotations

import math
import os
import urllib.parse
from typing import Any

from sqlalchemy.engine import URL

from tirreno_shipper.config import CREDENTIAL_QUERY_KEYS
from tirreno_shipper.errors import ResolverError


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
