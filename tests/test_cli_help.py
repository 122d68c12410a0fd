"""The command line an operator meets: validate offline, the default config path, the
logging flags, the sink, --help's exit codes/environment/example, shell completion,
the man page, and a backfill that is not silent without a TTY."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from structlog.testing import capture_logs

from tests.support import fake_sensor
from tests.support.cli import run_in_process
from tests.support.servers import free_port
from tests.support.shipper import ROOT, child_env, run_cli
from tirreno_shipper import cli, errors, sink
from tirreno_shipper.sinkcmd import run_sink


def _commands() -> dict[str, argparse.ArgumentParser]:
    from tirreno_shipper.manpage import _commands as commands

    return commands(cli._parser())


def _offline_config(tmp_path: Path, **changes: object) -> Path:
    """A config whose sensor, database and secrets are all out of reach: validate must
    not need any of them."""
    site: dict[str, object] = {
        "name": "shop",
        "sensor": {"url": "https://tirreno.invalid/sensor/", "api_key": "${TIRRENO_API_KEY}"},
        "logs": [{"path": "/nonexistent/access.log", "format": "nginx_cookie"}],
        "users": {
            "key": {"cookie": "sessionid"},
            "database": "postgresql+psycopg://reader:${DB_PASSWORD}@db.invalid/shop",
            "query": "SELECT username AS user_name FROM t WHERE k = :key",
        },
        "events": {"rules": [{"method": "POST", "path": "^/login/?$", "type": "account_login"}]},
    }
    site.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"state_dir": "/nonexistent/state", "sites": [site]}))
    return path


# What an operator's shell may well not have: the service's secrets, and no config path.
_SECRETS = ("TIRRENO_API_KEY", "DB_PASSWORD", cli.CONFIG_ENV)


def _without_secrets() -> dict[str, str]:
    return {k: v for k, v in child_env().items() if k not in _SECRETS}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in this process (tests/support/cli.py), without the secrets."""
    return run_in_process(*args, env=env, unset=_SECRETS)


