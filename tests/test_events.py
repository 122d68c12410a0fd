"""Request + user → tirreno fields: completeness, redaction, limits, client IP, request id;
and the site pipeline that puts parse, filter, rules, resolver and mapper together."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from tirreno_shipper.config import ClientIpConfig, parse_config
from tirreno_shipper.events import REQUEST_ID_NAMESPACE, ClientIp, EventMapper, request_id
from tirreno_shipper.pipeline import SitePipeline
from tirreno_shipper.records import Chunk, FileId, Request, User
from tirreno_shipper.tirreno import FIELD_LIMITS, KNOWN_FIELDS, validate_fields
from tirreno_shipper.users import UserResolver

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
FULL_USER = User(
    user_name="zoe",
    email_address="zoe@example.net",
    first_name="Zoë",
    last_name="Łukasiewicz",
    full_name="Zoë Łukasiewicz",
    phone_number="+41 (79) 123-45-67",
    user_created="2026-01-09 07:00:00",
)


def request(**kw: object) -> Request:
    base: dict[str, object] = {
        "remote_addr": "203.0.113.10",
        "time": "2026-11-29 10:00:01",
        "method": "GET",
        "uri": "/products/42?ref=mail",
        "path": "/products/42",
        "status": 200,
        "referer": "https://shop.example.com/",
        "user_agent": UA,
        "accept_language": "fr-CH, fr;q=0.9",
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def mapper(redact: list[str] | None = None, **ip: object) -> EventMapper:
    return EventMapper(
        ClientIpConfig.model_validate(ip), redact if redact is not None else ["token"]
    )


def test_every_field_the_log_and_user_can_fill() -> None:
    """All tirreno fields a log line and a user record can fill are present and named right."""
    m = mapper()
    rid = request_id("shop", "1:2:abc", 0)
    event = m.build(request(), FULL_USER, "203.0.113.10", "page_view", rid)
    assert event.request_id == rid
    assert dict(event.fields) == {
        "ipAddress": "203.0.113.10",
        "url": "/products/42?ref=mail",
        "eventTime": "2026-11-29 10:00:01",
        "userAgent": UA,
        "httpReferer": "https://shop.example.com/",
        "httpCode": "200",
        "httpMethod": "GET",
        "browserLanguage": "fr-CH, fr;q=0.9",
        "eventType": "page_view",
        "userName": "zoe",
        "emailAddress": "zoe@example.net",
        "firstName": "Zoë",
        "lastName": "Łukasiewicz",
        "fullName": "Zoë Łukasiewicz",
        "phoneNumber": "+41791234567",
        "userCreated": "2026-01-09 07:00:00",
    }
    assert set(event.fields) == KNOWN_FIELDS - {"pageTitle"}
    assert validate_fields(event.fields, rid) is None
    # "+41 (79) 123-45-67": tirreno would remove only the spaces.
    assert dict(m.fixed) == {"phoneNumber:normalised": 1}


def test_absent_values_are_left_out() -> None:
    """Fields the log did not carry are not sent (no empty strings)."""
    req = request(time=None, referer=None, user_agent=None, accept_language=None, status=None)
    fields = mapper().build(req, User(user_name="anon"), "203.0.113.10", "page_view", "x").fields
    assert set(fields) == {"ipAddress", "url", "httpMethod", "eventType", "userName"}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/a?token=abc123&page=1", "/a?token=REDACTED&page=1"),
        ("/a?page=1&TOKEN=abc", "/a?page=1&TOKEN=REDACTED"),
        ("/a?password=x;code=y#frag", "/a?password=REDACTED;code=REDACTED#frag"),
        ("/a?mytoken=keep&token=", "/a?mytoken=keep&token=REDACTED"),
        ("/token=notaquery", "/token=notaquery"),
    ],
)
def test_url_redaction(uri: str, expected: str) -> None:
    """Listed query parameters have their values replaced by REDACTED."""
    m = mapper(["token", "password", "code"])
    assert (
        m.build(request(uri=uri), None, "203.0.113.10", "page_view", "x").fields["url"] == expected
    )


def test_no_redaction_when_list_empty() -> None:
    """An empty redact_query list keeps the URL as logged."""
    assert mapper([]).url("/a?token=x") == "/a?token=x"


def test_truncation_to_tirreno_limits_is_counted() -> None:
    """Over-long values are cut to tirreno's limits and each cut counted in ``fixed``."""
    m = mapper()
    user = User(
        user_name="u" * 150,
        first_name="f" * 101,
        last_name="l" * 100,
        full_name="n" * 300,
        user_created="2026-01-01 00:00:00",
    )
    req = request(
        uri="/" + "a" * 3000,
        referer="r" * 2048,
        user_agent="b" * 600,
        accept_language="l" * 300,
        method="M" * 120,
    )
    fields = m.build(req, user, "203.0.113.10", "page_view", "x").fields
    assert "httpMethod" not in fields
    for name, value in fields.items():
        assert len(value) <= FIELD_LIMITS.get(name, 100), name
    assert len(fields["url"]) == 2047
    assert len(fields["httpReferer"]) == 2047
    assert len(fields["userAgent"]) == 511
    assert len(fields["browserLanguage"]) == 255
    assert fields["lastName"] == "l" * 100  # at the limit: not cut
    assert dict(m.fixed) == {
        "url:cut": 1,
        "httpReferer:cut": 1,
        "userAgent:cut": 1,
        "browserLanguage:cut": 1,
        "httpMethod:invalid": 1,  # not a method tirreno knows: left out
        "userName:cut": 1,
        "firstName:cut": 1,
        "fullName:cut": 1,
    }


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "a@b", "two@@example.com", "josé@example.com", "x" * 65 + "@example.com"],
)
def test_invalid_email_dropped_and_counted(email: str) -> None:
    """tirreno would store broken@user.local; we send no email and count it."""
    m = mapper()
    fields = m.build(
        request(), User(user_name="u", email_address=email), "1.2.3.4", "page_view", "x"
    ).fields
    assert "emailAddress" not in fields
    assert dict(m.fixed) == {"emailAddress:invalid": 1}


