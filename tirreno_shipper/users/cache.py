"""The resolver's bounded, expiring caches, kept compact.

A busy site's cache holds one entry per live session (150,000 and more), so the
bytes of an entry matter more than its speed: an entry is one ``(expires,
user)`` tuple, which moves from the hit cache to the last-seen cache when it
expires or is evicted (a key is held once), and the
`User` records are interned (`Interner`), since a user has several sessions
and every lookup of theirs returns an equal record.
"""

from __future__ import annotations

from collections import OrderedDict

from tirreno_shipper.records import User

# One cache entry: (monotonic time it expires at, the user or None for a miss).
Entry = tuple[float, User | None]


class TtlLru:
    """A bounded LRU whose entries expire; not thread-safe on its own.

    An entry lives ``extend`` seconds past its own expiry time: the last-seen
    cache keeps the hit cache's entries a day longer without a tuple of its own.
    """

    __slots__ = ("_data", "_extend", "_size", "spill")

    def __init__(self, size: int, extend: float = 0.0) -> None:
        self._size = size
        self._extend = extend
        self._data: OrderedDict[str, Entry] = OrderedDict()
        # Where an entry naming a user goes when it expires or is evicted here (the
        # last-seen cache): a key sits in one of the two, never both.
        self.spill: TtlLru | None = None

    def get(self, key: str, now: float) -> tuple[bool, User | None]:
        entry = self._data.get(key)
        if entry is None:
            return False, None
        if entry[0] + self._extend <= now:
            del self._data[key]
            if self.spill is not None and entry[1] is not None:
                self.spill.put_entry(key, entry)
            return False, None
        self._data.move_to_end(key)
        return True, entry[1]

    def put(self, key: str, value: User | None, expires: float) -> None:
        self.put_entry(key, (expires, value))

    def put_entry(self, key: str, entry: Entry) -> None:
        """Store ``entry`` as it is (an entry another cache holds too costs no tuple)."""
        if self._size <= 0:
            return
        data = self._data
        data[key] = entry
        data.move_to_end(key)
        if len(data) > self._size:
            old, evicted = data.popitem(last=False)
            if self.spill is not None and evicted[1] is not None:
                self.spill.put_entry(old, evicted)

    def discard(self, key: str) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class Interner:
    """Equal `User` records → one shared record, for at most ``size`` distinct users
    (then it starts over: sharing is an economy, never a meaning)."""

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._data: dict[User, User] = {}

    def __call__(self, user: User) -> User:
        data = self._data
        shared = data.get(user)
        if shared is None:
            if len(data) >= self._size:
                data.clear()
            shared = data[user] = user
        return shared

    def __len__(self) -> int:
        return len(self._data)
