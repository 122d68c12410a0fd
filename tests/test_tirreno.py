"""tirreno's acceptance rules (`tirreno_shipper.tirreno`) against tirreno's own behaviour.

The conformance table has one row per rule with what tirreno v0.10 stores; the rows
PHP can answer are checked against PHP itself (tests/php/tirreno_rules.php runs the
calls of tirreno's Validated models), so the table is tirreno's word, not ours.
Every row also checks that what the mapper sends for that input is stored as sent.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fake_sensor import FakeSensor
from tirreno_shipper import tirreno
from tirreno_shipper.config import DEFAULT_REDACT_QUERY, ClientIpConfig
from tirreno_shipper.events import EventMapper
from tirreno_shipper.records import Event, Request, User

# install/install.sql, CREATE DOMAIN email ... CHECK, as PostgreSQL applies it.
DB_EMAIL_CHECK = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
)
PHP_SCRIPT = Path(__file__).parent / "php" / "tirreno_rules.php"
LOST = None  # expected "stored" value of a row whose event tirreno fails to insert


def php(cases: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """PHP's answers for (rule, input) cases; see tests/php/tirreno_rules.php."""
    exe = shutil.which("php")
    if exe is None:
        pytest.fail("php is not installed: apt-get install php-cli php-mbstring (scripts/test.sh)")
    payload = json.dumps([[rule, base64.b64encode(v).decode()] for rule, v in cases])
    proc = subprocess.run(
        [exe, str(PHP_SCRIPT)],
        check=False,
        input=payload,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    answers: list[dict[str, Any]] = json.loads(proc.stdout)
    for a in answers:
        a["out"] = base64.b64decode(a["out"])
    return answers


def php_stored(rule: str, value: str) -> str | None:
    """What tirreno keeps of ``value`` under ``rule``; None if PostgreSQL would refuse it."""
    [answer] = php([(rule, value.encode())])
    return answer["out"].decode() if answer["utf8"] else LOST


@dataclass(frozen=True)
class Row:
    rule: str  # what the row shows
    source: str  # the tirreno v0.10.0 file it comes from
    field: str
    value: str  # as an application or a visitor gives it
    stored: str | None  # what tirreno stores when sent as is (LOST: the insert fails)
    php_rule: str | None  # the rule of tests/php/tirreno_rules.php; None: not a PHP filter


CONFORMANCE = [
    Row(
        "100-byte limit cut inside a character",
        "Validated/Length.php",
        "userName",
        "€" * 40,
        LOST,
        "length:100",
    ),
    Row(
        "100-byte limit, CJK", "Validated/Fullname.php", "fullName", "张伟" * 20, LOST, "length:100"
    ),
    Row(
        "511-byte user agent",
        "Validated/UserAgent.php",
        "userAgent",
        "Mozilla/5.0 " + "ü" * 300,
        LOST,
        "length:511",
    ),
    Row("2047-byte url", "Validated/Url.php", "url", "/a" + "é" * 1100, LOST, "length:2047"),
    Row(
        "255-byte browserLanguage",
        "Validated/BrowserLanguage.php",
        "browserLanguage",
        "é" * 200,
        LOST,
        "length:255",
    ),
    Row(
        "ASCII under the limit is kept",
        "Validated/Length.php",
        "lastName",
        "l" * 100,
        "l" * 100,
        "length:100",
    ),
    Row(
        "NUL in a text field",
        "Validated/Length.php + PostgreSQL text",
        "userAgent",
        "Mo\x00zilla",
        LOST,
        "length:511",
    ),
    Row(
        "referer %FF decodes to an invalid byte",
        "Validated/HttpReferer.php",
        "httpReferer",
        "https://example.com/?q=%FF",
        LOST,
        "referer",
    ),
    Row(
        "referer + becomes a space",
        "Validated/HttpReferer.php",
        "httpReferer",
        "https://example.com/?q=a+b",
        "https://example.com/?q=a b",
        "referer",
    ),
    Row(
        "referer %C3%A9 is decoded",
        "Validated/HttpReferer.php",
        "httpReferer",
        "https://example.com/caf%C3%A9",
        "https://example.com/café",
        "referer",
    ),
    Row(
        "referer %00 decodes to NUL",
        "Validated/HttpReferer.php",
        "httpReferer",
        "https://example.com/?q=%00",
        LOST,
        "referer",
    ),
    Row(
        "email lower-cased, spaces removed",
        "Validated/Email.php",
        "emailAddress",
        "Jo Doe@Example.COM",
        "jodoe@example.com",
        "email",
    ),
    Row(
        "email: non-ASCII local part",
        "Validated/Email.php",
        "emailAddress",
        "josé@example.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: a..b",
        "Validated/Email.php",
        "emailAddress",
        "a..b@example.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: leading dot",
        "Validated/Email.php",
        "emailAddress",
        ".a@example.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: trailing dot",
        "Validated/Email.php",
        "emailAddress",
        "a.@example.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: underscore in the domain",
        "Validated/Email.php",
        "emailAddress",
        "user@exa_mple.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: leading hyphen in a label",
        "Validated/Email.php",
        "emailAddress",
        "user@-example.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: bare quote",
        "Validated/Email.php",
        "emailAddress",
        'a"b@example.com',
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: no dot in the domain",
        "Validated/Email.php",
        "emailAddress",
        "user@localhost",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    Row(
        "email: local part of 65",
        "Validated/Email.php",
        "emailAddress",
        "x" * 65 + "@example.com",
        tirreno.BROKEN_EMAIL,
        "email",
    ),
    # PHP accepts these, and tirreno keeps them; the CHECK of install/install.sql's
    # email domain then refuses the insert.
    Row(
        "email: quoted local part passes PHP, fails the CHECK",
        "install/install.sql",
        "emailAddress",
        '"ab"@example.com',
        LOST,
        "email",
    ),
    Row(
        "email: address literal passes PHP, fails the CHECK",
        "install/install.sql",
        "emailAddress",
        "user@[192.0.2.1]",
        LOST,
        "email",
    ),
    Row(
        "IPv6 zone",
        "Validated/IpAddress.php",
        "ipAddress",
        "fe80::1%eth0",
        tirreno.INVALID_IP,
        "ip",
    ),
    Row(
        "IPv4 with a leading zero",
        "Validated/IpAddress.php",
        "ipAddress",
        "192.0.2.01",
        tirreno.INVALID_IP,
        "ip",
    ),
    Row(
        "phone: spaces removed, 19 bytes",
        "Validated/Phone.php",
        "phoneNumber",
        "+41 79 123 45 67 89 01 23 45",
        "+417912345678901234",
        "phone",
    ),
    Row("httpCode not digits", "Validated/HttpCode.php", "httpCode", "4o4", "0", "httpCode"),
    Row(
        "unknown method",
        "install/install.sql (event_http_method)",
        "httpMethod",
        "PROPFIND",
        None,
        None,
    ),
    Row(
        "method matched with ILIKE",
        "Repository/EventRepository.php",
        "httpMethod",
        "get",
        "GET",
        None,
    ),
    Row(
        "unknown eventType",
        "Repository/EventRepository.php",
        "eventType",
        "page_visit",
        "page_view",
        None,
    ),
]


@pytest.fixture(scope="module")
def php_answers() -> list[dict[str, Any]]:
    return php([(r.php_rule, r.value.encode()) for r in CONFORMANCE if r.php_rule])


def test_the_table_is_what_php_answers(php_answers: list[dict[str, Any]]) -> None:
    """Each PHP row's expected value is what tirreno's calls give in PHP 8.2."""
    rows = [r for r in CONFORMANCE if r.php_rule]
    got = [a["out"].decode() if a["utf8"] else LOST for a in php_answers]
    problems = []
    for row, php_out in zip(rows, got, strict=True):
        out = php_out
        if row.php_rule == "email" and out is not None and not DB_EMAIL_CHECK.fullmatch(out):
            out = LOST  # PostgreSQL's CHECK (install/install.sql) refuses the insert
        if out != row.stored:
            problems.append(f"{row.rule}: table says {row.stored!r}, PHP gives {out!r}")
    assert problems == []


@pytest.mark.parametrize("row", CONFORMANCE, ids=[r.rule for r in CONFORMANCE])
def test_the_sink_stores_what_tirreno_stores(row: Row) -> None:
    """`tirreno_stores` (the sink and the dry run) agrees with the table on the raw value."""
    fields = {"ipAddress": "192.0.2.7", "url": "/", row.field: row.value}
    stored = tirreno.tirreno_stores(fields, "6f1c2b9e-8a0d-5e1f-9a3b-2c4d5e6f7a8b")
    if row.stored is LOST and row.field != "httpMethod":
        assert stored.lost is not None
    else:
        assert stored.lost is None
        assert stored.fields[row.field] == row.stored


@pytest.mark.parametrize("row", CONFORMANCE, ids=[r.rule for r in CONFORMANCE])
def test_what_the_mapper_sends_is_stored_as_sent(row: Row) -> None:
    """For every row the mapper sends a value tirreno stores unchanged (or sends none)."""
    fields = mapped({row.field: row.value})[0].fields
    sent = fields.get(row.field)
    stored = tirreno.tirreno_stores(fields, "x")
    assert stored.lost is None, stored.lost
    if sent is None:
        return
    assert len(sent.encode()) <= tirreno.limit_of(row.field)
    if row.php_rule is not None:
        assert php_stored(row.php_rule, sent) == stored.fields[row.field]
    if row.field == "httpReferer":
        assert stored.fields[row.field] == row.value.replace("\x00", "")


# -- the mapper ------------------------------------------------------------------------


def mapped(
    values: dict[str, str],
    *,
    status: int = 200,
    event_type: str = "page_view",
    keep_type: bool = False,
    redact: Sequence[str] = DEFAULT_REDACT_QUERY,
) -> tuple[Event, Counter[str]]:
    """The event the mapper builds from ``values`` (tirreno field names), and its ``fixed``."""
    m = EventMapper(ClientIpConfig(), list(redact))
    req = Request(
        values.get("ipAddress", "192.0.2.7"),
        "2026-11-29 10:00:00",
        values.get("httpMethod", "GET"),
        values.get("url", "/"),
        "/",
        status,
        None,
        values.get("httpReferer"),
        values.get("userAgent"),
        values.get("browserLanguage"),
    )
    user = User(
        user_name=values.get("userName", "u"),
        email_address=values.get("emailAddress"),
        first_name=values.get("firstName"),
        last_name=values.get("lastName"),
        full_name=values.get("fullName"),
        phone_number=values.get("phoneNumber"),
    )
    ip = m.client.valid(req.remote_addr) or "192.0.2.7"
    return m.build(req, user, ip, event_type, "x", keep_type=keep_type), m.fixed


def test_referer_is_redacted_like_the_url_and_escaped() -> None:
    """A reset token in the next request's referer is redacted; tirreno decodes it back."""
    ref = "https://shop.example/reset;jsessionid=ABC?token=s3cr3t&PHPSESSID=x&q=a+b%20c"
    sent = mapped({"httpReferer": ref})[0].fields["httpReferer"]
    assert "s3cr3t" not in sent and "ABC" not in sent
    stored = tirreno.tirreno_stores({"ipAddress": "192.0.2.7", "url": "/", "httpReferer": sent})
    assert stored.fields["httpReferer"] == (
        "https://shop.example/reset;jsessionid=REDACTED?token=REDACTED&PHPSESSID=REDACTED&q=a+b%20c"
    )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/app;jsessionid=0123ABCD/page", "/app;jsessionid=REDACTED/page"),
        ("/app;JSESSIONID=0123?x=1", "/app;JSESSIONID=REDACTED?x=1"),
        ("/cb?code=abc&state=xyz", "/cb?code=REDACTED&state=REDACTED"),
        (
            "/s3?X-Amz-Signature=ff&X-Amz-Credential=c",
            "/s3?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED",
        ),
        (
            "/a?access_token=t&id_token=i&api_key=k&key=v&sig=s",
            "/a?access_token=REDACTED&id_token=REDACTED&api_key=REDACTED&key=REDACTED&sig=REDACTED",
        ),
        (
            "/a?sid=1&session_id=2&PHPSESSID=3",
            "/a?sid=REDACTED&session_id=REDACTED&PHPSESSID=REDACTED",
        ),
        ("/keep;v=1/next?next=/a;b", "/keep;v=1/next?next=/a;b"),
    ],
)
def test_default_redaction_covers_session_ids_and_oauth(uri: str, expected: str) -> None:
    """The default names cover session ids (in the query and as path parameters) and OAuth/S3."""
    assert mapped({"url": uri})[0].fields["url"] == expected


