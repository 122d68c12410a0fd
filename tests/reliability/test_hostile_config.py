"""A hostile or broken configuration file costs little to refuse, and a reload never
holds up a stop.

Seen before the caps: a 415-byte file of nested YAML aliases ran ``check`` past 100 s
(each level multiplies the values a walk of the data visits); sent as a SIGHUP reload,
it wedged the main thread, so SIGTERM waited 32 s (systemd would have SIGKILLed, and
requests in flight would have been sent again). A 50 MB file ran for minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_sensor import FakeSensor
from tests.support.shipper import append, nginx_line, run_cli, site, wait_until, write_config
from tirreno_shipper import daemon as daemon_module
from tirreno_shipper.config import MAX_CONFIG_BYTES, Config, load_config, parse_config
from tirreno_shipper.daemon import Daemon
from tirreno_shipper.errors import EX_CONFIG, ConfigError


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def alias_bomb(levels: int) -> str:
    """Each level is a list of ten aliases of the one before: 10**levels values."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\nstate_dir: /tmp/x\nsites: []\n"


def test_an_alias_bomb_is_refused_at_once_with_a_config_error(tmp_path: Path) -> None:
    """9 levels (a billion values) in 800 bytes: `check` exits 78 in moments and says why."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(9))
    assert bomb.stat().st_size < 1000
    started = time.monotonic()
    r = run_cli("check", "-c", str(bomb), timeout=60)
    assert r.returncode == EX_CONFIG, r.stderr
    assert "aliases (*name) expand to more than" in r.stderr
    assert time.monotonic() - started < 30


def test_aliases_of_a_normal_size_still_work(tmp_path: Path) -> None:
    """Anchors and aliases are plain YAML that operators use: a few are no bomb."""
    config = parse_config(
        f"""
state_dir: {tmp_path}/state
sites:
  - name: a
    sensor: &sensor {{url: "http://127.0.0.1:1/sensor/", api_key: k}}
    logs: [{{path: {tmp_path}/a.log}}]
  - {{name: b, sensor: *sensor, logs: [{{path: {tmp_path}/b.log}}]}}
""",
        env={},
    )
    assert [s.sensor.url for s in config.sites] == ["http://127.0.0.1:1/sensor/"] * 2


def test_an_alias_to_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refer to themselves"):
        parse_config("a: &a [*a]\nstate_dir: /tmp/x\nsites: []\n", env={})


def test_a_config_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    """A file of 2 MiB (here only comments) is refused for its size, not parsed."""
    big = tmp_path / "big.yaml"
    big.write_text(("# " + "x" * 1021 + "\n") * (2 * 1024))
    assert big.stat().st_size > MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(big)
    with pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_BYTES}"):
        parse_config(big.read_text(), env={})


def test_a_stop_is_prompt_while_a_reload_is_still_being_read(
    tmp_path: Path, sensor: FakeSensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP, then SIGTERM while the new file is still being read: the daemon stops at
    once (the read goes on elsewhere, and its result is never applied)."""
    log = tmp_path / "a.log"
    append(log, [nginx_line("/i/0")])
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    reading, release = threading.Event(), threading.Event()

    def slow_load(path: Any, *args: Any, **kwargs: Any) -> Config:
        reading.set()
        release.wait(60)  # as a file that takes a minute to read
        return load_config(path, *args, **kwargs)

    daemon = Daemon(load_config(cfg), cfg)
    monkeypatch.setattr(daemon_module, "load_config", slow_load)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    try:
        assert sensor.wait_accepted(1, 20)
        daemon.request_reload()  # what SIGHUP's handler does
        assert reading.wait(10)
        started = time.monotonic()
        daemon.request_stop()  # what SIGTERM's handler does
        thread.join(15)
        assert not thread.is_alive(), "the stop waited for the reload to be read"
        assert codes == [0]
        assert time.monotonic() - started < 10
    finally:
        release.set()
        thread.join(30)


def test_a_reload_read_off_the_main_thread_is_still_applied(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    """The reload's file is read on another thread, and the main thread applies it."""
    log = tmp_path / "a.log"
    append(log, [nginx_line("/i/0")])
    cfg = write_config(tmp_path / "c.yaml", [site("a", sensor.url, log)])
    daemon = Daemon(load_config(cfg), cfg)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert sensor.wait_accepted(1, 20)
        log_b = tmp_path / "b.log"
        append(log_b, [nginx_line("/b/0")])
        write_config(
            tmp_path / "c.yaml",
            [site("a", sensor.url, log), site("b", sensor.url, log_b)],
        )
        daemon.request_reload()
        assert wait_until(lambda: "b" in daemon.runners, 20)
        assert sensor.wait_accepted(2, 20)
    finally:
        daemon.request_stop()
        thread.join(30)
