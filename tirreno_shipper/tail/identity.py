"""File identity: device + inode + a fingerprint of the file's head.

A file is known by its identity (see ``records.FileId``), never by its name:
logrotate renames files, copytruncate rewrites them in place, and a deleted
file's inode is soon reused. `open_file` is the one way the tail opens a file
it found by name: the name may point at another inode by the time it is opened
(a rotation between the ``stat`` and the ``open``), so the inode is checked again
on the open descriptor.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from tirreno_shipper.records import FileId

FINGERPRINT_MAX = 256


def fingerprint(head: bytes) -> str:
    """The `FileId` fingerprint of a file that starts with ``head`` (see records.FileId)."""
    head = head[:FINGERPRINT_MAX]
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    elif len(head) < FINGERPRINT_MAX:
        return ""
    return hashlib.sha1(head, usedforsecurity=False).hexdigest()


def fingerprint_fd(fd: int) -> str:
    """The fingerprint of the open file ``fd`` as it is now."""
    return fingerprint(os.pread(fd, FINGERPRINT_MAX, 0))


def open_ro(path: str) -> int:
    """A read-only descriptor of ``path`` (never a controlling terminal, not inherited)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)


@dataclass(slots=True, frozen=True)
class Opened:
    """A file opened by name: its descriptor (the caller's to close), its ``fstat``, and
    the fingerprint of its head at the time of opening."""

    fd: int
    st: os.stat_result
    fingerprint: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.st.st_dev, self.st.st_ino)

    def file_id(self) -> FileId:
        return FileId(self.st.st_dev, self.st.st_ino, self.fingerprint)


def open_file(name: str, key: tuple[int, int] | None = None) -> Opened | None:
    """``name`` opened, ``fstat``-ed and fingerprinted; None when it cannot be opened,
    or when ``key`` (the device and inode a ``stat`` of ``name`` gave) is no longer
    the inode at ``name``."""
    try:
        fd = open_ro(name)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if key is not None and (st.st_dev, st.st_ino) != key:
            os.close(fd)
            return None
        return Opened(fd, st, fingerprint_fd(fd))
    except BaseException:
        os.close(fd)
        raise


def identify(path: str) -> FileId | None:
    """The identity of the file at ``path`` now, or None when there is none."""
    try:
        fd = open_ro(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        return FileId(st.st_dev, st.st_ino, fingerprint_fd(fd))
    finally:
        os.close(fd)
