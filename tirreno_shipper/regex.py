"""Operator regular expressions, compiled for a linear-time engine (RE2).

Patterns from the configuration (``events.rules[].path``, ``events.exclude.paths``,
``events.exclude.user_agents``, ``users.key`` regexes) are searched in text a
visitor chose: a URL, a user agent, a cookie. Python's backtracking ``re`` lets
``(a+)+$`` take seconds per line on ``/aaaa…!`` (doubling with each ``a``), so one
request could stall a site. RE2 (``google-re2``) matches in time linear in the
text, whatever the pattern; the price is that it refuses backreferences and
lookaround, which the configuration reports by key path (see `check`).

Every operator pattern goes through `compile` here, so no call site can pick
the backtracking engine by accident. The package's own fixed patterns (log
formats, redaction) stay on ``re``: they are written to be linear.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import re2

__all__ = ["Match", "Pattern", "RegexError", "check", "compile"]


class Match(Protocol):
    """The part of a match object the package uses (``re.Match`` and RE2's alike)."""

    def group(self, group: int | str = 0, /) -> str | None: ...

    def start(self, group: int | str = 0, /) -> int: ...

    def end(self, group: int | str = 0, /) -> int: ...


class Pattern(Protocol):
    """A compiled operator pattern."""

    @property
    def pattern(self) -> str: ...

    @property
    def groups(self) -> int: ...

    def search(self, text: str, /) -> Match | None: ...

    def match(self, text: str, /) -> Match | None: ...

    def fullmatch(self, text: str, /) -> Match | None: ...


class RegexError(ValueError):
    """A pattern RE2 cannot compile: a syntax error, or a construct it does not support."""


def _options() -> re2.Options:
    options = re2.Options()
    # RE2 writes each refused pattern to stderr itself; the config error says it once.
    options.log_errors = False
    return options


_OPTIONS = _options()

# What RE2 refuses on purpose (it cannot match them in linear time).
_UNSUPPORTED_HINT = (
    "operator patterns use RE2, which matches in linear time and so has no "
    "backreferences, lookaround, \\Z or (?x)"
)


def _reason(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


@lru_cache(maxsize=256)
def compile(pattern: str) -> Pattern:
    """``pattern`` compiled by RE2; `RegexError` says why one is refused.

    Cached: a reload compiles the same patterns again.
    """
    try:
        compiled: Pattern = re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = _reason(exc)
        hint = ""
        if "invalid perl operator" in reason or "invalid escape sequence" in reason:
            hint = f" ({_UNSUPPORTED_HINT})"
        raise RegexError(f"invalid regular expression: {reason}{hint}") from None
    return compiled


def check(pattern: str) -> str:
    """A config validator: ``pattern`` unchanged if RE2 compiles it, else `RegexError`."""
    compile(pattern)
    return pattern
