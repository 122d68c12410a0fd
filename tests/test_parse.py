"""Access-log lines → Request records: every format, both servers' escaping, hostile lines,
and field-for-field agreement with apachelogs on real logs."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import Any

import apachelogs
import pytest

from tirreno_shipper.config import ApacheFormat, JsonFormat, NginxFormat
from tirreno_shipper.formats import compile_format
from tirreno_shipper.parse import (
    BAD_STATUS,
    BAD_TIME,
    EXCLUDED_PATH,
    INVALID_BYTES,
    NO_MATCH,
    LineParser,
    decode_field,
    line_parser,
    split_request,
    time_local_to_utc,
)
from tirreno_shipper.reader import file_chunks
from tirreno_shipper.records import Request

DATA = Path(__file__).parent / "data"
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
COMBINED = (
    '203.0.113.10 - alice [29/Nov/2026:11:00:01 +0100] "GET /search?q=1 HTTP/1.1" 200 5123 '
    f'"https://shop.example.com/" "{UA}"'
).encode()


def parser(spec: object, cookie: str | None = None, extra: tuple[str, ...] = ()) -> LineParser:
    return line_parser(compile_format(spec, cookie), cookie, extra)


def ok(p: LineParser, line: bytes) -> Request:
    req = p.parse(line)
    assert isinstance(req, Request), f"{req!r} for {line!r}"
    return req


@pytest.fixture
def utc_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with the process's local zone set to UTC (for formats without a zone)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- presets -------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["nginx_combined", "apache_combined"])
def test_combined_presets(preset: str) -> None:
    """Both combined presets give the same record, time converted to UTC."""
    req = ok(parser(preset), COMBINED)
    assert req == Request(
        remote_addr="203.0.113.10",
        time="2026-11-29 10:00:01",
        method="GET",
        uri="/search?q=1",
        path="/search",
        status=200,
        remote_user="alice",
        referer="https://shop.example.com/",
        user_agent=UA,
    )


def test_apache_common() -> None:
    """Common log format: no referer or user agent."""
    req = ok(
        parser("apache_common"), b'::1 - - [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 404 -'
    )
    assert (req.remote_addr, req.time, req.status, req.referer, req.user_agent) == (
        "::1",
        "2000-10-10 20:55:36",
        404,
        None,
        None,
    )


def test_vhost_combined() -> None:
    """vhost_combined's %v:%p prefix parses."""
    line = DATA.joinpath("apachelogs_vhost_combined.log").read_bytes().splitlines()[0]
    req = ok(parser("vhost_combined"), line)
    assert (req.remote_addr, req.status, req.uri) == ("203.62.1.80", 301, "/")


@pytest.mark.parametrize("preset", ["nginx_cookie", "apache_cookie"])
def test_cookie_presets(preset: str) -> None:
    """The last quoted field is the session cookie; "-" and "" mean none."""
    p = parser(preset, "sessionid")
    assert ok(p, COMBINED + b' "s1abc"').session == "s1abc"
    assert ok(p, COMBINED + b' "-"').session is None
    assert ok(p, COMBINED + b' ""').session is None
    assert p.parse(COMBINED) == NO_MATCH


def test_nginx_cookie_upper_case_name() -> None:
    """$cookie_PHPSESSID: nginx lowercases variable names; the session is still found."""
    p = parser("nginx_cookie", "PHPSESSID")
    assert ok(p, COMBINED + b' "abc123"').session == "abc123"


def test_json_default_keys() -> None:
    """nginx escape=json lines with the variable names as keys."""
    line = (
        '{"time_iso8601":"2026-11-29T11:00:01+01:00","remote_addr":"2001:db8::1",'
        '"remote_user":"","request":"POST /login/?next=%2F HTTP/2.0","status":"302",'
        '"body_bytes_sent":"0","http_referer":"https://x/","http_user_agent":"caf\u00e9 \\"q\\"",'
        '"http_accept_language":"fr-CH, fr;q=0.9","http_x_forwarded_for":"1.2.3.4",'
        '"cookie_sessionid":"abc"}'
    ).encode()
    req = ok(parser("json", "sessionid", ("http_x_forwarded_for",)), line)
    assert req == Request(
        remote_addr="2001:db8::1",
        time="2026-11-29 10:00:01",
        method="POST",
        uri="/login/?next=%2F",
        path="/login/",
        status=302,
        remote_user=None,
        referer="https://x/",
        user_agent='café "q"',
        accept_language="fr-CH, fr;q=0.9",
        session="abc",
        extra={"http_x_forwarded_for": "1.2.3.4"},
    )


