"""Reading a whole file once, plain or compressed: for ``backfill`` and ``--dry-run``.

Unlike `tail`, nothing here follows a file or keeps state: a file is read from
its first byte to its last complete line, in chunks shaped like the tail's, so
the same pipeline handles both. Offsets in a compressed file (gzip, bzip2 or
xz, told by their first bytes) are offsets in the decompressed text, which
keeps request ids stable across repeated backfills.

`followed_files` is which files ``run`` follows for a ``logs`` pattern, so that
``--dry-run`` shows what ``run`` would send: a glob's compressed matches are
rotated copies that ``run`` skips. ``backfill`` reads the files it is given,
compressed or not.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from tirreno_shipper.config import LogSource

import structlog

from tirreno_shipper.records import Chunk, FileId
from tirreno_shipper.tail import OPENERS, compression, fingerprint, glob_matches, skipped_hint
from tirreno_shipper.tail.container import Framing, container_input, unframe

log = structlog.get_logger(__name__)

_READ = 1 << 20


def _open(path: str) -> BinaryIO:
    with open(path, "rb") as probe:
        kind = compression(probe.read(6))
    if kind is None:
        return open(path, "rb")
    stream: BinaryIO = OPENERS[kind](path, "rb")
    return stream


def followed_files(pattern: str, site: str = "SITE") -> list[str]:
    """The files ``run`` follows for the ``logs`` pattern ``pattern`` now, in its order.

    A literal path is followed whatever its name; of a glob's matches, the
    compressed ones are skipped (logged ``file_skipped_compressed``), as the tail
    does. Folders and missing files are left out.
    """
    if not glob.has_magic(pattern):
        return [pattern] if os.path.isfile(pattern) else []
    skipped: set[str] = set()
    out = [p for p in glob_matches(pattern, skipped) if os.path.isfile(p)]
    for p in sorted(skipped):
        log.info("file_skipped_compressed", site=site, path=p, hint=skipped_hint(site, p))
    return out


def file_chunks(path: str, max_line_bytes: int = 65536, chunk_lines: int = 2000) -> Iterator[Chunk]:
    """Chunks of complete lines from ``path``; a last line without newline is included."""
    st = os.stat(path)
    with _open(path) as fh:
        head = fh.read(_READ)
        file_id = FileId(st.st_dev, st.st_ino, fingerprint(head))
        buf = head
        base = 0  # file offset of buf[0]
        lines: list[tuple[int, bytes]] = []
        skipped: list[tuple[int, str]] = []
        chunk_start = 0
        eof = not head
        skipping_from: int | None = None  # offset of a too-long line being skipped
        while True:
            pos = 0
            while True:
                nl = buf.find(b"\n", pos)
                if nl == -1:
                    break
                if skipping_from is not None:
                    skipped.append((skipping_from, "too_long"))
                    skipping_from = None
                elif nl - pos > max_line_bytes:
                    skipped.append((base + pos, "too_long"))
                else:
                    line = buf[pos:nl]
                    lines.append((base + pos, line[:-1] if line.endswith(b"\r") else line))
                pos = nl + 1
                if len(lines) >= chunk_lines:
                    yield Chunk(path, file_id, chunk_start, base + pos, lines, skipped)
                    lines, skipped, chunk_start = [], [], base + pos
            rest = buf[pos:]
            base += pos
            if len(rest) > max_line_bytes:
                # A line longer than the limit: drop what we have of it, remember
                # where it began, and keep reading until its newline.
                if skipping_from is None:
                    skipping_from = base
                base += len(rest)
                rest = b""
            if eof:
                if rest and skipping_from is None:
                    lines.append((base, rest))
                elif skipping_from is not None:
                    skipped.append((skipping_from, "too_long"))
                end = base + len(rest)
                if lines or skipped:
                    yield Chunk(path, file_id, chunk_start, end, lines, skipped)
                return
            more = fh.read(_READ)
            eof = not more
            buf = rest + more


def source_chunks(path: str, src: LogSource) -> Iterator[Chunk]:
    """`file_chunks` of a file of the ``logs`` entry ``src``: a container log's framing
    removed (see `tail.container`), so backfill and the dry run read what ``run`` reads."""
    framing, _ = container_input(src)
    if framing is None:
        return file_chunks(path, src.max_line_bytes)
    return unframe(file_chunks(path, max(src.max_line_bytes, Framing.RAW_LINE_MAX)), framing)


def selected(path: str, src: LogSource) -> bool:
    """Whether ``run`` reads ``path`` for ``src``: a container log's include/exclude."""
    _, select = container_input(src)
    return select is None or select(path)
