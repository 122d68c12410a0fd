"""The session key: read the same on every path a log can carry it, then transformed.

Lines are parsed by the real parser from formats as nginx and Apache write them; the
key is what the resolver would look up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import pytest
import yaml

from tests.support.users import cookie_request as req
from tests.support.users import rejected
from tirreno_shipper.config import ApacheFormat, NginxFormat, UsersConfig, parse_config
from tirreno_shipper.errors import ConfigError, ResolverError
from tirreno_shipper.formats import compile_format
from tirreno_shipper.parse import line_parser
from tirreno_shipper.records import Request
from tirreno_shipper.users import UserResolver
from tirreno_shipper.users.keys import KeyExtractor, normalise_cookie, response_fields

HEAD = '203.0.113.7 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "ua"'
NGINX_HEADER = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie"'
)
APACHE_HEADER = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{Cookie}i"'


def resolver(**users: Any) -> UserResolver:
    data: dict[str, Any] = {
        "key": {"cookie": "sessionid"},
        "database": "sqlite://",
        "query": "SELECT 'x' AS user_name WHERE 1 = 0 AND :key IS NOT NULL",
    }
    data.update(users)
    return UserResolver("keys-" + secrets.token_hex(4), UsersConfig.model_validate(data))


def key_of(spec: object, line: str, r: UserResolver | None = None, **users: Any) -> str | None:
    r = r or resolver(**users)
    cookie = r.config.key.cookie
    extra = response_fields(cookie) if cookie and r.config.key.response != "off" else ()
    if isinstance(spec, dict):
        spec = (NginxFormat if "nginx" in spec else ApacheFormat).model_validate(spec)
    parser = line_parser(compile_format(spec, cookie), cookie, extra)
    req = parser.parse(line.encode())
    assert isinstance(req, Request), req
    return r.key_for(req)


@pytest.mark.parametrize(
    ("logged", "as_nginx"),
    [
        ("K", "K"),
        ("K ", "K "),  # sessionid=K ; lang=en: nginx keeps the blank, Apache trims it
        ('"K"', "\\x22K\\x22"),  # sessionid="K", which Django accepts
        (' "K" ', " \\x22K\\x22 "),
    ],
)
def test_a_cookie_reads_the_same_on_every_path(logged: str, as_nginx: str) -> None:
    """$cookie_NAME, %{NAME}C, a whole Cookie header (nginx and Apache) and a JSON log
    all give the key the browser's value stands for (RFC 6265: trimmed, unquoted)."""
    header_nginx = f"lang=en; sessionid={as_nginx}; theme=dark"
    header_apache = f"lang=en; sessionid={logged.replace(chr(34), chr(92) + chr(34))}"
    json_line = json.dumps(
        {
            "time_iso8601": "2024-05-01T10:00:00+00:00",
            "remote_addr": "203.0.113.7",
            "request": "GET / HTTP/1.1",
            "status": "200",
            "cookie_sessionid": logged,
        }
    )
    apache_cookie = logged.replace('"', '\\"')
    got = {
        "nginx $cookie_NAME": key_of("nginx_cookie", f'{HEAD} "{as_nginx}"'),
        "apache %{NAME}C": key_of("apache_cookie", f'{HEAD} "{apache_cookie}"'),
        "nginx $http_cookie": key_of({"nginx": NGINX_HEADER}, f'{HEAD} "{header_nginx}"'),
        "apache %{Cookie}i": key_of({"apache": APACHE_HEADER}, f'{HEAD} "{header_apache}"'),
        "json": key_of("json", json_line),
    }
    assert got == dict.fromkeys(got, "K")


def test_normalise_cookie() -> None:
    assert normalise_cookie('  "abc"\t') == "abc"
    assert normalise_cookie('"') == '"'  # a lone quote is no quoted value
    assert normalise_cookie('""') == ""


def test_a_cookie_name_pattern_is_found_in_the_cookie_header() -> None:
    """wordpress_logged_in_* matches the cookie whatever the site's hash."""
    header = "wordpress_test_cookie=WP; wordpress_logged_in_0123abcd=alice%7C1%7Ctok%7Cmac"
    got = key_of(
        {"nginx": NGINX_HEADER},
        f'{HEAD} "{header}"',
        key={"cookie": "wordpress_logged_in_*", "transforms": ["url_decode", {"split": "|"}]},
    )
    assert got == "alice"


