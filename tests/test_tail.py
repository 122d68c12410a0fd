"""Tests of tirreno_shipper.tail with real files and real rotations in tmp_path."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from tirreno_shipper import metrics
from tirreno_shipper.records import Checkpoint, Chunk, FileId
from tirreno_shipper.tail import FINGERPRINT_MAX, FileStatus, Tailer, identify
from tirreno_shipper.tail.waker import Waker


class Store:
    """Plays the spool: keeps the checkpoints of committed chunks, drops retired ones."""

    def __init__(self) -> None:
        self.cps: dict[FileId, Checkpoint] = {}
        self.chunks: list[Chunk] = []

    def commit(self, tailer: Tailer, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        # Moved to the end, as the spool lists checkpoints least recently moved first.
        self.cps.pop(chunk.file, None)
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


@pytest.mark.parametrize("late", [True, False], ids=["read-past-the-copy", "copy-exact"])
def test_a_copy_read_whole_before_the_truncation_is_not_read_again_after_a_restart(
    tmp_path: Path, late: bool
) -> None:
    """A rename rotation, then copytruncate of the new file after we had read to (or past)
    the copy's end, then a restart while the renamed file is still followed: the copy is
    the newest sibling, but every line of it was read; none is read again."""
    p = tmp_path / "access.log"
    append(p, "a1", "a2")
    store = Store()
    t = make(p, rotated_grace=3600)  # the renamed file stays followed
    assert store.drain(t) == [b"a1", b"a2"]
    os.rename(p, tmp_path / "access.log.1")
    append(tmp_path / "access.log.1", "a3")  # the server still writes to the renamed file
    append(p, "c1", "c2")
    aged(tmp_path / "access.log.1", 60)
    assert store.drain(t) == [b"a3", b"c1", b"c2"]
    # copytruncate: shift the renamed file, copy the live one, a line more, truncate.
    os.rename(tmp_path / "access.log.1", tmp_path / "access.log.2")
    shutil.copyfile(p, tmp_path / "access.log.1")
    if late:
        append(p, "c3")
        assert store.drain(t) == [b"c3"]  # read before the truncation: past the copy's end
    os.truncate(p, 0)
    append(p, "n1")
    assert store.drain(t) == [b"n1"]
    t.close()
    append(p, "n2")
    t2 = make(p, rotated_grace=3600, checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"n2"]


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
    store = read_then_stop(p, "one", "two")
    append(p, "three")
    for start_at in ("beginning", "end"):
        t2 = make(p, start_at=start_at, checkpoints=store.checkpoints())
        assert Store().drain(t2) == [b"three"]
        t2.close()


def test_rotated_while_down_is_found_among_siblings(tmp_path: Path) -> None:
    """A file renamed while we were down is read from its checkpoint before the new one."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "one")
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


def stopped_under_load(p: Path, *lines: str) -> Store:
    """The shipper starts on an empty log, reads ``lines`` and is stopped while lines keep
    coming: no poll ever came back empty, so the fingerprint-less checkpoint of the empty
    file was never retired and sits beside the file's newer one."""
    p.write_bytes(b"")
    store = Store()
    t = make(p)
    assert store.drain(t) == []
    append(p, *lines)
    chunk = t.poll()
    assert chunk is not None and texts([line for _, line in chunk.lines]) == list(lines)
    store.commit(t, chunk)
    t.close()
    assert sorted(bool(c.file.fingerprint) for c in store.checkpoints()) == [False, True]
    return store


