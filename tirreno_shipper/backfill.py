"""Whole-file runs through the pipeline: ``run --dry-run`` and ``backfill``.

Neither touches the live checkpoints. A dry run writes nothing at all; a
backfill writes events to the spool and remembers, per file identity, how far
it got (under the pseudo-site ``<site>#backfill``), so running the same
backfill again, or again after an interruption, ships only what it has not
shipped yet. Request ids are a function of file identity and offset, so an
event shipped twice anyway is recognisable in tirreno (``traceid``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import structlog

from tirreno_shipper.config import Config, SiteConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.ingest import SiteIngest, SpoolFull
from tirreno_shipper.pipeline import Counts
from tirreno_shipper.reader import followed_files, selected, source_chunks
from tirreno_shipper.tail import DECOMPRESS_ERRORS
from tirreno_shipper.terminal import printable_json
from tirreno_shipper.tirreno import tirreno_stores

if TYPE_CHECKING:
    from tirreno_shipper.records import Chunk, Event
    from tirreno_shipper.spool import Spool

log = structlog.get_logger(__name__)


def site_files(site: SiteConfig) -> list[tuple[int, str]]:
    """(index of the ``logs`` entry, path) of every file ``run`` follows for the site now:
    a glob's compressed matches are rotated copies it skips (see reader.followed_files)."""
    out: list[tuple[int, str]] = []
    for i, src in enumerate(site.logs):
        out.extend((i, p) for p in followed_files(src.path, site.name) if selected(p, src))
    return out


def content_size(path: str) -> int:
    """Bytes of text in ``path``: for a ``.gz``, the size once decompressed.

    Progress is counted in decompressed offsets (those of the chunks), so the
    total must be too. gzip keeps the size modulo 2**32 in its last 4 bytes:
    exact for one member under 4 GiB, which is what logrotate writes; good
    enough for a progress bar otherwise.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b" or size < 18:
            return size
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def backfill_marker(site: str) -> str:
    """The pseudo-site under which a backfill keeps its per-file progress."""
    return f"{site}#backfill"


def dry_run(config: Config, out: TextIO | None = None) -> dict[str, Counts]:
    """Print every event the configured files would produce, as JSON lines: the
    ``fields`` as sent and as tirreno will have ``stored`` them (to ``out``, by default
    the ``sys.stdout`` of the call: a default bound at import would keep the stream
    of that moment)."""
    out = out if out is not None else sys.stdout
    totals: dict[str, Counts] = {}
    for site in config.sites:
        ingest = SiteIngest(site)
        total = totals.setdefault(site.name, Counts())
        try:
            for index, path in site_files(site):
                for chunk in source_chunks(path, site.logs[index]):
                    events, counts = ingest.process(chunk, index)
                    total.merge(counts)
                    for ev in events:
                        out.write(
                            # JSON escapes C0 controls, not C1: the lines may reach a terminal.
                            printable_json(
                                json.dumps(
                                    {
                                        "site": site.name,
                                        "request_id": ev.request_id,
                                        "fields": ev.fields,
                                        # What tirreno keeps after its own transformations.
                                        "stored": tirreno_stores(ev.fields, ev.request_id).fields,
                                    },
                                    ensure_ascii=False,
                                )
                            )
                            + "\n"
                        )
        finally:
            ingest.close()
    out.flush()
    return totals


class BackfillError(Exception):
    """A file that cannot be backfilled as asked; what was shipped before stays shipped
    (``counts``: what the backfill did until then)."""

    counts: Counts | None = None


def pick_source(site: SiteConfig, path: str, index: int | None) -> int:
    """Which of the site's ``logs`` entries ``path`` is an old file of (its format).

    ``index`` (``--log``) decides; else the only entry; else the entry whose path
    (or glob) the file's name extends, as ``access.log.2.gz`` extends ``access.log``.
    """
    if index is not None:
        if not 0 <= index < len(site.logs):
            raise BackfillError(
                f"--log {index}: site {site.name!r} has logs entries 0 to {len(site.logs) - 1}"
            )
        return index
    if len(site.logs) == 1:
        return 0
    folder, name = os.path.split(os.path.abspath(path))
    found = [
        i
        for i, src in enumerate(site.logs)
        if src.path  # a syslog listener has no files
        and fnmatch.fnmatchcase(folder, os.path.dirname(os.path.abspath(src.path)))
        and fnmatch.fnmatchcase(name, os.path.basename(src.path) + "*")
    ]
    if len(found) == 1:
        return found[0]
    entries = "; ".join(f"{i}: {src.path}" for i, src in enumerate(site.logs))
    raise BackfillError(
        f"cannot tell which of site {site.name!r}'s logs entries {path} is an old file of "
        f"(its format): name it with --log N ({entries})"
    )


def backfill(
    config: Config,
    site_name: str,
    files: list[str],
    spool: Spool,
    progress: Callable[[int, int, int], None] | None = None,
    *,
    sources: list[int] | None = None,
    from_start: bool = False,
) -> Counts:
    """Ship historical files (plain or compressed) into the spool;
    ``progress(bytes, lines, events)``. Raises `BackfillError` for a file in the wrong
    format (nothing of it is shipped) or one that cannot be read to its end (what was
    read before is shipped), after merging what was done into ``counts`` (the caller's
    summary): the totals so far are on the exception's ``counts``."""
    site = config.site(site_name)
    if sources is None:  # which logs entry each file is an old file of (see pick_source)
        sources = [pick_source(site, path, None) for path in files]
    ingest = SiteIngest(site, spool, backfill=True)
    total = Counts()
    marker = backfill_marker(site_name)
    shipped = {cp.file: cp.offset for cp in spool.get_checkpoints(marker)}
    waiting = _Waiting(site_name)
    try:
        for path, index in zip(files, sources, strict=True):
            src = site.logs[index]
            done = 0
            first = True
            chunks = source_chunks(path, src)
            while True:
                try:
                    chunk = next(chunks, None)
                except DECOMPRESS_ERRORS as exc:
                    raise BackfillError(
                        f"cannot read {path} past byte {done} of its text: {exc}; the lines "
                        "before were shipped (a new backfill of it ships nothing again)"
                    ) from exc
                if chunk is None:
                    break
                if from_start and first:
                    shipped.pop(chunk.file, None)
                if chunk.end_offset <= shipped.get(chunk.file, -1):
                    total.already += len(chunk.lines) + len(chunk.skipped)
                    if progress is not None:
                        progress(chunk.end_offset - done, 0, 0)
                    done = chunk.end_offset
                    first = False
                    continue
                events, counts = waiting.process(ingest, chunk, index)
                if first and chunk.lines and counts.parsed == 0:
                    raise BackfillError(
                        f"no line of the first {len(chunk.lines)} of {path} parses as logs "
                        f"entry {index} ({src.path}, format {src.format_label}): nothing of it "
                        "was shipped; if it is an old file of another entry, name that with "
                        "--log N"
                    )
                first = False
                waiting.store(ingest, events, counts, site.spool.max_events)
                # A second transaction: a crash between the two re-ships this one
                # chunk on the next backfill (at-least-once, same request ids).
                spool.commit_chunk(marker, [], chunk.checkpoint())
                total.merge(counts)
                if progress is not None:
                    progress(chunk.end_offset - done, counts.lines, counts.events)
                done = chunk.end_offset
    except BackfillError as exc:
        exc.counts = total
        raise
    finally:
        ingest.close()
    return total


