"""The whole daemon against a failing sensor: outages, errors, slowness, 429s, a wrong key.

Each test runs the real daemon as a subprocess against the fake sensor, with
lines appended to a real log, scripts one fault, ends it, and checks that
every line was delivered, and that the daemon did not hammer the sensor
meanwhile: the fake counts every answer, the daemon's /metrics count its
failed attempts (a refused connection never reaches the fake).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.servers import free_port
from tests.support.shipper import Shipper
from tests.support.writer import (
    LogWriter,
    all_delivered,
    delivery_report,
    make_config,
    max_in_window,
    metric,
    scrape,
    wait_for,
)

CONCURRENCY = 4
RETRY_MAX_DELAY = 4.0


def options(**kwargs: Any) -> pytest.MarkDecorator:
    """Tune the `rig` fixture: make_config's keywords, plus ``sensor_kwargs`` for the fake."""
    return pytest.mark.parametrize("rig", [kwargs], indirect=True, ids=["rig"])


@dataclass
class Rig:
    tmp: Path
    writer: LogWriter
    sensor: FakeSensor
    shipper: Shipper
    metrics_port: int

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port, starting=True)

    def retried(self, reason: str | None = None) -> float:
        labels = {"reason": reason} if reason else {}
        return metric(self.metrics(), "tirreno_shipper_events_retried_total", **labels)

    def sensor_state(self) -> str:
        values = self.metrics()
        states = [
            s
            for s in ("ok", "backing_off", "rejecting")
            if metric(values, "tirreno_shipper_sensor_state", state=s) == 1
        ]
        return states[0] if len(states) == 1 else f"?{states}"

    def wait_started(self) -> None:
        wait_for(
            lambda: bool(self.shipper.logged("daemon_started", this_run=True)),
            60,
            "the daemon to start",
        )

    def wait_all(self, timeout: float) -> float:
        """Wait until every line written so far was accepted; seconds it took."""
        expected = range(self.writer.seq)
        try:
            return wait_for(all_delivered(self.sensor, expected), timeout, "every line")
        except AssertionError:
            report = delivery_report(self.sensor, expected)
            raise AssertionError(
                f"not delivered: {report['missing'][:20]} ({len(report['missing'])} lines); "
                f"daemon log:\n{self.shipper.tail_log()}"
            ) from None

    def check_delivery(self) -> dict[str, Any]:
        report = delivery_report(self.sensor, range(self.writer.seq))
        assert not report["missing"]
        assert not report["unexpected"]
        assert not report["lines_with_two_ids"], "a line was read twice"
        return report


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """Writer, fake sensor and daemon; `options` (indirect parametrization) tunes them."""
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    sensor_kwargs = {"bucket_capacity": 0, **options.pop("sensor_kwargs", {})}
    log = tmp_path / "access.log"
    writer = LogWriter(log)
    sensor = FakeSensor(**sensor_kwargs).start()
    port = free_port()
    config = make_config(
        tmp_path,
        sensor.url,
        log,
        metrics_port=port,
        sensor={
            "concurrency": CONCURRENCY,
            "retry_max_delay": RETRY_MAX_DELAY,
            **options.pop("sensor", {}),
        },
        **options,
    )
    shipper = Shipper(config, log_path=tmp_path / "daemon.log", start=False)
    try:
        yield Rig(tmp_path, writer, sensor, shipper, port)
    finally:
        writer.close()
        shipper.close()
        sensor.stop()


def _outage_bound(seconds: float) -> int:
    """Attempts a polite sender makes in an outage: the in-flight ones, then backoff
    probes no closer than half the capped delay (after a short ramp-up)."""
    return CONCURRENCY + int(seconds / (RETRY_MAX_DELAY / 2)) + 6