@pytest.mark.parametrize(
    ("transforms", "cookie", "expected"),
    [
        (["url_decode"], "s%3Aabc.def%2Fg", "s:abc.def/g"),
        ([{"strip_prefix": "s:"}], "s:abc", "abc"),
        ([{"strip_prefix": "s:"}], "abc", "abc"),
        ([{"split": "."}], "sid.sig", "sid"),
        ([{"split": "|", "index": 2}], "a|b|c|d", "c"),
        ([{"split": "|", "index": -1}], "a|b|c|d", "d"),
        ([{"regex": "^v1-([0-9a-f]+)$"}], "v1-00ff", "00ff"),
        (["base64_decode"], base64.b64encode(b"id-1").decode(), "id-1"),
        (["base64_decode"], base64.urlsafe_b64encode(b"\xfbid?").decode().rstrip("="), None),
        (["sha256"], "k", hashlib.sha256(b"k").hexdigest()),
        (["md5"], "k", hashlib.md5(b"k").hexdigest()),
        (
            ["url_decode", {"split": "|", "index": 2}, "sha256"],
            "alice%7C1%7Ctok%7Cmac",
            hashlib.sha256(b"tok").hexdigest(),
        ),
    ],
)
def test_transforms(transforms: list[Any], cookie: str, expected: str | None) -> None:
    r = resolver(key={"cookie": "sessionid", "transforms": transforms})
    assert r.key_for(req(cookie)) == expected


@pytest.mark.parametrize(
    ("transforms", "cookie", "reason"),
    [
        ([{"split": "|", "index": 3}], "a|b", "bad_key"),
        ([{"regex": "^v1-([0-9a-f]+)$"}], "v2-00", "bad_key"),
        (["base64_decode"], "!!!!", "undecodable"),
        (["url_decode"], "%FF%FE", "undecodable"),
        ([{"unseal": "express"}], "s:sid.bad", "forged"),
        ([{"unseal": "express"}], "unsigned", "forged"),
        ([{"unseal": "laravel"}], "junk", "undecodable"),
    ],
)
def test_a_key_no_step_can_read_is_nobody_and_counted(
    transforms: list[Any], cookie: str, reason: str
) -> None:
    r = resolver(
        key={"cookie": "sessionid", "transforms": transforms},
        secret="base64:" + base64.b64encode(b"s" * 32).decode(),
    )
    assert r.key_for(req(cookie)) is None
    assert rejected(r.site, reason) == 1


def test_key_regex_is_linear_time() -> None:
    """A catastrophic pattern costs microseconds on a visitor's cookie (RE2)."""
    r = resolver(key={"cookie": "sessionid", "transforms": [{"regex": "^((?:a+)+)$"}]})
    started = time.perf_counter()
    assert r.key_for(req("a" * 4000 + "!")) is None
    assert time.perf_counter() - started < 0.5


def test_a_key_regex_needs_exactly_one_group() -> None:
    with pytest.raises(ValueError, match="exactly one capture group"):
        resolver(key={"cookie": "sessionid", "transforms": [{"regex": "^(a)(b)$"}]})


def test_unseal_needs_the_secret() -> None:
    with pytest.raises(ValueError, match="needs the application's secret"):
        resolver(key={"cookie": "sessionid", "transforms": [{"unseal": "django"}]})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("upstream_cookie_sessionid", "NEW"),
        ("sent_http_set_cookie", "sessionid=NEW; expires=Wed, 16 Dec 2026 13:53:38 GMT; Path=/"),
        ("sent_http_set_cookie", "csrftoken=x; Path=/; sessionid=NEW; HttpOnly"),
        ("apache_o_Set-Cookie", 'csrftoken=x; Path=/, sessionid="NEW"; HttpOnly'),
    ],
)
def test_the_response_cookie_is_the_key_of_a_login(field: str, value: str) -> None:
    """A login's new session is in the response's Set-Cookie: a fallback when the request
    has no cookie, preferred when asked (login lines), never with response: off."""
    r = resolver()
    assert r.key_for(req(None, **{field: value})) == "NEW"
    assert r.key_for(req("OLD", **{field: value})) == "OLD"
    assert r.key_for(req("OLD", **{field: value}), response="prefer") == "NEW"
    off = resolver(key={"cookie": "sessionid", "response": "off"})
    assert off.key_for(req(None, **{field: value})) is None


