"""``backfill``: historical files, plain or gzip, through the pipeline into the spool."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import (
    ROOT,
    append,
    child_env,
    nginx_line,
    run_cli,
    site,
    spooled_ids,
    write_config,
)
from tirreno_shipper.backfill import content_size
from tirreno_shipper.events import request_id
from tirreno_shipper.records import FileId
from tirreno_shipper.spool import Spool


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def lines(prefix: str, n: int) -> list[str]:
    return [nginx_line(f"/{prefix}/{i}") for i in range(n)]


def write_gz(path: Path, text: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(text)
    return path


def summary(stderr: str) -> dict[str, object]:
    found: list[dict[str, object]] = [
        json.loads(x) for x in stderr.splitlines() if x.startswith('{"backfill"')
    ]
    assert len(found) == 1, stderr
    return found[0]


@pytest.mark.slow
def test_backfill_of_gz_and_plain_files_spools_once_and_leaves_live_checkpoints(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Events land in the spool with request ids; a repeat adds none; live checkpoints stay."""
    live = tmp_path / "live.log"
    append(live, lines("live", 3))
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live)])
    state = tmp_path / "state"
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert sensor.wait_accepted(3, 5)
    with Spool.open(state) as spool:
        checkpoints = spool.get_checkpoints("a")
    assert checkpoints and checkpoints[0].offset == live.stat().st_size

    gz = write_gz(tmp_path / "access.log.2.gz", [*lines("gz", 20), "not a log line\n"])
    plain = tmp_path / "access.log.1"
    append(plain, lines("plain", 5))
    r = run_cli("backfill", "-c", str(cfg), "--site", "a", str(gz), str(plain))
    assert r.returncode == 0, r.stderr
    s = summary(r.stderr)
    assert (s["files"], s["lines"], s["events"]) == (2, 26, 25)
    assert s["unparseable"] == {"no_match": 1}
    assert "backfilled 25 events from 26 lines" in r.stderr
    ids = spooled_ids(state, "a")
    assert len(ids) == 25
    assert all(uuid.UUID(i).version == 5 for i in ids)

    again = run_cli("backfill", "-c", str(cfg), "--site", "a", str(gz), str(plain))
    assert again.returncode == 0, again.stderr
    assert spooled_ids(state, "a") == ids  # recognised: nothing new queued

    with Spool.open(state) as spool:
        assert spool.get_checkpoints("a") == checkpoints

    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    got = {r.request_id: r.fields["url"] for r in sensor.accepted[3:]}
    assert set(got) == set(ids)
    assert sorted(got.values()) == sorted(
        [f"/gz/{i}" for i in range(20)] + [f"/plain/{i}" for i in range(5)]
    )
    assert len(sensor.accepted) == 28  # the live lines were not sent again


@pytest.mark.slow
def test_a_backfill_run_again_after_delivery_ships_nothing_twice(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """Backfill, deliver, backfill again: the second run knows the file and adds nothing."""
    live = tmp_path / "live.log"
    live.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live)])
    gz = write_gz(tmp_path / "old.gz", lines("o", 4))
    first = run_cli("backfill", "-c", str(cfg), "--site", "a", str(gz))
    assert first.returncode == 0, first.stderr
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    ids = sensor.accepted_ids()
    assert len(ids) == 4
    # The ids are a function of the file's identity and each line's offset.
    st = gz.stat()
    with gzip.open(gz, "rb") as fh:
        text = fh.read()
    head = text[: text.index(b"\n") + 1]
    file_key = FileId(st.st_dev, st.st_ino, hashlib.sha1(head).hexdigest()).key()
    offsets = [0, *(i + 1 for i, b in enumerate(text[:-1]) if b == ord("\n"))]
    assert ids == [request_id("a", file_key, off) for off in offsets]

    again = run_cli("backfill", "-c", str(cfg), "--site", "a", str(gz))
    assert again.returncode == 0, again.stderr
    s = summary(again.stderr)
    assert s["events"] == 0 and s["already_backfilled"] == 4
    assert spooled_ids(tmp_path / "state", "a") == []
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert sensor.accepted_ids() == ids


def test_backfill_rejects_an_unknown_site_and_a_missing_file(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """An unknown --site exits 78 naming the sites; a missing file exits 1 naming it."""
    live = tmp_path / "live.log"
    live.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live)])
    r = run_in_process("backfill", "-c", str(cfg), "--site", "zzz", str(live))
    assert r.returncode == 78 and "no site named 'zzz' (sites: a)" in r.stderr
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", str(tmp_path / "nope.gz"))
    assert r.returncode == 1 and "nope.gz" in r.stderr


def test_content_size_of_a_gz_is_its_decompressed_size(tmp_path: Path) -> None:
    """Progress totals are in decompressed bytes, like the chunk offsets they are compared to."""
    text = "".join(lines("z", 200))
    gz = write_gz(tmp_path / "z.gz", [text])
    assert content_size(str(gz)) == len(text.encode())
    assert os.path.getsize(gz) < len(text)
    plain = tmp_path / "p.log"
    plain.write_text(text)
    assert content_size(str(plain)) == len(text.encode())


def test_backfill_on_a_tty_shows_a_progress_bar_that_ends_at_100_percent(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """On a terminal: a bar with lines and events, never past 100 % (also for a .gz)."""
    live = tmp_path / "live.log"
    live.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live)])
    gz = write_gz(tmp_path / "old.gz", lines("t", 3000))
    master, slave = pty.openpty()
    # A real terminal has a size; tqdm draws nothing in a 0-column one.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tirreno_shipper",
            "backfill",
            "-c",
            str(cfg),
            "--site",
            "a",
            str(gz),
        ],
        cwd=ROOT,
        env=child_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0
    text = out.decode(errors="replace")
    assert "backfill a" in text and "lines=3000" in text and "events=3000" in text
    percents = [int(p) for p in re.findall(r"(\d+)%\|", text)]
    assert percents and percents[-1] == 100 and max(percents) == 100, text[-2000:]


