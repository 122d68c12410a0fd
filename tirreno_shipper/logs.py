"""structlog set-up: JSON lines for journald and containers, console on a TTY.

A last processor masks any value logged under a credential-like key, as a net
under the rule that no code logs a cookie, session key or API key at all.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

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


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
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