def test_ipv6_zone_is_dropped() -> None:
    """fe80::1%eth0 is sent as fe80::1 (tirreno would store 0.0.0.0)."""
    assert mapped({"ipAddress": "fe80::1%eth0"})[0].fields["ipAddress"] == "fe80::1"
    assert tirreno.ip_address("[::ffff:192.0.2.1]") == "192.0.2.1"


def test_a_failed_login_answered_401_keeps_its_type_by_default() -> None:
    """account_* with a 4xx: no httpCode, type kept and counted; page_error otherwise."""
    kept, fixed = mapped({}, status=401, event_type="account_login_fail", keep_type=True)
    assert kept.fields["eventType"] == "account_login_fail"
    assert "httpCode" not in kept.fields
    assert fixed == {"httpCode:kept_type": 1}
    stored = tirreno.tirreno_stores(kept.fields)
    assert stored.fields["eventType"] == "account_login_fail"
    sent, _ = mapped({}, status=401, event_type="account_login_fail", keep_type=False)
    assert sent.fields["eventType"] == "page_error"
    assert sent.fields["httpCode"] == "401"
    assert mapped({}, status=404)[0].fields["eventType"] == "page_error"


def test_rules_choose_on_error() -> None:
    """Rule.on_error: unset keeps account_* types only; explicit values win."""
    from tirreno_shipper.config import Rule

    assert Rule(type="account_login_fail").keeps_type()
    assert not Rule(type="page_edit").keeps_type()
    assert not Rule(type="account_login_fail", on_error="page_error").keeps_type()
    assert Rule(type="page_edit", on_error="keep_type").keeps_type()


