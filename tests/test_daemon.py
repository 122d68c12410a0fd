"""The daemon as a real subprocess: signals, reload, a database outage, --once and its logs."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from tests.conftest import Database, _database
from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.inprocess import daemon_thread
from tests.support.proxy import StallingProxy
from tests.support.servers import free_port
from tests.support.shipper import (
    ROOT,
    Shipper,
    append,
    child_env,
    metric,
    nginx_line,
    run_cli,
    running,
    scrape_metrics,
    site,
    spooled_ids,
    wait_until,
    write_config,
)
from tests.support.writer import checkpoints
from tirreno_shipper.tail import identify

KEY = "test-key"


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(api_key=KEY, bucket_capacity=0) as s:
        yield s


def urls(sensor: FakeSensor) -> list[str]:
    return [r.fields["url"] for r in list(sensor.accepted)]


def pages(prefix: str, start: int, stop: int) -> list[str]:
    return [nginx_line(f"/{prefix}/{i}") for i in range(start, stop)]


def delivered(sensor: FakeSensor, prefix: str) -> set[str]:
    return {u for u in urls(sensor) if u.startswith(f"/{prefix}/")}


def expect(prefix: str, start: int, stop: int) -> set[str]:
    return {f"/{prefix}/{i}" for i in range(start, stop)}


# -- SIGTERM ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_while_sending_exits_0_in_the_grace_and_a_restart_delivers_the_rest(
    tmp_path: Path,
) -> None:
    """SIGTERM mid-send exits 0 within the grace; after a restart every line is delivered once."""
    with FakeSensor(api_key=KEY, bucket_capacity=0, delay=0.05) as sensor:
        log = tmp_path / "access.log"
        append(log, pages("p", 0, 40))
        cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)], shutdown_grace=3)
        with running(cfg) as shipper:
            assert sensor.wait_accepted(5, 20)
            append(log, pages("p", 40, 60))
            assert len(sensor.accepted) < 60, "the test wants SIGTERM while events are being sent"
            started = time.monotonic()
            shipper.signal(signal.SIGTERM)
            code = shipper.wait(3 + 5)  # the grace, plus a loaded machine's slack
            took = time.monotonic() - started
            assert code == 0, shipper.stderr()[-3000:]
            assert took < 3 + 5
            assert shipper.logged("daemon_stopped")
            assert not shipper.logged("sender_stop_grace_expired")
        before = len(sensor.accepted)
        assert before < 60
        again = run_cli("run", "-c", str(cfg), "--once")
        assert again.returncode == 0, again.stderr[-3000:]
        assert delivered(sensor, "p") == expect("p", 0, 60)
        ids = Counter(sensor.accepted_ids())
        assert None not in ids
        assert len(ids) == 60
        # At-least-once: only a request in flight at the signal may come twice
        # (the grace let them finish here, so normally none does).
        assert sum(n - 1 for n in ids.values()) <= 2


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_next_start_delivers_the_spool(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A second SIGTERM during a long shutdown exits at once; nothing spooled is lost."""
    sensor.set_mode("hang")  # requests never answer: the first SIGTERM waits for the grace
    log = tmp_path / "access.log"
    append(log, pages("h", 0, 10))
    cfg = write_config(
        tmp_path / "c.yaml",
        [site("a", sensor.url, log, sensor={"timeout": 30})],
        shutdown_grace=30,
    )
    state = tmp_path / "state"
    with running(cfg) as shipper:
        assert wait_until(lambda: len(spooled_ids(state, "a")) == 10, 20)
        assert wait_until(lambda: sensor.hanging >= 1, 20)
        shipper.signal(signal.SIGTERM)
        shipper.wait_log("daemon_stopping")
        started = time.monotonic()
        shipper.signal(signal.SIGTERM)
        code = shipper.wait(10)
        assert time.monotonic() - started < 5
        assert code == 130
        assert shipper.logged("second_signal_exit"), shipper.stderr()[-2000:]
    assert len(spooled_ids(state, "a")) == 10
    sensor.set_mode("ok")
    again = run_cli("run", "-c", str(cfg), "--once")
    assert again.returncode == 0, again.stderr[-3000:]
    assert delivered(sensor, "h") == expect("h", 0, 10)
    assert spooled_ids(state, "a") == []


# -- SIGHUP -----------------------------------------------------------------------


