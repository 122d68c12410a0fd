"""One site's way from log lines into the spool: parse, filter, resolve, map, store.

`SiteIngest` is what the daemon's tail, ``backfill`` and ``run --dry-run`` share:
the site's user resolver, its pipeline, one parser per ``logs`` entry, and the
rule that keeps the spool within its caps (``spool.max_events``,
``spool.max_bytes``). Each caller keeps only what is its own: the daemon its
files, checkpoints and pauses; backfill its progress marker and its waits; the
dry run its JSON lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter

from tirreno_shipper import metrics
from tirreno_shipper.config import SiteConfig
from tirreno_shipper.logs import Throttle
from tirreno_shipper.parse import LineParser
from tirreno_shipper.pipeline import Counts, SitePipeline
from tirreno_shipper.records import Checkpoint, Chunk, Event
from tirreno_shipper.users import UserResolver

if TYPE_CHECKING:
    from tirreno_shipper.spool import Spool

log = structlog.get_logger(__name__)

# Events dropped from a full spool are logged at most this often (with the count since).
DROPPED_EVERY = 60.0
# Below the byte cap's neighbourhood, an event is taken to weigh this much (a page
# view's JSON) instead of encoding the chunk again just to measure it.
EVENT_BYTES_GUESS = 400


class SpoolFull(Exception):
    """The site's spool has no room for the chunk and may not drop to make it: the
    caller waits (the log file, or the backfilled file, is the buffer)."""


class SiteIngest:
    """Lines of one site's logs → events → the spool.

    Not thread-safe: one tail thread (or one backfill, or one dry run) owns it.
    ``spool`` is None for a dry run, which only processes.
    """

    def __init__(
        self, site: SiteConfig, spool: Spool | None = None, *, backfill: bool = False
    ) -> None:
        self.site = site
        self.name = site.name
        self.spool = spool
        # Backfilled events go to the spool's lowest lane: live ones are sent first.
        self.backfill = backfill
        # Events stored so far (the overload watch reads it from another thread).
        self.spooled_total = 0
        # Created first: a database URL that cannot be used fails here, before any line.
        self.resolver = UserResolver(site.name, site.users) if site.users is not None else None
        self.pipeline = SitePipeline(site, self.resolver)
        self._parsers: dict[int, LineParser] = {}
        self._spooled = metrics.EVENTS_SPOOLED.labels(site=site.name)
        self._dropped = _Deleted(
            site.name,
            metrics.EVENTS_DROPPED,
            "spool_dropped_oldest",
            "the spool is full and spool.on_full is drop_oldest: the oldest events are "
            "deleted unsent (counted in events_dropped_total; said at most once a minute, "
            "with the count since)",
        )
        self._shed = _Deleted(
            site.name,
            metrics.EVENTS_SHED,
            "spool_shed_page_views",
            "the spool is full and spool.on_overload is shed_page_views: the oldest page "
            "views are deleted unsent so the tail goes on (counted in events_shed_total; "
            "said at most once a minute, with the count since)",
        )
        # Exported at 0 from the start: an alert on increase() needs the series to exist.
        self._full = metrics.SPOOL_FULL.labels(site=site.name)

    def parser(self, index: int) -> LineParser:
        """The parser of the site's ``logs`` entry ``index`` (built once)."""
        parser = self._parsers.get(index)
        if parser is None:
            parser = self._parsers[index] = self.pipeline.parser(self.site.logs[index])
        return parser

    def process(self, chunk: Chunk, index: int) -> tuple[list[Event], Counts]:
        """The events of a chunk of ``logs`` entry ``index``, and what became of each line.
        Raises `ResolverError` if the user database fails: the caller keeps the chunk."""
        return self.pipeline.process(chunk, self.parser(index))

    def store(
        self,
        events: list[Event],
        counts: Counts,
        checkpoint: Checkpoint | None,
        *,
        may_drop: bool,
    ) -> None:
        """Spool ``events`` with ``checkpoint`` in one transaction, once the caps leave
        room for them, then publish ``counts``. Raises `SpoolFull` (nothing written) when
        there is no room and ``may_drop`` is False; with it, the oldest events go."""
        assert self.spool is not None, "a dry run stores nothing"
        self._make_room(events, may_drop=may_drop)
        self.spool.commit_chunk(self.name, events, checkpoint, backfill=self.backfill)
        counts.publish(self.name)
        self._spooled.inc(len(events))
        self.spooled_total += len(events)

    def _make_room(self, events: list[Event], *, may_drop: bool) -> None:
        """Room in the spool for the whole chunk, so the caps hold (a chunk larger than
        a cap itself waits for an empty spool)."""
        assert self.spool is not None
        if not events:
            return
        cfg = self.site.spool
        n = len(events)
        depth, held = self.spool.totals(self.name)
        # The chunk's real size (its JSON, encoded again at the commit) is worked
        # out only near the byte cap; elsewhere the guess cannot make the difference.
        size = EVENT_BYTES_GUESS * n
        if held + size > cfg.max_bytes or held > cfg.max_bytes // 2:
            size = self.spool.encoded_size(events)
        if depth == 0 or (depth + n <= cfg.max_events and held + size <= cfg.max_bytes):
            return
        self._full.inc()
        if not may_drop:
            if cfg.on_overload == "shed_page_views":
                # The oldest page views make room; with none left, the tail pauses.
                self._shed.add(
                    self.spool.make_room(
                        self.name, cfg.max_events - n, cfg.max_bytes - size, page_views_only=True
                    )
                )
                depth, held = self.spool.totals(self.name)
                if depth + n <= cfg.max_events and held + size <= cfg.max_bytes:
                    return
            raise SpoolFull
        self._dropped.add(self.spool.make_room(self.name, cfg.max_events - n, cfg.max_bytes - size))

    def close(self) -> None:
        if self.resolver is not None:
            self.resolver.close()


class _Deleted:
    """Events deleted unsent to make room: counted, and said at most once a minute."""

    def __init__(self, site: str, metric: Counter, event: str, hint: str) -> None:
        self._site = site
        self._counter = metric.labels(site=site)
        self._event = event
        self._hint = hint
        self._since = 0
        self._warning = Throttle(DROPPED_EVERY)

    def add(self, count: int) -> None:
        self._counter.inc(count)
        self._since += count
        if self._since and self._warning.due():
            log.warning(self._event, site=self._site, count=self._since, hint=self._hint)
            self._since = 0


__all__ = ["SiteIngest", "SpoolFull"]
