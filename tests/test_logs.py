"""Log lines: the libraries' own (stdlib logging) are rendered like ours."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

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


def test_under_journald_each_line_starts_with_its_syslog_priority(
    restored: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """journalctl -p warning must find warnings: the <N> prefix of sd-daemon(3), ours and
    the libraries' alike, only on the stream JOURNAL_STREAM names."""
    path = tmp_path / "journal"
    with open(path, "w") as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("debug", "json", stream=out)
        log = structlog.get_logger()
        log.debug("d")
        log.info("i")
        log.warning("reload_rejected")
        log.error("e")
        logging.getLogger("sqlalchemy.pool").warning("pool overflow")
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<4>"]
    assert json.loads(lines[2][3:])["event"] == "reload_rejected"


def test_a_stream_journald_did_not_connect_gets_no_prefix(
    restored: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command run from the service's shell inherits JOURNAL_STREAM, not the stream."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    path = tmp_path / "plain"
    with open(path, "w") as out:
        setup_logging("info", "json", stream=out)
        structlog.get_logger().warning("w")
    assert json.loads(path.read_text())["event"] == "w"


def test_command_line_log_flags_outlast_a_reloaded_configuration(restored: None) -> None:
    """--log-level/--log-format win over the log section, also when a SIGHUP reload sets
    up logging again from the file."""
    from tirreno_shipper.logs import force

    out = io.StringIO()
    force("warning", "json")
    try:
        setup_logging("debug", "console", stream=out)  # what the reload does
        log = structlog.get_logger()
        log.info("hidden")
        log.warning("shown")
    finally:
        force(None, None)
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["shown"]
