"""Tests of tirreno_shipper.tail with real files and real rotations in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tirreno_shipper import metrics
from tirreno_shipper.records import Checkpoint, Chunk, FileId
from tirreno_shipper.tail import FINGERPRINT_MAX, FileStatus, Tailer, Waker, identify


class Store:
    """Plays the spool: keeps the checkpoints of committed chunks, drops retired ones."""

    def __init__(self) -> None:
        self.cps: dict[FileId, Checkpoint] = {}
        self.chunks: list[Chunk] = []

    def commit(self, tailer: Tailer, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.cps[chunk.file] = chunk.checkpoint()

    def drain(self, tailer: Tailer, limit: int = 10_000) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(limit):
            chunk = tailer.poll()
            self.forget(tailer)
            if chunk is None:
                return out
            self.commit(tailer, chunk)
            out.extend(line for _, line in chunk.lines)
        raise AssertionError("tailer never ran out of chunks")

    def forget(self, tailer: Tailer) -> None:
        for fid in tailer.retired():
            self.cps.pop(fid, None)

    def checkpoints(self) -> list[Checkpoint]:
        return list(self.cps.values())


def make(path: Path | str, **kw: Any) -> Tailer:
    kw.setdefault("start_at", "beginning")
    kw.setdefault("scan_interval", 0)
    kw.setdefault("rotated_grace", 0)
    patterns = [str(p) for p in path] if isinstance(path, list) else [str(path)]
    return Tailer("s", patterns, **kw)


def append(path: Path, *lines: str) -> None:
    with open(path, "ab") as fh:
        fh.write("".join(line + "\n" for line in lines).encode())


def rotations(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "tirreno_shipper_file_rotations_total", {"site": "s", "kind": kind}
    )
    return value or 0.0


def texts(lines: list[bytes]) -> list[str]:
    return [b.decode() for b in lines]


# -- identity -------------------------------------------------------------------


def test_identify_fingerprints_the_first_line(tmp_path: Path) -> None:
    """identify() hashes the head up to the first newline and returns None when missing."""
    p = tmp_path / "a.log"
    assert identify(str(p)) is None
    p.write_bytes(b"partial")
    fid = identify(str(p))
    assert fid is not None and fid.fingerprint == ""
    assert (fid.dev, fid.ino) == (p.stat().st_dev, p.stat().st_ino)
    p.write_bytes(b"first\nsecond\n")
    fid = identify(str(p))
    assert fid is not None and fid.fingerprint == hashlib.sha1(b"first\n").hexdigest()
    p.write_bytes(b"x" * (FINGERPRINT_MAX + 10))
    fid = identify(str(p))
    assert fid is not None
    assert fid.fingerprint == hashlib.sha1(b"x" * FINGERPRINT_MAX).hexdigest()


# -- reading ----------------------------------------------------------------------


def test_start_at_beginning_reads_existing_lines(tmp_path: Path) -> None:
    """start_at=beginning returns every line already in the file, with byte offsets."""
    p = tmp_path / "a.log"
    append(p, "one", "two", "three")
    t = make(p)
    chunk = t.poll()
    assert chunk is not None
    assert list(chunk.lines) == [(0, b"one"), (4, b"two"), (8, b"three")]
    assert (chunk.start_offset, chunk.end_offset) == (0, 14)
    assert t.poll() is None


def test_start_at_end_skips_existing_lines(tmp_path: Path) -> None:
    """start_at=end ignores what was there and returns only lines appended later."""
    p = tmp_path / "a.log"
    append(p, "old1", "old2")
    store = Store()
    t = make(p, start_at="end")
    assert store.drain(t) == []
    append(p, "new")
    assert store.drain(t) == [b"new"]


def test_start_at_end_never_starts_mid_line(tmp_path: Path) -> None:
    """start_at=end starts after the last newline, so a line being written is read whole."""
    p = tmp_path / "a.log"
    p.write_bytes(b"old\nhalf-")
    store = Store()
    t = make(p, start_at="end")
    assert store.drain(t) == []
    with open(p, "ab") as fh:
        fh.write(b"done\n")
    assert store.drain(t) == [b"half-done"]


def test_partial_line_is_held_until_complete(tmp_path: Path) -> None:
    """A line without its newline is not returned until the newline arrives."""
    p = tmp_path / "a.log"
    p.write_bytes(b"full\npart")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"full"]
    with open(p, "ab") as fh:
        fh.write(b"ial")
    assert store.drain(t) == []
    with open(p, "ab") as fh:
        fh.write(b"\nnext\n")
    assert store.drain(t) == [b"partial", b"next"]


def test_crlf_is_stripped(tmp_path: Path) -> None:
    """A trailing carriage return is not part of the line."""
    p = tmp_path / "a.log"
    p.write_bytes(b"a\r\nb\n\r\n")
    assert Store().drain(make(p)) == [b"a", b"b", b""]


def test_chunks_respect_chunk_lines_and_offsets(tmp_path: Path) -> None:
    """Chunks hold at most chunk_lines lines and chain offsets without gaps."""
    p = tmp_path / "a.log"
    append(p, *[f"line {i}" for i in range(25)])
    store = Store()
    t = make(p, chunk_lines=10)
    lines = store.drain(t)
    assert lines == [f"line {i}".encode() for i in range(25)]
    assert [len(c.lines) for c in store.chunks] == [10, 10, 5]
    for a, b in zip(store.chunks, store.chunks[1:], strict=False):
        assert a.end_offset == b.start_offset
    data = p.read_bytes()
    for c in store.chunks:
        for off, line in c.lines:
            assert data[off : off + len(line) + 1] == line + b"\n"


def test_too_long_line_is_skipped_and_later_lines_kept(tmp_path: Path) -> None:
    """A line over max_line_bytes is recorded as skipped; the lines around it are kept."""
    p = tmp_path / "a.log"
    p.write_bytes(b"before\n" + b"x" * 5000 + b"\nafter\n")
    store = Store()
    t = make(p, max_line_bytes=100, chunk_bytes=64)
    assert store.drain(t) == [b"before", b"after"]
    skipped = [s for c in store.chunks for s in c.skipped]
    assert skipped == [(7, "too_long")]
    assert store.chunks[-1].end_offset == p.stat().st_size


def test_too_long_line_still_being_written(tmp_path: Path) -> None:
    """A runaway line without its newline yet is skipped once it ends, in bounded reads."""
    p = tmp_path / "a.log"
    p.write_bytes(b"ok\n" + b"y" * 3_000_000)
    store = Store()
    t = make(p, max_line_bytes=1000, chunk_bytes=4096)
    started = time.monotonic()
    assert store.drain(t) == [b"ok"]
    with open(p, "ab") as fh:
        fh.write(b"y" * 1_000_000 + b"\nlast\n")
    assert store.drain(t) == [b"last"]
    assert time.monotonic() - started < 1.0
    assert [s for c in store.chunks for s in c.skipped] == [(3, "too_long")]


def test_rewind_returns_the_same_lines_again(tmp_path: Path) -> None:
    """A rewound chunk is returned again, with the same offsets."""
    p = tmp_path / "a.log"
    append(p, "a", "b")
    t = make(p)
    first = t.poll()
    assert first is not None
    t.rewind(first)
    again = t.poll()
    assert again is not None
    assert list(again.lines) == list(first.lines)
    assert again.checkpoint() == first.checkpoint()


def test_empty_new_file_is_registered_with_a_checkpoint(tmp_path: Path) -> None:
    """A newly seen file yields a line-less chunk, so a restart does not apply start_at again."""
    p = tmp_path / "a.log"
    append(p, "before start")
    store = Store()
    t = make(p, start_at="end")
    assert store.drain(t) == []
    assert [c.offset for c in store.checkpoints()] == [p.stat().st_size]
    t.close()
    append(p, "while down")
    t2 = make(p, start_at="end", checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"while down"]


# -- globs --------------------------------------------------------------------------


def test_glob_picks_up_new_files_from_the_beginning(tmp_path: Path) -> None:
    """A file matching the glob later is read from its start even with start_at=end."""
    a = tmp_path / "a.access.log"
    append(a, "a-old")
    store = Store()
    t = make(tmp_path / "*.access.log", start_at="end")
    assert store.drain(t) == []
    b = tmp_path / "b.access.log"
    append(b, "b1", "b2")
    append(a, "a-new")
    (tmp_path / "c.error.log").write_text("not matched\n")
    assert sorted(store.drain(t)) == [b"a-new", b"b1", b"b2"]
    assert sorted(s.path for s in t.status()) == [str(a), str(b)]
    assert t.watch_dirs() == [str(tmp_path)]


def test_rescan_waits_for_scan_interval(tmp_path: Path) -> None:
    """New files are looked for at most every scan_interval, and found after it."""
    store = Store()
    t = make(tmp_path / "*.log", scan_interval=0.3)
    append(tmp_path / "x.log", "x")
    assert store.drain(t) == []
    time.sleep(0.35)
    assert store.drain(t) == [b"x"]


# -- rotation while running -----------------------------------------------------------


def test_rename_rotation_reads_old_file_to_its_end_first(tmp_path: Path) -> None:
    """After a rename, the old file's remaining lines come before the new file's."""
    p = tmp_path / "access.log"
    append(p, "old1")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"old1"]
    before = rotations("rename")
    with open(p, "ab", buffering=0) as writer:
        os.rename(p, tmp_path / "access.log.1")
        # The new file is written first, then the server still writes to the old one.
        append(p, "new1", "new2")
        writer.write(b"old2\nold3\n")
    assert store.drain(t) == [b"old2", b"old3", b"new1", b"new2"]
    assert rotations("rename") == before + 1
    old_id = FileId(*_devino(tmp_path / "access.log.1"), hashlib.sha1(b"old1\n").hexdigest())
    assert old_id not in store.cps
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_rename_rotation_keeps_following_old_file_within_grace(tmp_path: Path) -> None:
    """A renamed file still written to (before the server reopens) is not let go early."""
    p = tmp_path / "access.log"
    append(p, "old1")
    store = Store()
    t = make(p, rotated_grace=0.3)
    assert store.drain(t) == [b"old1"]
    with open(p, "ab", buffering=0) as writer:
        os.rename(p, tmp_path / "access.log.1")
        append(p, "new1")
        assert store.drain(t) == [b"new1"]
        writer.write(b"late old\n")
    assert store.drain(t) == [b"late old"]
    assert len(t.status()) == 2
    time.sleep(0.35)
    assert store.drain(t) == []
    assert [s.path for s in t.status()] == [str(p)]


def test_rotated_file_trailing_partial_line_is_returned(tmp_path: Path) -> None:
    """The unterminated last line of a file rotated away and finished is a line."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a\nunterminated")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"a"]
    os.rename(p, tmp_path / "access.log.1")
    append(p, "new")
    assert store.drain(t) == [b"unterminated", b"new"]


