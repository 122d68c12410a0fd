"""Attack: values a visitor or an application chooses that tirreno would lose after its 204,
or that would carry a secret to tirreno. Shipped by the real daemon (``run --once``) to the
sink, which keeps apart what tirreno would fail to insert: nothing may be lost.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import append, site, write_config

UA_300_U = "Mozilla/5.0 " + "\\xC3\\xBC" * 300  # "ü" x 300 as nginx escapes it
LINES = [
    # Reset token in the URL, then in the next request's referer; a path parameter session.
    '203.0.113.7 - - [10/Oct/2024:13:55:36 +0000] "GET /reset?token=s3cr3t HTTP/1.1" 200 5 '
    '"-" "Mozilla/5.0"',
    '203.0.113.7 - - [10/Oct/2024:13:55:37 +0000] "GET /done;jsessionid=J5 HTTP/1.1" 200 5 '
    '"https://shop.example/reset?token=s3cr3t&PHPSESSID=p" "Mozilla/5.0"',
    # A referer whose escapes decode to invalid UTF-8 and NUL; a '+'.
    '203.0.113.7 - - [10/Oct/2024:13:55:38 +0000] "GET /a HTTP/1.1" 200 5 '
    '"https://x.example/?q=%FF%00+b" "Mozilla/5.0"',
    # 300 "ü": 612 bytes, tirreno's cut at 511 would split one.
    f'203.0.113.7 - - [10/Oct/2024:13:55:39 +0000] "GET /b HTTP/1.1" 200 5 "-" "{UA_300_U}"',
    # A NUL escaped in the user agent; an IPv6 zone; a method tirreno does not know.
    '203.0.113.7 - - [10/Oct/2024:13:55:40 +0000] "GET /c HTTP/1.1" 200 5 "-" "Mo\\x00zilla"',
    'fe80::1%eth0 - - [10/Oct/2024:13:55:41 +0000] "GET /d HTTP/1.1" 200 5 "-" "Mozilla/5.0"',
    '203.0.113.7 - - [10/Oct/2024:13:55:42 +0000] "PROPFIND /e HTTP/1.1" 207 5 "-" "DAV"',
    # A failed login answered 401: stays a failed login.
    '203.0.113.7 - - [10/Oct/2024:13:55:43 +0000] "POST /login HTTP/1.1" 401 5 "-" "Mozilla/5.0"',
]


def test_hostile_values_reach_tirreno_stored_and_without_secrets(tmp_path: Path) -> None:
    """Every hostile line is stored by (a stand-in for) tirreno; no secret travels."""
    log = tmp_path / "access.log"
    append(log, [line + "\n" for line in LINES])
    with FakeSensor(bucket_capacity=0) as sink:
        config = write_config(
            tmp_path / "config.yaml",
            [
                site(
                    "shop",
                    sink.url,
                    log,
                    log={"format": "nginx_combined"},
                    events={
                        "exclude": {"methods": []},
                        "rules": [
                            {"method": "POST", "path": "^/login$", "type": "account_login_fail"}
                        ],
                    },
                )
            ],
        )
        proc = run_in_process("run", "-c", str(config), "--once")
        assert proc.returncode == 0, proc.stderr
    assert [r.lost for r in sink.lost] == []
    assert len(sink.accepted) == len(LINES)
    by_url = {r.fields["url"]: r for r in sink.accepted}
    assert "s3cr3t" not in repr([r.fields for r in sink.accepted])
    done = by_url["/done;jsessionid=REDACTED"]
    assert done.stored["httpReferer"] == (
        "https://shop.example/reset?token=REDACTED&PHPSESSID=REDACTED"
    )
    assert by_url["/a"].stored["httpReferer"] == "https://x.example/?q=%FF%00+b"
    assert len(by_url["/b"].fields["userAgent"].encode()) <= 511
    assert by_url["/c"].stored["userAgent"] == "Mozilla"
    assert by_url["/d"].stored["ipAddress"] == "fe80::1"
    assert "httpMethod" not in by_url["/e"].fields
    login = by_url["/login"]
    assert login.stored["eventType"] == "account_login_fail"
    assert "httpCode" not in login.fields
