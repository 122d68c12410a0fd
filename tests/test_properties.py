"""Property tests: the parser on arbitrary bytes and against apachelogs on generated
LogFormats, the config loader on arbitrary YAML, the mapper against tirreno's limits."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import apachelogs
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tirreno_shipper.config import EVENT_TYPES, ClientIpConfig, ExcludeConfig, Rule, parse_config
from tirreno_shipper.errors import ConfigError
from tirreno_shipper.events import EventMapper, request_id
from tirreno_shipper.filters import RequestFilter, RuleSet
from tirreno_shipper.formats import PRESETS, compile_apache, compile_format
from tirreno_shipper.parse import line_parser, normalise_target
from tirreno_shipper.records import Request, User
from tirreno_shipper.tirreno import validate_fields

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARSERS = [
    line_parser(compile_format(name, "sid"), "sid", ("http_x_forwarded_for",))
    for name in (*PRESETS, "json")
]
VALID_LINE = (
    b'203.0.113.10 - - [29/Nov/2026:10:00:01 +0000] "GET /a?b=1 HTTP/1.1" 200 12 '
    b'"https://x/" "Mozilla/5.0" "s1"'
)


@SETTINGS
@given(st.binary(max_size=400))
def test_parser_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    """Any bytes give a Request or a reason, for every preset and json."""
    for parser in PARSERS:
        assert isinstance(parser.parse(raw), Request | str)


@SETTINGS
@given(st.integers(0, len(VALID_LINE)), st.integers(0, 40), st.binary(max_size=40))
def test_parser_never_raises_on_mutated_lines(at: int, cut: int, insert: bytes) -> None:
    """A valid line with a slice replaced by arbitrary bytes never raises."""
    raw = VALID_LINE[:at] + insert + VALID_LINE[at + cut :]
    for parser in PARSERS:
        assert isinstance(parser.parse(raw), Request | str)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "remote_addr",
                "time_iso8601",
                "msec",
                "time_local",
                "request",
                "status",
                "request_uri",
                "request_method",
                "http_user_agent",
                "cookie_sid",
                "http_cookie",
                "http_x_forwarded_for",
            ]
        ),
        st.one_of(
            st.text(max_size=30),
            st.integers(),
            st.floats(),
            st.none(),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_json_parser_never_raises_on_arbitrary_objects(obj: dict[str, object]) -> None:
    """JSON lines with any value types give a Request or a reason."""
    import json

    raw = json.dumps(obj).encode()
    assert isinstance(PARSERS[-1].parse(raw), Request | str)


# --- agreement with apachelogs on generated LogFormats ----------------------------------------


def apache_escape(text: str) -> str:
    """What Apache's ap_escape_logitem writes for ``text`` (UTF-8 bytes)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\n\r\t\v":
            out.append({"\b": "\\b", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}[ch])
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(ch)
    return "".join(out)


ip4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ip6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda g: ":".join(f"{x:x}" for x in g)
)
free_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
method = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND"])
path = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="?"), max_size=20
)
request_line = st.one_of(
    st.builds(
        lambda m, p, q, v: f"{m} /{p}{q} {v}",
        method,
        path,
        st.sampled_from(["", "?a=1", "?q=x%20y&b"]),
        st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"]),
    ),
    st.builds(lambda m, p: f"{m} /{p}", method, path),  # HTTP/0.9
    free_text,  # garbage, TLS handshakes
)
moment = st.datetimes(datetime(1990, 1, 1), datetime(2037, 12, 31))
zone = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m // 15 * 15)))
cookie_value = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=';"\\'),
    min_size=1,
    max_size=30,
)


def dash_or(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just("-"), strategy)


# directive -> (value strategy, how Apache writes the value)
DIRECTIVES: dict[str, st.SearchStrategy[str]] = {
    "%h": st.one_of(ip4, ip6),
    "%l": st.just("-"),
    # No spaces: before a one-space separator a user "a b" cannot be split without
    # backtracking. The combined layouts' " [" case is tested in test_parse.py.
    "%u": dash_or(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12).map(
            apache_escape
        )
    ),
    "%t": st.builds(
        lambda d, z: d.replace(tzinfo=z).strftime("[%d/%b/%Y:%H:%M:%S %z]"), moment, zone
    ),
    '"%r"': request_line.map(lambda r: f'"{apache_escape(r)}"'),
    "%>s": st.integers(100, 599).map(str),
    "%b": dash_or(st.integers(1, 10**9).map(str)),
    "%O": st.integers(0, 10**9).map(str),
    '"%{Referer}i"': dash_or(free_text.map(apache_escape)).map(lambda v: f'"{v}"'),
    '"%{User-Agent}i"': dash_or(free_text.map(apache_escape)).map(lambda v: f'"{v}"'),
    "%D": st.integers(0, 10**8).map(str),
    '"%{X}C"': dash_or(cookie_value).map(lambda v: f'"{v}"'),
}


@st.composite
def format_and_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    names = draw(st.lists(st.sampled_from(sorted(DIRECTIVES)), min_size=1, max_size=8, unique=True))
    fmt = " ".join(names)
    lines = [" ".join(draw(DIRECTIVES[n]) for n in names) for _ in range(draw(st.integers(1, 4)))]
    return fmt, lines


