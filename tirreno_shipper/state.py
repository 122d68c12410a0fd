"""The state folder (``state_dir``): its file names, the run lock and ``status.json``.

``run`` writes here; ``status``, ``check`` and ``dead-letters`` only read. Each
file is named and read or written by this module alone, so the reader and the
writer of ``status.json`` cannot drift apart::

    state_dir/
    ├── spool.sqlite   events, checkpoints, dead letters (`spool.Spool`)
    ├── run.lock       flock of the running daemon; holds its pid
    └── status.json    the daemon's live state, rewritten every few seconds
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

SPOOL_FILE: Final = "spool.sqlite"
LOCK_FILE: Final = "run.lock"
STATUS_FILE: Final = "status.json"


def lock_state_dir(state_dir: Path) -> int | str:
    """Take ``state_dir`` for this process: the locked descriptor, or who holds it.

    Two daemons on one spool would each read every log and send every line
    twice. The lock is an flock on ``run.lock``: the kernel drops it when the
    process dies, however it dies, so a crash never leaves a stale lock.
    """
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        return holder or "unknown"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the daemon running on ``state_dir``, from ``run.lock``, or None.

    Read only: the lock itself is not touched, so a daemon starting right now is
    never disturbed. A pid written by a daemon that died and since reused by
    another program is told apart by its command line, where /proc shows it.
    """
    try:
        pid = int((state_dir / LOCK_FILE).read_text(encoding="ascii").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc here: the live pid is all there is to go by
    return pid if b"tirreno" in cmdline else None


@dataclass(frozen=True, slots=True)
class FileState:
    """One followed file as the daemon's tail last saw it."""

    path: str
    identity: str
    offset: int
    size: int
    lag_bytes: int


@dataclass(frozen=True, slots=True)
class SiteState:
    """One site's live state: what only the running daemon knows."""

    sensor_state: str
    paused: str | None = None
    last_error: str | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why it cannot be opened
    stages: dict[str, bool] = field(default_factory=dict)  # stage -> alive
    files: tuple[FileState, ...] = ()
    # Events/s the sensor accepted per lane over the last minute, and the rate the
    # sender allows itself now (sensor.rate_limit, or less after 429s).
    send_rates: dict[str, float] = field(default_factory=dict)
    rate_limit: float | None = None


@dataclass(frozen=True, slots=True)
class DaemonState:
    """The content of ``status.json``."""

    pid: int
    updated: float  # time.time() of the write
    sites: dict[str, SiteState] = field(default_factory=dict)


def write_status(state_dir: Path, state: DaemonState) -> None:
    """Replace ``status.json`` atomically (a reader never sees half a file); raises OSError."""
    path = state_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(state), fh)
    os.replace(tmp, path)


def read_status(state_dir: Path) -> DaemonState | None:
    """``status.json`` as written by `write_status`; None if missing or unreadable."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        data = json.loads((state_dir / STATUS_FILE).read_text())
        return DaemonState(
            pid=int(data["pid"]),
            updated=float(data["updated"]),
            sites={name: _site_state(s) for name, s in (data.get("sites") or {}).items()},
        )
    return None


def _site_state(data: dict[str, Any]) -> SiteState:
    return SiteState(
        sensor_state=str(data["sensor_state"]),
        paused=data.get("paused"),
        last_error=data.get("last_error"),
        unreadable=dict(data.get("unreadable") or {}),
        stages=dict(data.get("stages") or {}),
        files=tuple(FileState(**f) for f in data.get("files") or ()),
        send_rates={str(k): float(v) for k, v in (data.get("send_rates") or {}).items()},
        rate_limit=None if data.get("rate_limit") is None else float(data["rate_limit"]),
    )


__all__ = [
    "LOCK_FILE",
    "SPOOL_FILE",
    "STATUS_FILE",
    "DaemonState",
    "FileState",
    "SiteState",
    "lock_holder",
    "lock_state_dir",
    "read_status",
    "write_status",
]
