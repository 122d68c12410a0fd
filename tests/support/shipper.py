"""The daemon as a real subprocess, and what the tests need around it.

`Shipper` runs ``python -m tirreno_shipper run ...`` with stderr in a file (not a
pipe, so a chatty daemon can never block on it), restarts it, reads its JSON log
lines, sends it signals and wraps the other subcommands on the same config; it
is the only daemon wrapper of the test suite. `nginx_line` writes log lines the
``nginx_combined`` and ``nginx_cookie`` presets parse; `scrape_metrics` reads
``/metrics`` over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value, or the last falsy one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def nginx_line(
    path: str,
    *,
    cookie: str | None = None,
    method: str = "GET",
    status: int = 200,
    ua: str = "Mozilla/5.0 (X11; Linux x86_64)",
    ip: str = "203.0.113.7",
) -> str:
    """One access-log line; with ``cookie`` in the ``nginx_cookie`` layout."""
    line = (
        f'{ip} - - [10/Oct/2024:13:55:36 +0000] "{method} {path} HTTP/1.1" {status} 512 '
        f'"https://shop.example/" "{ua}"'
    )
    return line + (f' "{cookie}"' if cookie is not None else "") + "\n"


def append(log: Path, lines: list[str]) -> None:
    with log.open("a", encoding="utf-8") as fh:
        fh.writelines(lines)
        fh.flush()


def site(
    name: str,
    sensor_url: str,
    path: Path,
    *,
    key: str = "test-key",
    log: dict[str, Any] | None = None,
    sensor: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A test site: no rate limit, short timeouts, read from the beginning."""
    return {
        "name": name,
        "sensor": {
            "url": sensor_url,
            "api_key": key,
            "rate_limit": 0,
            "timeout": 2,
            "concurrency": 2,
            **(sensor or {}),
        },
        "logs": [{"path": str(path), "start_at": "beginning", **(log or {})}],
        **extra,
    }


def write_config(path: Path, sites: list[dict[str, Any]], **top: Any) -> Path:
    """A configuration file tuned for tests (fast polling, a short grace)."""
    data: dict[str, Any] = {
        "state_dir": str(path.parent / "state"),
        "log": {"level": "info", "format": "auto"},
        "poll_interval": 0.2,
        "shutdown_grace": 2,
        "once_timeout": 20,
        **top,
        "sites": sites,
    }
    # Replaced whole, as an editor or a ConfigMap does: a running daemon that reloads
    # on change never reads it half written.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m tirreno_shipper ARGS`` to completion (stdout and stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "tirreno_shipper", *args],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


# Written to the daemon's log before each start: {"test": "start 2"}.
_MARKER_PREFIX = '{"test": '


