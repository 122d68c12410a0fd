"""Memos bounded by size as well as by entries.

The hot path memoises its slow decisions (a request line's parse, a path's
exclusion, a URL's redaction, an address's validity), keyed by text a visitor
chose. A count of entries alone does not bound memory: 16,384 distinct 7 KB
URLs are 115 MB in one memo. Each `Memo` also counts the characters it holds
and starts over (cleared at once, as before) when either budget is spent, so a
flood of large distinct lines costs at most `MAX_CHARS` per memo while a real
site's few thousand short keys never reach it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Entries a memo holds at most (a busy site's distinct request lines per hour or so).
MAX_ENTRIES = 16384
# Characters of keys and values a memo holds at most; one character of a str is
# one byte when it is ASCII or Latin-1 (as log text mostly is), plus the dict's
# own ~100 bytes per entry, which MAX_ENTRIES bounds.
MAX_CHARS = 2 * 1024 * 1024


class Memo(Generic[K, V]):
    """A dict emptied at once when it holds ``max_entries`` or ``max_chars``.

    ``get`` is the dict's own bound method, so a hit costs one dict look-up
    (``data`` is the dict itself, for a hot path that subscripts it: read only);
    ``put`` is for misses, with the size of what is stored (its characters).
    Not thread-safe: each site's tail thread owns its memos.
    """

    __slots__ = ("_chars", "data", "get", "max_chars", "max_entries")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_chars: int = MAX_CHARS) -> None:
        self.data: dict[K, V] = {}
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.get = self.data.get

    def put(self, key: K, value: V, chars: int) -> None:
        if len(self.data) >= self.max_entries or self._chars + chars > self.max_chars:
            self.clear()
        if chars <= self.max_chars:  # a key larger than the whole budget is not kept
            self.data[key] = value
            self._chars += chars

    def clear(self) -> None:
        self.data.clear()
        self._chars = 0

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    @property
    def chars(self) -> int:
        return self._chars
