"""The syslog input: header framing (RFC 3164, RFC 5424) and the listener on real sockets."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.inprocess import daemon_thread
from tests.support.servers import free_port
from tests.support.shipper import nginx_line, site, wait_until, write_config
from tirreno_shipper import metrics
from tirreno_shipper.config import LogSource
from tirreno_shipper.records import Checkpoint, FileId
from tirreno_shipper.syslog.address import Address
from tirreno_shipper.syslog.framing import MALFORMED, message
from tirreno_shipper.syslog.listener import SyslogInput

LINE = b'203.0.113.9 - - [02/Dec/2026:14:00:00 +0000] "GET /a HTTP/1.1" 200 5 "-" "ua" "s1"'


@pytest.mark.parametrize(
    "datagram",
    [
        b"<190>Dec  2 14:00:00 web1 nginx: " + LINE,  # nginx
        b"<190>Dec 12 14:00:00 nginx: " + LINE,  # nginx with nohostname
        b"<13>Dec  2 14:00:00 web1 apache[812]: " + LINE + b"\n",  # logger --rfc3164
        b"<13>1 2026-12-02T14:00:00.123456+00:00 web1 apache - - - " + LINE,  # logger
        b'<13>1 2026-12-02T14:00:00Z web1 apache 812 - [timeQuality tzKnown="1" x="a\\"]"] '
        + LINE,  # logger with structured data
        b"<13>1 2026-12-02T14:00:00Z - - - - - \xef\xbb\xbf" + LINE,  # a BOM before MSG
    ],
)
def test_the_message_after_the_header(datagram: bytes) -> None:
    assert message(datagram) == LINE


@pytest.mark.parametrize(
    "datagram",
    [LINE, b"<999>Dec  2 14:00:00 web1 nginx: x", b"<13>2026 nope", b"<13>1 a b c d e Zmsg"],
)
def test_no_syslog_header(datagram: bytes) -> None:
    assert message(datagram) is None


def test_addresses() -> None:
    assert str(Address.parse("unix:/run/x.sock")) == "unix:/run/x.sock"
    assert Address.parse("udp://[::1]:5140") == Address("udp", host="::1", port=5140)
    for bad in ("unix:rel.sock", "udp://127.0.0.1", "tcp://127.0.0.1:1", "udp://h:99999"):
        with pytest.raises(ValueError):
            Address.parse(bad)
    src = LogSource.model_validate({"syslog": "udp://127.0.0.1:5140", "format": "nginx_cookie"})
    assert src.where == "syslog:udp://127.0.0.1:5140"
    with pytest.raises(ValueError, match="exactly one of path"):
        LogSource.model_validate({"path": "/x.log", "syslog": "unix:/run/x.sock"})
    with pytest.raises(ValueError, match="exactly one of path"):
        LogSource.model_validate({"format": "nginx_cookie"})


def test_unix_socket_chunks_rewind_and_cleanup(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.sock"
    sock_path.touch()
    with pytest.raises(OSError, match="not a socket"):
        SyslogInput("s", f"unix:{sock_path}", wake=threading.Event())
    sock_path.unlink()
    # A socket left by a killed run is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(sock_path))
    stale.close()
    old = Checkpoint(f"syslog:unix:{sock_path}", FileId(0, 0, "earlier run"), 7)
    wake = threading.Event()
    inp = SyslogInput("s", f"unix:{sock_path}", wake=wake, checkpoints=[old])
    try:
        assert oct(sock_path.stat().st_mode & 0o777) == "0o666"
        assert inp.poll() is None
        out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for i in range(3):
            out.sendto(b"<190>Dec  2 14:00:00 web1 nginx: line %d" % i, str(sock_path))
        out.sendto(b"garbage", str(sock_path))
        assert wake.wait(5), "the listener did not wake the tail"
        # Woken at the first datagram: the chunk below holds all four once they are in.
        assert wait_until(lambda: inp.waiting == 4, 5), inp.waiting
        chunk = inp.poll()
        assert chunk is not None
        assert list(chunk.lines) == [(0, b"line 0"), (1, b"line 1"), (2, b"line 2")]
        assert list(chunk.skipped) == [(3, MALFORMED)]
        assert (chunk.start_offset, chunk.end_offset) == (0, 4)
        inp.rewind(chunk)
        again = inp.poll()
        assert again is not None and list(again.lines) == list(chunk.lines)
        assert inp.poll() is None
        assert inp.retired() == [old.file]
        assert inp.status()[0].offset == 4
        out.close()
    finally:
        inp.close()
    assert not sock_path.exists()


def test_udp_drops_are_counted() -> None:
    """What the kernel drops (a full socket buffer, SO_RXQ_OVFL) and what finds the queue
    full is counted: received + dropped is what was sent."""
    port = free_port(("127.0.0.1",))
    inp = SyslogInput("udp-drops", f"udp://127.0.0.1:{port}", wake=threading.Event(), max_queue=50)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        inp._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = 3000
        for i in range(sent):
            out.sendto(b"<190>Dec  2 14:00:00 web1 nginx: %d" % i, ("127.0.0.1", port))
        got = markers = 0
        dropped = 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            while (chunk := inp.poll()) is not None:
                got += sum(1 for _, line in chunk.lines if line != b"marker")
            dropped = (
                metrics.REGISTRY.get_sample_value(
                    "tirreno_shipper_syslog_dropped_total", {"site": "udp-drops"}
                )
                or 0.0
            )
            if got + dropped >= sent:
                break
            # The kernel tells its count with the next datagram queued after the drops.
            out.sendto(b"<190>Dec  2 14:00:00 web1 nginx: marker", ("127.0.0.1", port))
            markers += 1
            time.sleep(0.05)
        assert dropped > 0
        assert sent <= got + dropped <= sent + markers
    finally:
        out.close()
        inp.close()


def test_closing_leaves_a_socket_bound_by_a_newer_run(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    first = SyslogInput("s", f"unix:{path}", wake=threading.Event())
    second = SyslogInput("s", f"unix:{path}", wake=threading.Event())
    first.close()
    assert path.exists()
    second.close()
    assert not os.path.exists(path)


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_a_reloaded_syslog_site_listens_again(tmp_path: Path, kind: str) -> None:
    """A reload that restarts the site closes the old socket and binds the new one: lines
    sent after the reload arrive (the old runner's close never removes the new socket)."""
    if kind == "udp":
        port = free_port(("127.0.0.1",))
        listen: str = f"udp://127.0.0.1:{port}"
        family, target = socket.AF_INET, ("127.0.0.1", port)
    else:
        path = tmp_path / "s.sock"
        listen = f"unix:{path}"
        family, target = socket.AF_UNIX, str(path)  # type: ignore[assignment]
    out = socket.socket(family, socket.SOCK_DGRAM)

    def send(text: str) -> None:
        out.sendto(b"<190>Dec  2 14:00:00 web1 nginx: " + nginx_line(text).encode(), target)

    with FakeSensor(bucket_capacity=0) as sensor:
        entry = {"syslog": listen, "format": "nginx_combined"}
        sites = [site("s", sensor.url, tmp_path / "unused.log", log=entry)]
        sites[0]["logs"] = [entry]
        cfg = write_config(tmp_path / "c.yaml", sites)
        # In this process: the reload on a changed file is the daemon's, not the process's.
        with daemon_thread(cfg) as daemon:
            first = daemon.runners["s"]  # listening: started before daemon_thread yields
            send("/before")
            assert wait_until(lambda: len(sensor.accepted) == 1, 20)
            sites[0]["sensor"]["concurrency"] = 1  # the site changes: it is restarted
            write_config(cfg, sites)
            assert wait_until(lambda: daemon.runners.get("s") not in (None, first), 20)
            assert daemon.runners["s"].site.sensor.concurrency == 1

            def sent_after() -> bool:
                send("/after")  # again until one arrives: the new socket may not be bound yet
                return len(sensor.accepted) >= 2

            assert wait_until(sent_after, 20, interval=0.2)
    out.close()
    assert sensor.accepted[0].fields["url"] == "/before"
    assert {r.fields["url"] for r in sensor.accepted[1:]} == {"/after"}
    if kind == "unix":
        assert not path.exists()
