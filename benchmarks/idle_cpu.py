"""Idle cost: the daemon's CPU and memory while its log receives no traffic.

Starts ``tirreno-shipper run`` as a real subprocess on an idle log (a fake
sensor on 127.0.0.1, metrics on, production's default ``poll_interval`` of 1 s
unless told otherwise), waits for it to ship a few lines and settle, then
measures over ``--seconds`` of no traffic, from ``/proc``:

- CPU: utime + stime of every thread (``/proc/PID/stat``), as % of one core;
- wake-ups: context switches of every thread (``/proc/PID/task/*/status``);
- memory: ``VmRSS``; threads.

Baselines in the same window: an idle ``python -c 'import time; time.sleep()'``
and ``sleep``, measured the same way, so the figure reads against the noise
floor of the machine it ran on.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/idle_cpu.py [--seconds 60] [--poll-interval 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fake_sensor import FakeSensor  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True, frozen=True)
class Sample:
    cpu_seconds: float
    switches: int
    rss_kib: int
    threads: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    # After the ")": field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/status").read_text()
        except OSError:
            continue  # a thread that just ended
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                switches += int(line.split()[1])
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return Sample(cpu, switches, int(status["VmRSS"].split()[0]), int(status["Threads"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measurement window (default 10)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after start-up")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="the daemon's poll_interval"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="idle-cpu-") as tmp,
        FakeSensor(bucket_capacity=0) as sensor,
    ):
        work = Path(tmp)
        log = work / "access.log"
        log.write_text(
            "".join(
                f'203.0.113.9 - - [10/Oct/2024:13:55:36 +0000] "GET /warm/{i} HTTP/1.1" 200 5 '
                '"-" "Mozilla/5.0"\n'
                for i in range(5)
            )
        )
        metrics_port = free_port()
        cfg = work / "config.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(work / "state"),
                    "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
                    "poll_interval": args.poll_interval,
                    "sites": [
                        {
                            "name": "idle",
                            "sensor": {"url": sensor.url, "api_key": sensor.api_key},
                            "logs": [{"path": str(log), "start_at": "beginning"}],
                        }
                    ],
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("NOTIFY_SOCKET", None)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tirreno_shipper", "run", "-c", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(work / "daemon.log").open("wb"),
        )
        py = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)"])
        sleeper = subprocess.Popen(["sleep", "100000"])
        try:
            if not sensor.wait_accepted(5, 30):
                print("the daemon did not ship its warm-up lines:", file=sys.stderr)
                print((work / "daemon.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(args.settle)
            procs = {
                "tirreno-shipper": daemon.pid,
                "python sleep (baseline)": py.pid,
                "sleep (baseline)": sleeper.pid,
            }
            before = {name: sample(pid) for name, pid in procs.items()}
            started = time.monotonic()
            time.sleep(args.seconds)
            wall = time.monotonic() - started
            after = {name: sample(pid) for name, pid in procs.items()}
            if daemon.poll() is not None or len(sensor.accepted) != 5:
                print("the daemon exited or sent something while idle", file=sys.stderr)
                return 1
        finally:
            for p in (daemon, py, sleeper):
                p.terminate()
            for p in (daemon, py, sleeper):
                p.wait(30)

    results = {}
    for name in procs:
        b, a = before[name], after[name]
        results[name] = {
            "cpu_percent": round((a.cpu_seconds - b.cpu_seconds) / wall * 100, 3),
            "cpu_seconds": round(a.cpu_seconds - b.cpu_seconds, 3),
            "wakeups_per_second": round((a.switches - b.switches) / wall, 1),
            "rss_mib": round(a.rss_kib / 1024, 1),
            "threads": a.threads,
        }
    if args.json:
        print(
            json.dumps(
                {"seconds": round(wall, 1), "poll_interval": args.poll_interval, "results": results}
            )
        )
        return 0
    print(
        f"idle for {wall:.1f} s (poll_interval {args.poll_interval} s, "
        f"clock tick {1000 // TICKS} ms)"
    )
    print(
        f"{'process':26s} {'CPU %':>8s} {'CPU s':>7s} {'wake-ups/s':>11s} "
        f"{'RSS MiB':>8s} {'threads':>8s}"
    )
    for name, r in results.items():
        print(
            f"{name:26s} {r['cpu_percent']:8.3f} {r['cpu_seconds']:7.2f} "
            f"{r['wakeups_per_second']:11.1f} "
            f"{r['rss_mib']:8.1f} {r['threads']:8d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