def test_json_custom_keys_and_msec() -> None:
    """Custom keys map our names to the log's; $msec gives milliseconds."""
    spec = JsonFormat.model_validate(
        {"json": {"remote_addr": "ip", "msec": "ts", "request_method": "m", "request_uri": "u"}}
    )
    line = b'{"ip":"192.0.2.1","ts":"1764410401.250","m":"GET","u":"/a?b=c","status":200}'
    req = ok(parser(spec), line)
    assert (req.remote_addr, req.time, req.method, req.uri, req.path, req.status) == (
        "192.0.2.1",
        "2025-11-29 10:00:01.250",
        "GET",
        "/a?b=c",
        "/a",
        200,
    )


def test_json_bad_lines() -> None:
    """Non-JSON, non-objects, bad status and bad time are counted, not raised."""
    p = parser("json")
    assert p.parse(b"not json") == NO_MATCH
    assert p.parse(b"[1, 2]") == NO_MATCH
    assert p.parse(b"[" * 100_000) == NO_MATCH
    assert p.parse(b'{"status": "2000"}') == BAD_STATUS
    assert p.parse('{"status": "²00"}'.encode()) == BAD_STATUS
    assert p.parse(b'{"time_iso8601": "yesterday"}') == BAD_TIME
    assert p.parse(b'{"time_iso8601": "0001-01-01T00:00:00+01:00"}') == BAD_TIME


def test_json_lone_surrogate_is_replaced() -> None:
    """A \\ud800 escape cannot become a lone surrogate that no later stage can encode."""
    req = ok(parser("json"), b'{"remote_addr":"1.2.3.4","request":"GET /a\\ud800 HTTP/1.1"}')
    assert req.uri is not None
    req.uri.encode("utf-8")
    assert "\ufffd" in req.uri


def test_json_a_latin1_byte_in_a_header_does_not_hide_the_request() -> None:
    """nginx escape=json writes bytes >= 0x80 unchanged: one Latin-1 byte in a header makes
    the line invalid UTF-8, and the request must still be parsed (and sent to tirreno). As
    for the text formats, each field is UTF-8 if it is, else Latin-1; UTF-8 fields stay."""
    line = (
        b'{"time_iso8601":"2026-11-29T11:00:01+01:00","remote_addr":"203.0.113.9",'
        b'"remote_user":"zo\xc3\xab","request":"POST /caf\xc3\xa9/login HTTP/1.1",'
        b'"status":"200","http_referer":"https://x/\xe9t\xe9","http_user_agent":"lat\xe9in",'
        b'"http_accept_language":"fr, \xe2\x82\xac","http_x_forwarded_for":"1.2.3.4",'
        b'"cookie_sessionid":"s\xe9ss"}'
    )
    req = ok(parser("json", "sessionid", ("http_x_forwarded_for",)), line)
    assert req == Request(
        remote_addr="203.0.113.9",
        time="2026-11-29 10:00:01",
        method="POST",
        uri="/caf\u00e9/login",
        path="/caf\u00e9/login",
        status=200,
        remote_user="zo\u00eb",
        referer="https://x/\u00e9t\u00e9",
        user_agent="lat\u00e9in",
        accept_language="fr, \u20ac",
        session="s\u00e9ss",
        extra={"http_x_forwarded_for": "1.2.3.4"},
    )
    # Custom keys and the excluded-path check take the same route.
    spec = JsonFormat.model_validate({"json": {"http_user_agent": "ua", "request": "r"}})
    req = ok(parser(spec), b'{"r":"GET /a HTTP/1.1","ua":"\xff\xfe"}')
    assert (req.method, req.uri, req.user_agent) == ("GET", "/a", "\u00ff\u00fe")


