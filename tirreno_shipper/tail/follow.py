"""Following log files live: offsets, partial lines, rotation, globs.

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

Files are known by their identity (`identity`); compressed rotated files are
never followed, not even when a glob matches them (`compressed`), except the
rest of a checkpointed file found compressed at start-up (`recovery`).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import Literal

import structlog

from tirreno_shipper import metrics
from tirreno_shipper.records import Checkpoint, Chunk, FileId
from tirreno_shipper.tail.compressed import DECOMPRESS_ERRORS, UNKNOWN_END
from tirreno_shipper.tail.container import Framing
from tirreno_shipper.tail.files import File, FileStatus, Group
from tirreno_shipper.tail.identity import Opened, fingerprint_fd, open_file, open_ro
from tirreno_shipper.tail.lines import split_lines
from tirreno_shipper.tail.paths import BACKFILL, glob_matches, is_glob, siblings, skipped_hint
from tirreno_shipper.tail.recovery import Recovery

log = structlog.get_logger(__name__)


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
        framing: Framing | None = None,
        select: Callable[[str], bool] | None = None,
    ) -> None:
        self.site = site
        self._patterns = list(patterns)
        self._start_at = start_at
        self._max_line = max_line_bytes
        if framing is not None:
            # The framed lines may be longer than the records they carry parts of.
            self._max_line = max(max_line_bytes, framing.RAW_LINE_MAX)
        self._chunk_lines = max(1, chunk_lines)
        # A line of the maximum length plus its "\r\n" always fits in one read.
        self._read_size = max(chunk_bytes, self._max_line + 2)
        self._scan_interval = scan_interval
        self._grace = rotated_grace
        # Container logs: the runtime's framing unwrapped (see `container`), and
        # which of the files the patterns match belong to selected containers.
        self._framing = framing
        self._select = select
        self._groups: dict[str, Group] = {}
        self._by_inode: dict[tuple[int, int], File] = {}
        # Identities whose checkpoints are obsolete, held back until a poll() finds
        # nothing to do: only then is every file's newer state surely persisted, so
        # deleting them can never make a restart take a file for a new one.
        self._retiring: list[FileId] = []
        self._retired: list[FileId] = []
        self._inflight: tuple[Chunk, File, list[FileId]] | None = None
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
        f: File | None
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
                out.append(FileStatus(g.path, f.id, f.offset, f.size()))
        return out

    def lag_bytes(self) -> int:
        return sum(max(0, f.size() - f.offset) for f in self._by_inode.values())

    def watch_dirs(self) -> list[str]:
        """Existing folders holding the patterns' files (globbed folder parts expanded)."""
        dirs: set[str] = set()
        for pattern in self._patterns:
            d = os.path.dirname(os.path.abspath(pattern))
            cands = glob.glob(d) if is_glob(d) else [d]
            dirs.update(c for c in cands if os.path.isdir(c))
        return sorted(dirs)

    def close(self) -> None:
        for f in self._by_inode.values():
            f.close()
        self._by_inode.clear()
        self._groups.clear()

    # -- reading --------------------------------------------------------------

    def _poll_group(self, g: Group, now: float) -> Chunk | None:
        # Twice at most: a truncation found on the first round resets the file and
        # may queue the copy that copytruncate left beside it, to be read first.
        for _ in range(2):
            for f in list(g.rotated):
                if f.z is not None:
                    # Compressed, so complete: read to its end at once, no grace.
                    end = f.z.eof_at if f.z.eof_at >= 0 else UNKNOWN_END
                    chunk = self._read(g, f, end, final=True, verify=False)
                    if chunk is not None:
                        return chunk
                    self._finish(g, f)
                    continue
                size = f.size()
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

    def _read(self, g: Group, f: File, size: int, *, final: bool, verify: bool) -> Chunk | None:
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
            fp = fingerprint_fd(f.fd)
            if fp != f.id.fingerprint:
                if f.id.fingerprint:
                    # Rewritten in place and already longer than our offset: what we
                    # just read is not the continuation of what we had.
                    self._truncated(g, f, time.monotonic())
                    return None
                f.pending_retire.append(f.id)
                f.id = FileId(f.id.dev, f.id.ino, fp)
        lines, skipped, pos, rest = split_lines(data, f.offset, self._max_line, self._chunk_lines)
        if pos == f.offset:  # no newline in what was read
            if len(rest) > self._max_line:
                f.discard_scan = f.offset + len(data)
                return self._discard(g, f, size, final)
            if final and rest and at_end:
                # The file is done: its unterminated last line is a line after all.
                lines.append((pos, rest[:-1] if rest[-1:] == b"\r" else rest))
                pos += len(rest)
        for off, _reason in skipped:
            log.warning("line_too_long", site=self.site, path=g.path, offset=off)
        if self._framing is not None:
            pos = self._unframe(f, lines, skipped, pos, len(data), done=final and at_end)
        if not lines and not skipped and not f.dirty:
            return None
        return self._emit(g, f, pos, lines, skipped)

    def _unframe(
        self,
        f: File,
        lines: list[tuple[int, bytes]],
        skipped: list[tuple[int, str]],
        end: int,
        read: int,
        *,
        done: bool,
    ) -> int:
        """Replace the framed ``lines`` by the records in them (in place); the new end."""
        assert self._framing is not None
        framed = list(lines)
        done = done and end == f.offset + read
        records, bad, new_end = self._framing.unwrap(framed, end, final=done)
        if new_end == f.offset and framed and read >= self._read_size:
            # One record's parts fill a whole read: it can never be complete in
            # one, so it is taken as it is (and skipped as too long); its last
            # parts then read as a record of their own (counted as unparseable).
            records, bad, new_end = self._framing.unwrap(framed, end, final=True)
        lines[:] = records
        # What lies past the new end is read again with the next chunk.
        skipped[:] = [s for s in [*skipped, *bad] if s[0] < new_end]
        return new_end

    def _discard(self, g: Group, f: File, size: int, final: bool) -> Chunk | None:
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

    def _pread(self, g: Group, f: File, n: int, off: int) -> bytes:
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
                + BACKFILL.format(site=self.site, file="FILE"),
            )
            return b""

    def _skip(self, g: Group, f: File, end: int) -> Chunk:
        log.warning("line_too_long", site=self.site, path=g.path, offset=f.offset)
        return self._emit(g, f, end, [], [(f.offset, "too_long")])

    def _emit(
        self,
        g: Group,
        f: File,
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

    def _truncated(self, g: Group, f: File, now: float) -> None:
        old, old_offset = f.id, f.offset
        self._rotations["truncate"].inc()
        copy = self._find_copy(g.path, old, old_offset, now)
        if copy is not None:
            g.rotated.append(copy)
        f.pending_retire.append(old)
        f.id = FileId(old.dev, old.ino, fingerprint_fd(f.fd))
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

    def _find_copy(self, path: str, old: FileId, offset: int, now: float) -> File | None:
        """The copy copytruncate made: same head, another inode.

        The lines between our offset and the truncation are only in the copy. A copy
        shorter than our offset (we read lines written after it was taken) holds
        nothing new, but is followed all the same, at its end: its checkpoint says
        it was read, or a restart would take it for a file rotated while we were
        down and read it again.
        """
        if not old.fingerprint:
            return None
        best: Opened | None = None
        for cand in siblings(path):
            o = open_file(cand)
            if o is None:
                continue
            if (
                o.key in self._by_inode
                or o.key == (old.dev, old.ino)
                or o.fingerprint != old.fingerprint
                or (best is not None and best.st.st_mtime >= o.st.st_mtime)
            ):
                os.close(o.fd)
                continue
            if best is not None:
                os.close(best.fd)
            best = o
        if best is None:
            return None
        st = best.st
        fid = FileId(st.st_dev, st.st_ino, old.fingerprint)
        copy = File(best.fd, fid, min(offset, st.st_size), dirty=st.st_size <= offset, now=now)
        self._by_inode[copy.key] = copy
        return copy

    def _rotate_out(self, g: Group, f: File, now: float) -> None:
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

    def _finish(self, g: Group, f: File) -> None:
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
            if is_glob(pattern):
                for p in glob_matches(pattern, skipped):
                    paths[p] = None
            else:
                paths[pattern] = None
        if self._select is not None:
            paths = {p: None for p in paths if self._select(p)}
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
                g = self._groups[path] = Group(path)
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
            fd = self._open_logged(path)
            if fd is None:
                continue
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

    def _open_logged(self, path: str) -> int | None:
        """A descriptor for ``path``, or None; a failure is logged once per distinct error."""
        try:
            fd = open_ro(path)
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
            return None
        if self.unreadable.pop(path, None) is not None:
            log.info("file_open_recovered", site=self.site, path=path)
        return fd

    def _start(self, path: str, fd: int, now: float, *, first: bool) -> File:
        """A file newly found at ``path``: where to start reading it."""
        st = os.fstat(fd)
        fid = FileId(st.st_dev, st.st_ino, fingerprint_fd(fd))
        cp = self._take_checkpoint(fid)
        if cp is not None:
            if st.st_size >= cp.offset:
                log.info("file_resumed", site=self.site, path=path, offset=cp.offset)
                f = File(fd, fid, cp.offset, dirty=cp.file != fid, now=now)
                if f.dirty:
                    # Checkpointed before its first line: the identity with the head
                    # is written with the next chunk, and only then may this one go.
                    f.pending_retire.append(cp.file)
                return f
            # Same head but shorter: truncated and rewritten with the same first line.
            self._rotations["truncate"].inc()
            log.info("file_rotated", site=self.site, kind="truncate", path=path, offset=0)
            return File(fd, fid, 0, dirty=True, now=now)
        if first and path not in self._seen_paths and self._start_at == "end":
            offset = self._last_line_end(fd, st.st_size)
        else:
            # Appeared while running, or replaced the file we had a checkpoint for:
            # every line of it is new.
            offset = 0
        log.info("file_opened", site=self.site, path=path, offset=offset)
        return File(fd, fid, offset, dirty=True, now=now)

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
        """Find checkpointed files rotated away while we were down (see `recovery`);
        forget the others."""
        left = list(self._restored.values())
        self._restored.clear()
        if not left:
            return
        recovery = Recovery(
            self.site,
            self._by_inode,
            self._checkpointed_heads,
            self._watched,
            self._rotations["rename"],
        )
        found = recovery.run(left, now)
        self._retiring.extend(recovery.retiring)
        for path, files in found.items():
            g = self._groups.get(path)
            if g is None:
                g = self._groups[path] = Group(path)
            g.rotated[:0] = files

    def _watched(self, path: str) -> bool:
        if self._select is not None and not self._select(path):
            return False
        return any(
            path == p or (is_glob(p) and fnmatch.fnmatchcase(path, p)) for p in self._patterns
        )

    def _drop_empty_groups(self) -> None:
        for path in [p for p, g in self._groups.items() if g.current is None and not g.rotated]:
            del self._groups[path]
