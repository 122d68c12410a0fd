"""Server fixtures for the end-to-end tests: real nginx, Apache, PostgreSQL, MariaDB.

A missing binary or an unreachable database fails the test with the reason
(`ServerError`, or the database fixtures' message); nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import Database
from tests.integration.harness import UserDirectory, make_directory
from tests.support.fake_sensor import FakeSensor
from tests.support.servers import Apache, Nginx, ServerError


def _start(server_cls: type[Nginx] | type[Apache], workdir: Path) -> Nginx | Apache:
    try:
        return server_cls(workdir).start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """nginx on 127.0.0.1 and [::1], writing the nginx_cookie and json formats."""
    server = _start(Nginx, tmp_path / "nginx")
    assert isinstance(server, Nginx)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def apache(tmp_path: Path) -> Iterator[Apache]:
    """Apache on 127.0.0.1 and [::1], writing apache_cookie and a %{Cookie}i format."""
    server = _start(Apache, tmp_path / "apache")
    assert isinstance(server, Apache)
    try:
        yield server
    finally:
        server.stop()


def _directory(kind: str, engine: Engine) -> Iterator[UserDirectory]:
    db = Database(kind, engine.url.render_as_string(hide_password=False), engine)
    try:
        yield make_directory(db)
    finally:
        db.drop_all()


@pytest.fixture
def pg_users(postgres_engine: Engine) -> Iterator[UserDirectory]:
    """Django-style users and sessions in PostgreSQL (the nginx site's database)."""
    yield from _directory("postgresql", postgres_engine)


@pytest.fixture
def maria_users(mariadb_engine: Engine) -> Iterator[UserDirectory]:
    """Django-style users and sessions in MariaDB (the Apache site's database)."""
    yield from _directory("mariadb", mariadb_engine)


@pytest.fixture
def sensors() -> Iterator[Callable[[str], FakeSensor]]:
    """Start a fake sensor (no rate limit) with the given API key; all stopped after."""
    started: list[FakeSensor] = []

    def make(api_key: str) -> FakeSensor:
        sensor = FakeSensor(api_key, bucket_capacity=0).start()
        started.append(sensor)
        return sensor

    yield make
    for sensor in started:
        sensor.stop()
