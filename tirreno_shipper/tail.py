"""Following log files: identity, rotation, offsets, partial lines, globs.

A file is known by device + inode + a fingerprint of its head (see
``records.FileId``), never by its name: logrotate renames files, copytruncate
rewrites them in place, and a deleted file's inode is soon reused.

The ``Tailer`` is pull-based and single-threaded: ``poll()`` returns the next
chunk of complete lines of one file and advances the in-memory offset; the
caller persists the chunk's events and ``chunk.checkpoint()`` in one
transaction before the next ``poll()`` (or calls ``rewind(chunk)``). So
everything returned before a ``poll()`` call is known to be persisted, which
is what lets the Tailer decide when an old identity's checkpoint may go.

Within one watched path, files rotated away are read to their end before the
file now at the path; a rotated file is let go only after it has not grown for
``rotated_grace`` seconds, because nginx and Apache keep writing to the renamed
file until they reopen their logs.

Compressed rotated files (``access.log.2.gz``) are never followed, not even
when a glob matches them: they are copies of a file already followed. One is
read only after a restart, when the file a checkpoint names survives only
compressed (``delaycompress`` and two rotations while the shipper was down):
its decompressed text is read from the checkpoint's offset to its end, under
the checkpoint's own identity, so the request ids are those a live read gives.
"""

from __future__ import annotations

import bz2
import contextlib
import fnmatch
import glob
import gzip
import hashlib
import io
import lzma
import math
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tirreno_shipper import metrics
from tirreno_shipper.records import Checkpoint, Chunk, FileId

log = structlog.get_logger(__name__)

FINGERPRINT_MAX = 256

# Suffixes of rotated files that have been compressed: their bytes are not the
# log's bytes any more, so they are never followed; only gzip, bzip2 and xz
# (recognised by their magic bytes, not the suffix) can be read, by _Decompressed.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
# A decompressing reader of each, from a path or a binary file object.
OPENERS: dict[str, Callable[[Any, str], Any]] = {
    "gzip": gzip.open,
    "bz2": bz2.open,
    "xz": lzma.open,
}
# What a damaged or truncated compressed file raises while being decompressed.
DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# The end of a compressed file not yet read to its end (its length is unknown).
_UNKNOWN_END = 1 << 62
_GLOB_MAGIC = frozenset("*?[")
_BACKFILL = "tirreno-shipper backfill -c CONFIG --site {site} {file}"


@dataclass(slots=True, frozen=True)
class FileStatus:
    """One followed file, for ``status``: ``path`` is the watched path it came from."""

    path: str
    file: FileId
    offset: int
    size: int


def fingerprint(head: bytes) -> str:
    """The `FileId` fingerprint of a file that starts with ``head`` (see records.FileId)."""
    head = head[:FINGERPRINT_MAX]
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    elif len(head) < FINGERPRINT_MAX:
        return ""
    return hashlib.sha1(head, usedforsecurity=False).hexdigest()


def _fingerprint_fd(fd: int) -> str:
    return fingerprint(os.pread(fd, FINGERPRINT_MAX, 0))


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)


def is_compressed_name(path: str) -> bool:
    """Whether ``path`` is named like a compressed rotated log (``access.log.2.gz``)."""
    return path.lower().endswith(_COMPRESSED)


