"""One damaged spool row does not block its batch.

``UPDATE events SET fields='{'`` on one row: its decode failed after the lease was
committed, so the 7 valid events of its batch were stuck, every ``run --once`` exited 1 and
``dead-letters`` showed nothing. The row now goes to dead letters with its reason at lease
time, and the rest of the batch is sent.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import run_cli, site, write_config
from tirreno_shipper.records import Event
from tirreno_shipper.spool import Spool

FIELDS = {"ipAddress": "203.0.113.7", "url": "/", "eventTime": "2024-05-01 10:00:00"}


def _rid(i: int) -> str:
    return f"00000000-0000-5000-8000-{i:012d}"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("'{'", "not valid JSON"),
        ("'[1, 2]'", "not an object"),
        ("'{\"url\": 5}'", "not a string"),
        ("x'00ff'", "not valid JSON"),
    ],
)
def test_undecodable_row_goes_to_dead_letters_and_the_batch_is_sent(
    tmp_path: Path, damage: str, why: str
) -> None:
    """Eight events, one damaged by hand: ``run --once`` sends the seven, exits 0, and
    ``dead-letters list`` shows the eighth with the reason."""
    log = tmp_path / "access.log"
    log.touch()
    with FakeSensor() as sensor:
        config = write_config(tmp_path / "c.yaml", [site("shop", sensor.url, log)])
        spool = Spool.open(tmp_path / "state")
        spool.commit_chunk("shop", [Event(_rid(i), dict(FIELDS)) for i in range(8)], None)
        spool.close()
        with sqlite3.connect(tmp_path / "state" / "spool.sqlite") as db:
            db.execute(f"UPDATE events SET fields = {damage} WHERE request_id = ?", (_rid(3),))
        db.close()
        run = run_cli("run", "--once", "-c", str(config))
        accepted = sorted(i for i in sensor.accepted_ids() if i is not None)
    assert run.returncode == 0, run.stderr[-3000:]
    assert accepted == [_rid(i) for i in range(8) if i != 3]
    listed = run_cli("dead-letters", "-c", str(config), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert _rid(3) in listed.stdout and "undecodable spool row" in listed.stdout
    assert why in listed.stdout, listed.stdout
