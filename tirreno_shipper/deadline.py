"""A deadline on a whole HTTP request, and a cap on what is read of its answer.

httpx's (httpcore's) timeouts bound each connect, read and write on their own: a
sensor that sends one header line every 0.5 s never lets a 2 s read timeout fire,
and holds the request for as long as it likes. A request outliving its batch's
lease lets another worker lease and send the same events (duplicates without a
crash). `DeadlineBackend` is a network backend whose every connect, read and
write is given at most the time left before the calling thread's deadline (set
with `DeadlineBackend.deadline` around one request), so the request ends by it
whatever the server does.
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing
from collections.abc import Iterable, Iterator

import httpcore

# At most this much of any answer is read: tirreno answers with an empty body.
# A sensor (or something in front of it) streaming 1 GiB costs 4 KiB, not 1 GiB.
MAX_ANSWER_BYTES = 4096

_Timeout = type[httpcore.ConnectTimeout | httpcore.ReadTimeout | httpcore.WriteTimeout]


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with every operation ending by the thread's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Within this block, this thread's connects, reads and writes end ``seconds`` from now."""
        self._local.until = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.until = None

    def bound(self, timeout: float | None, error: _Timeout) -> float | None:
        """``timeout`` shortened to the time left before the deadline; ``error`` once it passed."""
        until: float | None = getattr(self._local, "until", None)
        if until is None:
            return timeout
        left = until - time.monotonic()
        if left <= 0:
            raise error("the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            self.bound(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self.bound(timeout, httpcore.ConnectTimeout), socket_options=socket_options
        )
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """One connection; pooled, so the deadline is looked up per call, not kept."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, self._backend.bound(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


def read_at_most(chunks: Iterable[bytes], limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The first ``limit`` bytes of a streamed body; the rest is never read."""
    out = bytearray()
    for chunk in chunks:
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)
