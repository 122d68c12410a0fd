"""Log format presets and nginx/Apache format strings compiled to one linear regex each."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from tirreno_shipper.config import ApacheFormat, JsonFormat, NginxFormat
from tirreno_shipper.errors import FormatError
from tirreno_shipper.formats import (
    PRESET_NAMES,
    PRESETS,
    compile_apache,
    compile_format,
    compile_nginx,
    preset_source,
)
from tirreno_shipper.parse import line_parser
from tirreno_shipper.records import Request

COMBINED_GROUPS = (
    "remote_addr",
    "remote_user",
    "time_local",
    "request",
    "status",
    "body_bytes_sent",
    "http_referer",
    "http_user_agent",
)


def parse(
    spec: object, line: bytes, cookie: str | None = None, extra: tuple[str, ...] = ()
) -> Request:
    req = line_parser(compile_format(spec, cookie), cookie, extra).parse(line)
    assert isinstance(req, Request), req
    return req


def test_ingress_nginx_upstreaminfo_lines_parse() -> None:
    """ingress-nginx's default format, with retried upstreams (", "-joined) and without an
    upstream at all (a 503 it answered itself), and the variant with the session cookie."""
    head = (
        b'10.0.0.1 - - [02/Dec/2026:14:00:00 +0000] "GET /a?b=1 HTTP/1.1" 200 612 "-" "curl/8" '
        b"79 0.002 [shop-web-80] [] "
    )
    plain = line_parser(compile_format("ingress_nginx"), None, [])
    retried = plain.fast(head + b"10.244.1.5:80, 10.244.1.6:80 0, 612 0.001, 0.002 502, 200 9f0c")
    assert not isinstance(retried, str) and retried.uri == "/a?b=1" and retried.status == 200
    assert not isinstance(plain.fast(head + b"- - - - 9f0c"), str)
    cookie = line_parser(compile_format("ingress_nginx_cookie", "sessionid"), "sessionid", [])
    req = cookie.fast(head + b'10.244.1.5:80 612 0.002 200 9f0c "sid1"')
    assert not isinstance(req, str) and req.session == "sid1"


def test_preset_list_is_complete() -> None:
    """Every preset the README documents exists, plus json."""
    assert set(PRESET_NAMES) == {
        "nginx_combined",
        "nginx_cookie",
        "ingress_nginx",
        "ingress_nginx_cookie",
        "apache_common",
        "apache_combined",
        "vhost_combined",
        "apache_cookie",
        "json",
    }


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_compiles_with_a_cookie_name(name: str) -> None:
    """Each preset compiles and knows its source text for the docs."""
    fmt = compile_format(name, "sessionid")
    assert fmt.regex is not None
    assert fmt.source
    assert fmt.has("remote_addr") and fmt.has("status") and fmt.has("request")


def test_nginx_combined_groups() -> None:
    """nginx combined captures the eight classic fields in order."""
    assert compile_format("nginx_combined").groups == (
        "remote_addr",
        "remote_user",
        "time_local",
        "request",
        "status",
        "body_bytes_sent",
        "http_referer",
        "http_user_agent",
    )


def test_apache_combined_groups_use_nginx_names() -> None:
    """Apache directives are translated to nginx variable names."""
    fmt = compile_format("apache_combined")
    assert fmt.kind == "apache"
    assert fmt.groups == (
        "remote_addr",
        "apache_l",
        "remote_user",
        "time_local",
        "request",
        "status",
        "body_bytes_sent",
        "http_referer",
        "http_user_agent",
    )


def test_cookie_presets_fill_in_the_cookie_name() -> None:
    """nginx_cookie logs "$cookie_NAME", apache_cookie "%{NAME}C"."""
    assert preset_source("nginx_cookie", "PHPSESSID")[1].endswith('"$cookie_PHPSESSID"')
    assert preset_source("apache_cookie", "laravel_session")[1].endswith('"%{laravel_session}C"')
    assert compile_format("nginx_cookie", "PHPSESSID").groups[-1] == "cookie_phpsessid"
    assert compile_format("apache_cookie", "sid").groups[-1] == "cookie_sid"


def test_cookie_preset_without_cookie_is_an_error() -> None:
    """A *_cookie preset needs the cookie's name."""
    with pytest.raises(FormatError, match=r"users\.key\.cookie"):
        compile_format("apache_cookie")


