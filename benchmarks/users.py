"""Users: what resolving the user costs a backfill, against the same backfill without users.

A 1,000,000-line ``apache_cookie`` log (the real combined lines of ``tests/data``,
repeated) where 80 % of the lines carry one of 150,000 distinct sessions, drawn at
random, and the rest none; a SQLite users database holding all 150,000 sessions
(Django's shape: ``django_session`` → ``auth_user``, one-step query). Each side runs
``tirreno-shipper backfill`` in its own process (into its own spool), so CPU seconds
and peak RSS are the process's own; the ratio is users CPU / no-users CPU.

    .venv/bin/python benchmarks/users.py [--lines 1000000] [--sessions 150000]

Targets (issue 11): at most 1.5x the CPU, peak RSS under 100 MB.
"""

from __future__ import annotations

import argparse
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "data" / "elastic_apache_logs"
# apache_cookie, written out: the side without users parses the same lines.
APACHE_COOKIE = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{sessionid}C"'


def make_log(path: Path, lines: int, sessions: int, share: float) -> None:
    src = [ln for ln in SOURCE.read_bytes().split(b"\n") if ln]
    rnd = random.Random(11)
    with path.open("wb") as out:
        for i in range(lines):
            carries = rnd.random() < share
            cookie = f"sess{rnd.randrange(sessions):08d}".encode() if carries else b"-"
            out.write(src[i % len(src)] + b' "' + cookie + b'"\n')


def make_users(path: Path, sessions: int) -> None:
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username TEXT, email TEXT);
        CREATE TABLE django_session (session_key TEXT PRIMARY KEY, user_id INTEGER);
        """
    )
    con.executemany(
        "INSERT INTO auth_user VALUES (?, ?, ?)",
        ((i, f"user{i}", f"user{i}@example.com") for i in range(sessions // 3 + 1)),
    )
    con.executemany(
        "INSERT INTO django_session VALUES (?, ?)",
        ((f"sess{i:08d}", i // 3) for i in range(sessions)),
    )
    con.commit()
    con.close()


def config(d: Path, name: str, log: Path, users: bool) -> Path:
    section = f"""
    users:
      key: {{cookie: sessionid}}
      database: sqlite:///{d / "users.sqlite"}
      query: "SELECT u.username AS user_name, u.email AS email_address FROM django_session s
              JOIN auth_user u ON u.id = s.user_id WHERE s.session_key = :key"
      unresolved: anonymous
"""
    path = d / f"{name}.yaml"
    path.write_text(
        f"""
state_dir: {d / name}
sites:
  - name: bench
    sensor: {{url: "http://127.0.0.1:9/sensor/", api_key: k}}
    logs: [{{path: {log}, format: {{apache: '{APACHE_COOKIE}'}}}}]
    spool: {{max_events: 5000000, max_bytes: 4000000000}}   # no daemon empties it here
{section if users else ""}"""
    )
    return path


def run(cfg: Path, log: Path) -> tuple[float, float, float, str]:
    """(CPU s, wall s, peak RSS MB, last stderr line) of one backfill process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tirreno_shipper", "backfill", "-c", str(cfg), "--site", "bench",
         str(log)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"backfill failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # ru_maxrss of children is the largest child so far: each side runs in order, the
    # smaller first, so the second's figure is its own.
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return cpu, wall, after.ru_maxrss / 1024, last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=150_000)
    ap.add_argument("--share", type=float, default=0.8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = d / "access.log"
        make_log(log, args.lines, args.sessions, args.share)
        make_users(d / "users.sqlite", args.sessions)
        print(
            f"file: {args.lines:,} lines, {log.stat().st_size / 1e6:.0f} MB; "
            f"{args.share:.0%} carry one of {args.sessions:,} sessions"
        )
        base_cpu, base_wall, base_rss, base_out = run(config(d, "plain", log, False), log)
        print(f"no users : CPU {base_cpu:.1f} s, wall {base_wall:.1f} s, "
              f"peak RSS {base_rss:.0f} MB")  # fmt: skip
        print(f"           {base_out}")
        cpu, wall, rss, out = run(config(d, "users", log, True), log)
        print(f"users    : CPU {cpu:.1f} s, wall {wall:.1f} s, peak RSS {rss:.0f} MB")
        print(f"           {out}")
        print(f"ratio    : {cpu / base_cpu:.2f}x the CPU (target <= 1.5x); peak RSS {rss:.0f} MB "
              "(target < 100 MB)")  # fmt: skip


if __name__ == "__main__":
    main()
