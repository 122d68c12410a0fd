"""Which files a ``logs`` pattern names: globs, and the rotated siblings of a path."""

from __future__ import annotations

import glob
import os
import stat

from tirreno_shipper.tail.compressed import is_compressed_name

_GLOB_MAGIC = frozenset("*?[")
BACKFILL = "tirreno-shipper backfill -c CONFIG --site {site} {file}"


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_MAGIC for c in pattern)


def skipped_hint(site: str, path: str) -> str:
    """Why a compressed file a glob matches is not followed, and how to send it."""
    return (
        "a compressed file is a rotated copy and is never followed (the rest of a "
        "checkpointed file compressed while the shipper was down is read at start); "
        "to send an old rotated file: " + BACKFILL.format(site=site, file=path)
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


def siblings(path: str, *, compressed: bool = False) -> list[str]:
    """Rotated names of ``path`` in its folder (``access.log.1``, ``access.log-20261129``);
    with ``compressed``, the compressed ones (``access.log.2.gz``) instead.

    For a symbolic link, the siblings of the file it points to: the kubelet links
    ``/var/log/containers/*.log`` to ``/var/log/pods/.../0.log`` and rotates there.
    """
    if os.path.islink(path):
        path = os.path.realpath(path)
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


def stat_siblings(path: str, *, compressed: bool = False) -> list[tuple[str, os.stat_result]]:
    """`siblings` that are regular files, with their ``stat``."""
    out = []
    for name in siblings(path, compressed=compressed):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((name, st))
    return out
