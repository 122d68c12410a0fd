"""The users database restarted under load: the tail waits, no line is skipped or misattributed.

The real PostgreSQL and MariaDB servers of the machine are restarted: other
tests may be using them, so the outage is kept to a few seconds and the server
is always brought back in a ``finally`` block, even when the test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import Shipper
from tests.support.writer import LogWriter, make_config, seq_of, wait_for

USERS = 20
RATE = 100  # lines/s


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _postgres_up() -> bool:
    return _run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], 10).returncode == 0


def _mariadb_up() -> bool:
    return _run(["mariadb-admin", "-h", "127.0.0.1", "-uroot", "ping"], 10).returncode == 0


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster in /etc/postgresql"
    return versions[-1]


def _pg_ctl(action: str) -> subprocess.CompletedProcess[str]:
    return _run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "-m", "fast", _pg_version(), "main", action]
    )


def restart_postgres() -> None:
    """``pg_ctlcluster ... restart`` in fast mode (active sessions are cut)."""
    try:
        result = _pg_ctl("restart")
        assert result.returncode == 0, f"pg_ctlcluster restart failed: {result.stderr}"
    finally:
        ensure_postgres()


def ensure_postgres() -> None:
    if not _postgres_up():
        _pg_ctl("start")
    wait_for(_postgres_up, 60, "PostgreSQL to answer again", interval=0.2)


def restart_mariadb() -> None:
    """``mariadb-admin shutdown``, then the daemon started again, as .ci/run does."""
    try:
        result = _run(["mariadb-admin", "-h", "127.0.0.1", "-uroot", "shutdown"])
        assert result.returncode == 0, f"mariadb-admin shutdown failed: {result.stderr}"
        wait_for(lambda: not _mariadb_up(), 30, "MariaDB to stop", interval=0.1)
    finally:
        ensure_mariadb()


def ensure_mariadb() -> None:
    deadline = time.monotonic() + 60
    while not _mariadb_up():
        # --oknodo: a no-op while the old process is still shutting down; so ask again.
        _run(
            [
                "start-stop-daemon",
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ]
        )
        assert time.monotonic() < deadline, "MariaDB did not come back within 60 s"
        time.sleep(0.5)


RESTART: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
    "postgresql": (restart_postgres, ensure_postgres),
    "mariadb": (restart_mariadb, ensure_mariadb),
}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_database_restart_skips_no_line(server_database: Database, tmp_path: Path) -> None:
    """The users database restarted mid-load: every logged-in line delivered with its user."""
    db = server_database
    restart, ensure = RESTART[db.kind]
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
        restart()
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
        ensure()  # never leave the shared server down

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