@pytest.mark.parametrize(
    "line",
    [
        b'192.0.2.7 - - [29/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 2 "-" "Mo\\x00zilla"',
        b'{"remote_addr":"192.0.2.7","time_iso8601":"2026-11-29T10:00:00+00:00",'
        b'"request":"GET / HTTP/1.1","status":"200","http_user_agent":"Mo\\u0000zilla"}',
    ],
    ids=["text", "json"],
)
def test_one_nul_rule_for_text_and_json(line: bytes) -> None:
    """An escaped NUL in either format never reaches userAgent; it is removed and counted."""
    from tirreno_shipper.formats import compile_format
    from tirreno_shipper.parse import line_parser

    fmt = compile_format("json" if line.startswith(b"{") else "nginx_combined", cookie_name=None)
    req = line_parser(fmt).fast(line)
    assert isinstance(req, Request)
    m = EventMapper(ClientIpConfig(), [])
    fields = m.build(req, None, "192.0.2.7", "page_view", "x").fields
    assert fields["userAgent"] == "Mozilla"
    assert dict(m.fixed) == {"userAgent:nul": 1}


# -- properties ------------------------------------------------------------------------

# Arbitrary Unicode, with many percent escapes (valid, invalid, half) and pluses.
ESCAPES = st.sampled_from(["%", "%F", "%FF", "%C3", "%C3%A9", "%00", "%2", "+", "%E2%82", "%zz"])
TEXT = st.lists(
    st.one_of(st.text(max_size=40), ESCAPES, st.sampled_from(["€", "张", "😀", "\x00"])),
    max_size=200,
).map("".join)
SHORT_TEXT = st.lists(
    st.one_of(st.text(max_size=8), ESCAPES, st.sampled_from(["€", "张", "\x00"])),
    max_size=12,
).map("".join)
FIELDS = (
    "url",
    "httpReferer",
    "userAgent",
    "browserLanguage",
    "userName",
    "firstName",
    "lastName",
    "fullName",
    "emailAddress",
    "phoneNumber",
    "httpMethod",
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), TEXT, min_size=1), st.integers(1, 60))
def test_every_field_fits_and_is_stored_as_sent(values: dict[str, str], repeat: int) -> None:
    """For any text in any field: within tirreno's byte limit, never a split character,
    never invalid UTF-8 or NUL after tirreno's urldecode; tirreno stores it as sent."""
    values = {k: (v * repeat if k != "url" else "/" + v * repeat) for k, v in values.items()}
    fields = mapped(values)[0].fields
    for name, value in fields.items():
        data = value.encode("utf-8")  # strict: no surrogates
        assert len(data) <= tirreno.limit_of(name), name
        assert "\x00" not in value
    stored = tirreno.tirreno_stores(fields, "x")
    assert stored.lost is None
    for name, value in fields.items():
        if name == "httpReferer":
            # tirreno's urldecode gives back exactly the text meant (the redacted referer).
            assert stored.fields[name] == value.replace("%2B", "+").replace("%25", "%")
        elif name not in ("eventType", "ipAddress", "emailAddress", "phoneNumber", "httpMethod"):
            assert stored.fields[name] == value, name
    assert tirreno.validate_fields(fields, "x") is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_invalid_bytes_from_a_log_are_stored_as_sent(raw: bytes) -> None:
    """Bytes nginx escapes as \\xHH in a user agent or referer never lose the event."""
    from tirreno_shipper.formats import compile_format
    from tirreno_shipper.parse import line_parser

    esc = "".join(f"\\x{b:02X}" if b >= 0x80 or b < 0x20 or b in b'"\\' else chr(b) for b in raw)
    line = (
        f'192.0.2.7 - - [29/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 2 "{esc}" "{esc}"'
    ).encode()
    req = line_parser(compile_format("nginx_combined", cookie_name=None)).fast(line)
    assert isinstance(req, Request)
    fields = (
        EventMapper(ClientIpConfig(), []).build(req, None, "192.0.2.7", "page_view", "x").fields
    )
    assert tirreno.tirreno_stores(fields, "x").lost is None


