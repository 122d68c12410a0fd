"""Crash test: a tail-into-spool process SIGKILLed over and over loses and repeats no line."""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KILLS = 24
SETTLE = 0.3  # the worker has surely registered a new file this long after seeing it


class Writer:
    """Appends ``seq N`` lines and rotates the log the ways logrotate does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0
        self.rotations = 0
        self.fh = open(path, "ab", buffering=0)  # noqa: SIM115

    def write(self, n: int) -> None:
        self.fh.write(b"".join(b"seq %d\n" % (self.seq + i) for i in range(n)))
        self.seq += n

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.write(random.randint(1, 20))
            time.sleep(0.005)

    def rename(self) -> None:
        """Rename rotation, with the server still writing to the old file a moment."""
        self.rotations += 1
        os.rename(self.path, f"{self.path}.{self.rotations}")
        self.write(random.randint(0, 30))
        self.fh.close()
        self.fh = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self.write(random.randint(0, 5))

    def copytruncate(self) -> None:
        """copytruncate; no append between copy and truncate (that loss is logrotate's)."""
        self.rotations += 1
        shutil.copyfile(self.path, f"{self.path}.{self.rotations}")
        os.truncate(self.path, 0)
        self.write(random.randint(0, 5))


def start_worker(state: Path, log: Path, run: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(state / f"worker-{run}.log", "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.tail_worker", str(state), str(log), str(run)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )


def wait_ready(proc: subprocess.Popen[bytes], writer: Writer, timeout: float = 10.0) -> None:
    """Keep writing until the worker says it caught up once."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.02)
        if ready:
            assert proc.stdout.readline() == b"ready\n"
            return
        assert proc.poll() is None, "worker died"
        writer.write(random.randint(1, 10))
    raise AssertionError("worker never became ready")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    assert proc.stdout is not None
    proc.stdout.close()


def seqs_in(db: Path) -> Counter[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT request_id FROM events").fetchall()
    finally:
        conn.close()
    return Counter(r[0].split("/")[0] for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """24 SIGKILLs amid appends, renames and copytruncates: every sequence number once."""
    rng = random.Random(int(os.environ.get("CRASH_SEED", time.time())))
    random.seed(rng.random())
    state = tmp_path / "state"
    state.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "access.log"
    writer = Writer(log)
    writer.write(100)
    settled = True
    kills = rotations_then_kill = 0
    for run in range(KILLS):
        if settled and run % 4 == 3:
            # Rotated while the worker is down: found again among the siblings.
            if run % 8 == 3:
                writer.rename()
            else:
                writer.copytruncate()
        proc = start_worker(state, log, run)
        wait_ready(proc, writer)
        writer.run(rng.uniform(SETTLE, 0.6))
        mode = run % 3
        if mode == 0:
            writer.run(rng.uniform(0.0, 0.4))
            settled = True
        else:
            if mode == 1:
                writer.rename()
            else:
                writer.copytruncate()
            # Right after the rotation: before, or just after, the worker sees it.
            delay = rng.choice([0.0, 0.0, 0.02, 0.06, 0.15])
            writer.run(delay)
            rotations_then_kill += 1
            settled = delay >= SETTLE
        kill(proc)
        kills += 1
    writer.write(50)
    writer.fh.close()
    total = writer.seq

    proc = start_worker(state, log, KILLS)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            counts = seqs_in(state / "spool.sqlite")
            if sum(counts.values()) >= total:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # anything read twice would show up now
        counts = seqs_in(state / "spool.sqlite")
    finally:
        kill(proc)

    assert kills >= 20 and rotations_then_kill >= 10
    assert writer.rotations >= 15
    expected = {str(i) for i in range(total)}
    missing = sorted(expected - set(counts), key=int)
    twice = {k: v for k, v in counts.items() if v > 1}
    unknown = sorted(set(counts) - expected)
    assert not missing, f"{len(missing)} lines lost, e.g. {missing[:10]}"
    assert not twice, f"{len(twice)} lines read more than once, e.g. {list(twice.items())[:10]}"
    assert not unknown, f"lines that were never written: {unknown[:10]}"