def test_stale_empty_head_checkpoint_beside_a_newer_one_is_ignored(tmp_path: Path) -> None:
    """Both checkpoints name the renamed file's inode: the newer one (offset past "two")
    says where to resume, not the one taken while the file was empty (offset 0)."""
    p = tmp_path / "access.log"
    store = stopped_under_load(p, "one", "two")
    append(p, "three")
    os.rename(p, tmp_path / "access.log.1")
    append(p, "new")
    t2 = make(p, checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"three", b"new"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_stale_empty_head_checkpoint_of_the_current_file(tmp_path: Path) -> None:
    """The same with the file still at its path: resumed after "two", and the older
    rotated file, read long ago, is not taken for one rotated while we were down."""
    p = tmp_path / "access.log"
    (tmp_path / "access.log.1").write_bytes(b"old1\nold2\n")
    aged(tmp_path / "access.log.1", 3600)
    store = stopped_under_load(p, "one", "two")
    append(p, "three")
    t2 = make(p, checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"three"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_empty_head_checkpoint_alone_resumes_the_filled_file(tmp_path: Path) -> None:
    """Stopped before the first line came: the file filled while we were down is read
    from its start, and the rotated file beside it (read long ago) is left alone."""
    p = tmp_path / "access.log"
    (tmp_path / "access.log.1").write_bytes(b"old1\nold2\n")
    aged(tmp_path / "access.log.1", 3600)
    p.write_bytes(b"")
    store = Store()
    t = make(p, start_at="end")
    assert store.drain(t) == []
    t.close()
    append(p, "one", "two")
    t2 = make(p, start_at="end", checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"one", b"two"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


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
    store = read_then_stop(p, "one", "two")
    old = store.checkpoints()
    with open(p, "wb") as fh:
        fh.write(b"fresh line one\nfresh line two\nfresh line three\n")
    t2 = make(p, start_at="end", checkpoints=old)
    assert store.drain(t2) == [b"fresh line one", b"fresh line two", b"fresh line three"]
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_copytruncate_while_down_reads_the_rest_from_the_copy(tmp_path: Path) -> None:
    """copytruncate while down: the lines after the checkpoint come from the copy first."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "one")
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
    store = read_then_stop(p, "one")
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


# -- compressed rotated files -------------------------------------------------------------

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


def logrotate(path: Path, ext: str = "gz", *, keep: int = 14) -> None:
    """What logrotate does with ``compress``, ``delaycompress`` and ``rotate keep``: shift
    ``.N.<ext>`` up, rename ``.1`` to ``.2`` and compress it (keeping its mtime, as logrotate
    and gzip do), rename the log to ``.1`` and create an empty log; the oldest beyond
    ``keep`` are deleted."""
    base = str(path)
    numbered = [
        int(n.removeprefix(path.name + ".").removesuffix("." + ext))
        for n in os.listdir(path.parent)
        if n.startswith(path.name + ".") and n.endswith("." + ext)
    ]
    for k in sorted(numbered, reverse=True):
        if k + 1 > keep:
            os.unlink(f"{base}.{k}.{ext}")
        else:
            os.rename(f"{base}.{k}.{ext}", f"{base}.{k + 1}.{ext}")
    if os.path.exists(f"{base}.1"):
        if keep < 2:
            os.unlink(f"{base}.1")
        else:
            plain = f"{base}.1"
            st = os.stat(plain)
            packed = f"{base}.2.{ext}"
            with open(plain, "rb") as src:
                Path(packed).write_bytes(COMPRESSORS[ext](src.read()))
            os.utime(packed, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.unlink(plain)
    os.rename(base, f"{base}.1")
    path.touch()


def aged(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def read_then_stop(p: Path, *lines: str) -> Store:
    """The shipper reads ``lines`` from a new log, checkpoints them and stops."""
    append(p, *lines)
    store = Store()
    t = make(p)
    assert store.drain(t) == [line.encode() for line in lines]
    t.close()
    return store


def two_rotations_while_down(p: Path, rest: list[str]) -> None:
    """While the shipper is down: ``rest`` is written, logrotate runs, "b1" goes into
    the new file, logrotate runs again ("b1"'s file is access.log.1, the first is
    access.log.2.gz), and "c1" goes into the log now at the path."""
    append(p, *rest)
    aged(p, 100)
    logrotate(p)
    append(p, "b1")
    aged(p, 50)
    logrotate(p)
    append(p, "c1")


@pytest.mark.parametrize("ext", ["gz", "bz2", "xz"])
def test_two_delaycompress_rotations_while_down(tmp_path: Path, ext: str) -> None:
    """Down through two delaycompress rotations: the rest of the checkpointed file, now
    access.log.2.<ext>, is read from the checkpoint under its own identity (the offsets and
    request ids of a live read), then the whole access.log.1 it never saw, then the log.
    The older rotated files, read or skipped before, are not read again."""
    p = tmp_path / "access.log"
    old = tmp_path / "access.log.1"
    append(old, "old rotated, read before")
    aged(old, 3000)
    append(p, "a1", "a2")
    store = Store()
    t = make(p, start_at="end", chunk_lines=2)
    append(p, "a3")
    assert store.drain(t) == [b"a3"]
    t.close()
    (checkpointed,) = store.checkpoints()
    long = "x" * 300
    append(p, "a4", long, "a5", "a6", "a7")  # written while down, after the checkpoint
    aged(p, 2000)
    text = p.read_bytes()
    logrotate(p, ext)
    append(p, "b1", "b2", "b3")  # a file the shipper never saw
    aged(p, 1000)
    logrotate(p, ext)
    append(p, "c1")
    assert sorted(os.listdir(tmp_path)) == [
        "access.log",
        "access.log.1",
        f"access.log.2.{ext}",
        f"access.log.3.{ext}",
    ]

    store.chunks.clear()
    with structlog.testing.capture_logs() as logs:
        t2 = make(p, checkpoints=[checkpointed], chunk_lines=2, max_line_bytes=100)
        assert store.drain(t2) == [b"a4", b"a5", b"a6", b"a7", b"b1", b"b2", b"b3", b"c1"]
    rest = [c for c in store.chunks if c.file == checkpointed.file]
    assert rest[0].start_offset == checkpointed.offset
    assert rest[-1].end_offset == len(text)
    for chunk in rest:
        for off, line in chunk.lines:
            assert text[off : off + len(line) + 1] == line + b"\n"
    assert [s for c in rest for s in c.skipped] == [(text.index(long.encode()), "too_long")]
    events = [e["event"] for e in logs]
    assert "compressed_file_found" in events and "unseen_rotated_file_found" in events
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert warnings == ["line_too_long"]
    # Done with: only the log's own checkpoint is left, and nothing more to read.
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]
    assert store.drain(t2) == []
    t2.close()


def test_compressed_rest_is_resumed_after_a_crash_midway(tmp_path: Path) -> None:
    """Stopped again while reading the compressed file: the next start resumes it from
    the new checkpoint, and reads the file in between once."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "a1")
    two_rotations_while_down(p, [f"a{i}" for i in range(2, 10)])
    t2 = make(p, checkpoints=store.checkpoints(), chunk_lines=3)
    chunk = t2.poll()
    assert chunk is not None and texts([b for _, b in chunk.lines]) == ["a2", "a3", "a4"]
    store.commit(t2, chunk)
    t2.close()  # killed: in between the first and second chunk
    t3 = make(p, checkpoints=store.checkpoints(), chunk_lines=3)
    lines = store.drain(t3)
    assert texts(lines) == ["a5", "a6", "a7", "a8", "a9", "b1", "c1"]


def test_checkpointed_file_deleted_while_down_warns_and_reads_the_files_after_it(
    tmp_path: Path,
) -> None:
    """rotate 1: the checkpointed file is deleted at the second rotation. The files after it
    are still read; checkpoint_orphaned is a warning naming the path, offset and backfill."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "a1")
    append(p, "a2")  # lost with the file
    logrotate(p, keep=1)
    append(p, "b1", "b2")
    logrotate(p, keep=1)
    append(p, "c1")
    assert sorted(os.listdir(tmp_path)) == ["access.log", "access.log.1"]
    with structlog.testing.capture_logs() as logs:
        t2 = make(p, start_at="end", checkpoints=store.checkpoints())
        assert store.drain(t2) == [b"b1", b"b2", b"c1"]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "checkpoint_orphaned"
    assert (warning["path"], warning["offset"]) == (str(p), 3)
    assert "tirreno-shipper backfill -c CONFIG --site s FILE" in warning["hint"]


def test_orphaned_by_an_unreadable_compression_reads_only_newer_plain_files(
    tmp_path: Path,
) -> None:
    """The checkpointed file compressed in a format we cannot read (zstd): a warning names
    it; the plain file written after it is read, a stale plain file older than it is not."""
    p = tmp_path / "access.log"
    stale = tmp_path / "access.log.0"
    append(stale, "stale, from an older setup")
    aged(stale, 5000)
    store = read_then_stop(p, "a1")
    append(p, "a2")
    zst = tmp_path / "access.log.2.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(64))
    aged(zst, 1000)
    p.unlink()
    append(tmp_path / "access.log.1", "b1")
    append(p, "c1")
    with structlog.testing.capture_logs() as logs:
        t2 = make(p, checkpoints=store.checkpoints())
        assert store.drain(t2) == [b"b1", b"c1"]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "checkpoint_orphaned"
    assert warning["unreadable_siblings"] == [str(zst)]


def test_a_copy_of_a_checkpointed_file_is_never_read_from_its_start(tmp_path: Path) -> None:
    """A plain sibling starting like a checkpointed file, newer than it, is a copy of lines
    already read (here an operator's partial copy), never a file to read from its start."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "a1", "a2")
    append(p, "a3")
    aged(p, 100)
    logrotate(p)
    logrotate(p)  # the checkpointed file is now .2.gz, .1 is empty
    append(tmp_path / "access.log.part", "a1")
    append(p, "c1")
    t2 = make(p, checkpoints=store.checkpoints())
    assert store.drain(t2) == [b"a3", b"c1"]


def test_glob_skips_compressed_matches(tmp_path: Path) -> None:
    """A glob matching rotated .gz files never tails their compressed bytes; each is
    logged once as skipped."""
    p = tmp_path / "a.log"
    append(p, "live")
    (tmp_path / "a.log.2.gz").write_bytes(gzip.compress(b"old1\nold2\n"))
    store = Store()
    with structlog.testing.capture_logs() as logs:
        t = make(tmp_path / "a.log*")
        assert store.drain(t) == [b"live"]
        (tmp_path / "a.log.3.bz2").write_bytes(bz2.compress(b"older\n"))
        append(p, "more")
        assert store.drain(t) == [b"more"]
        assert store.drain(t) == []
    assert [s.path for s in t.status()] == [str(p)]
    skipped = [e["path"] for e in logs if e["event"] == "file_skipped_compressed"]
    assert skipped == [str(tmp_path / "a.log.2.gz"), str(tmp_path / "a.log.3.bz2")]
    assert all("backfill" in e["hint"] for e in logs if e["event"] == "file_skipped_compressed")


def test_large_compressed_rest_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    """Megabytes left in the compressed file: read forward in chunks of at most chunk_bytes,
    every line once and at its offset."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "first")
    append(p, *[f"line {i:07d} " + "y" * (i % 50) for i in range(60_000)])
    text = p.read_bytes()
    aged(p, 100)
    logrotate(p)
    logrotate(p)
    store.chunks.clear()
    started = time.monotonic()
    t2 = make(p, checkpoints=store.checkpoints(), chunk_bytes=1 << 16, chunk_lines=1000)
    lines = store.drain(t2)
    assert time.monotonic() - started < 10
    assert lines == text.splitlines()[1:]
    assert all(c.end_offset - c.start_offset <= 1 << 16 for c in store.chunks)
    for a, b in zip(store.chunks, store.chunks[1:], strict=False):
        if a.file == b.file:
            assert a.end_offset == b.start_offset
    for c in store.chunks:
        for off, line in c.lines:
            assert text[off : off + len(line) + 1] == line + b"\n"


def test_damaged_compressed_file_is_a_warning_and_the_next_files_are_read(
    tmp_path: Path,
) -> None:
    """A .gz cut short: what it holds after the checkpoint cannot be read (a warning says
    so); the files after it are still read."""
    p = tmp_path / "access.log"
    store = read_then_stop(p, "a1")
    two_rotations_while_down(p, [f"a{i} {os.urandom(40).hex()}" for i in range(2, 2000)])
    gz = tmp_path / "access.log.2.gz"
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])
    aged(gz, 100)
    with structlog.testing.capture_logs() as logs:
        t2 = make(p, checkpoints=store.checkpoints())
        assert store.drain(t2)[-2:] == [b"b1", b"c1"]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [w["event"] for w in warnings] == ["compressed_file_unreadable"]
    assert warnings[0]["file"] == str(gz)
    assert [c.file for c in store.checkpoints()] == [identify(str(p))]


def test_split_lines_offsets_crlf_too_long_and_the_rest() -> None:
    from tirreno_shipper.tail.lines import split_lines

    data = b"ab\r\n" + b"x" * 9 + b"\ncd\nef"
    assert split_lines(data, 100, 8, 2000) == (
        [(100, b"ab"), (114, b"cd")],
        [(104, "too_long")],
        117,
        b"ef",
    )
    # At most max_lines lines: the others stay in the rest, read again next time.
    assert split_lines(b"a\nb\nc\n", 0, 8, 2) == ([(0, b"a"), (2, b"b")], [], 4, b"c\n")
    assert split_lines(b"partial", 5, 8, 10) == ([], [], 5, b"partial")