def test_phone_number_normalised_or_dropped() -> None:
    """Phone numbers keep digits and +; one longer than 19 is dropped and counted."""
    m = mapper()
    long_phone = User(user_name="u", phone_number="1" * 20)
    assert "phoneNumber" not in m.build(request(), long_phone, "1.2.3.4", "page_view", "x").fields
    assert dict(m.fixed) == {"phoneNumber:invalid": 1}


def test_a_users_fields_are_worked_out_once_and_every_change_counted_per_event() -> None:
    """The record keeps its mapped fields (any mapper reuses them), every event that
    carries it counts its changes, and the memo is no part of the record's value."""
    user = User(user_name="u" * 150, email_address="not-an-email")
    first, second = mapper(), mapper()
    events = [m.build(request(), user, "1.2.3.4", "page_view", "x") for m in (first, first)]
    events.append(second.build(request(), user, "1.2.3.4", "page_view", "x"))
    assert user.mapped is not None
    assert all(e.fields["userName"] == "u" * 100 for e in events)
    assert all("emailAddress" not in e.fields for e in events)
    assert dict(first.fixed) == {"userName:cut": 2, "emailAddress:invalid": 2}
    assert dict(second.fixed) == {"userName:cut": 1, "emailAddress:invalid": 1}
    fresh = User(user_name="u" * 150, email_address="not-an-email")
    assert fresh == user and hash(fresh) == hash(user) and repr(fresh) == repr(user)
    assert user.mapped.values == ("u" * 100,)  # cut: not the record's own string


def test_a_users_own_strings_are_not_kept_twice() -> None:
    """Fields sent as the record holds them are read from it per event, not copied, and
    users of one shape share it."""
    users = [User(user_name=f"u{i}", email_address=f"u{i}@example.com") for i in range(2)]
    m = mapper()
    for user in users:
        fields = m.build(request(), user, "1.2.3.4", "page_view", "x").fields
        assert (fields["userName"], fields["emailAddress"]) == (
            user.user_name,
            user.email_address,
        )
        assert user.mapped is not None and user.mapped.values is None
    assert users[0].mapped is users[1].mapped
    again = m.build(request(), users[1], "1.2.3.4", "page_view", "x").fields
    assert again["emailAddress"] == "u1@example.com"
    assert not m.fixed


# --- client IP --------------------------------------------------------------------------------


def test_client_ip_is_remote_addr_by_default() -> None:
    """Without forwarded_for, X-Forwarded-For is ignored."""
    ip = ClientIp(ClientIpConfig())
    req = request(remote_addr="10.0.0.2", extra={"http_x_forwarded_for": "198.51.100.1"})
    assert ip.of(req) == "10.0.0.2"


