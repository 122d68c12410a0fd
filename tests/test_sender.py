"""The sender: classification, rate limit, and delivery to a real fake sensor over real sockets."""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import itertools
import math
import os
import random
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.support.clock import FakeClock, SimClock
from tests.support.fake_sensor import FakeSensor
from tests.support.mock_poster import MockPoster, Posted
from tests.support.shipper import spooled_ids
from tirreno_shipper import metrics
from tirreno_shipper._version import __version__
from tirreno_shipper.config import SensorConfig
from tirreno_shipper.errors import SpoolError
from tirreno_shipper.health import SensorHealth
from tirreno_shipper.records import Event
from tirreno_shipper.sender import (
    BATCH,
    Outcome,
    SiteSender,
    TokenBucket,
    Verdict,
    classify,
    encode_form,
    parse_retry_after,
    send_one,
    user_agent,
)
from tirreno_shipper.spool import Spool

ROOT = Path(__file__).resolve().parents[1]
KEY = "k-123"


def sensor_config(url: str, **overrides: Any) -> SensorConfig:
    values: dict[str, Any] = {"url": url, "api_key": KEY, "rate_limit": 0, "timeout": 2.0}
    values.update(overrides)
    return SensorConfig(**values)


def rid(i: int) -> str:
    return f"00000000-0000-5000-8000-{i:012d}"


def make_events(n: int, start: int = 0) -> list[Event]:
    return [
        Event(
            rid(i),
            {
                "ipAddress": "203.0.113.7",
                "url": f"/page/{i}?q=a b&c=ü",
                "userName": f"user{i}",
                "eventTime": "2024-05-01 10:00:00.123",
                "eventType": "page_view",
                "httpCode": "200",
            },
        )
        for i in range(start, start + n)
    ]


# -- classify ---------------------------------------------------------------------------


def test_204_is_accepted() -> None:
    """Only 204 is success."""
    assert classify(204, b"", {}, None) == Verdict(Outcome.ACCEPTED, "204")


@pytest.mark.parametrize("body", [b"", b"\n", b"  "])
def test_empty_200_is_rejected(body: bytes) -> None:
    """An empty 200 is tirreno's refusal (wrong key, missing field, wrong content type)."""
    assert classify(200, body, {}, None) == Verdict(Outcome.REJECTED, "rejected")


@pytest.mark.parametrize("status", [200, 201, 202])
def test_a_2xx_with_a_body_is_not_tirreno_and_keeps_the_event(status: int) -> None:
    """A page answering 200 with HTML means a wrong URL: rejected (kept), never dropped."""
    verdict = classify(status, b"<html>welcome</html>", {}, None)
    assert verdict.outcome is Outcome.REJECTED
    assert "not a tirreno sensor" in verdict.reason


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_means_a_wrong_url_and_hides_credentials(status: int) -> None:
    """A redirect is a wrong URL: rejected (kept), and the Location's password is not echoed."""
    verdict = classify(status, b"", {"Location": "https://u:secret@example.com/sensor/"}, None)
    assert verdict.outcome is Outcome.REJECTED
    assert f"redirect {status}" in verdict.reason
    assert "example.com/sensor/" in verdict.reason
    assert "secret" not in verdict.reason


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_endpoint_4xx_keep_the_event(status: int) -> None:
    """4xx answers about the endpoint (auth proxy, wrong path) keep events like a rejection."""
    assert classify(status, b"nope", {}, None).outcome is Outcome.REJECTED


@pytest.mark.parametrize("status", [400, 413, 414, 415, 422])
def test_other_4xx_are_permanent(status: int) -> None:
    """A 4xx about the event itself is permanent: it goes to the dead letters."""
    assert classify(status, b"bad", {}, None) == Verdict(Outcome.PERMANENT, f"http {status}")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retried(status: int) -> None:
    """Server trouble and rate limits are retried, with the status as the reason."""
    assert classify(status, b"", {}, None) == Verdict(Outcome.RETRY, str(status))


def test_retry_after_seconds_is_parsed_case_insensitively() -> None:
    """Retry-After in seconds is honoured whatever the header's case."""
    assert classify(429, b"", {"retry-after": "7"}, None).retry_after == 7.0
    assert classify(503, b"", {"RETRY-AFTER": " 2 "}, None).retry_after == 2.0


def test_retry_after_http_date_is_parsed() -> None:
    """Retry-After as an HTTP-date gives the seconds from now until that date."""
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 120, usegmt=True)
    verdict = classify(503, b"", httpx.Headers({"Retry-After": date}), None, now=now)
    assert verdict == Verdict(Outcome.RETRY, "503", 120.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("-5", 0.0),
        ("1.5", 1.5),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after_edge_cases(value: str | None, expected: float | None) -> None:
    """Garbage Retry-After values are ignored; past dates and negatives mean now."""
    assert parse_retry_after(value, now=1_700_000_000.0) == expected


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("refused"), "connect"),
        (ConnectionRefusedError(111, "refused"), "connect"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.PoolTimeout("busy"), "timeout"),
        (httpx.RemoteProtocolError("closed"), "network"),
        (httpx.ReadError("reset"), "network"),
        (_chained(httpx.ConnectError("tls"), ssl.SSLCertVerificationError("bad cert")), "tls"),
        (RuntimeError("surprise"), "error"),
    ],
)
def test_errors_without_an_answer_are_retried(error: BaseException, reason: str) -> None:
    """Timeouts, refused connects, TLS and other failures are retried with a bounded reason."""
    assert classify(None, b"", None, error) == Verdict(Outcome.RETRY, reason)