@settings(max_examples=3, deadline=None)
@given(st.lists(SHORT_TEXT, min_size=150, max_size=150), st.integers(1, 80))
def test_cut_and_referer_agree_with_php(texts: list[str], repeat: int) -> None:
    """PHP's substr/urldecode over what we send: valid UTF-8, and the referer given back."""
    texts = [t * repeat for t in texts]
    cases: list[tuple[str, bytes]] = []
    for t in texts:
        cases.append(("length:100", tirreno.fit("userName", t)[0].encode()))
        cases.append(("referer", tirreno.referer(t)[0].encode()))
    answers = php(cases)
    for t, cut_answer, ref_answer in zip(texts, answers[::2], answers[1::2], strict=True):
        assert cut_answer["utf8"], t
        assert ref_answer["utf8"], t
        assert ref_answer["out"] == tirreno.stored_referer(tirreno.referer(t)[0])
        if tirreno.referer(t)[1] != tirreno.CUT:
            assert ref_answer["out"].decode() == t.replace("\x00", "")


@settings(max_examples=3, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=300, max_size=300))
def test_php_urldecode_is_phps(blobs: list[bytes]) -> None:
    """`php_urldecode` equals PHP's urldecode on arbitrary bytes."""
    answers = php([("urldecode", b) for b in blobs])
    assert [tirreno.php_urldecode(b) for b in blobs] == [a["out"] for a in answers]


