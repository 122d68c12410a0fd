"""Wake-ups on file system events (watchdog): a hint to poll sooner, never the truth.

The tail learns what changed from ``os.stat`` and reads, at every poll; watchdog
only shortens the wait before the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = structlog.get_logger(__name__)


class _SetEvent(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class Waker:
    """Sets ``event`` as soon as anything changes in ``dirs``; a wake-up, never the truth."""

    def __init__(self, dirs: Sequence[str], event: threading.Event) -> None:
        self._dirs = list(dirs)
        self._observer: Any = Observer()
        self._handler = _SetEvent(event)
        self._started = False

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()
        self._started = True
        # Scheduled on the running observer, so one missing folder fails alone.
        for d in self._dirs:
            try:
                self._observer.schedule(self._handler, d, recursive=False)
            except OSError as exc:
                # The periodic stat still covers this folder; only latency suffers.
                log.warning("watch_failed", path=d, error=str(exc))

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._started = False