def identify(path: str) -> FileId | None:
    """The identity of the file at ``path`` now, or None when there is none."""
    try:
        fd = _open(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        return FileId(st.st_dev, st.st_ino, _fingerprint_fd(fd))
    finally:
        os.close(fd)


class _Decompressed:
    """The text of a compressed file, read at increasing offsets in bounded pieces.

    A decompressing stream can only seek by decompressing (forward) or by
    starting over (backward), so the piece last returned is kept: the tail
    reads again from where its last complete line ended, inside that piece.
    Memory is at most two pieces, whatever the file's size.
    """

    __slots__ = ("buf", "buf_off", "eof_at", "name", "raw", "size_hint", "stream")

    def __init__(self, name: str, fd: int, kind: str) -> None:
        self.name = name
        # Not owning the descriptor: the _File closes it.
        self.raw = os.fdopen(fd, "rb", buffering=0, closefd=False)
        self.stream: io.BufferedIOBase
        self.size_hint = -1
        self.stream = OPENERS[kind](self.raw, "rb")
        if kind == "gzip":
            size = os.fstat(fd).st_size
            if size >= 18:
                # ISIZE: the text's length modulo 2**32 (for status and lag only).
                self.size_hint = int.from_bytes(os.pread(fd, 4, size - 4), "little")
        self.buf = b""
        self.buf_off = 0  # text offset of buf[0]; the stream is at buf_off + len(buf)
        self.eof_at = -1  # the text's length, once the end was reached

    def read_at(self, off: int, n: int) -> bytes:
        """Up to ``n`` bytes of text from ``off``; fewer only at the end."""
        if 0 <= self.eof_at <= off:
            return b""
        if not self.buf_off <= off <= self.buf_off + len(self.buf):
            self.stream.seek(off)
            self.buf, self.buf_off = b"", self.stream.tell()
            if self.buf_off < off:
                self.eof_at = self.buf_off
                return b""
        have = self.buf[off - self.buf_off :]
        if len(have) >= n:
            return have[:n]
        more = self.stream.read(n - len(have))
        if len(more) < n - len(have):
            self.eof_at = off + len(have) + len(more)
        self.buf, self.buf_off = have + more, off
        return self.buf

    def close(self) -> None:
        with contextlib.suppress(*DECOMPRESS_ERRORS):
            self.stream.close()
        self.raw.close()


def compression(head: bytes) -> str | None:
    """``gzip``, ``bz2`` or ``xz`` for a file starting with ``head`` (its first 6 bytes
    suffice), or None: plain, or compressed in a format we cannot read."""
    for prefix, kind in _MAGIC:
        if head.startswith(prefix):
            return kind
    return None


def _decompressed(name: str, fd: int) -> _Decompressed | None:
    """``fd`` (the compressed file ``name``) as text, or None in a format we cannot read."""
    kind = compression(os.pread(fd, 6, 0))
    return None if kind is None else _Decompressed(name, fd, kind)


class _File:
    """An open file being followed. Mutable on purpose: it is the Tailer's private state."""

    __slots__ = (
        "changed_at",
        "dirty",
        "discard_scan",
        "fd",
        "id",
        "key",
        "offset",
        "pending_retire",
        "seen_size",
        "z",
    )

    def __init__(
        self,
        fd: int,
        fid: FileId,
        offset: int,
        *,
        dirty: bool,
        now: float,
        z: _Decompressed | None = None,
        key: tuple[int, int] | None = None,
    ) -> None:
        self.fd = fd
        self.id = fid
        # The inode held open. Not the identity's for a compressed file: it is read
        # under the identity of the file it was compressed from (see _adopt_compressed).
        self.key = key if key is not None else (fid.dev, fid.ino)
        # The decompressed text of a compressed file (complete: it no longer grows).
        self.z = z
        self.offset = offset
        # True while the offset/identity differ from what the caller last persisted,
        # so a chunk is due even without lines.
        self.dirty = dirty
        # Identities this file had before (empty head, pre-truncation); their
        # checkpoints may go once a chunk with the new identity is persisted.
        self.pending_retire: list[FileId] = []
        # >= 0 while skipping a too-long line: how far it has been scanned.
        self.discard_scan = -1
        self.seen_size = -1
        self.changed_at = now

    def pread(self, n: int, off: int) -> bytes:
        if self.z is None:
            return os.pread(self.fd, n, off)
        return self.z.read_at(off, n)

    def close(self) -> None:
        if self.z is not None:
            self.z.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Group:
    """The files of one watched path: the one at the path and those rotated away from it."""

    __slots__ = ("current", "path", "rotated")

    def __init__(self, path: str) -> None:
        self.path = path
        self.current: _File | None = None
        # Oldest first: read in this order, each to its end, before ``current``.
        self.rotated: list[_File] = []


class Tailer:
    """Follows the files matching ``patterns`` for one site; see the module docstring."""

    def __init__(
        self,
        site: str,
        patterns: Sequence[str],
        *,
        start_at: Literal["end", "beginning"],
        max_line_bytes: int = 65536,
        checkpoints: Sequence[Checkpoint] = (),
        chunk_lines: int = 2000,
        chunk_bytes: int = 1 << 20,
        scan_interval: float = 1.0,
        rotated_grace: float = 5.0,
    ) -> None:
        self.site = site
        self._patterns = list(patterns)
        self._start_at = start_at
        self._max_line = max_line_bytes
        self._chunk_lines = max(1, chunk_lines)
        # A line of the maximum length plus its "\r\n" always fits in one read.
        self._read_size = max(chunk_bytes, max_line_bytes + 2)
        self._scan_interval = scan_interval
        self._grace = rotated_grace
        self._groups: dict[str, _Group] = {}
        self._by_inode: dict[tuple[int, int], _File] = {}
        # Identities whose checkpoints are obsolete, held back until a poll() finds
        # nothing to do: only then is every file's newer state surely persisted, so
        # deleting them can never make a restart take a file for a new one.
        self._retiring: list[FileId] = []
        self._retired: list[FileId] = []
        self._inflight: tuple[Chunk, _File, list[FileId]] | None = None
        self._rr = 0
        self._rotations = {
            kind: metrics.FILE_ROTATIONS.labels(site=site, kind=kind)
            for kind in ("rename", "truncate", "delete")
        }
        # Paths that exist but cannot be opened (permissions), with the error: logged
        # once per distinct error, not at every scan, and shown by `status`.
        self.unreadable: dict[str, str] = {}
        # Compressed files a glob matches: never followed, logged once each.
        self._skipped_compressed: set[str] = set()
        # One checkpoint per inode: the most recently moved (``checkpoints`` come least
        # recently moved first). An older one for the same inode is an identity the
        # file had before (its empty head, its content before a truncation) whose
        # checkpoint was not deleted yet: a stop under load comes before the idle
        # poll that retires it. Resuming from it would read the file again.
        self._restored: dict[tuple[int, int], Checkpoint] = {}
        for cp in checkpoints:
            older = self._restored.get((cp.file.dev, cp.file.ino))
            if older is not None:
                self._retiring.append(older.file)
            self._restored[(cp.file.dev, cp.file.ino)] = cp
        self._seen_paths = {cp.path for cp in checkpoints}
        # Heads of every file we hold a checkpoint for: a sibling starting with one
        # of them is a copy of a file read already, never a file to read from 0.
        self._checkpointed_heads = {cp.file.fingerprint for cp in checkpoints} - {""}
        now = time.monotonic()
        self._last_scan = now
        self._scan(now, first=True)
        self._restore_rotated(now)

    # -- public API -----------------------------------------------------------

    def poll(self) -> Chunk | None:
        """The next chunk of complete lines of one file, or None when nothing is new."""
        if self._inflight is not None:
            # The caller persists a chunk before polling again: its old identities may go.
            self._retiring.extend(self._inflight[2])
            self._inflight = None
        now = time.monotonic()
        if now - self._last_scan >= self._scan_interval:
            self._last_scan = now
            self._scan(now, first=False)
        groups = list(self._groups.values())
        n = len(groups)
        for i in range(n):
            idx = (self._rr + i) % n
            chunk = self._poll_group(groups[idx], now)
            if chunk is not None:
                # Round-robin, so one busy file does not starve the others.
                self._rr = idx + 1
                return chunk
        self._drop_empty_groups()
        self._retired.extend(self._retiring)
        self._retiring = []
        return None

    def rewind(self, chunk: Chunk) -> None:
        """Undo ``chunk``: it was not persisted and will be returned again."""
        f: _File | None
        ids: list[FileId] = []
        if self._inflight is not None and self._inflight[0] is chunk:
            _, f, ids = self._inflight
            self._inflight = None
        else:
            # By identity first: a compressed file's inode is not its identity's.
            f = next((x for x in self._by_inode.values() if x.id == chunk.file), None)
            if f is None:
                f = self._by_inode.get((chunk.file.dev, chunk.file.ino))
        if f is None:
            return
        f.offset = chunk.start_offset
        f.discard_scan = -1
        f.dirty = True
        f.pending_retire[:0] = ids

    def retired(self) -> list[FileId]:
        """Identities whose checkpoints are no longer needed; each returned once."""
        out, self._retired = self._retired, []
        live = {f.id for f in self._by_inode.values()}
        seen: set[FileId] = set()
        result = []
        for fid in out:
            if fid not in live and fid not in seen:
                seen.add(fid)
                result.append(fid)
        return result

    def status(self) -> list[FileStatus]:
        out = []
        for g in self._groups.values():
            for f in [*g.rotated, *([g.current] if g.current else [])]:
                out.append(FileStatus(g.path, f.id, f.offset, self._size(f)))
        return out

    def lag_bytes(self) -> int:
        return sum(max(0, self._size(f) - f.offset) for f in self._by_inode.values())

    def watch_dirs(self) -> list[str]:
        """Existing folders holding the patterns' files (globbed folder parts expanded)."""
        dirs: set[str] = set()
        for pattern in self._patterns:
            d = os.path.dirname(os.path.abspath(pattern))
            cands = glob.glob(d) if _is_glob(d) else [d]
            dirs.update(c for c in cands if os.path.isdir(c))
        return sorted(dirs)

    def close(self) -> None:
        for f in self._by_inode.values():
            f.close()
        self._by_inode.clear()
        self._groups.clear()

    # -- reading --------------------------------------------------------------

    def _poll_group(self, g: _Group, now: float) -> Chunk | None:
        # Twice at most: a truncation found on the first round resets the file and
        # may queue the copy that copytruncate left beside it, to be read first.
        for _ in range(2):
            for f in list(g.rotated):
                if f.z is not None:
                    # Compressed, so complete: read to its end at once, no grace.
                    end = f.z.eof_at if f.z.eof_at >= 0 else _UNKNOWN_END
                    chunk = self._read(g, f, end, final=True, verify=False)
                    if chunk is not None:
                        return chunk
                    self._finish(g, f)
                    continue
                size = self._size(f)
                if size != f.seen_size:
                    f.seen_size = size
                    f.changed_at = now
                final = now - f.changed_at >= self._grace
                chunk = self._read(g, f, size, final=final, verify=False)
                if chunk is not None:
                    return chunk
                if final:
                    self._finish(g, f)
                elif f.offset < size and f.discard_scan < 0:
                    # A held partial line: the writer may still be finishing it, and
                    # the file at the path must not overtake it.
                    return None
            cur = g.current
            if cur is None:
                return None
            try:
                size = os.fstat(cur.fd).st_size
            except OSError:
                return None
            if size < cur.offset:
                self._truncated(g, cur, now)
                continue
            before = cur.id
            chunk = self._read(g, cur, size, final=False, verify=True)
            if chunk is not None or cur.id == before:
                return chunk
            # The identity changed without a chunk: a rewrite found by its fingerprint.
        return None

    def _read(self, g: _Group, f: _File, size: int, *, final: bool, verify: bool) -> Chunk | None:
        if f.discard_scan >= 0:
            return self._discard(g, f, size, final)
        avail = size - f.offset
        if avail <= 0:
            return self._emit(g, f, f.offset, [], []) if f.dirty else None
        data = self._pread(g, f, min(avail, self._read_size), f.offset)
        if not data:
            return self._emit(g, f, f.offset, [], []) if f.dirty else None
        at_end = len(data) == avail or (f.z is not None and f.z.eof_at == f.offset + len(data))
        if verify:
            fp = _fingerprint_fd(f.fd)
            if fp != f.id.fingerprint:
                if f.id.fingerprint:
                    # Rewritten in place and already longer than our offset: what we
                    # just read is not the continuation of what we had.
                    self._truncated(g, f, time.monotonic())
                    return None
                f.pending_retire.append(f.id)
                f.id = FileId(f.id.dev, f.id.ino, fp)
        parts = data.split(b"\n", self._chunk_lines)
        rest = parts.pop()
        lines: list[tuple[int, bytes]] = []
        skipped: list[tuple[int, str]] = []
        pos = f.offset
        maxlen = self._max_line
        if parts:
            append = lines.append
            if b"\r" in data:
                for seg in parts:
                    n = len(seg)
                    if n > maxlen:
                        skipped.append((pos, "too_long"))
                    elif seg[-1:] == b"\r":
                        append((pos, seg[:-1]))
                    else:
                        append((pos, seg))
                    pos += n + 1
            else:
                for seg in parts:
                    n = len(seg)
                    if n > maxlen:
                        skipped.append((pos, "too_long"))
                    else:
                        append((pos, seg))
                    pos += n + 1
        elif len(rest) > maxlen:
            f.discard_scan = f.offset + len(data)
            return self._discard(g, f, size, final)
        elif final and rest and at_end:
            # The file is done: its unterminated last line is a line after all.
            lines.append((pos, rest[:-1] if rest[-1:] == b"\r" else rest))
            pos += len(rest)
        if not lines and not skipped and not f.dirty:
            return None
        for off, _reason in skipped:
            log.warning("line_too_long", site=self.site, path=g.path, offset=off)
        return self._emit(g, f, pos, lines, skipped)

    def _discard(self, g: _Group, f: _File, size: int, final: bool) -> Chunk | None:
        # Scanned in bounded reads and thrown away, so a runaway line costs no memory.
        scan = f.discard_scan
        while scan < size:
            data = self._pread(g, f, min(self._read_size, size - scan), scan)
            if not data:
                break
            nl = data.find(b"\n")
            if nl >= 0:
                return self._skip(g, f, scan + nl + 1)
            scan += len(data)
        f.discard_scan = scan
        if final:
            return self._skip(g, f, scan)
        return None

    def _pread(self, g: _Group, f: _File, n: int, off: int) -> bytes:
        try:
            return f.pread(n, off)
        except DECOMPRESS_ERRORS as exc:
            if f.z is None:
                raise
            # Damaged or cut short: what follows cannot be read; the file is done.
            f.z.eof_at = off
            log.warning(
                "compressed_file_unreadable",
                site=self.site,
                path=g.path,
                file=f.z.name,
                offset=off,
                error=str(exc),
                hint="the lines after this offset of the decompressed text were not sent; "
                "if you can recover them, send them with "
                + _BACKFILL.format(site=self.site, file="FILE"),
            )
            return b""

    def _skip(self, g: _Group, f: _File, end: int) -> Chunk:
        log.warning("line_too_long", site=self.site, path=g.path, offset=f.offset)
        return self._emit(g, f, end, [], [(f.offset, "too_long")])

    def _emit(
        self,
        g: _Group,
        f: _File,
        end: int,
        lines: list[tuple[int, bytes]],
        skipped: list[tuple[int, str]],
    ) -> Chunk:
        chunk = Chunk(g.path, f.id, f.offset, end, lines, skipped)
        f.offset = end
        f.dirty = False
        f.discard_scan = -1
        self._inflight = (chunk, f, f.pending_retire)
        f.pending_retire = []
        return chunk

    # -- rotation -------------------------------------------------------------

    def _truncated(self, g: _Group, f: _File, now: float) -> None:
        old, old_offset = f.id, f.offset
        self._rotations["truncate"].inc()
        copy = self._find_copy(g.path, old, old_offset, now)
        if copy is not None:
            g.rotated.append(copy)
        f.pending_retire.append(old)
        f.id = FileId(old.dev, old.ino, _fingerprint_fd(f.fd))
        f.offset = 0
        f.discard_scan = -1
        f.dirty = True
        log.info(
            "file_rotated",
            site=self.site,
            kind="truncate",
            path=g.path,
            old_offset=old_offset,
            copy_offset=copy.offset if copy else None,
        )

    def _find_copy(self, path: str, old: FileId, offset: int, now: float) -> _File | None:
        """The copy copytruncate made: same head, another inode.

        The lines between our offset and the truncation are only in the copy. A copy
        shorter than our offset (we read lines written after it was taken) holds
        nothing new, but is followed all the same, at its end: its checkpoint says
        it was read, or a restart would take it for a file rotated while we were
        down and read it again.
        """
        if not old.fingerprint:
            return None
        best: tuple[float, int, os.stat_result] | None = None
        for cand in _siblings(path):
            try:
                fd = _open(cand)
            except OSError:
                continue
            st = os.fstat(fd)
            if (
                (st.st_dev, st.st_ino) in self._by_inode
                or (st.st_dev, st.st_ino) == (old.dev, old.ino)
                or _fingerprint_fd(fd) != old.fingerprint
                or (best is not None and best[0] >= st.st_mtime)
            ):
                os.close(fd)
                continue
            if best is not None:
                os.close(best[1])
            best = (st.st_mtime, fd, st)
        if best is None:
            return None
        _, fd, st = best
        fid = FileId(st.st_dev, st.st_ino, old.fingerprint)
        copy = _File(fd, fid, min(offset, st.st_size), dirty=st.st_size <= offset, now=now)
        self._by_inode[copy.key] = copy
        return copy

    def _rotate_out(self, g: _Group, f: _File, now: float) -> None:
        try:
            gone = os.fstat(f.fd).st_nlink == 0
        except OSError:
            gone = True
        kind = "delete" if gone else "rename"
        self._rotations[kind].inc()
        log.info("file_rotated", site=self.site, kind=kind, path=g.path, offset=f.offset)
        f.changed_at = now
        f.seen_size = -1
        g.rotated.append(f)
        g.current = None

    def _finish(self, g: _Group, f: _File) -> None:
        g.rotated.remove(f)
        self._by_inode.pop(f.key, None)
        f.close()
        self._retiring.extend(f.pending_retire)
        self._retiring.append(f.id)
        log.info("file_done", site=self.site, path=g.path, offset=f.offset)

    # -- discovery ------------------------------------------------------------

    def _glob(self) -> list[str]:
        paths: dict[str, None] = {}
        skipped: set[str] = set()
        for pattern in self._patterns:
            if _is_glob(pattern):
                for p in glob_matches(pattern, skipped):
                    paths[p] = None
            else:
                paths[pattern] = None
        for p in sorted(skipped - self._skipped_compressed):
            log.info(
                "file_skipped_compressed", site=self.site, path=p, hint=skipped_hint(self.site, p)
            )
        self._skipped_compressed = skipped
        return list(paths)

    def _scan(self, now: float, *, first: bool) -> None:
        present: set[str] = set()
        for path in self._glob():
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            present.add(path)
            g = self._groups.get(path)
            if g is None:
                g = self._groups[path] = _Group(path)
            cur = g.current
            key = (st.st_dev, st.st_ino)
            if cur is not None and cur.key == key:
                continue
            known = self._by_inode.get(key)
            if known is not None:
                if known in g.rotated:
                    # Renamed back to where it was: follow it there again.
                    g.rotated.remove(known)
                    if cur is not None:
                        self._rotate_out(g, cur, now)
                    g.current = known
                continue
            try:
                fd = _open(path)
            except OSError as exc:
                error = exc.strerror or str(exc)
                if self.unreadable.get(path) != error:
                    self.unreadable[path] = error
                    log.warning(
                        "file_open_failed",
                        site=self.site,
                        path=path,
                        error=error,
                        hint="the daemon's user must be able to read the log (on Debian: the "
                        "adm group); retried at every scan, logged again only if the error changes",
                    )
                continue
            if self.unreadable.pop(path, None) is not None:
                log.info("file_open_recovered", site=self.site, path=path)
            new = self._start(path, fd, now, first=first)
            if cur is not None:
                self._rotate_out(g, cur, now)
            g.current = new
            self._by_inode[new.key] = new
        for g in self._groups.values():
            if g.current is not None and g.path not in present:
                self._rotate_out(g, g.current, now)
        for path in [p for p in self.unreadable if p not in present]:
            del self.unreadable[path]  # gone: nothing left to read there

    def _start(self, path: str, fd: int, now: float, *, first: bool) -> _File:
        """A file newly found at ``path``: where to start reading it."""
        st = os.fstat(fd)
        fid = FileId(st.st_dev, st.st_ino, _fingerprint_fd(fd))
        cp = self._take_checkpoint(fid)
        if cp is not None:
            if st.st_size >= cp.offset:
                log.info("file_resumed", site=self.site, path=path, offset=cp.offset)
                f = _File(fd, fid, cp.offset, dirty=cp.file != fid, now=now)
                if f.dirty:
                    # Checkpointed before its first line: the identity with the head
                    # is written with the next chunk, and only then may this one go.
                    f.pending_retire.append(cp.file)
                return f
            # Same head but shorter: truncated and rewritten with the same first line.
            self._rotations["truncate"].inc()
            log.info("file_rotated", site=self.site, kind="truncate", path=path, offset=0)
            return _File(fd, fid, 0, dirty=True, now=now)
        if first and path not in self._seen_paths and self._start_at == "end":
            offset = self._last_line_end(fd, st.st_size)
        else:
            # Appeared while running, or replaced the file we had a checkpoint for:
            # every line of it is new.
            offset = 0
        log.info("file_opened", site=self.site, path=path, offset=offset)
        return _File(fd, fid, offset, dirty=True, now=now)

    def _last_line_end(self, fd: int, size: int) -> int:
        """Just after the last newline, so ``start_at: end`` never starts mid-line."""
        window = min(size, self._max_line + 2)
        tail = os.pread(fd, window, size - window)
        nl = tail.rfind(b"\n")
        if nl >= 0:
            return size - window + nl + 1
        return 0 if window == size else size

    def _take_checkpoint(self, fid: FileId) -> Checkpoint | None:
        """The checkpoint of the file ``fid`` names: same inode and same head, or same
        inode and a checkpoint taken before the file had a complete line (offset 0: the
        file is read from its start either way, under the identity it has now)."""
        cp = self._restored.get((fid.dev, fid.ino))
        if cp is not None and (
            cp.file.fingerprint == fid.fingerprint or (not cp.file.fingerprint and cp.offset == 0)
        ):
            return self._restored.pop((fid.dev, fid.ino))
        return None

    def _restore_rotated(self, now: float) -> None:
        """Find checkpointed files rotated away while we were down; forget the others.

        A checkpointed file is looked for among the rotated siblings of its path:
        by inode, then (copytruncate) as a plain copy with its head, then as a
        compressed sibling whose decompressed head is its head. Then, whether or
        not it was found, the plain siblings written after it (files that were at
        the path and rotated away while we were down, never seen) are read whole.
        """
        left = list(self._restored.values())
        self._restored.clear()
        if not left:
            return
        found: dict[str, list[tuple[float, _File]]] = {}
        orphaned: dict[str, list[Checkpoint]] = {}
        unmatched: list[Checkpoint] = []
        sibling_cache: dict[str, list[tuple[str, os.stat_result]]] = {}
        for cp in left:
            if not self._watched(cp.path) or is_compressed_name(cp.path):
                # Unwatched now, or a compressed file a glob matched (followed by
                # mistake before compressed files were skipped): nothing to resume.
                self._retiring.append(cp.file)
                continue
            sibs = sibling_cache.get(cp.path)
            if sibs is None:
                sibs = sibling_cache[cp.path] = _stat_siblings(cp.path)
            f = self._adopt(cp, sibs, now, same_inode=True)
            if f is None:
                unmatched.append(cp)
            else:
                found.setdefault(cp.path, []).append((f.changed_at, f))
        for cp in unmatched:
            f = None
            if cp.file.fingerprint:
                # copytruncate while we were down: the unread lines are in the copy.
                f = self._adopt(cp, sibling_cache[cp.path], now, same_inode=False)
                if f is not None:
                    log.info("copy_found", site=self.site, path=cp.path, offset=cp.offset)
                else:
                    f = self._adopt_compressed(cp)
            if f is None or f.id != cp.file:
                # A copy has an identity of its own (written with its first chunk);
                # a compressed file keeps this one, retired when it is finished.
                self._retiring.append(cp.file)
            if f is None:
                orphaned.setdefault(cp.path, []).append(cp)
            else:
                found.setdefault(cp.path, []).append((f.changed_at, f))
        for path in sorted(found.keys() | orphaned.keys()):
            files = found.get(path, [])
            lost = orphaned.get(path, [])
            unreadable = [
                name
                for name, _ in (_stat_siblings(path, compressed=True) if lost else [])
                if _head(name) is None
            ]
            for cp in lost:
                log.warning(
                    "checkpoint_orphaned",
                    site=self.site,
                    path=cp.path,
                    offset=cp.offset,
                    unreadable_siblings=unreadable,
                    hint=f"the file that was at {cp.path}, read up to byte {cp.offset}, is "
                    "neither among its rotated siblings nor among those compressed with gzip, "
                    "bzip2 or xz (deleted, or compressed in another format): its later lines "
                    "were not sent. If you still have it (decompressed), send them with "
                    + _BACKFILL.format(site=self.site, file="FILE")
                    + f" (it sends the whole file: the lines before byte {cp.offset} again)",
                )
            # Which unseen siblings came after the checkpointed file, and so hold lines
            # never read: those modified at or after it ("at": coarse timestamps; a
            # file created after it was rotated away was last written after it was,
            # and logrotate and gzip keep a file's mtime when they compress it). The
            # older ones were read and retired before, or predate a start_at=end
            # start, and must not be read (again). A file with a checkpoint of its
            # own is in _by_inode already, and one starting like a checkpointed file
            # is a copy of it: neither is read from its start.
            # A Checkpoint carries no time, so when the file itself is gone, the
            # newest compressed sibling stands in for it: rotation compresses files
            # as they age (delaycompress keeps only the newest rotated one plain), so
            # a plain file newer than every compressed one came after it. With no
            # compressed sibling at all, the file was deleted by the rotation count
            # (`rotate N`, oldest first), so every sibling left came after it; only a
            # file deleted by hand would make older plain files read again (with the
            # request ids they had: duplicates tirreno can tell, rather than a loss).
            if files:
                since = max(t for t, _ in files)
            else:
                since = max(
                    (st.st_mtime for _, st in _stat_siblings(path, compressed=True)),
                    default=-math.inf,
                )
            g = self._groups.get(path)
            if g is None:
                g = self._groups[path] = _Group(path)
            files.extend(self._rotated_since(path, since))
            files.sort(key=lambda t: t[0])
            g.rotated[:0] = [f for _, f in files]
            for _, f in files:
                f.changed_at = now
                self._rotations["rename"].inc()
                log.info("rotated_file_found", site=self.site, path=path, offset=f.offset)

    def _rotated_since(self, path: str, since: float) -> list[tuple[float, _File]]:
        """Plain siblings of ``path`` never seen and modified at ``since`` or later.

        Rotations while we were down leave files that were created and rotated
        away without ever being checkpointed: they sit between the checkpointed
        file and the one now at the path, and are read from their start, oldest
        first. Compressed ones are not read (only a checkpointed file's rest is):
        a warning names each, with the command that sends it.
        """
        out: list[tuple[float, _File]] = []
        for name, st in _stat_siblings(path):
            key = (st.st_dev, st.st_ino)
            if name == path or key in self._by_inode or st.st_mtime < since:
                continue
            try:
                fd = _open(name)
            except OSError:
                continue
            st2 = os.fstat(fd)
            fp = _fingerprint_fd(fd)
            if (st2.st_dev, st2.st_ino) != key or fp in self._checkpointed_heads:
                os.close(fd)
                continue
            f = _File(fd, FileId(*key, fp), 0, dirty=True, now=st2.st_mtime)
            self._by_inode[key] = f
            out.append((st2.st_mtime, f))
            log.info("unseen_rotated_file_found", site=self.site, path=path, file=name)
        if since > -math.inf:
            for name, st in _stat_siblings(path, compressed=True):
                if (st.st_dev, st.st_ino) in self._by_inode or st.st_mtime <= since:
                    continue
                if _head(name) in self._checkpointed_heads:
                    continue
                log.warning(
                    "rotated_file_not_read",
                    site=self.site,
                    path=path,
                    file=name,
                    hint="rotated and compressed while the shipper was down, never read; send "
                    "it with " + _BACKFILL.format(site=self.site, file=name) + " (backfill reads "
                    "gzip, bzip2 and xz; decompress other formats first)",
                )
        return out

    def _adopt_compressed(self, cp: Checkpoint) -> _File | None:
        """The checkpointed file, compressed while we were down: the newest compressed
        sibling whose decompressed head is the checkpoint's.

        Read from the checkpoint's offset in the decompressed text under the
        checkpoint's identity, so the lines get the request ids a live read gave
        them, and the checkpoint moves on as if the file had not been compressed.
        """
        sibs = _stat_siblings(cp.path, compressed=True)
        for name, st in sorted(sibs, key=lambda t: -t[1].st_mtime):
            key = (st.st_dev, st.st_ino)
            if key in self._by_inode:
                continue
            try:
                fd = _open(name)
            except OSError:
                continue
            z = None
            try:
                st2 = os.fstat(fd)
                z = _decompressed(name, fd) if (st2.st_dev, st2.st_ino) == key else None
                if (
                    z is not None
                    and fingerprint(z.read_at(0, FINGERPRINT_MAX)) == cp.file.fingerprint
                ):
                    f = _File(fd, cp.file, cp.offset, dirty=False, now=st2.st_mtime, z=z, key=key)
                    self._by_inode[key] = f
                    log.info(
                        "compressed_file_found",
                        site=self.site,
                        path=cp.path,
                        file=name,
                        offset=cp.offset,
                    )
                    return f
            except DECOMPRESS_ERRORS:
                pass
            if z is not None:
                z.close()
            os.close(fd)
        return None

    def _adopt(
        self,
        cp: Checkpoint,
        sibs: list[tuple[str, os.stat_result]],
        now: float,
        *,
        same_inode: bool,
    ) -> _File | None:
        best: tuple[float, int, os.stat_result, str] | None = None
        for name, st in sibs:
            key = (st.st_dev, st.st_ino)
            if key in self._by_inode:
                continue
            if same_inode:
                if key != (cp.file.dev, cp.file.ino):
                    continue
            elif st.st_size < cp.offset or (best is not None and best[0] >= st.st_mtime):
                continue
            try:
                fd = _open(name)
            except OSError:
                continue
            st2 = os.fstat(fd)
            fp = _fingerprint_fd(fd)
            # A checkpoint without a fingerprint was taken before the file had a
            # complete line (offset 0): its inode is all there is to know it by.
            unknown_head = same_inode and not cp.file.fingerprint
            if (st2.st_dev, st2.st_ino) != key or (fp != cp.file.fingerprint and not unknown_head):
                os.close(fd)
                continue
            if best is not None:
                os.close(best[1])
            best = (st.st_mtime, fd, st2, fp)
            if same_inode:
                break
        if best is None:
            return None
        mtime, fd, st, fp = best
        fid = FileId(st.st_dev, st.st_ino, fp if not cp.file.fingerprint else cp.file.fingerprint)
        upgraded = fid != cp.file
        f = _File(fd, fid, min(cp.offset, st.st_size), dirty=upgraded, now=mtime)
        if upgraded:
            # The new identity's checkpoint is written with the next chunk (dirty
            # forces one); only then may the old one go.
            f.pending_retire.append(cp.file)
        self._by_inode[f.key] = f
        return f

    def _watched(self, path: str) -> bool:
        return any(
            path == p or (_is_glob(p) and fnmatch.fnmatchcase(path, p)) for p in self._patterns
        )

    def _drop_empty_groups(self) -> None:
        for path in [p for p, g in self._groups.items() if g.current is None and not g.rotated]:
            del self._groups[path]

    @staticmethod
    def _size(f: _File) -> int:
        if f.z is not None:
            return f.z.eof_at if f.z.eof_at >= 0 else max(f.offset, f.z.size_hint)
        try:
            return os.fstat(f.fd).st_size
        except OSError:
            return f.offset


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_MAGIC for c in pattern)


