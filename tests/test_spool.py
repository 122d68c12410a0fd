"""The SQLite spool, on real files: atomic chunks, leases, dead letters, caps, modes, damage."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tirreno_shipper import spool as spool_module
from tirreno_shipper.errors import SpoolCorruptError, SpoolError
from tirreno_shipper.records import Checkpoint, Event, FileId
from tirreno_shipper.spool import SCHEMA_VERSION, LaneStats, Spool, SpoolStats

ROOT = Path(__file__).resolve().parent.parent
NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


def make_events(n: int, tag: str = "a", start: int = 0) -> list[Event]:
    """Events with deterministic request ids, as the tail makes them (site, file, offset)."""
    return [
        Event(
            str(uuid.uuid5(NS, f"{tag}:{i}")),
            {
                "ipAddress": "192.0.2.7",
                "url": f"/page/{i}",
                "userName": f"user{i}",
                "emailAddress": f"user{i}@example.com",
                "eventTime": "2024-05-01 10:00:00.000",
            },
        )
        for i in range(start, start + n)
    ]


def checkpoint(offset: int, ino: int = 42, fingerprint: str = "ab" * 20) -> Checkpoint:
    return Checkpoint("/var/log/nginx/access.log", FileId(2049, ino, fingerprint), offset)


def raw(spool: Spool) -> sqlite3.Connection:
    """A plain connection to the spool file, to look behind the API."""
    return sqlite3.connect(spool.path, isolation_level=None)


def count_rows(spool: Spool, table: str) -> int:
    with raw(spool) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def assert_totals_match_rows(spool: Spool) -> None:
    """The per-site counters equal what the rows say."""
    with raw(spool) as conn:
        actual = {
            site: (n, b)
            for site, n, b in conn.execute(
                "SELECT site, count(*), sum(size) FROM events GROUP BY site"
            )
        }
        sizes = dict(conn.execute("SELECT request_id, size FROM events").fetchall())
        texts = dict(conn.execute("SELECT request_id, fields FROM events").fetchall())
    for rid, text in texts.items():
        assert sizes[rid] == len(text.encode())
    for site in {*actual, *spool.sites()}:
        stats = spool.stats(site)
        assert (stats.depth, stats.bytes) == actual.get(site, (0, 0))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = Spool.open(tmp_path / "state")
    try:
        yield opened
    finally:
        opened.close()


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# -- opening: files, modes, schema -----------------------------------------------


def test_open_creates_state_dir_0700_and_files_0600(tmp_path: Path) -> None:
    """A missing state_dir is made 0700; the database, -wal and -shm are 0600 under umask 022."""
    state = tmp_path / "nested" / "state"
    old = os.umask(0o022)
    try:
        spool = Spool.open(state)
        spool.commit_chunk("shop", make_events(5), checkpoint(100))
        held = spool.lease("shop", 1, 60)  # keeps the connection, so -wal and -shm stay
        assert held
        paths = [state / "spool.sqlite", state / "spool.sqlite-wal", state / "spool.sqlite-shm"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    finally:
        os.umask(old)
    spool.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert modes == {p.name: 0o600 for p in paths}


def test_existing_loose_spool_file_is_tightened_to_0600(tmp_path: Path) -> None:
    """A spool file left world-readable (e.g. restored from a backup) is set back to 0600."""
    Spool.open(tmp_path).close()
    db = tmp_path / "spool.sqlite"
    os.chmod(db, 0o644)
    Spool.open(tmp_path).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_schema_version_is_recorded(spool: Spool) -> None:
    """A new spool carries the current schema version in user_version."""
    with raw(spool) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert SCHEMA_VERSION >= 2


V1_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL,
    request_id TEXT NOT NULL UNIQUE, fields TEXT NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL, not_before REAL NOT NULL, leased_until REAL, leased_by TEXT,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX events_ready ON events (site, not_before);
CREATE INDEX events_age ON events (site, created);
CREATE INDEX events_leased ON events (leased_until, site) WHERE leased_until IS NOT NULL;
CREATE TABLE checkpoints (
    site TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    path TEXT NOT NULL, byte_offset INTEGER NOT NULL CHECK (byte_offset >= 0),
    updated REAL NOT NULL, PRIMARY KEY (site, dev, ino, fingerprint)) WITHOUT ROWID;
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL, request_id TEXT NOT NULL,
    fields TEXT NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL,
    created REAL NOT NULL, failed_at REAL NOT NULL);
CREATE INDEX dead_letters_site ON dead_letters (site, id);
PRAGMA user_version = 1;
"""


