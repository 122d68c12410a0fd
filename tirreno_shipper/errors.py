"""The exception tree of tirreno-shipper.

Third-party exceptions are translated at one boundary each
(``raise SomeError(...) from exc``) so callers only ever catch these::

    ShipperError
    ├── ConfigError            bad configuration; the CLI exits 78 (EX_CONFIG)
    ├── FormatError            a log format string that cannot be compiled
    ├── SpoolError             the SQLite spool cannot be opened or written
    │   └── SpoolCorruptError  the spool file is damaged (it is moved aside)
    ├── ResolverError          the user database cannot answer right now (retryable)
    └── SendError              a request to the sensor failed before an answer

The process's exit codes live here too, beside the errors that lead to them:
the CLI, the daemon and ``detect-format`` all return these names.
"""

from __future__ import annotations

from typing import Final

# Exit codes (sysexits.h where one fits).
EX_OK: Final = 0
EX_FAILURE: Final = 1  # unexpected failure, or `run --once` that could not finish its work
EX_USAGE: Final = 2  # a bad argument (argparse itself exits 2 on one it can tell)
EX_CANTCREAT: Final = 73  # state_dir missing or not writable
EX_TEMPFAIL: Final = 75  # state_dir in use by another `run`; systemd retries, as it should
EX_CONFIG: Final = 78  # bad configuration
EX_INTERRUPTED: Final = 130  # interrupted in the foreground


class ShipperError(Exception):
    """Base class of every error tirreno-shipper raises on purpose."""


class ConfigError(ShipperError):
    """The configuration is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class FormatError(ShipperError):
    """A log format (preset, nginx ``log_format`` or Apache ``LogFormat``) is invalid."""


class SpoolError(ShipperError):
    """The spool cannot be opened, migrated or written."""


class SpoolCorruptError(SpoolError):
    """The spool database is corrupt; it has been moved aside to ``moved_to``."""

    def __init__(self, message: str, moved_to: str | None = None) -> None:
        self.moved_to = moved_to
        super().__init__(message)


class ResolverError(ShipperError):
    """The user database failed (down, timeout, bad query); the caller retries later."""


class SendError(ShipperError):
    """A request to the sensor failed without an HTTP answer (connect, timeout, TLS)."""