class Shipper:
    """``python -m tirreno_shipper run -c CONFIG`` as a real subprocess.

    The one wrapper every test uses for the daemon. Its stderr (JSON log lines)
    goes to ``log_path`` (by default a new file beside the config), appended to
    across restarts with a ``{"test": "start N"}`` marker before each start, so
    ``logged(..., this_run=True)`` can tell runs apart. The daemon starts when
    the object is built unless ``start=False``.
    """

    def __init__(
        self,
        config: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        metrics_url: str | None = None,
        start: bool = True,
    ) -> None:
        self.config = config
        self.args = args
        self.env = child_env(env)
        self.log_path = log_path or config.parent / f"shipper-{time.monotonic_ns()}.err"
        self.stderr_path = self.log_path
        self.stdout_path = self.log_path.with_suffix(".out")
        self.metrics_url = metrics_url
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    # -- the process ------------------------------------------------------------

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "the daemon was never started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, *, ready: bool = False, timeout: float = 20.0) -> Shipper:
        """Start the daemon; with ``ready``, wait for ``daemon_started`` of this run
        (and ``/healthz`` answering 200 when there is a metrics listener)."""
        assert not self.running(), "already running"
        self.starts += 1
        with self.log_path.open("ab") as err, self.stdout_path.open("ab") as out:
            err.write(f'{_MARKER_PREFIX}"start {self.starts}"}}\n'.encode())
            err.flush()
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tirreno_shipper",
                    "run",
                    "-c",
                    str(self.config),
                    *self.args,
                ],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        if ready:
            self.wait_log("daemon_started", timeout, this_run=True)
            if self.metrics_url is not None:
                wait_until(lambda: self.healthz()[0] == 200, timeout)
                code, body = self.healthz()
                assert code == 200, f"/healthz answered {code} {body}:\n{self.tail_log()}"
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Shipper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and the exit code; a daemon still running after ``timeout`` is
        killed and fails the test."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"the daemon did not stop within {timeout} s of SIGTERM:\n{self.tail_log()}"
                ) from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no chance to commit, ack or release anything."""
        if self.running():
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        """Teardown: kill the daemon if it is still running; never raises."""
        self.kill()

    # -- other subcommands on the same configuration -------------------------------

    def run(
        self, *args: str, timeout: float = 90.0, in_process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Another subcommand to completion (stdout and stderr captured); with
        ``in_process``, called in this process (`tests.support.cli.run_in_process`:
        no interpreter to start, for a test where the process is not the point)."""
        if in_process:
            from tests.support.cli import run_in_process  # it imports this module

            return run_in_process(*args, env=self.env)
        return run_cli(*args, env=self.env, timeout=timeout)

    def run_once(
        self, timeout: float = 90.0, *, in_process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``run --once``; its stderr is appended to the daemon's log."""
        result = self.run(
            "run", "-c", str(self.config), "--once", timeout=timeout, in_process=in_process
        )
        with self.log_path.open("a") as err:
            err.write(f'{_MARKER_PREFIX}"run --once"}}\n' + result.stderr)
        return result

    def status(self, *, in_process: bool = False) -> dict[str, Any]:
        result = self.run(
            "status", "-c", str(self.config), "--json", timeout=30, in_process=in_process
        )
        assert result.returncode == 0, f"status failed: {result.stderr}"
        try:
            data: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            raise AssertionError(f"status --json printed no JSON:\n{result.stdout}") from None
        return data

    def site_status(self, site: str = "shop", *, in_process: bool = False) -> dict[str, Any]:
        sites: dict[str, Any] = self.status(in_process=in_process)["sites"]
        return dict(sites[site])

    # -- what it said ---------------------------------------------------------------

    def _log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stderr(self) -> str:
        """What the daemon wrote to stderr, without this wrapper's own marker lines."""
        return "".join(
            line
            for line in self._log_text().splitlines(keepends=True)
            if not line.startswith(_MARKER_PREFIX)
        )

    def output(self) -> str:
        """Everything it wrote, stderr then stdout."""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return self.stderr() + out

    def tail_log(self, lines: int = 40) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def logs(self, *, raw: bool = False) -> list[dict[str, Any]]:
        """The JSON log lines so far (a partial last line is left for later).

        With ``raw``, a line that is not a JSON object (a traceback, a library's
        own print) is kept as ``{"raw": line}`` instead of skipped.
        """
        out = []
        for line in self._log_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                out.append(record)
            elif raw and line.strip():
                out.append({"raw": line.rstrip("\n")})
        return out

    def logged(self, event: str, *, this_run: bool = False, **match: Any) -> list[dict[str, Any]]:
        """Log lines named ``event`` (with ``match``); with ``this_run``, only since
        the latest `start`."""
        records = self.logs()
        if this_run:
            marker = f"start {self.starts}"
            starts = [i for i, r in enumerate(records) if r.get("test") == marker]
            records = records[starts[-1] :] if starts else []
        return [
            r
            for r in records
            if r.get("event") == event and all(r.get(k) == v for k, v in match.items())
        ]

    def wait_log(
        self,
        name: str,
        timeout: float = 20,
        count: int = 1,
        *,
        this_run: bool = False,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log events named ``name`` (with ``match``) were written."""

        def found() -> list[dict[str, Any]] | None:
            hits = self.logged(name, this_run=this_run, **match)
            if len(hits) >= count:
                return hits
            if not self.running():
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) waiting for {name}:\n"
                    + self.tail_log()
                )
            return None

        hits = wait_until(found, timeout)
        assert hits, f"no {name!r} {match} in {timeout} s; log:\n{self.tail_log()}"
        return list(hits)

    # -- its metrics listener ------------------------------------------------------------

    def healthz(self) -> tuple[int, str]:
        """(status, body) of ``/healthz``; (0, why) when nothing answers."""
        assert self.metrics_url is not None
        try:
            with urllib.request.urlopen(self.metrics_url + "/healthz", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def scrape(self) -> str:
        assert self.metrics_url is not None
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text


def scrape(port: int, path: str, timeout: float = 5) -> tuple[int, str, str]:
    """GET http://127.0.0.1:PORT/PATH: (status, content type, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples by (name, labels): ``m[("tirreno_shipper_events_sent_total", {("site", "a")})]``."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _ctype, body = scrape(port, "/metrics")
    assert status == 200, body
    return parse_metrics(body)


def spooled_ids(state_dir: Path, site: str | None = None) -> list[str]:
    """Request ids waiting in the spool, read with sqlite3 beside the daemon (WAL)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{state_dir / 'spool.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        if site is None:
            rows = conn.execute("SELECT request_id FROM events ORDER BY id").fetchall()
        else:
            rows = conn.execute(
                "SELECT request_id FROM events WHERE site = ? ORDER BY id", (site,)
            ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


@contextlib.contextmanager
def running(config: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Shipper]:
    """A started daemon (its ``daemon_started`` logged), killed at the end if still running."""
    shipper = Shipper(config, *args, env=env)
    try:
        shipper.wait_log("daemon_started", this_run=True)
        yield shipper
    finally:
        shipper.close()
