"""``validate``: the whole configuration checked offline, like ``nginx -t``.

Every key, preset and format string, every rule and regex, each site's key chain:
everything `run` builds before it touches a file, a database or the network. No
secret is needed (an unset ``${TIRRENO_API_KEY}`` is fine), nothing is opened but
the configuration file, nothing is created.
"""

from __future__ import annotations

from tirreno_shipper.config import SiteConfig, load_config
from tirreno_shipper.errors import ConfigError, ShipperError
from tirreno_shipper.pipeline import SitePipeline
from tirreno_shipper.users.keys import KeyExtractor


def _site_problems(n: int, site: SiteConfig) -> list[str]:
    problems: list[str] = []
    try:
        pipeline = SitePipeline(site, None)
    except (ShipperError, ValueError) as exc:
        return [f"sites[{n}].events: {exc}"]
    for i, src in enumerate(site.logs):
        try:
            pipeline.parser(src)
        except (ShipperError, ValueError) as exc:
            problems.append(f"sites[{n}].logs[{i}].format: {exc}")
    if site.users is not None:
        try:
            problem = KeyExtractor(site.users).problem
        except (ShipperError, ValueError) as exc:
            problem = str(exc)
        if problem:
            problems.append(f"sites[{n}].users.key: {problem}")
    return problems


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
    problems = [p for n, site in enumerate(config.sites) for p in _site_problems(n, site)]
    if problems:
        raise ConfigError(problems)
    lines = [f"{path}: valid ({len(config.sites)} site(s))"]
    lines += [_summary(site) for site in config.sites]
    return "\n".join(lines)
