"""Real web frameworks behind real nginx, for the live tests of the users presets.

`ProxyNginx` is the suite's nginx (`servers.Nginx`) as a reverse proxy in front of
one application, writing one access log in a format given by the test (the
session cookie and the response's new session cookie). `App` runs an
application server as a subprocess on a free loopback port. `Scenario` is what
every framework test does through nginx with a real HTTP client: a visit, a
login, a few pages, a request with a tampered cookie, and a logout; `dry_run`
runs the installed ``tirreno-shipper`` console script on the same log.

The applications live in ``tests/integration/apps/``; they all answer the same
routes so one scenario drives them all: ``POST /login/`` (form ``username``,
``password``) → 302 to ``/account/`` with the new session cookie, ``GET
/account/`` → 200 ``hello <name>`` or ``anonymous``, ``POST /logout/`` → 302.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.servers import Nginx, ServerError, free_port, terminate

APPS = Path(__file__).resolve().parents[1] / "integration" / "apps"
CLI = Path(sys.executable).with_name("tirreno-shipper")

# The README's rules for logins and logouts (tests/integration/harness.py has the same).
RULES: list[dict[str, Any]] = [
    {"method": "POST", "path": "^/login/?$", "status": "3xx", "type": "account_login"},
    {"method": "POST", "path": "^/login/?$", "type": "account_login_fail"},
    {"path": "^/logout/?$", "type": "account_logout"},
]


ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database (``prefix`` + random hex) on 127.0.0.1, dropped after."""
    name = prefix + secrets.token_hex(6)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def nginx_format(request_cookie: str, response_cookie: str) -> str:
    """The README's ``tirreno`` format with the request's and the response's cookie."""
    return (
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        f'"$http_referer" "$http_user_agent" "{request_cookie}" "{response_cookie}"'
    )


class ProxyNginx(Nginx):
    """nginx on 127.0.0.1 proxying everything to ``upstream``, logging in ``log_format``.

    ``access_log`` is the one log it writes.
    """

    name = "nginx-proxy"

    def __init__(self, workdir: Path, upstream: str, log_format: str) -> None:
        self.upstream = upstream
        self.log_format = log_format
        self.access_log = workdir / "logs" / "access.log"
        super().__init__(workdir)
        self.access_logs = {"frameworks": self.access_log}

    def _config(self) -> str:
        return f"""{self._head()}    log_format tirreno '{self.log_format}';
    access_log {self.access_log} tirreno;
    server {{
        listen 127.0.0.1:{self.port};
        listen [::1]:{self.port};
        location / {{
            proxy_pass http://{self.upstream};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    code = proc.poll()
    if code is None:
        proc.kill()
        proc.wait(5)
    detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise ServerError(f"{what} did not listen on 127.0.0.1:{port} (exit code {code}):\n{detail}")


class App:
    """An application server (``command`` formatted with ``{port}``) as a subprocess."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port(("127.0.0.1",))
        self.command = [part.format(port=self.port) for part in command]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> App:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        _wait_port(self.port, self.proc, self.log, self.name)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            # The group: a server that forks workers must not outlive the test.
            terminate(proc, group=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def serving(app: App, workdir: Path, log_format: str) -> Iterator[ProxyNginx]:
    """``app`` and an nginx in front of it, both stopped after; a server that does not
    start fails the test with its reason (the app is stopped if nginx fails)."""
    try:
        app.start()
        try:
            nginx = ProxyNginx(workdir, app.address, log_format).start()
        except ServerError:
            app.stop()
            raise
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield nginx
    finally:
        nginx.stop()
        app.stop()


def tamper(value: str) -> str:
    """``value`` with one character changed in the middle (still the same alphabet)."""
    i = len(value) // 2
    swap = "b" if value[i] == "a" else "a"
    return value[:i] + swap + value[i + 1 :]


@dataclass(slots=True)
class Scenario:
    """A visitor's requests through nginx, and what the application answered."""

    base_url: str
    cookie: str
    username: str
    password: str
    session: str = ""  # the cookie's value after the login
    answers: list[tuple[str, str, int]] = field(default_factory=list)

    def _record(self, method: str, url: str, response: httpx.Response) -> httpx.Response:
        self.answers.append((method, url, response.status_code))
        return response

    def login(self, client: httpx.Client) -> None:
        """An anonymous visit, the login (302 + new cookie), two pages as the user."""
        self._record("GET", "/", client.get("/"))
        form = {"username": self.username, "password": self.password}
        resp = self._record("POST", "/login/", client.post("/login/", data=form))
        assert resp.status_code == 302, (resp.status_code, resp.text[:500])
        value = client.cookies.get(self.cookie)
        assert value, f"the login set no {self.cookie} cookie: {resp.headers}"
        self.session = value
        for url in ("/account/", "/account/?page=2"):
            page = self._record("GET", url, client.get(url))
            assert page.status_code == 200, (url, page.status_code, page.text[:500])
            assert f"hello {self.username}" in page.text, page.text[:500]

    def forge(self, forged: str, url: str = "/account/?case=tampered") -> None:
        """A request with a forged session cookie: the application sees nobody either."""
        with httpx.Client(base_url=self.base_url, cookies={self.cookie: forged}) as other:
            page = self._record("GET", url, other.get(url))
        assert page.status_code == 200, (page.status_code, page.text[:500])
        assert "anonymous" in page.text, page.text[:500]

    def logout(self, client: httpx.Client) -> None:
        resp = self._record("POST", "/logout/", client.post("/logout/"))
        assert resp.status_code == 302, (resp.status_code, resp.text[:500])
        after = client.get("/account/")
        assert "anonymous" in after.text, "the application did not log the user out"
        self.answers.append(("GET", "/account/", after.status_code))


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=10)


