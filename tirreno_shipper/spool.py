"""The SQLite spool: events between the tail and the sender, file checkpoints, dead letters.

One transaction writes the events parsed from a chunk of a file **and** that
file's new checkpoint, so a crash leaves both or neither: reading is
exactly-once. A sender leases events atomically (one ``BEGIN IMMEDIATE``, as
litequeue does), deletes them by id once the sensor answered 204, and leases
that outlive their holder are put back: delivery is at-least-once.

Concurrency: one ``Spool`` object is shared by the tail thread, the sender
threads and the metrics thread of a process; each thread gets its own sqlite3
connection (a connection is not safe to share mid-transaction). Other
processes (``status``, ``dead-letters``) may open the same file at the same
time: WAL lets them read while the daemon writes, and ``BEGIN IMMEDIATE`` plus
a busy timeout serialises writers.

Durability: ``synchronous=NORMAL`` in WAL mode. A commit is in the WAL (the OS
page cache) before ``COMMIT`` returns, so a process killed with SIGKILL loses
nothing. A power loss may lose the last few transactions, but only a suffix of
them, never part of one and never with corruption. Since events and their
checkpoint share a transaction, a lost suffix rolls both back together and the
tail reads those lines again: the exactly-once invariant holds; what it can
cost is a resend of events already delivered (the same ``X-Request-Id``),
which at-least-once delivery allows anyway. ``FULL`` would add an fsync to
every chunk for no gain in that invariant.

Event contents (user names, emails) are never logged here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar, cast

import structlog

from tirreno_shipper import reserve
from tirreno_shipper.clock import SYSTEM, Clock
from tirreno_shipper.errors import SpoolCorruptError, SpoolError
from tirreno_shipper.records import Checkpoint, Event, FileId, LeasedEvent
from tirreno_shipper.state import SPOOL_FILE

__all__ = [
    "BACKFILL",
    "LANES",
    "LIVE",
    "SCHEMA_VERSION",
    "SECURITY",
    "DeadLetter",
    "LaneStats",
    "Spool",
    "SpoolStats",
    "drain_seconds",
    "lane_of",
]

log = structlog.get_logger(__name__)

BUSY_TIMEOUT: Final = 10.0

# The lanes, highest priority first: live security events (account_*: logins,
# password changes, the events fraud analysis needs within minutes), other live
# events, then events spooled by `backfill`. A lane's number is its index.
SECURITY: Final = 0
LIVE: Final = 1
BACKFILL: Final = 2
LANES: Final = ("security", "live", "backfill")
_SECURITY_PREFIX: Final = "account_"
# lane_of() in SQL, for a live event's JSON text in ``fields``.
_LIVE_LANE_SQL: Final = (
    "(CASE WHEN json_extract(fields, '$.eventType') LIKE 'account!_%' ESCAPE '!' THEN 0 ELSE 1 END)"
)


def drain_seconds(depths: Sequence[int], rate: float) -> list[float | None]:
    """Per lane, seconds until it is empty at ``rate`` events/s: the lanes before it go
    first, so a lane drains after all of them (None: nothing is being sent)."""
    if rate <= 0:
        return [None if d else 0.0 for d in depths]
    out: list[float | None] = []
    ahead = 0
    for depth in depths:
        ahead += depth
        out.append(round(ahead / rate, 1) if depth else 0.0)
    return out


def lane_of(fields: Mapping[str, str], *, backfill: bool = False) -> int:
    """The lane of an event with ``fields``, spooled by the tail or by ``backfill``."""
    if backfill:
        return BACKFILL
    return SECURITY if fields.get("eventType", "").startswith(_SECURITY_PREFIX) else LIVE


# Step N brings user_version N-1 to N. Never edit a released step: append one.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the queue, the checkpoints and the dead letters.
    (
        # AUTOINCREMENT: an id is never reused, so a late ack or release from a
        # sender whose lease expired can never touch a newer event.
        # not_before: when the row may be leased next. Fresh rows get their
        # creation time; a lease pushes it to the lease's end (so an expired
        # lease is available again with no sweep); a release to now + delay.
        # leased_until: set while leased (NULL otherwise), for stats and recovery.
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            site TEXT NOT NULL,
            -- Not UNIQUE: reading is exactly-once through the checkpoint that
            -- commits with the events, and a unique index on random UUIDs made
            -- every insert into a deep queue 2.5x dearer (a page per row).
            request_id TEXT NOT NULL,
            fields TEXT NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL,
            not_before REAL NOT NULL,
            leased_until REAL,
            leased_by TEXT,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
        # (site, not_before) entries end with the rowid: (site, not_before, id)
        # order, so lease() reads exactly `limit` index entries and never sorts.
        "CREATE INDEX events_ready ON events (site, not_before)",
        "CREATE INDEX events_age ON events (site, created)",
        # Only leased rows are in it: free for the insert path, tiny to scan.
        "CREATE INDEX events_leased ON events (leased_until, site) WHERE leased_until IS NOT NULL",
        """CREATE TABLE checkpoints (
            site TEXT NOT NULL,
            dev INTEGER NOT NULL,
            ino INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            path TEXT NOT NULL,
            byte_offset INTEGER NOT NULL CHECK (byte_offset >= 0),
            updated REAL NOT NULL,
            PRIMARY KEY (site, dev, ino, fingerprint)
        ) WITHOUT ROWID""",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            site TEXT NOT NULL,
            request_id TEXT NOT NULL,
            fields TEXT NOT NULL,
            reason TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            created REAL NOT NULL,
            failed_at REAL NOT NULL
        )""",
        "CREATE INDEX dead_letters_site ON dead_letters (site, id)",
    ),
    # 2: per-site counters, so the cap check before every chunk is one row read
    # instead of a scan of up to max_events rows. Kept by this module's code, not
    # by triggers: a trigger per inserted row doubled the cost of commit_chunk.
    (
        """CREATE TABLE site_totals (
            site TEXT PRIMARY KEY,
            events INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """INSERT INTO site_totals (site, events, bytes)
            SELECT site, count(*), sum(size) FROM events GROUP BY site""",
    ),
    # 3: lanes. Each event has a priority (SECURITY, LIVE, BACKFILL below) and a
    # sender leases from the highest lane with ready events. Rows queued before
    # are live; the account_* ones among them go to the security lane.
    (
        "ALTER TABLE events ADD COLUMN lane INTEGER NOT NULL DEFAULT 1",
        """UPDATE events SET lane = 0
            WHERE json_extract(fields, '$.eventType') LIKE 'account!_%' ESCAPE '!'
        """,
        "DROP INDEX events_ready",
        # (site, lane, not_before) entries end with the rowid: a lease of one lane
        # reads exactly `limit` index entries, in order, and never sorts.
        "CREATE INDEX events_ready ON events (site, lane, not_before)",
    ),
)
SCHEMA_VERSION: Final[int] = len(_MIGRATIONS)

# sqlite3 primary result codes (the low byte of an extended code).
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_CORRUPT_CODES: Final = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})

_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
# Page cache per connection: SQLite's own default. Inserts append to the table and its
# two indexes and the sender reads their other end, so a few hot pages are all that is
# reused; 8 MiB cost a backfill 6 MB of peak memory for no speed measured.
_CACHE_KIB: Final = 2048

# ensure_ascii: the stored text is pure ASCII, so its length is its byte size
# and the per-row size for the byte cap costs no encode().
_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


def _no_default(value: object) -> object:
    raise TypeError(f"event field of type {type(value).__name__} is not JSON text")


# JSONEncoder.encode builds a C encoder on every call; building it once saves
# about a third of the encoding time, which is most of commit_chunk's Python work.
_C_ENCODER: Final = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _no_default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)
_I64: Final = 1 << 63

_umask_lock = threading.Lock()

# make_room's filter for spool.on_overload: shed_page_views.
_PAGE_VIEW: Final = " AND json_extract(fields, '$.eventType') = 'page_view'"
# The rows `purge` may remove: a lane's queued events (older than a time), not leased.
_PURGEABLE: Final = (
    "site = ? AND lane = ? AND created < ? AND (leased_until IS NULL OR leased_until <= ?)"
)

# Picks the oldest ready rows of a site (the events_ready index, in order, so no
# sort) and claims them in the same statement.
LEASE_SQL: Final = (
    "UPDATE events SET leased_until = ?1, not_before = ?1, leased_by = ?2 "
    "WHERE id IN (SELECT id FROM events WHERE site = ?3 AND lane = ?6 AND not_before <= ?4 "
    "ORDER BY not_before, id LIMIT ?5) "
    "RETURNING id, request_id, fields, attempts, created"
)


@dataclass(slots=True, frozen=True)
class SpoolStats:
    """One site's queue: rows waiting (leased ones included), their JSON bytes, and so on."""

    depth: int
    bytes: int
    oldest_created: float | None
    leased: int
    dead_letters: int


@dataclass(slots=True, frozen=True)
class LaneStats:
    """One lane of a site's queue: events waiting (leased ones included), the oldest's age."""

    lane: str
    depth: int
    oldest_created: float | None


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """An event the sender gave up on, with the reason; ``retry`` puts it back in the queue."""

    id: int
    site: str
    request_id: str
    fields: Mapping[str, str]
    reason: str
    attempts: int
    created: float
    failed_at: float


def _to_i64(value: int) -> int:
    # st_ino (and st_dev) are unsigned 64-bit; SQLite integers are signed.
    return value - (1 << 64) if value >= _I64 else value


def _from_i64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def _encode_fields(fields: Mapping[str, str]) -> str:
    plain = fields if type(fields) is dict else dict(fields)
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(plain, 0))
    return _ENCODER.encode(plain)


