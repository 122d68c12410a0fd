"""The send rate a site finds for itself under ``sensor.rate_limit``: AIMD.

tirreno limits each API key with one bucket (200 requests per 20 s by
default) shared by every host that uses the key. A fixed client rate either
wastes that bucket or, with several shippers on one key, overruns it, and each
shipper then meets 429s and backs off alone: the fleet oscillates between
bursts and silence.

So the rate is a control loop, as TCP's congestion window is (AIMD: additive
increase, multiplicative decrease):

- on a 429 the rate falls to `THROTTLE_BETA` times the rate the sensor was
  actually accepting (measured over the last `MEASURE_WINDOW` s, never above the
  current rate). Starting from what was accepted, not from the configured rate,
  brings three shippers that each began at 9/s near a 10/s bucket in two or
  three steps instead of ten;
- after `SUSTAINED_ERRORS` timeouts or 5xx in a row it falls to
  `ERROR_BETA` times the current rate (a struggling sensor, not a full bucket);
- a fall counts once per `COOLDOWN` s: requests in flight together fail
  together;
- every accepted event lets it grow back by `INCREASE` x the ceiling per second
  since the last change, up to the ceiling.

Why AIMD rather than the CUBIC curve of AWS SDKs' adaptive retry mode: with
several senders sharing one bucket, AIMD is the scheme proven to converge on
equal shares without coordination (Chiu and Jain, 1989), it has two constants
an operator can reason about, and tirreno's rolling window already smooths the
signal that CUBIC's concave probing is meant to handle. The decrease (0.8) is
gentler than TCP's 0.5 because the signal is a full bucket, not a lost packet:
the sawtooth between 0.8 and 1 of the bucket's rate keeps about 90 % of it in
use.
"""

from __future__ import annotations

import threading
from collections import deque

from tirreno_shipper.clock import SYSTEM, Clock

THROTTLE_BETA = 0.8
ERROR_BETA = 0.8
SUSTAINED_ERRORS = 3
COOLDOWN = 2.0
# Per second, as a fraction of the ceiling: 9/s grows back by about 0.045/s each
# second, from 0.8 to 1 of a 10/s bucket in about 45 s.
INCREASE = 0.005
# Never below this (events/s): a probe still goes out now and then.
MIN_RATE = 0.2
MEASURE_WINDOW = 5.0


class AdaptiveRate:
    """A site's current rate; ``ceiling`` 0 means unlimited (and no adapting)."""

    def __init__(self, ceiling: float, *, clock: Clock = SYSTEM) -> None:
        self.ceiling = float(ceiling)
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = self.ceiling
        now = clock.monotonic()
        self._grown_at = now
        self._fell_at = now - COOLDOWN
        self._errors = 0
        self._accepted: deque[float] = deque()

    @property
    def rate(self) -> float:
        return self._rate

    def measured(self) -> float:
        """Events/s the sensor accepted over the last `MEASURE_WINDOW` seconds."""
        with self._lock:
            return self._measured(self._clock.monotonic())

    def _measured(self, now: float) -> float:
        while self._accepted and self._accepted[0] <= now - MEASURE_WINDOW:
            self._accepted.popleft()
        return len(self._accepted) / MEASURE_WINDOW

    def on_success(self) -> float:
        """An event was accepted; the rate to send at now."""
        if self.ceiling <= 0:
            return 0.0
        now = self._clock.monotonic()
        with self._lock:
            self._errors = 0
            self._accepted.append(now)
            if self._rate < self.ceiling:
                grown = INCREASE * self.ceiling * (now - self._grown_at)
                self._rate = min(self.ceiling, self._rate + grown)
            self._grown_at = now
            return self._rate

    def on_throttle(self) -> float:
        """The sensor answered 429; the rate to send at now."""
        if self.ceiling <= 0:
            return 0.0
        now = self._clock.monotonic()
        with self._lock:
            accepted = self._measured(now)
            base = min(self._rate, accepted) if accepted > 0 else self._rate
            return self._fall(now, base * THROTTLE_BETA)

    def on_error(self) -> float:
        """A timeout or a 5xx; the rate to send at now (lower once they are sustained)."""
        if self.ceiling <= 0:
            return 0.0
        now = self._clock.monotonic()
        with self._lock:
            self._errors += 1
            if self._errors < SUSTAINED_ERRORS:
                return self._rate
            self._errors = 0
            return self._fall(now, self._rate * ERROR_BETA)

    def _fall(self, now: float, to: float) -> float:
        if now - self._fell_at >= COOLDOWN:
            self._rate = max(MIN_RATE, min(self._rate, to))
            self._fell_at = now
        self._grown_at = now
        return self._rate
