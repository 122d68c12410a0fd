"""``check`` as an operator runs it: the state folder, the sensor URL's path, the
test event's verdict, and an output made only of check's own report lines.

The command is called in this process (`run_in_process`: its output and exit
code, without starting an interpreter each time; test_cli.py runs ``check`` as a
real process), with a real fake sensor and real HTTP servers; nothing of the
product is mocked. The tests run as root, for whom permission bits do not stop
writes, so the unusable state folders are ones that fail for root too: a path
under a regular file (cannot be created: ENOTDIR), a regular file (exists, not
a folder) and ``/proc/self`` (a folder nobody, not even root, may write in).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import nginx_line, running, site, write_config


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def _config(tmp_path: Path, url: str, *, users: dict[str, Any] | None = None, **top: Any) -> Path:
    log = tmp_path / "a.log"
    log.touch()
    # A site keyed on a cookie logs it (a combined log cannot carry it: check fails).
    extra: dict[str, Any] = (
        {"users": users, "log": {"format": "nginx_cookie"}} if users is not None else {}
    )
    return write_config(tmp_path / "c.yaml", [site("a", url, log, **extra)], **top)


def _daemon_state_dir_error(cfg: Path) -> str:
    """What ``run`` says about the state folder (it exits 73): its log's error field."""
    r = run_in_process("run", "-c", str(cfg), "--once")
    assert r.returncode == 73, r.stderr
    [error] = [
        json.loads(line)["error"]
        for line in r.stderr.splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "spool_open_failed"
    ]
    return str(error)


# -- state_dir ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("under_a_file", "cannot create state_dir {d}: Not a directory"),
        ("a_file", "cannot use state_dir {d}: it exists and is not a directory"),
        ("proc", "state_dir {d} is not writable by this user"),
    ],
)
def test_check_fails_on_a_state_dir_run_cannot_use(
    tmp_path: Path, sensor: FakeSensor, where: str, expected: str
) -> None:
    """A state folder ``run`` would exit 73 on is a [FAIL] with the daemon's own words; exit 1."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    state_dir = {
        "under_a_file": blocker / "state",  # mkdir fails with ENOTDIR, even for root
        "a_file": blocker,
        "proc": Path("/proc/self"),  # a folder no one may write in, root included
    }[where]
    cfg = _config(tmp_path, sensor.url, state_dir=str(state_dir))

    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    message = expected.format(d=state_dir)
    assert f"[FAIL] {message}" in r.stdout
    assert "exits 73" in r.stdout  # the hint: what `run` would do
    assert "some checks FAILED" in r.stdout and "all checks passed" not in r.stdout
    assert blocker.read_text() == "a regular file\n"
    # The very words the daemon uses when it refuses to start.
    assert _daemon_state_dir_error(cfg) == message


def test_check_accepts_a_state_dir_run_can_create_and_leaves_it_uncreated(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A missing state folder under a writable parent is fine, and check does not create it."""
    state_dir = tmp_path / "new" / "deeper" / "state"
    cfg = _config(tmp_path, sensor.url, state_dir=str(state_dir))
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[ok]   state_dir {state_dir}: missing; `run` creates it" in r.stdout
    assert not (tmp_path / "new").exists()

    state_dir.mkdir(parents=True)
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[ok]   state_dir {state_dir}: writable" in r.stdout
    assert list(state_dir.iterdir()) == []  # no spool made by check


# -- the sensor URL's path -----------------------------------------------------------


class _Fixed(BaseHTTPRequestHandler):
    """Answers every request with the server's fixed status (a web server, not tirreno)."""

    protocol_version = "HTTP/1.1"
    server: _FixedServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.methods.append(self.command)
        body = f"error {self.server.status}".encode()
        self.send_response(self.server.status)
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    do_GET = do_POST = _reply


class _FixedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int) -> None:
        self.status = status
        self.methods: list[str] = []
        super().__init__(("127.0.0.1", 0), _Fixed)


@pytest.fixture
def fixed_status(request: pytest.FixtureRequest) -> Iterator[_FixedServer]:
    server = _FixedServer(request.param)
    # Polled every 50 ms, not serve_forever's 0.5 s: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_check_fails_on_a_sensor_url_with_a_wrong_path(tmp_path: Path, sensor: FakeSensor) -> None:
    """The sensor's host with a wrong path answers 404: a [FAIL] naming tirreno's /sensor/ path."""
    url = f"http://127.0.0.1:{sensor.port}/api/sensor/"
    r = run_in_process("check", "-c", str(_config(tmp_path, url)))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reachable" not in r.stdout
    assert f"[FAIL] sensor {url}: HTTP 404" in r.stdout
    assert "https://<tirreno host>/sensor/" in r.stdout
    assert "some checks FAILED" in r.stdout
    assert sensor.count("404") == 1 and sensor.accepted == []