EMAIL_PARTS = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        ".",
        "..",
        "@",
        "@@",
        '"',
        "\\",
        "-",
        "_",
        "+",
        "!",
        "xn--",
        "é",
        " ",
        "[",
        "]",
        "IPv6:",
        "::",
        "1",
        "192.0.2.1",
        ":",
        "com",
        "example",
        "x" * 63,
        "y" * 64,
        "\x00",
        "\n",
        "(",
        "%",
    ]
)
EMAIL = st.one_of(
    st.lists(EMAIL_PARTS, max_size=14).map("".join),
    st.tuples(st.lists(EMAIL_PARTS, max_size=5), st.lists(EMAIL_PARTS, max_size=8)).map(
        lambda p: "".join(p[0]) + "@" + "".join(p[1])
    ),
    st.text(max_size=30),
)


@settings(max_examples=4, deadline=None)
@given(st.lists(EMAIL, min_size=400, max_size=400))
def test_email_filter_is_phps(emails: list[str]) -> None:
    """`php_filter_validate_email` equals PHP 8.2's FILTER_VALIDATE_EMAIL."""
    emails += ["a@b.co", '"a b"@x.org', "a@[IPv6:::1]", "a@" + "b." * 130 + "1", "x" * 64 + "@a.bc"]
    answers = php([("filter_email", e.encode()) for e in emails])
    wrong = [
        (e, a["ok"])
        for e, a in zip(emails, answers, strict=True)
        if tirreno.php_filter_validate_email(e) != a["ok"]
    ]
    assert wrong == []