def _process(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a real process, without the secrets."""
    return subprocess.run(
        [sys.executable, "-m", "tirreno_shipper", *args],
        cwd=ROOT,
        env=_without_secrets(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- validate ---------------------------------------------------------------------------


def test_validate_needs_no_network_database_or_secret(tmp_path: Path) -> None:
    """Unresolvable hosts, unset ${VARS} of secrets, missing log and state folders: valid
    (a real process: the exit code a deployment script checks)."""
    r = _process("validate", "-c", str(_offline_config(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"{tmp_path}/config.yaml: valid (1 site(s))")
    assert "shop: /nonexistent/access.log (nginx_cookie); users by cookie 'sessionid'" in r.stdout
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"events": {"rules": [{"path": "^/(a", "type": "page_view"}]}}, "sites[0].events.rules"),
        ({"events": {"exclude": {"paths": ["(a+)+$("]}}}, "sites[0].events.exclude.paths"),
        ({"logs": [{"path": "/x.log", "format": {"nginx": "no variables"}}]}, "sites[0].logs[0]"),
        ({"logs": [{"path": "/x.log", "format": "nginx_cokie"}]}, "did you mean 'nginx_cookie'"),
    ],
)
def test_validate_names_each_bad_regex_rule_and_format(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    """Every problem with its key path, exit 78, as `run` would refuse it."""
    r = _cli("validate", "-c", str(_offline_config(tmp_path, **change)))
    assert r.returncode == errors.EX_CONFIG, r.stdout + r.stderr
    assert "invalid configuration" in r.stderr and problem in r.stderr, r.stderr


def test_validate_warns_of_a_log_format_without_the_users_key(tmp_path: Path) -> None:
    """A combined log for a site keyed on a cookie: `run` would run it, every request
    unresolved; validate names the log and what to add, and exits 0."""
    cfg = _offline_config(tmp_path, logs=[{"path": "/x.log", "format": "nginx_combined"}])
    r = _cli("validate", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "  warning: sites[0].logs[0].format: nginx_combined logs no cookie 'sessionid' "
        "(users.key): every request would be unresolved; "
        'add "$cookie_sessionid" to the log_format'
    ) in r.stdout


def test_the_config_path_defaults_to_etc_and_follows_the_environment(tmp_path: Path) -> None:
    """-c is optional: /etc/tirreno-shipper/config.yaml, or $TIRRENO_SHIPPER_CONFIG."""
    assert cli.config_path(None) in (os.environ.get(cli.CONFIG_ENV), cli.DEFAULT_CONFIG)
    cfg = _offline_config(tmp_path)
    r = _cli("validate", env={cli.CONFIG_ENV: str(cfg)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{cfg}: valid")
    if not Path(cli.DEFAULT_CONFIG).exists():
        r = _cli("status")
        assert r.returncode == errors.EX_CONFIG
        assert f"{cli.DEFAULT_CONFIG}: cannot read the configuration" in r.stderr
    assert cli.config_path("given.yaml") == "given.yaml"


def test_every_command_takes_log_level_and_log_format() -> None:
    """The flags parse on every command, and override the config's log section."""
    parser = cli._parser()
    for name, sp in _commands().items():
        flags = {o for a in sp._actions for o in a.option_strings}
        assert {"--log-level", "--log-format"} <= flags, name
    args = parser.parse_args(["status", "--log-level", "debug", "--log-format", "json"])
    assert (args.log_level, args.log_format) == ("debug", "json")


def _backfill_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    example = (ROOT / "config.example.yaml").read_text()
    cfg.write_text(
        example.replace("./state", str(tmp_path / "state")).replace(
            "examples/", f"{ROOT}/examples/"
        )
    )
    return cfg


def _backfill(cfg: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return _cli(
        "backfill", "-c", str(cfg), "--site", "shop", "--from-start",
        str(ROOT / "examples/access.log"), *flags,
    )  # fmt: skip


def test_log_flags_change_what_a_command_logs(tmp_path: Path) -> None:
    """Off a TTY a backfill logs JSON lines at info; --log-level warning silences its
    progress line, --log-format console writes it as text."""
    cfg = _backfill_config(tmp_path)
    plain = _backfill(cfg)
    assert plain.returncode == 0, plain.stderr
    assert '"event": "backfill_progress"' in plain.stderr
    quiet = _backfill(cfg, "--log-level", "warning")
    assert quiet.returncode == 0 and "backfill_progress" not in quiet.stderr, quiet.stderr
    console = _backfill(cfg, "--log-format", "console")
    [line] = [ln for ln in console.stderr.splitlines() if "backfill_progress" in ln]
    assert not line.startswith("{") and "[info" in line, line


# -- sink -------------------------------------------------------------------------------


def test_the_test_suites_fake_sensor_is_the_sink() -> None:
    """One stand-in for tirreno: what the tests trust is what operators run."""
    assert fake_sensor.FakeSensor is sink.Sink


def test_sink_answers_like_tirreno_and_prints_each_event(tmp_path: Path) -> None:
    """204 for an event, an empty 200 for a wrong key, 429 past the bucket, Connection:
    close on each; the accepted event printed readably (control characters escaped)."""
    port = free_port()
    out = tmp_path / "out.txt"
    stop = threading.Event()
    codes: list[int] = []
    with out.open("w") as fh:
        thread = threading.Thread(
            target=lambda: codes.append(run_sink(f"127.0.0.1:{port}", "k", 2, out=fh, stop=stop))
        )
        thread.start()
        url = f"http://127.0.0.1:{port}/sensor/"
        form = {
            "ipAddress": "203.0.113.7",
            "url": "/login",
            "userName": "alice\x1b[31m",
            "eventType": "account_login",
            "httpMethod": "POST",
            "httpCode": "302",
            "eventTime": "2026-11-29 10:00:01",
            "userAgent": "Mozilla/5.0",
        }

        def post(key: str) -> httpx.Response:
            deadline = time.monotonic() + 10
            while True:
                try:
                    return httpx.post(url, data=form, headers={"Api-Key": key,
                                      "X-Request-Id": "rid-1"})  # fmt: skip
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)

        ok = post("k")
        wrong = post("nope")
        second = post("k")
        limited = post("k")
        stop.set()
        thread.join(10)
    assert codes == [0]
    assert (ok.status_code, ok.content) == (204, b"")
    assert (wrong.status_code, wrong.content) == (200, b"")
    assert second.status_code == 204 and limited.status_code == 429
    assert all(r.headers["connection"] == "close" for r in (ok, wrong, limited))
    text = out.read_text()
    assert "204 account_login  POST  /login  302  alice\\x1b[31m  203.0.113.7" in text
    assert "    userAgent: Mozilla/5.0" in text and "X-Request-Id: rid-1" in text
    assert "\x1b" not in text


def test_sink_command_runs_until_sigint_and_refuses_no_key() -> None:
    """The console command: listens, prints, exits 0 on Ctrl-C; without a key, exit 2."""
    r = _cli("sink", "--listen", "127.0.0.1:1")
    assert r.returncode == errors.EX_USAGE and "--api-key" in r.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tirreno_shipper", "sink", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**_without_secrets(), "TIRRENO_API_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "listening" in proc.stderr.readline()
        r2 = httpx.post(f"http://127.0.0.1:{port}/sensor/", data={"ipAddress": "203.0.113.9",
                        "url": "/x"}, headers={"Api-Key": "k"})  # fmt: skip
        assert r2.status_code == 204
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "/x" in stdout and "203.0.113.9" in stdout
    assert "stopped (204: 1)" in stderr


# -- --help, completion, man page -------------------------------------------------------


def test_every_commands_help_lists_exit_codes_environment_and_an_example() -> None:
    """Each documented exit code is a real one, and each command has all three parts."""
    real = {v for k, v in vars(errors).items() if k.startswith("EX_")}
    for name, sp in _commands().items():
        text = sp.format_help()
        assert "exit codes:" in text and "environment:" in text, name
        assert "example:" in text or "examples:" in text, name
        assert f"tirreno-shipper {name}" in text.split("example")[-1], name
        assert {code for code, _ in cli.DOCS[name].exits} <= real, name
    top = cli._parser().format_help()
    assert "TIRRENO_SHIPPER_CONFIG" in top and "--log-level" in top


def test_backfill_help_names_every_compression_it_reads() -> None:
    r = run_in_process("backfill", "--help")
    assert r.returncode == 0
    assert all(ext in r.stdout for ext in (".gz", ".bz2", ".xz"))


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_parse_and_know_every_command(shell: str, tmp_path: Path) -> None:
    """Generated from the parser by shtab: the shell itself accepts the script."""
    r = run_in_process("completion", shell)
    assert r.returncode == 0, r.stderr
    script = tmp_path / f"completion.{shell}"
    script.write_text(r.stdout)
    check = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    for name in _commands():
        assert name in r.stdout, name
    assert "--log-level" in r.stdout and "--send-test-event" in r.stdout


def test_bash_completion_completes_the_commands(tmp_path: Path) -> None:
    """Loaded into bash, the script offers the commands after `tirreno-shipper `
    (printed by a real process: the command packagers run)."""
    r = run_cli("completion", "bash")
    script = tmp_path / "c.bash"
    script.write_text(r.stdout)
    probe = (
        f"source {script}; COMP_WORDS=(tirreno-shipper va); COMP_CWORD=1; "
        "COMP_LINE='tirreno-shipper va'; COMP_POINT=${#COMP_LINE}; "
        '_shtab_tirreno_shipper tirreno-shipper va tirreno-shipper; echo "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["validate"], out.stdout + out.stderr


def test_man_page_renders_without_warnings_and_documents_every_command(tmp_path: Path) -> None:
    """groff reads the page with every warning on; each command, option and exit code is in
    (printed by a real process: the command packagers run)."""
    r = run_cli("man")
    assert r.returncode == 0, r.stderr
    page = tmp_path / "tirreno-shipper.1"
    page.write_text(r.stdout)
    rendered = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    text = subprocess.run(
        ["groff", "-man", "-Tascii", "-P", "-cbou", str(page)], capture_output=True, text=True,
        check=True, env={**os.environ, "MANWIDTH": "200"},
    ).stdout  # fmt: skip
    for name, sp in _commands().items():
        assert name in text, name
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert flag in text, (name, flag)
    assert "TIRRENO_SHIPPER_CONFIG" in text and "78" in text


# -- backfill progress off a TTY ------------------------------------------------------


def test_backfill_without_a_tty_logs_progress_every_ten_seconds() -> None:
    """No progress bar off a TTY: a backfill_progress line at the first chunk, then every
    10 s of work."""
    now = [100.0]
    progress = cli.BackfillProgress("shop", 1000, clock=lambda: now[0])
    with capture_logs() as logs:
        progress.add(100, 10, 5)
        now[0] += 9.9
        progress.add(100, 10, 5)
        now[0] += 0.1
        progress.add(300, 30, 15)
        now[0] += 10
        progress.add(500, 50, 25)
    assert [(e["event"], e["percent"], e["lines"], e["events"], e["seconds"]) for e in logs] == [
        ("backfill_progress", 10.0, 10, 5, 0.0),
        ("backfill_progress", 50.0, 50, 25, 10.0),
        ("backfill_progress", 100.0, 100, 50, 20.0),
    ]


def test_a_real_backfill_off_a_tty_is_wired_to_the_progress_lines(tmp_path: Path) -> None:
    """The command uses it when stderr is not a TTY (it ends with its JSON summary)."""
    r = _backfill(_backfill_config(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stderr.splitlines() if ln.startswith("{")]
    [said] = [ln for ln in lines if ln.get("event") == "backfill_progress"]
    assert said["site"] == "shop" and said["total_bytes"] > 0
