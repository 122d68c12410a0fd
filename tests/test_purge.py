"""``spool purge`` (queued events removed on purpose, never leased ones or checkpoints)
and the lanes in ``status``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_in_process
from tests.support.shipper import run_cli, site, write_config
from tirreno_shipper.config import load_config
from tirreno_shipper.purge import parse_before, run_purge
from tirreno_shipper.records import Checkpoint, Event, FileId
from tirreno_shipper.spool import BACKFILL, Spool, drain_seconds


def events(n: int, tag: str, event_type: str = "page_view") -> list[Event]:
    return [
        Event(f"{tag}-{i}", {"ipAddress": "192.0.2.1", "url": f"/{i}", "eventType": event_type})
        for i in range(n)
    ]


CHECKPOINT = Checkpoint("/var/log/a.log", FileId(1, 2, "ff"), 77)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "c.yaml", [site("a", "http://127.0.0.1:1/", tmp_path / "a.log")])
    with Spool.open(tmp_path / "state") as spool:
        spool.commit_chunk("a", events(5, "old"), None, backfill=True)
        spool.commit_chunk("a", events(3, "pv"), CHECKPOINT)
        spool.commit_chunk("a", events(2, "login", "account_login"), None)
        spool.lease("a", 1, 600, (BACKFILL,))  # a sender holds one backfilled event
    return path


def lanes(state: Path) -> list[int]:
    with Spool.open(state) as spool:
        return [lane.depth for lane in spool.lane_stats("a")]


def test_purge_a_lane_with_yes_prints_what_went(cfg: Path, tmp_path: Path) -> None:
    r = run_in_process(
        "spool", "-c", str(cfg), "purge", "--site", "a", "--lane", "backfill", "--yes"
    )
    assert r.returncode == 0, r.stderr
    assert "removed 4 backfill (site a, lane backfill)" in r.stdout
    assert lanes(tmp_path / "state") == [2, 3, 1]  # the leased one stays
    with Spool.open(tmp_path / "state") as spool:
        assert spool.get_checkpoints("a") == [CHECKPOINT]
    r = run_in_process(
        "spool", "-c", str(cfg), "purge", "--site", "a", "--lane", "backfill", "--yes"
    )
    assert r.returncode == 0 and "nothing to purge" in r.stdout


def test_without_a_terminal_it_needs_yes(cfg: Path, tmp_path: Path) -> None:
    r = run_in_process("spool", "-c", str(cfg), "purge", "--site", "a")
    assert r.returncode == 2
    assert "would remove 2 security, 3 live, 4 backfill" in r.stderr and "--yes" in r.stderr
    assert lanes(tmp_path / "state") == [2, 3, 5]


def test_on_a_terminal_it_asks_first(cfg: Path, tmp_path: Path) -> None:
    config = load_config(cfg)
    asked: list[str] = []

    def no(question: str) -> str:
        asked.append(question)
        return "n"

    assert run_purge(config, "a", None, None, yes=False, ask=no, interactive=True) == 0
    assert "Remove 2 security, 3 live, 4 backfill queued event(s) (site a)?" in asked[0]
    assert lanes(tmp_path / "state") == [2, 3, 5]
    assert run_purge(config, "a", "live", None, yes=False, ask=lambda q: "y", interactive=True) == 0
    assert lanes(tmp_path / "state") == [2, 0, 5]


def test_before_takes_only_older_events_and_must_be_a_time(cfg: Path, tmp_path: Path) -> None:
    """--before yesterday is a usage error (2, in a real process: what a script sees)."""
    r = run_cli("spool", "-c", str(cfg), "purge", "--site", "a", "--before", "yesterday")
    assert r.returncode == 2 and "is not a time" in r.stderr
    r = run_in_process(
        "spool", "-c", str(cfg), "purge", "--site", "a", "--before", "2001-01-01", "--yes"
    )
    assert r.returncode == 0 and "nothing to purge" in r.stdout
    assert lanes(tmp_path / "state") == [2, 3, 5]


def test_parse_before_reads_iso_times_with_and_without_an_offset() -> None:
    assert parse_before("2026-12-01T05:00Z") == 1796101200.0
    assert parse_before("2026-12-01T06:00+01:00") == 1796101200.0


def test_status_shows_each_lane(cfg: Path) -> None:
    """status: per lane depth and oldest age (rates and drain times need the daemon)."""
    r = run_in_process("status", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    lanes = json.loads(r.stdout)["sites"]["a"]["lanes"]
    assert {name: lane["depth"] for name, lane in lanes.items()} == {
        "security": 2,
        "live": 3,
        "backfill": 5,
    }
    assert all(lane["oldest_age_seconds"] >= 0 for lane in lanes.values())
    assert all(lane["send_rate"] is None for lane in lanes.values())
    text = run_in_process("status", "-c", str(cfg)).stdout
    assert "lane backfill: 5 events, oldest" in text


def test_drain_seconds_counts_the_lanes_ahead() -> None:
    """A lane drains after every lane before it, at the site's whole rate."""
    assert drain_seconds([10, 0, 90], 10.0) == [1.0, 0.0, 10.0]
    assert drain_seconds([10, 0, 90], 0.0) == [None, 0.0, None]
