"""The README's walkthrough, as an operator on Debian 12 follows it, on real nginx and
Apache started from Debian's own default configuration (copied to a temp folder):

install (a virtualenv, `pip install` from a checkout) → the README's snippet where the
README says it goes → detect-format → validate → check → dry run → the service's
command (`run`, here with --once against the sink).

And the two traps the snippets used to walk into, which detect-format and check must
name: nginx with Debian's `access_log` left beside an added one (two formats in one
file), and Apache with a server-wide `CustomLog` that 000-default.conf overrides (no
cookie logged).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.debian_servers import DebianApache, DebianNginx
from tests.support.servers import ServerError, WebServer
from tests.support.shared import built_once
from tests.support.shipper import ROOT, child_env
from tirreno_shipper.sink import Sink

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = (ROOT / "README.md").read_text(encoding="utf-8")
API_KEY = "walkthrough-key"


def _readme_block(section: str, after: str, lang: str) -> str:
    """The first ```lang block after ``after`` in README section ``section``."""
    start = README.index(section)
    start = README.index(after, start)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert match, (section, after, lang)
    return match.group(1)


def _install(base: Path) -> None:
    """The README's install on Debian: `python3 -m venv`, then the venv's pip installs the
    checkout ('.' : SQLite users databases)."""
    checkout = base / "tirreno-shipper"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "state", "node_modules", "__pycache__", "*.egg-info", ".*_cache"
        ),
    )
    venv = base / "opt" / "tirreno-shipper"
    python = shutil.which("python3") or sys.executable
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "."],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]


@pytest.fixture(scope="module")
def shipper_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed ``tirreno-shipper``: one install per run, shared by the workers (a
    minute of pip each, see tests/support/shared.py)."""
    base = built_once(tmp_path_factory, "walkthrough-install", _install)
    exe = base / "opt" / "tirreno-shipper" / "bin" / "tirreno-shipper"
    assert exe.is_file()
    return exe


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(API_KEY, bucket_capacity=0) as s:
        yield s


def _shipper(exe: Path, *args: str, secrets: bool) -> subprocess.CompletedProcess[str]:
    env = child_env()
    env.pop("PYTHONPATH", None)  # the installed package, not this checkout
    env.pop("TIRRENO_API_KEY", None)
    env.pop("TIRRENO_SHIPPER_CONFIG", None)
    if secrets:
        env["TIRRENO_API_KEY"] = API_KEY
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _users_db(path: Path) -> str:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE sessions (session_key TEXT PRIMARY KEY, username TEXT, email TEXT)"
        )
        db.execute("INSERT INTO sessions VALUES ('s-alice', 'alice', 'alice@example.com')")
    return f"sqlite:///{path}"


def _browse(server: WebServer) -> None:
    """Alice logged in, an anonymous visitor, and a static asset."""
    with httpx.Client(base_url=server.url(), cookies={"sessionid": "s-alice"}) as alice:
        for path in ("/", "/about/", "/products/1.html", "/products/2.html"):
            assert alice.get(path).status_code == 200
        alice.get("/static/app.css")
    assert httpx.get(server.url() + "/about/").status_code == 200


def _config(tmp_path: Path, log: Path, fmt: str, sensor_url: str) -> Path:
    """deploy/config.yaml, installed and edited as the README says: the sensor URL, the
    log, the users query (here a SQLite database), and state_dir where a test may write."""
    config = yaml.safe_load((ROOT / "deploy" / "config.yaml").read_text(encoding="utf-8"))
    site = config["sites"][0]
    site["sensor"]["url"] = sensor_url
    site["logs"] = [{"path": str(log), "format": fmt, "start_at": "beginning"}]
    site["users"]["database"] = _users_db(tmp_path / "users.sqlite")
    site["users"]["query"] = (
        "SELECT username AS user_name, email AS email_address FROM sessions "
        "WHERE session_key = :key"
    )
    assert config["state_dir"] == "/var/lib/tirreno-shipper"
    config["state_dir"] = str(tmp_path / "state")
    config.pop("metrics", None)
    path = tmp_path / "etc" / "tirreno-shipper" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _walk(exe: Path, server: WebServer, log: Path, fmt: str, tmp_path: Path, sink: Sink) -> None:
    """detect-format → validate → check → dry run → run, each as the README shows it."""
    _browse(server)
    detected = _shipper(exe, "detect-format", str(log), secrets=False)
    assert detected.returncode == 0, detected.stdout + detected.stderr
    assert f"format: {fmt}" in detected.stdout and "Problem" not in detected.stdout

    cfg = _config(tmp_path, log, fmt, sink.url)
    valid = _shipper(exe, "validate", "-c", str(cfg), secrets=False)
    assert valid.returncode == 0, valid.stderr
    assert f"{cfg}: valid (1 site(s))" in valid.stdout

    checked = _shipper(exe, "check", "-c", str(cfg), "--send-test-event", secrets=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"[ok]   logs {log}: readable; " in checked.stdout
    assert "answers as tirreno's sensor does" in checked.stdout
    assert "all checks passed" in checked.stdout
    assert [r.fields["userName"] for r in sink.accepted] == ["tirreno-shipper-check"]

    dry = _shipper(exe, "run", "-c", str(cfg), "--once", "--dry-run", secrets=True)
    assert dry.returncode == 0, dry.stderr
    events = [json.loads(line) for line in dry.stdout.splitlines()]
    users = sorted(e["fields"].get("userName", "") for e in events)
    assert users == ["alice"] * 4, users  # the anonymous visit dropped, the .css filtered
    assert not (tmp_path / "state").exists(), "a dry run leaves no state"

    # The service: the unit's ExecStart is this virtualenv's command with `run -c CONFIG`.
    unit = (ROOT / "systemd" / "tirreno-shipper.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(\S+) run -c (\S+)$", unit, re.M)
    assert str(exe).endswith(exec_start[0]) and exec_start[1] == "/etc/tirreno-shipper/config.yaml"
    shipped = _shipper(exe, "run", "-c", str(cfg), "--once", secrets=True)
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    sent = [r.fields for r in sink.accepted if r.fields["userName"] == "alice"]
    assert len(sent) == 4 and {f["emailAddress"] for f in sent} == {"alice@example.com"}


def _walk_started(
    exe: Path, server: DebianNginx | DebianApache, fmt: str, tmp_path: Path, sink: Sink
) -> None:
    """The server's own config test passes on the edited copy; then the walk."""
    tested = server.test_config()
    assert tested.returncode == 0, tested.stderr
    with _started(server):
        _walk(exe, server, server.access_log, fmt, tmp_path, sink)


def _trap(
    exe: Path, server: DebianNginx | DebianApache, fmt: str, tmp_path: Path, sink: Sink
) -> tuple[str, str]:
    """Browse, then detect-format and check, which must both fail: their outputs."""
    with _started(server):
        _browse(server)
        detected = _shipper(exe, "detect-format", str(server.access_log), secrets=False)
        assert detected.returncode == 1, detected.stdout
        cfg = _config(tmp_path, server.access_log, fmt, sink.url)
        checked = _shipper(exe, "check", "-c", str(cfg), secrets=True)
        assert checked.returncode == 1, checked.stdout
    return detected.stdout, checked.stdout


@contextlib.contextmanager
def _started(server: WebServer) -> Iterator[WebServer]:
    """The server started once and stopped at the end (``with server`` would start a
    second one over the first, which then outlives the test)."""
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def test_nginx_walkthrough_on_debians_default_config(
    shipper_bin: Path, tmp_path: Path, sink: Sink
) -> None:
    """The README's Debian nginx snippet replaces nginx.conf's access_log line: one
    format in access.log, the cookie in it, every step passes."""
    server = DebianNginx(tmp_path / "nginx")
    snippet = _readme_block("### nginx", "**Debian, Ubuntu**", "nginx")
    conf = server.conf.read_text()
    default = f"access_log {server.log_dir}/access.log;"
    assert conf.count(default) == 1, "Debian's nginx.conf has its own access_log"
    server.conf.write_text(conf.replace(default, server.rewrite(snippet).strip()))
    _walk_started(shipper_bin, server, "nginx_cookie", tmp_path, sink)


def test_apache_walkthrough_on_debians_default_config(
    shipper_bin: Path, tmp_path: Path, sink: Sink
) -> None:
    """The README's Apache steps: the LogFormat in conf-available/tirreno.conf, a2enconf,
    and 000-default.conf's own CustomLog changed to the tirreno format."""
    server = DebianApache(tmp_path / "apache")
    snippet = _readme_block("### Apache", "**Debian, Ubuntu**", "apache")
    (server.etc / "conf-available" / "tirreno.conf").write_text(snippet)
    enable = subprocess.run(
        ["a2enconf", "-q", "tirreno"], env=server.env, capture_output=True, text=True, check=False
    )
    assert enable.returncode == 0, enable.stderr
    assert (server.etc / "conf-enabled" / "tirreno.conf").exists()
    site = server.etc / "sites-available" / "000-default.conf"
    text = site.read_text()
    default = "CustomLog ${APACHE_LOG_DIR}/access.log combined"
    assert default in text
    site.write_text(text.replace(default, "CustomLog ${APACHE_LOG_DIR}/access.log tirreno"))
    _walk_started(shipper_bin, server, "apache_cookie", tmp_path, sink)


def test_nginx_snippet_added_beside_debians_access_log_is_named(
    shipper_bin: Path, tmp_path: Path, sink: Sink
) -> None:
    """The trap: the snippet in conf.d, Debian's `access_log` left in nginx.conf. Each
    request is logged twice in two formats; detect-format and check say so and exit 1."""
    server = DebianNginx(tmp_path / "nginx")
    snippet = _readme_block("### nginx", "**Debian, Ubuntu**", "nginx")
    (server.etc / "conf.d" / "tirreno.conf").write_text(server.rewrite(snippet))
    detected, checked = _trap(shipper_bin, server, "nginx_cookie", tmp_path, sink)
    assert "Problem: this file mixes formats" in detected
    assert f"[FAIL] logs {server.access_log}: mixes formats" in checked


def test_apache_global_customlog_overridden_by_000_default_is_named(
    shipper_bin: Path, tmp_path: Path, sink: Sink
) -> None:
    """The trap: a server-wide CustomLog with the cookie, which 000-default.conf's own
    CustomLog overrides: access.log has no cookie; detect-format and check say so."""
    server = DebianApache(tmp_path / "apache")
    snippet = _readme_block("### Apache", "**Debian, Ubuntu**", "apache")
    global_log = snippet + "CustomLog ${APACHE_LOG_DIR}/access.log tirreno\n"
    (server.etc / "conf-enabled" / "tirreno.conf").write_text(global_log)
    detected, checked = _trap(shipper_bin, server, "apache_combined", tmp_path, sink)
    assert "Problem: this log carries no session cookie" in detected
    # Told from the format alone (a97625f): apache_combined cannot carry the cookie.
    assert f"[FAIL] logs {server.access_log}: apache_combined logs no cookie 'sessionid'" in (
        checked
    )
    assert "every request would be unresolved" in checked