def test_user_agent_names_product_and_version() -> None:
    """The User-Agent names the product and its version."""
    assert user_agent() == f"tirreno-shipper/{__version__} (+https://github.com/tirreno)"


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=8))
def test_encode_form_is_urlencode_byte_for_byte(fields: dict[str, str]) -> None:
    """The fast form encoder gives exactly what urllib.parse.urlencode gives."""
    assert encode_form(fields) == urllib.parse.urlencode(fields).encode()


def test_encode_form_of_real_fields() -> None:
    """Known names, safe values, spaces, slashes and non-ASCII encode as urlencode does."""
    fields = {"ipAddress": "::1", "url": "/a b?c=d&e=ü", "eventType": "page_view", "x y": "~"}
    assert encode_form(fields) == urllib.parse.urlencode(fields).encode()
    with pytest.raises(UnicodeEncodeError):
        encode_form({"userName": "bad\ud800"})


# -- send_one over real sockets ----------------------------------------------------------


def test_send_one_classifies_real_answers() -> None:
    """send_one gets 204, an empty 200, 500 and 503 with Retry-After, a refused connect and a
    timeout from a real server."""
    fields = {"ipAddress": "192.0.2.1", "url": "/check", "eventType": "page_view"}
    with FakeSensor(api_key=KEY, retry_after=1) as sensor:
        config = sensor_config(sensor.url, timeout=0.3)
        assert send_one(config, fields, rid(1)).outcome is Outcome.ACCEPTED
        assert sensor.accepted[0].fields == fields
        wrong = sensor_config(sensor.url, api_key="nope")
        assert send_one(wrong, fields, rid(2)) == Verdict(Outcome.REJECTED, "rejected")
        for status in (500, 503):
            sensor.set_mode(str(status))
            answer = Verdict(Outcome.RETRY, str(status), retry_after=1.0, status=status)
            assert send_one(config, fields, rid(5)) == answer
        sensor.set_mode("hang")
        assert send_one(config, fields, rid(3)) == Verdict(Outcome.RETRY, "timeout")
        sensor.set_mode("refuse")
        assert send_one(config, fields, rid(4)) == Verdict(Outcome.RETRY, "connect")
        sensor.set_mode("ok")


# -- token bucket ---------------------------------------------------------------------------


def test_token_bucket_rate_zero_never_waits() -> None:
    """rate 0 disables the limit."""
    clock, stop = FakeClock(), threading.Event()
    bucket = TokenBucket(0, 1, clock=clock)
    assert all(bucket.acquire(stop) for _ in range(10_000))
    assert clock.waits == []


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    """A full bucket passes `burst` at once, then one token every 1/rate seconds."""
    clock, stop = FakeClock(), threading.Event()
    bucket = TokenBucket(20, 5, clock=clock)
    started = clock.monotonic()
    for _ in range(5):
        assert bucket.acquire(stop)
    assert clock.monotonic() == started
    for _ in range(10):
        assert bucket.acquire(stop)
    assert clock.monotonic() - started == pytest.approx(10 / 20)
    assert max(clock.waits) == pytest.approx(1 / 20)  # never longer than one token's time


def test_token_bucket_is_shared_safely_by_threads() -> None:
    """Four threads sharing a bucket together never exceed its rate."""
    clock, stop = SimClock(parties=4), threading.Event()
    bucket = TokenBucket(50, 1, clock=clock)
    stamps: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            assert bucket.acquire(stop)
            with lock:
                stamps.append(clock.monotonic())

    threads = [threading.Thread(target=take) for _ in range(4)]
    started = clock.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 40
    assert max(stamps) - started == pytest.approx(39 / 50)
    stamps.sort()
    assert all(b - a >= 1 / 50 - 1e-9 for a, b in itertools.pairwise(stamps))


def test_token_bucket_wait_gives_up_at_its_deadline() -> None:
    """A wait bounded by ``until`` ends then without a token (and takes none later)."""
    clock, never = FakeClock(), threading.Event()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.acquire(never)
    started = clock.monotonic()
    assert not bucket.acquire(never, until=started + 0.2)
    assert clock.monotonic() - started == pytest.approx(0.2)
    assert bucket.acquire(never)  # the token it did not take is still there for others
    assert clock.monotonic() - started == pytest.approx(1.0)


def test_token_bucket_give_back_and_empty() -> None:
    """A token given back is there for the next taker; empty() drops the saved-up burst."""
    clock, stop = FakeClock(), threading.Event()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert bucket.acquire(stop)
    bucket.give_back()
    for _ in range(3):
        assert bucket.acquire(stop)
    assert clock.waits == []
    clock.advance(60)
    bucket.empty()
    assert bucket.acquire(stop)
    assert sum(clock.waits) == pytest.approx(0.5)


def test_token_bucket_wait_is_interrupted_by_stop() -> None:
    """A stop while waiting for a token returns False at once."""
    bucket, stop = TokenBucket(0.1, 1), threading.Event()
    assert bucket.acquire(stop)
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert bucket.acquire(stop) is False
    assert time.monotonic() - started < 1.0


# -- the sensor's health: ok, backing off, rejecting (on a fake clock) --------------------


def make_health(clock: FakeClock, **overrides: Any) -> tuple[SensorHealth, list[str]]:
    recoveries: list[str] = []
    config = sensor_config("http://127.0.0.1:1/sensor/", **overrides)
    health = SensorHealth(
        "health",
        config.url,
        config,
        clock=clock,
        on_recovery=lambda: recoveries.append("empty"),
        rng=random.Random(7),
    )
    return health, recoveries


