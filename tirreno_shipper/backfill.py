"""Whole-file runs through the pipeline: ``run --dry-run`` and ``backfill``.

Neither touches the live checkpoints. A dry run writes nothing at all; a
backfill writes events to the spool and remembers, per file identity, how far
it got (under the pseudo-site ``<site>#backfill``), so running the same
backfill again, or again after an interruption, ships only what it has not
shipped yet. Request ids are a function of file identity and offset, so an
event shipped twice anyway is recognisable in tirreno (``traceid``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from tirreno_shipper.config import Config, SiteConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.pipeline import Counts, SitePipeline
from tirreno_shipper.reader import file_chunks, followed_files
from tirreno_shipper.users import UserResolver

if TYPE_CHECKING:
    from tirreno_shipper.spool import Spool


def site_files(site: SiteConfig) -> list[tuple[int, str]]:
    """(index of the ``logs`` entry, path) of every file ``run`` follows for the site now:
    a glob's compressed matches are rotated copies it skips (see reader.followed_files)."""
    out: list[tuple[int, str]] = []
    for i, src in enumerate(site.logs):
        out.extend((i, p) for p in followed_files(src.path, site.name))
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


def make_resolver(site: SiteConfig) -> UserResolver | None:
    return UserResolver(site.name, site.users) if site.users is not None else None


def dry_run(config: Config, out: TextIO = sys.stdout) -> dict[str, Counts]:
    """Print every event the configured files would produce, as JSON lines."""
    totals: dict[str, Counts] = {}
    for site in config.sites:
        resolver = make_resolver(site)
        pipeline = SitePipeline(site, resolver)
        parsers = [pipeline.parser(src) for src in site.logs]
        total = totals.setdefault(site.name, Counts())
        try:
            for index, path in site_files(site):
                for chunk in file_chunks(path, site.logs[index].max_line_bytes):
                    events, counts = pipeline.process(chunk, parsers[index])
                    total.merge(counts)
                    for ev in events:
                        out.write(
                            json.dumps(
                                {
                                    "site": site.name,
                                    "request_id": ev.request_id,
                                    "fields": ev.fields,
                                },
                                ensure_ascii=False,
                            )
                            + "\n"
                        )
        finally:
            if resolver is not None:
                resolver.close()
    out.flush()
    return totals


def backfill(
    config: Config,
    site_name: str,
    files: list[str],
    spool: Spool,
    progress: Callable[[int, int, int], None] | None = None,
) -> Counts:
    """Ship historical files (plain or .gz) into the spool; ``progress(bytes, lines, events)``."""
    site = config.site(site_name)
    resolver = make_resolver(site)
    pipeline = SitePipeline(site, resolver)
    # A backfilled file has no logs entry of its own: use the first one's format.
    parser = pipeline.parser(site.logs[0])
    total = Counts()
    marker = backfill_marker(site_name)
    shipped = {cp.file: cp.offset for cp in spool.get_checkpoints(marker)}
    try:
        for path in files:
            done = 0
            for chunk in file_chunks(path, site.logs[0].max_line_bytes):
                if chunk.end_offset <= shipped.get(chunk.file, -1):
                    total.already += len(chunk.lines) + len(chunk.skipped)
                    if progress is not None:
                        progress(chunk.end_offset - done, 0, 0)
                    done = chunk.end_offset
                    continue
                while True:
                    try:
                        events, counts = pipeline.process(chunk, parser)
                        break
                    except ResolverError:
                        # The database is down: wait, as the live tail does; nothing is skipped.
                        time.sleep(2.0)
                while spool.is_full(site.name, site.spool.max_events, site.spool.max_bytes):
                    time.sleep(1.0)  # the sender drains it (run the daemon beside a backfill)
                spool.commit_chunk(site.name, events, None)
                # A second transaction: a crash between the two re-ships this one
                # chunk on the next backfill (at-least-once, same request ids).
                spool.commit_chunk(marker, [], chunk.checkpoint())
                total.merge(counts)
                counts.publish(site.name)
                if progress is not None:
                    progress(chunk.end_offset - done, counts.lines, counts.events)
                done = chunk.end_offset
    finally:
        if resolver is not None:
            resolver.close()
    return total