@pytest.mark.slow
def test_sighup_adds_and_restarts_changed_sites_and_leaves_the_others_running(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A valid reload starts an added site, restarts a changed one and never touches the rest."""
    logs = {n: tmp_path / f"{n}.log" for n in "abc"}
    for name in "abc":
        append(logs[name], pages(name, 0, 3))
    cfg = write_config(
        tmp_path / "c.yaml", [site("a", sensor.url, logs["a"]), site("b", sensor.url, logs["b"])]
    )
    with running(cfg) as shipper:
        assert wait_until(lambda: len(sensor.accepted) >= 6, 20)
        pid = shipper.logged("daemon_started")[0]["pid"]
        write_config(
            cfg,
            [
                site("a", sensor.url, logs["a"]),
                site("b", sensor.url, logs["b"], sensor={"concurrency": 1}),
                site("c", sensor.url, logs["c"]),
            ],
        )
        shipper.signal(signal.SIGHUP)
        shipper.wait_log("reloaded")
        assert shipper.logged("site_added", site="c")
        assert shipper.logged("site_reconfigured", site="b")
        assert shipper.logged("sender_stopped", site="b")
        # The unchanged site was never stopped: one sender start, no stop.
        assert len(shipper.logged("sender_started", site="a")) == 1
        assert not shipper.logged("sender_stopped", site="a")
        assert not shipper.logged("site_stopped", site="a")
        for name in "abc":
            append(logs[name], pages(name, 3, 6))
        assert wait_until(
            lambda: all(delivered(sensor, n) == expect(n, 0, 6) for n in "abc"), 20
        ), urls(sensor)
        assert shipper.proc.poll() is None
        assert shipper.logged("reloaded")[0].get("sites") == ["a", "b", "c"]
        assert pid == shipper.pid
        assert shipper.stop() == 0
    ids = Counter(sensor.accepted_ids())
    assert len(ids) == 18 and max(ids.values()) == 1


def test_sighup_removing_a_site_with_spooled_events_warns_how_many_are_left(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A removed site's undelivered events stay in the spool, unsent: the reload says so."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, pages("a", 0, 2))
    append(b, pages("b", 0, 4))
    down = f"http://127.0.0.1:{free_port()}/sensor/"  # nothing listens: b's events wait
    port = free_port()
    top = {"metrics": {"listen": f"127.0.0.1:{port}"}}
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, a), site("b", down, b)], **top)
    with running(cfg) as shipper:
        assert wait_until(lambda: len(spooled_ids(tmp_path / "state", "b")) == 4, 20)
        assert wait_until(
            lambda: metric(scrape_metrics(port), "tirreno_shipper_spool_depth", site="b") == 4, 20
        )
        write_config(cfg, [site("a", sensor.url, a)], **top)
        shipper.signal(signal.SIGHUP)
        shipper.wait_log("reloaded")
        (removed,) = shipper.logged("site_removed", site="b")
        assert removed["level"] == "warning" and removed["events_left"] == 4
        assert "add the site back" in removed["hint"]
        # Its last depth, lag and sensor state are no longer exported (nor alerted on).
        samples = scrape_metrics(port)
        assert not [key for key in samples if ("site", "b") in key[1]]
        assert metric(samples, "tirreno_shipper_events_sent_total", site="a") == 2
        # `status` still shows the events left behind.
        out = run_in_process("status", "-c", str(cfg))
        assert out.returncode == 0, out.stderr
        assert "site b (not in the configuration): 4 events spooled" in out.stdout
        assert shipper.stop() == 0


def cookie_site(
    name: str, sensor_url: str, log: Path, database: str, query: str, **users: Any
) -> dict[str, Any]:
    """A site reading nginx_cookie lines whose users come from ``query`` on ``database``."""
    return site(
        name,
        sensor_url,
        log,
        log={"format": "nginx_cookie"},
        users={"key": {"cookie": "sessionid"}, "database": database, "query": query, **users},
    )


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from _database("postgresql", request, tmp_path)


@pytest.mark.slow
def test_a_reload_while_the_tail_waits_on_slow_user_lookups_spools_nothing_twice(
    tmp_path: Path, sensor: FakeSensor, postgres: Database
) -> None:
    """The replaced site's tail is inside a chunk's lookups (400 x 20 ms, longer than a stop
    waits for it) when SIGHUP comes: it must not commit that chunk after its successor has
    read the same checkpoint."""
    users = postgres.create("users", "session_key VARCHAR(64) PRIMARY KEY, username VARCHAR(64)")
    postgres.execute(
        f"INSERT INTO {users} (session_key, username) VALUES (:k, :u)",
        [{"k": f"s{i}", "u": f"user{i}"} for i in range(400)],
    )
    log = tmp_path / "a.log"
    append(log, [nginx_line(f"/r/{i}", cookie=f"s{i}") for i in range(400)])
    conf = cookie_site(
        "a",
        sensor.url,
        log,
        postgres.url,
        f"SELECT username AS user_name FROM {users}, pg_sleep(0.02) WHERE session_key = :key",
    )
    cfg = write_config(tmp_path / "c.yaml", [conf])
    with running(cfg) as shipper:
        shipper.wait_log("site_started")
        time.sleep(1.0)  # well inside the chunk's 8 s of lookups
        conf["sensor"]["timeout"] = 3  # any change restarts the site
        write_config(cfg, [conf])
        shipper.signal(signal.SIGHUP)
        shipper.wait_log("reloaded")
        assert shipper.logged("site_reconfigured", site="a")
        assert sensor.wait_accepted(400, 40)
        time.sleep(3.0)  # the replaced tail has long finished its lookups
        assert shipper.stop() == 0
    ids = Counter(sensor.accepted_ids())
    assert len(ids) == 400 and max(ids.values()) == 1, ids.most_common(3)


@pytest.mark.slow
def test_a_user_query_hung_behind_a_stalled_proxy_shows_as_the_database_down(
    tmp_path: Path, sensor: FakeSensor, postgres: Database
) -> None:
    """The database is reached through a proxy that stops passing bytes, connections open:
    no server or TCP time-out fires. The site must say it waits on its database (status,
    metric), not look healthy while shipping nothing; and go on when the proxy does."""
    users = postgres.create("users", "session_key VARCHAR(64) PRIMARY KEY, username VARCHAR(64)")
    postgres.execute(
        f"INSERT INTO {users} (session_key, username) VALUES (:k, :u)",
        [{"k": f"s{i}", "u": f"user{i}"} for i in range(3)],
    )
    url = postgres.engine.url
    with contextlib.closing(StallingProxy((url.host or "127.0.0.1", url.port or 5432))) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        log = tmp_path / "a.log"
        log.touch()
        query = f"SELECT username AS user_name FROM {users} WHERE session_key = :key"
        conf = cookie_site("shop", sensor.url, log, proxied, query, cache_ttl=0, timeout=1)
        cfg = write_config(tmp_path / "c.yaml", [conf])
        with running(cfg) as shipper:
            append(log, [nginx_line("/h/0", cookie="s0")])
            assert sensor.wait_accepted(1, 20)
            proxy.stall()
            append(log, [nginx_line("/h/1", cookie="s1")])
            assert wait_until(lambda: shipper.site_status()["paused"] == "resolver_down", 30)
            status = shipper.site_status()
            assert "a user query has not answered for" in status["last_error"]
            assert "the database or the network to it hangs" in status["last_error"]
            proxy.resume()
            assert sensor.wait_accepted(2, 30)
            assert wait_until(lambda: shipper.site_status()["paused"] is None, 20)
            assert shipper.stop() == 0
    assert sorted(r.fields["url"] for r in sensor.accepted) == ["/h/0", "/h/1"]
    assert {r.fields["userName"] for r in sensor.accepted} == {"user0", "user1"}


@pytest.mark.slow
def test_sighup_with_an_invalid_config_is_rejected_and_the_old_one_keeps_shipping(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """An invalid reload is logged with every reason; the running config keeps shipping."""
    log = tmp_path / "a.log"
    append(log, pages("a", 0, 3))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    with running(cfg) as shipper:
        assert sensor.wait_accepted(3, 20)
        bad = yaml.safe_load(cfg.read_text())
        bad["sites"][0]["sensor"]["rate_limt"] = 3
        bad["sites"][0]["events"] = {"rules": [{"path": "^/x", "type": "page_viewed"}]}
        cfg.write_text(yaml.safe_dump(bad))
        shipper.signal(signal.SIGHUP)
        rejected = shipper.wait_log("reload_rejected")[0]
        problems = " ".join(rejected["problems"])
        assert "sites[0].sensor.rate_limt" in problems
        assert "sites[0].events.rules[0].type" in problems
        assert not shipper.logged("reloaded")
        append(log, pages("a", 3, 8))
        assert wait_until(lambda: delivered(sensor, "a") == expect("a", 0, 8), 20)
        assert shipper.stop() == 0


def test_sighup_with_a_site_whose_sensor_cannot_be_built_keeps_the_daemon_running(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A new site with a broken CA bundle fails alone at reload; the others go on."""
    log = tmp_path / "a.log"
    append(log, pages("a", 0, 2))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with running(cfg) as shipper:
        assert sensor.wait_accepted(2, 20)
        write_config(
            cfg,
            [
                site("a", sensor.url, log),
                site(
                    "tls",
                    "https://127.0.0.1:1/sensor/",
                    tmp_path / "t.log",
                    sensor={"ca_bundle": str(not_pem)},
                ),
            ],
        )
        shipper.signal(signal.SIGHUP)
        shipper.wait_log("site_start_failed", site="tls")
        shipper.wait_log("reloaded")
        append(log, pages("a", 2, 4))
        assert wait_until(lambda: delivered(sensor, "a") == expect("a", 0, 4), 20)
        assert shipper.proc.poll() is None
        assert shipper.stop() == 0


# -- a database outage ------------------------------------------------------------------


@pytest.mark.slow
def test_a_database_outage_pauses_its_site_only_and_nothing_is_skipped(
    tmp_path: Path, sensor: FakeSensor, database: Database
) -> None:
    """Users table gone: that site pauses (status, metric), the other ships; then all arrive."""
    users = database.create("users", "session_key VARCHAR(64) PRIMARY KEY, username VARCHAR(64)")
    away = database.name("users_away")
    database.execute(
        f"INSERT INTO {users} (session_key, username) VALUES (:k, :u)",
        [{"k": f"sess-{i}", "u": f"user{i}"} for i in range(30)],
    )
    db_log, free_log = tmp_path / "db.log", tmp_path / "free.log"
    db_log.touch()
    free_log.touch()
    port = free_port()

    def db_lines(a: int, b: int) -> list[str]:
        return [nginx_line(f"/db/{i}", cookie=f"sess-{i}") for i in range(a, b)]

    cfg = write_config(
        tmp_path / "c.yaml",
        [
            cookie_site(
                "db",
                sensor.url,
                db_log,
                database.url,
                f"SELECT username AS user_name FROM {users} WHERE session_key = :key",
                cache_ttl=0,
                negative_ttl=0,
                timeout=2,
            ),
            site("free", sensor.url, free_log),
        ],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    with running(cfg) as shipper:
        append(db_log, db_lines(0, 5))
        assert wait_until(lambda: delivered(sensor, "db") == expect("db", 0, 5), 20)
        database.execute(f"ALTER TABLE {users} RENAME TO {away}")
        append(db_log, db_lines(5, 15))

        def paused() -> bool:
            r = run_cli("status", "-c", str(cfg), "--json")
            return (
                r.returncode == 0
                and json.loads(r.stdout)["sites"]["db"]["paused"] == "resolver_down"
            )

        assert wait_until(paused, 20, interval=0.3), shipper.stderr()[-3000:]
        samples = scrape_metrics(port)
        assert (
            metric(samples, "tirreno_shipper_site_paused", site="db", reason="resolver_down") == 1
        )
        assert metric(
            samples, "tirreno_shipper_site_paused", site="free", reason="resolver_down"
        ) in (None, 0)
        # Isolation: the other site ships while this one waits.
        append(free_log, pages("free", 0, 5))
        assert wait_until(lambda: delivered(sensor, "free") == expect("free", 0, 5), 20)
        assert delivered(sensor, "db") == expect("db", 0, 5)
        status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
        assert status["sites"]["db"]["last_error"]
        assert status["sites"]["free"]["paused"] is None
        database.execute(f"ALTER TABLE {away} RENAME TO {users}")
        append(db_log, db_lines(15, 20))
        assert wait_until(lambda: delivered(sensor, "db") == expect("db", 0, 20), 45), (
            shipper.stderr()[-3000:]
        )
        shipper.wait_log("site_resumed", site="db")
        samples = scrape_metrics(port)
        assert (
            metric(samples, "tirreno_shipper_site_paused", site="db", reason="resolver_down") == 0
        )
        assert shipper.stop() == 0
    db_events = [r for r in sensor.accepted if r.fields["url"].startswith("/db/")]
    assert sorted(r.fields["userName"] for r in db_events) == sorted(f"user{i}" for i in range(20))
    assert len({r.request_id for r in db_events}) == 20


# -- run --once -----------------------------------------------------------------------


def test_run_once_exits_0_when_everything_is_delivered(tmp_path: Path, sensor: FakeSensor) -> None:
    """``run --once`` ships what the file holds and exits 0 with an empty spool."""
    log = tmp_path / "a.log"
    append(log, pages("o", 0, 12))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    r = run_cli("run", "-c", str(cfg), "--once")
    assert r.returncode == 0, r.stderr[-3000:]
    assert delivered(sensor, "o") == expect("o", 0, 12)
    assert spooled_ids(tmp_path / "state") == []
    assert any(json.loads(x).get("event") == "once_complete" for x in r.stderr.splitlines())


def test_unparseable_lines_are_a_warning_naming_the_file_and_its_format(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Lines the format does not fit are never sent: the daemon says so (once a minute at
    most, with the counts since), not only the metric."""
    log = tmp_path / "a.log"
    append(log, pages("u", 0, 2))
    append(log, ['{"remote_addr": "203.0.113.1", "request": "GET / HTTP/1.1"}\n'] * 3)
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    r = run_in_process("run", "-c", str(cfg), "--once")
    assert r.returncode == 0, r.stderr[-3000:]
    assert delivered(sensor, "u") == expect("u", 0, 2)
    records = [json.loads(x) for x in r.stderr.splitlines()]
    [warning] = [x for x in records if x["event"] == "lines_unparseable"]
    assert warning["level"] == "warning" and warning["site"] == "a"
    assert warning["unparseable"] == {"no_match": 3} and warning["lines_read"] == 5
    assert warning["files"] == {str(log): "read as nginx_combined"}
    assert "tirreno-shipper detect-format FILE" in warning["hint"]


@pytest.mark.parametrize(
    ("cap", "url_chars"),
    [({"max_events": 5}, 10), ({"max_bytes": 3000}, 1000)],
    ids=["events", "bytes"],
)
def test_drop_oldest_keeps_the_spool_at_its_cap_exactly(
    tmp_path: Path, sensor: FakeSensor, cap: dict[str, int], url_chars: int
) -> None:
    """Sensor down, on_full: drop_oldest: the spool fills to its cap and stays there: not one
    event under it (each chunk dropped one too many), nor over it by bytes (events of ~1 KB
    were dropped by count against a byte cap, and the overshoot stayed)."""
    sensor.set_mode("refuse")
    log = tmp_path / "a.log"
    log.touch()
    conf = site("a", sensor.url, log, spool={**cap, "on_full": "drop_oldest"})
    cfg = write_config(tmp_path / "c.yaml", [conf])
    state = tmp_path / "state"

    def query(sql: str) -> tuple[int, ...]:
        with sqlite3.connect(f"file:{state / 'spool.sqlite'}?mode=ro", uri=True) as db:
            return tuple(db.execute(sql).fetchone() or ())

    def held() -> tuple[int, int]:
        row = query("SELECT events, bytes FROM site_totals WHERE site = 'a'")
        return (row[0], row[1]) if row else (0, 0)

    def read_to_end() -> bool:
        return query("SELECT max(byte_offset) FROM checkpoints WHERE site = 'a'") == (
            log.stat().st_size,
        )

    # In this process: what is checked is the spool and a log event, not the process.
    with structlog.testing.capture_logs() as logs, daemon_thread(cfg):
        seen = []
        for i in range(12):
            append(log, [nginx_line(f"/d/{i}/" + "x" * url_chars)])  # a chunk of its own
            assert wait_until(read_to_end, 10)
            seen.append(held())
    # Said once (at most once a minute), not at every chunk.
    [said] = [e for e in logs if e["event"] == "spool_dropped_oldest"]
    assert said["log_level"] == "warning" and said["count"] >= 1
    depths = [d for d, _ in seen]
    if "max_events" in cap:
        assert max(depths) == 5 and depths[-1] == 5, seen
    else:
        assert all(b <= 3000 for _, b in seen), seen
        assert seen[-1][1] > 3000 - 1200, seen  # full, within one event of the cap
    ids = spooled_ids(state, "a")
    assert len(ids) == depths[-1]


def test_run_once_exits_1_with_a_clear_message_when_the_sensor_is_down(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Sensor down: ``run --once`` gives up after once_timeout, exits 1, keeps the events."""
    sensor.set_mode("refuse")
    log = tmp_path / "a.log"
    append(log, pages("d", 0, 4))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)], once_timeout=1)
    started = time.monotonic()
    r = run_in_process("run", "-c", str(cfg), "--once")
    assert r.returncode == 1, r.stderr[-3000:]
    assert time.monotonic() - started < 15
    records = [json.loads(x) for x in r.stderr.splitlines()]
    timeout = [x for x in records if x["event"] == "once_timeout"]
    assert timeout and timeout[0]["level"] == "error"
    assert timeout[0]["events_left"] == {"a": 4}
    assert "next run sends them" in timeout[0]["hint"]
    assert len(spooled_ids(tmp_path / "state", "a")) == 4


