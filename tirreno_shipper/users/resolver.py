"""Session key → user record: key, store, decoder and query, with the failure policy.

The key is taken from the request (a cookie, a logged field or header, or the
response's new session cookie), normalised and transformed (`keys`), looked up
in the session store (`stores`: an SQL row, a Redis value, a file), decoded
(`decoders`) to a user id, and the user's fields fetched by the ``:user_id``
query. The older one-step form, a query binding ``:key`` that returns the
user's fields, is the same path without a store or decoder. Values are only
ever bound, never formatted into SQL: a cookie is attacker-controlled.

Results are cached (hits for ``cache_ttl``, misses for the shorter
``negative_ttl``) in one bounded LRU. A store out of reach is never a miss: it
raises `ResolverError`, the daemon pauses the site's tail and retries the same
lines later, so an outage loses no attribution. A failure that belongs to one
key (a forged or undecodable cookie, a value the database refuses) is counted
by reason in ``resolver_rejected`` and that line goes on unresolved.

Session keys and the application's secret are credentials: they never appear
in logs or error messages (at most the first hex digits of a key's SHA-256, in
debug logs).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy
import structlog

from tirreno_shipper.config import UsersConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.metrics import (
    RESOLVER_CACHE,
    RESOLVER_ERRORS,
    RESOLVER_QUERY_LATENCY,
    RESOLVER_REJECTED,
)
from tirreno_shipper.records import Request, User
from tirreno_shipper.users.cache import Interner, KeyTable
from tirreno_shipper.users.decoders import Undecodable, at_path, decode
from tirreno_shipper.users.keys import KeyExtractor, KeyRejected, key_digest
from tirreno_shipper.users.rows import COLUMN_FIELDS, column_field, map_row
from tirreno_shipper.users.sql import Database, ValueFailed
from tirreno_shipper.users.stores import FileStore, RedisStore, SqlStore, Store

log = structlog.get_logger(__name__)

# A logout is logged after the application deleted the session row, so the
# row is gone by the time the line is resolved. Remembering who used a key for
# a day attributes that logout (and the requests racing it) to the right user.
LAST_SEEN_TTL = 24 * 3600.0
LAST_SEEN_MIN_SIZE = 10_000
# Reasons counted in resolver_rejected besides the key's own (forged, ...).
UNDECODABLE = "undecodable"
KEY_ERROR = "key_error"  # the database refused this key's statement


def _store(config: UsersConfig, database: Database | None) -> Store | None:
    store = config.store
    if store is None:
        return None
    if store.sql is not None:
        assert database is not None
        return SqlStore(database, store.sql)
    if store.redis is not None:
        return RedisStore(store.redis, config.timeout)
    assert store.file is not None
    return FileStore(store.file)


class UserResolver:
    """Resolves a request's session key to the user the application knows."""

    def __init__(
        self,
        site: str,
        config: UsersConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.site = site
        self.config = config
        self._clock = clock
        self._key_of = KeyExtractor(config)
        self._told: set[str] = set()  # the rejection details logged (fixed texts)
        if self._key_of.problem is not None:  # an unseal option or secret it cannot use
            raise ResolverError(f"users.key.transforms: {self._key_of.problem}")
        self._cache = KeyTable(config.cache_size)
        # Holds the entries naming a user that the hit cache let go (expiring at
        # found + cache_ttl), a day from when they were found.
        self._last_seen = KeyTable(
            max(config.cache_size, LAST_SEEN_MIN_SIZE), extend=LAST_SEEN_TTL - config.cache_ttl
        )
        self._cache.spill = self._last_seen
        self._caching = config.cache_ttl > 0 and config.cache_size > 0
        # A user has several sessions (devices, logins): their keys share one record.
        self._intern = Interner(max(config.cache_size, LAST_SEEN_MIN_SIZE))
        self._failing = False
        # When the query in flight began (monotonic), for the daemon to notice one
        # that hangs past every timeout; None between queries.
        self.query_started: float | None = None
        self._hit = RESOLVER_CACHE.labels(site=site, result="hit")
        self._miss = RESOLVER_CACHE.labels(site=site, result="miss")
        self._latency = RESOLVER_QUERY_LATENCY.labels(site=site)
        self._errors = RESOLVER_ERRORS.labels(site=site)
        self._db = (
            Database(config.database, config.timeout, clock=clock) if config.database else None
        )
        self._store = _store(config, self._db)
        self._decode = config.decode
        self._secrets = config.secret_texts()
        # One step: the query binds :key and returns the user (no store, no decoder).
        self._one_step = config.store is None and config.decode is None
        self._stmt = sqlalchemy.text(config.query) if config.query is not None else None
        self._where = self._db.safe_url if self._db is not None else "the session store"

    # --- the key ---------------------------------------------------------------

    def key_for(self, request: Request, *, response: str | None = None) -> str | None:
        """The (transformed) lookup key of a request, or ``None`` when it has none
        or one that cannot be read (counted in resolver_rejected by reason)."""
        try:
            return self._key_of(request, response=response)
        except KeyRejected as exc:
            self._key_rejected(exc)
            return None

    def _key_rejected(self, exc: KeyRejected) -> None:
        self._reject(exc.reason)
        if exc.detail and exc.detail not in self._told:
            # Once per kind: a visitor's junk repeats, and a setting of the
            # application's (a Marshal cookie serializer) would on every line.
            self._told.add(exc.detail)
            log.info("resolver_key_rejected", site=self.site, reason=exc.reason, error=exc.detail)

    def _reject(self, reason: str, key: str | None = None, detail: str = "") -> None:
        RESOLVER_REJECTED.labels(site=self.site, reason=reason).inc()
        if detail:
            log.info(
                "resolver_key_rejected",
                site=self.site,
                reason=reason,
                key_tag=key_digest(key) if key else None,
                error=detail,
            )

    # --- resolving -------------------------------------------------------------

    def resolve(self, key: str) -> User | None:
        """The user for ``key``, or ``None``; raises `ResolverError` if the database fails.

        Not thread-safe, as the pipeline that calls it: one resolver per site thread.
        """
        return self.resolve_many((key,))[key]

    def resolve_many(self, keys: Iterable[str]) -> dict[str, User | None]:
        """The user of each of ``keys`` (a chunk's, repeats included), by key; raises
        `ResolverError` if the database fails (what was found so far stays cached).

        The cache is read for every distinct key first, then the distinct keys it
        did not hold are looked up together, one query each on the held
        connection, all at one clock reading. A repeat counts as a cache hit, as
        it would have been one line later.
        """
        now = self._clock()
        out: dict[str, User | None] = {}
        todo: list[str] = []  # the distinct keys not in the cache
        cache_get = self._cache.get
        hits = 0
        for key in keys:
            if key in out:
                hits += 1
                continue
            found, user = cache_get(key, now)
            if found:
                hits += 1
                # Last-seen was refreshed when this entry came from the database (at
                # least once per cache_ttl): no need to touch it per request.
                out[key] = user if user is not None else self._last_seen_user(key, now)
            else:
                out[key] = None
                todo.append(key)
        if hits:
            self._hit.inc(hits)
        if not todo:
            return out
        self._miss.inc(len(todo))
        together = self._db is not None and len(todo) > 1
        with self._db.group() if together and self._db is not None else contextlib.nullcontext():
            self._look_up(todo, out, now)
        return out

    def _look_up(self, todo: list[str], out: dict[str, User | None], now: float) -> None:
        """Query each key of ``todo``, caching and recording the outcome in ``out``.
        One expiry time per outcome for the whole group."""
        negative_ttl = self.config.negative_ttl
        expires, negative_expires = now + self.config.cache_ttl, now + negative_ttl
        put, last_seen = self._cache.put, self._last_seen
        for key in todo:
            user = self._query(key)
            if user is not None:
                user = self._intern(user)
                # Remembered LAST_SEEN_TTL from now (the last-seen cache's `extend`):
                # in the hit cache, then in the last-seen cache when that lets it go.
                if self._caching:
                    last_seen.discard(key)
                    put(key, user, expires)
                else:
                    last_seen.put(key, user, expires)
                out[key] = user
            else:
                if negative_ttl > 0:
                    put(key, None, negative_expires)
                out[key] = self._last_seen_user(key, now)

    def _last_seen_user(self, key: str, now: float) -> User | None:
        seen, last = self._last_seen.get(key, now)
        if seen and last is not None:
            log.debug("resolver_last_seen_used", site=self.site, key_tag=key_digest(key))
            return last
        return None

    def _query(self, key: str) -> User | None:
        started = time.perf_counter()
        self.query_started = time.monotonic()
        try:
            user = self._lookup(key)
        except KeyRejected as exc:
            self._key_rejected(exc)
            return None
        except Undecodable as exc:
            self._reject(UNDECODABLE, key, f"the stored session: {exc}")
            return None
        except ValueFailed as exc:
            # The store refused this value (a collation, an encoding, text for an
            # integer column): asking again can never succeed, and a visitor's
            # cookie must not be able to pause the site.
            self._errors.inc()
            self._reject(KEY_ERROR, key, str(exc))
            return None
        except ResolverError as exc:
            self._errors.inc()
            if not self._failing:
                self._failing = True
                log.warning("resolver_failed", site=self.site, error=str(exc))
            raise
        finally:
            self.query_started = None
            self._latency.observe(time.perf_counter() - started)
        if self._failing:
            self._failing = False
            log.info("resolver_recovered", site=self.site, database=self._where)
        return user

    def _lookup(self, key: str) -> User | None:
        """key → store → decoder → :user_id query; raises `ValueFailed`,
        `Undecodable`, `KeyRejected` (this key) or `ResolverError` (the store)."""
        if self._one_step:
            return self._user_row({"key": key}, key)
        value: object = key
        if self._store is not None:
            value = self._store.fetch(key)
            if value is None:
                return None
            if isinstance(value, Mapping):
                row: Mapping[str, Any] = value
                if any(column_field(c) == "user_name" for c in row):
                    return map_row(row)  # the store row names the user (Spring)
                value = next(iter(row.values()), None)
                if value is None:
                    return None
        decoder = self._decode
        data = decode(decoder.format, value, self._secrets) if decoder is not None else value
        user_id = at_path(data, decoder.path if decoder is not None else None)
        if self._stmt is not None:
            if user_id is None or isinstance(user_id, dict | list | tuple | float):
                return None
            return self._user_row({"user_id": user_id}, key)
        fields = decoder.fields if decoder is not None else {}
        if fields:
            values = {name: at_path(data, path) for name, path in fields.items()}
            return map_row({k: v for k, v in values.items() if isinstance(v, str | int)})
        if user_id is None or isinstance(user_id, dict | list | tuple):
            return None
        return User(user_name=str(user_id))

    def _user_row(self, params: Mapping[str, object], key: str) -> User | None:
        assert self._db is not None and self._stmt is not None
        _, row = self._db.execute(self._stmt, params, key)
        return None if row is None else map_row(row)

    def check(self) -> None:
        """Look up keys that cannot exist; raise `ResolverError` if the store or the
        query fails, or the query returns no user name column."""
        if self._store is not None:
            try:
                self._store.check()
            except ValueFailed as exc:
                raise ResolverError(str(exc)) from None
        if self._stmt is None or self._db is None:
            return
        # A random text key first; a query keyed on an integer column rejects
        # text, so then "-1", which no id or session key is in practice.
        name = "key" if self._one_step else "user_id"
        keys = ("tirreno-shipper-check-" + secrets.token_hex(16), "-1")
        for attempt, key in enumerate(keys):
            try:
                columns, row = self._db.execute(self._stmt, {name: key}, key)
                break
            except ValueFailed as exc:
                if attempt + 1 < len(keys):
                    continue
                raise ResolverError(str(exc)) from None
        fields = {column_field(c) for c in columns}
        if "user_name" not in fields:
            raise ResolverError(
                f"user database {self._where}: the query returns no user name column "
                f"(got {', '.join(map(str, columns)) or 'none'}); select one AS user_name"
            )
        ignored = [str(c) for c in columns if column_field(c) is None]
        if ignored:
            log.warning(
                "resolver_columns_ignored",
                site=self.site,
                columns=ignored,
                hint=f"columns ignored: {', '.join(ignored)} (a user's fields are taken from "
                f"columns named {', '.join(sorted(set(COLUMN_FIELDS.values())))}: alias them "
                "AS one of these)",
            )
        if row is not None:
            log.warning(
                "resolver_check_matched_unknown_key",
                site=self.site,
                hint=f"a key that cannot exist matched a row: does the query filter on :{name}?",
            )

    def close(self) -> None:
        """Close the store's and the database's connections."""
        if self._store is not None:
            self._store.close()
        if self._db is not None:
            self._db.close()
