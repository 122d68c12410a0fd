"""tirreno-shipper: ship nginx and Apache access logs to a tirreno sensor.

The package's modules are one concern each (see the README's "How it works");
the names re-exported here are the ones scripts and tests use.
"""

from tirreno_shipper._version import __version__
from tirreno_shipper.config import Config, load_config, parse_config
from tirreno_shipper.errors import (
    ConfigError,
    FormatError,
    ResolverError,
    SendError,
    ShipperError,
    SpoolCorruptError,
    SpoolError,
)

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
