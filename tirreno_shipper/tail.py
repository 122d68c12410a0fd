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
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import os
import stat
import threading
import time
from collections.abc import Sequence
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
# log's bytes any more, so they are never candidates for a checkpoint.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")
_GLOB_MAGIC = frozenset("*?[")


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


class _File:
    """An open file being followed. Mutable on purpose: it is the Tailer's private state."""

    __slots__ = (
        "changed_at",
        "dirty",
        "discard_scan",
        "fd",
        "id",
        "offset",
        "pending_retire",
        "seen_size",
    )

    def __init__(self, fd: int, fid: FileId, offset: int, *, dirty: bool, now: float) -> None:
        self.fd = fd
        self.id = fid
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

    @property
    def key(self) -> tuple[int, int]:
        return (self.id.dev, self.id.ino)


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
        self._restored: dict[tuple[int, int], list[Checkpoint]] = {}
        for cp in checkpoints:
            self._restored.setdefault((cp.file.dev, cp.file.ino), []).append(cp)
        self._seen_paths = {cp.path for cp in checkpoints}
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
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self._by_inode.clear()
        self._groups.clear()

    # -- reading --------------------------------------------------------------

    def _poll_group(self, g: _Group, now: float) -> Chunk | None:
        # Twice at most: a truncation found on the first round resets the file and
        # may queue the copy that copytruncate left beside it, to be read first.
        for _ in range(2):
            for f in list(g.rotated):
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
        data = os.pread(f.fd, min(avail, self._read_size), f.offset)
        if not data:
            return self._emit(g, f, f.offset, [], []) if f.dirty else None
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
        elif final and rest and len(data) == avail:
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
            data = os.pread(f.fd, min(self._read_size, size - scan), scan)
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
        """The copy copytruncate made: same head, another inode, at least ``offset`` long.

        The lines between our offset and the truncation are only in the copy.
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
                or st.st_size < offset
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
        copy = _File(fd, fid, offset, dirty=False, now=now)
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
        os.close(f.fd)
        self._retiring.extend(f.pending_retire)
        self._retiring.append(f.id)
        log.info("file_done", site=self.site, path=g.path, offset=f.offset)

    # -- discovery ------------------------------------------------------------

    def _glob(self) -> list[str]:
        paths: dict[str, None] = {}
        for pattern in self._patterns:
            if _is_glob(pattern):
                for p in sorted(glob.glob(pattern)):
                    paths[p] = None
            else:
                paths[pattern] = None
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
                return _File(fd, fid, cp.offset, dirty=False, now=now)
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
        cps = self._restored.get((fid.dev, fid.ino))
        if not cps:
            return None
        for i, cp in enumerate(cps):
            if cp.file.fingerprint == fid.fingerprint:
                del cps[i]
                return cp
        return None

    def _restore_rotated(self, now: float) -> None:
        """Find checkpointed files rotated away while we were down; forget the others."""
        left = [cp for cps in self._restored.values() for cp in cps]
        self._restored.clear()
        if not left:
            return
        found: dict[str, list[tuple[float, _File]]] = {}
        unmatched: list[Checkpoint] = []
        sibling_cache: dict[str, list[tuple[str, os.stat_result]]] = {}
        for cp in left:
            if not self._watched(cp.path):
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
            # copytruncate while we were down: the unread lines are in the copy.
            f = None
            if cp.file.fingerprint:
                f = self._adopt(cp, sibling_cache[cp.path], now, same_inode=False)
            # Either way this identity's checkpoint is done with.
            self._retiring.append(cp.file)
            if f is None:
                log.info("checkpoint_orphaned", site=self.site, path=cp.path, offset=cp.offset)
            else:
                log.info("copy_found", site=self.site, path=cp.path, offset=cp.offset)
                found.setdefault(cp.path, []).append((f.changed_at, f))
        for path, files in found.items():
            g = self._groups.get(path)
            if g is None:
                g = self._groups[path] = _Group(path)
            files.extend(self._rotated_since(path, max(t for t, _ in files)))
            files.sort(key=lambda t: t[0])
            g.rotated[:0] = [f for _, f in files]
            for _, f in files:
                f.changed_at = now
                self._rotations["rename"].inc()
                log.info("rotated_file_found", site=self.site, path=path, offset=f.offset)

    def _rotated_since(self, path: str, newest: float) -> list[tuple[float, _File]]:
        """Siblings written after the newest checkpointed rotated file, never seen.

        Two rotations while we were down leave a file that was created and
        rotated away without ever being checkpointed: it sits between the
        file we know and the one now at the path, and is read from its start.
        Older siblings were finished (and their checkpoints retired) before.
        """
        out: list[tuple[float, _File]] = []
        for name, st in _stat_siblings(path):
            key = (st.st_dev, st.st_ino)
            if name == path or key in self._by_inode or st.st_mtime <= newest:
                continue
            try:
                fd = _open(name)
            except OSError:
                continue
            st2 = os.fstat(fd)
            if (st2.st_dev, st2.st_ino) != key:
                os.close(fd)
                continue
            f = _File(fd, FileId(*key, _fingerprint_fd(fd)), 0, dirty=True, now=st2.st_mtime)
            self._by_inode[key] = f
            out.append((st2.st_mtime, f))
            log.info("unseen_rotated_file_found", site=self.site, path=path, file=name)
        return out

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
        try:
            return os.fstat(f.fd).st_size
        except OSError:
            return f.offset


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_MAGIC for c in pattern)


def _siblings(path: str) -> list[str]:
    """Rotated names of ``path`` in its folder (``access.log.1``, ``access.log-20261129``)."""
    folder, base = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return [
        os.path.join(folder, n)
        for n in sorted(names)
        if n != base and n.startswith(base) and not n.lower().endswith(_COMPRESSED)
    ]


def _stat_siblings(path: str) -> list[tuple[str, os.stat_result]]:
    out = []
    for name in _siblings(path):
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
