"""Shared fixtures: real databases (SQLite, PostgreSQL, MariaDB) and generic helpers.

The suite runs in parallel (pytest-xdist, ``-n auto`` in pyproject's addopts): the
scheduling hooks are at the end of this file.

The servers are expected on 127.0.0.1 (PostgreSQL 5432 with trust auth, MariaDB
3306 as root without a password, database ``test``); ``.ci/run`` starts them.
``TEST_POSTGRES_URL`` / ``TEST_MARIADB_URL`` point the tests elsewhere. A server
that cannot be reached fails the tests that need it, with the reason: it is
never a silent skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from tests.support.servers import free_port

POSTGRES_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)
MARIADB_URLS = ("mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4",)
BACKENDS = ("sqlite", "postgresql", "mariadb")
SERVER_BACKENDS = ("postgresql", "mariadb")


@dataclass
class Database:
    """One real database for one test; every table made through it is dropped after."""

    kind: str  # "sqlite" | "postgresql" | "mariadb"
    url: str
    engine: Engine
    tables: list[str] = field(default_factory=list)

    @property
    def timestamp_type(self) -> str:
        # MariaDB's TIMESTAMP converts time zones and auto-updates; DATETIME stores as given.
        return "DATETIME" if self.kind == "mariadb" else "TIMESTAMP"

    def name(self, base: str) -> str:
        """A table name unique to this test, dropped at teardown."""
        table = f"{base}_{secrets.token_hex(4)}"
        self.tables.append(table)
        return table

    def quote(self, identifier: str) -> str:
        return self.engine.dialect.identifier_preparer.quote_identifier(identifier)

    def create(self, base: str, columns: str) -> str:
        """``CREATE TABLE`` a uniquely named table; return its name."""
        table = self.name(base)
        suffix = " DEFAULT CHARSET=utf8mb4" if self.kind == "mariadb" else ""
        self.execute(f"CREATE TABLE {table} ({columns}){suffix}")
        return table

    def execute(
        self, sql: str, params: Mapping[str, Any] | list[dict[str, Any]] | None = None
    ) -> None:
        """Run one statement in its own committed transaction."""
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.text(sql), params or {})

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(sql), params or {})]

    def table_names(self) -> set[str]:
        """Those of this test's tables (made or named through it) that exist: the server's
        database is shared with other tests and runs, which make and drop their own."""
        return set(sqlalchemy.inspect(self.engine).get_table_names()) & set(self.tables)

    def drop_all(self) -> None:
        with self.engine.begin() as conn:
            for table in reversed(self.tables):
                conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table}"))
        self.tables.clear()


def _first_reachable(kind: str, env: str, candidates: tuple[str, ...]) -> Engine:
    urls = (os.environ[env],) if os.environ.get(env) else candidates
    problems = []
    for url in urls:
        engine = sqlalchemy.create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": 5}
        )
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            engine.dispose()
            problems.append(
                f"{engine.url.render_as_string(hide_password=True)}: {exc.__class__.__name__}: "
                f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}"
            )
            continue
        return engine
    pytest.fail(
        f"{kind} is not reachable, tried: {'; '.join(problems)}. Start it (.ci/run does) "
        f"or set {env} to an SQLAlchemy URL of a database the tests may create tables in.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    engine = _first_reachable("PostgreSQL", "TEST_POSTGRES_URL", POSTGRES_URLS)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mariadb_engine() -> Iterator[Engine]:
    engine = _first_reachable("MariaDB", "TEST_MARIADB_URL", MARIADB_URLS)
    yield engine
    engine.dispose()


def _database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if kind == "sqlite":
        # Created here, as an application creates its database: the resolver
        # opens SQLite files read-only and refuses a path with no file.
        (tmp_path / "users.sqlite").touch()
        url = f"sqlite:///{tmp_path / 'users.sqlite'}"
        engine = sqlalchemy.create_engine(url)
        owned = True
    else:
        engine = request.getfixturevalue(
            "postgres_engine" if kind == "postgresql" else "mariadb_engine"
        )
        url = engine.url.render_as_string(hide_password=False)
        owned = False
    db = Database(kind, url, engine)
    try:
        yield db
    finally:
        db.drop_all()
        if owned:
            engine.dispose()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real SQLite file, PostgreSQL or MariaDB database, in turn."""
    yield from _database(request.param, request, tmp_path)


@pytest.fixture(params=SERVER_BACKENDS)
def server_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real PostgreSQL or MariaDB database, for what only a server can do (time-outs)."""
    yield from _database(request.param, request, tmp_path)


@pytest.fixture
def unused_tcp_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


# -- running in parallel (pytest-xdist) ---------------------------------------------

LONG_MARKERS = ("slow", "integration")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers a core. The suite mostly waits (on real servers, daemons,
    sensors down for a while), so more workers than cores overlap the waits.
    PYTEST_XDIST_AUTO_NUM_WORKERS still decides when it is set (None hands over to
    xdist's own hook)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return 2 * len(os.sched_getaffinity(0))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests (slow, integration) first: one drawn at the end would run alone while the
    other workers idle; first, it overlaps with the many short ones. The sort is stable, so
    each module's tests keep their order (and a module-scoped fixture is set up once per
    worker that runs them; see tests/support/shared.py for one too costly for that).

    Not ``--dist loadgroup`` with ``xdist_group`` marks: pytest 9.2 no longer reads the
    node id xdist 3.8 rewrites to carry the group, so the groups are silently ignored."""
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in LONG_MARKERS))
