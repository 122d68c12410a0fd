"""The daemon as a real subprocess, and what the tests need around it.

`Shipper` runs ``python -m tirreno_shipper ...`` with stderr in a file (not a
pipe, so a chatty daemon can never block on it), reads its JSON log lines, and
sends it signals. `nginx_line` writes log lines the ``nginx_combined`` and
``nginx_cookie`` presets parse; `scrape_metrics` reads ``/metrics`` over HTTP.
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
    path.write_text(yaml.safe_dump(data, sort_keys=False))
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


class Shipper:
    """``tirreno-shipper run -c CONFIG`` in a real subprocess."""

    def __init__(self, config: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.stderr_path = config.parent / f"shipper-{time.monotonic_ns()}.err"
        self.stdout_path = self.stderr_path.with_suffix(".out")
        self._err = self.stderr_path.open("wb")
        self._out = self.stdout_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tirreno_shipper", "run", "-c", str(config), *args],
            cwd=ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> Shipper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()
        self._out.close()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (a partial last line is left for later)."""
        out = []
        text = self.stderr()
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.logs()
            if r.get("event") == name and all(r.get(k) == v for k, v in match.items())
        ]

    def wait_log(
        self, name: str, timeout: float = 20, count: int = 1, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log events named ``name`` (with ``match``) were written."""

        def found() -> list[dict[str, Any]] | None:
            hits = self.events(name, **match)
            if len(hits) >= count:
                return hits
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) waiting for {name}:\n"
                    + self.stderr()[-4000:]
                )
            return None

        hits = wait_until(found, timeout)
        assert hits, f"no {name!r} {match} in {timeout} s; log:\n{self.stderr()[-4000:]}"
        return list(hits)


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
        shipper.wait_log("daemon_started")
        yield shipper
    finally:
        shipper.close()
