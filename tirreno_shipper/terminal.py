"""Text from log lines and the sensor, made safe to show on a terminal.

A URL, a user agent or a sensor's answer is written by whoever sent the request:
``\\x1b]0;PWNED\\x07\\x1b[2J`` in a URL, printed raw by ``dead-letters list``, set
the operator's terminal title and cleared the screen. Everything shown to a person
(``dead-letters``, ``status``, ``check``, console logs) passes through `printable`,
which writes each control character as a visible escape (``\\x1b``), as Python's
``repr`` would. JSON output needs nothing more than what `json.dumps` escapes, except
C1 controls and bidirectional overrides, which `printable` also rewrites in a form
that stays valid inside a JSON string (``\\u009b``).
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 controls, DEL, C1 controls (0x9b is a one-character CSI to some terminals), and the
# bidirectional overrides and isolates that make a terminal show text out of order.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_UNSAFE_ANY = re.compile(f"[{_UNSAFE}]")
# \t (0x09) and \n (0x0a) pass.
_UNSAFE_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character escaped; with ``lines``, newlines and
    tabs are kept (a multi-line message, a traceback)."""
    pattern = _UNSAFE_BUT_LINES if lines else _UNSAFE_ANY
    return pattern.sub(_escape, text) if pattern.search(text) else text


def printable_json(text: str) -> str:
    """JSON text (from `json.dumps`, which escapes C0 controls itself) with C1 controls
    and bidirectional overrides escaped too: the same JSON value, safe on a terminal."""
    return _JSON_UNSAFE.sub(_json_escape, text) if _JSON_UNSAFE.search(text) else text


class PrintableWriter:
    """A text stream that escapes control characters (keeping newlines and tabs) on
    the way to ``out``: for reports made of many lines printed from many places."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(printable(text, lines=True))
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()


__all__ = ["PrintableWriter", "printable", "printable_json"]