def test_json_non_utf8_line_with_lone_surrogate_escapes_stays_encodable() -> None:
    """A \\ud800 escape in a line that is also not UTF-8 still becomes U+FFFD (never a
    lone surrogate), and the field's raw bytes still decide UTF-8 or Latin-1."""
    line = (
        b'{"remote_addr":"1.2.3.4","request":"GET /a\\ud800 HTTP/1.1",'
        b'"http_user_agent":"x\\udfff\xe9","http_referer":"\xc3\xa9\\ud800\xc3\xa9"}'
    )
    req = ok(parser("json"), line)
    assert (req.uri, req.user_agent, req.referer) == (
        "/a\ufffd",
        "x\ufffd\u00e9",
        "\u00e9\ufffd\u00e9",
    )
    for value in (req.uri, req.user_agent, req.referer):
        assert value is not None
        value.encode("utf-8")
    # Still no JSON: still skipped, not raised.
    assert parser("json").parse(b'{"remote_addr":"1.2.3.4\xff"') == NO_MATCH
    assert parser("json").parse(b"[\xff]") == NO_MATCH


# --- Apache LogFormat strings -------------------------------------------------------------


def test_apache_cookie_header_and_accept_language() -> None:
    """%{Cookie}i holds every cookie; ours is picked out by name."""
    p = parser(
        ApacheFormat(apache='%h %l %u %t "%r" %>s %b "%{Cookie}i" "%{Accept-Language}i"'), "sid"
    )
    line = (
        b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 - '
        b'"a=1; sid=xyz; b=2" "fr-CH, fr;q=0.9"'
    )
    req = ok(p, line)
    assert (req.session, req.accept_language) == ("xyz", "fr-CH, fr;q=0.9")
    assert ok(p, line.replace(b"sid=xyz", b"sidx=no")).session is None
    assert ok(p, line.replace(b"sid=xyz", b"sid=")).session is None


def test_apache_duration_header_and_cookie_directives() -> None:
    """%D, %T, %{X}i and %{X}C parse; the named header goes to extra."""
    p = parser(
        ApacheFormat(apache='%h %t "%r" %>s %D %T "%{X-User-Id}i" "%{sid}C"'),
        "sid",
        ("http_x_user_id",),
    )
    req = ok(p, b'1.2.3.4 [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1234 0 "u-42" "abc"')
    assert (req.session, req.extra) == ("abc", {"http_x_user_id": "u-42"})


def test_apache_strftime_time_with_zone() -> None:
    """%{%Y-%m-%d %H:%M:%S %z}t: a custom time that contains spaces."""
    p = parser(ApacheFormat(apache='%h %{%Y-%m-%d %H:%M:%S %z}t "%r" %>s'))
    req = ok(p, b'1.2.3.4 2024-01-02 03:04:05 +0200 "GET / HTTP/1.1" 200')
    assert req.time == "2024-01-02 01:04:05"


def test_apache_strftime_time_local_zone(utc_zone: None) -> None:
    """%{%Y-%m-%d %H:%M:%S}t without a zone is the server's local time."""
    p = parser(ApacheFormat(apache='%h %{%Y-%m-%d %H:%M:%S}t "%r" %>s'))
    req = ok(p, b'1.2.3.4 2024-01-02 03:04:05 "GET / HTTP/1.1" 200')
    assert req.time == "2024-01-02 03:04:05"
    assert p.parse(b'1.2.3.4 2024-13-02 03:04:05 "GET / HTTP/1.1" 200') == BAD_TIME


def test_apache_msec_time() -> None:
    """%{msec}t: milliseconds since the epoch, kept as .v."""
    p = parser(ApacheFormat(apache='%h %{msec}t "%r" %>s'))
    assert ok(p, b'1.2.3.4 1700000000123 "GET / HTTP/1.1" 200').time == "2023-11-14 22:13:20.123"


def test_apache_logformat_line_pasted_whole_parses() -> None:
    """A whole `LogFormat "..." nick` line parses combined lines."""
    p = parser(
        ApacheFormat(
            apache=r'LogFormat "%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" '
            r'\"%{User-Agent}i\"" combined'
        )
    )
    assert ok(p, COMBINED).user_agent == UA


# --- nginx log_format strings ---------------------------------------------------------------


