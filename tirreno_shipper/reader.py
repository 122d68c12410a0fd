"""Reading a whole file once, plain or gzip: for ``backfill`` and ``--dry-run``.

Unlike `tail`, nothing here follows a file or keeps state: a file is read from
its first byte to its last complete line, in chunks shaped like the tail's, so
the same pipeline handles both. Offsets in a ``.gz`` file are offsets in the
decompressed text, which keeps request ids stable across repeated backfills.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from typing import BinaryIO

from tirreno_shipper.records import Chunk, FileId
from tirreno_shipper.tail import fingerprint

_READ = 1 << 20


def _open(path: str) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


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