def _decode_fields(text: object) -> dict[str, str]:
    """A row's fields; ValueError says why a row (edited by hand, damaged) cannot be sent."""
    if not isinstance(text, str | bytes):
        raise ValueError(f"fields are {type(text).__name__}, not JSON text")
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"fields are not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"fields are a JSON {type(fields).__name__}, not an object")
    if not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("a field's value is not a string")
    return cast(dict[str, str], fields)


def _fields_or_none(text: object) -> dict[str, str]:
    """A dead letter's fields, or none when they cannot be read (the reason says why)."""
    try:
        return _decode_fields(text)
    except ValueError:
        return {}


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name is in parentheses and may itself hold ") "; fields after it
    # start at "state" (field 3), so starttime (field 22) is the 20th.
    rest = stat[stat.rfind(b")") + 2 :].split()
    if rest[:1] == [b"Z"]:
        return None  # a zombie: dead, only not reaped yet
    return rest[19].decode() if len(rest) > 19 else ""


def _owner_token() -> str:
    """This process in leases: pid and start time, so a reused pid is not taken for it."""
    pid = os.getpid()
    return f"{pid}:{_proc_start_time(pid) or ''}"


def _owner_alive(token: str) -> bool:
    """Whether the process that took a lease still runs (unknown counts as alive)."""
    pid_text, _, started = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid <= 0:
        return True
    current = _proc_start_time(pid)
    if current is None:
        # No /proc entry: gone on Linux; elsewhere ask the kernel.
        if os.path.isdir("/proc/self"):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    return not started or not current or current == started


