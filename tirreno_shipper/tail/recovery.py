"""Start-up recovery: where the checkpointed files went while the shipper was down.

A checkpointed file is looked for among the rotated siblings of its path: by
inode, then (copytruncate) as a plain copy with its head, then as a compressed
sibling whose decompressed head is its head. Then, whether or not it was found,
the plain siblings written after it (files that were at the path and rotated
away while we were down, never seen) are read whole.

A compressed file is read only here, when the file a checkpoint names survives
only compressed (``delaycompress`` and two rotations while the shipper was
down): its decompressed text is read from the checkpoint's offset to its end,
under the checkpoint's own identity, so the request ids are those a live read
gives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import structlog

from tirreno_shipper.records import Checkpoint, FileId
from tirreno_shipper.tail.compressed import (
    DECOMPRESS_ERRORS,
    decompressed,
    decompressed_head,
    is_compressed_name,
)
from tirreno_shipper.tail.files import File
from tirreno_shipper.tail.identity import FINGERPRINT_MAX, Opened, fingerprint, open_file
from tirreno_shipper.tail.paths import BACKFILL, stat_siblings

log = structlog.get_logger(__name__)


class Recovery:
    """One start-up's search for the checkpointed files not found at their paths.

    ``by_inode`` is the Tailer's table of open files: the files found here are
    added to it, and a file in it is never taken twice. ``retiring`` receives the
    identities whose checkpoints are obsolete, in the order they became so.
    """

    def __init__(
        self,
        site: str,
        by_inode: dict[tuple[int, int], File],
        checkpointed_heads: set[str],
        watched: Callable[[str], bool],
        renames: Any,
    ) -> None:
        self.site = site
        self._by_inode = by_inode
        self._checkpointed_heads = checkpointed_heads
        self._watched = watched
        self._renames = renames
        self.retiring: list[FileId] = []

    def run(self, left: list[Checkpoint], now: float) -> dict[str, list[File]]:
        """The files to read before the one at each path, oldest first, per path."""
        found: dict[str, list[tuple[float, File]]] = {}
        orphaned: dict[str, list[Checkpoint]] = {}
        unmatched: list[Checkpoint] = []
        sibling_cache: dict[str, list[tuple[str, os.stat_result]]] = {}
        for cp in left:
            if not self._watched(cp.path) or is_compressed_name(cp.path):
                # Unwatched now, or a compressed file a glob matched (followed by
                # mistake before compressed files were skipped): nothing to resume.
                self.retiring.append(cp.file)
                continue
            sibs = sibling_cache.get(cp.path)
            if sibs is None:
                sibs = sibling_cache[cp.path] = stat_siblings(cp.path)
            f = self._adopt(cp, sibs, same_inode=True)
            if f is None:
                unmatched.append(cp)
            else:
                found.setdefault(cp.path, []).append((f.changed_at, f))
        for cp in unmatched:
            f = None
            if cp.file.fingerprint:
                # copytruncate while we were down: the unread lines are in the copy.
                f = self._adopt(cp, sibling_cache[cp.path], same_inode=False)
                if f is not None:
                    log.info("copy_found", site=self.site, path=cp.path, offset=cp.offset)
                else:
                    f = self._adopt_compressed(cp)
            if f is None or f.id != cp.file:
                # A copy has an identity of its own (written with its first chunk);
                # a compressed file keeps this one, retired when it is finished.
                self.retiring.append(cp.file)
            if f is None:
                orphaned.setdefault(cp.path, []).append(cp)
            else:
                found.setdefault(cp.path, []).append((f.changed_at, f))
        out: dict[str, list[File]] = {}
        for path in sorted(found.keys() | orphaned.keys()):
            files = found.get(path, [])
            lost = orphaned.get(path, [])
            if lost:
                self._orphaned(path, lost)
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
                    (st.st_mtime for _, st in stat_siblings(path, compressed=True)),
                    default=-math.inf,
                )
            files.extend(self._rotated_since(path, since))
            files.sort(key=lambda t: t[0])
            out[path] = [f for _, f in files]
            for _, f in files:
                f.changed_at = now
                self._renames.inc()
                log.info("rotated_file_found", site=self.site, path=path, offset=f.offset)
        return out

    def _orphaned(self, path: str, lost: list[Checkpoint]) -> None:
        unreadable = [
            name
            for name, _ in stat_siblings(path, compressed=True)
            if decompressed_head(name) is None
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
                + BACKFILL.format(site=self.site, file="FILE")
                + f" (it sends the whole file: the lines before byte {cp.offset} again)",
            )

    def _rotated_since(self, path: str, since: float) -> list[tuple[float, File]]:
        """Plain siblings of ``path`` never seen and modified at ``since`` or later.

        Rotations while we were down leave files that were created and rotated
        away without ever being checkpointed: they sit between the checkpointed
        file and the one now at the path, and are read from their start, oldest
        first. Compressed ones are not read (only a checkpointed file's rest is):
        a warning names each, with the command that sends it.
        """
        out: list[tuple[float, File]] = []
        for name, st in stat_siblings(path):
            key = (st.st_dev, st.st_ino)
            if name == path or key in self._by_inode or st.st_mtime < since:
                continue
            o = open_file(name, key)
            if o is None:
                continue
            if o.fingerprint in self._checkpointed_heads:
                os.close(o.fd)
                continue
            f = File(o.fd, o.file_id(), 0, dirty=True, now=o.st.st_mtime)
            self._by_inode[key] = f
            out.append((o.st.st_mtime, f))
            log.info("unseen_rotated_file_found", site=self.site, path=path, file=name)
        if since > -math.inf:
            for name, st in stat_siblings(path, compressed=True):
                if (st.st_dev, st.st_ino) in self._by_inode or st.st_mtime <= since:
                    continue
                if decompressed_head(name) in self._checkpointed_heads:
                    continue
                log.warning(
                    "rotated_file_not_read",
                    site=self.site,
                    path=path,
                    file=name,
                    hint="rotated and compressed while the shipper was down, never read; send "
                    "it with " + BACKFILL.format(site=self.site, file=name) + " (backfill reads "
                    "gzip, bzip2 and xz; decompress other formats first)",
                )
        return out

    def _adopt_compressed(self, cp: Checkpoint) -> File | None:
        """The checkpointed file, compressed while we were down: the newest compressed
        sibling whose decompressed head is the checkpoint's.

        Read from the checkpoint's offset in the decompressed text under the
        checkpoint's identity, so the lines get the request ids a live read gave
        them, and the checkpoint moves on as if the file had not been compressed.
        """
        sibs = stat_siblings(cp.path, compressed=True)
        for name, st in sorted(sibs, key=lambda t: -t[1].st_mtime):
            key = (st.st_dev, st.st_ino)
            if key in self._by_inode:
                continue
            o = open_file(name, key)
            if o is None:
                continue
            z = None
            try:
                z = decompressed(name, o.fd)
                if (
                    z is not None
                    and fingerprint(z.read_at(0, FINGERPRINT_MAX)) == cp.file.fingerprint
                ):
                    f = File(o.fd, cp.file, cp.offset, dirty=False, now=o.st.st_mtime, z=z, key=key)
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
            os.close(o.fd)
        return None

    def _adopt(
        self,
        cp: Checkpoint,
        sibs: list[tuple[str, os.stat_result]],
        *,
        same_inode: bool,
    ) -> File | None:
        """The sibling that is the checkpointed file: the same inode (renamed), or with
        ``same_inode`` false the newest other file with its head (a copy)."""
        best: tuple[float, Opened] | None = None
        for name, st in sibs:
            key = (st.st_dev, st.st_ino)
            if key in self._by_inode:
                continue
            if same_inode:
                if key != (cp.file.dev, cp.file.ino):
                    continue
            elif st.st_size < cp.offset or (best is not None and best[0] >= st.st_mtime):
                continue
            o = open_file(name, key)
            if o is None:
                continue
            # A checkpoint without a fingerprint was taken before the file had a
            # complete line (offset 0): its inode is all there is to know it by.
            unknown_head = same_inode and not cp.file.fingerprint
            if o.fingerprint != cp.file.fingerprint and not unknown_head:
                os.close(o.fd)
                continue
            if best is not None:
                os.close(best[1].fd)
            best = (st.st_mtime, o)
            if same_inode:
                break
        if best is None:
            return None
        mtime, o = best
        fid = FileId(o.st.st_dev, o.st.st_ino, cp.file.fingerprint or o.fingerprint)
        upgraded = fid != cp.file
        f = File(o.fd, fid, min(cp.offset, o.st.st_size), dirty=upgraded, now=mtime)
        if upgraded:
            # The new identity's checkpoint is written with the next chunk (dirty
            # forces one); only then may the old one go.
            f.pending_retire.append(cp.file)
        self._by_inode[f.key] = f
        return f
