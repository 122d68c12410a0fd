"""Noticing that the configuration file changed, so the daemon reloads it as on SIGHUP.

A Kubernetes ConfigMap volume never edits a file in place: it writes the new
files into a new timestamped folder and swaps the ``..data`` symbolic link to it,
so ``config.yaml`` (a link through ``..data``) resolves to another file. An
editor saving in place changes the file's size or modification time. Both change
what ``os.stat`` (which follows links) says, which is all this looks at.
"""

from __future__ import annotations

import os
from pathlib import Path

_Signature = tuple[int, int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone for a moment (a swap in progress): wait for it
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatch:
    """Says once each time the file at ``path`` becomes another file or changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = _signature(path)

    def changed(self) -> bool:
        now = _signature(self.path)
        if now is None or now == self._seen:
            return False
        self._seen = now
        return True