def test_copytruncate_restarts_at_zero_and_is_counted(tmp_path: Path) -> None:
    """A file shorter than the offset is read again from 0 and counted as a truncation."""
    p = tmp_path / "access.log"
    append(p, "one", "two")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one", b"two"]
    before = rotations("truncate")
    shutil.copyfile(p, tmp_path / "access.log.1")
    os.truncate(p, 0)
    append(p, "three")
    assert store.drain(t) == [b"three"]
    assert rotations("truncate") == before + 1
    assert [c.file.fingerprint for c in store.checkpoints()] == [
        hashlib.sha1(b"three\n").hexdigest()
    ]


def test_copytruncate_lines_not_yet_read_come_from_the_copy(tmp_path: Path) -> None:
    """Lines written after our offset and before the truncation are read from the copy."""
    p = tmp_path / "access.log"
    append(p, "one")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one"]
    append(p, "two", "three")
    shutil.copyfile(p, tmp_path / "access.log.1")
    os.truncate(p, 0)
    append(p, "four")
    assert store.drain(t) == [b"two", b"three", b"four"]


def test_truncated_and_regrown_past_offset_while_running(tmp_path: Path) -> None:
    """A file rewritten past our offset between polls is recognised by its fingerprint."""
    p = tmp_path / "access.log"
    append(p, "aa")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"aa"]
    with open(p, "wb") as fh:
        fh.write(b"bbbbbb\ncc\n")
    assert store.drain(t) == [b"bbbbbb", b"cc"]