def test_version_1_spool_is_migrated_with_its_events(tmp_path: Path) -> None:
    """A spool written by schema 1 opens: counters are built from its rows, nothing is lost."""
    db = tmp_path / "spool.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(V1_SCHEMA)
        now = time.time()
        for i, site in enumerate(["shop", "shop", "shop", "blog"]):
            text = json.dumps({"url": f"/{i}"}, separators=(",", ":"))
            conn.execute(
                "INSERT INTO events (site, request_id, fields, size, created, not_before) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (site, f"rid-{i}", text, len(text), now - 10 + i, now - 10 + i),
            )
        conn.execute(
            "INSERT INTO checkpoints VALUES ('shop', 1, 2, 'ff', '/var/log/a.log', 77, ?)", (now,)
        )
    conn.close()
    spool = Spool(db)
    try:
        with raw(spool) as check:
            assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        shop = spool.stats("shop")
        assert (shop.depth, shop.bytes) == (
            3,
            sum(len(json.dumps({"url": f"/{i}"})) - 1 for i in range(3)),
        )
        assert spool.stats("blog").depth == 1
        assert spool.get_checkpoints("shop") == [
            Checkpoint("/var/log/a.log", FileId(1, 2, "ff"), 77)
        ]
        assert [e.request_id for e in spool.lease("shop", 10, 60)] == ["rid-0", "rid-1", "rid-2"]
        assert_totals_match_rows(spool)
    finally:
        spool.close()


def test_newer_schema_fails_clearly_and_keeps_the_file(tmp_path: Path) -> None:
    """A spool from a newer release is refused with a message naming both versions; untouched."""
    spool = Spool.open(tmp_path)
    spool.commit_chunk("shop", make_events(3), None)
    spool.close()
    db = tmp_path / "spool.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolError, match="newer") as info:
        Spool.open(tmp_path)
    assert not isinstance(info.value, SpoolCorruptError)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert str(db) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    conn.close()


# -- damage and unusable directories ----------------------------------------------


def test_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    """Garbage in spool.sqlite: SpoolCorruptError, bytes kept as .corrupt-*, then a new spool."""
    db = tmp_path / "spool.sqlite"
    garbage = b"this is not an SQLite database\n" * 500
    db.write_bytes(garbage)
    with pytest.raises(SpoolCorruptError) as info:
        Spool.open(tmp_path)
    moved = info.value.moved_to
    assert moved is not None
    assert Path(moved).name.startswith("spool.sqlite.corrupt-")
    assert Path(moved).read_bytes() == garbage
    assert moved in str(info.value)
    assert not db.exists()
    fresh = Spool.open(tmp_path)
    try:
        assert fresh.stats("shop") == SpoolStats(0, 0, None, 0, 0)
    finally:
        fresh.close()


def test_malformed_database_is_moved_aside_with_its_wal(tmp_path: Path) -> None:
    """A spool with damaged pages is found at open and moved aside with -wal/-shm, never deleted."""
    spool = Spool.open(tmp_path)
    spool.commit_chunk("shop", make_events(3000), checkpoint(1))
    spool.close()
    db = tmp_path / "spool.sqlite"
    data = bytearray(db.read_bytes())
    rng = random.Random(7)
    page = 4096
    for start in range(2 * page, len(data) - page, 3 * page):
        data[start : start + 200] = rng.randbytes(200)
    db.write_bytes(bytes(data))
    (tmp_path / "spool.sqlite-wal").write_bytes(b"")
    with pytest.raises(SpoolCorruptError) as info:
        Spool.open(tmp_path)
    moved = Path(str(info.value.moved_to))
    assert moved.read_bytes() == bytes(data)
    assert Path(f"{moved}-wal").exists()
    assert not db.exists()
    assert "corrupt" in str(info.value)


def test_state_dir_under_a_regular_file_gives_spool_error(tmp_path: Path) -> None:
    """mkdir failing (under a regular file; root ignores modes) names the path and the OS error."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    state = blocker / "state"
    with pytest.raises(SpoolError) as info:
        Spool.open(state)
    assert str(state) in str(info.value)
    assert "Not a directory" in str(info.value)


def test_state_dir_that_is_a_file_gives_spool_error(tmp_path: Path) -> None:
    """A state_dir path taken by a regular file is refused with a clear message."""
    state = tmp_path / "state"
    state.write_text("x")
    with pytest.raises(SpoolError, match="not a directory") as info:
        Spool.open(state)
    assert str(state) in str(info.value)


def test_busy_database_error_is_translated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write lock held past the busy timeout surfaces as SpoolError, not sqlite3's error."""
    monkeypatch.setattr(spool_module, "BUSY_TIMEOUT", 0.2)
    spool = Spool.open(tmp_path)
    holder = raw(spool)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(SpoolError, match="locked"):
            spool.commit_chunk("shop", make_events(1), None)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert spool.commit_chunk("shop", make_events(1), None) == 1
    spool.close()


def test_closed_spool_raises_and_closes_every_thread_connection(tmp_path: Path) -> None:
    """close() closes the connections of all threads (the WAL goes away); later calls fail."""
    spool = Spool.open(tmp_path)
    spool.commit_chunk("shop", make_events(10), None)

    def use() -> None:
        spool.stats("shop")
        spool.lease("shop", 1, 60)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / "spool.sqlite-wal").exists()
    spool.close()
    # SQLite removes the WAL only when the last connection to the file closes.
    assert not (tmp_path / "spool.sqlite-wal").exists()
    with pytest.raises(SpoolError, match="closed"):
        spool.stats("shop")
    spool.close()


# -- the tail's side -----------------------------------------------------------------


def test_commit_chunk_round_trip(spool: Spool) -> None:
    """Events come back with their fields; the checkpoint reads back; a 64-bit inode survives."""
    events = make_events(4)
    big = Checkpoint("/var/log/x.log", FileId(2**64 - 5, 2**63 + 9, "f" * 40), 4096)
    assert spool.commit_chunk("shop", events, big) == 4
    leased = spool.lease("shop", 10, 60)
    assert [(e.request_id, dict(e.fields)) for e in leased] == [
        (e.request_id, dict(e.fields)) for e in events
    ]
    assert all(e.site == "shop" and e.attempts == 0 for e in leased)
    assert spool.get_checkpoints("shop") == [big]
    assert spool.get_checkpoints("blog") == []


def test_fields_are_stored_as_compact_json_with_their_byte_size(spool: Spool) -> None:
    """Each row holds compact JSON text and that text's byte size, non-ASCII included."""
    event = Event("rid-1", {"url": "/é", "userName": "Zoë 🦊"})
    spool.commit_chunk("shop", [event], None)
    with raw(spool) as conn:
        text, size = conn.execute("SELECT fields, size FROM events").fetchone()
    assert ", " not in text and ": " not in text
    assert json.loads(text) == event.fields
    assert size == len(text.encode())
    assert spool.stats("shop").bytes == size
    assert spool.lease("shop", 1, 60)[0].fields == event.fields


def test_field_encoding_matches_the_standard_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prebuilt C encoder and the plain JSONEncoder fallback write the same text."""
    fields = {"url": '/a?b="c"', "userName": "Zoë 🦊", "n": "\x00\n"}
    fast = spool_module._encode_fields(fields)
    monkeypatch.setattr(spool_module, "_C_ENCODER", None)
    assert spool_module._encode_fields(fields) == fast
    assert fast == json.dumps(fields, separators=(",", ":"))


def test_commit_is_atomic_when_the_checkpoint_violates_a_constraint(spool: Spool) -> None:
    """A checkpoint the database refuses rolls the chunk's events back too."""
    spool.commit_chunk("shop", make_events(2, "old"), checkpoint(10))
    with pytest.raises(SpoolError):
        spool.commit_chunk("shop", make_events(50), checkpoint(-1))
    assert count_rows(spool, "events") == 2
    assert spool.get_checkpoints("shop") == [checkpoint(10)]
    assert spool.stats("shop").depth == 2
    assert_totals_match_rows(spool)


