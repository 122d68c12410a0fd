"""The resolver's key table: an LRU with expiring entries and a spill to the last-seen
table, checked against a plain OrderedDict model of the same rules, and its size."""

from __future__ import annotations

import random
import sys
import tracemalloc
from collections import OrderedDict

import pytest

from tirreno_shipper.records import User
from tirreno_shipper.users.cache import Interner, KeyTable

USERS = [User(user_name=f"u{i}") for i in range(7)]


class Model:
    """The rules `KeyTable` keeps, written plainly: str keys in an OrderedDict."""

    def __init__(self, size: int, extend: float = 0.0) -> None:
        self.size, self.extend = size, extend
        self.data: OrderedDict[str, tuple[float, User | None]] = OrderedDict()
        self.spill: Model | None = None

    def get(self, key: str, now: float) -> tuple[bool, User | None]:
        entry = self.data.get(key)
        if entry is None:
            return False, None
        if entry[0] + self.extend <= now:
            del self.data[key]
            if self.spill is not None and entry[1] is not None:
                self.spill.put(key, entry[1], entry[0])
            return False, None
        self.data.move_to_end(key)
        return True, entry[1]

    def put(self, key: str, user: User | None, expires: float) -> None:
        if self.size <= 0:
            return
        self.data[key] = (expires, user)
        self.data.move_to_end(key)
        if len(self.data) > self.size:
            old, (when, who) = self.data.popitem(last=False)
            if self.spill is not None and who is not None:
                self.spill.put(old, who, when)

    def discard(self, key: str) -> None:
        self.data.pop(key, None)


@pytest.mark.parametrize(("size", "keys", "seed"), [(1, 3, 1), (5, 12, 2), (300, 2000, 3)])
def test_key_table_keeps_the_rules_of_an_lru_with_expiry_and_spill(
    size: int, keys: int, seed: int
) -> None:
    """Random gets, puts (users and nobody) and discards, with time passing: every
    answer and every size of the hit and last-seen tables is the model's; many keys
    over a small table make long probe runs, evictions and removals inside them."""
    against_model(size, [f"k{i}" for i in range(keys)], seed)


def test_key_table_runs_that_wrap_around_the_index() -> None:
    """Keys whose home is one of the last slots of the 8-slot index of a 4-entry table:
    their probe runs wrap to the start, and a removal there must shift across it."""
    names = [n for n in (f"w{i}" for i in range(2000)) if hash(n) & 7 >= 5][:10]
    against_model(4, names, 4)


def against_model(size: int, names: list[str], seed: int) -> None:
    rnd = random.Random(seed)
    hit, seen = KeyTable(size), KeyTable(max(size, 3), extend=50.0)
    hit.spill = seen
    model_hit, model_seen = Model(size), Model(max(size, 3), extend=50.0)
    model_hit.spill = model_seen
    now = 0.0
    for step in range(20_000):
        key = rnd.choice(names)
        op = rnd.random()
        if op < 0.45:
            for table, model in ((hit, model_hit), (seen, model_seen)):
                assert table.get(key, now) == model.get(key, now), (step, key)
        elif op < 0.9:
            user = rnd.choice([None, *USERS])
            expires = now + rnd.choice([5.0, 30.0])
            hit.put(key, user, expires)
            model_hit.put(key, user, expires)
        else:
            seen.discard(key)
            model_seen.discard(key)
        assert (len(hit), len(seen)) == (len(model_hit.data), len(model_seen.data)), step
        now += rnd.random()


def test_key_table_of_size_zero_holds_nothing() -> None:
    table = KeyTable(0)
    table.put("k", USERS[0], 10.0)
    assert len(table) == 0
    assert table.get("k", 0.0) == (False, None)


def test_key_table_keeps_no_key_text() -> None:
    """A session key is a credential: the table holds its hash, not the string."""
    key = "".join(["session-", "0123456789abcdef" * 2])
    before = sys.getrefcount(key)
    table = KeyTable(10)
    table.put(key, USERS[0], 10.0)
    assert sys.getrefcount(key) == before
    assert table.get("session-" + "0123456789abcdef" * 2, 0.0) == (True, USERS[0])


def test_key_table_costs_under_64_bytes_a_key() -> None:
    """100,000 keys (their strings aside): the arrays and the index, not objects."""
    keys = [f"sess{i:08d}" for i in range(100_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = KeyTable(200_000)
        for key in keys:
            table.put(key, USERS[0], 10.0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == len(keys)
    assert used / len(keys) < 64, used / len(keys)


def test_interner_shares_equal_records_only() -> None:
    """Equal records come back as one; a record under the same name with another
    email is its own (and is the one shared from then on); past its size it starts over."""
    intern = Interner(2)
    alice = intern(User(user_name="alice", email_address="a@example.com"))
    assert intern(User(user_name="alice", email_address="a@example.com")) is alice
    moved = User(user_name="alice", email_address="new@example.com")
    assert intern(moved) is moved
    assert intern(User(user_name="alice", email_address="new@example.com")) is moved
    bob = intern(User(user_name="bob"))
    assert len(intern) == 2
    carol = intern(User(user_name="carol"))
    assert len(intern) == 1 and intern(User(user_name="carol")) is carol
    assert intern(User(user_name="bob")) is not bob
