"""structlog set-up: JSON lines for journald and containers, console on a TTY.

A last processor masks any value logged under a credential-like key, as a net
under the rule that no code logs a cookie, session key or API key at all.

Under systemd (stderr is the stream named by ``JOURNAL_STREAM``) each line starts
with its syslog priority, ``<4>`` for a warning (sd-daemon(3)): journald strips the
prefix and files the line at that priority, so ``journalctl -p warning`` finds it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from tirreno_shipper.terminal import printable

_SECRET_KEYS = frozenset(
    {"api_key", "apikey", "cookie", "session", "session_key", "password", "secret", "token"}
)


def _mask_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS and event[key] is not None:
            event[key] = "***"
    return event


def _printable_values(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = printable(value, lines=True)
    return event


# syslog(3) priorities by structlog's level names.
_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}


def writes_to_journal(out: TextIO) -> bool:
    """True when ``out`` is the journald stream systemd connected: ``JOURNAL_STREAM``
    is ``DEVICE:INODE`` of it. A shell started from the service (or a pipe to a
    file) inherits the variable but not the stream, hence the comparison."""
    named = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(out.fileno())
    except (OSError, ValueError, AttributeError):  # io.StringIO has no fileno
        return False
    return named == f"{st.st_dev}:{st.st_ino}"


def _with_priority(renderer: Any) -> Any:
    """The renderer, each of whose lines starts with ``<N>`` (sd-daemon(3))."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = _PRIORITY.get(str(event.get("level", name)).lower(), 6)
        return f"<{priority}>{renderer(logger, name, event)}"

    return render


# --log-level / --log-format of the command line: they win over the configuration's
# `log` section, a configuration reloaded by SIGHUP too.
_forced: dict[str, str] = {}


def force(level: str | None, fmt: str | None) -> None:
    """Make ``level`` and ``fmt`` (those given) win over every later `setup_logging`."""
    _forced.clear()
    _forced.update({k: v for k, v in (("level", level), ("format", fmt)) if v})


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    level = _forced.get("level", level)
    fmt = _forced.get("format", fmt)
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    if writes_to_journal(out):
        renderer = _with_priority(renderer)
    # A console shows str values raw: a visitor's URL with terminal escapes would act.
    shown = [_printable_values] if console else []
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            *shown,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (httpx, SQLAlchemy, watchdog) log through stdlib logging: rendered
    # like our own lines (a plain text line in a JSON stream breaks every log
    # shipper that parses it). Only their warnings matter to an operator; httpx's
    # INFO lines would repeat every request.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _mask_secrets,
                *shown,
                renderer,
            ],
        )
    )
    handler.addFilter(_drop_shutdown_noise)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


def _drop_shutdown_noise(record: logging.LogRecord) -> bool:
    # watchdog's inotify emitter logs this ERROR when its observer is stopped while
    # it is between reads: a harmless race of every stop, not something to act on.
    return not (
        record.name.startswith("watchdog.")
        and "called when the thread is inactive" in record.getMessage()
    )


class Throttle:
    """For a warning said at most once per ``every`` seconds (the first time at once):
    a condition that lasts (a full disk, a full spool) must not flood the log."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._said = -math.inf

    def due(self) -> bool:
        """True, and the clock restarts, when the warning may be said now."""
        now = time.monotonic()
        if now - self._said < self.every:
            return False
        self._said = now
        return True
