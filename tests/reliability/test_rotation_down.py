"""The daemon stopped while logrotate (compress + delaycompress) rotates twice: every line once.

Rotation 1 renames access.log to access.log.1; rotation 2 renames access.log.1
to access.log.2, gzips it to access.log.2.gz (removing access.log.2) and renames
access.log to access.log.1. The checkpointed file's unread lines are then only in
the .gz, and the file in between (now access.log.1) was never seen. Both are
read at the next start, the .gz under the identity the lines had when the file
was live, so the lines read before the stop are not sent again and the others
get the request ids a live read gives them.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.writer import LogWriter, daemon, delivery_report, seq_of, start_and_ship
from tirreno_shipper.events import request_ids
from tirreno_shipper.records import FileId
from tirreno_shipper.tail import fingerprint

ROOT = Path(__file__).resolve().parents[2]
STANZA = ROOT / "deploy" / "logrotate" / "tirreno-shipper-nginx"
SEQ = re.compile(rb'"GET /item/(\d+) ')


def emulated(log: Path) -> Callable[[], None]:
    """logrotate's compress + delaycompress by hand (numbered names, mtimes kept)."""

    def rotate() -> None:
        base = str(log)
        gz = sorted(
            (int(n.split(".")[-2]) for n in os.listdir(log.parent) if n.endswith(".gz")),
            reverse=True,
        )
        for k in gz:
            os.rename(f"{base}.{k}.gz", f"{base}.{k + 1}.gz")
        if os.path.exists(f"{base}.1"):
            os.rename(f"{base}.1", f"{base}.2")
            with open(f"{base}.2", "rb") as src, gzip.open(f"{base}.2.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            shutil.copystat(f"{base}.2", f"{base}.2.gz")
            os.unlink(f"{base}.2")
        os.rename(base, f"{base}.1")
        log.touch()

    return rotate


def real_logrotate(log: Path, tmp: Path) -> Callable[[], None]:
    """``logrotate -f`` with the shipped stanza, as QA ran it (no nginx: no USR1 to send)."""
    exe = shutil.which("logrotate", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    assert exe, "logrotate is not installed (apt-get install logrotate)"
    text = STANZA.read_text(encoding="utf-8")
    assert re.search(r"^\s*delaycompress\b", text, re.MULTILINE)
    text = text.replace("/var/log/nginx/", f"{log.parent}/").replace(
        "/run/nginx.pid", str(tmp / "nginx.pid")
    )
    # The new file keeps our own user: only root may hand it to www-data:adm.
    text = re.sub(r"create 0640 \S+ \S+", "create 0640", text)
    conf = tmp / "logrotate.conf"
    conf.write_text(text, encoding="utf-8")
    conf.chmod(0o644)

    def rotate() -> None:
        result = subprocess.run(
            [exe, "-f", "-s", str(tmp / "logrotate.state"), str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    return rotate


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["emulated", "logrotate"])
def test_two_delaycompress_rotations_while_stopped(tmp_path: Path, how: str) -> None:
    """Stopped, 30 lines, rotate, 30 lines, rotate, 30 lines, start: each line sent once; the
    checkpointed file's lines carry the ids of a live read, before and after the stop."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "access.log"
    log.touch()
    rotate = emulated(log) if how == "emulated" else real_logrotate(log, tmp_path)
    writer = LogWriter(log)
    with FakeSensor(bucket_capacity=0) as sensor:
        shipper = daemon(tmp_path, sensor.url, log, start_at="end")
        try:
            start_and_ship(shipper, writer, sensor)
            assert shipper.stop() == 0
            st = log.stat()
            writer.write(30)  # after the checkpoint, in the checkpointed file
            text = log.read_bytes()
            rotate()
            writer.reopen()  # nginx USR1 after logrotate
            writer.write(30)  # a file the daemon never sees live
            rotate()
            writer.reopen()  # nginx USR1 after logrotate
            writer.write(30)  # the file at the path now
            writer.close()
            assert sorted(os.listdir(logs)) == ["access.log", "access.log.1", "access.log.2.gz"]
            with gzip.open(logs / "access.log.2.gz") as fh:
                assert fh.read() == text
            result = shipper.run_once(in_process=True)
            assert result.returncode == 0, result.stderr[-2000:]
            report = delivery_report(sensor, range(writer.seq))
        finally:
            writer.close()
            shipper.close()
    assert not report["missing"], f"lines lost: {report['missing']}\n{shipper.tail_log()}"
    assert not report["unexpected"]
    assert report["duplicates"] == 0 and not report["lines_with_two_ids"]
    assert Counter(seq_of(r.fields["url"]) for r in sensor.accepted) == Counter(range(100))
    # The checkpointed file's lines, read live (10) and from the .gz (30): one identity.
    live = request_ids("shop", FileId(st.st_dev, st.st_ino, fingerprint(text)).key())
    expected = {}
    offset = 0
    for line in text.splitlines(keepends=True):
        match = SEQ.search(line)
        assert match is not None
        expected[int(match.group(1))] = live(offset)
        offset += len(line)
    assert sorted(expected) == list(range(40))
    got = {seq_of(r.fields["url"]): r.request_id for r in sensor.accepted}
    assert {seq: got[seq] for seq in expected} == expected
    assert shipper.logged("compressed_file_found")
    assert not shipper.logged("checkpoint_orphaned")


@pytest.mark.timeout(120)
def test_glob_does_not_follow_compressed_rotated_files(tmp_path: Path) -> None:
    """``access.log*`` also matches access.log.2.gz: run skips it (logged once), ships the
    plain lines only, and keeps no checkpoint for it (status shows no lag for it)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "access.log"
    log.touch()
    old = LogWriter(logs / "access.log.2")
    old.seq = 1000
    old.write(5)
    old.close()
    with open(logs / "access.log.2", "rb") as src, gzip.open(logs / "access.log.2.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(logs / "access.log.2")
    writer = LogWriter(log)
    writer.write(10)
    writer.close()
    with FakeSensor(bucket_capacity=0) as sensor:
        shipper = daemon(tmp_path, sensor.url, logs / "access.log*")
        try:
            result = shipper.run_once(in_process=True)
            assert result.returncode == 0, result.stderr[-2000:]
            report = delivery_report(sensor, range(10))
            files = shipper.site_status(in_process=True)["files"]
        finally:
            shipper.close()
    assert not report["missing"] and not report["unexpected"]
    assert [f["path"] for f in files] == [str(log)]
    skipped = shipper.logged("file_skipped_compressed")
    assert [r["path"] for r in skipped] == [str(logs / "access.log.2.gz")]
    assert "backfill" in skipped[0]["hint"]