def test_commit_is_atomic_when_failing_after_the_insert(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the events insert and the checkpoint leaves neither."""

    def boom(*args: object) -> None:
        raise RuntimeError("killed between the two statements")

    monkeypatch.setattr(Spool, "_upsert_checkpoint", staticmethod(boom))
    with pytest.raises(RuntimeError):
        spool.commit_chunk("shop", make_events(50), checkpoint(500))
    monkeypatch.undo()
    assert count_rows(spool, "events") == 0
    assert spool.get_checkpoints("shop") == []
    assert spool.stats("shop").depth == 0
    # The spool is usable afterwards: the failed transaction did not stay open.
    assert spool.commit_chunk("shop", make_events(50), checkpoint(500)) == 50


def test_request_ids_are_not_deduplicated(spool: Spool) -> None:
    """The checkpoint, not the id, keeps lines from being spooled twice: ids are stored as given."""
    assert spool.commit_chunk("shop", make_events(10), checkpoint(100)) == 10
    assert spool.commit_chunk("shop", make_events(10, start=5), checkpoint(150)) == 10
    assert spool.stats("shop").depth == 20
    assert spool.get_checkpoints("shop") == [checkpoint(150)]
    assert_totals_match_rows(spool)


def test_checkpoints_upsert_per_identity_and_delete(spool: Spool) -> None:
    """One checkpoint per (dev, ino, fingerprint): moved in place, separate for a reused inode."""
    spool.commit_chunk("shop", [], checkpoint(10))
    spool.commit_chunk(
        "shop", [], Checkpoint("/var/log/nginx/access.log.1", FileId(2049, 42, "ab" * 20), 20)
    )
    spool.commit_chunk("shop", [], checkpoint(5, fingerprint="cd" * 20))
    spool.commit_chunk("blog", [], checkpoint(7))
    got = {(c.file.fingerprint, c.path, c.offset) for c in spool.get_checkpoints("shop")}
    assert got == {
        ("ab" * 20, "/var/log/nginx/access.log.1", 20),
        ("cd" * 20, "/var/log/nginx/access.log", 5),
    }
    assert spool.sites() == ["blog", "shop"]
    spool.delete_checkpoints("shop", [FileId(2049, 42, "ab" * 20), FileId(9, 9, "none")])
    assert [c.offset for c in spool.get_checkpoints("shop")] == [5]
    assert [c.offset for c in spool.get_checkpoints("blog")] == [7]
    spool.delete_checkpoints("shop", [])


# -- the sender's side --------------------------------------------------------------


def test_lease_ack_release_and_attempts(spool: Spool) -> None:
    """Leased rows are not leased twice; ack deletes, idempotently; release puts back, counts."""
    spool.commit_chunk("shop", make_events(10), None)
    first = spool.lease("shop", 4, 60)
    second = spool.lease("shop", 4, 60)
    assert len(first) == 4 and len(second) == 4
    assert {e.id for e in first}.isdisjoint(e.id for e in second)
    assert spool.stats("shop").leased == 8
    spool.ack([e.id for e in first])
    spool.ack([e.id for e in first])
    assert spool.stats("shop").depth == 6
    spool.release([e.id for e in second[:2]], 0.0)
    spool.release([e.id for e in second[2:]], 0.0, count_attempt=False)
    again = {e.id: e.attempts for e in spool.lease("shop", 10, 60)}
    assert len(again) == 6
    assert [again[e.id] for e in second] == [1, 1, 0, 0]
    spool.ack([])
    spool.release([], 1.0)
    assert spool.lease("shop", 0, 60) == []


def test_release_delay_holds_the_event_until_not_before(tmp_path: Path) -> None:
    """A released event is not leased again before its delay has passed."""
    clock = FakeClock()
    with Spool.open(tmp_path, clock=clock) as spool:
        spool.commit_chunk("shop", make_events(1), None)
        (event,) = spool.lease("shop", 1, 60)
        spool.release([event.id], 0.4)
        assert spool.lease("shop", 1, 60) == []
        assert spool.stats("shop").leased == 0
        clock.advance(0.39)
        assert spool.lease("shop", 1, 60) == []
        clock.advance(0.01)
        assert [e.id for e in spool.lease("shop", 1, 60)] == [event.id]


def test_lease_is_oldest_first_and_per_site(spool: Spool) -> None:
    """Leases come in the order events were spooled, and only from the asked site."""
    spool.commit_chunk("shop", make_events(3, "s1"), None)
    spool.commit_chunk("blog", make_events(3, "b"), None)
    spool.commit_chunk("shop", make_events(3, "s2"), None)
    got = [e.request_id for e in spool.lease("shop", 10, 60)]
    assert got == [e.request_id for e in make_events(3, "s1") + make_events(3, "s2")]
    assert {e.site for e in spool.lease("blog", 10, 60)} == {"blog"}


def test_expired_lease_is_leased_again_and_recovered(tmp_path: Path) -> None:
    """A lease that outlives its timeout goes back: leasable at once, cleared by recover_leases."""
    clock = FakeClock()
    with Spool.open(tmp_path, clock=clock) as spool:
        spool.commit_chunk("shop", make_events(5), None)
        held = spool.lease("shop", 3, 0.2)
        assert spool.stats("shop").leased == 3
        assert spool.recover_leases() == 0
        clock.advance(0.19)
        assert spool.stats("shop").leased == 3
        assert spool.recover_leases() == 0
        clock.advance(0.01)
        assert spool.stats("shop").leased == 0
        assert spool.recover_leases() == 3
        assert spool.recover_leases() == 0
        again = spool.lease("shop", 10, 60)
        assert {e.id for e in held} <= {e.id for e in again}
        assert len(again) == 5


def test_a_late_ack_after_expiry_only_deletes_that_event(spool: Spool) -> None:
    """Ids are never reused, so an ack arriving after the queue emptied cannot hit a newer event."""
    spool.commit_chunk("shop", make_events(1, "x"), None)
    (old,) = spool.lease("shop", 1, 60)
    spool.ack([old.id])
    spool.commit_chunk("shop", make_events(1, "y"), None)
    spool.ack([old.id])
    (new,) = spool.lease("shop", 1, 60)
    assert new.id != old.id
    assert spool.stats("shop").depth == 1


LEASE_AND_EXIT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tirreno_shipper.spool import Spool
    spool = Spool.open(Path(sys.argv[1]))
    leased = spool.lease("shop", int(sys.argv[2]), 600)
    print(len(leased), flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
    """
)