def test_a_logout_set_cookie_is_no_key() -> None:
    r = resolver()
    deleted = 'sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/'
    assert r.key_for(req(None, sent_http_set_cookie=deleted)) is None
    assert r.key_for(req("OLD", sent_http_set_cookie=deleted), response="prefer") == "OLD"


def test_response_cookie_from_a_logged_nginx_line() -> None:
    """$upstream_cookie_NAME logged after the request cookie: the parser keeps it."""
    fmt = {"nginx": NGINX_HEADER + ' "$upstream_cookie_sessionid"'}
    assert key_of(fmt, f'{HEAD} "-" "NEWSESSION"') == "NEWSESSION"


@pytest.mark.parametrize(
    ("fmt", "cookie"),
    [
        ("nginx_cookie", "connect.sid"),
        ({"nginx": '$remote_addr [$time_local] "$request" $status "$cookie_connect.sid"'}, None),
        ("nginx_cookie", "wordpress_logged_in_*"),
        ("apache_cookie", "wordpress_logged_in_*"),
    ],
)
def test_a_cookie_nginx_cannot_log_by_name_is_a_config_problem(
    fmt: object, cookie: str | None
) -> None:
    """$cookie_connect.sid logs $cookie_connect then '.sid': the problem says to log the
    whole Cookie header instead; a preset's cookie (express) is checked the same way."""
    users: dict[str, Any] = (
        {"framework": "express", "secret": "s"}
        if cookie is None
        else {"key": {"cookie": cookie}, "database": "sqlite://", "query": "SELECT :key"}
    )
    text = yaml.safe_dump(
        {
            "sites": [
                {
                    "name": "s",
                    "sensor": {"url": "http://127.0.0.1:1/", "api_key": "k"},
                    "logs": [{"path": "/var/log/a.log", "format": fmt}],
                    "users": users,
                }
            ]
        }
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    [problem] = [p for p in info.value.problems if p.startswith("sites[0].logs[0].format:")]
    assert '"$http_cookie"' in problem


def test_a_login_line_of_a_header_key_uses_the_header() -> None:
    """No cookie, no response cookie: a login line's key is still the logged header."""
    r = resolver(key={"header": "X-Session"})
    request = req(None, http_x_session="H1", sent_http_set_cookie="sessionid=NEW")
    assert r.key_for(request, response="prefer") == "H1"


def test_a_login_line_is_credited_to_the_user_who_logged_in(tmp_path: Any) -> None:
    """Through the whole path (parse, rules, resolve, map) of a dry run: the POST /login
    line carries the visitor's anonymous session, the response the new one; the event
    names the user of the new one. The next request, with the new cookie, too."""
    import io
    import sqlite3

    from tirreno_shipper.backfill import dry_run

    db = tmp_path / "app.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE s (k TEXT, name TEXT)")
        conn.execute("INSERT INTO s VALUES ('NEWSESS', 'alice')")
    conn.close()
    log = tmp_path / "access.log"
    log.write_text(
        '203.0.113.7 - - [01/May/2024:10:00:00 +0000] "POST /login HTTP/1.1" 302 5 "-" "ua" '
        '"csrftoken=x; sessionid=ANON" "sessionid=NEWSESS; HttpOnly; Path=/"\n'
        '203.0.113.7 - - [01/May/2024:10:00:01 +0000] "GET /me HTTP/1.1" 200 5 "-" "ua" '
        '"sessionid=NEWSESS" "-"\n'
    )
    fmt = NGINX_HEADER + ' "$sent_http_set_cookie"'
    config = parse_config(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "sites": [
                    {
                        "name": "s",
                        "sensor": {"url": "http://127.0.0.1:1/", "api_key": "k"},
                        "logs": [{"path": str(log), "format": {"nginx": fmt}}],
                        "users": {
                            "key": {"cookie": "sessionid"},
                            "database": f"sqlite:///{db}",
                            "query": "SELECT name AS user_name FROM s WHERE k = :key",
                        },
                        "events": {
                            "rules": [
                                {"method": "POST", "path": "^/login", "type": "account_login"}
                            ]
                        },
                    }
                ],
            }
        )
    )
    out = io.StringIO()
    dry_run(config, out)
    events = [json.loads(line)["fields"] for line in out.getvalue().splitlines()]
    assert [(e["eventType"], e["userName"]) for e in events] == [
        ("account_login", "alice"),
        ("page_view", "alice"),
    ]


