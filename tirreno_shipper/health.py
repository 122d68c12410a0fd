"""A site's view of its sensor: ok, backing off, or rejecting, and who may send now.

States: ``ok``; ``backing_off`` after a retryable failure (workers wait, then a
single probe event goes out); ``rejecting`` after ``reject_threshold``
rejections in a row of valid events (a wrong key or URL: one probe with backoff
from `PROBE_MIN` to `PROBE_MAX`). A 204 returns to ``ok``.

The sender's workers share one `SensorHealth`; it owns the state and its
condition, and reads time only through the injected `Clock`, so the whole state
machine can be driven by a test without waiting.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import structlog

from tirreno_shipper import metrics
from tirreno_shipper.clock import SYSTEM, Clock
from tirreno_shipper.config import SensorConfig

log = structlog.get_logger(__name__)

OK = "ok"
BACKING_OFF = "backing_off"
REJECTING = "rejecting"


class SensorHealth:
    """The state machine above; thread-safe. ``on_recovery`` runs when a 204 ends a
    backoff or a rejecting spell (the sender empties its token bucket there)."""

    BACKOFF_BASE = 0.5
    PROBE_MIN = 5.0
    PROBE_MAX = 300.0

    def __init__(
        self,
        site: str,
        url: str,
        config: SensorConfig,
        *,
        clock: Clock = SYSTEM,
        on_recovery: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self.site = site
        self._url = url
        self._retry_max_delay = config.retry_max_delay
        self._reject_threshold = config.reject_threshold
        self._clock = clock
        self._on_recovery = on_recovery
        self._uniform = (rng or random.Random()).uniform
        self._cond = threading.Condition()
        # Guarded by _cond:
        self._state = OK
        self._resume_at = 0.0
        self._failures = 0
        self._last_failure = 0.0
        self._rejects = 0
        self._probe_delay = self.PROBE_MIN
        self._prober = False

    @property
    def state(self) -> str:
        return self._state

    @property
    def resume_at(self) -> float:
        """When (monotonic) the next probe may go out while not ``ok``."""
        return self._resume_at

    def publish(self) -> None:
        """Export the current state (at the sender's start)."""
        metrics.set_sensor_state(self.site, self._state)

    def interrupt(self) -> None:
        """Wake every worker waiting in `admit` (to see a stop)."""
        with self._cond:
            self._cond.notify_all()

    def admit(self, stop: threading.Event, batch: int) -> int | None:
        """Wait until a worker may send: ``batch`` events when ok, 1 for the single probe
        while not; None once ``stop`` is set. A probe must end with `end_probe`."""
        with self._cond:
            while not stop.is_set():
                if self._state == OK:
                    return batch
                wait = self._resume_at - self._clock.monotonic()
                if wait > 0:
                    self._clock.wait_on(self._cond, wait)
                elif not self._prober:
                    self._prober = True
                    return 1
                else:
                    self._clock.wait_on(self._cond, 1.0)
        return None

    def end_probe(self) -> None:
        with self._cond:
            self._prober = False
            self._cond.notify_all()

    def on_success(self) -> None:
        if self._state == OK and self._failures == 0 and self._rejects == 0:
            return  # the common case, without taking the lock
        with self._cond:
            previous = self._state
            self._failures = 0
            self._rejects = 0
            self._probe_delay = self.PROBE_MIN
            if previous != OK:
                # The tokens saved up during the backoff would let a burst out at
                # once, into a sensor that has just recovered or rate-limited us.
                self._on_recovery()
                self._set_state(OK)
                self._cond.notify_all()
        if previous != OK:
            log.info("sensor_ok", site=self.site, url=self._url, previous=previous)

    def on_retry(self, reason: str, retry_after: float | None, started: float) -> None:
        """A retryable failure (``reason``, the answer's Retry-After if any) of a request
        sent at ``started`` (monotonic)."""
        now = self._clock.monotonic()
        with self._cond:
            # Requests that were in flight together fail together: count them once,
            # or four workers would quadruple the backoff exponent at once.
            if started >= self._last_failure:
                self._failures += 1
            self._last_failure = now
            if self._state == REJECTING:
                delay = self._probe_delay
            elif retry_after is not None:
                delay = min(self._retry_max_delay, max(retry_after, 0.1))
            else:
                exp = self.BACKOFF_BASE * 2.0 ** min(self._failures - 1, 30)
                top = min(self._retry_max_delay, exp)
                # Half jitter: spread, yet never near zero, so an outage cannot spin.
                delay = self._uniform(top / 2, top)
            self._resume_at = max(self._resume_at, now + delay)
            entering = self._state == OK
            if entering:
                self._set_state(BACKING_OFF)
        (log.warning if entering else log.info)(
            "sensor_backing_off",
            site=self.site,
            url=self._url,
            reason=reason,
            delay=round(delay, 2),
            failures=self._failures,
        )

    def on_reject(self, reason: str, probing: bool) -> bool:
        """Count a rejection; True when the site is (now) in the rejecting state."""
        now = self._clock.monotonic()
        with self._cond:
            self._rejects += 1
            if self._state == REJECTING:
                if not probing:
                    return True  # in flight when the state changed: no news
                self._probe_delay = min(self.PROBE_MAX, self._probe_delay * 2)
                self._resume_at = now + self._probe_delay
                log.info(
                    "sensor_still_rejecting", site=self.site, next_probe=round(self._probe_delay, 1)
                )
                return True
            if self._rejects < self._reject_threshold:
                return False
            self._probe_delay = self.PROBE_MIN
            self._resume_at = now + self._probe_delay
            self._set_state(REJECTING)
        log.error(
            "sensor_rejecting",
            site=self.site,
            url=self._url,
            reason=reason,
            rejected_in_a_row=self._rejects,
            hint="check sensor.api_key / api_key_file and sensor.url; events are kept",
        )
        return True

    def _set_state(self, state: str) -> None:
        self._state = state
        metrics.set_sensor_state(self.site, state)
