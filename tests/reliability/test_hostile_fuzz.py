"""The ``hostile`` fuzz target: lines a visitor can make the server log, through the parser,
the user key extraction and the event mapping, each with a bounded time and memory.

Every byte of a log line between the server's own fields is chosen by the visitor (path,
query, user agent, referer, X-Forwarded-For, cookies). The strategies build such lines with
the shapes that hurt backtracking, quadratic or unbounded code: long runs, runs of escapes and
quotes, invalid UTF-8, NUL, lone surrogates, deep JSON nesting, huge forwarded-for chains.
Whatever comes in, each stage gives a record or a reason (never an exception), within
`TIME_PER_INPUT` and `MEMORY_PER_INPUT` (plus a small multiple of the line's size).

    .venv/bin/pytest -m hostile                       # this target alone
    HOSTILE_EXAMPLES=20000 .venv/bin/pytest -m hostile  # a longer fuzzing run
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tirreno_shipper.config import ClientIpConfig, KeySpec, UsersConfig
from tirreno_shipper.events import EventMapper
from tirreno_shipper.formats import PRESETS, compile_format
from tirreno_shipper.parse import line_parser
from tirreno_shipper.records import Request
from tirreno_shipper.tirreno import validate_fields
from tirreno_shipper.users import anonymous_user
from tirreno_shipper.users.keys import MAX_KEY_CHARS, KeyExtractor, KeyRejected

pytestmark = [pytest.mark.hostile, pytest.mark.slow]

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "100"))
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,  # measured below, per stage, without hypothesis' own overhead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A generous bound on a shared, loaded 2-core machine: the real cost is microseconds to
# a few milliseconds; a backtracking or quadratic path on a 60 KB field costs seconds.
TIME_PER_INPUT = 0.5
MEMORY_PER_INPUT = 2 * 1024 * 1024  # bytes, plus 16x the line's size

PARSERS = [
    line_parser(compile_format(name, "sid"), "sid", ("http_x_forwarded_for", "http_x_user"))
    for name in (*PRESETS, "json")
]


def _users(**key: str) -> UsersConfig:
    return UsersConfig(
        key=KeySpec(**key),  # type: ignore[arg-type]
        database="sqlite://",
        query="SELECT 1 AS user_name WHERE :key IS NOT NULL",
    )


EXTRACTORS = [
    KeyExtractor(_users(cookie="sid")),
    KeyExtractor(_users(header="X-User", transform="sha256")),
    KeyExtractor(_users(field="$remote_user")),
    KeyExtractor(_users(field="http_x_forwarded_for")),
]
MAPPERS = [
    EventMapper(ClientIpConfig(), ["token", "password", "code"]),
    EventMapper(ClientIpConfig(forwarded_for=True, trusted_proxies=["0.0.0.0/0", "::/0"]), []),
]

# Pieces a visitor can put into a field, each repeated up to tens of thousands of times.
_PIECES = [
    "a",
    "\\",
    '\\"',
    '"',
    "\\x",
    "\\xF0\\x9F\\x98\\x80",
    "\\xZZ",
    "\\u00",
    "%",
    "%00",
    "%C3%A9",
    "?",
    "&",
    "=",
    ";",
    ",",
    " ",
    "-",
    "é",
    "😀",
    "\x00",
    "\x1b]0;x\x07",
    "\ud800",
    "sid=",
    "[",
    "{",
    "1.2.3.4, ",
    "::1%eth0, ",
    "fe80::",
]


@st.composite
def hostile_field(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4))
    repeat = draw(st.sampled_from([1, 2, 10, 1_000, 20_000]))
    tail = draw(st.text(max_size=20))
    return "".join(parts) * repeat + tail


def _raw(text: str) -> bytes:
    """The line's bytes; a lone surrogate becomes bytes that are not UTF-8 (ED A0 80)."""
    return text.encode("utf-8", "surrogatepass")


@st.composite
def hostile_line(draw: st.DrawFn) -> bytes:
    field = hostile_field()
    path, agent, referer, xff, cookie, user = (draw(field) for _ in range(6))
    method = draw(st.sampled_from(["GET", "POST", "A" * 40, draw(field)]))
    if draw(st.booleans()):
        obj: object = {
            "remote_addr": draw(st.sampled_from(["203.0.113.9", "::1", draw(field)])),
            "time_iso8601": draw(st.sampled_from(["2026-11-29T10:00:01+00:00", draw(field)])),
            "request": f"{method} /{path} HTTP/1.1",
            "status": draw(st.sampled_from(["200", "302", draw(field)])),
            "http_user_agent": agent,
            "http_referer": referer,
            "http_x_forwarded_for": xff,
            "http_x_user": user,
            "cookie_sid": cookie,
            "remote_user": user,
        }
        if draw(st.booleans()):
            obj = {"remote_addr": "1.2.3.4", "request": "[" * draw(st.sampled_from([10, 100_000]))}
        return _raw(json.dumps(obj, ensure_ascii=draw(st.booleans())))
    return _raw(
        f'203.0.113.9 - {user} [29/Nov/2026:10:00:01 +0000] "{method} /{path} HTTP/1.1" 200 12 '
        f'"{referer}" "{agent}" "{cookie}" "{xff}"'
    )


T = TypeVar("T")


def _bounded(stage: str, raw: bytes, work: Callable[..., T], *args: object) -> T:
    """``work(*args)``, failing if it took more than the time or memory allowed for ``raw``."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    out = work(*args)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - before
    assert elapsed < TIME_PER_INPUT, (stage, elapsed, len(raw))
    assert peak < MEMORY_PER_INPUT + 16 * len(raw), (stage, peak, len(raw))
    return out


@pytest.fixture(scope="module", autouse=True)
def _traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


@HOSTILE
@given(hostile_line())
def test_hostile_line_through_parse_key_and_mapping(raw: bytes) -> None:
    """A hostile line gives a record or a reason at each stage, in bounded time and memory;
    what is mapped is an event tirreno accepts as it is."""
    for parser in PARSERS:
        req = _bounded("parse", raw, parser.parse, raw)
        assert isinstance(req, Request | str)
        if not isinstance(req, Request):
            continue
        for extract in EXTRACTORS:
            try:
                key = _bounded("key", raw, extract, req)
            except KeyRejected:  # a key no step can read: counted as unresolved, by reason
                continue
            assert key is None or 0 < len(key) <= MAX_KEY_CHARS
        if req.uri is None:
            continue
        for mapper in MAPPERS:
            ip = _bounded("client_ip", raw, mapper.client.of, req)
            if ip is None:
                continue
            event = _bounded(
                "map", raw, mapper.build, req, anonymous_user(ip), ip, "page_view", "0" * 36
            )
            assert validate_fields(event.fields, event.request_id) is None, event.fields
