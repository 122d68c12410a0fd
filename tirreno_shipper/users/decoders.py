"""A stored session → plain data, and the user id (or fields) at a path in it.

Formats: Django's signed session data (``django``), PHP's session and
``serialize()`` formats (``php_session``), ``json``, ``msgpack`` (Flask-Session)
and ``pickle`` restricted to plain data (dicts, lists, strings, numbers: Django's
cache backend). A stored value is written by the application, but the key that
found it was chosen by a visitor, so every decoder is bounded and refuses
rather than raises: `Undecodable` is counted and the line goes on unresolved.
A pickle that names any class (the way pickle runs code) is refused.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

# No session a framework writes comes near this; a larger value is refused unread.
MAX_VALUE_BYTES = 1 << 20


class Undecodable(Exception):
    """The stored value cannot be read in the configured format."""


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
    else:
        raise Undecodable(f"a {type(value).__name__} where text was expected")
    if len(data) > MAX_VALUE_BYTES:
        raise Undecodable("larger than 1 MiB")
    return data


def _json(value: object, secrets: Sequence[str]) -> object:
    if isinstance(value, dict | list):  # a JSON column, already parsed by the driver
        return value
    try:
        return json.loads(_bytes(value))
    except (ValueError, RecursionError) as exc:
        raise Undecodable("not JSON") from exc


def _msgpack(value: object, secrets: Sequence[str]) -> object:
    data = _bytes(value)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise Undecodable("not msgpack") from exc


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what needs no class: a pickle naming any global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def _pickle(value: object, secrets: Sequence[str]) -> object:
    data = _bytes(value)
    if data.isdigit():  # Django's Redis cache stores an int as its digits
        return int(data)
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # pickle raises almost anything on junk
        raise Undecodable("not a plain-data pickle") from exc


def _django(value: object, secrets: Sequence[str]) -> object:
    from tirreno_shipper.users import signed  # cryptography (~7 MB) only where it is used

    data = _bytes(value).decode("utf-8", "replace")
    if not secrets:
        raise Undecodable("no secret to verify Django session data with")
    try:
        return signed.django_session_loads(data, secrets[0], previous=secrets[1:])
    except signed.CookieRejected as exc:
        raise Undecodable(exc.reason) from None
    except (ValueError, TypeError) as exc:
        raise Undecodable("not Django session data") from exc


class _Php:
    """PHP's ``serialize()`` values and ``session_encode()``'s ``name|value...``."""

    __slots__ = ("data", "depth", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def _until(self, stop: bytes) -> bytes:
        end = self.data.find(stop, self.pos)
        if end < 0:
            raise Undecodable("truncated PHP serialization")
        out = self.data[self.pos : end]
        self.pos = end + len(stop)
        return out

    def _int(self, stop: bytes) -> int:
        try:
            return int(self._until(stop))
        except ValueError as exc:
            raise Undecodable("bad PHP number") from exc

    def _string(self) -> str:
        n = self._int(b":")
        if n < 0 or self.data[self.pos : self.pos + 1] != b'"':
            raise Undecodable("bad PHP string")
        start = self.pos + 1
        end = start + n
        if self.data[end : end + 2] not in (b'";', b'":'):
            raise Undecodable("bad PHP string length")
        self.pos = end + 2
        return self.data[start:end].decode("utf-8", "replace")

    def _members(self, count: int) -> dict[object, object]:
        if count < 0 or self.data[self.pos : self.pos + 1] != b"{":
            raise Undecodable("bad PHP array")
        self.pos += 1
        out: dict[object, object] = {}
        for _ in range(count):
            key = self.value()
            out[key if isinstance(key, int | str) else str(key)] = self.value()
        if self.data[self.pos : self.pos + 1] != b"}":
            raise Undecodable("bad PHP array end")
        self.pos += 1
        return out

    def value(self) -> object:
        self.depth += 1
        if self.depth > 64:
            raise Undecodable("PHP value nested too deeply")
        try:
            kind = self.data[self.pos : self.pos + 2]
            self.pos += 2
            if kind == b"N;":
                return None
            if kind == b"b:":
                return self._until(b";") == b"1"
            if kind == b"i:":
                return self._int(b";")
            if kind == b"d:":
                try:
                    return float(self._until(b";"))
                except ValueError as exc:
                    raise Undecodable("bad PHP float") from exc
            if kind == b"s:":
                return self._string()
            if kind == b"a:":
                return self._members(self._int(b":"))
            if kind == b"O:":  # an object: its properties, as a dict
                self._string()  # the class name, and the ':' after it
                return self._members(self._int(b":"))
            if kind in (b"r:", b"R:"):
                self._until(b";")
                return None
            raise Undecodable("unknown PHP serialization type")
        finally:
            self.depth -= 1


def _unwrap_php_string(data: bytes) -> bytes:
    """The inner bytes when ``data`` is one serialize()d string, else ``data``.

    Laravel's Redis (cache) session driver serialize()s the already serialized
    attributes: ``s:239:"a:4:{...}";``. Unwrapped once only: Laravel wraps once,
    and a visitor's value nested deeper is no session.
    """
    if data[:2] != b"s:":
        return data
    length, colon, rest = data[2:].partition(b":")
    if colon and length.isdigit() and rest[:1] == b'"' and rest[-2:] == b'";':
        inner = rest[1:-2]
        if len(inner) == int(length):
            return inner
    return data


def _php_session(value: object, secrets: Sequence[str]) -> object:
    data = _unwrap_php_string(_bytes(value))
    if not data:
        return {}
    if data[:2] in (b"a:", b"O:"):  # serialize()d (Laravel's file and Redis drivers)
        return _Php(data).value()
    # session_encode(): name|value name|value ... (names hold no '|')
    parser = _Php(data)
    out: dict[str, object] = {}
    while parser.pos < len(data):
        name = parser._until(b"|").decode("utf-8", "replace")
        out[name] = parser.value()
    return out


def _none(value: object, secrets: Sequence[str]) -> object:
    return value


# Each takes the stored value and the application's secrets (the current one first,
# then those it still accepts); only Django's signed session data needs them.
DECODERS: dict[str, Callable[[object, Sequence[str]], object]] = {
    "none": _none,
    "json": _json,
    "msgpack": _msgpack,
    "pickle": _pickle,
    "php_session": _php_session,
    "django": _django,
}


def decode(kind: str, value: object, secrets: Sequence[str] = ()) -> object:
    """``value`` read as ``kind`` (``secrets``: current first, then previous ones);
    raises `Undecodable`."""
    return DECODERS[kind](value, secrets)


def at_path(data: object, path: str | None) -> object:
    """The value at a dotted ``path`` (list indexes as numbers; a part ending in ``*``
    takes the first key with that prefix), or ``None`` when it is not there."""
    if not path:
        return data
    for part in path.split("."):
        if isinstance(data, dict):
            if part.endswith("*"):
                prefix = part[:-1]
                data = next((v for k, v in data.items() if str(k).startswith(prefix)), None)
            else:
                data = data.get(part, data.get(int(part)) if part.isdigit() else None)
        elif isinstance(data, list | tuple) and part.lstrip("-").isdigit():
            i = int(part)
            data = data[i] if -len(data) <= i < len(data) else None
        else:
            return None
        if data is None:
            return None
    return data
