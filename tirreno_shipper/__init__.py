"""tirreno-shipper: ship nginx and Apache access logs to a tirreno sensor.

The package's modules are one concern each (see the README's "How it works");
the names re-exported here are the ones scripts and tests use. The configuration's
are loaded on first use (PEP 562): importing any module of the package runs this
file, and the configuration model pulls in pydantic and YAML, which commands that
read no configuration (``--version``, ``detect-format``, ``man``) never need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tirreno_shipper._version import __version__
from tirreno_shipper.errors import (
    ConfigError,
    FormatError,
    ResolverError,
    SendError,
    ShipperError,
    SpoolCorruptError,
    SpoolError,
)

if TYPE_CHECKING:
    from tirreno_shipper.config import Config, load_config, parse_config

_FROM_CONFIG = ("Config", "load_config", "parse_config")


def __getattr__(name: str) -> Any:
    if name in _FROM_CONFIG:
        value = getattr(importlib.import_module("tirreno_shipper.config"), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Config",
    "ConfigError",
    "FormatError",
    "ResolverError",
    "SendError",
    "ShipperError",
    "SpoolCorruptError",
    "SpoolError",
    "__version__",
    "load_config",
    "parse_config",
]
