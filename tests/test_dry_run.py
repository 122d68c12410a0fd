"""`run --once --dry-run`, `detect-format` and `--version` as a user runs them: the example's
dry run and --version in a subprocess, the other cases in this process (`in_process`)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_in_process
from tirreno_shipper._version import __version__

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIRRENO_API_KEY"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "tirreno_shipper", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """As `run`, with the command called in this process (tests/support/cli.py)."""
    return run_in_process(*args, unset=("TIRRENO_API_KEY",), cwd=cwd)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture(scope="module")
def dry_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """The example config's dry run, from an empty working directory."""
    cwd = tmp_path_factory.mktemp("cwd")
    state = REPO / "state"
    before = snapshot(state)
    examples_before = snapshot(REPO / "examples")
    proc = run(["run", "-c", str(REPO / "config.example.yaml"), "--once", "--dry-run"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(state) == before, "the dry run wrote state"
    assert snapshot(REPO / "examples") == examples_before
    assert list(cwd.iterdir()) == [], "the dry run wrote into the working directory"
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    summaries = [
        json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"summary"')
    ]
    return events, summaries, cwd


def by_url(events: list[dict[str, Any]], url: str) -> list[dict[str, str]]:
    return [e["fields"] for e in events if e["fields"]["url"] == url]


def test_dry_run_prints_one_json_event_per_line(dry_run: Any) -> None:
    """Every stdout line is an event with site, a 36-character request id and fields."""
    events, _, _ = dry_run
    assert len(events) == 18
    for event in events:
        assert event["site"] == "shop"
        assert len(event["request_id"]) == 36
        assert {"ipAddress", "url", "eventTime", "eventType", "userName"} <= set(event["fields"])
    assert len({e["request_id"] for e in events}) == len(events)


def test_the_examples_pass_tirreno_acceptance_rules_and_print_what_is_stored(
    dry_run: Any,
) -> None:
    """Each event of examples/ is one tirreno stores as sent (nothing lost after a 204), and
    ``stored`` is tirreno's own result for it."""
    from tirreno_shipper.tirreno import tirreno_stores, validate_fields

    events, _, _ = dry_run
    for event in events:
        fields, rid = event["fields"], event["request_id"]
        assert validate_fields(fields, rid) is None, fields
        stored = tirreno_stores(fields, rid)
        assert stored.lost is None
        assert event["stored"] == stored.fields
        for name in ("url", "userAgent", "userName", "eventType", "eventTime"):
            assert event["stored"].get(name) == fields.get(name), name


def test_dry_run_logins_and_logouts(dry_run: Any) -> None:
    """alice logs in; the anonymous failed logins are sent with a masked IP; bob logs out."""
    events, _, _ = dry_run
    logins = by_url(events, "/login/")
    assert [(f["eventType"], f["userName"]) for f in logins] == [
        ("account_login", "alice"),
        ("account_login_fail", "198.51.100.*"),
        ("account_login_fail", "198.51.100.*"),
        ("account_login", "bob"),
    ]
    alice = logins[0]
    assert alice["emailAddress"] == "alice@example.com"
    assert alice["httpMethod"] == "POST" and alice["httpCode"] == "302"
    assert alice["eventTime"] == "2026-11-29 10:00:09"
    assert "emailAddress" not in logins[1]
    logouts = by_url(events, "/logout/")
    assert [(f["eventType"], f["userName"]) for f in logouts] == [
        ("account_logout", "bob"),
        ("account_logout", "alice"),
    ]


def test_dry_run_redaction_unicode_and_escapes(dry_run: Any) -> None:
    """The token is redacted, café decodes, Zoë and 山田 come from the database."""
    events, _, _ = dry_run
    urls = [e["fields"]["url"] for e in events]
    assert "/account/orders?token=REDACTED&page=1" in urls
    assert not any("abc123secret" in json.dumps(e) for e in events)
    (cafe,) = by_url(events, "/café/menü")
    assert (cafe["userName"], cafe["firstName"], cafe["lastName"]) == ("zoe", "Zoë", "Łukasiewicz")
    assert cafe["ipAddress"] == "2001:db8::5"
    (products,) = [f for f in by_url(events, "/products/7") if f["userName"] == "yamada"]
    assert (products["firstName"], products["lastName"]) == ("太郎", "山田")
    assert products["userAgent"] == 'curl/8.5.0 "quoted" \\slash'
    assert by_url(events, "/missing-page")[0]["eventType"] == "page_error"
    assert by_url(events, "/search?q=red+shoes&page=2")[0]["eventType"] == "page_search"


def test_dry_run_filters_probes_assets_and_garbage(dry_run: Any) -> None:
    """Static assets, probes, the TLS handshake and the junk line produce no events."""
    events, _, _ = dry_run
    urls = {e["fields"]["url"] for e in events}
    assert not urls & {"/static/app.css", "/favicon.ico", "/healthz"}
    assert not any(e["fields"].get("userAgent", "").startswith("kube-probe") for e in events)
    assert not any(e["fields"]["ipAddress"] == "192.0.2.200" for e in events)
    assert not any("s1alicesession" in json.dumps(e) for e in events)


def test_dry_run_summary_on_stderr(dry_run: Any) -> None:
    """The stderr summary counts lines, parse failures, filters, unresolved and events."""
    _, summaries, _ = dry_run
    assert summaries == [
        {
            "summary": "shop",
            "lines": 28,
            "parsed": 27,
            "unparseable": {"no_match": 1},
            "filtered": {"path": 3, "user_agent": 1, "no_request": 1},
            "unresolved": {"dropped": 4, "anonymous": 2},
            "fixed": {"url:redacted": 1},  # the ?token= of /account/orders
            "events": 18,
        }
    ]


def test_dry_run_of_a_copied_config_writes_no_state(tmp_path: Path) -> None:
    """Copied elsewhere and run from yet another folder: same events, no state_dir, no spool."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(REPO / "config.example.yaml", site / "config.yaml")
    shutil.copytree(REPO / "examples", site / "examples")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(site)
    proc = in_process(["run", "-c", "../site/config.yaml", "--once", "--dry-run"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 18
    assert not (site / "state").exists()
    assert snapshot(site) == before
    assert list(cwd.iterdir()) == []
    assert not list(tmp_path.rglob("spool.sqlite*"))


def test_dry_run_skips_compressed_glob_matches_as_run_does(tmp_path: Path) -> None:
    """A glob matching a rotated .gz: `run` never follows it, so the dry run does not print
    its events either, and says why (backfill reads a .gz it is given: test_backfill)."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(REPO / "examples", site / "examples")
    config = site / "config.yaml"
    config.write_text(
        (REPO / "config.example.yaml")
        .read_text()
        .replace("path: examples/access.log ", "path: examples/access.log* ")
    )
    assert "examples/access.log*" in config.read_text()
    with gzip.open(site / "examples" / "access.log.2.gz", "wb") as fh:
        fh.write((REPO / "examples" / "access.log").read_bytes())
    proc = in_process(["run", "-c", str(config), "--once", "--dry-run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 18
    skipped = [
        json.loads(line)
        for line in proc.stderr.splitlines()
        if line.startswith("{") and '"file_skipped_compressed"' in line
    ]
    assert [s["path"] for s in skipped] == [str(site / "examples" / "access.log.2.gz")]
    assert "backfill" in skipped[0]["hint"]


def test_dry_run_bad_config_exits_78(tmp_path: Path) -> None:
    """A broken config stops the dry run with exit code 78 and the problem on stderr."""
    config = tmp_path / "c.yaml"
    config.write_text(
        (REPO / "config.example.yaml").read_text().replace("nginx_cookie", "nginx_cooky")
    )
    proc = in_process(["run", "-c", str(config), "--once", "--dry-run"], tmp_path)
    assert proc.returncode == 78
    assert "did you mean 'nginx_cookie'" in proc.stderr
    assert proc.stdout == ""


def test_detect_format_on_apache_combined_without_cookie(tmp_path: Path) -> None:
    """The elastic log parses as combined; no cookie, so the advice to add one is printed,
    as the problem it is (exit 1)."""
    proc = in_process(["detect-format", str(DATA / "elastic_apache_logs")], tmp_path)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "500 lines examined" in out
    assert "apache_combined  parses 100.0% (500/500)" in out
    assert (
        "Best match: format: nginx_combined" in out or "Best match: format: apache_combined" in out
    )
    assert "Problem: this log carries no session cookie" in out
    assert "log_format tirreno" in out and '\\"%{sessionid}C\\"' in out


def test_detect_format_on_vhost_combined(tmp_path: Path) -> None:
    """The vhost log is recognised as vhost_combined despite its bad line."""
    proc = in_process(["detect-format", str(DATA / "apachelogs_vhost_combined.log")], tmp_path)
    assert proc.returncode == 1, proc.stderr  # it has no cookie
    assert "vhost_combined   parses  85.7% (6/7)" in proc.stdout
    assert "Best match: format: vhost_combined" in proc.stdout


def test_detect_format_finds_the_cookie(tmp_path: Path) -> None:
    """The example log carries a cookie: the advice is to name it, not to add it."""
    proc = in_process(["detect-format", str(REPO / "examples" / "access.log")], tmp_path)
    assert proc.returncode == 0
    assert "Best match: format: nginx_cookie" in proc.stdout
    assert "fields: cookie" in proc.stdout
    assert "carries no session cookie" not in proc.stdout


@pytest.mark.parametrize(
    "compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"]
)
def test_detect_format_reads_compressed_files(tmp_path: Path, compress: Any) -> None:
    """A rotated file compressed with gzip, bzip2 or xz is read decompressed (as backfill
    reads it): the example log is still recognised."""
    packed = tmp_path / "access.log.2.packed"
    packed.write_bytes(compress((REPO / "examples" / "access.log").read_bytes()))
    proc = in_process(["detect-format", str(packed)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Best match: format: nginx_cookie" in proc.stdout


def test_detect_format_nothing_parses(tmp_path: Path) -> None:
    """A file no preset parses exits 1 and says how to write the format."""
    log = tmp_path / "odd.log"
    log.write_text("hello\nworld\n")
    proc = in_process(["detect-format", str(log)], tmp_path)
    assert proc.returncode == 1
    assert "No preset parses these lines" in proc.stdout


def test_version(tmp_path: Path) -> None:
    """--version prints the package version."""
    proc = run(["--version"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"tirreno-shipper {__version__}"