def test_run_once_exits_1_naming_a_log_it_cannot_read_and_ships_the_others(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """An unreadable log: ``run --once`` ships the readable one, then exits 1 naming it;
    the warning is logged once, not at every scan."""
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    append(good, pages("g", 0, 5))
    append(bad, pages("b", 0, 5))
    bad.chmod(0)
    cfg = write_config(
        tmp_path / "c.yaml",
        [
            site(
                "a",
                sensor.url,
                good,
                logs=[{"path": str(p), "start_at": "beginning"} for p in (good, bad)],
            )
        ],
        poll_interval=0.1,
    )
    # Root reads any file: drop the capabilities that let it, as a service user lacks them.
    r = subprocess.run(
        [
            *("setpriv", "--bounding-set=-dac_override,-dac_read_search"),
            *(sys.executable, "-m", "tirreno_shipper", "run", "-c", str(cfg), "--once"),
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    records = [json.loads(x) for x in r.stderr.splitlines()]
    failed = [x for x in records if x["event"] == "file_open_failed"]
    assert len(failed) == 1 and failed[0]["path"] == str(bad), failed
    assert "Permission denied" in failed[0]["error"]
    incomplete = [x for x in records if x["event"] == "once_incomplete"]
    assert incomplete and incomplete[0]["unreadable"] == {"a": {str(bad): "Permission denied"}}
    assert delivered(sensor, "g") == expect("g", 0, 5)
    assert not delivered(sensor, "b")
    assert not any(x["event"] == "once_complete" for x in records)


@pytest.mark.slow  # the copy is followed for the tailer's rotated_grace (5 s) before it retires
def test_copytruncate_in_a_quiet_log_leaves_one_checkpoint_for_the_file(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """After copytruncate and one new line, the file's older identities (the old content,
    the empty head) are dropped at once, not at the next line: `status` shows no stale lag."""
    log = tmp_path / "a.log"
    append(log, pages("t", 0, 3))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    with running(cfg) as shipper:
        assert wait_until(lambda: delivered(sensor, "t") == expect("t", 0, 3), 20)
        (tmp_path / "a.log.1").write_bytes(log.read_bytes())  # logrotate's copytruncate
        with log.open("r+b") as fh:
            fh.truncate(0)
        # The daemon sees (and checkpoints) the empty file before the next line.
        empty = (log.stat().st_ino, "", 0)
        assert wait_until(lambda: empty in checkpoints(tmp_path / "state"), 20)
        append(log, pages("t", 3, 4))
        assert wait_until(lambda: delivered(sensor, "t") == expect("t", 0, 4), 20)
        now = identify(str(log))
        assert now is not None
        only = [(now.ino, now.fingerprint, log.stat().st_size)]
        assert wait_until(lambda: checkpoints(tmp_path / "state") == only, 10), checkpoints(
            tmp_path / "state"
        )
        assert shipper.stop() == 0


# -- one daemon per state_dir ---------------------------------------------------------------


def test_a_second_daemon_on_the_same_state_dir_exits_75_and_the_first_ships_alone(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Two daemons on one spool would send every line twice: the second one refuses."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    with running(cfg) as first:
        # `run` and `run --once` at once: both are refused.
        seconds = [
            subprocess.Popen(
                [sys.executable, "-m", "tirreno_shipper", *args],
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in (("run", "-c", str(cfg)), ("run", "-c", str(cfg), "--once"))
        ]
        for second in seconds:
            _out, err = second.communicate(timeout=30)
            assert second.returncode == 75, err[-3000:]
            records = [json.loads(x) for x in err.splitlines()]
            busy = [x for x in records if x["event"] == "state_dir_in_use"]
            assert busy and busy[0]["pid"] == str(first.pid), records
            assert "own state_dir" in busy[0]["hint"]
        append(log, pages("l", 0, 10))
        assert wait_until(lambda: delivered(sensor, "l") == expect("l", 0, 10), 20)
        assert first.stop() == 0
    # Checked with every daemon gone: nothing can be sent after this.
    assert Counter(urls(sensor)).most_common(1)[0][1] == 1, "a line was sent twice"
    # The lock went with the first daemon: the next run takes the state_dir.
    again = run_in_process("run", "-c", str(cfg), "--once")
    assert again.returncode == 0, again.stderr[-3000:]


# -- logs ---------------------------------------------------------------------------


def test_logs_are_json_lines_off_a_tty_and_never_hold_the_key_or_a_cookie(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Off a TTY every stderr line is a JSON event; no API key or cookie value appears anywhere."""
    api_key = "sk-very-SECRET-api-key-0042"
    sensor.set_api_key(api_key)
    cookie = "cookie-SECRET-value-{}"
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    lines = [nginx_line(f"/s/{i}", cookie=cookie.format(i)) for i in range(6)]
    append(good, lines)
    append(bad, lines)
    users_db = tmp_path / "users.sqlite"
    import sqlite3

    with sqlite3.connect(users_db) as conn:
        conn.execute("CREATE TABLE sessions (k TEXT PRIMARY KEY, u TEXT)")
        conn.executemany(
            "INSERT INTO sessions VALUES (?, ?)", [(cookie.format(i), f"u{i}") for i in range(3)]
        )
    users = {
        "key": {"cookie": "sessionid"},
        "database": f"sqlite:///{users_db}",
        "query": "SELECT u AS user_name FROM sessions WHERE k = :key",
        "unresolved": "anonymous",
    }
    broken_users = {**users, "query": "SELECT u AS user_name FROM no_such_table WHERE k = :key"}
    cfg = write_config(
        tmp_path / "c.yaml",
        [
            site(
                "good", sensor.url, good, key=api_key, log={"format": "nginx_cookie"}, users=users
            ),
            # A wrong key (rejected), a broken users query: the log's warning paths.
            site(
                "bad",
                sensor.url,
                bad,
                key=api_key + "-wrong",
                log={"format": "nginx_cookie"},
                users=users,
                sensor={"reject_threshold": 1},
            ),
            site(
                "nodb",
                sensor.url,
                bad,
                key=api_key,
                log={"format": "nginx_cookie"},
                users=broken_users,
            ),
        ],
    )
    with running(cfg) as shipper:
        assert wait_until(lambda: len(delivered(sensor, "s")) == 6, 20)
        shipper.wait_log("sensor_rejecting", site="bad")
        shipper.wait_log("resolver_failed", site="nodb")
        shipper.wait_log("site_paused", site="nodb")
        assert shipper.stop() == 0
        err = shipper.stderr()
        out = shipper.stdout_path.read_text()
    assert err.strip()
    for line in err.splitlines():
        record = json.loads(line)
        assert {"event", "level", "timestamp"} <= record.keys(), line
    for secret in (api_key, *(cookie.format(i) for i in range(6))):
        assert secret not in err
        assert secret not in out
    assert "SECRET" not in err


def test_logs_are_readable_console_lines_on_a_tty(tmp_path: Path, sensor: FakeSensor) -> None:
    """On a terminal the log is console text (not JSON), naming events and sites."""
    log = tmp_path / "a.log"
    append(log, pages("t", 0, 2))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tirreno_shipper", "run", "-c", str(cfg), "--once"],
        cwd=ROOT,
        env=child_env({"NO_COLOR": "1"}),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "daemon_started" in text and "once_complete" in text
    started = next(line for line in text.splitlines() if "daemon_started" in line)
    assert not started.lstrip().startswith("{")


# -- helpers used above are also exercised here -------------------------------------------


def test_shipper_helper_kills_a_daemon_left_running(tmp_path: Path, sensor: FakeSensor) -> None:
    """The test harness never leaves a daemon behind (a killed one is reaped)."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    shipper = Shipper(cfg)
    shipper.wait_log("daemon_started")
    shipper.close()
    assert shipper.proc.returncode == -signal.SIGKILL
