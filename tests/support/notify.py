"""The receiving end of the systemd notify protocol, for tests: a real AF_UNIX datagram socket."""

from __future__ import annotations

import socket
import threading
import time


class Listener:
    """A bound datagram socket that records every message with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address  # what goes in NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode().split("\n")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def states(self) -> list[str]:
        """Every ``NAME=value`` received, in order."""
        with self._lock:
            return [s for _, msg in self.messages for s in msg]

    def times(self, state: str) -> list[float]:
        with self._lock:
            return [t for t, msg in self.messages if state in msg]

    def count(self, state: str) -> int:
        """How many messages held ``state`` (e.g. ``WATCHDOG=1``) so far."""
        return len(self.times(state))