def test_nginx_iso8601_method_uri_bytes_times_and_unknown_variables() -> None:
    """$time_iso8601, $request_method/$request_uri, $bytes_sent, $request_time,
    $http_x_forwarded_for, $upstream_response_time and an unknown variable."""
    fmt = NginxFormat(
        nginx='$remote_addr [$time_iso8601] "$request_method $request_uri" $status $bytes_sent '
        '$request_time "$http_x_forwarded_for" $upstream_response_time $ssl_protocol'
    )
    extra = ("http_x_forwarded_for", "upstream_response_time", "ssl_protocol")
    p = parser(fmt, extra=extra)
    req = ok(
        p,
        b'::1 [2024-01-02T03:04:05+02:00] "GET /a?b=1" 200 123 0.004 "1.1.1.1, 2.2.2.2" '
        b"0.003, 0.001 TLSv1.3",
    )
    assert (req.remote_addr, req.time, req.method, req.uri, req.path, req.status) == (
        "::1",
        "2024-01-02 01:04:05",
        "GET",
        "/a?b=1",
        "/a",
        200,
    )
    assert req.extra == {
        "http_x_forwarded_for": "1.1.1.1, 2.2.2.2",
        "upstream_response_time": "0.003, 0.001",
        "ssl_protocol": "TLSv1.3",
    }
    single = ok(p, b'::1 [2024-01-02T03:04:05+02:00] "GET /" 200 1 0.1 "-" 0.003 -')
    assert single.extra == {"upstream_response_time": "0.003"}


def test_nginx_msec() -> None:
    """$msec: seconds with milliseconds."""
    p = parser(NginxFormat(nginx='$remote_addr $msec "$request" $status'))
    assert ok(p, b'1.2.3.4 1700000000.123 "GET / HTTP/1.1" 200').time == "2023-11-14 22:13:20.123"


def test_nginx_directive_pasted_whole_parses() -> None:
    """The classic `log_format main ...` directive from nginx.conf, across lines."""
    directive = """log_format main '$remote_addr - $remote_user [$time_local] "$request" '
        '$status $body_bytes_sent "$http_referer" '
        '"$http_user_agent" "$http_x_forwarded_for"';"""
    p = parser(NginxFormat(nginx=directive), extra=("http_x_forwarded_for",))
    req = ok(p, COMBINED + b' "-"')
    assert (req.user_agent, req.extra) == (UA, {})


# --- escaping and decoding ---------------------------------------------------------------------


def test_nginx_hex_escapes_upper_case() -> None:
    """nginx writes ", \\ and bytes >= 0x80 as \\xHH; UTF-8 sequences decode."""
    line = (
        b'1.2.3.4 - - [29/Nov/2026:10:00:01 +0000] "GET /caf\\xC3\\xA9 HTTP/1.1" 200 1 '
        b'"-" "curl \\x22quoted\\x22 \\x5Cslash"'
    )
    req = ok(parser("nginx_combined"), line)
    assert req.uri == "/café"
    assert req.user_agent == 'curl "quoted" \\slash'


def test_apache_escapes() -> None:
    """Apache writes \\" \\\\ \\t and \\xhh."""
    line = (
        b'1.2.3.4 - - [29/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 1 '
        b'"-" "a \\"q\\" b\\\\c\\td\\xe2\\x82\\xac"'
    )
    assert ok(parser("apache_combined"), line).user_agent == 'a "q" b\\c\td€'


def test_latin1_fallback_is_per_field() -> None:
    """A field that is not UTF-8 falls back to Latin-1; other fields stay UTF-8."""
    line = (
        b'1.2.3.4 - - [29/Nov/2026:10:00:01 +0000] "GET /caf\xc3\xa9 HTTP/1.1" 200 1 '
        b'"http://x/\xe9t\xe9" "Zo\\xC3\\xAB"'
    )
    req = ok(parser("nginx_combined"), line)
    assert (req.uri, req.referer, req.user_agent) == ("/café", "http://x/été", "Zoë")


def test_decode_field_directly() -> None:
    """decode_field is a no-op on plain ASCII and decodes each escape kind."""
    assert decode_field("plain") == "plain"
    assert decode_field("\\x41\\x5c\\x5C\\u00e9") == "A\\\\é"
    assert decode_field("\\q stays") == "\\q stays"


def test_dash_means_absent() -> None:
    """A "-" field is None, as is an empty quoted field."""
    line = b'1.2.3.4 - - [29/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 - "-" ""'
    req = ok(parser("nginx_combined"), line)
    assert (req.remote_user, req.referer, req.user_agent) == (None, None, None)


