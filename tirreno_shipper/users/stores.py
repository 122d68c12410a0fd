"""Where a session lives: an SQL row, a Redis value, or a file; looked up by key.

Each store's `fetch` returns the stored value (``None``: no such session), raises
`ValueFailed` when this key's lookup failed for a reason of its own (counted, the
line goes on unresolved) and `ResolverError` when the store itself is out of
reach (the site pauses, as for the SQL database).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Protocol

import sqlalchemy

from tirreno_shipper.config import RedisStore as RedisStoreConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.users.decoders import MAX_VALUE_BYTES
from tirreno_shipper.users.sql import Database, ValueFailed, mask_secrets


class Store(Protocol):
    def fetch(self, key: str) -> object: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class SqlStore:
    """``store.sql``: the session row (a user_name column gives the user directly)."""

    def __init__(self, database: Database, statement: str) -> None:
        self._db = database
        self._stmt = sqlalchemy.text(statement)

    def fetch(self, key: str) -> object:
        _, row = self._db.execute(self._stmt, {"key": key}, key)
        return row

    def check(self) -> None:
        self._db.execute(self._stmt, {"key": "tirreno-shipper-check"}, "")

    def close(self) -> None:
        """The database is closed by its owner (the resolver shares it)."""


class RedisStore:
    """``store.redis``: ``GET`` (or ``HGET field``) of the key template."""

    def __init__(self, config: RedisStoreConfig, timeout: float) -> None:
        import redis

        self._redis_errors = redis.exceptions
        self._template = config.key
        self._field = config.field
        parsed = urllib.parse.urlsplit(config.url)
        self._secrets = tuple(
            s for s in (parsed.password, parsed.username if parsed.password else None) if s
        )
        self.safe_url = (
            config.url.replace(parsed.password, "***") if parsed.password else config.url
        )
        try:
            self._client = redis.Redis.from_url(
                config.url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ResolverError(
                f"users.store.redis.url: {mask_secrets(str(exc), self._secrets)}"
            ) from None

    def _describe(self, exc: BaseException) -> str:
        text = (str(exc).strip().splitlines() or [""])[0]
        return f"redis {self.safe_url}: {type(exc).__name__}: {mask_secrets(text, self._secrets)}"

    def fetch(self, key: str) -> object:
        name = self._template.replace("{key}", key)
        errors = self._redis_errors
        try:
            value: Any = (
                self._client.get(name)
                if self._field is None
                else self._client.hget(name, self._field)
            )
        except (errors.ConnectionError, errors.TimeoutError, errors.AuthenticationError) as exc:
            raise ResolverError(self._describe(exc)) from None
        except errors.ResponseError as exc:  # WRONGTYPE: that key holds no such value
            raise ValueFailed(self._describe(exc)) from None
        except errors.RedisError as exc:
            raise ResolverError(self._describe(exc)) from None
        if isinstance(value, bytes) and len(value) > MAX_VALUE_BYTES:
            raise ValueFailed("redis: the session value is larger than 1 MiB")
        return value

    def check(self) -> None:
        self.fetch("tirreno-shipper-check")

    def close(self) -> None:
        self._client.close()


class FileStore:
    """``store.file``: a file per session, such as PHP's ``sess_<id>``.

    The key is a visitor's text: one that names another folder (``../``, a
    ``/``, a NUL) is refused before any file is opened.
    """

    def __init__(self, template: str) -> None:
        self._template = template
        self._folder = os.path.dirname(template)

    def path(self, key: str) -> str:
        """The file of ``key``; raises `ValueFailed` for a key that leaves the folder."""
        if "/" in key or "\\" in key or "\x00" in key or key in {".", ".."}:
            raise ValueFailed("the key is not a file name")
        path = self._template.replace("{key}", key)
        if os.path.dirname(path) != self._folder:
            raise ValueFailed("the key is not a file name")
        return path

    def fetch(self, key: str) -> object:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_VALUE_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (IsADirectoryError, UnicodeError) as exc:
            raise ValueFailed(f"session file: {type(exc).__name__}") from None
        except OSError as exc:
            # The folder itself is unreadable (permissions, a lost mount): not this key's.
            raise ResolverError(
                f"users.store.file: cannot read {self._folder}: {exc.strerror}"
            ) from None
        if len(data) > MAX_VALUE_BYTES:
            raise ValueFailed("session file larger than 1 MiB")
        return data

    def check(self) -> None:
        if not os.path.isdir(self._folder):
            raise ResolverError(f"users.store.file: no folder {self._folder}")
        if not os.access(self._folder, os.R_OK | os.X_OK):
            raise ResolverError(
                f"users.store.file: {self._folder} is not readable by this user "
                "(add it to the group that owns the session files)"
            )

    def close(self) -> None:
        """Nothing is held open."""
