"""Compressed rotated files: telling them by name and by magic bytes, and reading them.

Compressed rotated files (``access.log.2.gz``) are never followed: they are
copies of a file already followed. The tail reads one only after a restart, when
the file a checkpoint names survives only compressed (see `recovery`); `reader`
(``backfill``, ``--dry-run``) reads them whole. Both use `OPENERS`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Callable
from typing import Any

from tirreno_shipper.tail.identity import FINGERPRINT_MAX, fingerprint, open_ro

# Suffixes of rotated files that have been compressed: their bytes are not the
# log's bytes any more, so they are never followed; only gzip, bzip2 and xz
# (recognised by their magic bytes, not the suffix) can be read, by Decompressed.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
# A decompressing reader of each, from a path or a binary file object.
OPENERS: dict[str, Callable[[Any, str], Any]] = {
    "gzip": gzip.open,
    "bz2": bz2.open,
    "xz": lzma.open,
}
# What a damaged or truncated compressed file raises while being decompressed.
DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# The end of a compressed file not yet read to its end (its length is unknown).
UNKNOWN_END = 1 << 62


def is_compressed_name(path: str) -> bool:
    """Whether ``path`` is named like a compressed rotated log (``access.log.2.gz``)."""
    return path.lower().endswith(_COMPRESSED)


def compression(head: bytes) -> str | None:
    """``gzip``, ``bz2`` or ``xz`` for a file starting with ``head`` (its first 6 bytes
    suffice), or None: plain, or compressed in a format we cannot read."""
    for prefix, kind in _MAGIC:
        if head.startswith(prefix):
            return kind
    return None


class Decompressed:
    """The text of a compressed file, read at increasing offsets in bounded pieces.

    A decompressing stream can only seek by decompressing (forward) or by
    starting over (backward), so the piece last returned is kept: the tail
    reads again from where its last complete line ended, inside that piece.
    Memory is at most two pieces, whatever the file's size.
    """

    __slots__ = ("buf", "buf_off", "eof_at", "name", "raw", "size_hint", "stream")

    def __init__(self, name: str, fd: int, kind: str) -> None:
        self.name = name
        # Not owning the descriptor: whoever opened it closes it.
        self.raw = os.fdopen(fd, "rb", buffering=0, closefd=False)
        self.stream: io.BufferedIOBase
        self.size_hint = -1
        self.stream = OPENERS[kind](self.raw, "rb")
        if kind == "gzip":
            size = os.fstat(fd).st_size
            if size >= 18:
                # ISIZE: the text's length modulo 2**32 (for status and lag only).
                self.size_hint = int.from_bytes(os.pread(fd, 4, size - 4), "little")
        self.buf = b""
        self.buf_off = 0  # text offset of buf[0]; the stream is at buf_off + len(buf)
        self.eof_at = -1  # the text's length, once the end was reached

    def read_at(self, off: int, n: int) -> bytes:
        """Up to ``n`` bytes of text from ``off``; fewer only at the end."""
        if 0 <= self.eof_at <= off:
            return b""
        if not self.buf_off <= off <= self.buf_off + len(self.buf):
            self.stream.seek(off)
            self.buf, self.buf_off = b"", self.stream.tell()
            if self.buf_off < off:
                self.eof_at = self.buf_off
                return b""
        have = self.buf[off - self.buf_off :]
        if len(have) >= n:
            return have[:n]
        more = self.stream.read(n - len(have))
        if len(more) < n - len(have):
            self.eof_at = off + len(have) + len(more)
        self.buf, self.buf_off = have + more, off
        return self.buf

    def close(self) -> None:
        with contextlib.suppress(*DECOMPRESS_ERRORS):
            self.stream.close()
        self.raw.close()


def decompressed(name: str, fd: int) -> Decompressed | None:
    """``fd`` (the compressed file ``name``) as text, or None in a format we cannot read."""
    kind = compression(os.pread(fd, 6, 0))
    return None if kind is None else Decompressed(name, fd, kind)


def decompressed_head(name: str) -> str | None:
    """The fingerprint of a compressed file's decompressed head; None if unreadable."""
    try:
        fd = open_ro(name)
    except OSError:
        return None
    z = None
    try:
        z = decompressed(name, fd)
        return None if z is None else fingerprint(z.read_at(0, FINGERPRINT_MAX))
    except DECOMPRESS_ERRORS:
        return None
    finally:
        if z is not None:
            z.close()
        os.close(fd)
