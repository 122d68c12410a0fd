"""One damaged spool row does not block its batch.

``UPDATE events SET fields='{'`` on one row: its decode failed after the lease was
committed, so the 7 valid events of its batch were stuck, every ``run --once`` exited 1 and
``dead-letters`` showed nothing. The row now goes to dead letters with its reason at lease
time, and the rest of the batch is sent.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import site, write_config
from tirreno_shipper.records import Event
from tirreno_shipper.spool import Spool

FIELDS = {"ipAddress": "203.0.113.7", "url": "/", "eventTime": "2024-05-01 10:00:00"}


def _rid(i: int) -> str:
    return f"00000000-0000-5000-8000-{i:012d}"


# Each damage on a row of its own, with the reason `dead-letters list` gives for it.
DAMAGES = {
    3: ("'{'", "not valid JSON"),
    5: ("'[1, 2]'", "not an object"),
    8: ("'{\"url\": 5}'", "not a string"),
    10: ("x'00ff'", "not valid JSON"),
}


def test_undecodable_rows_go_to_dead_letters_and_their_batches_are_sent(tmp_path: Path) -> None:
    """Twelve events, four damaged by hand in four ways: ``run --once`` sends the eight others,
    exits 0, and ``dead-letters list`` shows each damaged one with its reason. (One run for
    the four: each is a row of its own, in a batch with valid ones.)"""
    log = tmp_path / "access.log"
    log.touch()
    with FakeSensor() as sensor:
        config = write_config(tmp_path / "c.yaml", [site("shop", sensor.url, log)])
        spool = Spool.open(tmp_path / "state")
        spool.commit_chunk("shop", [Event(_rid(i), dict(FIELDS)) for i in range(12)], None)
        spool.close()
        with sqlite3.connect(tmp_path / "state" / "spool.sqlite") as db:
            for i, (damage, _why) in DAMAGES.items():
                db.execute(f"UPDATE events SET fields = {damage} WHERE request_id = ?", (_rid(i),))
        db.close()
        run = run_in_process("run", "--once", "-c", str(config))
        accepted = sorted(i for i in sensor.accepted_ids() if i is not None)
    assert run.returncode == 0, run.stderr[-3000:]
    assert accepted == [_rid(i) for i in range(12) if i not in DAMAGES]
    listed = run_in_process("dead-letters", "-c", str(config), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = {d["request_id"]: d for d in map(json.loads, listed.stdout.splitlines())}
    assert sorted(letters) == [_rid(i) for i in DAMAGES], listed.stdout
    for i, (_damage, why) in DAMAGES.items():
        reason = letters[_rid(i)]["reason"]
        assert "undecodable spool row" in reason and why in reason, letters[_rid(i)]