# Three times the capped backoff delay: long enough for the probes to settle at the cap,
# which is what "polite" means here (30 s once; the bound scales with it).
OUTAGE = 3 * RETRY_MAX_DELAY


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sensor_down_a_while_then_back(rig: Rig) -> None:
    """Sensor refusing connections for `OUTAGE` s: few attempts, state backing_off, then all
    delivered."""
    rig.shipper.start()
    rig.writer.start(20)
    rig.wait_started()
    rig.wait_all(30)
    before = rig.retried("connect")
    rig.sensor.set_mode("refuse")
    down = time.monotonic()
    wait_for(lambda: rig.sensor_state() == "backing_off", 15, "the sensor state backing_off")
    while time.monotonic() - down < OUTAGE:
        time.sleep(0.5)
    attempts = rig.retried("connect") - before
    rig.sensor.set_mode("ok")
    rig.writer.stop()
    recovery = rig.wait_all(60)
    wait_for(lambda: rig.sensor_state() == "ok", 15, "the sensor state ok")
    report = rig.check_delivery()
    print(
        f"\noutage {OUTAGE:g} s: {attempts:.0f} connection attempts, delivered {rig.writer.seq} "
        f"lines {recovery:.1f} s after recovery, {report['duplicates']} duplicates"
    )
    assert attempts >= 1, "the sender never noticed the outage"
    bound = _outage_bound(OUTAGE)
    assert attempts <= bound, f"{attempts} connection attempts in {OUTAGE:g} s: hammering"
    assert recovery <= RETRY_MAX_DELAY + 15
    assert report["duplicates"] == 0  # nothing is answered in an outage: nothing to resend


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sensor_500s_for_a_while(rig: Rig) -> None:
    """HTTP 500 for 6 s: retried with backoff, not dead-lettered, all delivered after."""
    rig.shipper.start()
    rig.writer.start(20)
    rig.wait_started()
    rig.wait_all(30)
    rig.sensor.set_mode("500")
    start = time.monotonic()
    wait_for(lambda: rig.sensor.count("500") > 0, 15, "a request during the 500s")
    while time.monotonic() - start < 6:
        time.sleep(0.5)
    rig.sensor.set_mode("ok")
    errors = rig.sensor.count("500")
    rig.writer.stop()
    rig.wait_all(40)
    report = rig.check_delivery()
    status = rig.shipper.site_status()
    print(f"\n500s for 6 s: {errors} requests answered 500; {report['duplicates']} duplicates")
    assert errors <= _outage_bound(6)
    assert status["dead_letters"] == 0
    assert report["duplicates"] == 0


@pytest.mark.slow
@options(sensor={"timeout": 1}, sensor_kwargs={"slow_seconds": 2.0})
@pytest.mark.timeout(120)
def test_slow_sensor_times_out_and_delivers_all(rig: Rig) -> None:
    """Answers taking 2 s with a 1 s timeout: timeouts, backoff, then all delivered."""
    rig.shipper.start()
    rig.writer.start(20)
    rig.wait_started()
    rig.wait_all(30)
    rig.sensor.set_mode("slow")
    start = time.monotonic()
    wait_for(lambda: rig.retried("timeout") > 0, 15, "a request to time out")
    while time.monotonic() - start < 5:
        time.sleep(0.5)
    timeouts = rig.retried("timeout")
    rig.sensor.set_mode("ok")
    rig.writer.stop()
    rig.wait_all(40)
    report = rig.check_delivery()
    print(
        f"\nslow sensor 5 s: {timeouts:.0f} timeouts; {report['duplicates']} duplicates "
        "(answered after the client gave up)"
    )
    assert timeouts <= _outage_bound(5)
    # A request that timed out may have been stored anyway: its resend is a duplicate.
    assert report["duplicates"] <= timeouts


@pytest.mark.slow
@options(sensor={"timeout": 1})
@pytest.mark.timeout(120)
def test_hanging_sensor(rig: Rig) -> None:
    """Connections that never answer: cut at the timeout, few of them, all delivered after."""
    rig.shipper.start()
    rig.writer.start(20)
    rig.wait_started()
    rig.wait_all(30)
    rig.sensor.set_mode("hang")
    start = time.monotonic()
    wait_for(lambda: rig.retried("timeout") > 0, 15, "a request to time out")
    while time.monotonic() - start < 5:
        time.sleep(0.5)
    most_hanging = rig.sensor.hanging
    rig.sensor.set_mode("ok")
    rig.writer.stop()
    rig.wait_all(40)
    hung = rig.sensor.count("hang")
    report = rig.check_delivery()
    print(f"\nhanging sensor 5 s: {hung} requests hung (up to {most_hanging} at once)")
    assert hung <= _outage_bound(5)
    assert report["duplicates"] == 0  # a hung request was never stored