def test_leases_of_a_killed_process_come_back_at_open(tmp_path: Path) -> None:
    """A process killed while holding 600 s leases: the next open puts its events back at once."""
    Spool.open(tmp_path).commit_chunk("shop", make_events(20), None)
    done = subprocess.run(
        [sys.executable, "-c", LEASE_AND_EXIT, str(tmp_path), "8", "kill"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "8", done.stderr
    spool = Spool.open(tmp_path)
    try:
        assert spool.stats("shop").leased == 0
        assert len(spool.lease("shop", 100, 60)) == 20
    finally:
        spool.close()


def test_leases_of_a_live_process_are_left_alone(tmp_path: Path) -> None:
    """Another running process's unexpired leases survive our open and recover_leases."""
    Spool.open(tmp_path).commit_chunk("shop", make_events(20), None)
    child = subprocess.Popen(
        [sys.executable, "-c", LEASE_AND_EXIT, str(tmp_path), "8", "wait"],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "8"
        spool = Spool.open(tmp_path)
        assert spool.recover_leases() == 0
        assert spool.stats("shop").leased == 8
        assert len(spool.lease("shop", 100, 60)) == 12
    finally:
        child.kill()
        child.wait(10)
    # Gone now (and reaped): its leases come back without waiting 600 s.
    assert spool.recover_leases() == 8
    assert len(spool.lease("shop", 100, 60)) == 8
    spool.close()


def test_concurrent_leasing_never_hands_one_event_to_two_leasers(spool: Spool) -> None:
    """Eight threads lease and ack until empty: every event exactly once."""
    spool.commit_chunk("shop", make_events(1500), None)
    taken: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            while batch := spool.lease("shop", 7, 60):
                taken[n].extend(e.id for e in batch)
                spool.ack([e.id for e in batch])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    every = [i for ids in taken for i in ids]
    assert len(every) == 1500
    assert len(set(every)) == 1500
    assert sum(1 for ids in taken if ids) > 1  # they really competed
    assert spool.stats("shop") == SpoolStats(0, 0, None, 0, 0)
    assert spool.sites() == []


LEASE_ALL = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tirreno_shipper.spool import Spool
    spool = Spool.open(Path(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    ids = []
    while batch := spool.lease("shop", 5, 60):
        ids.extend(e.request_id for e in batch)
    spool.close()
    print(json.dumps(ids))
    """
)


def test_concurrent_leasing_across_processes(tmp_path: Path) -> None:
    """Two processes and this one lease from one file at once: no event is leased twice."""
    events = make_events(1200)
    spool = Spool.open(tmp_path)
    spool.commit_chunk("shop", events, None)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", LEASE_ALL, str(tmp_path)],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:  # both imported and opened the spool: start them together
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    mine: list[str] = []
    while batch := spool.lease("shop", 5, 60):
        mine.extend(e.request_id for e in batch)
    theirs = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    spool.close()
    every = mine + theirs[0] + theirs[1]
    assert sorted(every) == sorted(e.request_id for e in events)


# -- dead letters -----------------------------------------------------------------


def test_dead_letters_list_retry_and_purge(spool: Spool) -> None:
    """Dead-lettered events leave the queue with their reason; retry requeues; purge deletes."""
    spool.commit_chunk("shop", make_events(6), None)
    spool.commit_chunk("blog", make_events(2, "b"), None)
    shop = spool.lease("shop", 6, 60)
    spool.release([shop[0].id], 0.0)
    (first,) = spool.lease("shop", 6, 60)
    assert first.attempts == 1
    spool.dead_letter([first.id], "httpCode too long")
    spool.dead_letter([e.id for e in shop[1:3]], "permanent 400 from the sensor")
    spool.dead_letter([e.id for e in spool.lease("blog", 1, 60)], "bad")
    assert spool.stats("shop").depth == 3
    assert spool.stats("shop").dead_letters == 3
    letters = spool.dead_letters("shop")
    assert [d.reason for d in letters] == [
        "httpCode too long",
        *["permanent 400 from the sensor"] * 2,
    ]
    assert letters[0].request_id == first.request_id
    assert letters[0].fields == first.fields
    assert letters[0].attempts == 1
    assert letters[0].created == first.created
    assert letters[0].failed_at >= letters[0].created
    assert len(spool.dead_letters()) == 4
    assert len(spool.dead_letters(limit=2)) == 2
    assert spool.sites() == ["blog", "shop"]
    assert_totals_match_rows(spool)

    assert spool.retry_dead_letters("shop", [letters[0].id]) == 1
    requeued = [e for e in spool.lease("shop", 10, 60) if e.request_id == first.request_id]
    assert len(requeued) == 1 and requeued[0].attempts == 0
    assert requeued[0].fields == first.fields
    assert spool.stats("shop").dead_letters == 2
    assert_totals_match_rows(spool)

    assert spool.purge_dead_letters("shop", [letters[1].id]) == 1
    assert spool.purge_dead_letters("shop", []) == 0
    assert spool.retry_dead_letters(ids=[]) == 0
    assert spool.retry_dead_letters() == 2  # the last shop one and the blog one
    assert spool.dead_letters() == []
    assert spool.stats("blog").depth == 2
    assert spool.purge_dead_letters() == 0
    assert_totals_match_rows(spool)


def test_retrying_a_dead_letter_already_requeued_does_not_duplicate(spool: Spool) -> None:
    """A dead letter whose request id is queued again (re-read) is just removed from the list."""
    spool.commit_chunk("shop", make_events(1), None)
    spool.dead_letter([e.id for e in spool.lease("shop", 1, 60)], "bad")
    spool.commit_chunk("shop", make_events(1), None)
    assert spool.retry_dead_letters("shop") == 1
    assert spool.stats("shop").depth == 1
    assert spool.dead_letters() == []
    assert_totals_match_rows(spool)


def test_purge_by_site_leaves_other_sites(spool: Spool) -> None:
    """Purging one site's dead letters keeps the others'."""
    for site in ("shop", "blog"):
        spool.commit_chunk(site, make_events(2, site), None)
        spool.dead_letter([e.id for e in spool.lease(site, 2, 60)], "bad")
    assert spool.purge_dead_letters("shop") == 2
    assert [d.site for d in spool.dead_letters()] == ["blog", "blog"]


# -- caps and stats -----------------------------------------------------------------


def test_is_full_by_events_and_by_bytes(spool: Spool) -> None:
    """The cap is reached by either count or bytes; an unknown site is never full."""
    assert not spool.is_full("shop", 10, 10_000)
    spool.commit_chunk("shop", make_events(9), None)
    assert not spool.is_full("shop", 10, 10_000)
    spool.commit_chunk("shop", make_events(1, "z"), None)
    assert spool.is_full("shop", 10, 10_000)
    assert spool.is_full("shop", 1000, spool.stats("shop").bytes)
    assert not spool.is_full("shop", 1000, spool.stats("shop").bytes + 1)
    assert not spool.is_full("blog", 1, 1)


def test_make_room_drops_the_oldest_unleased_of_that_site_only(spool: Spool) -> None:
    """make_room deletes the oldest events that no sender holds, and says how many."""
    spool.commit_chunk("shop", make_events(3, "old"), None)
    spool.commit_chunk("shop", make_events(3, "new"), None)
    spool.commit_chunk("blog", make_events(3, "b"), None)
    held = spool.lease("shop", 1, 60)  # the very oldest, in flight
    assert spool.make_room("shop", 3, 10**9) == 3
    left = {e.request_id for e in spool.lease("shop", 10, 60)}
    assert left == {e.request_id for e in make_events(3, "new")[1:]}
    assert spool.stats("shop").depth == 3  # the held one and two new
    assert spool.make_room("shop", 3, 10**9) == 0
    spool.ack([e.id for e in held])
    assert spool.stats("blog").depth == 3
    assert_totals_match_rows(spool)


def test_stats_depth_bytes_oldest_and_leases(spool: Spool) -> None:
    """Stats report depth, bytes, the oldest creation time, live leases and dead letters."""
    assert spool.stats("shop") == SpoolStats(0, 0, None, 0, 0)
    before = time.time()
    spool.commit_chunk("shop", make_events(3, "a"), None)
    time.sleep(0.05)
    middle = time.time()
    spool.commit_chunk("shop", make_events(2, "b"), None)
    stats = spool.stats("shop")
    assert stats.depth == 5
    assert stats.oldest_created is not None
    assert before <= stats.oldest_created <= middle
    leased = spool.lease("shop", 3, 60)
    spool.ack([leased[0].id])
    spool.dead_letter([leased[1].id], "bad")
    stats = spool.stats("shop")
    assert (stats.depth, stats.leased, stats.dead_letters) == (3, 1, 1)
    spool.ack([leased[2].id])
    stats = spool.stats("shop")
    assert stats.oldest_created is not None and stats.oldest_created >= middle
    with raw(spool) as conn:
        assert stats.bytes == conn.execute("SELECT sum(size) FROM events").fetchone()[0]


def test_counters_match_the_rows_after_random_operations(spool: Spool) -> None:
    """After a random mix of every write, per-site depth and bytes equal the rows' own."""
    rng = random.Random(1234)
    n = 0
    for _ in range(300):
        site = rng.choice(["shop", "blog"])
        op = rng.randrange(7)
        if op <= 1:
            count = rng.randrange(1, 20)
            # Some overlap with earlier ids, as a re-read would.
            start = max(0, n - rng.randrange(0, 5))
            spool.commit_chunk(site, make_events(count, site, start), checkpoint(start))
            n = start + count
        elif op == 2:
            spool.ack([e.id for e in spool.lease(site, rng.randrange(1, 6), 60)])
        elif op == 3:
            spool.release([e.id for e in spool.lease(site, 3, 60)], 0.0)
        elif op == 4:
            spool.dead_letter([e.id for e in spool.lease(site, 2, 60)], "bad")
        elif op == 5:
            depth = spool.stats(site).depth
            spool.make_room(site, max(0, depth - rng.randrange(0, 4)), 10**9)
        else:
            spool.retry_dead_letters(site)
    assert_totals_match_rows(spool)


def test_lease_reads_the_index_in_order_without_sorting(spool: Spool) -> None:
    """The lease's UPDATE ... RETURNING walks the (site, not_before, id) index: no full
    scan, no temp sort."""
    with raw(spool) as conn:
        plan = " ".join(
            str(row[3])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN " + spool_module.LEASE_SQL,
                (time.time() + 60, "me", "shop", time.time(), 10, spool_module.LIVE),
            )
        )
    assert "events_ready" in plan
    assert "TEMP B-TREE" not in plan


@pytest.mark.slow
def test_lease_stays_fast_with_200k_queued(spool: Spool) -> None:
    """With 200k events queued, leasing and acking a batch takes milliseconds."""
    # Bulk-filled in SQL: 100 chunks through the API would take most of this test's time.
    now = time.time() - 1000
    with raw(spool) as conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 199989) "
            "INSERT INTO events (site, request_id, fields, size, created, not_before) "
            "SELECT 'shop', 'big-' || i, '{\"url\":\"/x\"}', 12, ? + i * 0.001, ? + i * 0.001 "
            "FROM n",
            (now, now),
        )
        conn.execute("INSERT INTO site_totals VALUES ('shop', 199990, 199990 * 12)")
    spool.commit_chunk("shop", make_events(10, "tail"), None)
    spool.commit_chunk("blog", make_events(10, "b"), None)
    assert_totals_match_rows(spool)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        batch = spool.lease("shop", 50, 60)
        spool.ack([e.id for e in batch])
        timings.append(time.perf_counter() - started)
        assert len(batch) == 50
    timings.sort()
    # A scan and sort of 200k rows costs well over 100 ms here; an index walk a few ms.
    assert timings[len(timings) // 2] < 0.05
    started = time.perf_counter()
    stats = spool.stats("shop")
    assert time.perf_counter() - started < 0.05
    assert stats.depth == 200_000 - 20 * 50


# -- other processes -------------------------------------------------------------------


READ_STATS = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from tirreno_shipper.spool import Spool
    spool = Spool.open(Path(sys.argv[1]))
    print("ready", flush=True)
    depths = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        depth = spool.stats("shop").depth
        depths.append(depth)
        if depth >= int(sys.argv[2]):
            break
        time.sleep(0.005)
    spool.close()
    print(json.dumps(depths), flush=True)
    """
)


def test_second_process_reads_stats_while_the_first_writes(tmp_path: Path) -> None:
    """A `status`-like process reads consistent, growing stats while the daemon commits chunks."""
    spool = Spool.open(tmp_path)
    chunks, size = 40, 100
    child = subprocess.Popen(
        [sys.executable, "-c", READ_STATS, str(tmp_path), str(chunks * size)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    for chunk in range(chunks):
        spool.commit_chunk("shop", make_events(size, "w", chunk * size), checkpoint(chunk))
        time.sleep(0.01)
    out, err = child.communicate(timeout=60)
    spool.close()
    assert child.returncode == 0, err
    depths = json.loads(out)
    assert depths[-1] == chunks * size
    assert depths == sorted(depths)
    # Whole chunks only: a reader never sees half a transaction.
    assert all(d % size == 0 for d in depths)
    assert len(set(depths)) > 2


def test_make_room_drops_the_oldest_until_both_caps_hold(spool: Spool) -> None:
    """By count and by bytes, oldest first, never a leased event."""
    spool.commit_chunk("shop", make_events(10), None)
    per_event = spool.stats("shop").bytes // 10
    leased = spool.lease("shop", 1, 60)  # the oldest: a sender holds it
    assert spool.make_room("shop", 8, 10**9) == 2
    assert spool.stats("shop").depth == 8
    assert spool.make_room("shop", 100, 3 * per_event + per_event // 2) == 5
    left = spool.lease("shop", 10, 60)
    events = make_events(10)
    assert [e.request_id for e in leased + left] == [
        events[0].request_id,  # held by a sender, so kept
        events[8].request_id,
        events[9].request_id,
    ]
    assert spool.make_room("shop", 0, 0) == 0  # all three are leased now


# -- lanes ------------------------------------------------------------------------------


def typed(n: int, tag: str, event_type: str) -> list[Event]:
    return [Event(e.request_id, {**e.fields, "eventType": event_type}) for e in make_events(n, tag)]


def test_lease_takes_the_highest_lane_first_then_the_next(spool: Spool) -> None:
    """Backfill queued first, then page views, then logins: logins go first, then page
    views, then backfill; a batch larger than a lane goes on into the next."""
    spool.commit_chunk("shop", typed(3, "old", "page_view"), None, backfill=True)
    spool.commit_chunk("shop", typed(3, "pv", "page_view"), None)
    spool.commit_chunk("shop", typed(2, "login", "account_login_fail"), None)
    first = spool.lease("shop", 3, 60)
    assert [e.request_id for e in first] == [
        *(e.request_id for e in typed(2, "login", "x")),
        typed(1, "pv", "x")[0].request_id,
    ]
    assert [e.lane for e in first] == [spool_module.SECURITY] * 2 + [spool_module.LIVE]
    rest = spool.lease("shop", 10, 60)
    assert [e.lane for e in rest] == [spool_module.LIVE] * 2 + [spool_module.BACKFILL] * 3
    assert [s.depth for s in spool.lane_stats("shop")] == [2, 3, 3]


def test_lease_in_the_order_of_the_lanes_asked_for(spool: Spool) -> None:
    """A sender giving backfill its share asks for the backfill lane first."""
    spool.commit_chunk("shop", typed(2, "old", "page_view"), None, backfill=True)
    spool.commit_chunk("shop", typed(2, "pv", "page_view"), None)
    order = (spool_module.BACKFILL, spool_module.SECURITY, spool_module.LIVE)
    assert [e.lane for e in spool.lease("shop", 1, 60, order)] == [spool_module.BACKFILL]
    assert [e.lane for e in spool.lease("shop", 1, 60)] == [spool_module.LIVE]


def test_lane_stats_depth_and_oldest_per_lane(tmp_path: Path) -> None:
    """Per lane: depth (leased included) and the oldest creation time."""
    clock = FakeClock()
    with Spool.open(tmp_path, clock=clock) as spool:
        spool.commit_chunk("shop", typed(4, "old", "page_view"), None, backfill=True)
        clock.advance(10)
        spool.commit_chunk("shop", typed(1, "login", "account_login"), None)
        spool.lease("shop", 1, 60)
        assert spool.lane_stats("shop") == [
            LaneStats("security", 1, clock.time()),
            LaneStats("live", 0, None),
            LaneStats("backfill", 4, clock.time() - 10),
        ]
        assert spool.lane_stats("blog") == [LaneStats(name, 0, None) for name in spool_module.LANES]


def test_purge_removes_queued_events_of_a_lane_never_leased_ones_or_checkpoints(
    tmp_path: Path,
) -> None:
    """purge by lane and age: leased events, other sites, checkpoints, dead letters stay."""
    clock = FakeClock()
    with Spool.open(tmp_path, clock=clock) as spool:
        spool.commit_chunk("shop", typed(5, "old", "page_view"), checkpoint(10), backfill=True)
        clock.advance(100)
        spool.commit_chunk("shop", typed(3, "new", "page_view"), None, backfill=True)
        spool.commit_chunk("shop", typed(2, "pv", "page_view"), None)
        spool.commit_chunk("blog", typed(2, "b", "page_view"), None, backfill=True)
        (held,) = spool.lease("shop", 1, 60, (spool_module.BACKFILL,))
        spool.dead_letter([held.id], "bad")
        (held,) = spool.lease("shop", 1, 60, (spool_module.BACKFILL,))
        before = clock.time() - 50
        removed = spool.purge("shop", lanes=(spool_module.BACKFILL,), before=before)
        assert removed == {"backfill": 3}  # 5 old: one dead-lettered, one leased
        assert [s.depth for s in spool.lane_stats("shop")] == [0, 2, 4]
        assert spool.purge("shop", lanes=(spool_module.BACKFILL,)) == {"backfill": 3}
        assert spool.purge("shop") == {"security": 0, "live": 2, "backfill": 0}
        assert spool.stats("shop").depth == 1 and spool.stats("shop").leased == 1
        assert spool.stats("shop").dead_letters == 1
        assert spool.get_checkpoints("shop") == [checkpoint(10)]
        assert spool.stats("blog").depth == 2
        spool.ack([held.id])
        assert_totals_match_rows(spool)


def test_version_2_spool_is_migrated_into_lanes_in_place(tmp_path: Path) -> None:
    """A spool of schema 2 (no lanes) with queued, leased and dead events opens as lanes:
    its account_* events in the security lane, the rest live; leases kept."""
    clock = FakeClock()
    db = tmp_path / "spool.sqlite"
    with Spool(db, clock=clock) as spool:
        spool.commit_chunk("shop", typed(2, "pv", "page_view"), checkpoint(5))
        spool.commit_chunk("shop", typed(2, "login", "account_login_fail"), None)
        (held,) = spool.lease("shop", 1, 60, (spool_module.LIVE,))
    with raw(spool) as conn:  # back to schema 2, as an older release left it
        conn.execute("DROP INDEX events_ready")
        conn.execute("ALTER TABLE events DROP COLUMN lane")
        conn.execute("CREATE INDEX events_ready ON events (site, not_before)")
        conn.execute("PRAGMA user_version = 2")
    with Spool(db, clock=clock) as spool:
        assert [s.depth for s in spool.lane_stats("shop")] == [2, 2, 0]
        assert spool.stats("shop").leased == 1
        got = spool.lease("shop", 10, 60)
        assert [e.lane for e in got] == [spool_module.SECURITY] * 2 + [spool_module.LIVE]
        assert held.id not in {e.id for e in got}
        assert spool.get_checkpoints("shop") == [checkpoint(5)]
        assert_totals_match_rows(spool)