def test_health_backs_off_exponentially_with_half_jitter_and_one_probe() -> None:
    """A refused sensor for 30 s: probes at growing intervals (no spinning), only one at a
    time, and the first 204 returns to ok and drops the saved-up tokens."""
    clock, stop = FakeClock(), threading.Event()
    health, recoveries = make_health(clock, retry_max_delay=8.0)
    assert health.admit(stop, BATCH) == BATCH
    started = clock.monotonic()
    health.on_retry("connect", None, started)
    assert health.state == "backing_off"
    probes = []
    while clock.monotonic() - started < 30:
        assert health.admit(stop, BATCH) == 1  # the probe: a single event
        probes.append(clock.monotonic() - started)
        health.on_retry("connect", None, clock.monotonic())
        health.end_probe()
    gaps = [b - a for a, b in itertools.pairwise([0.0, *probes])]
    # 0.5, 1, 2, 4, then 8 s at most, each at least half its step.
    for n, gap in enumerate(gaps):
        top = min(8.0, 0.5 * 2**n)
        assert top / 2 <= gap <= top
    assert 5 <= len(probes) < 15
    health.on_success()
    assert (health.state, recoveries) == ("ok", ["empty"])
    assert health.admit(stop, BATCH) == BATCH


def test_health_counts_failures_in_flight_together_once() -> None:
    """Four requests that were in flight together fail together: the backoff grows once."""
    clock = FakeClock()
    health, _ = make_health(clock)
    started = clock.monotonic()
    clock.advance(0.1)
    for _ in range(4):
        health.on_retry("503", None, started)
    assert health.resume_at - clock.monotonic() <= SensorHealth.BACKOFF_BASE


def test_health_honours_retry_after_within_the_cap() -> None:
    """A 429's Retry-After sets the wait (at least 0.1 s, at most retry_max_delay)."""
    clock, stop = FakeClock(), threading.Event()
    health, _ = make_health(clock, retry_max_delay=30.0)
    health.on_retry("429", 6.0, clock.monotonic())
    assert health.resume_at - clock.monotonic() == pytest.approx(6.0)
    health.on_retry("429", 120.0, clock.monotonic())
    assert health.resume_at - clock.monotonic() == pytest.approx(30.0)
    before = clock.monotonic()
    assert health.admit(stop, BATCH) == 1
    assert clock.monotonic() - before == pytest.approx(30.0)


def test_health_a_second_worker_waits_while_the_probe_is_out() -> None:
    """While the probe is out, the other workers wait; stop ends every wait."""
    clock, stop = FakeClock(), threading.Event()
    health, _ = make_health(clock)
    health.on_retry("503", 1.0, clock.monotonic())
    assert health.admit(stop, BATCH) == 1
    clock.waits.clear()
    stop.set()
    assert health.admit(stop, BATCH) is None
    stop.clear()
    threading.Timer(0.05, stop.set).start()
    assert health.admit(stop, BATCH) is None  # waited (1 s steps) for the probe to end
    assert clock.waits and set(clock.waits) == {1.0}


def test_health_rejecting_after_the_threshold_probes_with_doubling_delays() -> None:
    """Rejections below the threshold change nothing; at it, one error and probes every
    5, 10, 20 ... 300 s; a 204 resumes."""
    clock, stop = FakeClock(), threading.Event()
    health, recoveries = make_health(clock, reject_threshold=3)
    with structlog.testing.capture_logs() as logs:
        assert not health.on_reject("rejected", probing=False)
        assert not health.on_reject("rejected", probing=False)
        assert health.on_reject("rejected", probing=False)
        assert health.state == "rejecting"
        assert health.on_reject("rejected", probing=False)  # in flight: no news
        delays = []
        for _ in range(8):
            before = clock.monotonic()
            assert health.admit(stop, BATCH) == 1
            delays.append(clock.monotonic() - before)
            assert health.on_reject("rejected", probing=True)
            health.end_probe()
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["sensor_rejecting"]
    assert health.admit(stop, BATCH) == 1
    health.on_success()
    assert (health.state, recoveries) == ("ok", ["empty"])


# -- end to end: SiteSender + real Spool + FakeSensor ------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = Spool.open(tmp_path / "state")
    yield opened
    opened.close()


@contextlib.contextmanager
def running(
    config: SensorConfig, spool: Spool, site: str = "shop", **kwargs: Any
) -> Iterator[SiteSender]:
    sender = SiteSender(site, config, spool, **kwargs)
    sender.start()
    try:
        yield sender
    finally:
        sender.stop(5)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def counter(metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get())


def test_delivers_every_event_with_form_fields_and_headers(spool: Spool) -> None:
    """Every spooled event arrives once, form-encoded, with Api-Key, X-Request-Id and User-Agent."""
    events = make_events(60)
    spool.commit_chunk("deliver", events, None)
    sent_before = counter(metrics.EVENTS_SENT, site="deliver")
    with FakeSensor(api_key=KEY) as sensor:
        with running(sensor_config(sensor.url), spool, site="deliver") as sender:
            assert sender.alive()
            assert sender.wait_empty(20)
            assert sender.state == "ok"
        assert not sender.alive()
        by_id = {r.request_id: r for r in sensor.accepted}
        assert len(sensor.accepted) == 60  # no fault: exactly once
        for event in events:
            received = by_id[event.request_id]
            assert received.fields == dict(event.fields)
            assert received.headers["api-key"] == KEY
            assert received.headers["user-agent"] == user_agent()
            assert received.headers["content-type"] == "application/x-www-form-urlencoded"
            assert received.headers["x-request-id"] == event.request_id
    assert counter(metrics.EVENTS_SENT, site="deliver") - sent_before == 60
    assert spool.stats("deliver").depth == 0


def test_wait_empty_times_out_while_the_sensor_is_down(spool: Spool) -> None:
    """wait_empty returns False when the bounded time runs out with events left."""
    spool.commit_chunk("shop", make_events(3), None)
    with FakeSensor(api_key=KEY) as sensor:
        sensor.set_mode("503")
        with running(sensor_config(sensor.url), spool) as sender:
            assert sender.wait_empty(0.5) is False
        assert spool.stats("shop").depth == 3


