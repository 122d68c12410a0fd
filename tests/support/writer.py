"""Helpers for the whole-daemon fault tests: a log writer, configs, delivery reports, polling.

`LogWriter` appends ``nginx_cookie`` lines whose URL carries a sequence number
(``/item/<seq>``), so every event the fake sensor accepts names the line it
came from; it can write in a background thread at a steady rate and rotate
the log by rename the way logrotate and nginx do (the server keeps writing to
the renamed file a moment before it reopens the path).

The daemon itself runs under `tests.support.shipper.Shipper`.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import Shipper

ITEM = re.compile(r"^/item/(\d+)$")
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) reliability-test"


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.1
) -> float:
    """Poll ``predicate`` until it holds; seconds it took. Fails with ``what`` at the deadline."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- the log -----------------------------------------------------------------------


class LogWriter:
    """Appends numbered access-log lines, optionally from a background thread at a rate.

    ``sessions`` are the cookie values lines are given in turn (``None`` writes
    ``-``, no cookie); `cookie_of` remembers which line got which.
    """

    def __init__(
        self, path: Path, *, sessions: Sequence[str | None] = (None,), seed: int | None = None
    ) -> None:
        self.path = path
        self.sessions = list(sessions)
        self.seq = 0
        self.rotations = 0
        self.cookie_of: dict[int, str | None] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115
        self._old: Any = None  # the renamed file the "server" still writes to
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _line(self, seq: int) -> bytes:
        cookie = self.sessions[seq % len(self.sessions)]
        self.cookie_of[seq] = cookie
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        return (
            f'198.51.100.{seq % 250 + 1} - - [{stamp}] "GET /item/{seq} HTTP/1.1" 200 '
            f'{512 + seq % 97} "-" "{USER_AGENT}" "{cookie or "-"}"\n'
        ).encode()

    def write(self, n: int) -> None:
        """Append ``n`` lines in one write (a server flushes whole lines)."""
        with self._lock:
            data = b"".join(self._line(self.seq + i) for i in range(n))
            self.seq += n
            (self._old or self._fh).write(data)

    def rotate(self) -> None:
        """Rename rotation: the log becomes ``<path>.<k>``; the path is reopened at the
        next `reopen` (at once here unless a background thread reopens it later)."""
        with self._lock:
            if self._old is not None:
                self._old.close()
            self.rotations += 1
            os.rename(self.path, f"{self.path}.{self.rotations}")
            self._old = self._fh
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def reopen(self) -> None:
        """The server reopens its log (nginx USR1): later lines go to the new file, whether
        `rotate` or another program (logrotate) moved the old one away."""
        with self._lock:
            if self._old is not None:
                self._old.close()
                self._old = None
            else:
                self._fh.close()
                self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def start(
        self,
        rate: float,
        *,
        rotate_every: float | None = None,
        may_rotate: Callable[[], bool] = lambda: True,
    ) -> None:
        """Write about ``rate`` lines/s in the background; rename-rotate every so often,
        when ``may_rotate()`` agrees (it is asked again at each tick until it does)."""
        self._stop.clear()

        def run() -> None:
            next_rotation = (
                time.monotonic() + rotate_every if rotate_every is not None else float("inf")
            )
            reopen_at = float("inf")
            last = time.monotonic()
            owed = 0.0
            while not self._stop.wait(0.02):
                now = time.monotonic()
                owed += (now - last) * rate
                last = now
                n = int(owed)
                if n:
                    owed -= n
                    self.write(n)
                if now >= reopen_at:
                    self.reopen()
                    reopen_at = float("inf")
                if now >= next_rotation and reopen_at == float("inf") and may_rotate():
                    self.rotate()
                    # The server writes to the renamed file until it is told to reopen.
                    reopen_at = now + self._rng.uniform(0.05, 0.5)
                    assert rotate_every is not None
                    next_rotation = now + rotate_every * self._rng.uniform(0.7, 1.3)
            self.reopen()

        self._thread = threading.Thread(target=run, name="log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self._old is not None:
                self._old.close()
                self._old = None
            self._fh.close()


# -- the daemon ----------------------------------------------------------------------


def make_config(
    tmp: Path,
    sensor_url: str,
    log_path: Path,
    *,
    api_key: str = "test-key",
    state_dir: Path | None = None,
    sensor: Mapping[str, Any] | None = None,
    users: Mapping[str, Any] | None = None,
    spool: Mapping[str, Any] | None = None,
    start_at: str = "beginning",
    metrics_port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a one-site configuration (JSON is YAML) for the ``nginx_cookie`` log; its path."""
    site: dict[str, Any] = {
        "name": "shop",
        "sensor": {
            "url": sensor_url,
            "api_key": api_key,
            "rate_limit": 0,
            "concurrency": 4,
            "timeout": 2,
            "retry_max_delay": 2,
            **(sensor or {}),
        },
        "logs": [{"path": str(log_path), "format": "nginx_cookie", "start_at": start_at}],
    }
    site["users"] = dict(users) if users is not None else anonymous_users(tmp)
    if spool is not None:
        site["spool"] = dict(spool)
    config: dict[str, Any] = {
        "state_dir": str(state_dir if state_dir is not None else tmp / "state"),
        "log": {"level": "info", "format": "json"},
        "poll_interval": 0.5,
        "shutdown_grace": 2,
        "once_timeout": 60,
        "sites": [site],
        **(extra or {}),
    }
    if metrics_port is not None:
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    path = tmp / "config.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def daemon(tmp: Path, sensor_url: str, log_path: Path, **config: Any) -> Shipper:
    """A daemon on `make_config`'s configuration, not started, logging to tmp/daemon.log."""
    return Shipper(
        make_config(tmp, sensor_url, log_path, **config),
        log_path=tmp / "daemon.log",
        start=False,
    )


def start_and_ship(shipper: Shipper, writer: LogWriter, sensor: FakeSensor, n: int = 10) -> None:
    """Start ``shipper``, write ``n`` lines and wait until the sensor has them: a running
    daemon with a checkpoint past them."""
    shipper.start()
    wait_for(lambda: bool(shipper.logged("file_opened")), 60, "the daemon to open the log")
    writer.write(n)
    wait_for(lambda: sensor.wait_accepted(n, 0), 30, "the first lines")


def anonymous_users(tmp: Path) -> dict[str, Any]:
    """A ``users`` section over an empty SQLite table: every request is sent as anonymous."""
    db = tmp / "users.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS sessions (session_key TEXT PRIMARY KEY, user_name TEXT)"
        )
    conn.close()
    return {
        "key": {"cookie": "sessionid"},
        "database": f"sqlite:///{db}",
        "query": "SELECT user_name FROM sessions WHERE session_key = :key",
        "unresolved": "anonymous",
    }


def checkpoints(state_dir: Path) -> list[tuple[int, str, int]]:
    """The spool's checkpoints as (inode, fingerprint, offset); read-only, beside the daemon."""
    db = state_dir / "spool.sqlite"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT ino, fingerprint, byte_offset FROM checkpoints").fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()
    return [(ino + (1 << 64) if ino < 0 else ino, fp, offset) for ino, fp, offset in rows]


def scrape(port: int, *, starting: bool = False) -> dict[str, float]:
    """The daemon's ``/metrics`` as ``{'name{labels}': value}``.

    ``starting``: {} while nothing listens yet (the daemon is still starting).
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except urllib.error.URLError:
        if starting:
            return {}
        raise
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


def metric(values: Mapping[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# -- what the sensor got --------------------------------------------------------------


def seq_of(url: str) -> int:
    match = ITEM.match(url)
    assert match is not None, f"the sensor got an event for a line never written: {url!r}"
    return int(match.group(1))


def accepted_seqs(sensor: FakeSensor) -> Counter[int]:
    """How many times each sequence number was accepted."""
    with sensor._lock:
        received = list(sensor.accepted)
    return Counter(seq_of(r.fields["url"]) for r in received)


def delivery_report(sensor: FakeSensor, expected: Iterable[int]) -> dict[str, Any]:
    """Lost, unexpected and duplicated events, by sequence number and by ``X-Request-Id``."""
    with sensor._lock:
        received = list(sensor.accepted)
    want = set(expected)
    seqs = Counter(seq_of(r.fields["url"]) for r in received)
    ids = Counter(r.request_id for r in received)
    ids_of: dict[int, set[str | None]] = {}
    for r in received:
        ids_of.setdefault(seq_of(r.fields["url"]), set()).add(r.request_id)
    return {
        "accepted": len(received),
        "missing": sorted(want - set(seqs)),
        "unexpected": sorted(set(seqs) - want),
        "duplicates": sum(n - 1 for n in ids.values() if n > 1),
        "duplicated_ids": sum(1 for n in ids.values() if n > 1),
        # One line must always map to one id: two ids for one line = read twice.
        "lines_with_two_ids": sorted(s for s, v in ids_of.items() if len(v) > 1),
    }


def all_delivered(sensor: FakeSensor, expected: Iterable[int]) -> Callable[[], bool]:
    want = set(expected)
    return lambda: want <= set(accepted_seqs(sensor))


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most events in any ``window`` seconds (a closed interval starting at an event)."""
    ordered = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        while j < len(ordered) and ordered[j] <= start + window:
            j += 1
        best = max(best, j - i)
    return best