def test_email_filter_is_linear_on_long_failing_domains() -> None:
    """No catastrophic backtracking on a long domain that fails at its end."""
    import time

    start = time.perf_counter()
    for tail in ("1", "-", "_", "."):
        assert not tirreno.php_filter_validate_email("a@" + "a-b." * 75 + tail)
    assert time.perf_counter() - start < 0.5


# -- the sink --------------------------------------------------------------------------


def test_the_sink_answers_204_but_loses_what_tirreno_loses() -> None:
    """Raw values tirreno cannot insert: 204 and counted lost; the mapped ones are stored."""
    raw = {"ipAddress": "192.0.2.7", "url": "/", "fullName": "张伟" * 20}
    with FakeSensor(api_key="k") as sink:
        headers = {"Api-Key": "k"}
        assert httpx.post(sink.url, data=raw, headers=headers).status_code == 204
        good = dict(mapped({"fullName": "张伟" * 20})[0].fields)
        assert httpx.post(sink.url, data=good, headers=headers).status_code == 204
        bad_ref = {"ipAddress": "192.0.2.7", "url": "/", "httpReferer": "/?q=%FF"}
        assert httpx.post(sink.url, data=bad_ref, headers=headers).status_code == 204
    assert sink.count("lost") == 2
    assert [r.fields["fullName"] for r in sink.lost[:1]] == ["张伟" * 20]
    assert "UTF-8" in (sink.lost[0].lost or "")
    [stored] = sink.accepted
    assert stored.stored["fullName"] == ("张伟" * 20)[:33]  # 99 bytes: cut at a character


def test_the_sink_reads_the_form_as_php_does() -> None:
    """Invalid UTF-8 in the body becomes '?', as tirreno's Request model makes it."""
    from tirreno_shipper.sink import form_fields

    assert form_fields(b"a=x%FFy&b=1+2&a=last") == {"a": "last", "b": "1 2"}
    assert form_fields(b"u=caf%C3%A9%C3") == {"u": "café?"}


@settings(max_examples=3, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=200, max_size=200))
def test_the_sink_decodes_invalid_utf8_as_php_does(blobs: list[bytes]) -> None:
    """`form_fields` turns invalid UTF-8 into '?' exactly as mb_convert_encoding does."""
    import urllib.parse

    from tirreno_shipper.sink import form_fields

    answers = php([("clean", b) for b in blobs])
    ours = [form_fields(b"v=" + urllib.parse.quote_from_bytes(b).encode())["v"] for b in blobs]
    assert ours == [a["out"].decode() for a in answers]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_invalid_bytes_in_a_json_log_are_stored_as_sent(raw: bytes) -> None:
    """nginx escape=json writes bytes >= 0x80 raw and controls as \\uXXXX: no event is lost."""
    from tirreno_shipper.formats import compile_format
    from tirreno_shipper.parse import line_parser

    esc = b"".join(b"\\u%04x" % b if b < 0x20 or b in b'"\\' else bytes((b,)) for b in raw)
    line = (
        b'{"remote_addr":"192.0.2.7","time_iso8601":"2026-11-29T10:00:00+00:00",'
        b'"request":"GET / HTTP/1.1","status":"200","http_user_agent":"' + esc + b'",'
        b'"http_referer":"' + esc + b'"}'
    )
    req = line_parser(compile_format("json", cookie_name=None)).fast(line)
    assert isinstance(req, Request)
    mapper = EventMapper(ClientIpConfig(), [])
    fields = mapper.build(req, None, "192.0.2.7", "page_view", "x").fields
    assert tirreno.tirreno_stores(fields, "x").lost is None


@given(st.binary(max_size=40) | st.text(alphabet='ab@."\\\x7f', max_size=40).map(str.encode))
def test_units_shortcut_counts_as_the_walk(data: bytes) -> None:
    """Without quotes or backslashes the count is read off the bytes; it must be the walk's."""
    assert tirreno._units(data) == tirreno._walk_units(data)
