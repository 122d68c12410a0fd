"""Exclusion filters (and their defaults) and eventType rules."""

from __future__ import annotations

import pytest

from tirreno_shipper.config import ExcludeConfig, Rule
from tirreno_shipper.filters import (
    METHOD,
    NO_REQUEST,
    PATH,
    STATUS,
    USER_AGENT,
    RequestFilter,
    RuleSet,
    status_matches,
)
from tirreno_shipper.records import Request


def req(
    path: str = "/",
    method: str | None = "GET",
    status: int | None = 200,
    query: str = "",
    user_agent: str | None = "Mozilla/5.0",
) -> Request:
    uri = path + (f"?{query}" if query else "")
    return Request(
        remote_addr="203.0.113.1",
        time="2026-01-01 00:00:00",
        method=method,
        uri=uri if method is not None else None,
        path=path if method is not None else None,
        status=status,
        user_agent=user_agent,
    )


DEFAULTS = RequestFilter(ExcludeConfig())


@pytest.mark.parametrize(
    "path",
    [
        "/static/app.js",
        "/assets/x",
        "/media/img",
        "/_next/static/chunk",
        "/a/b/style.css",
        "/logo.PNG.png",
        "/img/photo.jpeg",
        "/fonts/x.woff2",
        "/favicon.ico",
        "/robots.txt",
        "/sitemap.xml",
        "/apple-touch-icon-precomposed.png",
        "/healthz",
        "/health",
        "/readyz",
        "/livez",
        "/ping",
        "/server-status",
        "/nginx_status",
    ],
)
def test_default_excludes_static_assets_and_probes(path: str) -> None:
    """The default path list drops static assets and health endpoints."""
    assert DEFAULTS.excluded(req(path)) == PATH
    assert DEFAULTS.path_excluded(path)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/login/",
        "/products/42",
        "/static-pages/about",
        "/javascript-guide",
        "/healthcheck-info",
    ],
)
def test_default_keeps_pages(path: str) -> None:
    """Pages (even with asset-like words in them) are kept."""
    assert DEFAULTS.excluded(req(path)) is None
    assert not DEFAULTS.path_excluded(path)


@pytest.mark.parametrize(
    "agent",
    [
        "kube-probe/1.31",
        "ELB-HealthChecker/2.0",
        "GoogleHC/1.0",
        "Prometheus/2.50.0",
        "Blackbox Exporter/0.24.0",
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Pingdom.com_bot_version_1.4",
        "check_http/v2.3.3 (nagios-plugins 2.3.3)",
        "Consul Health Check",
    ],
)
def test_default_excludes_probe_user_agents(agent: str) -> None:
    """Health checkers and uptime monitors are not users."""
    assert DEFAULTS.excluded(req("/", user_agent=agent)) == USER_AGENT


def test_default_excludes_options_and_head() -> None:
    """OPTIONS (CORS preflight) and HEAD are not page views."""
    assert DEFAULTS.excluded(req(method="OPTIONS")) == METHOD
    assert DEFAULTS.excluded(req(method="HEAD")) == METHOD
    assert DEFAULTS.excluded(req(method="POST")) is None


def test_request_without_method_or_url() -> None:
    """A garbage request line (TLS handshake) is filtered as no_request."""
    assert DEFAULTS.excluded(req(method=None, status=400)) == NO_REQUEST


def test_custom_excludes_replace_defaults() -> None:
    """Configured paths, statuses, methods and agents replace the defaults."""
    f = RequestFilter(
        ExcludeConfig(
            paths=[r"^/admin/"],
            statuses=["404", "5xx"],
            methods=["delete"],
            user_agents=["(?i)bot"],
        )
    )
    assert f.excluded(req("/admin/x")) == PATH
    assert f.excluded(req("/static/app.css")) is None  # the default list is replaced
    assert f.excluded(req(status=404)) == STATUS
    assert f.excluded(req(status=503)) == STATUS
    assert f.excluded(req(status=403)) is None
    assert f.excluded(req(method="DELETE")) == METHOD
    assert f.excluded(req(method="HEAD")) is None
    assert f.excluded(req(user_agent="GoogleBot/2.1")) == USER_AGENT
    assert f.excluded(req(user_agent=None)) is None


