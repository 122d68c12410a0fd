"""The periodic ``stats`` log line: what each site did since the last one.

A daemon that sends a thousand events without one log line looks dead in
``journalctl``; one line per site every ``log.stats_interval`` seconds says it is
working, and how far behind it is, without a metrics scraper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from tirreno_shipper import metrics

log = structlog.get_logger("tirreno_shipper.stats")

# Counted since the last line (the metrics' totals, differenced): name in the line
# -> sample name in the registry.
_COUNTED = {
    "lines": "tirreno_shipper_lines_read_total",
    "events": "tirreno_shipper_events_spooled_total",
    "sent": "tirreno_shipper_events_sent_total",
    "rejected": "tirreno_shipper_events_rejected_total",
}
# As they are now (the daemon publishes these gauges every tick).
_NOW = {
    "backlog": "tirreno_shipper_spool_depth",
    "oldest_s": "tirreno_shipper_spool_oldest_age_seconds",
    "lag_bytes": "tirreno_shipper_file_lag_bytes",
}


class StatsLine:
    """Logs ``stats`` per site every ``every`` seconds (0: never)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._since = clock()
        self._totals: dict[str, dict[str, float]] = {}

    def tick(self, sites: Iterable[str]) -> None:
        """Say the line if it is due; cheap otherwise (call it every supervisor tick)."""
        if self.every <= 0:
            return
        now = self._clock()
        if now - self._since < self.every:
            return
        seconds = round(now - self._since, 1)
        self._since = now
        for site in sites:
            samples = metrics.site_totals(site)
            totals = {k: samples.get(name, 0.0) for k, name in _COUNTED.items()}
            before = self._totals.get(site, {})
            self._totals[site] = totals
            # A site removed and added back starts its counters again from 0.
            counted = {k: int(_since(v, before.get(k, 0.0))) for k, v in totals.items()}
            current = {k: int(samples.get(name, 0.0)) for k, name in _NOW.items()}
            log.info("stats", site=site, seconds=seconds, **counted, **current)


def _since(total: float, before: float) -> float:
    return total - before if total >= before else total