class _Waiting:
    """A backfill that waits says so once per wait, not once a second."""

    HINTS = {
        "spool_full": "the site's spool is full: the running daemon sends events and makes "
        "room; with no daemon running, start it (or run `run --once` beside this)",
        "resolver_down": "retried every 2 s until the user database answers; nothing is skipped",
    }

    def __init__(self, site: str) -> None:
        self.site = site
        self._last: dict[str, float] = {}

    def process(self, ingest: SiteIngest, chunk: Chunk, index: int) -> tuple[list[Event], Counts]:
        """``ingest.process``, waiting while the user database is down (nothing is skipped,
        as in the live tail)."""
        while True:
            try:
                return ingest.process(chunk, index)
            except ResolverError as exc:
                self.resolver(str(exc))
                time.sleep(2.0)

    def store(self, ingest: SiteIngest, events: list[Event], counts: Counts, cap: int) -> None:
        """Spool ``events``, waiting while the site's spool is full. Never drops, whatever
        spool.on_full says: the live tail's unsent events are worth more than old lines."""
        while True:
            try:
                ingest.store(events, counts, None, may_drop=False)
                return
            except SpoolFull:
                self.spool_full(cap)
                time.sleep(1.0)  # the sender drains it (run the daemon beside)

    def spool_full(self, max_events: int) -> None:
        self._say("spool_full", max_events=max_events)

    def resolver(self, error: str) -> None:
        self._say("resolver_down", error=error)

    def _say(self, reason: str, **detail: object) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -math.inf) > 5.0:
            log.warning(
                "backfill_waiting", site=self.site, reason=reason, hint=self.HINTS[reason], **detail
            )
        self._last[reason] = now