def test_forwarded_for_right_most_untrusted() -> None:
    """The right-most address that is not a trusted proxy is the client."""
    ip = ClientIp(ClientIpConfig(forwarded_for=True))
    chain = "6.6.6.6, 198.51.100.1, 10.0.0.7, 192.168.1.1"
    assert (
        ip.of(request(remote_addr="10.0.0.2", extra={"http_x_forwarded_for": chain}))
        == "198.51.100.1"
    )


def test_forwarded_for_from_untrusted_peer_ignored() -> None:
    """A client talking to us directly cannot spoof its address with the header."""
    ip = ClientIp(ClientIpConfig(forwarded_for=True))
    req = request(remote_addr="203.0.113.50", extra={"http_x_forwarded_for": "1.1.1.1"})
    assert ip.of(req) == "203.0.113.50"


def test_forwarded_for_all_trusted_takes_left_most_and_skips_junk() -> None:
    """Every hop trusted: the left-most; junk entries are not addresses."""
    ip = ClientIp(ClientIpConfig(forwarded_for=True))
    req = request(
        remote_addr="127.0.0.1", extra={"http_x_forwarded_for": "unknown, 10.1.1.1, 10.2.2.2"}
    )
    assert ip.of(req) == "10.1.1.1"
    assert ip.of(request(remote_addr="127.0.0.1")) == "127.0.0.1"


def test_forwarded_for_custom_trusted_list_and_ipv6() -> None:
    """trusted_proxies is the operator's list; IPv6 and IPv4-mapped addresses work."""
    ip = ClientIp(ClientIpConfig(forwarded_for=True, trusted_proxies=["2001:db8:ffff::/48"]))
    req = request(remote_addr="2001:db8:ffff::1", extra={"http_x_forwarded_for": "2001:db8::5"})
    assert ip.of(req) == "2001:db8::5"
    assert ip.valid("::ffff:192.0.2.1") == "192.0.2.1"
    assert ip.valid("[2001:db8::1]") == "2001:db8::1"
    assert ip.valid("shop.example.com") is None
    assert ip.valid(None) is None


# --- request id -------------------------------------------------------------------------------


def test_request_id_is_uuid5_of_site_file_offset() -> None:
    """request_id == uuid5(REQUEST_ID_NAMESPACE, "site|file_key|offset"), 36 characters."""
    for site, key, offset in [
        ("shop", "2049:131:ab12", 0),
        ("blog", "1:2:", 987654321),
        ("ü", "x", 5),
    ]:
        rid = request_id(site, key, offset)
        assert rid == str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{site}|{key}|{offset}"))
        assert len(rid) == 36
        assert rid == request_id(site, key, offset)
    assert request_id("shop", "k", 1) != request_id("shop", "k", 2)
    assert request_id("shop", "k", 1) != request_id("blog", "k", 1)


# --- the site pipeline ------------------------------------------------------------------------

SITE_YAML = """
state_dir: {tmp}/state
sites:
  - name: shop
    sensor: {{url: "http://127.0.0.1:1/sensor/", api_key: k}}
    logs:
      - path: {tmp}/access.log
        format: {{nginx: '{fmt}'}}
    users:
      key: {{cookie: sid}}
      database: sqlite:///{tmp}/users.sqlite
      query: {query}
      unresolved: {unresolved}
    events:
      client_ip: {{forwarded_for: true}}
      rules:
        - {{method: POST, path: '^/login/?$', status: 3xx, type: account_login}}
        - {{method: POST, path: '^/login/?$', type: account_login_fail, unresolved: anonymous}}
"""


SITE_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_accept_language" "$http_x_forwarded_for" '
    '"$cookie_sid"'
)
SITE_QUERY = (
    "SELECT username AS user_name, email, first_name, last_name, full_name, phone,"
    " created AS user_created FROM users WHERE sid = :key"
)


def make_pipeline(tmp_path: Path, unresolved: str = "drop") -> tuple[SitePipeline, UserResolver]:
    db = sqlite3.connect(tmp_path / "users.sqlite")
    db.execute(
        "CREATE TABLE users (sid TEXT, username TEXT, email TEXT, first_name TEXT, last_name TEXT,"
        " full_name TEXT, phone TEXT, created TEXT)"
    )
    db.execute(
        "INSERT INTO users VALUES ('s3', 'zoe', 'zoe@example.net', 'Zoë', 'Łukasiewicz',"
        " 'Zoë Łukasiewicz', '+41 79 123 45 67', '2026-01-09T07:00:00')"
    )
    db.commit()
    db.close()
    config = parse_config(
        SITE_YAML.format(tmp=tmp_path, unresolved=unresolved, fmt=SITE_FORMAT, query=SITE_QUERY),
        env={},
    )
    site = config.sites[0]
    assert site.users is not None
    resolver = UserResolver(site.name, site.users)
    return SitePipeline(site, resolver), resolver