def test_unknown_preset_suggests_the_closest() -> None:
    """A typo in a preset name gets a "did you mean"."""
    with pytest.raises(FormatError, match="did you mean 'apache_combined'"):
        compile_format("apache_combind")
    # Both servers call it "combined": both presets are offered (difflib picked vhost_combined).
    with pytest.raises(FormatError, match="did you mean 'nginx_combined' or 'apache_combined'"):
        compile_format("combined")


def test_json_preset_default_and_custom_keys() -> None:
    """json is a regex-free format; custom keys map our names to the line's keys."""
    assert compile_format("json").kind == "json"
    custom = compile_format(JsonFormat.model_validate({"json": {"remote_addr": "ip"}}))
    assert custom.json_keys == {"remote_addr": "ip"}


def test_apache_unknown_directive_is_refused() -> None:
    """apachelogs' grammar decides which directives exist."""
    with pytest.raises(FormatError, match="%Z"):
        compile_apache("%h %Z")


def test_two_variables_without_separator_are_refused() -> None:
    """Adjacent variables cannot be split without guessing."""
    with pytest.raises(FormatError, match="separator"):
        compile_nginx("$remote_addr$status")
    with pytest.raises(FormatError, match="no variables"):
        compile_nginx("just text")


def test_apache_logformat_line_pasted_whole() -> None:
    """`LogFormat "..." name` as copied from httpd.conf, escaped quotes and all."""
    fmt = compile_apache(
        r'LogFormat "%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-Agent}i\"" combined'
    )
    assert fmt.groups == compile_format("apache_combined").groups
    with pytest.raises(FormatError, match="LogFormat"):
        compile_apache("LogFormat %h combined")


def test_nginx_log_format_directive_pasted_whole() -> None:
    """A multi-line `log_format main '...' '...';` directive is its quoted parts joined."""
    directive = """log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';"""
    fmt = compile_nginx(directive)
    assert fmt.groups == (*COMBINED_GROUPS, "http_x_forwarded_for")
    line = (
        b'10.0.0.1 - - [29/Nov/2026:10:00:01 +0000] "GET /a HTTP/1.1" 200 5 "-" "ua" '
        b'"203.0.113.9, 10.0.0.2"'
    )
    req = parse(NginxFormat(nginx=directive), line, extra=("http_x_forwarded_for",))
    assert req.extra == {"http_x_forwarded_for": "203.0.113.9, 10.0.0.2"}
    with pytest.raises(FormatError, match="quoted"):
        compile_nginx("log_format main;")


def test_nginx_braced_variables() -> None:
    """nginx's ${var} form names the same variable."""
    assert compile_nginx('${remote_addr} "$request" ${status}').groups == (
        "remote_addr",
        "request",
        "status",
    )


def test_apache_header_cookie_time_directives_named() -> None:
    """%{X}i, %{X}C, %D, %T, %{msec}t and %{strftime}t get stable names."""
    fmt = compile_apache(
        '%a %{msec}t "%r" %>s %D %T "%{Accept-Language}i" "%{X-Request-Id}i" "%{Cookie}i" "%{sid}C"'
    )
    assert fmt.groups == (
        "remote_addr",
        "time_msec",
        "request",
        "status",
        "apache_D",
        "apache_T",
        "http_accept_language",
        "http_x_request_id",
        "http_cookie",
        "cookie_sid",
    )
    strf = compile_apache('%h %{%Y-%m-%d %H:%M:%S}t "%r" %>s')
    assert strf.strftime == "%Y-%m-%d %H:%M:%S"
    assert "time_strftime" in strf.groups


def test_format_specs_from_config_models() -> None:
    """compile_format takes the config's {nginx: ...} and {apache: ...} models."""
    assert compile_format(NginxFormat(nginx='$remote_addr "$request" $status')).kind == "nginx"
    assert compile_format(ApacheFormat(apache='%h "%r" %>s')).kind == "apache"
    with pytest.raises(FormatError):
        compile_format(42)


