"""A misbehaving sensor on a real socket cannot duplicate events or take the memory.

- A sensor dribbling its headers (one line every 0.5 s for 12 s) never lets a read time
  out: with ``timeout: 2`` and ``lease_timeout: 5`` the request outlived its lease and
  another worker sent the same events again (23 POSTs, 3 ids accepted 2-3 times). The whole
  request is now bounded by a deadline shorter than the lease, and an event in flight is
  never sent by a second worker.
- A sensor answering ``Content-Length: 1073741824`` and streaming it took the process to
  2.09 GB. At most a few KiB of any answer is read.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.hostile_sensor import HostileSensor
from tests.support.mock_poster import MockPoster, Posted
from tirreno_shipper.config import SensorConfig
from tirreno_shipper.deadline import MAX_ANSWER_BYTES
from tirreno_shipper.records import Event
from tirreno_shipper.sender import Outcome, SiteSender, send_one
from tirreno_shipper.spool import Spool

KEY = "hostile-sensor-key"
FIELDS = {"ipAddress": "203.0.113.7", "url": "/", "eventTime": "2024-05-01 10:00:00"}


def _config(url: str, **overrides: float) -> SensorConfig:
    values: dict[str, object] = {"url": url, "api_key": KEY, "rate_limit": 0, "timeout": 2.0}
    values.update(overrides)
    return SensorConfig.model_validate(values)


def _events(n: int) -> list[Event]:
    return [Event(f"00000000-0000-5000-8000-{i:012d}", dict(FIELDS)) for i in range(n)]


def test_dribbling_headers_end_by_the_request_deadline() -> None:
    """One request to a sensor that sends a header line every 0.1 s (well inside the 0.5 s
    read timeout, so no read ever times out) ends after about twice ``sensor.timeout`` (the
    deadline the sender plans leases with), as a retryable timeout."""
    with HostileSensor("dribble", interval=0.1) as sensor:
        started = time.monotonic()
        verdict = send_one(_config(sensor.url, timeout=0.5), FIELDS, "x")
        elapsed = time.monotonic() - started
    assert verdict.outcome is Outcome.RETRY and verdict.reason == "timeout", verdict
    # 1 s planned, plus a loaded machine's slack; unbounded, the sensor holds it 12 s.
    assert elapsed < 2 * 0.5 + 3.0, elapsed


@pytest.mark.slow  # real time: a real socket dribbling for 12 s against 2 s/5 s deadlines
def test_dribbling_sensor_never_gets_an_event_twice_at_once(tmp_path: Path) -> None:
    """``timeout: 2``, ``lease_timeout: 5``, four workers, a sensor dribbling every answer
    for 12 s at first: no request outlives the lease, no event is posted while an earlier
    post of it is still open, and once the sensor answers, each event is accepted once."""
    spool = Spool.open(tmp_path / "state")
    events = _events(12)
    spool.commit_chunk("shop", events, None)
    with HostileSensor("dribble", hostile_first=8, interval=0.5, dribble_for=12.0) as sensor:
        sender = SiteSender(
            "shop",
            _config(sensor.url, concurrency=4, retry_max_delay=1.0),
            spool,
            lease_seconds=5.0,
        )
        sender.start()
        try:
            assert sender.wait_empty(60), spool.stats("shop")
        finally:
            sender.stop(5)
            spool.close()
        time.sleep(0.6)  # the dribbler notices the last hang-up within one interval
        seen = list(sensor.seen)
    longest = max(s.ended - s.started for s in seen)
    assert longest < 5.0, f"a request outlived the 5 s lease: {longest:.1f} s"
    by_id: dict[str | None, list[tuple[float, float]]] = {}
    for s in seen:
        by_id.setdefault(s.request_id, []).append((s.started, s.ended))
    for request_id, spans in by_id.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 0.05, f"{request_id} posted again while in flight: {spans}"
    accepted = sensor.accepted_ids()
    assert sorted(i or "" for i in accepted) == sorted(e.request_id for e in events), accepted


def test_one_gib_answer_is_read_a_few_kib_at_most() -> None:
    """``Content-Length: 1 GiB`` streamed: the answer is cut after a few KiB (the sensor
    could send only what the socket buffers hold before the client hung up), the verdict
    comes at once, and the process does not grow."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with HostileSensor("huge") as sensor:
        started = time.monotonic()
        verdict = send_one(_config(sensor.url, timeout=5.0), FIELDS, "x")
        elapsed = time.monotonic() - started
        time.sleep(0.3)
        sent = sensor.seen[0].sent
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # A 200 with a body is not tirreno's answer: refused (reject), never retried as if empty.
    assert verdict.outcome is not Outcome.ACCEPTED, verdict
    assert elapsed < 2.0, elapsed
    assert sent < 64 * 1024 * 1024, f"the sensor streamed {sent} bytes"
    assert grown_mb < 32, f"peak RSS grew {grown_mb:.0f} MB"
    assert MAX_ANSWER_BYTES <= 8192


def test_an_event_in_flight_is_not_leased_again_when_its_lease_ends(tmp_path: Path) -> None:
    """A lease is kept in wall-clock time; if it ends while its event is still being posted
    (a clock stepped forward, or any request that outlived it), another worker leasing it
    again must not post it a second time: the post in flight acks or releases it."""
    clock = FakeClock()
    spool = Spool.open(tmp_path / "state", clock=clock)
    (event,) = _events(1)
    spool.commit_chunk("shop", [event], None)
    lease = 10.0
    released = threading.Event()

    def slow_first_answer(posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        if len(poster.posted) == 0:
            # The other worker idles on the fake clock, moving it on: hold this post until
            # its lease has long ended in spool time and the other worker leased again.
            until = time.monotonic() + 10
            while clock.monotonic() < 1000.0 + 4 * lease and time.monotonic() < until:
                released.wait(0.01)
        return 204, b"", {}

    poster = MockPoster(slow_first_answer, clock=clock)
    sender = SiteSender(
        "shop",
        _config("http://127.0.0.1:1/sensor/", concurrency=2),
        spool,
        lease_seconds=lease,
        clock=clock,
        poster=poster,
    )
    sender.start()
    try:
        assert sender.wait_empty(10)
    finally:
        sender.stop(5)
        spool.close()
    assert clock.monotonic() >= 1000.0 + 4 * lease, "the lease never ended during the post"
    assert [p.request_id for p in poster.posted] == [event.request_id]
