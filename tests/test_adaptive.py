"""The adaptive send rate (AIMD under sensor.rate_limit), on a fake clock."""

from __future__ import annotations

import pytest

from tests.support.clock import FakeClock
from tirreno_shipper import adaptive
from tirreno_shipper.adaptive import AdaptiveRate


def accept_at(rate: AdaptiveRate, clock: FakeClock, per_second: float, seconds: float) -> None:
    for _ in range(int(per_second * seconds)):
        clock.advance(1 / per_second)
        rate.on_success()


def test_starts_at_the_ceiling_and_never_passes_it() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(9.0, clock=clock)
    assert rate.rate == 9.0
    accept_at(rate, clock, 9, 60)
    assert rate.rate == 9.0


def test_a_429_falls_to_a_share_of_what_was_accepted() -> None:
    """Sending 9/s of which the sensor took 4/s: a 429 brings the rate to 0.8 x 4."""
    clock = FakeClock()
    rate = AdaptiveRate(9.0, clock=clock)
    accept_at(rate, clock, 4, 10)
    assert rate.on_throttle() == pytest.approx(adaptive.THROTTLE_BETA * 4, rel=0.05)


def test_429s_in_flight_together_count_once() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    accept_at(rate, clock, 10, 10)
    first = rate.on_throttle()
    assert rate.on_throttle() == first
    clock.advance(adaptive.COOLDOWN)
    assert rate.on_throttle() < first


def test_sustained_errors_lower_the_rate_a_single_one_does_not() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    assert rate.on_error() == 10.0
    rate.on_success()
    for _ in range(adaptive.SUSTAINED_ERRORS - 1):
        assert rate.on_error() == 10.0
    assert rate.on_error() == pytest.approx(10.0 * adaptive.ERROR_BETA)


def test_recovers_toward_the_ceiling_additively() -> None:
    """After a fall, every second of acceptance adds INCREASE x ceiling, up to the ceiling."""
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    accept_at(rate, clock, 10, 10)
    low = rate.on_throttle()
    accept_at(rate, clock, 5, 20)
    assert rate.rate == pytest.approx(low + 20 * adaptive.INCREASE * 10, rel=0.01)
    accept_at(rate, clock, 5, 1000)
    assert rate.rate == 10.0


def test_never_below_the_floor() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    for _ in range(100):
        clock.advance(adaptive.COOLDOWN)
        rate.on_throttle()
    assert rate.rate == adaptive.MIN_RATE


def test_no_ceiling_means_no_limit_and_no_adapting() -> None:
    rate = AdaptiveRate(0.0, clock=FakeClock())
    assert rate.on_throttle() == 0.0
    assert rate.on_success() == 0.0