def skipped_hint(site: str, path: str) -> str:
    """Why a compressed file a glob matches is not followed, and how to send it."""
    return (
        "a compressed file is a rotated copy and is never followed (the rest of a "
        "checkpointed file compressed while the shipper was down is read at start); "
        "to send an old rotated file: " + _BACKFILL.format(site=site, file=path)
    )


def glob_matches(pattern: str, skipped: set[str] | None = None) -> list[str]:
    """What the tail follows of a glob's matches now, sorted: all but compressed files.

    The compressed matches (``access.log.2.gz`` for ``access.log*``) are added to
    ``skipped``. `reader.followed_files` (the dry run) uses this too.
    """
    out = []
    for p in sorted(glob.glob(pattern)):
        if is_compressed_name(p):
            if skipped is not None:
                skipped.add(p)
        else:
            out.append(p)
    return out


def _siblings(path: str, *, compressed: bool = False) -> list[str]:
    """Rotated names of ``path`` in its folder (``access.log.1``, ``access.log-20261129``);
    with ``compressed``, the compressed ones (``access.log.2.gz``) instead."""
    folder, base = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return [
        os.path.join(folder, n)
        for n in sorted(names)
        if n != base and n.startswith(base) and is_compressed_name(n) == compressed
    ]


def _head(name: str) -> str | None:
    """The fingerprint of a compressed file's decompressed head; None if unreadable."""
    try:
        fd = _open(name)
    except OSError:
        return None
    z = None
    try:
        z = _decompressed(name, fd)
        return None if z is None else fingerprint(z.read_at(0, FINGERPRINT_MAX))
    except DECOMPRESS_ERRORS:
        return None
    finally:
        if z is not None:
            z.close()
        os.close(fd)


def _stat_siblings(path: str, *, compressed: bool = False) -> list[tuple[str, os.stat_result]]:
    out = []
    for name in _siblings(path, compressed=compressed):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((name, st))
    return out


class _SetEvent(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class Waker:
    """Sets ``event`` as soon as anything changes in ``dirs``; a wake-up, never the truth."""

    def __init__(self, dirs: Sequence[str], event: threading.Event) -> None:
        self._dirs = list(dirs)
        self._observer: Any = Observer()
        self._handler = _SetEvent(event)
        self._started = False

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()
        self._started = True
        # Scheduled on the running observer, so one missing folder fails alone.
        for d in self._dirs:
            try:
                self._observer.schedule(self._handler, d, recursive=False)
            except OSError as exc:
                # The periodic stat still covers this folder; only latency suffers.
                log.warning("watch_failed", path=d, error=str(exc))

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._started = False
