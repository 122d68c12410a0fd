"""Typed records handed from one stage to the next.

Slotted frozen dataclasses: cheap to build on the hot path, impossible to
mutate by accident in a later stage, and self-describing in tracebacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True, frozen=True)
class FileId:
    """What makes a log file the same file across renames and restarts.

    ``dev``/``ino`` alone are not enough: a deleted file's inode is soon reused.
    ``fingerprint`` is the SHA-1 hex of the file's head: the bytes up to and
    including the first newline, at most ``tail.FINGERPRINT_MAX`` bytes. A
    complete first line never changes, so the fingerprint of a growing file is
    stable; a file without a complete line yet has no fingerprint ("").
    """

    dev: int
    ino: int
    fingerprint: str

    def key(self) -> str:
        """A stable text form, used in request ids and spool keys."""
        return f"{self.dev}:{self.ino}:{self.fingerprint}"


@dataclass(slots=True, frozen=True)
class Checkpoint:
    """How far one file has been read: every byte before ``offset`` is in the spool."""

    path: str
    file: FileId
    offset: int


@dataclass(slots=True, frozen=True)
class Chunk:
    """Complete lines read from one file, and the checkpoint they lead to.

    ``lines`` holds ``(offset, raw bytes without the newline)``; tuples rather
    than records because a busy file yields millions of them. ``skipped`` names
    the lines the tail itself refused (``(offset, reason)``, e.g. ``too_long``).
    Persisting the chunk's events and ``checkpoint()`` in one transaction is what
    makes reading exactly-once.
    """

    path: str
    file: FileId
    start_offset: int
    end_offset: int
    lines: Sequence[tuple[int, bytes]]
    skipped: Sequence[tuple[int, str]] = ()

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.path, self.file, self.end_offset)


class Request(NamedTuple):
    """One access-log line, decoded. ``None`` means the server logged ``-`` (absent).

    A NamedTuple rather than a frozen dataclass: it is built once per log line,
    and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    costs five times as much, which alone would halve the ingest rate.

    ``time`` is already tirreno's ``eventTime`` text (UTC ``Y-m-d H:i:s`` with
    ``.v`` milliseconds when the log has them): the parser caches that
    conversion per distinct timestamp, which is most of the speed.
    ``uri`` is the request target as sent (path and query), ``path`` the part
    before ``?``. ``extra`` holds the fields asked for by name (a header for
    the user key, ``X-Forwarded-For``, an opaque nginx variable), keyed by
    nginx variable name (``http_x_user_id``).
    """

    remote_addr: str | None
    time: str | None
    method: str | None
    uri: str | None
    path: str | None
    status: int | None
    remote_user: str | None = None
    referer: str | None = None
    user_agent: str | None = None
    accept_language: str | None = None
    session: str | None = None
    extra: Mapping[str, str] = EMPTY


@dataclass(slots=True, frozen=True)
class User:
    """A user record as the resolver's SQL returned it, mapped to tirreno names."""

    user_name: str
    email_address: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    full_name: str | None = None
    phone_number: str | None = None
    user_created: str | None = None
    # How this record maps to event fields (`events`, a function of the record alone),
    # set on the first event that carries it: the resolver hands out one shared record
    # per user, so a line costs an attribute read, not a memo keyed by the record (its
    # hash per line, and a bound that a busy site's 50,000 users kept emptying). The
    # shape is shared by all users alike unless a value is not the record's own string.
    # One slot: a ninth would take the record from 96 to 112 bytes. Not part of the value.
    mapped: UserShape | None = field(default=None, init=False, repr=False, compare=False)


class UserShape(NamedTuple):
    """The event fields of the users of one shape (`events`): shared, one per shape,
    except for a user whose values are not the record's own strings (a cut, a
    lower-cased address, a normalised phone number), who has a shape with ``values``."""

    names: tuple[str, ...]  # tirreno field names, in the order they are sent
    fixed: tuple[str, ...]  # the changes made, counted per event as ``field:reason``
    own: Callable[[User], tuple[str, ...]]  # the values, when they are the record's own
    values: tuple[str, ...] | None = None  # the values otherwise


class Event(NamedTuple):
    """One tirreno event: exactly the form fields that will be posted.

    ``request_id`` goes in the ``X-Request-Id`` header (tirreno keeps it as
    ``event.traceid``); it is a UUIDv5 of site, file identity and offset, so the
    same line always yields the same id. A NamedTuple for the same reason as
    `Request`: one is built per log line.
    """

    request_id: str
    fields: Mapping[str, str]


@dataclass(slots=True, frozen=True)
class LeasedEvent:
    """An event taken from the spool by a sender; ``id`` acks or releases it."""

    id: int
    site: str
    request_id: str
    fields: Mapping[str, str]
    attempts: int
    created: float
    # The spool's priority lane (spool.SECURITY, LIVE or BACKFILL).
    lane: int = 1
