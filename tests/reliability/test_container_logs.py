"""Container logs written exactly as containerd (CRI) and dockerd (json-file) write them,
rotated as the kubelet and dockerd rotate them, through the real daemon: every line once.

containerd: ``<RFC3339Nano> <stream> <P|F> <text>``, a line over 16 KiB in ``P`` parts; the
kubelet renames ``0.log`` to ``0.log.<YYYYMMDD-HHMMSS>`` past its size limit, containerd
writes to the renamed file until it reopens ``0.log``, and the kubelet gzips every rotated
file but the newest and deletes the oldest past ``containerLogMaxFiles``. dockerd:
``{"log": ..., "stream": ..., "time": ...}``, a line over 16 KiB in entries without a final
newline, rotation ``<id>-json.log`` -> ``.1`` -> ``.2`` under its own lock. The daemon reads
``/var/log/containers``-style links, is stopped across two rotations and restarted.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import Shipper
from tests.support.writer import USER_AGENT, delivery_report, make_config, wait_for

PART = 16 * 1024
LIMIT = 40_000  # rotate past this size (the kubelet's containerLogMaxSize, scaled down)
MAX_FILES = 5
CID = "c0ffee" * 10 + "abcd"


def access_line(seq: int) -> str:
    # Every 7th line is over 16 KiB (a long user agent): written in parts.
    agent = USER_AGENT + (" pad" * 9000 if seq % 7 == 3 else "")
    return (
        f'198.51.100.{seq % 250 + 1} - - [02/Dec/2026:14:00:00 +0000] "GET /item/{seq} HTTP/1.1" '
        f'200 {512 + seq % 97} "-" "{agent}" "-"'
    )


class Runtime:
    """One container's log as its runtime writes it, rotated at ``LIMIT``."""

    def __init__(self, root: Path, kind: str) -> None:
        self.kind = kind
        self.seq = 0
        self.rotations = 0
        self.links = root / "containers"
        self.links.mkdir()
        if kind == "cri":
            self.dir = root / "pods" / "shop_web-7d4b9_uid" / "nginx"
            self.path = self.dir / "0.log"
        else:
            self.dir = root / "docker" / CID
            self.path = self.dir / f"{CID}-json.log"
        self.dir.mkdir(parents=True)
        self.path.touch()
        (self.links / f"web-7d4b9_shop_nginx-{CID}.log").symlink_to(self.path)
        # Another pod's log in the same folder: excluded by the selection.
        other = root / "other.log"
        other.write_bytes(self.frame("stdout", 'GET /item/999999 "must not be sent"'))
        (self.links / f"api-1_kube-system_app-{'1' * 64}.log").symlink_to(other)
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115
        # Called before each rotation while the daemon runs: the kubelet looks at the
        # size every 10 s, so the daemon has seen a file before the next rotation.
        self.before_rotate: Callable[[], object] | None = None

    def frame(self, stream: str, text: str) -> bytes:
        stamp = "2026-12-02T14:00:00.12345678Z"
        if self.kind == "cri":
            data = text.encode()
            parts = [data[i : i + PART] for i in range(0, len(data), PART)]
            return b"".join(
                f"{stamp} {stream} {'F' if i == len(parts) - 1 else 'P'} ".encode() + p + b"\n"
                for i, p in enumerate(parts)
            )
        data_s = text + "\n"
        return b"".join(
            json.dumps({"log": data_s[i : i + PART], "stream": stream, "time": stamp}).encode()
            + b"\n"
            for i in range(0, len(data_s), PART)
        )

    def write(self, n: int, *, into: Any = None) -> None:
        for _ in range(n):
            fh = into or self._fh
            fh.write(self.frame("stdout", access_line(self.seq)))
            if self.seq % 5 == 0:
                fh.write(self.frame("stderr", f"2026/12/02 14:00:00 [notice] 1#1: seq {self.seq}"))
            self.seq += 1
            if into is None and self.path.stat().st_size > LIMIT:
                if self.before_rotate is not None:
                    self.before_rotate()
                self.rotate()

    def rotate(self) -> None:
        self.rotations += 1
        old = self._fh
        if self.kind == "cri":
            rotated = self.dir / f"0.log.20261202-14{self.rotations:04d}"
            os.rename(self.path, rotated)
            # containerd writes on until the kubelet's ReopenContainerLog reaches it.
            self.write(2, into=old)
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115
            old.close()
            older = sorted(p for p in self.dir.iterdir() if p.name.startswith("0.log."))
            for p in older[:-1]:
                if p.suffix != ".gz":
                    with open(p, "rb") as src, gzip.open(f"{p}.gz", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    shutil.copystat(p, f"{p}.gz")
                    p.unlink()
            for p in older[: max(0, len(older) - (MAX_FILES - 1))]:
                Path(f"{p}.gz" if p.suffix != ".gz" else p).unlink()
        else:
            base = str(self.path)
            for k in range(MAX_FILES - 1, 0, -1):
                if os.path.exists(f"{base}.{k}"):
                    os.replace(f"{base}.{k}", f"{base}.{k + 1}")
            old.close()
            os.rename(base, f"{base}.1")
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def close(self) -> None:
        self._fh.close()


@pytest.mark.slow  # a real daemon across rotations and a restart: 15 s each
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["cri", "docker"])
def test_container_log_rotations_and_a_restart_lose_and_repeat_nothing(
    tmp_path: Path, kind: str
) -> None:
    runtime = Runtime(tmp_path, kind)
    with FakeSensor(bucket_capacity=0) as sensor:
        config = make_config(tmp_path, sensor.url, runtime.links / "*.log")
        doc = json.loads(config.read_text())
        doc["sites"][0]["logs"][0].update(
            container=kind, include={"namespaces": ["shop"]}, exclude={"containers": ["app"]}
        )
        config.write_text(json.dumps(doc))
        shipper = Shipper(config, log_path=tmp_path / "daemon.log", start=False)
        try:
            shipper.start()
            wait_for(lambda: bool(shipper.logged("file_opened")), 60, "the daemon to open the log")
            runtime.before_rotate = lambda: wait_for(
                lambda: sensor.wait_accepted(runtime.seq, 0), 60, "the lines so far"
            )
            runtime.write(150)
            runtime.before_rotate()
            assert runtime.rotations >= 3
            assert shipper.stop() == 0
            runtime.before_rotate = None
            # Down: the checkpointed file grows, then two rotations (cri: it is gzipped).
            written = runtime.rotations
            while runtime.rotations < written + 2:
                runtime.write(1)
            runtime.write(10)
            runtime.close()
            result = shipper.run_once(timeout=90)
            assert result.returncode == 0, result.stderr[-3000:]
            report = delivery_report(sensor, range(runtime.seq))
        finally:
            runtime.close()
            shipper.close()
    log = shipper.tail_log()
    assert not report["missing"], f"lines lost: {report['missing']}\n{log}"
    assert not report["unexpected"], f"lines not written (or excluded) sent: {report}"
    assert report["duplicates"] == 0, report
    assert report["accepted"] == runtime.seq
    # Read to their end before the stop, and deleted since by containerLogMaxFiles.
    assert not shipper.logged("rotated_file_not_read"), log
    assert not shipper.logged("line_too_long"), log
