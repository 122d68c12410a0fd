"""A visitor's text never drives the operator's terminal.

Before: `dead-letters list` printed a URL holding ``\\x1b]0;PWNED\\x07\\x1b[2J`` raw, which
set the terminal's title and cleared its screen. Every human-facing output escapes control
characters now: ``dead-letters``, ``status``, ``check``, console logs (and JSON outputs keep
the exact value, escaped as JSON).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from tests.support.cli import run_in_process
from tests.support.shipper import site, write_config
from tirreno_shipper.check import run_check
from tirreno_shipper.config import load_config
from tirreno_shipper.logs import setup_logging
from tirreno_shipper.records import Checkpoint, Event, FileId
from tirreno_shipper.spool import Spool
from tirreno_shipper.terminal import printable

ATTACK = "\x1b]0;PWNED\x07\x1b[2J"
# What a terminal acts on: ESC, BEL, and the one-character CSI of 8-bit terminals.
RAW = ("\x1b", "\x07", "\x9b")
SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2J"


def assert_inert(text: str) -> None:
    found = [repr(c) for c in RAW if c in text]
    assert not found, f"raw {found} in: {text!r}"


def test_printable_escapes_every_control_character_and_keeps_text() -> None:
    assert printable("/a" + ATTACK + "\r\x9b\u202e") == "/a" + SHOWN + "\\x0d\\x9b\\u202e"
    assert printable("zoë 😀 /ü?q=1") == "zoë 😀 /ü?q=1"
    assert printable("a\n\tb\x1b", lines=True) == "a\n\tb\\x1b"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A dead letter and a checkpoint whose URL and path carry the attack."""
    log = tmp_path / f"access{ATTACK}.log"
    log.write_text("")
    cfg = write_config(tmp_path / "c.yaml", [site("a", "http://127.0.0.1:1/sensor/", log)])
    with Spool.open(tmp_path / "state") as spool:
        rid = "00000000-0000-5000-8000-000000000001"
        url = f"/x{ATTACK}\x9b"
        spool.commit_chunk("a", [Event(rid, {"url": url, "ipAddress": "1.2.3.4"})], None)
        [leased] = spool.lease("a", 1, 60)
        spool.dead_letter([leased.id], f"HTTP 400 from the sensor: {ATTACK}")
        spool.commit_chunk("a", [], Checkpoint(str(log), FileId(1, 2, "fp"), 0))
    return cfg


def test_dead_letters_list_shows_the_url_escaped(state: Path) -> None:
    r = run_in_process("dead-letters", "-c", str(state), "list")
    assert r.returncode == 0, r.stderr
    assert_inert(r.stdout)
    assert f"/x{SHOWN}\\x9b" in r.stdout and f"sensor: {SHOWN}" in r.stdout


def test_dead_letters_json_keeps_the_exact_value(state: Path) -> None:
    r = run_in_process("dead-letters", "-c", str(state), "list", "--json")
    assert r.returncode == 0, r.stderr
    assert_inert(r.stdout)
    [row] = [json.loads(line) for line in r.stdout.splitlines()]
    assert row["fields"]["url"] == f"/x{ATTACK}\x9b"


def test_status_shows_paths_escaped(state: Path) -> None:
    r = run_in_process("status", "-c", str(state))
    assert r.returncode == 0, r.stderr
    assert_inert(r.stdout)
    assert f"access{SHOWN}.log" in r.stdout
    r = run_in_process("status", "-c", str(state), "--json")
    assert_inert(r.stdout)
    files = json.loads(r.stdout)["sites"]["a"]["files"]
    assert files[0]["path"].endswith(f"access{ATTACK}.log")


def test_check_shows_paths_escaped(state: Path) -> None:
    out = io.StringIO()
    run_check(load_config(state), out=out)
    assert_inert(out.getvalue())
    assert f"access{SHOWN}.log" in out.getvalue()


def test_console_logs_show_values_escaped() -> None:
    out = io.StringIO()
    setup_logging("info", "console", stream=out)
    try:
        structlog.get_logger("t").warning("event_rejected", url=f"/x{ATTACK}", n=[ATTACK])
    finally:
        setup_logging("info", "json", stream=io.StringIO())
    text = out.getvalue()
    assert_inert(text)
    assert f"/x{SHOWN}" in text