def test_stop_interrupts_a_backoff_wait(spool: Spool) -> None:
    """A shutdown during a long Retry-After backoff returns at once and keeps every event."""
    spool.commit_chunk("wait", make_events(10), None)
    with FakeSensor(api_key=KEY, retry_after=120) as sensor:
        sensor.set_mode("503")
        sender = SiteSender("wait", sensor_config(sensor.url), spool)
        sender.start()
        assert wait_until(lambda: sender.state == "backing_off", 5)
        started = time.monotonic()
        sender.stop(5)
        assert time.monotonic() - started < 1.0
    stats = spool.stats("wait")
    assert (stats.depth, stats.leased, stats.dead_letters) == (10, 0, 0)


def test_slow_and_hung_sensor_time_out_and_recover(spool: Spool) -> None:
    """Answers slower than the timeout and a hung sensor are retried; nothing is lost."""
    events = make_events(12)
    spool.commit_chunk("slow", events, None)
    before = counter(metrics.EVENTS_RETRIED, site="slow", reason="timeout")
    with FakeSensor(api_key=KEY, slow_seconds=1.0) as sensor:
        sensor.set_mode("slow")
        # Backoffs of at most 0.5 s: what is checked is the retry, not its delay.
        config = sensor_config(sensor.url, timeout=0.3, retry_max_delay=0.5)
        with running(config, spool, site="slow") as sender:
            assert wait_until(
                lambda: counter(metrics.EVENTS_RETRIED, site="slow", reason="timeout") > before, 5
            )
            sensor.set_mode("hang")
            assert wait_until(lambda: sensor.hanging >= 1, 10)
            assert sender.state == "backing_off"
            sensor.set_mode("ok")
            assert sender.wait_empty(20)
            assert sender.state == "ok"
        # A slow answer after our timeout may still have been stored: at least once.
        assert set(sensor.accepted_ids()) == {e.request_id for e in events}


def test_invalid_events_go_to_dead_letters_and_never_leave(spool: Spool) -> None:
    """Events that fail our own validation are dead-lettered; the sensor never sees them."""
    good = make_events(5)
    bad = [
        Event(rid(100), {"url": "/no-ip"}),
        Event("x" * 37, {"ipAddress": "192.0.2.1", "url": "/long-id"}),
        Event(rid(101), {"ipAddress": "not-an-ip", "url": "/bad-ip"}),
        Event(rid(102), {"ipAddress": "192.0.2.1", "url": "/x", "userName": "bad\ud800"}),
    ]
    spool.commit_chunk("invalid", [*good, *bad], None)
    with FakeSensor(api_key=KEY) as sensor:
        with running(sensor_config(sensor.url), spool, site="invalid") as sender:
            assert sender.wait_empty(10)
        assert sorted(sensor.accepted_ids()) == sorted(e.request_id for e in good)  # type: ignore[type-var]
        assert sensor.count("200") == 0
    assert spool.stats("invalid").dead_letters == 4