@pytest.mark.parametrize("fixed_status", [405, 410], indirect=True)
def test_check_fails_when_the_url_refuses_posts_or_is_gone(
    tmp_path: Path, fixed_status: _FixedServer
) -> None:
    """405 and 410 to the POST events are sent with also mean a wrong path."""
    status = fixed_status.status
    url = f"http://127.0.0.1:{fixed_status.server_address[1]}/sensor/"
    r = run_in_process("check", "-c", str(_config(tmp_path, url)))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"[FAIL] sensor {url}: HTTP {status}" in r.stdout
    assert "https://<tirreno host>/sensor/" in r.stdout
    assert fixed_status.methods == ["POST"]  # the probe asks the way events are sent


@pytest.mark.parametrize("fixed_status", [401, 500], indirect=True)
def test_other_statuses_still_prove_the_sensor_reachable(
    tmp_path: Path, fixed_status: _FixedServer
) -> None:
    """Any other answer keeps its meaning: the host is reachable."""
    url = f"http://127.0.0.1:{fixed_status.server_address[1]}/sensor/"
    r = run_in_process("check", "-c", str(_config(tmp_path, url)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[ok]   sensor {url}: reachable (HTTP {fixed_status.status})" in r.stdout


def test_the_probe_of_the_right_path_is_answered_by_tirreno_and_sends_no_event(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """On /sensor/ the keyless probe gets tirreno's empty 200: tirreno, nothing accepted."""
    r = run_in_process("check", "-c", str(_config(tmp_path, sensor.url)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        f"[ok]   sensor {sensor.url}: answers as tirreno's sensor does (an empty 200 to a "
        "POST without Api-Key)"
    ) in r.stdout
    assert sensor.accepted == [] and sensor.count("200") == 1
    assert "all checks passed" in r.stdout


@pytest.mark.parametrize("fixed_status", [200], indirect=True)
def test_another_application_answering_200_with_a_page_is_not_tirreno(
    tmp_path: Path, fixed_status: _FixedServer
) -> None:
    """An unrelated web app on the configured port answers 200 with a body: tirreno answers
    a keyless POST with an empty 200, so check fails and says it is not tirreno."""
    url = f"http://127.0.0.1:{fixed_status.server_address[1]}/sensor/"
    r = run_in_process("check", "-c", str(_config(tmp_path, url)))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"[FAIL] sensor {url}: not tirreno: it answers a POST without Api-Key with a page" in (
        r.stdout
    )
    assert "reachable" not in r.stdout


def test_a_test_event_to_a_wrong_path_reports_the_real_status(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """``--send-test-event`` to a path answering 404 says 404 and why, not "empty 200"."""
    url = f"http://127.0.0.1:{sensor.port}/sensr/"
    r = run_in_process("check", "-c", str(_config(tmp_path, url)), "--send-test-event")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "empty 200" not in r.stdout
    [line] = [x for x in r.stdout.splitlines() if "test event" in x]
    assert line.startswith("  [FAIL] test event not accepted: HTTP 404 Not Found")
    assert "/sensor/" in line
    assert sensor.count("404") == 2 and sensor.accepted == []


# -- only check's own lines ----------------------------------------------------------


def _users(tmp_path: Path, query: str) -> dict[str, Any]:
    db = tmp_path / "users.sqlite"
    db.touch()
    return _users_at(f"sqlite:///{db}", query)


def _users_at(database: str, query: str, **extra: Any) -> dict[str, Any]:
    """A ``users`` section keyed on the sessionid cookie."""
    return {"key": {"cookie": "sessionid"}, "database": database, "query": query, **extra}


def test_a_failing_user_query_is_reported_once_without_log_lines(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """The resolver's own warning is not printed beside check's [FAIL] line (stdout or stderr)."""
    users = _users(tmp_path, "SELECT name AS user_name FROM no_such_table WHERE key = :key")
    cfg = _config(tmp_path, sensor.url, users=users, log={"level": "debug", "format": "json"})
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 1
    assert r.stderr == ""
    assert "resolver_failed" not in r.stdout and "{" not in r.stdout
    [failed] = [x for x in r.stdout.splitlines() if "no such table" in x]
    assert failed.startswith("  [FAIL] users: user database sqlite:///")
    for line in r.stdout.splitlines():
        assert line.startswith(("configuration:", "site ", "  [", "some checks", "all checks"))


def test_a_query_ignoring_the_key_is_a_warning_line_of_check(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """The resolver's warning that an impossible key matched becomes check's own [warn] line."""
    users = _users(tmp_path, "SELECT 'someone' AS user_name WHERE :key IS NOT NULL")
    cfg = _config(tmp_path, sensor.url, users=users)
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert "  [ok]   users: the query runs" in r.stdout
    assert (
        "  [warn] users: a key that cannot exist matched a row: does the query filter on :key?"
        in r.stdout
    )


def test_check_skips_folders_a_log_glob_matches(tmp_path: Path, sensor: FakeSensor) -> None:
    """A glob matching a folder beside the logs: the folder is not a log (the tail skips it
    too), so it is neither opened nor reported as failing."""
    logs = tmp_path / "logs"
    (logs / "old.log").mkdir(parents=True)  # a folder whose name matches the glob
    (logs / "shop.log").write_text("")
    cfg = write_config(
        tmp_path / "c.yaml",
        [site("a", sensor.url, logs / "shop.log", log={"path": f"{logs}/*.log"})],
    )
    r = run_in_process("check", "-c", str(cfg))
    assert f"[ok]   logs {logs}/shop.log: readable" in r.stdout, r.stdout
    assert "old.log" not in r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_parses_the_end_of_each_log_with_its_format(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A log read with the wrong format fails check (nothing of it would be sent); one with a
    few odd lines is a warning; a glob's compressed matches are named as not followed."""
    logs = tmp_path / "logs"
    logs.mkdir()
    good, odd, wrong = logs / "good.log", logs / "odd.log", logs / "wrong.log"
    good.write_text("".join(nginx_line(f"/g/{i}") for i in range(300)))
    odd.write_text("".join(nginx_line(f"/o/{i}") if i % 3 else "garbage\n" for i in range(30)))
    wrong.write_text('{"remote_addr": "203.0.113.1", "request": "GET / HTTP/1.1"}\n' * 5)
    (logs / "good.log.2.gz").write_bytes(gzip.compress(good.read_bytes()))
    cfg = write_config(
        tmp_path / "c.yaml",
        [site("a", sensor.url, good, log={"path": f"{logs}/*.log*", "format": "nginx_combined"})],
    )
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 1, r.stdout
    out = r.stdout
    assert f"[ok]   logs {good}: readable; 200 of its last 200 lines parse as nginx_combined" in out
    assert f"[warn] logs {odd}: readable; only 20 of its last 30 lines parse" in out
    assert (
        f"[FAIL] logs {wrong}: readable, but none of its last 5 lines parses as nginx_combined: "
        f"`tirreno-shipper detect-format {wrong}` names the format that fits"
    ) in out
    assert (
        f"[warn] logs {logs}/good.log.2.gz: compressed: not followed; to send it: "
        f"tirreno-shipper backfill -c CONFIG --site a {logs}/good.log.2.gz"
    ) in out


def test_check_names_query_columns_that_feed_no_field(tmp_path: Path, sensor: FakeSensor) -> None:
    """A misspelt alias (``AS mail``) would drop the field from every event without a word."""
    users = _users(tmp_path, "SELECT 'x' AS user_name, 'a@b.c' AS mail WHERE :key = 'no'")
    cfg = _config(tmp_path, sensor.url, users=users)
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    [warn] = [line for line in r.stdout.splitlines() if "columns ignored" in line]
    assert warn.startswith("  [warn] users: columns ignored: mail (a user's fields are taken")
    assert "email_address" in warn


# -- database credentials ------------------------------------------------------------


def test_check_never_prints_a_database_password(
    tmp_path: Path, sensor: FakeSensor, unused_tcp_port: int
) -> None:
    """Neither a password with an unescaped "@" (refused at load: SQLAlchemy would show its
    end as the host name) nor a ?password= parameter (masked in the [FAIL] line) is printed."""
    log = tmp_path / "a.log"
    log.touch()
    query = "SELECT 'x' AS user_name WHERE 'a' = :key"
    at = write_config(
        tmp_path / "at.yaml",
        [
            site(
                "a",
                sensor.url,
                log,
                users=_users_at(
                    f"mysql+pymysql://reader:p@ss-Zz9Leak@127.0.0.1:{unused_tcp_port}/test", query
                ),
            )
        ],
    )
    r = run_in_process("check", "-c", str(at))
    assert r.returncode == 78, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "sites[0].users.database" in out and "%40" in out
    assert "Zz9Leak" not in out and "reader" not in out

    for scheme in ("mysql+pymysql", "postgresql+psycopg"):
        cfg = write_config(
            tmp_path / "q.yaml",
            [
                site(
                    "a",
                    sensor.url,
                    log,
                    users=_users_at(
                        f"{scheme}://reader@127.0.0.1:{unused_tcp_port}/test?password=QueryPwLeak",
                        query,
                        timeout=2,
                    ),
                )
            ],
            log={"level": "debug", "format": "json"},
        )
        r = run_in_process("check", "-c", str(cfg))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"  [FAIL] users: user database {scheme}://reader@127.0.0.1:" in r.stdout
        assert "password=***" in r.stdout
        assert "QueryPwLeak" not in r.stdout + r.stderr


def test_check_names_the_daemon_running_on_the_state_dir(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """check beside a running daemon says so (pid from run.lock); after it stops, not."""
    cfg = _config(tmp_path, sensor.url)
    with running(cfg) as daemon:
        r = run_in_process("check", "-c", str(cfg))
        assert f"a daemon runs on it (pid {daemon.pid})" in r.stdout, r.stdout
        assert daemon.stop() == 0
    r = run_in_process("check", "-c", str(cfg))
    assert "writable" in r.stdout and "a daemon runs on it" not in r.stdout, r.stdout


def _check_keyed_log(
    tmp_path: Path, sensor: FakeSensor, log: Path, fmt: str, code: int = 1
) -> subprocess.CompletedProcess[str]:
    """``check`` of one log in ``fmt`` for a site keyed on the sessionid cookie: it exits
    ``code`` (fails, unless told)."""
    users = _users(tmp_path, "SELECT 'u' AS user_name WHERE :key = 'x'")
    cfg = write_config(
        tmp_path / "c.yaml", [site("a", sensor.url, log, log={"format": fmt}, users=users)]
    )
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == code, r.stdout
    return r


def test_check_fails_on_a_log_two_access_logs_write(tmp_path: Path, sensor: FakeSensor) -> None:
    """Debian's access_log left beside the added one: half the lines in each format. Not
    "11 of 22 lines parse" and "all checks passed", but the cause, and exit 1."""
    log = tmp_path / "a.log"
    log.write_text(
        "".join(nginx_line(f"/m/{i}", cookie=f"s{i}") + nginx_line(f"/m/{i}") for i in range(11))
    )
    r = _check_keyed_log(tmp_path, sensor, log, "nginx_cookie")
    assert (
        f"[FAIL] logs {log}: mixes formats: 11 of its last 22 lines parse as nginx_cookie, "
        "11 others as nginx_combined: two access_log (nginx) or CustomLog (Apache) directives"
    ) in r.stdout


def test_check_fails_on_a_log_format_without_the_session_key(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """users.key.cookie set, but the format logs no cookie (a combined log): every
    request would be unresolved, whatever the lines hold. It says what to log."""
    log = tmp_path / "a.log"
    log.write_text("".join(nginx_line(f"/k/{i}") for i in range(20)))
    r = _check_keyed_log(tmp_path, sensor, log, "nginx_combined")
    assert (
        f"[FAIL] logs {log}: nginx_combined logs no cookie 'sessionid' (users.key): every "
        'request would be unresolved; add "$cookie_sessionid" to the log_format'
    ) in r.stdout


def test_check_warns_on_a_log_whose_session_cookie_is_always_empty(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """The format logs the cookie, always '-' (a quiet night, a crawl): a warning that
    says so and what to verify, not a failure."""
    log = tmp_path / "a.log"
    log.write_text("".join(nginx_line(f"/k/{i}", cookie="-") for i in range(20)))
    r = _check_keyed_log(tmp_path, sensor, log, "nginx_cookie", code=0)
    assert (
        f"[warn] logs {log}: cookie 'sessionid' is logged but empty in all 20 sampled "
        "requests: expected if nobody logged in lately (a quiet night, a crawl); otherwise "
        "check that the name of the application's session cookie is sessionid, and log the "
        "response's cookie too ($upstream_cookie_sessionid)"
    ) in r.stdout
    assert f"[ok]   logs {log}: readable; 20 of its last 20 lines parse" in r.stdout


def test_check_passes_on_the_example_configuration(tmp_path: Path, sensor: FakeSensor) -> None:
    """config.example.yaml (framework: django on its example database) passes check."""
    import shutil

    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "examples", tmp_path / "examples")
    text = (repo / "config.example.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text.replace("http://127.0.0.1:8585/sensor/", sensor.url))
    r = run_in_process("check", "-c", str(tmp_path / "c.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "  [ok]   users: the query runs" in r.stdout