def shipper_config(
    path: Path,
    *,
    log: Path,
    log_format: str,
    users: Mapping[str, Any],
    sensor_url: str,
) -> Path:
    """A one-site configuration on ``log`` (JSON, which is YAML)."""
    config = {
        "state_dir": str(path.parent / "state"),
        "log": {"level": "info", "format": "json"},
        "poll_interval": 0.1,
        "shutdown_grace": 2,
        "sites": [
            {
                "name": "app",
                "sensor": {
                    "url": sensor_url,
                    "api_key": "framework-test-key",
                    "rate_limit": 0,
                    "timeout": 5,
                },
                "logs": [
                    {"path": str(log), "format": {"nginx": log_format}, "start_at": "beginning"}
                ],
                "users": {"unresolved": "anonymous", **users},
                "events": {"rules": RULES},
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@dataclass(frozen=True, slots=True)
class DryRun:
    events: list[dict[str, str]]  # the fields of each event, in log order
    summary: dict[str, Any]
    stderr: str


def dry_run(config: Path, env: Mapping[str, str] | None = None) -> DryRun:
    """``tirreno-shipper run -c CONFIG --once --dry-run``, the console script."""
    if not CLI.exists():
        raise AssertionError(f"{CLI} is missing: pip install -e . installs the console script")
    proc = subprocess.run(
        [str(CLI), "run", "-c", str(config), "--once", "--dry-run"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line)["fields"] for line in proc.stdout.splitlines() if line.strip()]
    summaries = [
        json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"summary"')
    ]
    assert len(summaries) == 1, proc.stderr[-3000:]
    return DryRun(events, summaries[0], proc.stderr)


def who(events: Sequence[Mapping[str, str]]) -> list[tuple[str, str, str, str]]:
    """(method, url, eventType, userName) of each event."""
    return [(e["httpMethod"], e["url"], e["eventType"], e["userName"]) for e in events]


def expect_named(
    events: Sequence[Mapping[str, str]], username: str, *, pick: Callable[[Mapping[str, str]], bool]
) -> None:
    chosen = [e for e in events if pick(e)]
    assert chosen, who(events)
    assert all(e["userName"] == username for e in chosen), who(events)


@dataclass(frozen=True, slots=True)
class Live:
    """What one live run saw: the dry run before the logout, the daemon's events after it."""

    scenario: Scenario
    dry: DryRun
    daemon: list[dict[str, str]]  # fields of what the fake sensor accepted, in log order


def _sorted(received: Sequence[Any]) -> list[dict[str, str]]:
    return sorted((dict(r.fields) for r in received), key=lambda f: f["eventTime"])


def run_live(
    workdir: Path,
    nginx: ProxyNginx,
    *,
    cookie: str,
    username: str,
    password: str,
    log_format: str,
    users: Mapping[str, Any],
    forged: Callable[[str], Sequence[str]],
) -> Live:
    """The live scenario with the real daemon following the log, and a dry run.

    The application deletes the session at the logout, so the logout line can
    only be credited by a shipper that saw the session alive: the daemon
    (``tirreno-shipper run``) follows the log while the visitor browses, as in
    production, and the test waits until it has delivered the pages before
    logging out. ``run --once --dry-run`` on the same log, after the pages and
    before the logout, must credit the login line and the pages by itself.
    """
    from tests.support.fake_sensor import FakeSensor
    from tests.support.shipper import Shipper, wait_until

    workdir.mkdir(parents=True, exist_ok=True)
    start = nginx.access_log.stat().st_size if nginx.access_log.exists() else 0
    # Each test reads only its own lines: a copy of the log grows as nginx writes.
    own_log = workdir / "access.log"
    own_log.touch()

    def sync() -> None:
        with nginx.access_log.open("rb") as fh:
            fh.seek(start + own_log.stat().st_size)
            data = fh.read()
        # Whole lines only: nginx writes each line with one write().
        data = data[: data.rfind(b"\n") + 1]
        with own_log.open("ab") as out:
            out.write(data)

    with FakeSensor("framework-test-key", bucket_capacity=0) as sensor:
        config = shipper_config(
            workdir / "config.json",
            log=own_log,
            log_format=log_format,
            users=users,
            sensor_url=sensor.url,
        )
        daemon = Shipper(config, log_path=workdir / "shipper.stderr", start=False)
        daemon.start(ready=True)
        try:
            scenario = Scenario(nginx.url(), cookie, username, password)
            with client(nginx.url()) as browser:
                scenario.login(browser)
                for value in forged(scenario.session):
                    scenario.forge(value)
                # nginx writes the line after the response: wait for all of them.
                wait_until(lambda: _lines(nginx, start) >= len(scenario.answers), 10)
                sync()
                dry = dry_run(config)
                assert len(dry.events) == len(scenario.answers), (scenario.answers, who(dry.events))
                delivered = wait_until(lambda: len(sensor.accepted) >= len(dry.events), 30)
                assert delivered, (who(_sorted(sensor.accepted)), daemon.tail_log())
                scenario.logout(browser)
            wait_until(lambda: _lines(nginx, start) >= len(scenario.answers), 10)
            sync()
            done = wait_until(lambda: len(sensor.accepted) >= len(scenario.answers), 30)
            assert done, (scenario.answers, who(_sorted(sensor.accepted)), daemon.tail_log())
        finally:
            daemon.stop()
        return Live(scenario, dry, _sorted(sensor.accepted))


def _lines(nginx: ProxyNginx, start: int) -> int:
    if not nginx.access_log.exists():
        return 0
    with nginx.access_log.open("rb") as fh:
        fh.seek(start)
        return fh.read().count(b"\n")


def assert_credited(live: Live, username: str, masked_ip: str = "127.0.0.*") -> None:
    """The login line, the pages and the logout name ``username``; forged requests nobody."""
    for events in (live.dry.events, live.daemon):
        logins = [e for e in events if e["eventType"] == "account_login"]
        assert [e["userName"] for e in logins] == [username], who(events)
        pages = [e for e in events if e["url"] in ("/account/", "/account/?page=2")]
        assert pages and all(e["userName"] == username for e in pages[:2]), who(events)
        forged = [e for e in events if "case=tampered" in e["url"]]
        assert forged, who(events)
        assert all(e["userName"] == masked_ip for e in forged), who(events)
        home = [e for e in events if e["url"] == "/"]
        assert home and home[0]["userName"] == masked_ip, who(events)
    logouts = [e for e in live.daemon if e["eventType"] == "account_logout"]
    assert [e["userName"] for e in logouts] == [username], who(live.daemon)
    after = [e for e in live.daemon if e["url"] == "/account/"][-1]
    assert after["userName"] == masked_ip, "the request after the logout is nobody's"
