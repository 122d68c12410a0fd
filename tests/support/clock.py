"""A clock for tests: time moves only when a test (or a wait) moves it.

Hand it to `TokenBucket`, `SensorHealth`, `SiteSender` or `Spool` in place of
the system clock. A wait does not sleep: it moves the time on by its timeout
(unless the event is already set), as if the wait had run out. That suits
code driven from one thread; threads sharing it would each push the time on.
"""

from __future__ import annotations

import math
import threading
import time as _time
from collections.abc import Callable


def _later(now: float, seconds: float) -> float:
    """``now + seconds``, but never ``now`` itself for a positive ``seconds``: a wait too
    short to move a float (a token bucket's last 1e-13 of a token) must still end."""
    if seconds <= 0:
        return now
    return max(now + seconds, math.nextafter(now, math.inf))


class FakeClock:
    """``monotonic()`` starts at 1000, ``time()`` at a fixed epoch second; both move together."""

    EPOCH = 1_700_000_000.0

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.waits: list[float] = []  # every wait's timeout, in order

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self.EPOCH + self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now = _later(self._now, seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        self.waits.append(timeout)
        self.advance(timeout)
        return event.is_set()

    def wait_on(self, cond: threading.Condition, timeout: float) -> bool:
        self.waits.append(timeout)
        self.advance(timeout)
        return False


class SimClock:
    """Virtual time for code run by several threads (a sender's workers).

    Time stands still while any of the ``parties`` threads is busy; once all of
    them wait (or have ended), it jumps to the earliest of their deadlines. So a wait for a
    token, a backoff or an idle poll costs no real time, while everything a
    thread does between waits (leasing, posting, acking) happens at one instant
    of virtual time, as if it were quick. Threads other than the parties (the
    test's own) may read the time but must not wait on it.
    """

    EPOCH = FakeClock.EPOCH
    # How often a waiting thread looks for a set event, a notify or the time having
    # reached its deadline (real seconds). Each step of virtual time costs about one
    # slice of real time, so it is short: 2 ms made a sender test of ~2,000 steps take
    # 4 s; at 0.5 ms the waiting threads still cost little CPU.
    _SLICE = 0.0005
    # A party that never waits again (stuck, or gone) must not freeze the others
    # for ever: after this long (real) the time moves on regardless.
    _STALL = 2.0

    def __init__(self, parties: int, start: float = 1000.0) -> None:
        self.parties = parties
        self._now = start
        self._lock = threading.Lock()
        self._waiting: dict[int, float] = {}
        self._seen: dict[int, threading.Thread] = {}

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self.EPOCH + self._now

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return self._wait(lambda: event.wait(self._SLICE), timeout)

    def wait_on(self, cond: threading.Condition, timeout: float) -> bool:
        return self._wait(lambda: cond.wait(self._SLICE), timeout)

    def _wait(self, wake: Callable[[], bool], timeout: float) -> bool:
        me = threading.get_ident()
        with self._lock:
            deadline = _later(self._now, timeout)
            self._waiting[me] = deadline
            self._seen[me] = threading.current_thread()
        stalled_at = _time.monotonic() + self._STALL
        try:
            while True:
                with self._lock:
                    if self._now < deadline and (
                        self._all_waiting() or _time.monotonic() > stalled_at
                    ):
                        self._now = max(self._now, min(self._waiting.values()))
                        stalled_at = _time.monotonic() + self._STALL
                    if self._now >= deadline:
                        return False
                # Even when the time just moved, to another's deadline: waiting on a
                # condition lets go of it, so the thread whose turn it is can take it.
                if wake():
                    return True
        finally:
            with self._lock:
                del self._waiting[me]

    def _all_waiting(self) -> bool:
        # A party that has ended waits for nothing: it no longer holds the time back.
        ended = sum(1 for t in self._seen.values() if not t.is_alive())
        return len(self._waiting) >= self.parties - ended
