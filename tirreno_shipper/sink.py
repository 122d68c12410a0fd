"""A local stand-in for a tirreno sensor: a real HTTP server that answers like tirreno.

It is the test suite's fake sensor and the server behind ``tirreno-shipper sink``
(for trying configs and rules without a tirreno). It answers as tirreno v0.10
does (see DESIGN.md, "The tirreno sensor, as it really behaves"): ``POST
/sensor/`` only, form-encoded body, ``Api-Key`` header, 204 on accept, an
empty 200 for a wrong key, a missing ``ipAddress`` or ``url`` or a non-form
body, 429 from a rolling-window bucket, and
``Connection: close`` on every answer. Outages are scripted at runtime with
`Sink.set_mode`:

- ``ok``: answer normally;
- ``refuse``: close the listening socket so connects are refused; any other
  mode binds the SAME port again;
- ``500`` / ``503``: answer that status (with ``Retry-After`` when
  ``retry_after`` is set);
- ``slow``: hold each request ``slow_seconds`` then answer normally;
- ``hang``: read the request and never answer; when the mode changes the
  connection is closed unanswered.

Every accepted event is recorded with its ``X-Request-Id`` and headers, and
every request is counted by its answer. Like tirreno, the sink answers 204 before
it stores: an event tirreno would fail to insert (`tirreno.tirreno_stores`: a
value cut inside a character, a referer that decodes to invalid UTF-8, an email
the database's CHECK refuses, ...) is answered 204 and then kept in ``lost``,
not in ``accepted``, and counted as ``lost``.
"""

from __future__ import annotations

import codecs
import math
import socket
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tirreno_shipper.clock import SYSTEM, Clock
from tirreno_shipper.tirreno import tirreno_stores

MODES = frozenset({"ok", "refuse", "500", "503", "slow", "hang"})
FORM = "application/x-www-form-urlencoded"


@dataclass(slots=True, frozen=True)
class Received:
    """One event the sink answered 204: ``fields`` as posted, ``stored`` as tirreno
    keeps them, or ``lost``: why tirreno's insert would fail (then it is not stored)."""

    fields: dict[str, str]
    request_id: str | None
    time: float
    headers: dict[str, str]  # lower-cased names
    stored: dict[str, str | None] = field(default_factory=dict)
    lost: str | None = None


def _php_replace(exc: UnicodeError) -> tuple[str, int]:
    # mb_convert_encoding($v, 'UTF-8', 'UTF-8') in sensor/src/Model/Http/Request.php
    # turns each invalid sequence into '?'.
    assert isinstance(exc, UnicodeDecodeError)
    return "?", exc.end


codecs.register_error("tirreno_php", _php_replace)


def form_fields(body: bytes) -> dict[str, str]:
    """The form fields as PHP's ``$_POST`` and tirreno's Request model see them
    (the last of a repeated name wins; invalid UTF-8 becomes '?')."""
    pairs = urllib.parse.parse_qsl(
        body.decode("latin-1"), keep_blank_values=True, encoding="latin-1"
    )
    return {
        k.encode("latin-1").decode("utf-8", "tirreno_php"): v.encode("latin-1").decode(
            "utf-8", "tirreno_php"
        )
        for k, v in pairs
    }


