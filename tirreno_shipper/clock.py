"""Time, as the sender, its rate limiter and the spool's leases read it.

Everything that waits or compares times goes through a `Clock`, so tests can
hand in one whose time moves only when they say (see ``tests/support/clock.py``)
instead of sleeping for the backoff, the rate limit or a lease to run out.
"""

from __future__ import annotations

import threading
import time
from typing import Final, Protocol


class Clock(Protocol):
    """Two clocks and the two ways the sender waits."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for delays and deadlines)."""

    def time(self) -> float:
        """Seconds since the epoch (stored in the spool, shared with other processes)."""

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """``event.wait(timeout)``: True if the event is set."""

    def wait_on(self, cond: threading.Condition, timeout: float) -> bool:
        """``cond.wait(timeout)`` with ``cond`` held: False when the time ran out."""


class SystemClock:
    """The real clocks and waits."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)

    def wait_on(self, cond: threading.Condition, timeout: float) -> bool:
        return cond.wait(timeout)


SYSTEM: Final[Clock] = SystemClock()
