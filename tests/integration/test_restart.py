"""The daemon stopped and started again while nginx is busy and its log is rotated meanwhile."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.checks import (
    compare,
    expectations,
    rename_rotate,
    request_id_problems,
    summarize,
)
from tests.integration.harness import UserDirectory, shipper_for, site_config
from tests.support.fake_sensor import FakeSensor
from tests.support.servers import Nginx, free_port
from tests.support.traffic import Traffic

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_restart_with_rotation_while_down_loses_and_repeats_nothing(
    tmp_path: Path,
    nginx: Nginx,
    pg_users: UserDirectory,
    sensors: Callable[[str], FakeSensor],
) -> None:
    """SIGTERM under load, a rename rotation while stopped, a restart: every event once."""
    api_key = secrets.token_hex(16)
    sensor = sensors(api_key)
    config = {
        "state_dir": str(tmp_path / "state"),
        "log": {"level": "info", "format": "json"},
        "metrics": {"listen": f"127.0.0.1:{free_port(('127.0.0.1',))}"},
        "poll_interval": 0.2,
        "shutdown_grace": 5,
        "sites": [
            site_config(
                "shop",
                sensor_url=sensor.url,
                key_env="TEST_KEY_SHOP",
                log_path=nginx.access_logs["nginx_cookie"],
                log_format="nginx_cookie",
                directory=pg_users,
            )
        ],
    }
    (tmp_path / "shipper").mkdir()
    shipper = shipper_for(tmp_path / "shipper", config, {"TEST_KEY_SHOP": api_key})
    driver = Traffic(nginx.port, list(pg_users.sessions), seed=7)
    shipper.start(ready=True)
    try:
        traffic = threading.Thread(target=driver.send_many, args=(400,), daemon=True)
        traffic.start()
        while len(driver.sent) < 200:
            time.sleep(0.01)
        first_code = shipper.stop()
        traffic.join(60)
        # Rotated while nobody reads: the rest of the old file is only found again
        # by its identity among the rotated siblings.
        rename_rotate([nginx.access_logs["nginx_cookie"]])
        time.sleep(0.05)
        driver.send_many(20)  # still into the renamed file
        nginx.reopen_logs()
        time.sleep(0.2)
        driver.send_many(200)
        shipper.start(ready=True)
        expected = expectations(driver.sent, pg_users.sessions, accept_language=False)
        sensor.wait_accepted(len(expected), 60)
        time.sleep(1.0)
    finally:
        code = shipper.stop()
    assert first_code == 0 and code == 0, shipper.output()[-3000:]
    problems = compare("shop", expected, sensor.accepted) + request_id_problems([sensor])
    assert not problems, summarize(problems) + "\n" + shipper.output()[-6000:]