@dataclass(slots=True, frozen=True)
class Answer:
    """One request the sink answered (or hung up on), in arrival order."""

    time: float
    answer: str  # "204", "200", "429", "500", "503", "404", "405", "hang"
    request_id: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sensor: Sink) -> None:
        self.sensor = sensor
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the recorded answers instead."""

    def do_GET(self) -> None:
        self._answer(405 if self._on_sensor_path() else 404, None)

    def do_POST(self) -> None:
        sensor = self.server.sensor
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request_id = self.headers.get("X-Request-Id")
        if not self._on_sensor_path():
            self._answer(404, request_id)
            return
        if sensor.delay:
            time.sleep(sensor.delay)
        mode = sensor.mode
        if mode == "hang":
            sensor._hang()
            sensor._record(Answer(time.time(), "hang", request_id))
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(sensor.slow_seconds)
        elif mode in ("500", "503"):
            self._answer(int(mode), request_id, retry_after=sensor.retry_after)
            return
        if self.headers.get("Api-Key") != sensor.api_key:
            self._answer(200, request_id)
            return
        wait = sensor._admit()
        if wait is not None:
            self._answer(429, request_id, retry_after=wait if sensor.send_retry_after else None)
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != FORM:
            self._answer(200, request_id)
            return
        fields = form_fields(body)
        if not fields.get("ipAddress") or not fields.get("url"):
            self._answer(200, request_id)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        stored = tirreno_stores(fields, request_id)
        received = Received(fields, request_id, time.time(), headers, stored.fields, stored.lost)
        # Recorded before the answer so that a client seeing 204 finds it; a
        # lost event is answered 204 all the same, as tirreno does.
        sensor._accept(received)
        self._answer(204, request_id)

    def _on_sensor_path(self) -> bool:
        return self.path.split("?")[0] in ("/sensor/", "/sensor")

    def _answer(
        self, status: int, request_id: str | None, retry_after: float | None = None
    ) -> None:
        self.server.sensor._record(Answer(time.time(), str(status), request_id))
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Connection", "close")
            if retry_after is not None:
                self.send_header("Retry-After", str(math.ceil(retry_after)))
            if status != 204:
                body = b"" if status == 200 else f"error {status}".encode()
                self.send_header("Content-Type", "text/html; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.end_headers()
        except OSError:
            pass  # the client gave up (timeout): nothing to answer


class Sink:
    """A tirreno sensor with scriptable outages; see the module docstring.

    ``host``/``port`` default to an ephemeral port on 127.0.0.1 (tests);
    ``on_accept`` is called with each accepted event (the CLI prints it).
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_accept: Callable[[Received], None] | None = None,
        bucket_capacity: int = 200,
        bucket_window: float = 20.0,
        delay: float = 0.0,
        slow_seconds: float = 2.0,
        retry_after: float | None = None,
        send_retry_after: bool = True,
        clock: Clock = SYSTEM,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.on_accept = on_accept
        self.bucket_capacity = bucket_capacity  # 0: no rate limit
        self.bucket_window = bucket_window
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after  # sent with 500/503 when set
        self.send_retry_after = send_retry_after  # sent with 429
        self._clock = clock  # the bucket's time: tests move it instead of waiting
        self.mode = "ok"
        self.accepted: list[Received] = []  # answered 204 and stored
        self.lost: list[Received] = []  # answered 204, then tirreno's insert would fail
        self.answers: list[Answer] = []
        self.counts: Counter[str] = Counter()
        self.hanging = 0  # requests held by hang mode right now
        self._lock = threading.Lock()
        self._mode_changed = threading.Condition(self._lock)
        self._bucket: deque[float] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = port
        self._stopping = False

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Sink:
        self._stopping = False
        self._serve()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._mode_changed.notify_all()
        self._unserve()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/sensor/"

    # -- scripting -------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` (see the module docstring); takes effect for new requests."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        with self._lock:
            previous, self.mode = self.mode, mode
            self._mode_changed.notify_all()
        if mode == "refuse" and previous != "refuse":
            self._unserve()
        elif previous == "refuse" and mode != "refuse":
            self._serve()

    def set_api_key(self, api_key: str) -> None:
        """Accept ``api_key`` from now on (and refuse every other key)."""
        with self._lock:
            self.api_key = api_key

    # -- what happened ---------------------------------------------------

    def accepted_ids(self) -> list[str | None]:
        with self._lock:
            return [r.request_id for r in self.accepted]

    def count(self, answer: str) -> int:
        with self._lock:
            return self.counts[answer]

    def answer_log(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def wait_accepted(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` events were accepted; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.accepted) >= n:
                    return True
            time.sleep(0.02)
        with self._lock:
            return len(self.accepted) >= n

    # -- internals used by the handler -----------------------------------

    def _serve(self) -> None:
        server = _Server((self.host, self._port), self)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sink-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _unserve(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        # shutdown() only stops the accept loop; closing the listening socket is
        # what makes new connects fail with ECONNREFUSED.
        server.server_close()
        if thread is not None:
            thread.join(5)

    def _hang(self) -> None:
        with self._lock:
            self.hanging += 1
            try:
                while self.mode == "hang" and not self._stopping:
                    self._mode_changed.wait(0.5)
            finally:
                self.hanging -= 1

    def _admit(self) -> float | None:
        """Count the request in the bucket; return seconds to wait if it is full."""
        if self.bucket_capacity <= 0:
            return None
        now = self._clock.monotonic()
        with self._lock:
            while self._bucket and self._bucket[0] <= now - self.bucket_window:
                self._bucket.popleft()
            if len(self._bucket) >= self.bucket_capacity:
                return max(0.0, self._bucket[0] + self.bucket_window - now)
            self._bucket.append(now)
            return None

    def _accept(self, received: Received) -> None:
        with self._lock:
            if received.lost is None:
                self.accepted.append(received)
            else:
                self.lost.append(received)
                self.counts["lost"] += 1
        if self.on_accept is not None:
            self.on_accept(received)

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)
            self.counts[answer.answer] += 1
