"""One warning when a site's events come in faster than tirreno accepts them, for minutes.

A spool that grows for a while is normal (a burst, a short outage); one that
grows for minutes on end will fill, and then the tail pauses (or, with
``spool.on_overload: shed_page_views``, page views are dropped). The operator
should hear about it before, with the numbers that say what to change: the two
rates, the backlog and how long it takes to drain.
"""

from __future__ import annotations

from collections import deque

import structlog

from tirreno_shipper.clock import SYSTEM, Clock

log = structlog.get_logger(__name__)

# Overloaded when, over this long, events arrived faster than they were accepted.
AFTER = 180.0
# By at least this much (a few percent is noise: batching, acks in flight).
MARGIN = 1.05
# Said again at most this often while it lasts.
REPEAT = 900.0


class OverloadWatch:
    """Fed the site's running totals now and then (`observe`); warns per the module doc."""

    def __init__(self, site: str, *, clock: Clock = SYSTEM) -> None:
        self.site = site
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()
        self._warned_at: float | None = None

    def observe(self, arrived: int, accepted: int, backlog: int, rate_limit: float) -> bool:
        """``arrived``/``accepted``: events spooled by the tail and accepted by tirreno so
        far; ``backlog``: events waiting now. True when it warned."""
        now = self._clock.monotonic()
        if self._samples and (arrived < self._samples[-1][1] or accepted < self._samples[-1][2]):
            self._samples.clear()  # a restarted stage counts from 0 again
        self._samples.append((now, arrived, accepted))
        while len(self._samples) > 2 and self._samples[1][0] <= now - AFTER:
            self._samples.popleft()
        then, arrived_then, accepted_then = self._samples[0]
        span = now - then
        if span < AFTER:
            return False
        arrival = (arrived - arrived_then) / span
        accept = (accepted - accepted_then) / span
        # And still now: over the last third too, so a burst that is over is not news.
        recent = next(x for x in self._samples if x[0] >= now - span / 3)
        recent_span = max(1e-9, now - recent[0])
        still = (arrived - recent[1]) / recent_span > (accepted - recent[2]) / recent_span * MARGIN
        if arrival <= accept * MARGIN or arrival <= 0 or not still:
            self._warned_at = None  # over: the next overload is news again
            return False
        if self._warned_at is not None and now - self._warned_at < REPEAT:
            return False
        self._warned_at = now
        log.warning(
            "site_overloaded",
            site=self.site,
            arrival_rate=round(arrival, 2),
            accept_rate=round(accept, 2),
            backlog=backlog,
            minutes=round(span / 60, 1),
            drain_seconds=round(backlog / accept) if accept > 0 else None,
            sensor_rate_limit=round(rate_limit, 2),
            hint="events come in faster than tirreno accepts them, so the spool grows "
            "until it is full (then the tail pauses); the backlog drains in drain_seconds "
            "only once fewer events come in. Raise tirreno's LEAKY_BUCKET_RPS (or "
            "LEAKY_BUCKET_WINDOW) and sensor.rate_limit with it; raise sensor.concurrency if "
            "requests are slow; exclude more paths (filters); or set spool.on_overload: "
            "shed_page_views to drop page views rather than pause",
        )
        return True
