"""The systemd notify protocol, received on a real AF_UNIX datagram socket."""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing

from tests.support.cli import run_in_process
from tests.support.fake_sensor import FakeSensor
from tests.support.notify import Listener
from tests.support.shipper import append, nginx_line, running, site, wait_until, write_config
from tirreno_shipper.notify import Notifier


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="tsn-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def _config(tmp_path: Path, sensor: FakeSensor) -> Path:
    log = tmp_path / "a.log"
    append(log, [nginx_line("/n/1")])
    return write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])


@pytest.mark.slow
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reloading_stopping_and_watchdog_pings(
    tmp_path: Path, sock_dir: Path, sensor: FakeSensor, abstract: bool
) -> None:
    """READY=1 after start-up, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1, WATCHDOG=1 pings."""
    address = f"@tirreno-test-{secrets.token_hex(6)}" if abstract else str(sock_dir / "notify")
    listener = Listener(address)
    try:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
        with running(_config(tmp_path, sensor), env=env) as shipper:
            assert wait_until(lambda: "READY=1" in listener.states(), 10), listener.states()
            assert sensor.wait_accepted(1, 20)
            # Pings for a while: at least every 0.5 s (half of WATCHDOG_USEC). Counted, not
            # slept for: the reload below may be quick, and the checks want 8 in the window.
            ready = listener.times("READY=1")[0]
            assert wait_until(
                lambda: sum(t >= ready for t in listener.times("WATCHDOG=1")) >= 8, 10
            ), listener.states()
            shipper.signal(signal.SIGHUP)
            shipper.wait_log("reloaded")
            assert wait_until(lambda: listener.states().count("READY=1") >= 2, 10)
            assert shipper.stop() == 0
        assert wait_until(lambda: "STOPPING=1" in listener.states(), 5)
    finally:
        listener.close()
    states = listener.states()
    order = [s for s in states if s in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], states
    reloading = next(i for i, s in enumerate(states) if s == "RELOADING=1")
    assert states[reloading + 1].startswith("MONOTONIC_USEC=")
    assert int(states[reloading + 1].split("=", 1)[1]) > 0
    assert any(s.startswith("STATUS=") for s in states)
    ready, stopping = listener.times("READY=1")[0], listener.times("STOPPING=1")[0]
    pings = [t for t in listener.times("WATCHDOG=1") if ready <= t <= stopping]
    assert len(pings) >= 8, pings
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    # Every ping is due within 0.5 s; the loaded-machine margin stays under
    # systemd's kill at WATCHDOG_USEC (1 s).
    assert gaps[len(gaps) * 9 // 10 - 1] <= 0.5, gaps
    assert gaps[-1] < 1.0, gaps


def test_no_watchdog_pings_without_watchdog_usec(
    tmp_path: Path, sock_dir: Path, sensor: FakeSensor
) -> None:
    """Without WATCHDOG_USEC the daemon says READY=1 and never pings."""
    listener = Listener(str(sock_dir / "notify"))
    try:
        # In this process: the supervisor loop of `run --once` is the daemon's own.
        config = str(_config(tmp_path, sensor))
        r = run_in_process("run", "-c", config, "--once", env={"NOTIFY_SOCKET": listener.address})
        assert r.returncode == 0, r.stderr
        assert sensor.wait_accepted(1, 0)
        assert wait_until(lambda: "STOPPING=1" in listener.states(), 5)
    finally:
        listener.close()
    assert "READY=1" in listener.states()
    assert "WATCHDOG=1" not in listener.states()


def test_watchdog_interval_is_half_the_timeout_and_respects_watchdog_pid() -> None:
    """WATCHDOG_USEC/2 between pings; a WATCHDOG_PID naming another process disables them."""
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 0.5
    other = {**mine, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval is None


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    """No NOTIFY_SOCKET: nothing is sent and nothing fails (terminals, containers)."""
    n = Notifier({})
    assert not n.enabled
    assert n.notify("READY=1") is False
    n.ready("x")
    n.stopping()


def test_a_missing_socket_is_reported_once_not_per_ping(sock_dir: Path) -> None:
    """A vanished NOTIFY_SOCKET fails softly and is logged once, not at every watchdog ping."""
    n = Notifier({"NOTIFY_SOCKET": str(sock_dir / "gone")})
    with structlog.testing.capture_logs() as logs:
        assert all(n.notify("WATCHDOG=1") is False for _ in range(5))
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    listener = Listener(str(sock_dir / "gone"))
    try:
        assert n.notify("WATCHDOG=1") is True
        assert wait_until(lambda: "WATCHDOG=1" in listener.states(), 5)
    finally:
        listener.close()
