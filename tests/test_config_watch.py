"""Reload on a configuration change, as a ConfigMap volume makes it (the ``..data`` swap)."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.fake_sensor import FakeSensor
from tests.support.notify import Listener
from tests.support.shipper import append, nginx_line, running, site, wait_until, write_config
from tirreno_shipper.config_watch import ConfigWatch


class ConfigMapVolume:
    """A folder laid out as the kubelet lays out a ConfigMap volume: ``config.yaml`` links to
    ``..data/config.yaml``, ``..data`` links to a timestamped folder, and an update writes a
    new folder and renames a new ``..data`` link over the old one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.n = 0
        self.path = root / "config.yaml"

    def publish(self, text: str) -> None:
        self.n += 1
        data = self.root / f"..2026_12_02_14_00_{self.n:02d}.000000000"
        data.mkdir()
        (data / "config.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/config.yaml")


def test_a_configmap_swap_is_noticed_once(tmp_path: Path) -> None:
    vol = ConfigMapVolume(tmp_path / "cm")
    vol.publish("a: 1\n")
    watch = ConfigWatch(vol.path)
    assert not watch.changed()
    vol.publish("a: 1\n")  # same text, another file: a reload finds nothing to change
    assert watch.changed()
    assert not watch.changed()
    plain = tmp_path / "plain.yaml"
    plain.write_text("a: 1\n")
    watch = ConfigWatch(plain)
    plain.write_text("a: 22\n")
    assert watch.changed() and not watch.changed()
    plain.unlink()
    assert not watch.changed()  # gone for a moment: wait for the new file


@pytest.fixture
def sensor() -> Iterator[FakeSensor]:
    with FakeSensor(bucket_capacity=0) as s:
        yield s


def _config(tmp: Path, sites: list[dict[str, Any]], **top: Any) -> str:
    scratch = write_config(tmp / "scratch.yaml", sites, state_dir=str(tmp / "state"), **top)
    return scratch.read_text()


def test_the_daemon_reloads_a_swapped_configmap_and_keeps_the_old_on_a_bad_one(
    tmp_path: Path, sensor: FakeSensor
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, [nginx_line(path="/a/0")])
    append(b, [nginx_line(path="/b/0")])
    vol = ConfigMapVolume(tmp_path / "cm")
    vol.publish(_config(tmp_path, [site("a", sensor.url, a)]))
    with running(vol.path) as shipper:
        assert wait_until(lambda: len(sensor.accepted) == 1, 20)
        vol.publish(_config(tmp_path, [site("a", sensor.url, a), site("b", sensor.url, b)]))
        shipper.wait_log("reloaded", 20)
        assert shipper.logged("config_changed")
        assert shipper.logged("site_added", site="b")
        assert wait_until(lambda: len(sensor.accepted) == 2, 20)
        # A bad file: logged, and the running configuration goes on.
        vol.publish(yaml.safe_dump({"sites": [{"name": "a"}]}))
        shipper.wait_log("reload_rejected", 20)
        append(b, [nginx_line(path="/b/1")])
        assert wait_until(lambda: len(sensor.accepted) == 3, 20)
        assert shipper.proc.poll() is None
        assert shipper.stop() == 0


@pytest.fixture
def notify() -> Iterator[Listener]:
    listener = Listener(f"@tirreno-test-{secrets.token_hex(6)}")
    yield listener
    listener.close()


def test_reload_on_change_off_waits_for_sighup(
    tmp_path: Path, sensor: FakeSensor, notify: Listener
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, [nginx_line(path="/a/0")])
    append(b, [nginx_line(path="/b/0")])
    vol = ConfigMapVolume(tmp_path / "cm")
    vol.publish(_config(tmp_path, [site("a", sensor.url, a)], reload_on_change=False))
    # The supervisor pings the watchdog at the end of each tick, after asking the
    # watch: the pings count the ticks that saw the new file (one every 0.1 s here).
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"}
    with running(vol.path, env=env) as shipper:
        assert wait_until(lambda: len(sensor.accepted) == 1, 20)
        vol.publish(
            _config(
                tmp_path,
                [site("a", sensor.url, a), site("b", sensor.url, b)],
                reload_on_change=False,
            )
        )
        # Several ticks after the swap, nothing happened; SIGHUP then reloads.
        pings = notify.count("WATCHDOG=1")
        assert wait_until(lambda: notify.count("WATCHDOG=1") >= pings + 5, 20)
        assert not shipper.logged("reloaded")
        assert not shipper.logged("config_changed")
        shipper.signal(signal.SIGHUP)
        shipper.wait_log("reloaded", 20)
        assert wait_until(lambda: len(sensor.accepted) == 2, 20)
        assert shipper.stop() == 0
