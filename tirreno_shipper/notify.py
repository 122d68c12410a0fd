"""The systemd notify protocol (``sd_notify``), without libsystemd.

A datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Without the variable every call is a no-op, so the daemon behaves
the same under systemd, in a container and in a terminal.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process the watchdog is meant for.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 1e6 / 2 if usec.isdigit() and mine else None
        )
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> bool:
        if self._address is None:
            return False
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall("\n".join(states).encode())
        except OSError as exc:
            # Once per outage: a watchdog ping every few seconds would flood the log.
            if not self._failing:
                log.warning("sd_notify_failed", socket=self._address, error=str(exc))
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")
