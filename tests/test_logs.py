"""Log lines: the libraries' own (stdlib logging) are rendered like ours."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from tirreno_shipper.logs import setup_logging


@pytest.fixture
def restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers, root.level = handlers, level
    structlog.configure(**config)


def test_library_lines_are_json_lines_too_and_watchdogs_stop_race_is_dropped(
    restored: None,
) -> None:
    """A plain text line in a JSON stream breaks log shippers (a CI run caught watchdog's
    'queue_events() called when the thread is inactive' ERROR at a stop, as plain text)."""
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("httpx").info("HTTP Request: POST ...")  # below WARNING: not shown
    logging.getLogger("sqlalchemy.pool").warning("pool %s overflow", "x")
    logging.getLogger("watchdog.observers.inotify").error(
        "InotifyEmitter.queue_events() called when the thread is inactive"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("watchdog.observers.inotify").exception("inotify failed")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["logger"], r["level"], r["event"]) for r in records] == [
        ("sqlalchemy.pool", "warning", "pool x overflow"),
        ("watchdog.observers.inotify", "error", "inotify failed"),
    ]
    assert "ValueError: boom" in records[1]["exception"]
    assert all(r["timestamp"].endswith("Z") for r in records)
