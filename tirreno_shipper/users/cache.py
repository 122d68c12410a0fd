"""The resolver's bounded, expiring caches."""

from __future__ import annotations

from collections import OrderedDict

from tirreno_shipper.records import User


class TtlLru:
    """A bounded LRU whose entries expire; not thread-safe on its own."""

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[str, tuple[float, User | None]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[bool, User | None]:
        entry = self._data.get(key)
        if entry is None:
            return False, None
        if entry[0] <= now:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, entry[1]

    def put(self, key: str, value: User | None, expires: float) -> None:
        if self._size <= 0:
            return
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