def test_the_application_secret_is_never_shown() -> None:
    """Neither a configuration error nor the resolver's refusal of a secret it cannot
    use shows the secret."""
    secret = "base64:" + base64.b64encode(b"TopSecretAppKey!").decode()  # 16 bytes: too short
    text = yaml.safe_dump(
        {
            "sites": [
                {
                    "name": "s",
                    "sensor": {"url": "http://127.0.0.1:1/", "api_key": "k"},
                    "logs": [{"path": "/var/log/a.log"}],
                    "users": {"framework": "laravel", "secret": [secret], "database": "sqlite://"},
                }
            ]
        }
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert "TopSecret" not in str(info.value.problems) and secret not in str(info.value.problems)
    config = UsersConfig.model_validate(
        {"framework": "laravel", "secret": secret, "database": "sqlite://"}
    )
    assert secret not in repr(config)
    with pytest.raises(ResolverError) as refused:
        UserResolver("s", config)
    assert "users.key.transforms" in str(refused.value)
    assert secret not in str(refused.value) and "VG9wU2Vj" not in str(refused.value)


NGINX_COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)


@pytest.mark.parametrize(
    ("key", "spec", "hint"),
    [
        ({"cookie": "sessionid"}, "nginx_combined", 'add "$cookie_sessionid" to the log_format'),
        ({"cookie": "connect.sid"}, "nginx_combined", 'add "$http_cookie" to the log_format'),
        ({"cookie": "sessionid"}, "apache_combined", 'add "%{sessionid}C" to the LogFormat'),
        ({"cookie": "sessionid"}, "nginx_cookie", None),
        ({"cookie": "sessionid"}, {"nginx": NGINX_HEADER}, None),  # the whole Cookie header
        ({"cookie": "wp_*"}, {"apache": APACHE_HEADER}, None),
        ({"cookie": "sessionid"}, "json", None),  # a JSON line may hold any key
        # Only the response's cookie: a login's session, unless the key never reads it.
        ({"cookie": "sessionid"}, {"nginx": NGINX_COMBINED + " $upstream_cookie_sessionid"}, None),
        (
            {"cookie": "sessionid", "response": "off"},
            {"nginx": NGINX_COMBINED + " $upstream_cookie_sessionid"},
            'add "$cookie_sessionid"',
        ),
        ({"header": "X-User"}, "apache_combined", 'add "%{X-User}i" to the log format'),
        ({"header": "X-User"}, {"nginx": NGINX_COMBINED + " $http_x_user"}, None),
        ({"field": "remote_user"}, "apache_common", None),
        ({"field": "$request_id"}, "nginx_combined", "log the variable $request_id"),
    ],
)
def test_a_format_that_cannot_carry_the_key_says_what_to_log(
    key: dict[str, str], spec: object, hint: str | None
) -> None:
    """Known from the format alone (check fails it, validate warns): the request's field,
    the whole Cookie header, or the response's cookie where the key reads it."""
    r = resolver(key=key)
    cookie = r.config.key.cookie
    if isinstance(spec, dict):
        spec = (NginxFormat if "nginx" in spec else ApacheFormat).model_validate(spec)
    problem = KeyExtractor(r.config).format_problem(
        line_parser(compile_format(spec, cookie), cookie)
    )
    if hint is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(
            f"logs no {r.config.key.label} (users.key)"
        )
        assert hint in problem, problem