_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        out = value.decode("utf-8")
    except UnicodeDecodeError:
        out = value.decode("latin-1")
    return None if out in ("", "-") else out


def _expected_request(line: str | None) -> tuple[str | None, str | None]:
    parts = line.split(" ") if line else []
    if len(parts) not in (2, 3) or not _METHOD.fullmatch(parts[0]) or not parts[1]:
        return None, None
    if len(parts) == 3 and not parts[2].startswith("HTTP/"):
        return None, None
    return parts[0], normalise_target(parts[1])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(format_and_lines())
def test_agrees_with_apachelogs_on_generated_formats(case: tuple[str, list[str]]) -> None:
    """Whatever apachelogs accepts, we accept with the same field values."""
    fmt, lines = case
    ref = apachelogs.LogParser(fmt, encoding="bytes")
    ours = line_parser(compile_apache(fmt), "X")
    for line in lines:
        try:
            entry = ref.parse(line)
        except apachelogs.InvalidEntryError:
            continue
        got = ours.parse(line.encode("latin-1"))
        assert isinstance(got, Request), f"{fmt!r}: apachelogs accepts {line!r}, we say {got!r}"
        d = entry.directives
        if "%h" in d:
            assert got.remote_addr == _text(d["%h"])
        if "%u" in d:
            assert got.remote_user == _text(d["%u"])
        if "%t" in d:
            assert got.time == d["%t"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        if "%>s" in d:
            assert got.status == d["%>s"]
        if "%r" in d:
            method, uri = _expected_request(_text(d["%r"]))
            assert (got.method, got.uri) == (method, uri)
        if "%{Referer}i" in d:
            assert got.referer == _text(d["%{Referer}i"])
        if "%{User-Agent}i" in d:
            assert got.user_agent == _text(d["%{User-Agent}i"])
        if "%{X}C" in d:
            assert got.session == _text(d["%{X}C"])


# --- config ---------------------------------------------------------------------------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "sites",
                    "name",
                    "sensor",
                    "url",
                    "api_key",
                    "api_key_file",
                    "logs",
                    "path",
                    "format",
                    "users",
                    "key",
                    "cookie",
                    "database",
                    "query",
                    "events",
                    "rules",
                    "type",
                    "exclude",
                    "paths",
                    "nginx",
                    "apache",
                    "json",
                    "state_dir",
                    "metrics",
                    "listen",
                    "statuses",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=200), yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))
    )
)
def test_parse_config_only_raises_config_error(text: str) -> None:
    """Arbitrary YAML (or not-YAML) text yields a Config or a ConfigError, nothing else."""
    try:
        parse_config(text, env={"A": "1"})
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)


# --- event mapper ---------------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=3000)
T = TypeVar("T")


def maybe(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.one_of(st.none(), strategy)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    uri = "/" + draw(any_text)
    return Request(
        remote_addr=draw(st.one_of(ip4, ip6)),
        time=draw(maybe(st.sampled_from(["2026-01-01 00:00:00", "2026-01-01 00:00:00.123"]))),
        method=draw(
            st.one_of(
                method,
                st.text(
                    st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=200
                ),
            )
        ),
        uri=uri,
        path=uri.partition("?")[0],
        status=draw(maybe(st.integers(100, 599))),
        remote_user=draw(maybe(any_text)),
        referer=draw(maybe(any_text)),
        user_agent=draw(maybe(any_text)),
        accept_language=draw(maybe(any_text)),
        session=draw(maybe(any_text)),
    )


users = st.builds(
    User,
    user_name=st.text(min_size=1, max_size=300),
    email_address=maybe(st.one_of(st.emails(), any_text)),
    first_name=maybe(any_text),
    last_name=maybe(any_text),
    full_name=maybe(any_text),
    phone_number=maybe(st.text("0123456789 +-()x", max_size=40)),
    user_created=maybe(st.text(max_size=200)),
)
RULES = RuleSet(
    [
        Rule(type="account_login", method="POST", path="^/login", status="3xx"),
        Rule(type="account_login_fail", method="POST", path="^/login"),
        Rule(type="page_search", path="^/search", query=True),
        Rule(type="account_logout", path="^/logout"),
    ]
)
FILTER = RequestFilter(ExcludeConfig())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests(),
    maybe(users),
    st.lists(st.sampled_from(["token", "code", "q", "password"]), max_size=3),
)
def test_mapper_never_exceeds_tirreno_limits(
    req: Request, user: User | None, redact: list[str]
) -> None:
    """Every event passes tirreno.validate_fields, with an eventType from the list."""
    mapper = EventMapper(ClientIpConfig(), redact)
    ip = mapper.client.of(req)
    assert ip is not None
    event_type, _ = RULES.match(req)
    FILTER.excluded(req)
    rid = request_id("shop", "1:2:fp", 123)
    event = mapper.build(req, user, ip, event_type, rid)
    assert validate_fields(event.fields, event.request_id) is None
    assert event.fields["eventType"] in EVENT_TYPES