def line(
    path: str = "/account/", method: str = "GET", status: int = 200, cookie: str = "s3"
) -> bytes:
    return (
        f'10.0.0.2 - - [29/Nov/2026:11:00:01 +0100] "{method} {path} HTTP/1.1" {status} 12 '
        f'"https://shop.example.com/" "{UA}" "de-CH" "198.51.100.1, 10.0.0.9" "{cookie}"'
    ).encode()


def chunk(*lines: bytes) -> Chunk:
    offsets, pos = [], 0
    for raw in lines:
        offsets.append((pos, raw))
        pos += len(raw) + 1
    return Chunk("/x/access.log", FileId(1, 2, "fp"), 0, pos, offsets)


def test_pipeline_full_event_from_line_and_database(tmp_path: Path) -> None:
    """A log line and a SQLite user row become one complete, valid tirreno event."""
    pipeline, resolver = make_pipeline(tmp_path)
    try:
        parser = pipeline.parser(pipeline.site.logs[0])
        events, counts = pipeline.process(chunk(line()), parser)
    finally:
        resolver.close()
    assert counts.events == 1 and len(events) == 1
    (event,) = events
    assert event.request_id == str(uuid.uuid5(REQUEST_ID_NAMESPACE, "shop|1:2:fp|0"))
    assert dict(event.fields) == {
        "ipAddress": "198.51.100.1",
        "url": "/account/",
        "eventTime": "2026-11-29 10:00:01",
        "userAgent": UA,
        "httpReferer": "https://shop.example.com/",
        "httpCode": "200",
        "httpMethod": "GET",
        "browserLanguage": "de-CH",
        "eventType": "page_view",
        "userName": "zoe",
        "emailAddress": "zoe@example.net",
        "firstName": "Zoë",
        "lastName": "Łukasiewicz",
        "fullName": "Zoë Łukasiewicz",
        "phoneNumber": "+41791234567",
        "userCreated": "2026-01-09 07:00:00",
    }


def test_pipeline_unresolved_drop_override_and_page_error(tmp_path: Path) -> None:
    """Unknown sessions are dropped, except the rule that sends failed logins anonymously;
    a 4xx page view becomes page_error."""
    pipeline, resolver = make_pipeline(tmp_path)
    try:
        parser = pipeline.parser(pipeline.site.logs[0])
        events, counts = pipeline.process(
            chunk(
                line(cookie="-"),  # anonymous page view: dropped
                line("/login/", "POST", 200, cookie="-"),  # failed login: sent anonymously
                line("/login/", "POST", 302),  # login
                line("/missing", status=404),  # page_error
                line("/static/app.css"),  # filtered
                b"garbage",
            ),
            parser,
        )
    finally:
        resolver.close()
    types = [(e.fields["eventType"], e.fields["userName"]) for e in events]
    assert types == [
        ("account_login_fail", "198.51.100.*"),
        ("account_login", "zoe"),
        ("page_error", "zoe"),
    ]
    assert counts.lines == 6 and counts.parsed == 5 and counts.events == 3
    assert dict(counts.unresolved) == {"dropped": 1, "anonymous": 1}
    assert dict(counts.filtered) == {"path": 1}
    assert dict(counts.unparseable) == {"no_match": 1}


def test_pipeline_unresolved_anonymous(tmp_path: Path) -> None:
    """users.unresolved: anonymous sends everyone, with tirreno's masked-IP userName."""
    pipeline, resolver = make_pipeline(tmp_path, unresolved="anonymous")
    try:
        parser = pipeline.parser(pipeline.site.logs[0])
        events, _ = pipeline.process(chunk(line(cookie="nobody")), parser)
    finally:
        resolver.close()
    assert events[0].fields["userName"] == "198.51.100.*"
    assert "emailAddress" not in events[0].fields


def test_pipeline_counts_truncation(tmp_path: Path) -> None:
    """A cut user agent is counted in the chunk's ``fixed``."""
    pipeline, resolver = make_pipeline(tmp_path)
    try:
        parser = pipeline.parser(pipeline.site.logs[0])
        long_ua = line().replace(UA.encode(), b"x" * 1000)
        events, counts = pipeline.process(chunk(long_ua), parser)
    finally:
        resolver.close()
    assert len(events[0].fields["userAgent"]) == 511
    assert dict(counts.fixed) == {"userAgent:cut": 1}
