"""The server launchers themselves: both loopbacks, the README's log formats, reopening logs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.servers import Apache, Nginx
from tests.support.traffic import Traffic

pytestmark = pytest.mark.integration


def _lines(path: Path, n: int, timeout: float = 5.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} has fewer than {n} lines: {path.read_bytes()[-500:]!r}")


def test_nginx_logs_both_formats_for_ipv4_and_ipv6_and_reopens(nginx: Nginx) -> None:
    """nginx answers on both loopbacks, writes nginx_cookie and json lines; USR1 reopens."""
    driver = Traffic(nginx.port, ["k" * 32], seed=1)
    sent = [driver.send_one("login_fail"), driver.send_one("login_ok")]
    assert [s.status for s in sent] == [200, 302]
    text = _lines(nginx.access_logs["nginx_cookie"], 2)
    for s, line in zip(sent, text, strict=True):
        assert line.startswith(s.host.encode() + b" - - [")
        assert line.endswith(b'"' + (s.session_key or "-").encode() + b'"')
    obj = json.loads(_lines(nginx.access_logs["json"], 2)[1])
    assert obj["request"] == "POST /login/ HTTP/1.1" and obj["status"] == "302"
    assert obj["cookie_sessionid"] == (sent[1].session_key or "")
    hosts = {driver.send_one("page").host for _ in range(40)}
    assert hosts == {"127.0.0.1", "::1"}
    _check_reopen(driver, nginx.access_logs["json"], nginx.reopen_logs, before=2 + 40)


def test_apache_logs_cookie_and_cookie_header_and_restarts_gracefully(apache: Apache) -> None:
    """Apache answers on both loopbacks, logs %{sessionid}C and %{Cookie}i; graceful reopens."""
    driver = Traffic(apache.port, ["k" * 32], seed=2)
    sent = driver.send_one("page")
    assert sent.status == 200
    line = _lines(apache.access_logs["apache_cookie"], 1)[0]
    assert line.endswith(b'"' + b"k" * 32 + b'"')
    header = _lines(apache.access_logs["cookie_header"], 1)[0]
    assert b"sessionid=" + b"k" * 32 in header
    _check_reopen(driver, apache.access_logs["apache_cookie"], apache.reopen_logs, before=1)


def _check_reopen(driver: Traffic, live: Path, reopen: Callable[[], None], before: int) -> None:
    """Rename ``live``, reopen, and see new lines arrive there with none lost."""
    rotated = Path(str(live) + ".1")
    os.rename(live, rotated)
    reopen()
    # Workers of the old generation (Apache) or not yet told (nginx) may write a
    # few more lines into the renamed file; none may be lost either way.
    sent_after = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert driver.send_one("page").status == 200
        sent_after += 1
        if live.exists() and live.stat().st_size > 0:
            break
        time.sleep(0.05)
    assert live.exists() and live.stat().st_size > 0, f"{live} was never written again"
    # A server writes the log line after the answer: give the last one a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _count(rotated) + _count(live) < before + sent_after:
        time.sleep(0.02)
    assert _count(rotated) + _count(live) == before + sent_after


def _count(path: Path) -> int:
    return len(path.read_bytes().splitlines())
