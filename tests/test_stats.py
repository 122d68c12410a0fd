"""The periodic ``stats`` line: per site, what happened since the last one."""

from __future__ import annotations

import json
from pathlib import Path

from structlog.testing import capture_logs

from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import append, nginx_line, run_cli, site, write_config
from tirreno_shipper import metrics
from tirreno_shipper.stats import StatsLine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_site_each_interval_with_counts_since_the_last() -> None:
    """lines, events, sent and rejected are differences; backlog and lag are current."""
    clock = Clock()
    stats = StatsLine(60, clock)
    metrics.LINES_READ.labels(site="st-a").inc(10)
    metrics.EVENTS_SPOOLED.labels(site="st-a").inc(7)
    metrics.EVENTS_SENT.labels(site="st-a").inc(5)
    metrics.EVENTS_REJECTED.labels(site="st-a").inc(1)
    metrics.SPOOL_DEPTH.labels(site="st-a").set(2)
    metrics.SPOOL_OLDEST_AGE.labels(site="st-a").set(3.5)
    metrics.FILE_LAG.labels(site="st-a").set(4096)
    with capture_logs() as logs:
        clock.now += 59
        stats.tick(["st-a", "st-b"])
        assert logs == [], "not due before the interval"
        clock.now += 1
        stats.tick(["st-a", "st-b"])
        metrics.LINES_READ.labels(site="st-a").inc(3)
        metrics.EVENTS_SENT.labels(site="st-a").inc(2)
        clock.now += 60
        stats.tick(["st-a"])
    lines = [{k: v for k, v in e.items() if k != "log_level"} for e in logs]
    assert lines == [
        {
            "event": "stats",
            "site": "st-a",
            "seconds": 60.0,
            "lines": 10,
            "events": 7,
            "sent": 5,
            "rejected": 1,
            "backlog": 2,
            "oldest_s": 3,
            "lag_bytes": 4096,
        },
        {
            "event": "stats",
            "site": "st-b",
            "seconds": 60.0,
            "lines": 0,
            "events": 0,
            "sent": 0,
            "rejected": 0,
            "backlog": 0,
            "oldest_s": 0,
            "lag_bytes": 0,
        },
        {
            "event": "stats",
            "site": "st-a",
            "seconds": 60.0,
            "lines": 3,
            "events": 0,
            "sent": 2,
            "rejected": 0,
            "backlog": 2,
            "oldest_s": 3,
            "lag_bytes": 4096,
        },
    ]
    assert all(e["log_level"] == "info" for e in logs)


def test_zero_turns_it_off_and_a_re_added_site_counts_from_zero() -> None:
    """log.stats_interval: 0 says nothing; counters restarted (site removed, added back)
    are not negative."""
    clock = Clock()
    off = StatsLine(0, clock)
    on = StatsLine(10, clock)
    metrics.LINES_READ.labels(site="st-c").inc(50)
    with capture_logs() as logs:
        clock.now += 10
        off.tick(["st-c"])
        on.tick(["st-c"])
        metrics.forget_site("st-c")
        metrics.LINES_READ.labels(site="st-c").inc(4)
        clock.now += 10
        on.tick(["st-c"])
    assert [e["lines"] for e in logs] == [50, 4]


def test_the_daemon_says_its_stats_line(tmp_path: Path) -> None:
    """Wired into the supervisor: a daemon whose interval has passed logs `stats` per site
    with what it shipped (the interval tiny, so no test waits a minute)."""
    log = tmp_path / "a.log"
    append(log, [nginx_line(f"/s/{i}") for i in range(3)])
    with FakeSensor(bucket_capacity=0) as sensor:
        cfg = write_config(
            tmp_path / "c.yaml",
            [site("shop", sensor.url, log)],
            log={"level": "info", "format": "json", "stats_interval": 0.001},
        )
        # A real process: the stats line counts from the process's metrics, which in the
        # test process hold the lines of every earlier test's daemon.
        r = run_cli("run", "-c", str(cfg), "--once")
    assert r.returncode == 0, r.stderr[-3000:]
    stats = [
        line
        for line in (json.loads(x) for x in r.stderr.splitlines() if x.startswith("{"))
        if line.get("event") == "stats"
    ]
    assert stats and all(s["site"] == "shop" for s in stats), r.stderr[-3000:]
    assert sum(s["lines"] for s in stats) <= 3 and {"backlog", "lag_bytes"} <= set(stats[0])
