"""PHP native file sessions behind nginx, `users.framework: php`.

apps/php/index.php runs in PHP's built-in server (php-cli, Debian) with
``session.save_path`` in the test's folder and ``session.use_strict_mode`` on;
its users are in its own SQLite table (made by the app: ``password_hash``). The
session file ``sess_<PHPSESSID>`` holds ``user_id|i:42;``. nginx logs
``$cookie_PHPSESSID`` and the response's ``$upstream_cookie_PHPSESSID``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.frameworks import (
    APPS,
    App,
    ProxyNginx,
    assert_credited,
    nginx_format,
    run_live,
    serving,
    tamper,
)

pytestmark = pytest.mark.integration

APP = APPS / "php" / "index.php"
USER, PASSWORD = "alice.php", "correct horse battery"
LOG_FORMAT = nginx_format("$cookie_PHPSESSID", "$upstream_cookie_PHPSESSID")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyNginx, Path]]:
    php = shutil.which("php")
    if php is None:
        pytest.fail("php is missing: scripts/test.sh installs php-cli", pytrace=False)
    workdir = tmp_path_factory.mktemp("php")
    database = workdir / "app.sqlite"
    sessions = workdir / "sessions"
    sessions.mkdir()
    setup = subprocess.run(
        [php, str(APP), "setup", str(database), USER, PASSWORD],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    app = App(
        "php",
        [
            php,
            "-d",
            f"session.save_path={sessions}",
            "-d",
            "session.use_strict_mode=1",
            "-d",
            "display_errors=stderr",
            "-S",
            "127.0.0.1:{port}",
            str(APP),
        ],
        workdir,
        env={"APP_DB": str(database)},
        cwd=APP.parent,
    )
    with serving(app, workdir / "nginx", LOG_FORMAT) as nginx:
        yield nginx, workdir


def _forged(session: str) -> list[str]:
    # One character off (no such file), and a path out of the sessions folder.
    return [tamper(session), "../" + session]


def test_php_file_sessions_name_the_user_from_login_to_logout(
    site: tuple[ProxyNginx, Path],
) -> None:
    """PHPSESSID → sessions/sess_<id> (php_session decoder, user_id) → the app's users
    table: the login line (its Set-Cookie), the pages and the logout name alice.php;
    a tampered PHPSESSID finds nobody."""
    nginx, workdir = site
    live = run_live(
        workdir / "run",
        nginx,
        cookie="PHPSESSID",
        username=USER,
        password=PASSWORD,
        log_format=LOG_FORMAT,
        users={
            "framework": "php",
            "store": {"file": str(workdir / "sessions" / "sess_{key}")},
            "database": f"sqlite:///{workdir / 'app.sqlite'}",
            "query": "SELECT name AS user_name FROM users WHERE id = :user_id",
        },
        forged=_forged,
    )
    assert_credited(live, USER)
