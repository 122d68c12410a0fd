"""`SiteIngest`: the one way from a site's lines to the spool (daemon, backfill, dry run),
and the config model's one name for the field that holds the session key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tirreno_shipper.config import KeySpec, SiteConfig, parse_config
from tirreno_shipper.ingest import SiteIngest, SpoolFull
from tirreno_shipper.records import Chunk, FileId
from tirreno_shipper.spool import Spool

FORMAT = '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_x_user"'


def site_config(tmp_path: Path, key: str, spool: str = "{}") -> SiteConfig:
    db = sqlite3.connect(tmp_path / "users.sqlite")
    db.execute("CREATE TABLE IF NOT EXISTS users (k TEXT, name TEXT)")
    db.execute("INSERT INTO users VALUES ('u-7', 'zoe')")
    db.commit()
    db.close()
    config = parse_config(
        f"""
state_dir: {tmp_path}/state
sites:
  - name: shop
    sensor: {{url: "http://127.0.0.1:1/sensor/", api_key: k}}
    logs:
      - path: {tmp_path}/access.log
        format: {{nginx: '{FORMAT}'}}
    spool: {spool}
    users:
      key: {key}
      database: sqlite:///{tmp_path}/users.sqlite
      query: "SELECT name AS user_name FROM users WHERE k = :key"
      unresolved: drop
""",
        env={},
    )
    return config.sites[0]


def chunk(*users: str, start: int = 0) -> Chunk:
    lines, pos = [], start
    for user in users:
        raw = (
            f'203.0.113.9 - - [29/Nov/2026:11:00:01 +0100] "GET /a HTTP/1.1" 200 5 "{user}"'
        ).encode()
        lines.append((pos, raw))
        pos += len(raw) + 1
    return Chunk("/x/access.log", FileId(1, 2, "fp"), start, pos, lines)


def test_key_field_is_one_name_in_the_config_model() -> None:
    """`$http_x_user` (as nginx.conf writes it) and `http_x_user` are the same field, and a
    header is named as the parser names it."""
    assert KeySpec(field="$http_x_user").field == "http_x_user"
    assert KeySpec(field=" $http_x_user ").variable == "http_x_user"
    assert KeySpec(header="X-User").variable == "http_x_user"
    assert KeySpec(cookie="sid").variable is None


@pytest.mark.parametrize(
    "key", ["{field: http_x_user}", "{field: '$http_x_user'}", "{header: X-User}"]
)
def test_every_spelling_of_the_key_field_resolves_the_user(tmp_path: Path, key: str) -> None:
    """Before, `field: "$http_x_user"` dropped every line as unresolved: the parser was
    asked for a variable named with its `$`, which no format has."""
    ingest = SiteIngest(site_config(tmp_path, key))
    try:
        events, counts = ingest.process(chunk("u-7", "nobody"), 0)
    finally:
        ingest.close()
    assert [e.fields["userName"] for e in events] == ["zoe"]
    assert counts.unresolved == {"dropped": 1}


def test_store_keeps_the_caps_by_waiting_or_by_dropping_the_oldest(tmp_path: Path) -> None:
    """One rule for the daemon and backfill: a chunk goes in only if it fits (or the spool
    is empty); otherwise `SpoolFull` (nothing written), or, if the caller may drop, the
    oldest events make room."""
    site = site_config(tmp_path, "{field: http_x_user}", spool="{max_events: 3}")
    spool = Spool.open(tmp_path / "state")
    ingest = SiteIngest(site, spool)
    try:
        first = chunk("u-7", "u-7")
        events, counts = ingest.process(first, 0)
        ingest.store(events, counts, first.checkpoint(), may_drop=False)
        second = chunk("u-7", "u-7", start=first.end_offset)
        events, counts = ingest.process(second, 0)
        with pytest.raises(SpoolFull):
            ingest.store(events, counts, second.checkpoint(), may_drop=False)
        assert spool.totals("shop")[0] == 2
        assert spool.get_checkpoints("shop")[0].offset == first.end_offset  # not moved
        ingest.store(events, counts, second.checkpoint(), may_drop=True)
        assert spool.totals("shop")[0] == 3  # one old event dropped, both new ones in
        assert spool.get_checkpoints("shop")[0].offset == second.end_offset
    finally:
        ingest.close()
        spool.close()


def test_a_dry_run_ingest_has_no_spool_to_store_in(tmp_path: Path) -> None:
    ingest = SiteIngest(site_config(tmp_path, "{field: http_x_user}"))
    try:
        events, counts = ingest.process(chunk("u-7"), 0)
        with pytest.raises(AssertionError):
            ingest.store(events, counts, None, may_drop=False)
    finally:
        ingest.close()
