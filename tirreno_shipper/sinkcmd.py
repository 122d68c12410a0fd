"""``tirreno-shipper sink``: the stand-in sensor (`tirreno_shipper.sink`) on an address
of the operator's choosing, printing each event it receives, for trying a
configuration and its rules without a tirreno.

It answers exactly as the test suite's fake sensor does (it is the same code):
204, an empty 200 for a wrong key or a bad event, 429 past the bucket,
``Connection: close``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TextIO

from tirreno_shipper.errors import EX_FAILURE, EX_OK, EX_USAGE
from tirreno_shipper.sink import Received, Sink
from tirreno_shipper.terminal import printable  # the fields are visitors' text

# Shown on the first line of an event; the rest follow, indented, in this order.
_HEAD = ("eventType", "httpMethod", "url", "httpCode", "userName", "ipAddress", "eventTime")
_ORDER = (
    "emailAddress",
    "firstName",
    "lastName",
    "fullName",
    "phoneNumber",
    "userCreated",
    "userAgent",
    "httpReferer",
    "browserLanguage",
    "pageTitle",
)


def describe(received: Received) -> str:
    """An event as a few readable lines: what tirreno would show, then the rest."""
    f = received.fields
    when = time.strftime("%H:%M:%S", time.localtime(received.time))
    head = "  ".join(printable(f.get(k, "-")) for k in _HEAD)
    lines = [f"{when} 204 {head}"]
    if received.lost is not None:
        lines.append(f"    LOST: tirreno answers 204 but fails to store it: {received.lost}")
    rest = [k for k in _ORDER if k in f] + sorted(set(f) - set(_HEAD) - set(_ORDER))
    lines += [f"    {k}: {printable(f[k])}" for k in rest]
    lines.append(f"    X-Request-Id: {printable(received.request_id or '-')}")
    return "\n".join(lines)


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:8585`` for IPv6) → (host, port); None if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def run_sink(
    listen: str,
    api_key: str | None,
    rate: int,
    *,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop``); the exit code. Events are printed to
    ``out``, by default the ``sys.stdout`` of the call."""
    out = out if out is not None else sys.stdout
    address = parse_listen(listen)
    if address is None:
        print(f"tirreno-shipper sink: error: --listen {listen!r}: expected HOST:PORT",
              file=sys.stderr)  # fmt: skip
        return EX_USAGE
    if not api_key:
        print("tirreno-shipper sink: error: give --api-key K or set TIRRENO_API_KEY",
              file=sys.stderr)  # fmt: skip
        return EX_USAGE
    lock = threading.Lock()

    def show(received: Received) -> None:
        with lock:  # one handler thread per request: whole events, never interleaved
            print(describe(received), file=out, flush=True)

    sink = Sink(api_key, host=address[0], port=address[1], on_accept=show, bucket_capacity=rate)
    try:
        sink.start()
    except OSError as exc:
        print(f"tirreno-shipper sink: cannot listen on {listen}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return EX_FAILURE
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    print(
        f"tirreno-shipper sink: listening; set sensor.url: http://{host}:{sink.port}/sensor/ "
        f"(Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        stop.wait()
    finally:
        sink.stop()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(sink.counts.items())) or "no requests"
    print(f"tirreno-shipper sink: stopped ({counts})", file=sys.stderr)
    return EX_OK