def _ids_json(ids: Sequence[int]) -> str:
    # One statement for any number of ids, through json_each, instead of a
    # statement per id or a variable-length IN list.
    return json.dumps([int(i) for i in ids])


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _disk_full(exc: BaseException) -> bool:
    cause = exc.__cause__
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(cause)
    return False


def _delivery(method: Callable[Concatenate[Spool, _P], _T]) -> Callable[Concatenate[Spool, _P], _T]:
    """A sender's write (lease, ack, release, dead letter): on a full disk it is given the
    room of the spool's reserve (and of a truncated WAL) and tried once more, so that
    deliveries, which free room, go on while the disk is full."""

    @wraps(method)
    def write(self: Spool, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except SpoolError as exc:
            if not _disk_full(exc) or not self._room_for_delivery():
                raise
        return method(self, *args, **kwargs)

    return write


class Spool:
    """The spool file ``path``; see the module docstring. Safe to share between threads."""

    def __init__(self, path: Path, *, clock: Clock = SYSTEM) -> None:
        self.path = Path(path)
        # Its time() stamps rows and runs leases and retry delays (tests move it).
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        self._owner = _owner_token()
        self._prepare_files()
        # Room for deliveries on a full disk, set aside by the first write of events
        # (see `_room_for_events`), not by readers such as ``status``; the WAL's
        # checkpoint limit is sized so that the reserve always covers a checkpoint.
        size, self._wal_pages = reserve.plan(self.path.parent)
        self._reserve = reserve.DiskReserve(self.path.with_name(self.path.name + "-reserve"), size)
        self._reserve_tried = False
        try:
            self._open_checked()
            self.recover_leases()
        except BaseException:
            self._close_all()
            raise

    @classmethod
    def open(cls, state_dir: Path, *, clock: Clock = SYSTEM) -> Spool:
        """The spool in ``state_dir`` (``spool.sqlite``), creating the directory 0700 if missing."""
        return cls(Path(state_dir) / SPOOL_FILE, clock=clock)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening -------------------------------------------------------------

    def _prepare_files(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            try:
                directory.mkdir(mode=0o700, parents=True)
                os.chmod(directory, 0o700)
            except FileExistsError:
                if not directory.is_dir():
                    raise SpoolError(
                        f"cannot use state_dir {directory}: it exists and is not a directory"
                    ) from None
            except OSError as exc:
                raise SpoolError(
                    f"cannot create state_dir {directory}: {exc.strerror or exc}"
                ) from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            # SQLite must create the -wal and -shm files beside the database.
            raise SpoolError(f"state_dir {directory} is not writable by this user")
        try:
            # O_CREAT with 0600 gives the file its mode whatever the umask; SQLite
            # then gives the -wal and -shm files the database file's mode.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc.strerror or exc}") from exc
        self._tighten_modes()

    def _tighten_modes(self) -> None:
        for name in (self.path, self._sidecar("-wal"), self._sidecar("-shm")):
            try:
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, 0o600)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Another user's file (e.g. `status` run as root): not ours to change.
                log.warning("spool_chmod_failed", path=str(name), error=exc.strerror)

    def _sidecar(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _open_checked(self) -> None:
        try:
            with _umask_lock:
                # Belt and braces for the -wal/-shm files SQLite creates now.
                old = os.umask(0o077)
                try:
                    conn = self._conn()
                    conn.execute("PRAGMA journal_mode=WAL").fetchone()
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    os.umask(old)
            self._tighten_modes()
            self._migrate(conn)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise _Corrupt("; ".join(str(p) for p in problems))
        except _Corrupt as exc:
            self._move_aside(str(exc))
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                self._move_aside(str(exc))
            raise self._translate_error(exc) from exc

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"spool {self.path} has schema version {version}, newer than the {SCHEMA_VERSION} "
                "this tirreno-shipper knows: it was written by a newer release; upgrade, or move "
                "the file aside to start an empty spool"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have just migrated.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            start = version
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
                version += 1
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if start == 0:
            log.info("spool_created", path=str(self.path), schema_version=version)
        elif version != start:
            log.info("spool_migrated", path=str(self.path), from_version=start, to_version=version)

    def _move_aside(self, detail: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        # Renamed before our connections close: the last close of a WAL database
        # unlinks the -wal by name, so closing first would delete it. After the
        # rename that unlink finds the name gone and the moved -wal stays.
        try:
            for suffix in ("-wal", "-shm"):
                side = self._sidecar(suffix)
                if side.exists():
                    os.replace(side, target.with_name(target.name + suffix))
            os.replace(self.path, target)
        except OSError as exc:
            self._close_all()
            raise SpoolError(
                f"spool {self.path} is corrupt ({detail}) and could not be moved aside to "
                f"{target}: {exc.strerror or exc}"
            ) from exc
        self._close_all()
        log.error("spool_corrupt_moved_aside", path=str(self.path), moved_to=str(target))
        raise SpoolCorruptError(
            f"spool {self.path} is corrupt ({detail}); it was moved aside to {target}, and "
            "opening again starts an empty spool (read positions are lost)",
            str(target),
        )

    # -- connections ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool {self.path} is closed")
            self._close_dead_threads()
            # sqlite3 errors propagate raw: every caller is inside _errors(), and
            # the opening code must see them untranslated to spot corruption.
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                # Each connection is used by one thread only; close() closes
                # them all from the closing thread, which this permits.
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages:d}")
                conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT:d}")
                conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB:d}")
            except BaseException:
                conn.close()
                raise
            self._conns.append((threading.current_thread(), conn))
        self._local.conn = conn
        return conn

    def _close_dead_threads(self) -> None:
        # A thread that ended without close() would otherwise leak its connection.
        alive = []
        for thread, conn in self._conns:
            if thread.is_alive():
                alive.append((thread, conn))
            else:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._conns = alive

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._local = threading.local()
        for _, conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Close every thread's connection; later calls raise SpoolError. Idempotent."""
        with self._lock:
            self._closed = True
        self._close_all()

    # -- error boundary ------------------------------------------------------

    def _translate_error(self, exc: sqlite3.Error) -> SpoolError:
        if _is_corruption(exc):
            return SpoolCorruptError(
                f"spool {self.path} is corrupt ({exc}); stop the daemon: the next start moves it "
                "aside",
                None,
            )
        if isinstance(exc, sqlite3.ProgrammingError) and self._closed:
            return SpoolError(f"spool {self.path} is closed")
        return SpoolError(f"spool {self.path}: {exc}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate_error(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken up front, so two writers
        never both read and then fail to upgrade (SQLITE_BUSY without waiting)."""
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one snapshot."""
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("COMMIT")

    @staticmethod
    def _add_totals(conn: sqlite3.Connection, totals: Mapping[str, tuple[int, int]]) -> None:
        conn.executemany(
            "INSERT INTO site_totals (site, events, bytes) VALUES (?, ?, ?) "
            "ON CONFLICT (site) DO UPDATE SET events = events + excluded.events, "
            "bytes = bytes + excluded.bytes",
            [(site, n, b) for site, (n, b) in totals.items() if n or b],
        )

    def _delete_events(self, conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> int:
        """Delete events matching ``where`` and keep the per-site totals right."""
        removed: dict[str, tuple[int, int]] = {}
        count = 0
        for site, size in conn.execute(
            f"DELETE FROM events WHERE {where} RETURNING site, size", params
        ):
            n, b = removed.get(site, (0, 0))
            removed[site] = (n - 1, b - size)
            count += 1
        self._add_totals(conn, removed)
        return count

    # -- the tail's side -----------------------------------------------------

    def commit_chunk(
        self,
        site: str,
        events: Sequence[Event],
        checkpoint: Checkpoint | None,
        *,
        backfill: bool = False,
    ) -> int:
        """Spool ``events`` and move ``checkpoint`` in one transaction; rows inserted.

        Request ids are not deduplicated here: the checkpoint in the same
        transaction is what keeps a line from being spooled twice, and a
        repeated backfill is recognisable downstream by its unchanged ids.
        """
        if not events and checkpoint is None:
            return 0
        self._room_for_events()
        now = self._clock.time()
        rows = []
        total = 0
        for event in events:
            text = _encode_fields(event.fields)
            total += len(text)
            lane = lane_of(event.fields, backfill=backfill)
            rows.append((site, event.request_id, text, len(text), now, now, lane))
        with self._write() as conn:
            inserted = 0
            if rows:
                conn.executemany(
                    "INSERT INTO events (site, request_id, fields, size, created, "
                    "not_before, lane) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                inserted = len(rows)
                self._add_totals(conn, {site: (inserted, total)})
            if checkpoint is not None:
                self._upsert_checkpoint(conn, site, checkpoint, now)
        return inserted

    @staticmethod
    def _upsert_checkpoint(
        conn: sqlite3.Connection, site: str, checkpoint: Checkpoint, now: float
    ) -> None:
        f = checkpoint.file
        conn.execute(
            "INSERT INTO checkpoints (site, dev, ino, fingerprint, path, byte_offset, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, dev, ino, fingerprint) DO UPDATE "
            "SET path = excluded.path, byte_offset = excluded.byte_offset, "
            "updated = excluded.updated",
            (site, _to_i64(f.dev), _to_i64(f.ino), f.fingerprint, checkpoint.path,
             checkpoint.offset, now),
        )  # fmt: skip

    def get_checkpoints(self, site: str) -> list[Checkpoint]:
        """The site's file checkpoints, least recently moved first."""
        with self._errors():
            rows = (
                self._conn()
                .execute(
                    "SELECT path, dev, ino, fingerprint, byte_offset FROM checkpoints "
                    "WHERE site = ? ORDER BY updated, path",
                    (site,),
                )
                .fetchall()
            )
        return [
            Checkpoint(path, FileId(_from_i64(dev), _from_i64(ino), fp), offset)
            for path, dev, ino, fp, offset in rows
        ]

    def delete_checkpoints(self, site: str, files: Sequence[FileId]) -> None:
        """Forget the checkpoints of files that are gone for good."""
        if not files:
            return
        with self._write() as conn:
            conn.executemany(
                "DELETE FROM checkpoints "
                "WHERE site = ? AND dev = ? AND ino = ? AND fingerprint = ?",
                [(site, _to_i64(f.dev), _to_i64(f.ino), f.fingerprint) for f in files],
            )

    # -- room on a full disk -------------------------------------------------

    def _room_for_delivery(self) -> bool:
        """After a sender's write met a full disk: free what can be freed for it (the
        reserve, the WAL beyond its last checkpoint); False if nothing was."""
        released = self._reserve.release()
        return self._truncate_wal() or released

    def _truncate_wal(self) -> bool:
        """Checkpoint and truncate the WAL: the room its file held goes back to the disk."""
        try:
            busy, _, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return not busy

    def _room_for_events(self) -> None:
        """The tail's inserts wait while the reserve is given away to deliveries: the room
        acknowledged deliveries free is theirs first. Raises `SpoolError` until it is back
        (or the spool has that much unused room inside its own file)."""
        if not self._reserve_tried:
            self._reserve_tried = True
            self._reserve.hold()
            return
        if not self._reserve.released:
            return
        if self._free_bytes() >= 2 * self._reserve.size:
            # New rows reuse the spool file's own free pages: the room on the disk is
            # left to their WAL (a sender that meets a full disk again truncates it).
            return
        self._truncate_wal()
        if self._reserve.hold():
            return
        raise SpoolError(
            f"spool {self.path}: the disk is full; new events wait until deliveries free room"
        )

    def _free_bytes(self) -> int:
        """Room inside the spool file that new rows reuse without growing it."""
        try:
            conn = self._conn()
            pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error:
            return 0
        return int(pages) * int(size)

    # -- the sender's side ---------------------------------------------------

    @_delivery
    def lease(
        self,
        site: str,
        limit: int,
        lease_seconds: float,
        lanes: Sequence[int] = (SECURITY, LIVE, BACKFILL),
    ) -> list[LeasedEvent]:
        """Take up to ``limit`` ready events for ``lease_seconds``: from the first of
        ``lanes`` with ready events (then the next, while the batch has room), and in a
        lane the oldest, in id order.

        Ready: not leased (or the lease expired) and past ``not_before``. "Oldest"
        is the time a row became ready: its creation, or the end of its retry
        delay; that order is the lease index's own, so no sort is needed. One
        ``UPDATE ... RETURNING`` per lane picks and claims them (as litequeue
        does), all in one transaction.
        """
        if limit <= 0:
            return []
        now = self._clock.time()
        until = now + lease_seconds
        leased: list[LeasedEvent] = []
        with self._write() as conn:
            for lane in lanes:
                rows = conn.execute(
                    LEASE_SQL, (until, self._owner, site, now, limit - len(leased), lane)
                ).fetchall()
                # RETURNING's order is SQLite's to choose.
                for id_, rid, fields, attempts, created in sorted(rows):
                    try:
                        decoded = _decode_fields(fields)
                    except ValueError as exc:
                        # One damaged row must not hold back the rest of its batch (or
                        # fail every lease after it): it goes to dead letters, with why.
                        self._to_dead_letters(conn, [id_], f"undecodable spool row: {exc}", now)
                        log.error("spool_row_undecodable", site=site, id=id_, error=str(exc))
                        continue
                    leased.append(LeasedEvent(id_, site, rid, decoded, attempts, created, lane))
                if len(leased) >= limit:
                    break
        return leased

    @_delivery
    def ack(self, ids: Sequence[int]) -> None:
        """Delete delivered events. Unknown ids are ignored: ack is idempotent."""
        if not ids:
            return
        with self._write() as conn:
            self._delete_events(conn, "id IN (SELECT value FROM json_each(?))", (_ids_json(ids),))

    @_delivery
    def release(self, ids: Sequence[int], delay: float, count_attempt: bool = True) -> None:
        """Put leased events back, ready again in ``delay`` seconds."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                "UPDATE events SET leased_until = NULL, leased_by = NULL, not_before = ?, "
                "attempts = attempts + ? WHERE id IN (SELECT value FROM json_each(?))",
                (self._clock.time() + max(0.0, delay), 1 if count_attempt else 0, _ids_json(ids)),
            )

    @_delivery
    def dead_letter(self, ids: Sequence[int], reason: str, *, attempted: bool = False) -> None:
        """Move events out of the queue into dead letters, with the reason.

        ``attempted``: they were just sent and failed, an attempt the row's count
        does not hold yet (it counts released attempts only).
        """
        if not ids:
            return
        with self._write() as conn:
            self._to_dead_letters(conn, ids, reason, self._clock.time(), attempted=attempted)

    def _to_dead_letters(
        self,
        conn: sqlite3.Connection,
        ids: Sequence[int],
        reason: str,
        now: float,
        *,
        attempted: bool = False,
    ) -> None:
        payload = _ids_json(ids)
        conn.execute(
            "INSERT INTO dead_letters (site, request_id, fields, reason, attempts, created, "
            "failed_at) SELECT site, request_id, fields, ?, attempts + ?, created, ? "
            "FROM events WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (reason, int(attempted), now, payload),
        )
        self._delete_events(conn, "id IN (SELECT value FROM json_each(?))", (payload,))

    def recover_leases(self) -> int:
        """Put back leases that expired or whose process is gone; how many.

        Expired leases are leasable anyway (see ``lease``); this clears them for
        the stats. A lease held by a process that no longer runs (killed, then
        restarted) comes back at once instead of after its timeout; a lease of a
        live process, including another one sharing the file, is left alone.
        """
        now = self._clock.time()
        with self._write() as conn:
            recovered = conn.execute(
                "UPDATE events SET leased_until = NULL, leased_by = NULL WHERE leased_until <= ?",
                (now,),
            ).rowcount
            owners = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT leased_by FROM events WHERE leased_until > ?", (now,)
                )
            ]
            for owner in owners:
                if owner is None or owner == self._owner or _owner_alive(owner):
                    continue
                recovered += conn.execute(
                    "UPDATE events SET leased_until = NULL, leased_by = NULL, not_before = ? "
                    "WHERE leased_until > ? AND leased_by = ?",
                    (now, now, owner),
                ).rowcount
        if recovered:
            log.info("spool_leases_recovered", path=str(self.path), count=recovered)
        return recovered

    # -- caps and stats ------------------------------------------------------

    def stats(self, site: str) -> SpoolStats:
        """Depth (leased rows included), bytes, oldest creation time, leases, dead letters."""
        now = self._clock.time()
        with self._read() as conn:
            totals = conn.execute(
                "SELECT events, bytes FROM site_totals WHERE site = ?", (site,)
            ).fetchone()
            oldest = conn.execute(
                "SELECT min(created) FROM events WHERE site = ?", (site,)
            ).fetchone()[0]
            leased = conn.execute(
                "SELECT count(*) FROM events INDEXED BY events_leased "
                "WHERE leased_until > ? AND site = ?",
                (now, site),
            ).fetchone()[0]
            dead = conn.execute(
                "SELECT count(*) FROM dead_letters WHERE site = ?", (site,)
            ).fetchone()[0]
        depth, size = totals if totals else (0, 0)
        return SpoolStats(int(depth), int(size), oldest, int(leased), int(dead))

    def lane_stats(self, site: str) -> list[LaneStats]:
        """Each lane of the site's queue, highest priority first (empty ones too)."""
        with self._read() as conn:
            found = {
                lane: (int(n), oldest)
                for lane, n, oldest in conn.execute(
                    "SELECT lane, count(*), min(created) FROM events INDEXED BY events_ready "
                    "WHERE site = ? GROUP BY lane",
                    (site,),
                )
            }
        return [LaneStats(name, *found.get(lane, (0, None))) for lane, name in enumerate(LANES)]

    def purgeable(
        self,
        site: str,
        *,
        lanes: Sequence[int] = (SECURITY, LIVE, BACKFILL),
        before: float | None = None,
    ) -> dict[str, int]:
        """What `purge` with the same arguments would remove now, per lane name."""
        now = self._clock.time()
        with self._read() as conn:
            return {
                LANES[lane]: int(
                    conn.execute(
                        f"SELECT count(*) FROM events WHERE {_PURGEABLE}",
                        (site, lane, math.inf if before is None else before, now),
                    ).fetchone()[0]
                )
                for lane in lanes
            }

    def purge(
        self,
        site: str,
        *,
        lanes: Sequence[int] = (SECURITY, LIVE, BACKFILL),
        before: float | None = None,
    ) -> dict[str, int]:
        """Delete the site's queued events of ``lanes`` (created before ``before``, if
        given) that no sender holds; how many went, per lane name. Checkpoints and dead
        letters are not touched."""
        now = self._clock.time()
        counts: dict[str, int] = {}
        with self._write() as conn:
            for lane in lanes:
                counts[LANES[lane]] = self._delete_events(
                    conn,
                    _PURGEABLE,
                    (site, lane, math.inf if before is None else before, now),
                )
        if any(counts.values()):
            log.warning("spool_purged", site=site, **counts)
        return counts

    def sites(self) -> list[str]:
        """Every site with events, checkpoints or dead letters in this spool."""
        with self._errors():
            rows = (
                self._conn()
                .execute(
                    "SELECT site FROM site_totals WHERE events > 0 "
                    "UNION SELECT site FROM checkpoints UNION SELECT site FROM dead_letters "
                    "ORDER BY 1"
                )
                .fetchall()
            )
        return [row[0] for row in rows]

    def is_full(self, site: str, max_events: int, max_bytes: int) -> bool:
        """Whether the site's queue has reached either cap."""
        depth, size = self.totals(site)
        return depth >= max_events or size >= max_bytes

    def totals(self, site: str) -> tuple[int, int]:
        """The site's queue: events and their bytes (leased ones included)."""
        with self._errors():
            return self._totals(self._conn(), site)

    @staticmethod
    def _totals(conn: sqlite3.Connection, site: str) -> tuple[int, int]:
        row = conn.execute(
            "SELECT events, bytes FROM site_totals WHERE site = ?", (site,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    def make_room(
        self, site: str, keep_events: int, keep_bytes: int, *, page_views_only: bool = False
    ) -> int:
        """Delete the oldest events not leased right now until the site holds at most
        ``keep_events`` events and ``keep_bytes`` bytes (or none is left to delete);
        how many went (the caller says so: at every chunk, it would flood the log).
        ``page_views_only``: delete only ``page_view`` events (spool.on_overload)."""
        now = self._clock.time()
        only = _PAGE_VIEW if page_views_only else ""
        with self._write() as conn:
            depth, size = self._totals(conn, site)
            count = 0
            rows = conn.execute(
                "SELECT size FROM events WHERE site = ? AND "
                f"(leased_until IS NULL OR leased_until <= ?){only} ORDER BY created, id",
                (site, now),
            )
            for (event_size,) in rows:
                if depth <= keep_events and size <= keep_bytes:
                    break
                depth -= 1
                size -= event_size
                count += 1
            rows.close()
            return self._drop_oldest(conn, site, count, only) if count else 0

    def _drop_oldest(self, conn: sqlite3.Connection, site: str, count: int, only: str) -> int:
        return self._delete_events(
            conn,
            "id IN (SELECT id FROM events WHERE site = ? AND "
            f"(leased_until IS NULL OR leased_until <= ?){only} ORDER BY created, id LIMIT ?)",
            (site, self._clock.time(), count),
        )

    @staticmethod
    def encoded_size(events: Sequence[Event]) -> int:
        """The bytes ``events`` take in the spool (their JSON text), as the caps count them."""
        return sum(len(_encode_fields(e.fields)) for e in events)

    # -- dead letters --------------------------------------------------------

    @staticmethod
    def _dead_where(site: str | None, ids: Sequence[int] | None) -> tuple[str, list[Any]]:
        clauses = []
        params: list[Any] = []
        if site is not None:
            clauses.append("site = ?")
            params.append(site)
        if ids is not None:
            clauses.append("id IN (SELECT value FROM json_each(?))")
            params.append(_ids_json(ids))
        return (" AND ".join(clauses) or "1"), params

    def dead_letters(self, site: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first, of one site or of all."""
        where, params = self._dead_where(site, None)
        with self._errors():
            rows = (
                self._conn()
                .execute(
                    "SELECT id, site, request_id, fields, reason, attempts, created, failed_at "
                    f"FROM dead_letters WHERE {where} ORDER BY id LIMIT ?",
                    (*params, limit),
                )
                .fetchall()
            )
        return [
            DeadLetter(id_, s, rid, _fields_or_none(fields), reason, attempts, created, failed)
            for id_, s, rid, fields, reason, attempts, created, failed in rows
        ]

    def retry_dead_letters(self, site: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Queue dead letters again (ready now, attempts reset); how many left the list.

        One whose request id is already queued again is just removed from the list.
        """
        if ids is not None and not ids:
            return 0
        where, params = self._dead_where(site, ids)
        now = self._clock.time()
        with self._write() as conn:
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            before = (seq.fetchone() or (0,))[0]
            conn.execute(
                "INSERT INTO events (site, request_id, fields, size, created, "
                "not_before, lane) SELECT site, request_id, fields, "
                f"length(CAST(fields AS BLOB)), created, ?, {_LIVE_LANE_SQL} "
                f"FROM dead_letters WHERE {where} AND NOT EXISTS (SELECT 1 FROM events e "
                "WHERE e.site = dead_letters.site AND e.request_id = dead_letters.request_id) "
                "ORDER BY id",
                (now, *params),
            )
            added: dict[str, tuple[int, int]] = {}
            for s, n, b in conn.execute(
                "SELECT site, count(*), total(size) FROM events WHERE id > ? GROUP BY site",
                (before,),
            ):
                added[s] = (int(n), int(b))
            self._add_totals(conn, added)
            moved = conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount
        if moved:
            log.info("spool_dead_letters_retried", site=site, count=moved)
        return moved

    def purge_dead_letters(self, site: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Delete dead letters for good; how many."""
        if ids is not None and not ids:
            return 0
        where, params = self._dead_where(site, ids)
        with self._write() as conn:
            purged = conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount
        if purged:
            log.info("spool_dead_letters_purged", site=site, count=purged)
        return purged


class _Corrupt(Exception):
    """quick_check found damage (internal: becomes SpoolCorruptError after the move)."""


def _is_corruption(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _CORRUPT_CODES:
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text
