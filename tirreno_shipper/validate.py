"""``validate``: the whole configuration checked offline, like ``nginx -t``.

Every key, preset and format string, every rule and regex, each site's key chain:
everything `run` builds before it touches a file, a database or the network. No
secret is needed (an unset ``${TIRRENO_API_KEY}`` is fine), nothing is opened but
the configuration file, nothing is created.

What `run` would refuse is a problem (`ConfigError`, exit 78); what it would run,
but to no use, is a warning line of the report: a log format that cannot carry
the users key (every request unresolved; a deliberate choice only for a log whose
events are meant to go anonymous).
"""

from __future__ import annotations

from tirreno_shipper.config import SiteConfig, load_config
from tirreno_shipper.errors import ConfigError, ShipperError
from tirreno_shipper.pipeline import SitePipeline
from tirreno_shipper.users.keys import KeyExtractor


def _site_problems(n: int, site: SiteConfig) -> tuple[list[str], list[str]]:
    """The site's problems, and its warnings."""
    problems: list[str] = []
    warnings: list[str] = []
    try:
        pipeline = SitePipeline(site, None)
    except (ShipperError, ValueError) as exc:
        return [f"sites[{n}].events: {exc}"], []
    keys = key_problem = None
    if site.users is not None:
        try:
            keys = KeyExtractor(site.users)
            key_problem = keys.problem
        except (ShipperError, ValueError) as exc:
            key_problem = str(exc)
    for i, src in enumerate(site.logs):
        try:
            parser = pipeline.parser(src)
        except (ShipperError, ValueError) as exc:
            problems.append(f"sites[{n}].logs[{i}].format: {exc}")
            continue
        lacks = keys.format_problem(parser) if keys is not None else None
        if lacks is not None:
            warnings.append(f"sites[{n}].logs[{i}].format: {src.format_label} {lacks}")
    if key_problem:
        problems.append(f"sites[{n}].users.key: {key_problem}")
    return problems, warnings


def _summary(site: SiteConfig) -> str:
    logs = ", ".join(f"{src.path} ({src.format_label})" for src in site.logs)
    users = (
        "no users (anonymous events)" if site.users is None else f"users by {site.users.key.label}"
    )
    rules = len(site.events.rules)
    return f"  {site.name}: {logs}; {users}; {rules} rule(s); sensor {site.sensor.url}"


def validate(path: str) -> str:
    """The report of a valid configuration; raises `ConfigError` with every problem."""
    config = load_config(path, no_secrets=True)
    found = [_site_problems(n, site) for n, site in enumerate(config.sites)]
    problems = [p for site_problems, _ in found for p in site_problems]
    if problems:
        raise ConfigError(problems)
    lines = [f"{path}: valid ({len(config.sites)} site(s))"]
    lines += [_summary(site) for site in config.sites]
    lines += [f"  warning: {w}" for _, site_warnings in found for w in site_warnings]
    return "\n".join(lines)