def test_patterns_are_possessive() -> None:
    """No lazy or greedy-backtracking quantifier: every run is possessive or bounded."""
    for name in PRESETS:
        pattern = compile_format(name, "sid").regex
        assert pattern is not None
        text = pattern.pattern
        assert "*?" not in text and "+?" not in text
        assert text.count("*+") >= 3


# Formats beyond the presets that exercise every pattern shape _pattern makes:
# upstream lists, a remote_user before other literals, and separators that a
# character class reads specially (- \ ^ ]).
CUSTOM_FORMATS = [
    NginxFormat(
        nginx='$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        '"$http_referer" "$http_user_agent" $request_time $upstream_response_time '
        "$upstream_addr"
    ),
    NginxFormat(nginx='$remote_addr-$remote_user "$request" $status'),
    NginxFormat(nginx="$remote_user\\$status^$body_bytes_sent-$http_user_agent]$msec"),
    ApacheFormat(apache='%h %{%Y-%m-%d %H:%M:%S}t "%r" %>s %{X}i'),
    ApacheFormat(apache="%a-%u-%>s [%r] %D"),
]


def _possessive_group_repeats(items: Any) -> list[list[tuple[Any, Any]]]:
    """The bodies of every possessive repeat of more than one character in a
    parsed pattern (re._parser's tree, untyped: hence Any), at any depth."""
    found: list[list[tuple[Any, Any]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, tuple) and len(node) == 2 and str(node[0]) == "POSSESSIVE_REPEAT":
            body = list(node[1][2])
            if len(body) > 1 or str(body[0][0]) not in {"LITERAL", "NOT_LITERAL", "IN", "ANY"}:
                found.append(body)
        if isinstance(node, list | tuple) or type(node).__name__ == "SubPattern":
            for child in node:
                walk(child)

    walk(list(items))
    return found


def test_possessive_groups_read_alike_on_python_3_11_0_to_3_11_4() -> None:
    """CPython 3.11.0-3.11.4 (Debian 12 has 3.11.2) resume a possessive group repeat
    whose pass failed where the pass's last lookaround, repeat or alternation left
    the match, not where the pass began (gh-100061, gh-106052). A pass that can
    only fail on a plain character, with an alternation only at its start and a
    never-failing ``x*+`` only at its end, reads the same there as on 3.11.5+."""
    parser = importlib.import_module("re._parser")
    plain = {"LITERAL", "NOT_LITERAL", "IN", "ANY"}
    specs: list[object] = [*sorted(PRESETS), *CUSTOM_FORMATS]
    for spec in specs:
        regex = compile_format(spec, "sid").regex
        assert regex is not None
        for body in _possessive_group_repeats(parser.parse(regex.pattern)):
            for i, (op, av) in enumerate(body):
                name = str(op)
                if name in plain:
                    continue
                if name == "BRANCH" and i == 0:
                    branches = av[1]
                    assert all(str(o) in plain for b in branches for o, _ in b), regex.pattern
                    continue
                lo, _, inner = av if name == "POSSESSIVE_REPEAT" else (1, 0, [])
                never_fails = lo == 0 and len(inner) == 1 and str(inner[0][0]) in plain
                assert never_fails and i == len(body) - 1, (
                    f"{name} inside a possessive group repeat of {regex.pattern!r}"
                )


@pytest.mark.parametrize("sep", ["-", "\\", "^", "]", " ", '"'])
def test_any_separator_ends_a_field_without_lookahead(sep: str) -> None:
    """A field runs up to the next literal's first character, whatever it is, as
    one character class (no "(?!-)." lookahead; see the test above)."""
    fmt = compile_nginx(f"$remote_addr{sep}$status")
    assert fmt.regex is not None and "(?" not in fmt.regex.pattern
    m = fmt.regex.fullmatch(f"a!b{sep}200")
    assert m is not None and m.groups() == ("a!b", "200")
    assert fmt.regex.fullmatch(f"a{sep}b{sep}200") is None