class _PermanentHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(413 if b"huge" in body else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_permanent_4xx_goes_to_dead_letters(spool: Spool) -> None:
    """A 413 for one event dead-letters that event only; the others are delivered."""
    events = make_events(4)
    huge = Event(rid(50), {"ipAddress": "192.0.2.1", "url": "/huge"})
    spool.commit_chunk("perm", [*events, huge], None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PermanentHandler)
    # Polled every 50 ms, not serve_forever's 0.5 s: shutdown() waits for the next poll.
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/sensor/"
        with running(sensor_config(url), spool, site="perm") as sender:
            assert sender.wait_empty(10)
            assert sender.state == "ok"
    finally:
        server.shutdown()
        server.server_close()
    (dead,) = spool.dead_letters("perm")
    assert dead.attempts == 1, "it was sent once"


def test_max_attempts_dead_letters_after_that_many_failures(spool: Spool) -> None:
    """With max_attempts set, an event that keeps failing ends in the dead letters."""
    spool.commit_chunk("maxatt", make_events(2), None)
    with FakeSensor(api_key=KEY) as sensor:
        sensor.set_mode("500")
        config = sensor_config(sensor.url, max_attempts=2, retry_max_delay=0.3)
        with running(config, spool, site="maxatt") as sender:
            assert sender.wait_empty(15)
        assert sensor.count("500") == 4
    dead = spool.dead_letters("maxatt")
    assert [d.attempts for d in dead] == [2, 2], "the attempt that gave up counts too"
    assert all(d.reason.startswith("gave up after 2 attempts") for d in dead)


def test_stop_finishes_in_flight_requests_and_releases_the_rest(spool: Spool) -> None:
    """stop(grace) lets in-flight requests finish and gives every unsent lease back."""
    spool.commit_chunk("stop", make_events(60), None)
    with FakeSensor(api_key=KEY, delay=0.1) as sensor:
        sender = SiteSender("stop", sensor_config(sensor.url), spool, lease_seconds=600)
        sender.start()
        assert sensor.wait_accepted(8, 10)
        sender.stop(5)
        assert not sender.alive()
        stats = spool.stats("stop")
        assert stats.leased == 0
        assert stats.depth + len(sensor.accepted) == 60
        assert len(set(sensor.accepted_ids())) == len(sensor.accepted)


def test_stop_past_grace_with_a_hung_sensor_loses_nothing(spool: Spool) -> None:
    """With hung requests stop returns after the grace; only in-flight events stay leased."""
    spool.commit_chunk("hung", make_events(40), None)
    with FakeSensor(api_key=KEY) as sensor:
        sensor.set_mode("hang")
        config = sensor_config(sensor.url, timeout=30)
        sender = SiteSender("hung", config, spool, lease_seconds=600)
        sender.start()
        assert wait_until(lambda: sensor.hanging >= 4, 5)
        started = time.monotonic()
        sender.stop(0.5)
        assert time.monotonic() - started < 3.0
        stats = spool.stats("hung")
        assert stats.depth == 40
        assert stats.leased <= 4  # at most the one request in flight per worker
        # When the hung requests end, the stopped workers give their events back.
        sensor.set_mode("ok")
        assert wait_until(lambda: spool.stats("hung").leased == 0, 5)
    assert spool.stats("hung").depth == 40
    assert sensor.accepted == []


def test_stop_past_grace_writes_the_acks_of_events_accepted_before_the_hang(
    spool: Spool,
) -> None:
    """Rate-limited, a worker holds a 204's ack while it waits for the next token; if the
    next request hangs and the grace ends, that ack is still written: an event tirreno
    accepted is never sent again (only the hung one may be)."""
    spool.commit_chunk("held", make_events(5), None)
    with FakeSensor(api_key=KEY) as sensor:
        # 2/s: the token wait (0.5 s) is longer than ACK_WITHIN, so acks are held.
        config = sensor_config(sensor.url, timeout=30, rate_limit=2, burst=1, concurrency=1)
        sender = SiteSender("held", config, spool, lease_seconds=600)
        sender.start()
        assert wait_until(lambda: len(sensor.accepted) >= 1, 10)
        sensor.set_mode("hang")
        assert wait_until(lambda: sensor.hanging >= 1, 5)
        sender.stop(0.3)
        accepted = {r.request_id for r in list(sensor.accepted)}
        queued = set(spooled_ids(spool.path.parent, "held"))
        assert accepted and not accepted & queued, "an accepted event is still in the spool"
        assert len(accepted) + len(queued) == 5
        sensor.set_mode("ok")


class _FlakySpool:
    """A real spool whose first leases (or acks) fail, as a locked or full disk would
    make them."""

    def __init__(self, spool: Spool, failures: int, *, ack_failures: int = 0) -> None:
        self._spool = spool
        self.failures = failures
        self.ack_failures = ack_failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spool, name)

    def lease(self, site: str, limit: int, lease_seconds: float, *lanes: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise SpoolError("database is locked")
        return self._spool.lease(site, limit, lease_seconds, *lanes)

    def ack(self, ids: Any) -> None:
        if self.ack_failures > 0:
            self.ack_failures -= 1
            raise SpoolError("database or disk is full")
        self._spool.ack(ids)


def test_worker_loops_survive_errors(spool: Spool) -> None:
    """A worker whose spool call fails logs it and carries on; events still arrive."""
    events = make_events(10)
    spool.commit_chunk("flaky", events, None)
    flaky = _FlakySpool(spool, failures=2)
    with FakeSensor(api_key=KEY) as sensor:
        with (
            structlog.testing.capture_logs() as logs,
            running(sensor_config(sensor.url), flaky, site="flaky") as sender,  # type: ignore[arg-type]
        ):
            assert sender.wait_empty(10)
            assert sender.alive()
        assert len(set(sensor.accepted_ids())) == 10
    # Said once, in one line (no traceback a second per worker).
    [said] = [e for e in logs if e["event"] == "sender_spool_error"]
    assert said["log_level"] == "error" and "exc_info" not in said
    assert said["error"] == "database is locked"


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tirreno_shipper.config import SensorConfig
    from tirreno_shipper.sender import SiteSender
    from tirreno_shipper.spool import Spool

    spool = Spool.open(Path(sys.argv[1]))
    config = SensorConfig(url=sys.argv[2], api_key=sys.argv[3], rate_limit=0)
    SiteSender("kill", config, spool, lease_seconds=600).start()
    time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backfill", [False, True])
def test_kill_mid_flight_duplicates_only_requests_in_flight(tmp_path: Path, backfill: bool) -> None:
    """SIGKILL while sending, restart: nothing lost, duplicates bounded by concurrency x batch;
    the same while a backfill drains behind live events (three lanes in the spool)."""
    state = tmp_path / "state"
    events = make_events(400)
    first = Spool.open(state)
    if backfill:
        first.commit_chunk("kill", events[:300], None, backfill=True)
        first.commit_chunk("kill", typed(events[300:350], "account_login"), None)
        first.commit_chunk("kill", events[350:], None)
        events = [*events[:300], *typed(events[300:350], "account_login"), *events[350:]]
    else:
        first.commit_chunk("kill", events, None)
    first.close()
    with FakeSensor(api_key=KEY, delay=0.01, bucket_capacity=0) as sensor:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state), sensor.url, KEY], env=env
        )
        try:
            assert sensor.wait_accepted(150, 30)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        # Requests the server was still handling at the kill finish on its side.
        time.sleep(0.3)
        accepted_before_kill = len(sensor.accepted)
        assert accepted_before_kill < 400
        spool = Spool.open(state)
        try:
            spool.recover_leases()
            with running(sensor_config(sensor.url), spool, site="kill") as sender:
                assert sender.wait_empty(30)
        finally:
            spool.close()
        ids = sensor.accepted_ids()
    assert set(ids) == {e.request_id for e in events}
    duplicates = Counter(ids)
    extra = sum(n - 1 for n in duplicates.values())
    print(f"killed after {accepted_before_kill} accepted; duplicates: {extra}")
    assert extra <= 4 * BATCH
    # Only events the killed process had sent can have been sent twice.
    first_seen = {i: ids.index(i) for i, n in duplicates.items() if n > 1}
    assert all(index < accepted_before_kill for index in first_seen.values())


# -- simulated: SiteSender + real Spool + MockPoster, on virtual time --------------------
#
# The workers, the spool's leases and retry delays and the sensor's bucket all read
# one SimClock, so a minute of rate limits or backoff passes in a fraction of a second,
# and every figure below is checked in that virtual time.

