"""Delivery rate: the product's sender against a one-at-a-time loop, in the same run.

A minimal HTTP/1.1 sink runs in a subprocess (asyncio, raw protocol, answers
``204`` with keep-alive unless the client asks ``Connection: close``), once
answering at once and once holding each request 50 ms without blocking the
others, as a real tirreno does. Against each sink this measures:

(a) the product: `SiteSender` (rate limit off, default concurrency) draining
    N events from a real spool in a temporary directory;
(b) the baseline: tirreno's own Python tracker pattern, one blocking
    ``requests.post`` per event with ``Connection: close``.

Targets (issue 4): (a) >= 2x (b) on the fast sink, >= 3.5x on the 50 ms sink.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/deliver.py [--events N] [--slow-events N] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from pydantic import SecretStr

from tirreno_shipper import metrics
from tirreno_shipper.config import SensorConfig
from tirreno_shipper.records import Event
from tirreno_shipper.sender import SiteSender
from tirreno_shipper.spool import Spool

SITE = "bench"
KEY = "bench-key"


# -- the sink (runs in a subprocess) ------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            close = b"connection: close" in head
            answer = b"HTTP/1.1 204 No Content\r\n"
            answer += b"Connection: close\r\n\r\n" if close else b"\r\n"
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._answer, answer, close)
            else:
                self._answer(answer, close)

    def _answer(self, answer: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(answer)
        if close:
            self.transport.close()


async def _serve(delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _SinkProtocol(delay), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def start_sink(delay: float) -> tuple[subprocess.Popen[str], str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--sink", "--delay", str(delay)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/sensor/"


# -- the two clients ----------------------------------------------------------------


def make_events(n: int) -> list[Event]:
    return [
        Event(
            f"00000000-0000-5000-8000-{i:012d}",
            {
                "ipAddress": "203.0.113.7",
                "url": f"/account/orders/{i}?page=2",
                "userName": f"user{i % 500}",
                "emailAddress": f"user{i % 500}@example.com",
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126",
                "eventTime": "2024-05-01 10:00:00.123",
                "eventType": "page_view",
                "httpCode": "200",
                "httpMethod": "GET",
                "httpReferer": "https://shop.example.com/account",
                "browserLanguage": "en-US,en;q=0.9",
            },
        )
        for i in range(n)
    ]


def run_sender(url: str, events: list[Event]) -> float:
    """Events/s for SiteSender draining ``events`` from a fresh spool."""
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool.open(Path(tmp))
        try:
            for start in range(0, len(events), 500):
                spool.commit_chunk(SITE, events[start : start + 500], None)
            config = SensorConfig(url=url, api_key=SecretStr(KEY), rate_limit=0)
            sent = metrics.EVENTS_SENT.labels(site=SITE)
            before = sent._value.get()
            sender = SiteSender(SITE, config, spool)
            started = time.perf_counter()
            sender.start()
            if not sender.wait_empty(600):
                raise SystemExit("the sender did not drain the spool in 600 s")
            elapsed = time.perf_counter() - started
            sender.stop(5)
            delivered = sent._value.get() - before
            if delivered != len(events):
                raise SystemExit(f"sender delivered {delivered} of {len(events)} events")
        finally:
            spool.close()
    return len(events) / elapsed


def run_baseline(url: str, events: list[Event]) -> float:
    """Events/s for one blocking requests.post per event, new connection each."""
    started = time.perf_counter()
    for event in events:
        headers = {"Api-Key": KEY, "X-Request-Id": event.request_id, "Connection": "close"}
        response = requests.post(url, data=dict(event.fields), headers=headers, timeout=5)
        if response.status_code != 204:
            raise SystemExit(f"baseline got {response.status_code}")
    return len(events) / (time.perf_counter() - started)


def measure(label: str, delay: float, n: int, target: float) -> bool:
    proc, url = start_sink(delay)
    try:
        events = make_events(n)
        baseline = run_baseline(url, events)
        product = run_sender(url, events)
    finally:
        proc.kill()
        proc.wait()
    ratio = product / baseline
    ok = ratio >= target
    print(
        f"{label:<14} events={n:<6} sender={product:8.0f}/s  baseline={baseline:8.0f}/s  "
        f"ratio={ratio:5.2f}x  target>={target}x  {'ok' if ok else 'MISSED'}",
        flush=True,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events for the fast sink")
    parser.add_argument("--slow-events", type=int, default=300, help="events for the 50 ms sink")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        asyncio.run(_serve(args.delay))
        return 0
    ok = measure("fast sink", 0.0, args.events, 2.0)
    ok = measure("50 ms sink", 0.05, args.slow_events, 3.5) and ok
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
