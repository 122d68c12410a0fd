"""End to end: real nginx and Apache, real user databases, the real daemon, the fake sensor.

One scenario drives a few thousand varied requests at both servers while their
logs are rotated (nginx: rename + USR1; Apache: rename + graceful; then one
copytruncate), and checks that every request that should become an event did,
exactly once and with the right fields, that nothing else was sent, and that no
session key or API key leaked into anything the daemon wrote or sent.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.checks import (
    compare,
    copytruncate,
    expectations,
    private_mode_problems,
    rename_rotate,
    request_id_problems,
    summarize,
)
from tests.integration.harness import UserDirectory, find_secrets, shipper_for, site_config
from tests.support.fake_sensor import FakeSensor
from tests.support.servers import APACHE_COOKIE_HEADER_FORMAT, Apache, Nginx, free_port
from tests.support.traffic import Traffic

pytestmark = pytest.mark.integration

REQUESTS_PER_SERVER_PHASE = 700  # two phases per server: 2,800 requests in all
DELIVERY_TIMEOUT = 60.0


@dataclass
class Site:
    name: str
    server: str  # "nginx" | "apache"
    log_key: str  # key of the server's access_logs
    log_format: str | dict[str, str]
    directory: UserDirectory
    sensor: FakeSensor
    api_key: str
    accept_language: bool  # the format logs Accept-Language

    @property
    def key_env(self) -> str:
        return f"TEST_KEY_{self.name.upper()}"


def _thread(target: Callable[..., Any], *args: Any) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _build_sites(
    nginx: Nginx,
    apache: Apache,
    pg: UserDirectory,
    maria: UserDirectory,
    sensors: Callable[[str], FakeSensor],
) -> list[Site]:
    specs: list[tuple[str, str, str, str | dict[str, str], UserDirectory, bool]] = [
        ("nginx_cookie", "nginx", "nginx_cookie", "nginx_cookie", pg, False),
        ("nginx_json", "nginx", "json", "json", pg, True),
        ("apache_cookie", "apache", "apache_cookie", "apache_cookie", maria, False),
        # As an operator pastes it from httpd.conf, backslashes and all.
        (
            "apache_header",
            "apache",
            "cookie_header",
            {"apache": APACHE_COOKIE_HEADER_FORMAT},
            maria,
            False,
        ),
    ]
    sites = []
    for name, server, log_key, fmt, directory, lang in specs:
        key = f"key-{name}-{secrets.token_hex(16)}"
        sites.append(Site(name, server, log_key, fmt, directory, sensors(key), key, lang))
    return sites


@pytest.mark.slow
def test_real_servers_rotation_exactly_once_and_no_secrets(
    tmp_path: Path,
    nginx: Nginx,
    apache: Apache,
    pg_users: UserDirectory,
    maria_users: UserDirectory,
    sensors: Callable[[str], FakeSensor],
) -> None:
    """Thousands of requests, three kinds of rotation: each event once, right, no secret leaked."""
    servers: dict[str, Nginx | Apache] = {"nginx": nginx, "apache": apache}
    sites = _build_sites(nginx, apache, pg_users, maria_users, sensors)
    metrics_port = free_port(("127.0.0.1",))
    state_dir = tmp_path / "state"
    config: dict[str, Any] = {
        "state_dir": str(state_dir),
        "log": {"level": "debug", "format": "json"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "poll_interval": 0.2,
        "shutdown_grace": 5,
        "sites": [
            site_config(
                s.name,
                sensor_url=s.sensor.url,
                key_env=s.key_env,
                log_path=servers[s.server].access_logs[s.log_key],
                log_format=s.log_format,
                directory=s.directory,
            )
            for s in sites
        ],
    }
    (tmp_path / "shipper").mkdir()
    shipper = shipper_for(tmp_path / "shipper", config, {s.key_env: s.api_key for s in sites})
    drivers = {
        "nginx": Traffic(nginx.port, list(pg_users.sessions), seed=61),
        "apache": Traffic(apache.port, list(maria_users.sessions), seed=62),
    }
    timings: dict[str, float] = {}
    started = time.monotonic()

    def expected_for(site: Site) -> dict[int, Any]:
        return expectations(
            drivers[site.server].sent, site.directory.sessions, accept_language=site.accept_language
        )

    shipper.start(ready=True)
    try:
        timings["daemon_start"] = time.monotonic() - started
        # Phase 1: both servers busy; each is rename-rotated halfway, under load.
        threads = [
            _thread(drivers[name].send_many, REQUESTS_PER_SERVER_PHASE)
            for name in ("nginx", "apache")
        ]
        half = REQUESTS_PER_SERVER_PHASE // 2
        for name, server in servers.items():
            assert _wait_until(functools.partial(_sent_at_least, drivers[name], half), 60)
            rename_rotate(server.access_logs.values())
            time.sleep(0.1)  # the server keeps writing into the renamed files a moment
            server.reopen_logs()
        for t in threads:
            t.join(120)
        timings["phase1"] = time.monotonic() - started

        # Phase 2: nginx goes on; Apache is quiet while one of its logs is copytruncated,
        # because lines written between the copy and the truncation are lost by
        # copytruncate itself (README), whatever the shipper does. Quiet is not enough:
        # the shipper must also have read the file to its end before the truncation.
        nginx_thread = _thread(drivers["nginx"].send_many, REQUESTS_PER_SERVER_PHASE)
        header_site = next(s for s in sites if s.name == "apache_header")
        caught_up = header_site.sensor.wait_accepted(len(expected_for(header_site)), 30)
        copytruncate(apache.access_logs["cookie_header"])
        drivers["apache"].send_many(REQUESTS_PER_SERVER_PHASE)
        nginx_thread.join(120)
        timings["traffic_done"] = time.monotonic() - started

        expected = {s.name: expected_for(s) for s in sites}
        for s in sites:
            s.sensor.wait_accepted(len(expected[s.name]), DELIVERY_TIMEOUT)
        time.sleep(1.5)  # anything extra or duplicated would arrive now
        timings["delivered"] = time.monotonic() - started

        mode_problems = private_mode_problems(state_dir)
        health = shipper.healthz()
        metrics_text = shipper.scrape()
    finally:
        code = shipper.stop()
    timings["stopped"] = time.monotonic() - started

    sent_counts = {name: len(d.sent) for name, d in drivers.items()}
    report = {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "requests": sent_counts,
        "kinds": {name: _kinds(d) for name, d in drivers.items()},
        "expected": {s.name: len(expected[s.name]) for s in sites},
        "accepted": {s.name: len(s.sensor.accepted) for s in sites},
        "copytruncate_caught_up_first": caught_up,
    }
    print(json.dumps(report, indent=1))

    # -- exactly once, right fields, nothing else --------------------------------
    problems: list[str] = []
    for s in sites:
        problems += compare(s.name, expected[s.name], s.sensor.accepted)
    problems += request_id_problems(s.sensor for s in sites)
    assert not problems, summarize(problems)

    # The mix really exercised what it claims to.
    for name, driver in drivers.items():
        kinds = _kinds(driver)
        assert all(
            kinds.get(k, 0) >= 5
            for k in ("login_ok", "login_fail", "logout", "malformed", "static")
        ), kinds
        assert sum(1 for x in driver.sent if x.host == "::1") > 100, (
            f"{name}: too few IPv6 requests"
        )
    for s in sites:
        types = {e.fields["eventType"] for e in expected[s.name].values()}
        assert types >= {
            "page_view",
            "page_error",
            "page_search",
            "account_login",
            "account_login_fail",
            "account_logout",
        }, (s.name, types)
        assert any(e.fields["userName"].endswith("*") for e in expected[s.name].values()), s.name

    # -- the daemon was healthy and clean ----------------------------------------
    assert code == 0, f"the daemon exited {code}:\n{shipper.output()[-3000:]}"
    assert health[0] == 200, health
    assert not mode_problems, mode_problems
    for s in sites:
        sent_metric = re.search(
            rf'^tirreno_shipper_events_sent_total\{{site="{s.name}"\}} (\S+)$', metrics_text, re.M
        )
        assert sent_metric is not None and float(sent_metric.group(1)) == len(expected[s.name]), (
            s.name,
            sent_metric and sent_metric.group(0),
        )
    log_events = shipper.logs(raw=True)
    errors = [
        e
        for e in log_events
        if e.get("level") in ("error", "critical") or "exception" in e or "raw" in e
    ]
    assert not errors, "the daemon logged errors:\n" + "\n".join(
        json.dumps(e)[:500] for e in errors[:20]
    )

    # -- security: no session key, cookie value or API key anywhere ----------------
    needles = [
        *pg_users.sessions,
        *maria_users.sessions,
        *(v for d in drivers.values() for v in d.decoy_cookie_values),
        *(s.api_key for s in sites),
    ]
    haystacks = {
        "daemon output": shipper.output(),
        "metrics": metrics_text,
        "config file": shipper.config.read_text(),
        **{f"state/{p.name}": p.read_text(errors="replace") for p in state_dir.glob("*.json")},
        **{
            f"{s.name} event bodies": "\n".join(json.dumps(r.fields) for r in s.sensor.accepted)
            for s in sites
        },
    }
    leaks = find_secrets(haystacks, needles)
    assert not leaks, f"secrets found: {leaks[:20]}"
    # The injection attempts changed nothing in the databases.
    assert pg_users.counts() == (6, 13) and maria_users.counts() == (6, 13)


def _sent_at_least(driver: Traffic, n: int) -> bool:
    return len(driver.sent) >= n


def _kinds(driver: Traffic) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in driver.sent:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out