@pytest.mark.parametrize("preset", ["nginx_combined", "apache_combined", "vhost_combined"])
def test_remote_user_with_spaces(preset: str) -> None:
    """Basic-auth user names are logged unescaped: "john  doe" must not hide the line."""
    line = COMBINED.replace(b"alice", b"john  doe")
    if preset == "vhost_combined":
        line = b"shop.example.com:443 " + line
    assert ok(parser(preset), line).remote_user == "john  doe"


def test_ipv6_remote_addr() -> None:
    """IPv6 addresses are kept as logged."""
    req = ok(parser("nginx_combined"), COMBINED.replace(b"203.0.113.10", b"2001:db8::5"))
    assert req.remote_addr == "2001:db8::5"


# --- odd request lines -------------------------------------------------------------------------


def test_http09_request_line() -> None:
    """HTTP/0.9 has no version: `GET /a`."""
    req = ok(parser("nginx_combined"), COMBINED.replace(b"GET /search?q=1 HTTP/1.1", b"GET /old"))
    assert (req.method, req.uri) == ("GET", "/old")


def test_tls_handshake_is_a_request_without_method() -> None:
    """A TLS ClientHello on the HTTP port logs as 400 with garbage: no method, no crash."""
    line = (
        b'192.0.2.200 - - [29/Nov/2026:10:03:07 +0000] "\\x16\\x03\\x01\\x00\\xF1\\x01\\x00" '
        b'400 157 "-" "-"'
    )
    req = ok(parser("nginx_combined"), line)
    assert (req.method, req.uri, req.path, req.status) == (None, None, None, 400)
    apache = b'192.0.2.200 - - [29/Nov/2026:10:03:07 +0000] "\\x16\\x03\\x01" 400 226 "-" "-"'
    assert ok(parser("apache_combined"), apache).method is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /a?b HTTP/1.1", ("GET", "/a?b")),
        ("GET /a", ("GET", "/a")),
        ("", (None, None)),
        ("GET", (None, None)),
        ("get /a HTTP/1.1", (None, None)),
        ("GET /a HTTP/1.1 extra", (None, None)),
        ("GET /a FTP/1.0", (None, None)),
    ],
)
def test_split_request(line: str, expected: tuple[str | None, str | None]) -> None:
    """Only `METHOD target [HTTP/x]` is a request; anything else has no method."""
    assert split_request(line) == expected


def test_absolute_form_target_reduced_to_path() -> None:
    """A proxy-style absolute URL keeps only path and query; CONNECT has no URL."""
    p = parser("nginx_combined")
    req = ok(p, COMBINED.replace(b"/search?q=1", b"http://shop.example.com/a/b?c=d"))
    assert (req.uri, req.path) == ("/a/b?c=d", "/a/b")
    bare = ok(p, COMBINED.replace(b"/search?q=1", b"https://shop.example.com"))
    assert bare.uri == "/"
    connect = ok(p, COMBINED.replace(b"GET /search?q=1", b"CONNECT shop.example.com:443"))
    assert (connect.method, connect.uri) == ("CONNECT", None)


# --- bad lines ---------------------------------------------------------------------------------


def test_reasons() -> None:
    """No match, NUL bytes, bad time and bad status are reasons, not exceptions."""
    p = parser("nginx_combined")
    assert p.parse(b"this is not a log line") == NO_MATCH
    assert p.parse(COMBINED.replace(b"GET", b"G\x00T")) == INVALID_BYTES
    assert p.parse(COMBINED.replace(b"29/Nov/2026", b"29/Foo/2026")) == BAD_TIME
    assert p.parse(COMBINED.replace(b"11:00:01", "1²:00:01".encode("latin-1"))) == BAD_TIME
    assert p.parse(COMBINED.replace(b" 200 ", b" 2x0 ")) == NO_MATCH
    assert p.parse(COMBINED + b"\r") != NO_MATCH


