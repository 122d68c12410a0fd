"""Spool and disk trouble, with the whole daemon: a full spool, a read-only, uncreatable or full
``state_dir``. The log is the first buffer: whatever happens to the state folder, every line is
delivered once it works again, and a daemon that cannot start says why and exits 73 at once
(no crash loop that eats lines).

Read-only is made with a read-only bind mount (root ignores file modes), or ``chattr +i`` where
mounts are not permitted; a full disk with a tiny tmpfs. Both need root: without it the tests fail
and say so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.servers import free_port
from tests.support.shipper import Shipper
from tests.support.writer import (
    LogWriter,
    all_delivered,
    daemon,
    delivery_report,
    make_config,
    metric,
    scrape,
    wait_for,
)

EX_CANTCREAT = 73


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` read-only even for root; yields how it was done."""
    mount = _run("mount", "--bind", "-o", "ro", str(folder), str(folder))
    undo: tuple[str, ...]
    if mount.returncode == 0:
        how, undo = "read-only bind mount", ("umount", str(folder))
    else:
        chattr = _run("chattr", "+i", str(folder))
        if chattr.returncode != 0:
            pytest.fail(
                f"cannot make {folder} read-only here: mount --bind -o ro: "
                f"{mount.stderr.strip()}; chattr +i: {chattr.stderr.strip()}",
                pytrace=False,
            )
        how, undo = "chattr +i", ("chattr", "-i", str(folder))
    try:
        assert not _writable(folder), f"{how} did not make {folder} read-only"
        yield how
    finally:
        result = _run(*undo)
        assert result.returncode == 0, f"{' '.join(undo)}: {result.stderr}"


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``folder``: a disk that fills up."""
    folder.mkdir(parents=True, exist_ok=True)
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder))
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {folder}: {result.stderr.strip()}", pytrace=False)
    try:
        yield
    finally:
        result = _run("umount", "-l", str(folder))
        assert result.returncode == 0, f"umount {folder}: {result.stderr}"


def _status_paused(shipper: Shipper) -> str | None:
    paused: str | None = shipper.site_status()["paused"]
    return paused


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_spool_at_cap_pauses_the_tail_and_drops_nothing(tmp_path: Path) -> None:
    """spool.max_events 50 and the sensor down: the tail pauses, then resumes; all delivered."""
    cap = 50
    log = tmp_path / "access.log"
    writer = LogWriter(log)
    port = free_port()
    sensor = FakeSensor(bucket_capacity=0).start()
    sensor.set_mode("refuse")
    shipper = Shipper(
        make_config(
            tmp_path,
            sensor.url,
            log,
            metrics_port=port,
            spool={"max_events": cap},
            sensor={"retry_max_delay": 2},
        ),
        log_path=tmp_path / "daemon.log",
        start=False,
    )
    try:
        shipper.start()
        wait_for(lambda: bool(shipper.logged("daemon_started")), 60, "the daemon to start")
        # From now on the tail reads small chunks; each must fit under the cap.
        writer.start(50)
        wait_for(
            lambda: (
                metric(
                    scrape(port, starting=True), "tirreno_shipper_site_paused", reason="spool_full"
                )
                == 1
            ),
            60,
            "the tail to pause on a full spool",
            interval=0.3,
        )
        wait_for(lambda: _status_paused(shipper) == "spool_full", 20, "status to say spool_full")
        time.sleep(2)  # the writer goes on; the tail must stay put
        status = shipper.site_status()
        values = scrape(port)
        depth = status["spool_depth"]
        lag = sum(f["lag_bytes"] or 0 for f in status["files"])
        # A chunk is spooled only if it fits whole: the cap is never exceeded, and
        # the tail stops within one small chunk of it.
        assert cap // 2 <= depth <= cap, f"spool depth {depth} with a cap of {cap}"
        assert lag > 0, "the tail is paused, so the log must be ahead of it"
        assert metric(values, "tirreno_shipper_spool_full_total") >= 1
        # The lag metric keeps up while paused (an alert on it must fire now).
        wait_for(
            lambda: metric(scrape(port), "tirreno_shipper_file_lag_bytes") >= lag,
            10,
            "the lag metric to show the waiting log",
        )
        sensor.set_mode("ok")
        time.sleep(1)
        writer.stop()
        wait_for(
            all_delivered(sensor, range(writer.seq)), 60, "every line after the sensor is back"
        )
        wait_for(lambda: _status_paused(shipper) is None, 20, "status to clear the pause")
        values = scrape(port)
        report = delivery_report(sensor, range(writer.seq))
    finally:
        writer.close()
        shipper.close()
        sensor.stop()
    print(
        f"\nspool cap {cap}: paused at depth {depth} with {lag} bytes of log waiting; "
        f"{writer.seq} lines delivered"
    )
    assert metric(values, "tirreno_shipper_site_paused", reason="spool_full") == 0
    assert metric(values, "tirreno_shipper_events_dropped_total") == 0
    assert not report["missing"] and not report["unexpected"]
    assert report["duplicates"] == 0


def _assert_exits_73(shipper: Shipper, folder: Path, words: str) -> None:
    """Started as systemd would restart it: exits 73 at once each time, saying why."""
    for _ in range(3):
        shipper.start()
        code = shipper.wait(60)
        assert code == EX_CANTCREAT, f"exit {code}, not 73:\n{shipper.tail_log()}"
    text = shipper.log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    failures = shipper.logged("spool_open_failed")
    assert len(failures) >= 3
    error = str(failures[-1].get("error"))
    assert str(folder) in error and words in error, f"not a clear error: {error!r}"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_read_only_state_dir_exits_73_and_loses_no_line(tmp_path: Path) -> None:
    """A read-only state_dir: exit 73 with the reason, every time; the lines wait in the log."""
    state = tmp_path / "state"
    log = tmp_path / "access.log"
    writer = LogWriter(log)
    with FakeSensor(bucket_capacity=0) as sensor:
        # start_at end: the lines written while the state_dir is broken are only
        # shipped if the checkpoint of the last good run is honoured.
        shipper = daemon(tmp_path, sensor.url, log, state_dir=state, start_at="end")
        try:
            shipper.start()
            wait_for(lambda: bool(shipper.logged("file_opened")), 60, "the daemon to open the log")
            writer.write(20)
            wait_for(all_delivered(sensor, range(20)), 30, "the first lines")
            assert shipper.stop() == 0
            writer.write(30)
            with read_only(state) as how:
                _assert_exits_73(shipper, state, "not writable")
                writer.write(10)
            result = shipper.run_once(timeout=90)
            assert result.returncode == 0, result.stderr[-3000:]
            report = delivery_report(sensor, range(writer.seq))
        finally:
            writer.close()
            shipper.close()
    print(f"\nread-only state_dir ({how}): 3 starts exited 73; {writer.seq} lines delivered after")
    assert not report["missing"], f"lines lost: {report['missing']}"
    assert not report["unexpected"] and report["duplicates"] == 0


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_uncreatable_state_dir_exits_73_and_loses_no_line(tmp_path: Path) -> None:
    """A state_dir under a regular file: exit 73, clear error; once creatable, all lines go."""
    blocker = tmp_path / "var"
    blocker.write_text("a regular file where a folder should be\n")
    state = blocker / "lib" / "tirreno-shipper"
    log = tmp_path / "access.log"
    writer = LogWriter(log)
    writer.write(25)
    with FakeSensor(bucket_capacity=0) as sensor:
        shipper = daemon(tmp_path, sensor.url, log, state_dir=state)
        try:
            _assert_exits_73(shipper, state, "cannot create state_dir")
            writer.write(25)
            blocker.unlink()  # the operator fixes it; the daemon creates the folders
            result = shipper.run_once(timeout=90)
            assert result.returncode == 0, result.stderr[-3000:]
            report = delivery_report(sensor, range(writer.seq))
        finally:
            writer.close()
            shipper.close()
    assert not report["missing"], f"lines lost: {report['missing']}"
    assert not report["unexpected"] and report["duplicates"] == 0
    assert state.is_dir() and (os.stat(state).st_mode & 0o777) == 0o700


@contextlib.contextmanager
def full_disk_rig(
    tmp_path: Path, size: str, lines: int, retry_max_delay: float
) -> Iterator[tuple[Shipper, LogWriter, FakeSensor]]:
    """A daemon whose state_dir is a ``size`` tmpfs, fed ``lines`` lines while the sensor
    refuses (so the spool only grows), yielded once the tail paused on the full disk and
    the writer stopped; the sensor is still refusing."""
    state = tmp_path / "state"
    log = tmp_path / "access.log"
    writer = LogWriter(log)
    port = free_port()
    sensor = FakeSensor(bucket_capacity=0).start()
    sensor.set_mode("refuse")
    shipper = Shipper(
        make_config(
            tmp_path,
            sensor.url,
            log,
            state_dir=state,
            metrics_port=port,
            sensor={"retry_max_delay": retry_max_delay},
            # A release that failed on the full disk leaves its event leased until
            # the lease ends (see the report): short, so the test is quick.
            spool={"lease_timeout": 5},
        ),
        log_path=tmp_path / "daemon.log",
        start=False,
    )
    with small_disk(state, size):
        try:
            shipper.start()
            writer.start(lines)
            wait_for(
                lambda: (
                    metric(
                        scrape(port, starting=True),
                        "tirreno_shipper_site_paused",
                        reason="spool_error",
                    )
                    == 1
                ),
                60,
                "the tail to pause on a full disk",
                interval=0.3,
            )
            time.sleep(1)
            writer.stop()
            yield shipper, writer, sensor
        finally:
            writer.close()
            shipper.close()
            sensor.stop()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_full_disk_pauses_the_tail_and_loses_nothing(tmp_path: Path) -> None:
    """The state_dir's disk fills up while running: the tail pauses, nothing is lost or
    moved aside as corrupt, and everything goes once there is room again."""
    state = tmp_path / "state"
    with full_disk_rig(tmp_path, "1m", 400, retry_max_delay=2) as (shipper, writer, sensor):
        assert shipper.running(), f"the daemon died:\n{shipper.tail_log()}"
        result = _run("mount", "-o", "remount,size=64m", str(state))
        assert result.returncode == 0, result.stderr
        sensor.set_mode("ok")
        wait_for(all_delivered(sensor, range(writer.seq)), 90, "every line once there is room")
        report = delivery_report(sensor, range(writer.seq))
        assert shipper.stop() == 0
        moved = [p.name for p in state.iterdir() if "corrupt" in p.name]
    print(f"\nfull disk: {writer.seq} lines, all delivered after the disk grew")
    assert not moved, f"the spool was moved aside as corrupt: {moved}"
    assert not report["missing"] and not report["unexpected"]
    assert report["duplicates"] == 0


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_full_disk_still_delivers_and_frees_room(tmp_path: Path) -> None:
    """The disk stays full, the sensor comes back: leases and acks still get written (the
    spool's reserve file gives its room to them), acknowledged deliveries free room inside
    the spool, and the tail goes on: every line is delivered, once, without the disk growing."""
    # 16 MiB: the reserve is an eighth of a small disk, and a read chunk (up to 1 MiB of
    # lines, about 2 MiB of WAL) must fit in the room acknowledged deliveries free.
    with full_disk_rig(tmp_path, "16m", 3000, retry_max_delay=1) as (shipper, writer, sensor):
        sensor.set_mode("ok")
        # Some 40,000 events fill the 16 MiB: 60 to 100 s to deliver them on 2 cores,
        # more beside the rest of a parallel suite.
        wait_for(all_delivered(sensor, range(writer.seq)), 200, "every line on a full disk")
        report = delivery_report(sensor, range(writer.seq))
        # The sender's writes met the full disk too, and were given the reserve's room.
        released = shipper.logged("spool_reserve_released")
        assert shipper.stop() == 0
    print(f"\nfull disk, not grown: {writer.seq} lines, all delivered")
    assert released
    assert not report["missing"] and not report["unexpected"]
    assert report["duplicates"] == 0
