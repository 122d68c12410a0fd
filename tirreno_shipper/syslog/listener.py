"""A syslog listener as a log source: datagrams on a unix socket or a UDP port.

It offers the Tailer's interface (``poll``, ``rewind``, ``retired``, ``status``...),
so the daemon runs it like a followed file. A thread takes each datagram as it
arrives into a bounded queue in memory; each ``poll`` returns what waits there
as one chunk.

Syslog has no acknowledgement and nothing to read again: the kernel's socket
buffer is the only buffer. So what is lost is what arrives while nothing
listens (the shipper stopped or restarting; what waits in the buffer when it
stops is dropped with the socket) and what finds the buffer full (the daemon
paused on its users database or a full spool, or outpaced). The kernel counts
the second for UDP (``SO_RXQ_OVFL``, Linux), and so do we for our queue, both
in ``tirreno_shipper_syslog_dropped_total``. On a unix socket the sender is
told instead (nginx logs ``send() to syslog failed`` with the request), and the
kernel queues little there: ``net.unix.max_dgram_qlen`` (10) datagrams, or what
the sender's buffer holds; so UDP on 127.0.0.1 is the transport to prefer.

A "file" here is one run of the listener: its identity names the address and
the moment it started, and its offsets count the datagrams received, so request
ids are unique across restarts. Its checkpoint, written with the events as for
a file, says how many datagrams of this run are in the spool; a restart has
nothing to resume, so the previous runs' checkpoints are retired.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence

import structlog

from tirreno_shipper import metrics
from tirreno_shipper.records import Checkpoint, Chunk, FileId
from tirreno_shipper.syslog.address import Address
from tirreno_shipper.syslog.framing import MALFORMED, message
from tirreno_shipper.tail import FileStatus

log = structlog.get_logger(__name__)

# socket.SO_RXQ_OVFL (Linux 2.6.33+); Python names it only on some builds.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
# Asked for; the kernel caps it at net.core.rmem_max (as root, SO_RCVBUFFORCE passes that).
RCVBUF = 8 << 20
DATAGRAM_MAX = 65535
PREFIX = "syslog:"


class SyslogInput:
    """One listening socket; see the module docstring."""

    def __init__(
        self,
        site: str,
        address: str,
        *,
        wake: threading.Event,
        checkpoints: Sequence[Checkpoint] = (),
        chunk_lines: int = 2000,
        socket_mode: int = 0o666,
        max_queue: int = 200_000,
    ) -> None:
        self.site = site
        self.address = Address.parse(address)
        self.path = PREFIX + str(self.address)
        self.unreadable: dict[str, str] = {}
        self._chunk_lines = max(1, chunk_lines)
        self._wake = wake
        self._closed = threading.Event()
        self._retired = [cp.file for cp in checkpoints if cp.path == self.path]
        self._dropped = metrics.SYSLOG_DROPPED.labels(site=site)
        self._kernel_drops = 0
        self._bound: tuple[int, int] | None = None  # the unix socket file's inode
        self._sock = self._bind(socket_mode)
        # This run's identity: the address and the moment it started (no inode: the
        # fingerprint alone tells runs apart, and names them in `status`).
        self.file = FileId(0, 0, f"{self.address} {time.time_ns()}")
        self.received = 0
        self._inflight: Chunk | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._last: list[tuple[int, bytes]] = []
        self._max_queue = max_queue
        self._queue: deque[bytes] = deque()
        self._overflow = 0  # datagrams not queued: the queue was full
        self._thread = threading.Thread(target=self._receive, name=f"syslog-{site}", daemon=True)
        self._thread.start()
        log.info(
            "syslog_listening",
            site=site,
            address=str(self.address),
            buffer_bytes=self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )

    # -- the socket ---------------------------------------------------------------

    def _bind(self, mode: int) -> socket.socket:
        a = self.address
        if a.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(os.lstat(a.path).st_mode):
                    sock.close()
                    raise OSError(f"{a.path} exists and is not a socket: not replacing it")
                # A socket left by a run that was killed: nothing listens on it.
                os.unlink(a.path)
            try:
                sock.bind(a.path)
                # The web server runs as another user: the folder decides who may write.
                os.chmod(a.path, mode)
                st = os.stat(a.path)
                self._bound = (st.st_dev, st.st_ino)
            except OSError:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            # A reload binds the new runner's socket before the old one is closed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((a.host, a.port))
            except OSError:
                sock.close()
                raise
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, RCVBUF)  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        # Blocking, with a timeout so that the receiving thread sees a close.
        sock.settimeout(0.5)
        return sock

    def _receive(self) -> None:
        """The receiving thread: takes each datagram as soon as it arrives.

        A unix datagram socket queues only ``net.unix.max_dgram_qlen`` datagrams
        (10 by default) before the sender gets EAGAIN, so the socket must be read
        at once, not between two chunks of the tail: datagrams wait here, in
        memory (at most ``max_queue``), for the tail's next ``poll``.
        """
        space = socket.CMSG_SPACE(4)
        sock = self._sock
        queue = self._queue
        while not self._closed.is_set():
            try:
                data, anc, _flags, _addr = sock.recvmsg(DATAGRAM_MAX, space)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            if self._closed.is_set():
                return  # woken by close()'s shutdown: an empty read, not a datagram
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                    self._count_drops(struct.unpack("=I", value[:4])[0])
            if len(queue) >= self._max_queue:
                self._overflow += 1
                continue
            queue.append(data)
            self._wake.set()

    def _count_overflow(self) -> None:
        n, self._overflow = self._overflow, 0
        self._dropped.inc(n)
        log.warning(
            "syslog_dropped",
            site=self.site,
            address=str(self.address),
            count=n,
            hint=f"{self._max_queue} datagrams were waiting for the tail (paused on the users "
            "database or a full spool?): these lines are lost (syslog cannot ask for them again)",
        )

    def _count_drops(self, total: int) -> None:
        """The kernel's count of datagrams dropped on this socket so far: it comes with
        each datagram queued after a drop, so drops show with the next one received."""
        if total > self._kernel_drops:
            new = total - self._kernel_drops
            self._kernel_drops = total
            self._dropped.inc(new)
            log.warning(
                "syslog_dropped",
                site=self.site,
                address=str(self.address),
                count=new,
                total=total,
                hint="the socket buffer was full: the daemon was paused or outpaced; these "
                "lines are lost (syslog cannot ask for them again)",
            )

    # -- the Tailer's interface ------------------------------------------------------

    def poll(self) -> Chunk | None:
        self._inflight = None
        if self._closed.is_set():
            return None
        got = self._pending
        self._pending = []
        if not got:
            queue = self._queue
            while queue and len(got) < self._chunk_lines:
                got.append((self.received, queue.popleft()))
                self.received += 1
        if self._overflow:
            self._count_overflow()
        if not got:
            return None
        start = got[0][0]
        lines: list[tuple[int, bytes]] = []
        skipped: list[tuple[int, str]] = []
        for seq, data in got:
            msg = message(data)
            if msg is None:
                skipped.append((seq, MALFORMED))
            else:
                lines.append((seq, msg))
        chunk = Chunk(self.path, self.file, start, got[-1][0] + 1, lines, skipped)
        self._inflight = chunk
        self._last = got
        return chunk

    def rewind(self, chunk: Chunk) -> None:
        """Not spooled: the same datagrams are returned by the next poll."""
        if self._inflight is chunk:
            self._pending = self._last
            self._inflight = None

    def retired(self) -> list[FileId]:
        out, self._retired = self._retired, []
        return out

    def status(self) -> list[FileStatus]:
        return [FileStatus(self.path, self.file, self.received, self.received)]

    def lag_bytes(self) -> int:
        return 0

    @property
    def waiting(self) -> int:
        """Datagrams received and not yet returned by `poll`."""
        return len(self._queue)

    def watch_dirs(self) -> list[str]:
        return []

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            if self._bound is not None:
                # Only our own socket: a new run may have bound the path already.
                st = os.stat(self.address.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.address.path)
        # Wakes the receiving thread out of recvmsg() now rather than at its
        # 0.5 s timeout: a stop or a reload does not wait for it.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2)