def test_time_local_conversion() -> None:
    """time_local → UTC text, and None for malformed values."""
    assert time_local_to_utc("10/Oct/2000:13:55:36 -0700") == "2000-10-10 20:55:36"
    assert time_local_to_utc("31/Dec/2026:23:30:00 -0100") == "2027-01-01 00:30:00"
    assert time_local_to_utc("10/Oct/2000:13:55:36") is None
    assert time_local_to_utc("10/Xyz/2000:13:55:36 -0700") is None
    assert time_local_to_utc("10/Oct/2000:13:55:36 +1400") == "2000-10-09 23:55:36"
    # Offsets no clock has (and datetime.fromisoformat refuses for ISO times).
    for zone in ("+2500", "-0175", "x0100", "+01:0", "+0²00"):
        assert time_local_to_utc(f"10/Oct/2000:13:55:36 {zone}") is None, zone


def test_excluded_path_short_circuits() -> None:
    """The site's path exclusion runs inside the parser."""
    p = line_parser(compile_format("nginx_combined"), exclude_path=lambda path: path == "/search")
    assert p.parse(COMBINED) == EXCLUDED_PATH


def test_a_request_line_excluded_before_is_excluded_without_the_full_match() -> None:
    """Once a request line was excluded, its next lines are let go at the first quote;
    a quote escaped in an earlier field (Apache writes a user's '"' as '\\"') is never
    taken for the request line's, so a crafted user name cannot hide a request."""
    static = b'"GET /static/app.js HTTP/1.1"'
    excluded = {"/static/app.js"}
    for preset in ("nginx_combined", "apache_combined"):
        p = line_parser(compile_format(preset), exclude_path=lambda path: path in excluded)
        line = COMBINED.replace(b'"GET /search?q=1 HTTP/1.1"', static)
        assert p.parse(line) == EXCLUDED_PATH  # the full match learns it
        # The shortcut: no full match, so a malformed later field goes unnoticed (the
        # line is filtered, not unparseable; it is never sent either way).
        assert p.parse(line.replace(b" 200 ", b" 2x0 ")) == EXCLUDED_PATH
        assert p.parse(COMBINED.replace(b" 200 ", b" 2x0 ")) == NO_MATCH
        assert p.parse(line.replace(b"GET", b"G\x00T")) == INVALID_BYTES
        # A user name holding the excluded request line between escaped quotes: the
        # line is the request it really is.
        crafted = COMBINED.replace(b"alice", b'x\\"' + static[1:-1] + b'\\"')
        req = p.parse(crafted)
        assert isinstance(req, Request), req
        assert req.path == "/search" and req.remote_user == 'x"GET /static/app.js HTTP/1.1"'


def test_the_shortcut_changes_no_event_of_the_sample_logs() -> None:
    """The same requests and outcomes with and without the excluded-line shortcut."""
    fmt = compile_format("apache_combined")
    assert fmt.request_quoted_first

    def excluded(path: str) -> bool:
        return path.endswith((".png", ".css", ".js", ".gif", ".jpg", ".ico"))

    fast = line_parser(fmt, exclude_path=excluded)
    plain = line_parser(replace(fmt, request_quoted_first=False), exclude_path=excluded)
    lines = (DATA / "elastic_apache_logs").read_bytes().splitlines()
    outcomes = [fast.parse(raw) for raw in lines]
    assert outcomes == [plain.parse(raw) for raw in lines]
    assert outcomes.count(EXCLUDED_PATH) > len(lines) // 3


def test_too_long_line_counted_by_reader(tmp_path: Path) -> None:
    """A line over max_line_bytes is skipped as too_long; its neighbours are read."""
    log = tmp_path / "access.log"
    long_line = COMBINED.replace(b"/search?q=1", b"/" + b"a" * 5000)
    log.write_bytes(COMBINED + b"\n" + long_line + b"\n" + COMBINED + b"\n" + long_line)
    chunks = list(file_chunks(str(log), max_line_bytes=1024))
    lines = [off for c in chunks for off, _ in c.lines]
    skipped = [s for c in chunks for s in c.skipped]
    assert lines == [0, len(COMBINED) + 1 + len(long_line) + 1]
    assert skipped == [
        (len(COMBINED) + 1, "too_long"),
        (2 * len(COMBINED) + len(long_line) + 3, "too_long"),
    ]
    assert chunks[-1].end_offset == log.stat().st_size