TIRRENO = "http://sensor.invalid/sensor/"


class RollingBucket:
    """tirreno's per-key bucket: ``capacity`` requests per rolling ``window`` seconds,
    429 with Retry-After beyond; accepts everything else."""

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity, self.window = capacity, window
        self._stamps: deque[float] = deque()
        self._lock = threading.Lock()

    def __call__(self, posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            while self._stamps and self._stamps[0] <= posted.time - self.window:
                self._stamps.popleft()
            if len(self._stamps) >= self.capacity:
                wait = self._stamps[0] + self.window - posted.time
                return 429, b"", {"Retry-After": str(math.ceil(wait))}
            self._stamps.append(posted.time)
        return 204, b"", {}


@dataclass
class Sim:
    sender: SiteSender
    poster: MockPoster
    clock: SimClock
    spool: Spool
    started: float

    def answered(self, status: int | None) -> list[Posted]:
        return [p for p in list(self.poster.posted) if p.status == status]

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (only in a test that joined as a party)."""
        self.clock.wait(threading.Event(), seconds)

    def run_until_empty(self, limit: float) -> bool:
        """Let virtual time pass until the spool is empty; False after ``limit`` seconds."""
        deadline = self.clock.monotonic() + limit
        while self.clock.monotonic() < deadline:
            stats = self.spool.stats("sim")
            if stats.depth == 0 and stats.leased == 0:
                return True
            self.run_for(0.5)
        return False


@contextlib.contextmanager
def simulated(
    tmp_path: Path,
    events: list[Event],
    handler: Callable[[Posted], tuple[int, bytes, Mapping[str, str]]] = lambda p: (204, b"", {}),
    *,
    config: SensorConfig | None = None,
    lease_seconds: float = 60.0,
    backfill: list[Event] = [],  # noqa: B006 - never mutated
    backfill_share: float = 0.05,
    observer: bool = False,
    wrap: Callable[[Spool], Any] | None = None,
    **overrides: Any,
) -> Iterator[Sim]:
    """A sender on virtual time. With ``observer`` the test's thread is a party of the
    clock too: time stands still while it looks, and passes only in `Sim.run_for`. With
    ``wrap``, the sender uses ``wrap(spool)`` (a spool whose calls fail at times)."""
    config = config or sensor_config(TIRRENO)
    config = config.model_copy(update=overrides)
    clock = SimClock(parties=config.concurrency + observer)
    spool = Spool.open(tmp_path / "sim", clock=clock)
    spool.commit_chunk("sim", backfill, None, backfill=True)
    spool.commit_chunk("sim", events, None)
    poster = MockPoster(handler, clock=clock)
    sender = SiteSender(
        "sim",
        config,
        spool if wrap is None else wrap(spool),
        lease_seconds=lease_seconds,
        backfill_share=backfill_share,
        clock=clock,
        poster=poster,
    )
    sim = Sim(sender, poster, clock, spool, clock.monotonic())
    sender.start()
    try:
        yield sim
    finally:
        sender.stop(5)
        spool.close()
    assert poster.closed


def test_a_single_rejection_below_the_threshold_is_retried_later(tmp_path: Path) -> None:
    """One empty 200 leaves the site ok and retries the event after a delay; never dropped."""
    answers = iter([200])

    def rejected_once(posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        return next(answers, 204), b"", {}

    with (
        structlog.testing.capture_logs() as logs,
        simulated(tmp_path, make_events(1), rejected_once) as sim,
    ):
        assert sim.sender.wait_empty(10)
        assert sim.sender.state == "ok"
    [rejected], [accepted] = sim.answered(200), sim.answered(204)
    assert accepted.request_id == rejected.request_id and accepted.time > rejected.time
    assert not [e for e in logs if e["event"].startswith("sensor_")], "the state changed"


def test_500_and_503_then_recovery_loses_nothing(tmp_path: Path) -> None:
    """Server errors back the site off; after recovery every event is delivered once."""
    events = make_events(20)
    until = {500: math.inf, 503: math.inf}

    def erring(posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        for status in (500, 503):
            if posted.time < until[status]:
                return status, b"", {"Retry-After": "1"}
        return 204, b"", {}

    with (
        structlog.testing.capture_logs() as logs,
        simulated(tmp_path, events, erring) as sim,
    ):
        until[500], until[503] = sim.started + 2, sim.started + 4
        assert sim.sender.wait_empty(20)
        assert sim.sender.state == "ok"
    assert sim.answered(500) and sim.answered(503)
    states = [e["event"] for e in logs if e["event"] in ("sensor_backing_off", "sensor_ok")]
    assert states[0] == "sensor_backing_off" and states[-1] == "sensor_ok", states
    assert sorted(sim.poster.accepted_ids()) == sorted(e.request_id for e in events)
    # The struggling sensor was not hammered: a handful of requests, not hundreds.
    assert len(sim.answered(500)) + len(sim.answered(503)) <= 12


def test_events_accepted_while_their_ack_cannot_be_written_are_never_sent_again(
    tmp_path: Path,
) -> None:
    """A full disk after the 204s: the acks fail for longer than the leases (1.5 s) last;
    no event is posted again, and each is acked once the spool can be written."""
    events = make_events(10)
    # Each failed ack costs its worker a 1 s wait: 12 of them outlast the leases.
    flaky: list[_FlakySpool] = []

    def full_disk(spool: Spool) -> _FlakySpool:
        flaky.append(_FlakySpool(spool, failures=0, ack_failures=12))
        return flaky[0]

    with simulated(tmp_path, events, lease_seconds=1.5, timeout=0.5, wrap=full_disk) as sim:
        assert sim.sender.wait_empty(20)
        assert flaky[0].ack_failures == 0
        assert sim.clock.monotonic() - sim.started > 1.5
    ids = Counter(sim.poster.accepted_ids())
    assert sorted(ids) == sorted(e.request_id for e in events)
    assert max(ids.values()) == 1, ids.most_common(3)
    assert len(sim.poster.posted) == 10  # not one posted again


def test_outage_of_30_seconds_then_recovery_loses_nothing(tmp_path: Path) -> None:
    """Refused connects for 30 s: few attempts (no spinning), then everything is delivered."""
    events = make_events(40)
    recovery = {"at": math.inf}

    def refuse_for_30s(posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        if posted.time < recovery["at"]:
            raise httpx.ConnectError("refused")
        return 204, b"", {}

    with simulated(tmp_path, events, refuse_for_30s, retry_max_delay=8.0) as sim:
        recovery["at"] = sim.started + 30
        assert sim.sender.wait_empty(20)
    refused = [p.time - sim.started for p in sim.answered(None)]
    assert 1 <= sum(t < 10 for t in refused) < 15
    assert len(refused) < 25
    assert sorted(sim.poster.accepted_ids()) == sorted(e.request_id for e in events)


def test_429_storm_is_honoured_with_retry_after(tmp_path: Path) -> None:
    """A small server bucket answers 429 with Retry-After; the sender waits, nothing is lost."""
    events = make_events(50)
    with simulated(tmp_path, events, RollingBucket(10, 1.0)) as sim:
        assert sim.sender.wait_empty(20)
    posted = list(sim.poster.posted)
    assert sorted(sim.poster.accepted_ids()) == sorted(e.request_id for e in events)
    assert posted[-1].time - sim.started >= 4.0
    # Honouring Retry-After: a few 429s per window (the requests in flight), not a flood.
    throttled = sim.answered(429)
    assert 1 <= len(throttled) <= 5 * 6
    for answer in throttled:
        # No request may start more than `concurrency` times in the second after a 429.
        window = [p for p in posted if answer.time < p.time < answer.time + 0.9]
        assert len(window) <= 4 + 1


def test_workers_waiting_for_a_token_do_not_post_after_a_429(tmp_path: Path) -> None:
    """A 429 with Retry-After: the workers queued behind the rate limiter re-check the
    state after their wait and hold back, instead of each earning a 429 of its own."""
    with simulated(tmp_path, make_events(12), RollingBucket(3, 6), rate_limit=4, burst=1) as sim:
        assert sim.sender.wait_empty(20)
    first_429 = sim.answered(429)[0].time
    assert [p for p in sim.poster.posted if first_429 < p.time < first_429 + 2.0] == []
    assert len(sim.answered(429)) <= 3
    assert len(set(sim.poster.accepted_ids())) == 12


def test_after_a_backoff_the_sender_resumes_at_the_steady_rate_not_in_a_burst(
    tmp_path: Path,
) -> None:
    """Tokens saved up while backing off (a 503 with Retry-After) are dropped when the
    probe succeeds: the recovered sensor gets the steady rate, not burst-many at once."""
    answers = iter([(503, b"", {"Retry-After": "2"})])

    def one_503(posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        return next(answers, (204, b"", {}))

    with simulated(tmp_path, make_events(30), one_503, rate_limit=4, burst=10) as sim:
        assert sim.sender.wait_empty(20)
    first_ok = sim.answered(204)[0].time
    early = [p for p in sim.answered(204) if p.time - first_ok < 0.6]
    # The probe, then 4/s from an empty bucket: 3 at most (10 with the saved-up burst).
    assert len(early) <= 3, f"{len(early)} requests within 0.6 s of the probe"


def test_wrong_key_for_a_while_then_the_right_key_loses_nothing(tmp_path: Path) -> None:
    """A run of rejections stops the site loudly, keeps every event, and a 204 resumes it."""
    events = make_events(30)
    key = {"right": False}

    def keyed(posted: Posted) -> tuple[int, bytes, dict[str, str]]:
        return (204 if key["right"] else 200), b"", {}

    with (
        structlog.testing.capture_logs() as logs,
        simulated(tmp_path, events, keyed) as sim,
    ):
        assert wait_until(lambda: sim.sender.state == "rejecting", 10)
        assert wait_until(lambda: len(sim.answered(200)) >= 5 + 4 + 3, 10)  # a few probes
        assert sim.spool.stats("sim").depth == 30
        assert sim.spool.stats("sim").dead_letters == 0
        gauge = metrics.SENSOR_STATE.labels(site="sim", state="rejecting")
        assert gauge._value.get() == 1
        key["right"] = True
        assert sim.sender.wait_empty(20)
        assert sim.sender.state == "ok"
    assert sorted(sim.poster.accepted_ids()) == sorted(e.request_id for e in events)
    rejected = [p.time for p in sim.answered(200)]
    # The threshold (5) and what was in flight with it, then one probe at a time, the
    # first 5 s after the threshold was reached, then 10, 20 ... apart.
    threshold = rejected[4]
    probes = [t for t in rejected if t > threshold]
    assert len(rejected) - len(probes) <= 5 + 4 - 1
    gaps = [b - a for a, b in itertools.pairwise([threshold, *probes])]
    assert gaps[:3] == [pytest.approx(5), pytest.approx(10), pytest.approx(20)]
    errors = [e for e in logs if e["event"] == "sensor_rejecting"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error"
    assert errors[0]["site"] == "sim"
    assert errors[0]["url"] == TIRRENO
    assert "sensor.api_key" in errors[0]["hint"]
    assert KEY not in repr(logs)


def test_rate_limit_is_held(tmp_path: Path) -> None:
    """With rate 20/s and burst 5, no one-second window sees more than 5 + 20 events."""
    with simulated(tmp_path, make_events(70), rate_limit=20, burst=5) as sim:
        assert sim.sender.wait_empty(20)
    stamps = sorted(p.time for p in sim.answered(204))
    assert len(stamps) == 70
    assert stamps[-1] - sim.started >= (70 - 5) / 20 - 1e-6
    for i, t in enumerate(stamps):
        assert sum(1 for s in stamps[i:] if s < t + 1.0) <= 5 + 20


def test_default_rate_limit_never_meets_the_default_tirreno_bucket(tmp_path: Path) -> None:
    """The default 9/s burst 10 stays within tirreno's 200 per 20 s: not a single 429."""
    events = make_events(230)
    config = SensorConfig(url=TIRRENO, api_key=SecretStr(KEY))
    with simulated(tmp_path, events, RollingBucket(200, 20), config=config) as sim:
        assert sim.sender.wait_empty(30)
    assert sim.answered(429) == []
    assert len(set(sim.poster.accepted_ids())) == 230
    assert sim.answered(204)[-1].time - sim.started >= (230 - 10) / 9 - 1e-6


def rate_limited_delivery(
    tmp_path: Path, events: int, *, rate: float, timeout: float, concurrency: int, lease: float
) -> Counter[str]:
    """Send ``events`` through a rate-limited sender with a short lease: ids accepted."""
    with simulated(
        tmp_path,
        make_events(events),
        lease_seconds=lease,
        rate_limit=rate,
        burst=1,
        timeout=timeout,
        concurrency=concurrency,
    ) as sim:
        assert sim.sender.wait_empty(30)
    ids = Counter(sim.poster.accepted_ids())
    assert sorted(ids) == sorted(e.request_id for e in make_events(events))
    # It took virtual time: the rate limit, not the lease, set the pace.
    assert sim.answered(204)[-1].time - sim.started >= (events - 1) / rate - 1e-6
    return ids


def test_a_batch_that_would_outlast_its_lease_goes_back_instead_of_being_sent_twice(
    tmp_path: Path,
) -> None:
    """A low rate limit (one request a second) and a 2.5 s lease: each worker's batch of 8
    takes longer than its lease. The rest of a batch goes back before the lease ends, so no
    other worker leases and sends the same events while the first still holds them."""
    ids = rate_limited_delivery(tmp_path, 12, rate=1.0, timeout=1.0, concurrency=2, lease=2.5)
    assert max(ids.values()) == 1, ids.most_common(3)


def test_workers_racing_for_scarce_tokens_never_send_an_event_twice(tmp_path: Path) -> None:
    """Eight workers share two tokens a second; some wait longer than their batch's lease.
    A wait is cut before the lease ends, so no worker sends events another has re-leased."""
    ids = rate_limited_delivery(tmp_path, 80, rate=2.0, timeout=0.5, concurrency=8, lease=2.5)
    assert max(ids.values()) == 1, ids.most_common(3)


# -- lanes and the adaptive rate ----------------------------------------------------------


def typed(events: list[Event], event_type: str) -> list[Event]:
    return [Event(e.request_id, {**e.fields, "eventType": event_type}) for e in events]


def test_live_events_overtake_a_queued_backfill(tmp_path: Path) -> None:
    """1000 backfilled events queued at 9/s: live page views and logins that come in are
    accepted within a second each, while the backfill keeps draining in the gaps."""
    backfill = make_events(1000, start=1000)
    with simulated(tmp_path, [], backfill=backfill, rate_limit=9, burst=1, observer=True) as sim:
        latencies = []
        for n in range(12):
            sim.run_for(3.3)
            live = typed(make_events(1, start=n), "account_login_fail" if n % 2 else "page_view")
            since = sim.clock.monotonic()
            sim.spool.commit_chunk("sim", live, None)
            sim.sender.wake()
            sim.run_for(5)
            [when] = [p.time for p in sim.answered(204) if p.request_id == live[0].request_id]
            latencies.append(when - since)
        backfilled = len(sim.answered(204)) - 12
        assert sim.run_until_empty(200)
    # A worker may still send the backfilled event it holds a token for: 4 x 1/9 s.
    assert max(latencies) <= 1.0, latencies
    assert backfilled >= 12 * 8.3 * 9 * 0.8  # the backfill drained in the gaps
    assert len(set(sim.poster.accepted_ids())) == 1012


@pytest.mark.parametrize(("share", "low", "high"), [(0.05, 5, 20), (0.2, 35, 65)])
def test_backfill_gets_its_share_while_live_events_wait(
    tmp_path: Path, share: float, low: int, high: int
) -> None:
    """200 live and 200 backfilled events queued: while live ones wait, about `share` of
    the sends go to backfill: 200 x share / (1 - share) of them before the last live one."""
    live, backfill = make_events(200), make_events(200, start=1000)
    with simulated(tmp_path, live, backfill=backfill, backfill_share=share) as sim:
        assert sim.sender.wait_empty(20)
    order = sim.poster.accepted_ids()
    last_live = max(order.index(e.request_id) for e in live)
    backfilled = {e.request_id for e in backfill}
    early = sum(1 for rid in order[:last_live] if rid in backfilled)
    assert low <= early <= high, early


def test_429s_lower_the_rate_and_it_grows_back(tmp_path: Path) -> None:
    """A bucket of 5/s against a ceiling of 9/s: the rate falls below the ceiling after
    429s (exported as a gauge) and few requests are refused."""
    with simulated(tmp_path, make_events(400), RollingBucket(50, 10), rate_limit=9) as sim:
        assert sim.sender.wait_empty(30)
        lowered = sim.sender.rate.rate
        gauge = metrics.SEND_RATE_LIMIT.labels(site="sim")._value.get()
    assert lowered < 9 and gauge == pytest.approx(lowered)
    assert len(sim.answered(429)) < 0.1 * len(sim.answered(204))
    assert len(set(sim.poster.accepted_ids())) == 400
