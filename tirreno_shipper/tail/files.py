"""The tail's per-file state: a file being followed, and the files of one watched path."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from tirreno_shipper.records import FileId
from tirreno_shipper.tail.compressed import Decompressed


@dataclass(slots=True, frozen=True)
class FileStatus:
    """One followed file, for ``status``: ``path`` is the watched path it came from."""

    path: str
    file: FileId
    offset: int
    size: int


class File:
    """An open file being followed. Mutable on purpose: it is the Tailer's private state."""

    __slots__ = (
        "changed_at",
        "dirty",
        "discard_scan",
        "fd",
        "id",
        "key",
        "offset",
        "pending_retire",
        "seen_size",
        "z",
    )

    def __init__(
        self,
        fd: int,
        fid: FileId,
        offset: int,
        *,
        dirty: bool,
        now: float,
        z: Decompressed | None = None,
        key: tuple[int, int] | None = None,
    ) -> None:
        self.fd = fd
        self.id = fid
        # The inode held open. Not the identity's for a compressed file: it is read
        # under the identity of the file it was compressed from (see recovery).
        self.key = key if key is not None else (fid.dev, fid.ino)
        # The decompressed text of a compressed file (complete: it no longer grows).
        self.z = z
        self.offset = offset
        # True while the offset/identity differ from what the caller last persisted,
        # so a chunk is due even without lines.
        self.dirty = dirty
        # Identities this file had before (empty head, pre-truncation); their
        # checkpoints may go once a chunk with the new identity is persisted.
        self.pending_retire: list[FileId] = []
        # >= 0 while skipping a too-long line: how far it has been scanned.
        self.discard_scan = -1
        self.seen_size = -1
        self.changed_at = now

    def pread(self, n: int, off: int) -> bytes:
        if self.z is None:
            return os.pread(self.fd, n, off)
        return self.z.read_at(off, n)

    def size(self) -> int:
        """The file's length now (the text's, for a compressed file: known once read to
        its end, estimated before)."""
        if self.z is not None:
            return self.z.eof_at if self.z.eof_at >= 0 else max(self.offset, self.z.size_hint)
        try:
            return os.fstat(self.fd).st_size
        except OSError:
            return self.offset

    def close(self) -> None:
        if self.z is not None:
            self.z.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Group:
    """The files of one watched path: the one at the path and those rotated away from it."""

    __slots__ = ("current", "path", "rotated")

    def __init__(self, path: str) -> None:
        self.path = path
        self.current: File | None = None
        # Oldest first: read in this order, each to its end, before ``current``.
        self.rotated: list[File] = []
