"""The users database restarted under load: the tail waits, no line is skipped or misattributed.

Real PostgreSQL and MariaDB servers, each the test's own (`tests.support.databases`):
the machine's shared ones serve other tests at the same moment, whose connections a
restart would cut.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from tests.conftest import Database
from tests.support.databases import OWN_SERVERS, OwnDatabaseServer
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import Shipper
from tests.support.writer import LogWriter, make_config, seq_of, wait_for

USERS = 20
RATE = 100  # lines/s


@pytest.fixture(params=list(OWN_SERVERS))
def own_server(request: pytest.FixtureRequest) -> Iterator[tuple[OwnDatabaseServer, Database]]:
    """A PostgreSQL or MariaDB server of this test's own (it is restarted), and a `Database`
    on it."""
    with OWN_SERVERS[request.param]() as server:
        engine = sqlalchemy.create_engine(server.url, pool_pre_ping=True)
        db = Database(server.kind, server.url, engine)
        try:
            yield server, db
        finally:
            engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_database_restart_skips_no_line(
    own_server: tuple[OwnDatabaseServer, Database], tmp_path: Path
) -> None:
    """The users database restarted mid-load: every logged-in line delivered with its user."""
    server, db = own_server
    table = db.create(
        "sessions",
        "session_key VARCHAR(64) PRIMARY KEY, user_name VARCHAR(100), email VARCHAR(255)",
    )
    users = {f"s{i}-{secrets.token_hex(12)}": f"user{i}" for i in range(USERS)}
    db.execute(
        f"INSERT INTO {table} (session_key, user_name, email) VALUES (:k, :u, :e)",
        [{"k": k, "u": u, "e": f"{u}@example.com"} for k, u in users.items()],
    )
    # Logged-in users, anonymous requests and sessions the database does not know.
    sessions: list[str | None] = [*users, None, "unknown-1", "unknown-2"]
    log = tmp_path / "access.log"
    writer = LogWriter(log, sessions=sessions)
    sensor = FakeSensor(bucket_capacity=0).start()
    shipper = Shipper(
        make_config(
            tmp_path,
            sensor.url,
            log,
            users={
                "key": {"cookie": "sessionid"},
                "database": db.url,
                "query": f"SELECT user_name, email AS email_address FROM {table} "
                "WHERE session_key = :key",
                # Every line asks the database, so the outage cannot hide behind the cache.
                "cache_ttl": 0,
                "negative_ttl": 0,
                "timeout": 2,
                "unresolved": "drop",
            },
        ),
        log_path=tmp_path / "daemon.log",
        start=False,
    )
    try:
        shipper.start()
        writer.start(RATE)
        wait_for(lambda: sensor.wait_accepted(50, 0), 60, "events before the restart")
        began = time.monotonic()
        server.restart()
        outage = time.monotonic() - began
        time.sleep(2)  # lines keep coming after the restart too
        writer.stop()
        logged_in = [s for s in range(writer.seq) if writer.cookie_of[s] in users]
        took = wait_for(
            lambda: set(logged_in) <= {seq_of(r.fields["url"]) for r in list(sensor.accepted)},
            90,
            "every logged-in line after the restart",
        )
        time.sleep(1)  # anything that should not be sent would show up now
    finally:
        writer.close()
        shipper.close()
        sensor.stop()

    received = list(sensor.accepted)
    wrong = []
    for r in received:
        seq = seq_of(r.fields["url"])
        cookie = writer.cookie_of[seq]
        expected = users.get(cookie or "")
        if r.fields.get("userName") != expected:
            wrong.append((seq, expected, r.fields.get("userName")))
    delivered = {seq_of(r.fields["url"]) for r in received}
    paused = [e for e in shipper.logged("site_paused") if e.get("reason") == "resolver_down"]
    print(
        f"\n{db.kind} restart: outage {outage:.1f} s, {len(logged_in)} logged-in lines of "
        f"{writer.seq}, all delivered {took:.1f} s after it; tail paused {len(paused)} time(s)"
    )
    assert shipper.logged("resolver_failed"), "the daemon never saw the outage: nothing tested"
    assert paused, "the tail did not pause while the database was down"
    assert shipper.logged("site_resumed")
    assert set(logged_in) <= delivered
    assert not wrong, f"{len(wrong)} events with the wrong user, e.g. {wrong[:5]}"
