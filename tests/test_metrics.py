"""``/metrics`` and ``/healthz`` scraped over HTTP from a running daemon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.inprocess import daemon_thread
from tests.support.servers import free_port
from tests.support.shipper import (
    append,
    metric,
    nginx_line,
    running,
    scrape,
    scrape_metrics,
    site,
    wait_until,
    write_config,
)
from tirreno_shipper._version import __version__
from tirreno_shipper.config import load_config
from tirreno_shipper.daemon import Daemon


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def known_log(path: Path) -> None:
    """Ten lines: six events, one of each way a line is skipped or filtered."""
    append(
        path,
        [
            *(nginx_line(f"/m/{i}") for i in range(6)),
            "this is not an access log line\n",
            nginx_line("/static/app.css"),
            nginx_line("/m/head", method="HEAD"),
            nginx_line("/m/" + "x" * 400),  # over max_line_bytes (256)
        ],
    )


def test_metrics_count_a_known_log_and_healthz_is_ok(tmp_path: Path, sensor: FakeSensor) -> None:
    """After a known log is shipped every per-site counter has its exact value."""
    log = tmp_path / "a.log"
    known_log(log)
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        [site("shop", sensor.url, log, log={"max_line_bytes": 256})],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    started = time.time()
    with running(cfg) as shipper:
        assert sensor.wait_accepted(6, 20)

        def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            m = scrape_metrics(port)
            # The lag gauge is the tail's snapshot, taken once a second.
            done = (
                metric(m, "tirreno_shipper_events_sent_total", site="shop") == 6
                and metric(m, "tirreno_shipper_spool_depth", site="shop") == 0
                and metric(m, "tirreno_shipper_file_lag_bytes", site="shop") == 0
            )
            return m if done else None

        m = wait_until(settled, 10, interval=0.2)
        assert m, scrape(port, "/metrics")[2]
        status, ctype, body = scrape(port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        names = {
            line.split("{")[0].split(" ")[0]
            for line in body.splitlines()
            if line and not line.startswith("#")
        }
        ours = {n for n in names if n.startswith("tirreno_shipper_")}
        process = {n for n in names if n.startswith(("process_", "python_"))}
        assert ours and ours | process == names, names - ours - process
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= process
        assert not [n for n in names if n.endswith("_created")], "no _created series"
        build = [k for k in m if k[0] == "tirreno_shipper_build_info"]
        assert len(build) == 1 and dict(build[0][1])["version"] == __version__
        assert m[build[0]] == 1

        def v(name: str, **labels: str) -> float | None:
            return metric(m, "tirreno_shipper_" + name, site="shop", **labels)

        assert v("lines_read_total") == 10
        assert v("lines_parsed_total") == 8
        assert v("lines_unparseable_total", reason="no_match") == 1
        assert v("lines_unparseable_total", reason="too_long") == 1
        assert v("requests_filtered_total", reason="path") == 1
        assert v("requests_filtered_total", reason="method") == 1
        assert v("events_spooled_total") == 6
        assert v("events_sent_total") == 6
        assert v("events_rejected_total") == 0
        assert v("events_dead_lettered_total") == 0
        assert v("spool_full_total") == 0, "exported before the first fill"
        assert v("send_latency_seconds_count") == 6
        assert v("spool_depth") == 0
        assert v("spool_oldest_age_seconds") == 0
        assert v("file_lag_bytes") == 0
        assert v("sensor_state", state="ok") == 1
        last = v("last_sent_timestamp_seconds")
        assert last is not None and started <= last <= time.time()
        assert v("sensor_state", state="rejecting") == 0
        for reason in ("resolver_down", "spool_full", "spool_error"):
            assert v("site_paused", reason=reason) in (None, 0)

        status, ctype, body = scrape(port, "/healthz")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == {"status": "ok"}
        assert scrape(port, "/readyz")[:2] == (200, "application/json")
        assert scrape(port, "/nope")[0] == 404
        assert shipper.stop() == 0


@pytest.mark.slow
def test_sensor_state_and_rejections_show_a_wrong_key(tmp_path: Path, sensor: FakeSensor) -> None:
    """A wrong key: rejected counted, sensor_state rejecting, events kept in the spool depth."""
    log = tmp_path / "a.log"
    append(log, [nginx_line(f"/r/{i}") for i in range(3)])
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        [site("rej", sensor.url, log, key="wrong", sensor={"reject_threshold": 2})],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    with running(cfg) as shipper:

        def rejecting() -> bool:
            m = scrape_metrics(port)
            return (
                metric(m, "tirreno_shipper_sensor_state", site="rej", state="rejecting") == 1
                and metric(m, "tirreno_shipper_spool_depth", site="rej") == 3
            )

        assert wait_until(rejecting, 15, interval=0.2)
        m = scrape_metrics(port)
        assert (metric(m, "tirreno_shipper_events_rejected_total", site="rej") or 0) >= 2
        assert metric(m, "tirreno_shipper_events_sent_total", site="rej") == 0
        # A rejecting sensor is not a dead stage: still healthy.
        assert scrape(port, "/healthz")[0] == 200
        assert shipper.stop() == 0
    assert sensor.accepted == []


def _in_process_config(tmp_path: Path, sensor: FakeSensor, name: str) -> tuple[Path, int, Path]:
    """A one-site config with a metrics listener (site ``name``: metrics are this
    process's, shared with every daemon run in it): its path, the port and the log."""
    log = tmp_path / "a.log"
    append(log, [nginx_line("/i/0")])
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        [site(name, sensor.url, log)],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    return cfg, port, log


def test_healthz_is_503_with_a_json_reason_when_a_stage_is_dead(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A site whose sender threads have ended makes /healthz answer 503 naming it."""
    cfg, port, _log = _in_process_config(tmp_path, sensor, "dead503")
    daemon = Daemon(load_config(cfg), cfg)
    assert daemon.start() is None
    try:
        assert wait_until(lambda: scrape(port, "/healthz")[0] == 200, 10)
        daemon.runners["dead503"].sender.stop(2.0)  # its worker threads really end
        status, ctype, body = scrape(port, "/healthz")
        assert (status, ctype) == (503, "application/json")
        assert json.loads(body) == {
            "status": "unhealthy",
            "problems": {"dead503": {"dead": ["sender"]}},
        }
    finally:
        daemon.request_stop()
        assert daemon.run() == 0


def test_the_supervisor_restarts_a_dead_sender(tmp_path: Path, sensor: FakeSensor) -> None:
    """A dead sender stage is restarted (counted in stage_restarts) and shipping goes on."""
    cfg, port, log = _in_process_config(tmp_path, sensor, "restarted")
    with daemon_thread(cfg) as daemon:
        assert sensor.wait_accepted(1, 20)
        assert wait_until(lambda: scrape(port, "/healthz")[0] == 200, 10)
        daemon.runners["restarted"].sender.stop(2.0)

        def restarted() -> bool:
            m = scrape_metrics(port)
            n = metric(m, "tirreno_shipper_stage_restarts_total", site="restarted", stage="sender")
            return n == 1 and scrape(port, "/healthz")[0] == 200

        assert wait_until(restarted, 10, interval=0.1)
        append(log, [nginx_line("/i/1")])
        assert sensor.wait_accepted(2, 20)
    assert sorted(r.fields["url"] for r in sensor.accepted) == ["/i/0", "/i/1"]


def test_a_metrics_address_already_taken_refuses_to_start(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Another process on metrics.listen: exit 1 naming it, rather than a daemon whose
    /healthz is someone else's; the state_dir is left free for the next start."""
    import socket

    log = tmp_path / "a.log"
    log.touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(
            tmp_path / "c.yaml",
            [site("a", sensor.url, log)],
            metrics={"listen": f"127.0.0.1:{port}"},
        )
        r = run_in_process("run", "-c", str(cfg))
    assert r.returncode == 1, r.stderr[-3000:]
    records = [json.loads(x) for x in r.stderr.splitlines()]
    failed = [x for x in records if x["event"] == "metrics_listen_failed"]
    assert failed and failed[0]["listen"] == f"127.0.0.1:{port}", records
    assert "metrics.listen" in failed[0]["hint"]
    assert not any(x["event"] == "daemon_started" for x in records)
    # Nothing held on to: with the port free, the same config runs.
    again = run_in_process("run", "-c", str(cfg), "--once")
    assert again.returncode == 0, again.stderr[-3000:]


def test_forget_site_removes_every_series_of_that_site_only() -> None:
    """Every registered metric is in SITE_METRICS (a new one cannot be left behind
    when a site is removed), and forgetting one site leaves the others' series."""
    from tirreno_shipper import metrics

    registered = {family.name for family in metrics.REGISTRY.collect()}
    listed = {family.name for m in metrics.SITE_METRICS for family in m.describe()}
    # The rest have no site label: the build, and the process's own.
    assert registered - listed == {
        "tirreno_shipper_build_info",
        "process_cpu_seconds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "python_info",
    }, registered - listed
    metrics.EVENTS_SENT.labels(site="gone").inc()
    metrics.EVENTS_RETRIED.labels(site="gone", reason="429").inc()
    metrics.set_sensor_state("gone", "ok")
    metrics.EVENTS_SENT.labels(site="kept").inc()

    def sites() -> set[str]:
        return {
            s.labels.get("site", "")
            for family in metrics.REGISTRY.collect()
            for s in family.samples
        }

    assert {"gone", "kept"} <= sites()
    metrics.forget_site("gone")
    assert "gone" not in sites() and "kept" in sites()


def test_readyz_waits_for_the_spool_and_every_site(tmp_path: Path, sensor: FakeSensor) -> None:
    """/readyz is 503 (naming what is missing) until the spool is open and the sites run."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("shop", sensor.url, log)])
    daemon = Daemon(load_config(cfg), cfg)
    assert daemon.ready() == (False, {"spool_open": False, "sites_not_started": ["shop"]})
    assert daemon.start() is None
    try:
        assert daemon.ready() == (True, {})
    finally:
        daemon.request_stop()
        daemon.run()
