"""Peak memory of the daemon on hostile distinct lines (issue 14, point 10).

17,000 lines, each with a distinct ~7 KB URL (path and query), user agent and
X-Forwarded-For chain, and a distinct session cookie: every memo of the
parse → filter → map path misses on every line, so what bounds memory is the
memos' byte budgets, not their entry counts. ``tirreno-shipper run --once``
ships the file (start_at: beginning) to a sensor in this process answering 204;
the daemon's peak RSS (``wait4``'s ``ru_maxrss``) is printed. Target: under 150 MB
(before the byte budgets: about 610 MB).

    .venv/bin/python benchmarks/hostile_memory.py [--lines 17000] [--size 7000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_x_forwarded_for" "$cookie_sid"'
)

CONFIG = """
state_dir: {tmp}/state
log: {{level: warning, format: json}}
sites:
  - name: hostile
    sensor: {{url: "http://127.0.0.1:{port}/sensor/", api_key: k, rate_limit: 0, concurrency: 4}}
    logs: [{{path: {tmp}/access.log, format: {{nginx: '{fmt}'}}, start_at: beginning}}]
    users:
      key: {{cookie: sid}}
      database: sqlite:///{tmp}/users.sqlite
      query: SELECT username AS user_name FROM sessions WHERE session_key = :key
      unresolved: anonymous
    events:
      client_ip: {{forwarded_for: true}}
      rules:
        - {{method: POST, path: '^/login/?$', type: account_login}}
        - {{path: '^/search', query: true, type: page_search}}
"""


class _Sink(BaseHTTPRequestHandler):
    """Answers every POST 204 after reading its body, as tirreno does."""

    protocol_version = "HTTP/1.1"
    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).count += 1
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_log(path: Path, lines: int, size: int) -> None:
    """``lines`` lines, each field of about ``size`` bytes and distinct from every other."""
    with path.open("wb") as out:
        for i in range(lines):
            tag = f"{i:08d}"
            url = f"/p/{tag}/" + "a" * (size // 2) + f"?q={tag}&" + "b" * (size // 2)
            agent = f"Mozilla/5.0 ({tag}) " + "x" * size
            hops = ", ".join(f"198.51.{(i + h) % 256}.{h % 256}" for h in range(size // 14))
            xff = f"203.0.113.{i % 256}, garbage{tag}, " + hops
            out.write(
                f"10.0.0.1 - - [29/Nov/2026:11:{(i // 60) % 60:02d}:{i % 60:02d} +0100] "
                f'"GET {url} HTTP/1.1" 200 12 "https://ref.example/{tag}" "{agent}" '
                f'"{xff}" "sid{tag}{"c" * 100}"\n'.encode()
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=17_000)
    ap.add_argument("--size", type=int, default=7_000, help="bytes of URL, UA and XFF each")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log = folder / "access.log"
        make_log(log, args.lines, args.size)
        db = sqlite3.connect(folder / "users.sqlite")
        db.execute("CREATE TABLE sessions (session_key TEXT, username TEXT)")
        db.commit()
        db.close()
        config = folder / "config.yaml"
        config.write_text(
            CONFIG.format(tmp=folder, port=server.server_address[1], fmt=FORMAT.replace("'", "''"))
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tirreno_shipper", "run", "--once", "-c", str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        server.shutdown()
        print(f"lines: {args.lines:,} of {log.stat().st_size / args.lines / 1024:.1f} KiB")
        print(f"events received by the sensor: {_Sink.count:,} in {elapsed:.1f} s")
        print(f"exit code: {proc.returncode}")
        print(f"peak RSS of the daemon: {usage.ru_maxrss / 1024:.1f} MB (target < 150)")


if __name__ == "__main__":
    main()
