"""Room kept on the state folder's disk for the sender's writes.

Leasing an event and acknowledging its delivery are writes (the WAL grows by a
few pages each). On a full disk they fail like the tail's inserts, so delivery
stops although the sensor is up, and the acknowledgements that would free
space in the spool never happen. A preallocated file is
kept beside the spool (see `plan` for its size); when a sender write meets a
full disk, the file is deleted, the WAL checkpointed and truncated, and the
write tried again in the room this leaves. From then on the
tail may write again only once the reserve could be set aside anew (or the
spool has that much room inside its own file), so the room freed for
delivery is not eaten by new events.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import structlog

log = structlog.get_logger("tirreno_shipper.spool")

# WAL pages between automatic checkpoints on a large disk: a few checkpoints'
# worth (16 MiB); the default (1000 pages) would checkpoint, with an fsync,
# after nearly every chunk.
WAL_PAGES = 4096


class DiskReserve:
    """A preallocated file whose space is given back when the disk is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.released = False  # given up for a sender write on a full disk

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def hold(self) -> bool:
        """Set the reserve aside (again); False if the disk has no room for it yet."""
        if self.held:
            self.released = False
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _preallocate(fd, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("spool_reserve_failed", path=str(self.path), error=str(exc))
            return False
        self.released = False
        return True

    def release(self) -> bool:
        """Give the reserve's space back to the disk; False if there was none to give."""
        if not self.path.exists():
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.released = True
        log.warning("spool_reserve_released", path=str(self.path), bytes=self.size)
        return True


def _preallocate(fd: int, size: int) -> None:
    """Blocks really taken on the disk (a sparse file would give nothing back)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    block = b"\0" * 65536
    written = 0
    while written < size:
        written += os.write(fd, block[: size - written])


def plan(folder: Path, page_size: int = 4096) -> tuple[int, int]:
    """The reserve's size and the WAL's auto-checkpoint (pages) for the disk of ``folder``.

    On a full disk, the WAL is checkpointed into the spool file before its room
    is given back, and that copy may grow the spool file by up to the WAL's size:
    the reserve is twice the WAL's limit, so it always covers it. A large disk
    keeps `WAL_PAGES` (16 MiB of WAL, 32 MiB of reserve, up to 1/8 of it); a
    smaller one gets both scaled down to an eighth of the disk.
    """
    try:
        st = os.statvfs(folder)
        disk = st.f_blocks * st.f_frsize
    except OSError:
        disk = 1 << 40
    reserve = max(16 * page_size, min(2 * WAL_PAGES * page_size, disk // 8))
    return reserve, max(4, reserve // 2 // page_size)
