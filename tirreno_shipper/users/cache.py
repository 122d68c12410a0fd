"""The resolver's bounded, expiring caches, kept compact.

A busy site's cache holds one entry per live session (150,000 and more), so the
bytes of an entry matter more than anything else about it. A `KeyTable` keeps no
Python object per key: a key is held as its 64-bit hash, with its expiry, its
place in the LRU order and its user in flat arrays (about 40 bytes a key, where a
``str`` key in an ``OrderedDict`` with an ``(expires, user)`` tuple took ~200).
An entry naming a user moves from the hit cache to the last-seen cache when it
expires or is evicted (a key is held once), and the `User` records are interned
(`Interner`), since a user has several sessions and every lookup of theirs
returns an equal record.

The hash is Python's own ``hash()`` of the key (SipHash, with a key drawn at
random per process unless ``PYTHONHASHSEED`` is set): computed once per string
and cached on it, so a lookup costs no digest. Two keys with the same 64-bit hash
share an entry; among the ~10**5 keys a cache holds, the chance that any two do is
about 10**-9, and picking a key that collides with another visitor's would take
knowing that visitor's key, which is the credential itself. The key's text (a
credential) is not kept at all.
"""

from __future__ import annotations

from array import array

from tirreno_shipper.records import User


class KeyTable:
    """A bounded LRU of session key → user (``None``: nobody) whose entries
    expire; not thread-safe on its own.

    An entry lives ``extend`` seconds past its own expiry time: the last-seen
    cache keeps the hit cache's entries a day longer, at their first expiry.

    Layout: records (parallel arrays: hash, expiry, LRU links, and a list of
    users) are found through an open-addressing index of record numbers (linear
    probing, at most two thirds full; a removal shifts the run after it back, so there
    are no tombstones).
    """

    __slots__ = (
        "_expires",
        "_extend",
        "_free",
        "_hash",
        "_head",
        "_index",
        "_mask",
        "_next",
        "_prev",
        "_size",
        "_tail",
        "_users",
        "spill",
    )

    def __init__(self, size: int, extend: float = 0.0) -> None:
        self._size = size
        self._extend = extend
        self._mask = 7
        self._index = array("i", bytes(4 * (self._mask + 1)))  # record + 1; 0: empty
        self._hash = array("q")
        self._expires = array("d")
        self._prev = array("i")  # LRU order: head is the least recently used
        self._next = array("i")
        self._users: list[User | None] = []
        self._free: list[int] = []  # record numbers to reuse
        self._head = self._tail = -1
        # Where an entry naming a user goes when it expires or is evicted here (the
        # last-seen cache): a key sits in one of the two, never both.
        self.spill: KeyTable | None = None

    def __len__(self) -> int:
        return len(self._users) - len(self._free)

    def get(self, key: str, now: float) -> tuple[bool, User | None]:
        """(found, user): an entry past its time is dropped (spilled) and not found.
        A hit becomes the most recently used."""
        h = hash(key)
        index, hashes, mask = self._index, self._hash, self._mask
        i = h & mask
        while True:
            r = index[i]
            if r == 0:
                return False, None
            r -= 1
            if hashes[r] == h:
                break
            i = (i + 1) & mask
        expires = self._expires[r]
        if expires + self._extend <= now:
            user = self._users[r]
            self._remove(i, r)
            if self.spill is not None and user is not None:
                self.spill.put_hash(h, user, expires)
            return False, None
        if r != self._tail:
            self._to_tail(r)
        return True, self._users[r]

    def put(self, key: str, user: User | None, expires: float) -> None:
        self.put_hash(hash(key), user, expires)

    def put_hash(self, h: int, user: User | None, expires: float) -> None:
        """Store (or replace) the entry of the key hashed ``h``, the most recently used."""
        if self._size <= 0:
            return
        i = self._slot(h)
        if i >= 0:
            r = self._index[i] - 1
            self._expires[r] = expires
            self._users[r] = user
            if r != self._tail:
                self._to_tail(r)
            return
        if len(self) >= self._size:
            self._evict()
        if 3 * (len(self) + 1) > 2 * (self._mask + 1):
            self._grow()
        if self._free:
            r = self._free.pop()
            self._hash[r] = h
            self._expires[r] = expires
            self._users[r] = user
        else:
            r = len(self._users)
            self._hash.append(h)
            self._expires.append(expires)
            self._prev.append(-1)
            self._next.append(-1)
            self._users.append(user)
        self._link(r)
        index, mask = self._index, self._mask
        i = h & mask
        while index[i]:
            i = (i + 1) & mask
        index[i] = r + 1

    def discard(self, key: str) -> None:
        i = self._slot(hash(key))
        if i >= 0:
            self._remove(i, self._index[i] - 1)

    # --- the parts ---------------------------------------------------------------

    def _slot(self, h: int) -> int:
        """The index slot of the record hashed ``h``, or -1."""
        index, hashes, mask = self._index, self._hash, self._mask
        i = h & mask
        while True:
            r = index[i]
            if r == 0:
                return -1
            if hashes[r - 1] == h:
                return i
            i = (i + 1) & mask

    def _evict(self) -> None:
        """Drop the least recently used entry, spilling it if it names a user."""
        r = self._head
        h, user, expires = self._hash[r], self._users[r], self._expires[r]
        self._remove(self._slot(h), r)
        if self.spill is not None and user is not None:
            self.spill.put_hash(h, user, expires)

    def _remove(self, i: int, r: int) -> None:
        """Free record ``r``, whose index slot is ``i``."""
        self._unlink(r)
        self._users[r] = None
        self._free.append(r)
        # Backward shift: an entry further along the run moves into the hole unless
        # its home slot lies (cyclically) after the hole, up to where it sits.
        index, hashes, mask = self._index, self._hash, self._mask
        j = i
        while True:
            j = (j + 1) & mask
            moved = index[j]
            if moved == 0:
                break
            home = hashes[moved - 1] & mask
            if (i < j and (home <= i or home > j)) or (i > j and j < home <= i):
                index[i] = moved
                i = j
        index[i] = 0

    def _grow(self) -> None:
        """Double the index (records stay where they are)."""
        self._mask = mask = 2 * self._mask + 1
        self._index = index = array("i", bytes(4 * (mask + 1)))
        hashes, nxt = self._hash, self._next
        r = self._head
        while r >= 0:
            i = hashes[r] & mask
            while index[i]:
                i = (i + 1) & mask
            index[i] = r + 1
            r = nxt[r]

    def _link(self, r: int) -> None:
        """Put record ``r`` at the most recently used end."""
        tail = self._tail
        self._prev[r] = tail
        self._next[r] = -1
        if tail >= 0:
            self._next[tail] = r
        else:
            self._head = r
        self._tail = r

    def _unlink(self, r: int) -> None:
        prev, nxt = self._prev, self._next
        p, n = prev[r], nxt[r]
        if p >= 0:
            nxt[p] = n
        else:
            self._head = n
        if n >= 0:
            prev[n] = p
        else:
            self._tail = p

    def _to_tail(self, r: int) -> None:
        """Make record ``r`` (not the tail) the most recently used."""
        prev, nxt = self._prev, self._next
        p, n = prev[r], nxt[r]
        if p >= 0:
            nxt[p] = n
        else:
            self._head = n
        prev[n] = p
        tail = self._tail
        nxt[tail] = r
        prev[r] = tail
        nxt[r] = -1
        self._tail = r


class Interner:
    """Equal `User` records → one shared record, for at most ``size`` distinct users
    (then it starts over: sharing is an economy, never a meaning).

    Keyed by the user name: a ``str`` key costs a dict 16 bytes where a record costs 24,
    and its hash, unlike the record's, is the string's own, computed once. A record
    that differs from the one kept under its name (another email) takes its place.
    """

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._data: dict[str, User] = {}

    def __call__(self, user: User) -> User:
        data = self._data
        shared = data.get(user.user_name)
        if shared is not None and shared == user:
            return shared
        if shared is None and len(data) >= self._size:
            data.clear()
        data[user.user_name] = user
        return user

    def __len__(self) -> int:
        return len(self._data)