def test_empty_excludes_keep_everything() -> None:
    """Empty lists turn each filter off."""
    f = RequestFilter(ExcludeConfig(paths=[], user_agents=[], statuses=[], methods=[]))
    assert f.excluded(req("/static/app.css", method="OPTIONS", user_agent="kube-probe/1")) is None
    assert not f.path_excluded("/static/app.css")


def test_path_checked_skips_the_second_search() -> None:
    """When the parser already tested the path, excluded() does not repeat it."""
    assert DEFAULTS.excluded(req("/static/x.css"), path_checked=True) is None


def test_status_matches() -> None:
    """Classes and exact codes; an absent status never matches."""
    specs = [(2, -1), (-1, 404)]
    assert status_matches(204, specs)
    assert status_matches(404, specs)
    assert not status_matches(405, specs)
    assert not status_matches(None, specs)


def rules(*specs: dict[str, object]) -> RuleSet:
    return RuleSet([Rule.model_validate(s) for s in specs])


EXAMPLE = rules(
    {"method": "POST", "path": "^/login/?$", "status": "3xx", "type": "account_login"},
    {
        "method": "POST",
        "path": "^/login/?$",
        "type": "account_login_fail",
        "unresolved": "anonymous",
    },
    {"path": "^/logout/?$", "type": "account_logout"},
    {"path": "^/search", "query": True, "type": "page_search"},
    {"path": "^/search", "query": False, "type": "page_view"},
    {"method": ["put", "PATCH"], "type": "page_edit"},
    {"status": [410, "5xx"], "type": "page_error"},
)


def test_rules_first_match_wins() -> None:
    """The first matching rule decides; the unresolved override comes with it."""
    assert EXAMPLE.match(req("/login/", "POST", 302)) == ("account_login", None)
    assert EXAMPLE.match(req("/login", "POST", 200)) == ("account_login_fail", "anonymous")
    assert EXAMPLE.match(req("/login/", "GET", 200)) == ("page_view", None)
    assert EXAMPLE.match(req("/logout/", "GET", 302)) == ("account_logout", None)


def test_rules_query_presence() -> None:
    """query: true needs a query string; query: false needs none."""
    assert EXAMPLE.match(req("/search", query="q=x")) == ("page_search", None)
    assert EXAMPLE.match(req("/search")) == ("page_view", None)


def test_rules_method_lists_case_insensitive() -> None:
    """Method lists match, whatever case the config used."""
    assert EXAMPLE.match(req("/p", "PUT")) == ("page_edit", None)
    assert EXAMPLE.match(req("/p", "PATCH")) == ("page_edit", None)
    assert EXAMPLE.match(req("/p", "DELETE")) == ("page_view", None)


def test_rules_status_exact_and_class() -> None:
    """Exact codes and classes in one list."""
    assert EXAMPLE.match(req("/p", status=410)) == ("page_error", None)
    assert EXAMPLE.match(req("/p", status=502)) == ("page_error", None)
    assert EXAMPLE.match(req("/p", status=404)) == ("page_view", None)
    assert EXAMPLE.match(req("/p", status=None)) == ("page_view", None)


def test_no_rules_default_page_view() -> None:
    """Without rules every request is a page_view."""
    assert RuleSet([]).match(req("/login/", "POST", 302)) == ("page_view", None)


def test_unknown_event_type_refused_by_rule_model() -> None:
    """Only tirreno's 13 eventTypes can be configured."""
    with pytest.raises(ValueError, match="account_login"):
        Rule.model_validate({"type": "login"})