@pytest.mark.slow
@options(
    sensor={"rate_limit": 50, "burst": 50},
    sensor_kwargs={"bucket_capacity": 20, "bucket_window": 2.0},
)
@pytest.mark.timeout(120)
def test_429_storm(rig: Rig) -> None:
    """Sensor bucket 20 per 2 s, client limit 50/s: every event arrives, few 429s."""
    events = 100
    rig.writer.write(events)
    rig.shipper.start()
    took = rig.wait_all(90)
    report = rig.check_delivery()
    too_many = rig.sensor.count("429")
    print(f"\n429 storm: {events} events in {took:.1f} s, {too_many} answers 429")
    assert rig.retried("429") >= 1, "the fake's bucket never filled: the test tests nothing"
    # The fake's own bucket admits 20 per 2 s; the daemon must not make it refuse
    # more than a few requests per refill (the ones in flight when it filled).
    refills = took / 2.0 + 1
    assert too_many <= CONCURRENCY * 2 * refills, f"{too_many} 429s: hammering a full bucket"
    assert report["duplicates"] == 0


@pytest.mark.slow
@options(sensor={"rate_limit": 10, "burst": 10})
@pytest.mark.timeout(120)
def test_client_rate_limit_is_held(rig: Rig) -> None:
    """rate_limit 10, burst 10: the sensor never sees more than 10 x window + 10 in any window."""
    events = 80
    rig.writer.write(events)
    rig.shipper.start()
    took = rig.wait_all(60)
    rig.check_delivery()
    times = [a.time for a in rig.sensor.answer_log()]
    # Timestamps are taken as the fake answers, not as the daemon takes a token:
    # up to 0.2 s of scheduling jitter on a loaded machine is 2 requests at 10/s.
    slack = 2
    worst = {w: max_in_window(times, w) for w in (0.5, 1.0, 2.0, 5.0)}
    print(f"\nrate limit 10/s burst 10: {events} events in {took:.1f} s; most per window {worst}")
    for window, seen in worst.items():
        assert seen <= 10 * window + 10 + slack, f"{seen} requests in {window} s"
    span = max(times) - min(times)
    assert span >= (events - 10) / 10 - 1, f"{events} events in {span:.1f} s: not limited"
    assert rig.sensor.count("429") == 0


@pytest.mark.slow
@options(api_key="the-right-key", sensor_kwargs={"api_key": "the-old-key"})
@pytest.mark.timeout(120)
def test_wrong_key_then_right_key(rig: Rig) -> None:
    """A refused key: state rejecting (metrics, status), events kept, all sent once fixed."""
    rig.writer.write(60)
    rig.shipper.start()
    rig.wait_started()
    wait_for(
        lambda: rig.shipper.site_status()["sensor_state"] == "rejecting",
        60,
        "status to say rejecting",
        interval=0.5,
    )
    assert rig.sensor_state() == "rejecting"
    assert rig.shipper.logged("sensor_rejecting"), "no error logged for the wrong key"
    status = rig.shipper.site_status()
    assert status["spool_depth"] == 60 and status["dead_letters"] == 0
    rejected = rig.sensor.count("200")
    rig.sensor.set_api_key("the-right-key")
    rig.writer.write(20)
    took = rig.wait_all(60)
    wait_for(
        lambda: rig.shipper.site_status()["sensor_state"] == "ok",
        20,
        "status to say ok",
        interval=0.5,
    )
    report = rig.check_delivery()
    status = rig.shipper.site_status()
    print(
        f"\nwrong key: {rejected} requests rejected before the fix; all 80 delivered "
        f"{took:.1f} s after it"
    )
    # The threshold's worth, plus what was in flight, plus a probe or two.
    assert rejected <= 5 + CONCURRENCY * 8 + 3
    assert status["spool_depth"] == 0 and status["dead_letters"] == 0
    assert report["duplicates"] == 0
