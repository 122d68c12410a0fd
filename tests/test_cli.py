"""``status``, ``check`` and ``dead-letters`` from the command line, against real state."""

from __future__ import annotations

import gc
import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import (
    append,
    nginx_line,
    run_cli,
    running,
    site,
    spooled_ids,
    wait_until,
    write_config,
)
from tirreno_shipper.records import Event
from tirreno_shipper.spool import Spool


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def test_status_json_reports_spool_files_and_the_daemon(tmp_path: Path, sensor: FakeSensor) -> None:
    """``status --json``: per site spool depth, age, dead letters, sensor state; per file lag."""
    sensor.set_mode("refuse")
    log = tmp_path / "a.log"
    append(log, [nginx_line(f"/s/{i}") for i in range(4)])
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)], once_timeout=1)
    # A real process, sensor down: the events are kept. In process, run.lock would keep the
    # pid of the test runner, alive, and status would report it as the daemon.
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 1
    append(log, [nginx_line("/s/late")])  # written after the run: lag
    late = len(nginx_line("/s/late"))

    r = run_in_process("status", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["state_dir"] == str(tmp_path / "state")
    assert report["daemon"] == {"running": False, "pid": None}
    a = report["sites"]["a"]
    assert a["spool_depth"] == 4 and a["spool_bytes"] > 0 and a["leased"] == 0
    assert a["oldest_age_seconds"] is not None and a["oldest_age_seconds"] >= 0
    assert a["dead_letters"] == 0
    assert a["sensor_state"].startswith("unknown")
    assert a["paused"] is None
    [f] = a["files"]
    size = log.stat().st_size
    assert (f["path"], f["offset"], f["size"], f["lag_bytes"]) == (
        str(log),
        size - late,
        size,
        late,
    )
    assert f["identity"].startswith(f"{log.stat().st_dev}:{log.stat().st_ino}:")
    assert f["note"] is None

    text = run_in_process("status", "-c", str(cfg))
    assert text.returncode == 0
    assert "daemon: not running" in text.stdout and "site a:" in text.stdout
    assert f"lag {late} B" in text.stdout


def test_status_before_any_run_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """``status`` with no spool yet: a plain note, exit 0, and no state_dir made (as
    whichever user happened to ask)."""
    log = tmp_path / "a.log"
    cfg = write_config(tmp_path / "c.yaml", [site("a", "http://127.0.0.1:9/sensor/", log)])
    text = run_in_process("status", "-c", str(cfg))
    assert text.returncode == 0, text.stderr
    assert "has not run with this state_dir" in text.stdout
    report = json.loads(run_in_process("status", "-c", str(cfg), "--json").stdout)
    assert report["daemon"] == {"running": False, "pid": None} and report["sites"] == {}
    assert not (tmp_path / "state").exists()


def test_status_and_dead_letters_need_no_secrets_in_the_environment(tmp_path: Path) -> None:
    """An operator's shell rarely has the service's env file loaded: ``status`` and
    ``dead-letters`` still work; ``check`` (which uses the key) still refuses."""
    log = tmp_path / "a.log"
    cfg = tmp_path / "c.yaml"
    write_config(cfg, [site("a", "http://127.0.0.1:9/sensor/", log, key="${TIRRENO_API_KEY}")])
    env = {"TIRRENO_API_KEY": ""}
    assert run_in_process("status", "-c", str(cfg), env=env).returncode == 0
    r = run_in_process("dead-letters", "-c", str(cfg), "list", env=env)
    assert r.returncode == 0, r.stderr
    # Before any run there is no spool: asking creates none (nor the state folder).
    assert "no spool in" in r.stderr and "no dead letters" in r.stderr
    assert not (tmp_path / "state").exists()
    r = run_in_process("check", "-c", str(cfg), env=env)
    assert r.returncode == 78 and "TIRRENO_API_KEY is not set" in r.stderr


def test_status_json_shows_the_running_daemons_live_state(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """With the daemon running, status names its pid and the sensor's live state."""
    log = tmp_path / "a.log"
    append(log, [nginx_line("/l/1")])
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    with running(cfg) as shipper:
        assert sensor.wait_accepted(1, 20)

        def live() -> dict[str, Any] | None:
            # Running as soon as it holds the lock; its live state once status.json is written.
            report: dict[str, Any] = json.loads(
                run_in_process("status", "-c", str(cfg), "--json").stdout
            )
            known = report["sites"]["a"]["sensor_state"] != "unknown"
            return report if report["daemon"]["running"] and known else None

        report = wait_until(live, 15, interval=0.3)
        assert report, "status never saw the daemon running"
        assert report["daemon"]["pid"] == shipper.pid
        assert report["sites"]["a"]["sensor_state"] == "ok"
        assert report["sites"]["a"]["spool_depth"] == 0
        assert shipper.stop() == 0


def test_check_passes_against_a_working_sensor(tmp_path: Path, sensor: FakeSensor) -> None:
    """``check --send-test-event``: readable log, reachable sensor, test event accepted; exit 0."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    r = run_in_process("check", "-c", str(cfg), "--send-test-event")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[ok]   logs" in r.stdout and "test event accepted (204)" in r.stdout
    assert "all checks passed" in r.stdout
    [event] = sensor.accepted
    assert event.fields["userName"] == "tirreno-shipper-check"
    assert event.headers["api-key"] == "test-key"


def test_check_with_a_wrong_key_reports_the_rejection_and_exits_1(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A wrong key: the sensor answers but rejects the test event; exit 1, key not shown."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log, key="wrong-key-1234")])
    r = run_cli("check", "-c", str(cfg), "--send-test-event")
    assert r.returncode == 1
    assert "answers as tirreno's sensor does" in r.stdout
    assert "[FAIL] test event rejected (empty 200)" in r.stdout
    assert "some checks FAILED" in r.stdout
    assert "wrong-key-1234" not in r.stdout + r.stderr
    # Two empty 200s: the keyless probe (check's reachability POST) and the test event.
    assert sensor.accepted == [] and sensor.count("200") == 2


def test_check_fails_on_an_unreachable_sensor_and_an_unreadable_log_folder(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    """Nothing listening and a log folder that does not exist are both reported; exit 1."""
    cfg = write_config(
        tmp_path / "c.yaml",
        [site("a", f"http://127.0.0.1:{unused_tcp_port}/sensor/", tmp_path / "nodir" / "a.log")],
    )
    r = run_in_process("check", "-c", str(cfg))
    assert r.returncode == 1
    assert "[FAIL] logs" in r.stdout and "[FAIL] sensor" in r.stdout


@pytest.fixture
def dead_letters(tmp_path: Path) -> tuple[Path, list[str]]:
    """A config whose spool holds three dead letters (two of site a, one of b)."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(
        tmp_path / "c.yaml",
        [
            site("a", "http://127.0.0.1:1/sensor/", log),
            site("b", "http://127.0.0.1:1/sensor/", log),
        ],
    )
    rids = [f"00000000-0000-5000-8000-{i:012d}" for i in range(3)]
    with Spool.open(tmp_path / "state") as spool:
        for s, rid in (("a", rids[0]), ("a", rids[1]), ("b", rids[2])):
            spool.commit_chunk(
                s, [Event(rid, {"url": f"/dl/{rid[-1]}", "ipAddress": "1.2.3.4"})], None
            )
            [leased] = spool.lease(s, 1, 60)
            spool.dead_letter([leased.id], "HTTP 400 from the sensor")
    return cfg, rids


def test_dead_letters_list_retry_and_purge(
    dead_letters: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """list shows each with its reason; retry --id puts one back in the spool; purge deletes."""
    cfg, rids = dead_letters
    r = run_in_process("dead-letters", "-c", str(cfg), "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["request_id"] for x in rows] == rids
    assert {x["reason"] for x in rows} == {"HTTP 400 from the sensor"}
    assert rows[0]["fields"]["url"] == "/dl/0" and rows[2]["site"] == "b"

    r = run_in_process("dead-letters", "-c", str(cfg), "list", "--site", "a")
    assert r.returncode == 0
    assert "2 dead letter(s)" in r.stderr and "/dl/0" in r.stdout and "/dl/2" not in r.stdout

    r = run_in_process("dead-letters", "-c", str(cfg), "retry", "--id", str(rows[1]["id"]))
    assert r.returncode == 0 and "1 dead letter(s) put back" in r.stdout
    assert spooled_ids(tmp_path / "state") == [rids[1]]

    r = run_in_process(
        "dead-letters", "-c", str(cfg), "retry", "--id", "999", "--id", str(rows[0]["id"])
    )
    assert r.returncode == 0 and "1 dead letter(s) put back" in r.stdout
    assert "no dead letter with id 999 (`dead-letters list` shows them)" in r.stderr
    assert sorted(spooled_ids(tmp_path / "state")) == sorted(rids[:2])
    r = run_in_process(
        "dead-letters", "-c", str(cfg), "purge", "--site", "b", "--id", str(rows[0]["id"])
    )
    assert r.returncode == 0 and "0 dead letter(s) deleted" in r.stdout
    assert f"no dead letter of site 'b' with id {rows[0]['id']}" in r.stderr

    r = run_in_process("dead-letters", "-c", str(cfg), "retry", "--site", "nosuch")
    assert r.returncode == 0 and "0 dead letter(s) put back" in r.stdout
    assert "no site named 'nosuch' in the config" in r.stderr

    r = run_in_process("dead-letters", "-c", str(cfg), "purge", "--site", "b")
    assert r.returncode == 0 and "1 dead letter(s) deleted" in r.stdout
    assert "no site named" not in r.stderr
    left = [
        json.loads(x)["request_id"]
        for x in run_in_process(
            "dead-letters", "-c", str(cfg), "list", "--json"
        ).stdout.splitlines()
    ]
    assert left == []

    r = run_in_process("dead-letters", "-c", str(cfg), "purge")
    assert r.returncode == 0 and "0 dead letter(s) deleted" in r.stdout
    with sqlite3.connect(tmp_path / "state" / "spool.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    assert sorted(spooled_ids(tmp_path / "state")) == sorted(rids[:2])  # retried ones stay queued


def test_a_bad_config_exits_78_with_every_problem(tmp_path: Path) -> None:
    """Every command reports an invalid config with its key paths and exits 78."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sites:\n  - name: a\n    sensor: {url: 'ftp://x', api_kee: k}\n    logs: []\n")
    for args in (["status"], ["check"], ["dead-letters", "list"], ["run"]):
        r = run_cli(args[0], "-c", str(cfg), *args[1:])
        assert r.returncode == 78, (args, r.stderr)
        assert "invalid configuration" in r.stderr and "sites[0].sensor.api_kee" in r.stderr


# -- detect-format ---------------------------------------------------------------------

DATA = Path(__file__).parent / "data"
EXAMPLE_LOG = Path(__file__).resolve().parent.parent / "examples" / "access.log"


@pytest.mark.parametrize(
    ("name", "reason"), [("missing", "No such file or directory"), ("folder", "Is a directory")]
)
def test_detect_format_on_an_unreadable_path_is_a_one_line_error(
    tmp_path: Path, name: str, reason: str
) -> None:
    """A missing file or a folder: ``cannot read FILE: reason`` on stderr, exit 1, no traceback."""
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    r = run_cli("detect-format", str(path))
    assert r.returncode == 1
    assert r.stderr == f"tirreno-shipper: cannot read {path}: {reason}\n"
    assert r.stdout == ""


@pytest.mark.parametrize("lines", ["0", "-5"])
def test_detect_format_rejects_a_lines_count_below_one(tmp_path: Path, lines: str) -> None:
    """``--lines 0`` or negative is a usage error (exit 2), not a traceback or an empty look."""
    r = run_in_process("detect-format", str(EXAMPLE_LOG), "--lines", lines)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert f"argument --lines: must be 1 or more (got {lines})" in r.stderr
    assert r.stdout == ""


def test_detect_format_calls_same_shaped_nginx_and_apache_presets_equivalent() -> None:
    """An Apache combined log parses equally as nginx_combined: both are named, nginx not picked."""
    r = run_in_process("detect-format", str(DATA / "elastic_apache_logs"))
    assert r.returncode == 1, r.stderr  # no session cookie in it: the shipper needs one
    [best] = [x for x in r.stdout.splitlines() if x.startswith("Best match")]
    assert best == (
        "Best match: format: nginx_combined or format: apache_combined "
        "(equivalent: they parse the same lines into the same fields; "
        "use the one named after your server)"
    )
    assert "carries no session cookie" in r.stdout

    r = run_in_process("detect-format", str(EXAMPLE_LOG))  # the same with a cookie
    assert r.returncode == 0, r.stderr
    assert "Best match: format: nginx_cookie or format: apache_cookie (equivalent:" in r.stdout
    assert "set users.key.cookie to the cookie's name" in r.stdout


def test_detect_format_names_a_single_best_match_when_there_is_no_tie() -> None:
    """No tie (vhost_combined parses more than the rest): one preset, no "equivalent"."""
    r = run_in_process("detect-format", str(DATA / "apachelogs_vhost_combined.log"))
    assert r.returncode == 1, r.stderr  # no cookie
    [best] = [x for x in r.stdout.splitlines() if x.startswith("Best match")]
    assert best == "Best match: format: vhost_combined"


@pytest.mark.parametrize(
    ("extra", "advice"),
    [
        ({"cookie_PHPSESSID": "abc"}, "set users.key.cookie: PHPSESSID if it is your session"),
        ({"http_cookie": "a=1; sid=abc"}, "the whole Cookie header (http_cookie)"),
        ({}, 'add "cookie_sessionid":"$cookie_sessionid" to the log_format'),
    ],
)
def test_detect_format_reads_the_cookie_name_out_of_json_lines(
    tmp_path: Path, extra: dict[str, str], advice: str
) -> None:
    """JSON keys name their cookie: no "the log does not say it", no advice to add a cookie
    the lines already carry."""
    log = tmp_path / "access.json"
    line = {
        "time_iso8601": "2026-11-29T10:00:00+00:00",
        "remote_addr": "203.0.113.1",
        "request": "GET / HTTP/1.1",
        "status": "200",
        **extra,
    }
    log.write_text((json.dumps(line) + "\n") * 3)
    r = run_in_process("detect-format", str(log))
    assert r.returncode == (0 if extra else 1), r.stderr
    assert "Best match: format: json" in r.stdout and advice in r.stdout
    assert "does not say it" not in r.stdout and "*_cookie preset" not in r.stdout
    if "cookie_PHPSESSID" in extra:
        assert "fields: cookie" in r.stdout


def test_status_takes_the_daemon_from_its_lock_and_says_when_its_state_is_stale(
    tmp_path: Path,
) -> None:
    """A daemon that cannot rewrite status.json (a full disk) still runs: status says so,
    and that its live state is unknown; a pid in run.lock that is not a shipper is none."""
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", "http://127.0.0.1:9/sensor/", log)])
    state = tmp_path / "state"
    # Creates the spool; a real process, whose pid in run.lock is dead afterwards.
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "tirreno-shipper"]
    )
    other = subprocess.Popen(["sleep", "60"])
    try:
        (state / "run.lock").write_text(f"{holder.pid}\n")
        (state / "status.json").write_text(
            json.dumps({"pid": holder.pid, "updated": time.time() - 120, "sites": {}})
        )
        report = json.loads(run_in_process("status", "-c", str(cfg), "--json").stdout)
        assert report["daemon"] == {"running": True, "pid": holder.pid}
        assert re.search(r"has not updated status\.json for 12\d s", report["note"]), report
        assert report["sites"]["a"]["sensor_state"] == "unknown"
        (state / "run.lock").write_text(f"{other.pid}\n")
        report = json.loads(run_in_process("status", "-c", str(cfg), "--json").stdout)
        assert report["daemon"] == {"running": False, "pid": None}
        assert "note" not in report
    finally:
        holder.kill()
        other.kill()
        holder.wait()
        other.wait()


COMBINED = (
    '203.0.113.{i} - - [29/Nov/2026:10:00:{i:02d} +0000] "GET /p/{i} HTTP/1.1" 200 12 "-" '
    '"Mozilla/5.0"'
)


def test_detect_format_names_a_file_two_access_logs_write_and_exits_1(tmp_path: Path) -> None:
    """Debian's own access_log left beside the added one: every request twice, in two
    formats. Not "best match at 50 %", but the cause."""
    log = tmp_path / "access.log"
    lines = []
    for i in range(30):
        lines.append(COMBINED.format(i=i) + f' "sess{i}"')
        lines.append(COMBINED.format(i=i))
    log.write_text("\n".join(lines) + "\n")
    r = run_in_process("detect-format", str(log))
    assert r.returncode == 1, r.stdout
    assert "Problem: this file mixes formats: 30 lines parse as nginx_" in r.stdout
    assert "two access_log (nginx) or CustomLog (Apache) directives" in r.stdout
    assert "Best match" not in r.stdout


def test_detect_format_says_a_cookie_field_that_is_always_empty(tmp_path: Path) -> None:
    """A cookie field logged as - in every line: the log_format names another cookie."""
    log = tmp_path / "access.log"
    log.write_text("".join(COMBINED.format(i=i) + ' "-"\n' for i in range(20)))
    r = run_in_process("detect-format", str(log))
    assert r.returncode == 1, r.stdout
    assert "it is empty (-) in every one" in r.stdout


def test_detect_format_accepts_remote_user_as_the_key(tmp_path: Path) -> None:
    """HTTP authentication logs the user: no cookie needed (exit 0, with the key to use)."""
    log = tmp_path / "access.log"
    log.write_text("".join(COMBINED.format(i=i).replace("- -", "- alice") + "\n" for i in range(9)))
    r = run_in_process("detect-format", str(log))
    assert r.returncode == 0, r.stdout
    assert "users.key: {field: remote_user}" in r.stdout


def test_run_in_process_puts_back_what_the_command_configured(tmp_path: Path) -> None:
    """The in-process helper leaves no logging set-up, frozen heap or signal handler of
    the command behind: the next test's log capture and garbage collector are its own."""
    structlog_before = structlog.get_config()
    handlers_before = list(logging.getLogger().handlers)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    log = tmp_path / "a.log"
    log.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", "http://127.0.0.1:9/sensor/", log)])
    r = run_in_process("run", "-c", str(cfg), "--dry-run", "--log-format", "console")
    assert r.returncode == 0, r.stderr
    assert structlog.get_config() == structlog_before
    assert logging.getLogger().handlers == handlers_before
    assert signal.getsignal(signal.SIGTERM) == sigterm_before
    assert gc.get_freeze_count() == 0