def two_log_site(tmp_path: Path, sensor: FakeSensor, **extra: Any) -> Path:
    """A site with two logs entries: nginx JSON lines first, then the combined format."""
    (tmp_path / "web").mkdir()
    json_log, text_log = tmp_path / "web" / "access.json", tmp_path / "web" / "access.log"
    json_log.touch()
    text_log.touch()
    conf = site("a", sensor.url, json_log, log={"format": "json"}, **extra)
    conf["logs"].append({"path": str(text_log), "format": "nginx_combined"})
    return write_config(tmp_path / "c.yaml", [conf])


def test_backfill_takes_the_format_of_the_logs_entry_the_file_is_an_old_file_of(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """access.log.2.gz is an old access.log: parsed with that entry's format, not the first's.
    A name that fits no entry asks for --log; a file in the wrong format is refused whole and
    not remembered as shipped, so the right --log ships it afterwards."""
    cfg = two_log_site(tmp_path, sensor)
    state = tmp_path / "state"
    rotated = write_gz(tmp_path / "web" / "access.log.2.gz", lines("r", 4))
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", str(rotated))
    assert r.returncode == 0, r.stderr
    assert summary(r.stderr)["events"] == 4 and len(spooled_ids(state, "a")) == 4

    other = tmp_path / "saved-from-old-server.log"
    append(other, lines("o", 3))
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", str(other))
    assert r.returncode == 2, r.stderr
    assert "name it with --log N (0: " in r.stderr and "1: " in r.stderr
    assert "Traceback" not in r.stderr
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", "--log", "0", str(other))
    assert r.returncode == 1, r.stderr
    assert "no line of the first 3 of" in r.stderr and "format json" in r.stderr
    assert "nothing of it was shipped" in r.stderr
    assert len(spooled_ids(state, "a")) == 4
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", "--log", "1", str(other))
    assert r.returncode == 0, r.stderr
    assert summary(r.stderr)["events"] == 3 and len(spooled_ids(state, "a")) == 7
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", "--log", "5", str(other))
    assert r.returncode == 2 and "logs entries 0 to 1" in r.stderr


def test_backfill_of_a_cut_short_archive_ships_what_it_holds_and_says_so(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """A gzip cut in the middle: the lines before the cut are shipped, then a clear error
    (exit 1, no traceback); --from-start ships a file again with the same request ids."""
    live = tmp_path / "live.log"
    live.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live)])
    state = tmp_path / "state"
    whole = write_gz(tmp_path / "whole.gz", lines("w", 30_000)).read_bytes()
    cut = tmp_path / "access.log.3.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    r = run_in_process("backfill", "-c", str(cfg), "--site", "a", str(cut))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cannot read {cut} past byte" in r.stderr
    assert "the lines before were shipped" in r.stderr
    shipped = summary(r.stderr)["events"]
    assert isinstance(shipped, int) and 0 < shipped < 30_000
    ids = spooled_ids(state, "a")
    assert len(ids) == shipped
    again = run_in_process("backfill", "-c", str(cfg), "--site", "a", str(cut))
    assert again.returncode == 1 and summary(again.stderr)["events"] == 0
    forced = run_in_process("backfill", "-c", str(cfg), "--site", "a", "--from-start", str(cut))
    assert forced.returncode == 1 and summary(forced.stderr)["events"] == shipped
    assert sorted(spooled_ids(state, "a")) == sorted(ids + ids)


def test_backfill_waiting_for_room_in_a_full_spool_says_why(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """With the spool at its cap and no daemon to empty it, the wait is logged, not silent."""
    live = tmp_path / "live.log"
    live.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live, spool={"max_events": 5})])
    first, second = tmp_path / "access.log.1", tmp_path / "access.log.2"
    append(first, lines("f", 10))
    append(second, lines("s", 10))
    err = tmp_path / "backfill.err"
    with err.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tirreno_shipper", "backfill", "-c", str(cfg), "--site", "a",
             str(first), str(second)],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    try:
        # A safety net only: the wait ends when the line is logged (or the process exits);
        # a loaded CI machine took over 30 s to get there.
        deadline = time.monotonic() + 120
        while "backfill_waiting" not in err.read_text() and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        seen = err.read_text()
        assert "backfill_waiting" in seen and "spool_full" in seen, (proc.poll(), seen)
        assert "start it (or run `run --once` beside this)" in seen
        assert proc.poll() is None  # still waiting: nothing is skipped
        assert len(spooled_ids(tmp_path / "state", "a")) == 10
    finally:
        proc.kill()
        proc.wait(10)


def test_backfill_needs_no_api_key_in_the_environment(tmp_path: Path, sensor: FakeSensor) -> None:
    """backfill only spools: an operator's shell without the service's key can run it."""
    live = tmp_path / "access.log"
    live.touch()
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, live, key="${TIRRENO_API_KEY}")])
    old = write_gz(tmp_path / "access.log.2.gz", lines("k", 3))
    r = run_in_process(
        "backfill", "-c", str(cfg), "--site", "a", str(old), env={"TIRRENO_API_KEY": ""}
    )
    assert r.returncode == 0, r.stderr
    assert summary(r.stderr)["events"] == 3
