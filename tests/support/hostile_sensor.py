"""A sensor that misbehaves on a real socket, for the attacks of tests/reliability.

Each connection is served by its own thread with plain sockets (no http.server), so the
answer can be shaped byte by byte:

- ``dribble``: the status line and headers go out one line every ``interval`` seconds for
  ``dribble_for`` seconds, then the empty line that ends a 204. Every read of the client
  gets a byte long before its read timeout, so only a deadline on the whole request ends it.
- ``huge``: ``200`` with ``Content-Length: 1073741824`` and zeros streamed until the client
  hangs up (``sent`` counts them).
- ``ok``: an immediate ``204``.

The first ``hostile_first`` requests get ``mode``, the rest ``ok``. Every request is
recorded with its ``X-Request-Id``, when it arrived, when the client hung up or was
answered, and whether it was answered completely (accepted).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType


@dataclass(slots=True)
class Seen:
    """One POST as the sensor saw it."""

    request_id: str | None
    started: float
    ended: float = 0.0
    accepted: bool = False
    sent: int = 0  # body bytes sent (``huge``)


@dataclass(slots=True)
class HostileSensor:
    mode: str
    hostile_first: int = 1_000_000
    interval: float = 0.5
    dribble_for: float = 12.0
    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> HostileSensor:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        if self._listener is not None:
            self._listener.close()

    @property
    def url(self) -> str:
        assert self._listener is not None
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/sensor/"

    def accepted_ids(self) -> list[str | None]:
        with self._lock:
            return [s.request_id for s in self.seen if s.accepted]

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = self._read_request(conn)
            if head is None:
                return
            seen = Seen(_request_id(head), time.monotonic())
            with self._lock:
                hostile = len(self.seen) < self.hostile_first
                self.seen.append(seen)
            mode = self.mode if hostile else "ok"
            try:
                if mode == "dribble":
                    seen.accepted = self._dribble(conn)
                elif mode == "huge":
                    self._huge(conn, seen)
                else:
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    seen.accepted = True
            except OSError:
                pass
            seen.ended = time.monotonic()

    def _read_request(self, conn: socket.socket) -> bytes | None:
        conn.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                body += chunk
        except OSError:
            return None
        return head

    def _client_gone(self, conn: socket.socket, wait: float) -> bool:
        """Wait up to ``wait`` s; True if the client closed its end meanwhile."""
        readable, _, _ = select.select([conn], [], [], wait)
        if not readable:
            return False
        try:
            return conn.recv(1) == b""
        except OSError:
            return True

    def _dribble(self, conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 204 No Content\r\n")
        until = time.monotonic() + self.dribble_for
        n = 0
        while time.monotonic() < until:
            if self._stop.is_set() or self._client_gone(conn, self.interval):
                return False
            conn.sendall(f"X-Dribble-{n}: {'x' * 20}\r\n".encode())
            n += 1
        conn.sendall(b"Connection: close\r\n\r\n")
        return True

    def _huge(self, conn: socket.socket, seen: Seen) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n")
        block = b"\0" * 65536
        conn.settimeout(5)
        while seen.sent < 1 << 30 and not self._stop.is_set():
            conn.sendall(block)
            seen.sent += len(block)


def _request_id(head: bytes) -> str | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-request-id":
            return value.strip().decode("latin-1")
    return None
