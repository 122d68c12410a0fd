"""Operator regexes against a visitor's text: no pattern lets one request stall a site.

With Python's backtracking ``re``, ``(a+)+$`` on ``/aaaaaaaaaaaaaaaaaaaaaaaa!`` (24 ``a``) took
4.4 s a line, doubling with each ``a``. Every operator pattern (rule paths, exclusions of paths
and user agents, users key regexes) is compiled by RE2 through `tirreno_shipper.regex`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tirreno_shipper import regex
from tirreno_shipper.config import parse_config
from tirreno_shipper.errors import ConfigError
from tirreno_shipper.pipeline import SitePipeline
from tirreno_shipper.records import Chunk, FileId

EVIL = "(a+)+$"
# 24 a's cost 4.4 s with re; 40 would cost about 12 days.
ATTACK_PATH = "/" + "a" * 40 + "!"
ATTACK_AGENT = "a" * 40 + "!"

SITE = """
state_dir: {tmp}/state
sites:
  - name: shop
    sensor: {{url: "http://127.0.0.1:1/sensor/", api_key: k}}
    logs: [{{path: {tmp}/access.log, format: nginx_combined}}]
    events:
      exclude: {{paths: {paths}, user_agents: {agents}}}
      rules: [{{path: '{rule}', type: account_login}}]
"""


def _pipeline(
    tmp_path: Path, paths: str = "[]", agents: str = "[]", rule: str = "^/x$"
) -> SitePipeline:
    config = parse_config(SITE.format(tmp=tmp_path, paths=paths, agents=agents, rule=rule), env={})
    return SitePipeline(config.sites[0], None)


def _line(path: str, agent: str) -> bytes:
    return (
        f'10.0.0.2 - - [29/Nov/2026:11:00:01 +0100] "GET {path} HTTP/1.1" 200 12 "-" "{agent}"'
    ).encode()


@pytest.mark.parametrize(
    ("where", "kwargs"),
    [
        ("rules[].path", {"rule": EVIL}),
        ("exclude.paths", {"paths": f"['{EVIL}']"}),
        ("exclude.user_agents", {"agents": f"['{EVIL}']"}),
    ],
)
def test_catastrophic_pattern_costs_linear_time(
    tmp_path: Path, where: str, kwargs: dict[str, str]
) -> None:
    """``(a+)+$`` in a rule or an exclusion, against a request built to make it backtrack,
    costs microseconds, not days."""
    pipeline = _pipeline(tmp_path, **kwargs)
    parser = pipeline.parser(pipeline.site.logs[0])
    raw = _line(ATTACK_PATH, ATTACK_AGENT)
    started = time.perf_counter()
    events, counts = pipeline.process(
        Chunk("/x/access.log", FileId(1, 2, "fp"), 0, len(raw) + 1, [(0, raw)]), parser
    )
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, (where, elapsed)
    assert counts.lines == 1 and counts.parsed == 1
    # The pattern did not match (the text ends in '!'), so the request went on as a page view.
    assert [e.fields["eventType"] for e in events] == ["page_view"], (where, counts.summary())


def test_helper_compiles_with_linear_engine() -> None:
    """The one helper every operator pattern goes through matches in linear time."""
    pattern = regex.compile(EVIL)
    started = time.perf_counter()
    assert pattern.search("/" + "a" * 100_000 + "!") is None
    assert time.perf_counter() - started < 0.5
    assert pattern.search("/aaa") is not None


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [(r"(a)\1", "\\1"), ("^/(?!admin)", "(?!"), ("(?<=x)y", "(?<=")],
)
def test_unsupported_construct_is_a_config_error_at_its_key_path(
    tmp_path: Path, pattern: str, construct: str
) -> None:
    """A backreference or lookaround is refused when the config is read, naming the key path
    and the reason (RE2), instead of running with the backtracking engine."""
    with pytest.raises(ConfigError) as info:
        _pipeline(tmp_path, paths=f"['^/ok', '{pattern}']", rule=pattern)
    message = str(info.value)
    for key in ("sites[0].events.exclude.paths[1]:", "sites[0].events.rules[0].path:"):
        line = next(ln for ln in message.splitlines() if key in ln)
        assert "invalid regular expression" in line and construct in line, line
        assert "RE2" in line, line


def test_users_key_regex_is_linear_and_refuses_lookaround(tmp_path: Path) -> None:
    """A users key regex runs on the cookie a visitor sent: linear time there too, and a
    construct RE2 cannot run is a config error at its key path."""
    from tirreno_shipper.records import Request
    from tirreno_shipper.users.keys import KeyExtractor, KeyRejected

    users = (
        "    users:\n"
        "      key: {{cookie: sid, transforms: [{{regex: '{rx}'}}]}}\n"
        f"      database: sqlite:///{tmp_path}/u.sqlite\n"
        "      query: SELECT 1 AS user_name WHERE :key IS NOT NULL\n"
    )
    text = SITE.format(tmp=tmp_path, paths="[]", agents="[]", rule="^/x$")
    config = parse_config(text + users.format(rx="((?:a+)+)$"), env={})
    assert config.sites[0].users is not None
    extract = KeyExtractor(config.sites[0].users)
    cookie = "a" * 40 + "!"
    request = Request("10.0.0.2", None, "GET", "/", "/", 200, None, None, None, None, cookie, {})
    started = time.perf_counter()
    with pytest.raises(KeyRejected):  # no match: the request has no usable key
        extract(request)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(ConfigError) as info:
        parse_config(text + users.format(rx="(?<=s=)(\\\\w+)"), env={})
    line = next(
        ln
        for ln in str(info.value).splitlines()
        if "users.key.transforms[0]" in ln and "regex:" in ln and "unknown key" not in ln
    )
    assert "invalid regular expression" in line and "RE2" in line, line
