"""Latency: from a line appended to the log to its event accepted by the fake
sensor, through the real daemon (a subprocess), rate limit off; p50 and p99 at
100 and 500 events/s. Target: p99 under 1 s at 500 events/s.

Each line carries a unique URL (/item/<n>); the writer notes the time it wrote
the line, the fake sensor the time it accepted the event. The fake sensor runs
in its own process, so neither it nor the writer waits on the other's GIL.

    .venv/bin/python benchmarks/latency.py [--seconds 10] [--rates 100,500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENSOR_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.support.fake_sensor import FakeSensor
with FakeSensor(bucket_capacity=0) as s:
    print(s.url, s.api_key, flush=True)
    for command in sys.stdin:
        if command.strip() == "dump":
            out = [(r.fields.get("url", ""), r.time) for r in list(s.accepted)]
            print(json.dumps(out), flush=True)
"""


class SensorProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SENSOR_SCRIPT, str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url, self.api_key = self.proc.stdout.readline().split()

    def accepted(self) -> list[tuple[str, float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        return [(u, t) for u, t in json.loads(self.proc.stdout.readline())]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


LINE = (
    '203.0.113.{ip} - - [{t}] "GET /item/{n} HTTP/1.1" 200 512 "-" '
    '"Mozilla/5.0 (X11; Linux x86_64) bench" "-"\n'
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rate(
    sensor: SensorProcess, rate: int, seconds: float, tmp: Path
) -> tuple[float, float, int, int]:
    log = tmp / f"access-{rate}.log"
    log.write_bytes(b"")
    config = tmp / f"config-{rate}.yaml"
    config.write_text(
        f"""
state_dir: {tmp / f"state-{rate}"}
log: {{level: warning}}
sites:
  - name: bench
    sensor: {{url: "{sensor.url}", api_key: "{sensor.api_key}", rate_limit: 0, concurrency: 4}}
    logs: [{{path: {log}, format: nginx_cookie, start_at: end}}]
    users: {{key: {{cookie: sessionid}}, database: "sqlite:///{tmp / "none.sqlite"}",
             query: "SELECT 1 AS user_name WHERE 0 = :key", unresolved: anonymous}}
"""
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tirreno_shipper", "run", "-c", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    written: dict[str, float] = {}
    try:
        time.sleep(2.0)  # start-up: the file is opened at its end
        before = len(sensor.accepted())
        total = int(rate * seconds)
        start = time.monotonic()
        with log.open("a", buffering=1) as fh:
            for n in range(total):
                due = start + n / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
                url = f"/item/{rate}-{n}"
                fh.write(LINE.format(ip=n % 250 + 1, t=stamp, n=f"{rate}-{n}"))
                written[url] = time.time()
        deadline = time.monotonic() + 30
        accepted = sensor.accepted()
        while time.monotonic() < deadline and len(accepted) - before < total:
            time.sleep(0.2)
            accepted = sensor.accepted()
        lat = [t - written[url] for url, t in accepted[before:] if url in written]
        return percentile(lat, 0.5), percentile(lat, 0.99), len(lat), total
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="100,500")
    args = ap.parse_args()
    sensor = SensorProcess()
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (int(r) for r in args.rates.split(",")):
            p50, p99, got, total = run_rate(sensor, rate, args.seconds, Path(tmp))
            print(
                f"{rate:4d} events/s: p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms  "
                f"({got}/{total} delivered)"
                + ("  TARGET MISSED" if p99 >= 1.0 and rate >= 500 else "")
            )
    sensor.close()


if __name__ == "__main__":
    main()