def test_too_long_line_across_read_buffers(tmp_path: Path) -> None:
    """A 3 MiB line (longer than the reader's buffer) is skipped whole."""
    log = tmp_path / "access.log"
    log.write_bytes(b"x" * (3 << 20) + b"\n" + COMBINED + b"\n")
    chunks = list(file_chunks(str(log)))
    assert [s for c in chunks for s in c.skipped] == [(0, "too_long")]
    assert [raw for c in chunks for _, raw in c.lines] == [COMBINED]


# --- the key test: agreement with apachelogs on real logs ----------------------------------------


def _dec(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return None if text in ("", "-") else text


@functools.cache
def _reference(path: Path, reference: str) -> tuple[tuple[bytes, Any], ...]:
    """Each line of ``path`` and apachelogs' entry for it (None: it rejects the line).

    Kept for the module: two presets are checked against the same reference on the
    same 10,000 lines, and apachelogs takes most of a second to read them."""
    ref = apachelogs.LogParser(reference, encoding="bytes")
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            entry = ref.parse(raw.decode("latin-1"))
        except apachelogs.InvalidEntryError:
            entry = None
        out.append((raw, entry))
    return tuple(out)


def _agree(path: Path, preset: str, reference: str) -> tuple[int, int]:
    ours = parser(preset)
    accepted = rejected = 0
    for n, (raw, entry) in enumerate(_reference(path, reference), 1):
        got = ours.parse(raw)
        if entry is None:
            assert isinstance(got, str), f"line {n}: apachelogs rejects, we accept {got}"
            rejected += 1
            continue
        assert isinstance(got, Request), f"line {n}: apachelogs accepts, we say {got!r}"
        accepted += 1
        request_line = _dec(entry.request_line)
        parts = request_line.split(" ") if request_line else []
        method, target = (parts[0], parts[1]) if len(parts) in (2, 3) else (None, None)
        protocol = parts[2] if len(parts) == 3 else None
        expected = {
            "remote_addr": _dec(entry.remote_host),
            "method": method,
            "uri": target,
            "status": entry.final_status,
            "referer": _dec(entry.headers_in["Referer"]),
            "user_agent": _dec(entry.headers_in["User-Agent"]),
            "time": entry.request_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        }
        actual = {
            "remote_addr": got.remote_addr,
            "method": got.method,
            "uri": got.uri,
            "status": got.status,
            "referer": got.referer,
            "user_agent": got.user_agent,
            "time": got.time,
        }
        assert actual == expected, f"line {n}: {raw!r}"
        assert protocol is None or protocol.startswith("HTTP/")
    return accepted, rejected


def test_agrees_with_apachelogs_on_elastic_apache_logs() -> None:
    """On 10,000 real combined lines, the fast path and apachelogs agree field for field."""
    accepted, rejected = _agree(
        DATA / "elastic_apache_logs", "apache_combined", apachelogs.COMBINED
    )
    assert accepted + rejected == 10_000
    assert rejected == 1  # line 8899 is truncated (see SOURCES.txt)


def test_nginx_combined_agrees_too_on_elastic_apache_logs() -> None:
    """The nginx_combined preset reads the same layout identically."""
    accepted, rejected = _agree(DATA / "elastic_apache_logs", "nginx_combined", apachelogs.COMBINED)
    assert (accepted, rejected) == (9_999, 1)


def test_agrees_with_apachelogs_on_vhost_combined() -> None:
    """vhost_combined against apachelogs.VHOST_COMBINED, including its "Bad line"."""
    accepted, rejected = _agree(
        DATA / "apachelogs_vhost_combined.log", "vhost_combined", apachelogs.VHOST_COMBINED
    )
    assert (accepted, rejected) == (6, 1)


def test_elastic_log_escaped_referers_decode() -> None:
    """The three lines with \\xhh escapes in the Referer decode to text."""
    p = parser("apache_combined")
    found = []
    for raw in (DATA / "elastic_apache_logs").read_bytes().splitlines():
        if b"\\x" in raw:
            req = p.parse(raw)
            assert isinstance(req, Request)
            found.append(req.referer)
    assert len(found) == 3
    assert all(r is not None and "\\x" not in r for r in found)


# --- adversarial lines: linear time --------------------------------------------------------------

BUDGET = 0.5  # seconds; a backtracking pattern takes minutes on these
PREFIX = b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 12 '
VALID = PREFIX + b'"http://r/" "Mozilla/5.0"'
ADVERSARIAL = {
    "unbalanced_quotes": PREFIX + b'"' * 50_001,
    "quote_space_runs": PREFIX + b'" "' * 20_000,
    "escaped_quotes": PREFIX + b'"' + b'\\" ' * 20_000,
    "escaped_quotes_closed": PREFIX + b'"' + b'\\"' * 30_000 + b'" "x"',
    "backslashes_even": PREFIX + b'"' + b"\\" * 60_000 + b'" "x"',
    "backslashes_odd": PREFIX + b'"' + b"\\" * 60_001 + b'" "x"',
    "backslashes_unclosed": PREFIX + b'"' + b"\\" * 60_000,
    "hex_escapes": PREFIX + b'"' + b"\\x41" * 20_000 + b'" "x"',
    "hex_escapes_unclosed": PREFIX + b'"' + b"\\x41" * 20_000,
    "empty_fields": PREFIX + b'"" ""',
    "space_padded_fields": PREFIX + b'"   " "   "',
    "last_quote_removed": VALID[:-1],
    "one_extra_field": VALID + b' "extra"',
    "spaces_50k": VALID.replace(b"200 12", b"200" + b" " * 50_000 + b"12"),
    "spaces_in_ua": PREFIX + b'"-" "' + b" " * 50_000 + b'"',
    "brackets": b"1.2.3.4 - - [" + b"[" * 50_000,
    "many_fields": b"1 " * 50_000,
    # remote_user takes spaces (not before " ["): an atomic repeat, linear too.
    "spaces_in_user": b"1.2.3.4 - " + b"u " * 50_000 + b"[x",
    "spaces_in_user_valid": b"1.2.3.4 - " + b"u " * 50_000 + VALID.removeprefix(b"1.2.3.4 - - "),
    "space_brackets_in_user": b"1.2.3.4 - " + b" [" * 50_000,
}


@pytest.mark.parametrize("preset", ["apache_combined", "nginx_cookie", "vhost_combined", "json"])
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_line_in_linear_time(preset: str, name: str) -> None:
    """Hostile near-miss lines are parsed or rejected well within the budget."""
    p = parser(preset, "sid")
    line = ADVERSARIAL[name]
    started = time.perf_counter()
    result = p.parse(line)
    elapsed = time.perf_counter() - started
    assert elapsed < BUDGET, f"{name}: {elapsed:.3f} s"
    assert isinstance(result, Request | str)


def test_adversarial_expected_outcomes() -> None:
    """Escaped content inside quotes parses; near misses are rejected."""
    p = parser("apache_combined")
    even = p.parse(ADVERSARIAL["backslashes_even"])
    assert isinstance(even, Request) and even.referer == "\\" * 30_000
    hexed = p.parse(ADVERSARIAL["hex_escapes"])
    assert isinstance(hexed, Request) and hexed.referer == "A" * 20_000
    assert isinstance(p.parse(ADVERSARIAL["empty_fields"]), Request)
    padded = p.parse(ADVERSARIAL["space_padded_fields"])
    assert isinstance(padded, Request) and padded.user_agent == "   "
    spaced = p.parse(ADVERSARIAL["spaces_in_user_valid"])
    assert isinstance(spaced, Request) and spaced.remote_user == ("u " * 50_000).rstrip()
    for name in ("last_quote_removed", "one_extra_field", "spaces_50k", "backslashes_odd"):
        assert p.parse(ADVERSARIAL[name]) == NO_MATCH, name


def test_adversarial_lines_through_custom_formats() -> None:
    """Custom formats with unquoted fields and a trailing variable are linear too."""
    formats = [
        NginxFormat(nginx="$remote_addr $foo $bar [$time_local] $request_time $baz"),
        NginxFormat(nginx='$remote_addr "$request" $upstream_response_time $status'),
        ApacheFormat(apache='%h %{%Y-%m-%d %H:%M:%S}t "%r" %>s %{X}i'),
    ]
    lines = [b"a " * 40_000, b"a, " * 40_000, b'1 "' + b"\\" * 60_001, b"1 " + b"0 : " * 30_000]
    for spec in formats:
        p = parser(spec)
        for line in lines:
            started = time.perf_counter()
            p.parse(line)
            assert time.perf_counter() - started < BUDGET
