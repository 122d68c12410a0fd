"""A `Poster` that answers in-process, as httpx's MockTransport does: no sockets.

The answer comes from ``handler`` (status, body, headers) or an exception it
raises, and goes through the sender's own `classify`, so the sender sees what
it would see from the network. Every request is recorded with its time on the
sender's clock.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tirreno_shipper.clock import SYSTEM, Clock
from tirreno_shipper.sender import Verdict, classify


@dataclass(slots=True, frozen=True)
class Posted:
    """One request the mock answered."""

    request_id: str
    fields: dict[str, str]
    time: float
    status: int | None  # None: the handler raised


Handler = Callable[[Posted], tuple[int, bytes, Mapping[str, str]]]


def accept(posted: Posted) -> tuple[int, bytes, Mapping[str, str]]:
    """tirreno's answer to an event it takes."""
    return 204, b"", {}


class MockPoster:
    """Answers with ``handler`` (default: 204 to everything); thread-safe."""

    def __init__(self, handler: Handler = accept, *, clock: Clock = SYSTEM) -> None:
        self.handler = handler
        self._clock = clock
        self._lock = threading.Lock()
        self.posted: list[Posted] = []
        self.counts: Counter[int | None] = Counter()
        self.closed = False

    def post(self, body: bytes, request_id: str) -> Verdict:
        fields = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        posted = Posted(request_id, fields, self._clock.monotonic(), None)
        try:
            status, content, headers = self.handler(posted)
        except Exception as exc:
            self._record(posted)
            return classify(None, b"", None, exc)
        self._record(Posted(request_id, fields, posted.time, status))
        return classify(status, content, headers, None)

    def close(self) -> None:
        self.closed = True

    def _record(self, posted: Posted) -> None:
        with self._lock:
            self.posted.append(posted)
            self.counts[posted.status] += 1

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [p.request_id for p in self.posted if p.status == 204]
