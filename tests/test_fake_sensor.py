"""The fake sensor answers as tirreno does; checked over real sockets with httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.clock import FakeClock
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import wait_until

GOOD = {"ipAddress": "203.0.113.7", "url": "/login", "userName": "alice"}
RID = "6f1c2b9e-8a0d-5e1f-9a3b-2c4d5e6f7a8b"


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(api_key="k1") as fake:
        yield fake


def post(
    sensor: FakeSensor,
    data: dict[str, str] | None = None,
    *,
    key: str = "k1",
    timeout: float = 5.0,
    **kwargs: object,
) -> httpx.Response:
    headers = {"Api-Key": key, "X-Request-Id": RID}
    return httpx.post(
        sensor.url,
        data=GOOD if data is None else data,
        headers=headers,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def test_accepts_a_form_event_with_204_and_records_it(sensor: FakeSensor) -> None:
    """A valid form post is answered 204 with Connection: close and recorded with its request id."""
    response = post(sensor)
    assert response.status_code == 204
    assert response.headers["connection"] == "close"
    assert sensor.url.endswith("/sensor/")
    [received] = sensor.accepted
    assert received.fields == GOOD
    assert received.request_id == RID
    assert received.headers["api-key"] == "k1"
    assert sensor.count("204") == 1


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (GOOD, "wrong"),
        ({"url": "/login"}, "k1"),
        ({"ipAddress": "203.0.113.7"}, "k1"),
        ({"ipAddress": "", "url": "/x"}, "k1"),
    ],
)
def test_refuses_with_an_empty_200(sensor: FakeSensor, data: dict[str, str], key: str) -> None:
    """A wrong key, a missing ipAddress or a missing url gets an empty 200 and is not recorded."""
    response = post(sensor, data, key=key)
    assert response.status_code == 200
    assert response.content == b""
    assert sensor.accepted == []
    assert sensor.count("200") == 1


def test_a_json_body_is_refused_with_an_empty_200(sensor: FakeSensor) -> None:
    """JSON is not a form: tirreno ignores it and answers an empty 200."""
    response = httpx.post(sensor.url, json=GOOD, headers={"Api-Key": "k1"})
    assert (response.status_code, response.content) == (200, b"")
    assert sensor.accepted == []


def test_only_post_on_the_sensor_path(sensor: FakeSensor) -> None:
    """GET on /sensor/ is 405 and any other path is 404."""
    assert httpx.get(sensor.url).status_code == 405
    other = sensor.url.replace("/sensor/", "/api/")
    assert httpx.post(other, data=GOOD, headers={"Api-Key": "k1"}).status_code == 404
    assert sensor.accepted == []


def test_the_api_key_can_change_at_runtime(sensor: FakeSensor) -> None:
    """After set_api_key the old key is refused and the new one accepted."""
    sensor.set_api_key("k2")
    assert post(sensor, key="k1").status_code == 200
    assert post(sensor, key="k2").status_code == 204


def test_bucket_answers_429_with_retry_after_then_recovers() -> None:
    """A full rolling window answers 429 with Retry-After; after the window it accepts again."""
    clock = FakeClock()
    with FakeSensor(api_key="k1", bucket_capacity=3, bucket_window=1.0, clock=clock) as sensor:
        assert [post(sensor).status_code for _ in range(3)] == [204, 204, 204]
        limited = post(sensor)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        clock.advance(0.95)
        assert post(sensor).status_code == 429  # still inside the window
        clock.advance(0.1)
        assert post(sensor).status_code == 204
        assert sensor.count("429") == 2


def test_bucket_default_is_200_per_20_seconds(sensor: FakeSensor) -> None:
    """The default bucket lets 200 requests through in a burst and limits the 201st."""
    with httpx.Client(headers={"Api-Key": "k1"}) as client:
        codes = [client.post(sensor.url, data=GOOD).status_code for _ in range(201)]
    assert codes[:200] == [204] * 200
    assert codes[200] == 429


def test_refuse_mode_refuses_connects_then_comes_back_on_the_same_port(
    sensor: FakeSensor,
) -> None:
    """In refuse mode connects fail; back to ok, the same URL accepts again."""
    url = sensor.url
    sensor.set_mode("refuse")
    with pytest.raises(httpx.ConnectError):
        post(sensor)
    sensor.set_mode("ok")
    assert sensor.url == url
    assert post(sensor).status_code == 204


@pytest.mark.parametrize("mode", ["500", "503"])
def test_error_modes_answer_their_status(mode: str) -> None:
    """500 and 503 modes answer that status, with Retry-After when configured."""
    with FakeSensor(api_key="k1", retry_after=7) as sensor:
        sensor.set_mode(mode)
        response = post(sensor)
        assert response.status_code == int(mode)
        assert response.headers["retry-after"] == "7"
        assert sensor.accepted == []
        sensor.set_mode("ok")
        assert post(sensor).status_code == 204


def test_slow_mode_holds_each_request() -> None:
    """Slow mode answers normally after holding the request slow_seconds."""
    with FakeSensor(api_key="k1", slow_seconds=0.3) as sensor:
        sensor.set_mode("slow")
        started = time.monotonic()
        assert post(sensor).status_code == 204
        assert time.monotonic() - started >= 0.3


def test_delay_holds_every_request() -> None:
    """A per-request delay applies in every answering mode."""
    with FakeSensor(api_key="k1", delay=0.2) as sensor:
        started = time.monotonic()
        assert post(sensor).status_code == 204
        assert time.monotonic() - started >= 0.2


def test_hang_mode_never_answers_until_the_mode_changes(sensor: FakeSensor) -> None:
    """In hang mode the client times out; a new mode closes the hung connection unanswered."""
    sensor.set_mode("hang")
    with pytest.raises(httpx.ReadTimeout):
        post(sensor, timeout=0.1)
    outcome: list[BaseException] = []

    def hung() -> None:
        try:
            post(sensor, timeout=5.0)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=hung)
    thread.start()
    assert wait_until(lambda: sensor.hanging == 2, 5)  # the timed-out one is held too
    sensor.set_mode("ok")
    thread.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    assert post(sensor).status_code == 204
    assert sensor.accepted_ids() == [RID]
    assert sensor.count("hang") == 2


def test_unknown_mode_is_an_error(sensor: FakeSensor) -> None:
    """A typo in a mode name fails loudly instead of silently answering ok."""
    with pytest.raises(ValueError, match="unknown mode"):
        sensor.set_mode("down")


def test_records_concurrent_requests_without_losing_any(sensor: FakeSensor) -> None:
    """Parallel posts are all recorded (the recording is thread-safe)."""

    def send(i: int) -> None:
        with httpx.Client() as client:
            for j in range(20):
                client.post(
                    sensor.url,
                    data=GOOD,
                    headers={"Api-Key": "k1", "X-Request-Id": f"{i}-{j}"},
                )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sensor.accepted) == 160
    assert len(set(sensor.accepted_ids())) == 160
    assert sensor.wait_accepted(160, 0.1)


def test_the_package_sink_listens_where_asked_and_reports_each_event() -> None:
    """The package sink (behind `tirreno-shipper sink`) binds host/port and calls on_accept."""
    from tirreno_shipper.sink import Received, Sink

    seen: list[Received] = []
    with Sink(api_key="k1", host="::1", on_accept=seen.append) as sink:
        assert sink.url == f"http://[::1]:{sink.port}/sensor/"
        response = post(sink)
    assert response.status_code == 204
    assert [r.fields for r in seen] == [GOOD]
