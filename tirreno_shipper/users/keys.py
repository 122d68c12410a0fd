"""A request → its session lookup key: which field holds it, and how it is transformed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tirreno_shipper.config import UsersConfig
from tirreno_shipper.records import Request

# Longer keys are no session id any framework issues: the request has no key.
MAX_KEY_CHARS = 4096

# Request attributes a ``key: {field: ...}`` may name; anything else is looked
# up in ``Request.extra`` under its nginx variable name.
_REQUEST_FIELDS = frozenset(
    {"remote_addr", "remote_user", "referer", "user_agent", "accept_language", "session"}
)

_DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
}


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_digest(key: str) -> str:
    """A short, non-reversible tag for a key, for debug logs only."""
    return sha256_hex(key)[:8]


def _header_variable(header: str) -> str:
    return "http_" + header.strip().lower().replace("-", "_")


def _key_getter(config: UsersConfig) -> Callable[[Request], str | None]:
    spec = config.key
    if spec.cookie:
        # The parser already extracted the configured cookie into ``session``.
        return lambda r: r.session
    if spec.header:
        name = _header_variable(spec.header)
        return lambda r: r.extra.get(name)
    assert spec.field is not None
    field = spec.field.strip().lstrip("$")
    if field in _REQUEST_FIELDS:
        return lambda r: getattr(r, field)
    return lambda r: r.extra.get(field)


class KeyExtractor:
    """A request's (transformed) lookup key, as the configuration describes it."""

    __slots__ = ("_digest", "_get")

    def __init__(self, config: UsersConfig) -> None:
        self._get = _key_getter(config)
        self._digest = _DIGESTS.get(config.key.transform)

    def __call__(self, request: Request) -> str | None:
        """The lookup key of ``request``, or ``None`` when it has none."""
        value = self._get(request)
        if value is None or value == "-" or not value.strip():
            return None
        if len(value) > MAX_KEY_CHARS or "\x00" in value:
            # No framework issues such keys; binding them only invites errors
            # (PostgreSQL refuses NUL) and memory growth in the cache.
            return None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: no driver could send it
                return None
        if self._digest is None:
            return value
        return str(self._digest(value.encode("utf-8")).hexdigest())