def test_deleted_while_open_is_read_to_its_end_then_recreated(tmp_path: Path) -> None:
    """A deleted file is read to its end and retired; a file recreated at the path is read whole."""
    p = tmp_path / "access.log"
    append(p, "one")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one"]
    before = rotations("delete")
    with open(p, "ab", buffering=0) as writer:
        writer.write(b"two\n")
        os.unlink(p)
        writer.write(b"three\n")
        assert store.drain(t) == [b"two", b"three"]
    assert rotations("delete") == before + 1
    assert store.cps == {}
    assert t.status() == []
    append(p, "reborn")
    assert store.drain(t) == [b"reborn"]


def test_rotated_then_compressed_is_read_to_its_end(tmp_path: Path) -> None:
    """A file renamed to .1 and gzipped to .1.gz (deleting .1) is still read to its end."""
    p = tmp_path / "access.log"
    append(p, "one")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one"]
    append(p, "two")
    rotated = tmp_path / "access.log.1"
    os.rename(p, rotated)
    append(p, "new")
    with open(rotated, "rb") as src, gzip.open(str(rotated) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    rotated.unlink()
    assert store.drain(t) == [b"two", b"new"]
    assert store.drain(t) == []
    assert [s.path for s in t.status()] == [str(p)]


# -- restarts -------------------------------------------------------------------------


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    """A new Tailer with checkpoints resumes at the offsets, whatever start_at says."""
    p = tmp_path / "access.log"
    append(p, "one", "two")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one", b"two"]
    t.close()
    append(p, "three")
    for start_at in ("beginning", "end"):
        t2 = make(p, start_at=start_at, checkpoints=store.checkpoints())
        assert Store().drain(t2) == [b"three"]
        t2.close()


def test_rotated_while_down_is_found_among_siblings(tmp_path: Path) -> None:
    """A file renamed while we were down is read from its checkpoint before the new one."""
    p = tmp_path / "access.log"
    append(p, "one")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one"]
    t.close()
    append(p, "two")
    os.rename(p, tmp_path / "access.log-20261129")
    (tmp_path / "access.log.2.gz").write_bytes(gzip.compress(b"one\ntwo\n"))
    append(p, "new")
    t2 = make(p, start_at="end", checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"two", b"new"]
    assert [c.path for c in store.checkpoints()] == [str(p)]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_checkpoint_taken_before_the_first_line_still_finds_the_rotated_file(
    tmp_path: Path,
) -> None:
    """A file checkpointed while empty (no fingerprint yet), filled and rotated while we
    were down, is found by its inode and read in full before the new file."""
    p = tmp_path / "access.log"
    p.write_bytes(b"")
    empty = identify(str(p))
    assert empty is not None and empty.fingerprint == ""
    append(p, "one")
    append(p, "two")
    os.rename(p, tmp_path / "access.log.1")
    append(p, "new")
    store = Store()
    t = make(p, start_at="end", checkpoints=[Checkpoint(str(p), empty, 0)])
    assert store.drain(t) == [b"one", b"two", b"new"]
    # The fingerprint-less checkpoint is replaced, never left to be matched again.
    assert all(c.file.fingerprint for c in store.checkpoints())


def test_rotated_twice_while_down_reads_oldest_first(tmp_path: Path) -> None:
    """Two rotations while down: both checkpointed files are finished, oldest first."""
    p = tmp_path / "access.log"
    store = Store()
    t = make(p, rotated_grace=10)
    append(p, "a1")
    assert store.drain(t) == [b"a1"]
    with open(p, "ab", buffering=0) as writer:
        os.rename(p, tmp_path / "access.log.1")
        append(p, "b1")
        assert store.drain(t) == [b"b1"]
        writer.write(b"a2\n")
    t.close()
    assert len(store.checkpoints()) == 2
    append(p, "b2")
    os.rename(tmp_path / "access.log.1", tmp_path / "access.log.2")
    os.utime(tmp_path / "access.log.2", (1, 1))
    os.rename(p, tmp_path / "access.log.1")
    append(p, "c1")
    t2 = make(p, checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"a2", b"b2", b"c1"]


def test_truncated_and_grown_while_down_is_read_from_zero(tmp_path: Path) -> None:
    """A file rewritten past the old offset while down has a new fingerprint: read from 0."""
    p = tmp_path / "access.log"
    append(p, "one", "two")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one", b"two"]
    t.close()
    old = store.checkpoints()
    with open(p, "wb") as fh:
        fh.write(b"fresh line one\nfresh line two\nfresh line three\n")
    t2 = make(p, start_at="end", checkpoints=old)
    assert store.drain(t2) == [b"fresh line one", b"fresh line two", b"fresh line three"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_copytruncate_while_down_reads_the_rest_from_the_copy(tmp_path: Path) -> None:
    """copytruncate while down: the lines after the checkpoint come from the copy first."""
    p = tmp_path / "access.log"
    append(p, "one")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one"]
    t.close()
    append(p, "two")
    shutil.copyfile(p, tmp_path / "access.log.1")
    os.truncate(p, 0)
    append(p, "three")
    t2 = make(p, checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"two", b"three"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_compressed_while_down_is_retired_and_new_file_read(tmp_path: Path) -> None:
    """A checkpointed file that only survives as .1.gz is retired; the new file is read whole."""
    p = tmp_path / "access.log"
    append(p, "one")
    store = Store()
    t = make(p)
    assert store.drain(t) == [b"one"]
    t.close()
    (tmp_path / "access.log.1.gz").write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    append(p, "new")
    t2 = make(p, start_at="end", checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"new"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_inode_reuse_is_not_mistaken_for_the_old_file(tmp_path: Path) -> None:
    """A checkpoint with the same dev/ino but another fingerprint is a different file."""
    p = tmp_path / "access.log"
    append(p, "gone")
    old = identify(str(p))
    assert old is not None
    p.unlink()
    append(p, "new one", "new two")
    new = identify(str(p))
    assert new is not None
    # Whether or not this file system reused the inode, make the checkpoint claim it.
    stale = Checkpoint(str(p), FileId(new.dev, new.ino, old.fingerprint), 8)
    store = Store()
    store.cps[stale.file] = stale
    t = make(p, start_at="end", checkpoints=[stale])
    assert store.drain(t) == [b"new one", b"new two"]
    assert stale.file not in store.cps


def test_status_and_lag(tmp_path: Path) -> None:
    """status() lists each file's offset and size; lag_bytes() is what is left to read."""
    p = tmp_path / "access.log"
    append(p, "12345", "abc")
    t = make(p, chunk_lines=1)
    chunk = t.poll()
    assert chunk is not None
    fid = identify(str(p))
    assert fid is not None
    assert t.status() == [FileStatus(str(p), fid, 6, 10)]
    assert t.lag_bytes() == 4
    t.close()
    assert t.status() == []


# -- waking -----------------------------------------------------------------------------


def test_waker_wakes_on_append(tmp_path: Path) -> None:
    """The Waker sets its event when a watched file is appended to."""
    p = tmp_path / "access.log"
    append(p, "one")
    event = threading.Event()
    waker = Waker([str(tmp_path), str(tmp_path / "missing")], event)
    waker.start()
    try:
        time.sleep(0.1)
        event.clear()
        append(p, "two")
        assert event.wait(2.0)
    finally:
        waker.stop()


def _devino(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino
