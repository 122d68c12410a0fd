"""The kinds of ``logs`` entries, behind one interface: a followed file (or container
log) is a `tail.Tailer`, a syslog listener a `syslog.listener.SyslogInput`.

The daemon drives each the same way: ``poll`` a chunk, spool its events with its
checkpoint in one transaction, ``rewind`` it if that failed, delete what
``retired`` names.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Sequence
from typing import Protocol

from tirreno_shipper.config import LogSource
from tirreno_shipper.records import Checkpoint, Chunk, FileId
from tirreno_shipper.syslog.listener import SyslogInput
from tirreno_shipper.tail import FileStatus, Tailer
from tirreno_shipper.tail.container import container_input


class LogInput(Protocol):
    unreadable: dict[str, str]

    def poll(self) -> Chunk | None: ...
    def rewind(self, chunk: Chunk) -> None: ...
    def retired(self) -> list[FileId]: ...
    def status(self) -> list[FileStatus]: ...
    def lag_bytes(self) -> int: ...
    def watch_dirs(self) -> list[str]: ...
    def close(self) -> None: ...


def owns(src: LogSource, cp: Checkpoint) -> bool:
    """Whether ``cp`` is a checkpoint of what ``src`` reads."""
    return cp.path == src.where or (bool(src.path) and fnmatch.fnmatch(cp.path, src.path))


def open_input(
    site: str,
    src: LogSource,
    checkpoints: Sequence[Checkpoint],
    wake: threading.Event,
    *,
    scan_interval: float = 1.0,
) -> LogInput:
    """The input ``src`` describes, resuming from its ``checkpoints``; a followed path is
    looked for again (a new file after a rename rotation, a glob's new match) every
    ``scan_interval`` seconds."""
    mine = [cp for cp in checkpoints if owns(src, cp)]
    if src.syslog is not None:
        return SyslogInput(site, src.syslog, wake=wake, checkpoints=mine)
    framing, select = container_input(src)
    return Tailer(
        site,
        [src.path],
        start_at=src.start_at,
        max_line_bytes=src.max_line_bytes,
        checkpoints=mine,
        scan_interval=scan_interval,
        framing=framing,
        select=select,
    )
