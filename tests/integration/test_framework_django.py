"""Django (django.contrib.auth + sessions, PostgreSQL) behind nginx, `users.framework: django`.

The real Django (the ``frameworks`` extra) runs apps/django_app.py twice on one
new PostgreSQL database: once with the db session backend (``django_session``,
signed session data read with SECRET_KEY) and once with the cache backend on
Redis (a pickled dict under ``:1:django.contrib.sessions.cache<key>``). nginx
logs ``$cookie_sessionid`` and ``$upstream_cookie_sessionid`` (the session the
login response issues). See tests/support/frameworks.py for the scenario.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.frameworks import (
    APPS,
    App,
    Live,
    ProxyNginx,
    assert_credited,
    nginx_format,
    postgres_database,
    run_live,
    serving,
    tamper,
)

pytestmark = pytest.mark.integration

SECRET_KEY = "django-live-test-" + secrets.token_hex(16)
USER, PASSWORD = "alice.django", "correct horse battery"
LOG_FORMAT = nginx_format("$cookie_sessionid", "$upstream_cookie_sessionid")
REDIS = "redis://127.0.0.1:6379/0"


def _django(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(APPS / "django_app.py"), *args],
        cwd=APPS,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A new PostgreSQL database with Django's tables and the user, dropped after."""
    with postgres_database("fw_django_") as name:
        env = {"APP_DB": name, "APP_SECRET_KEY": SECRET_KEY}
        _django(["migrate", "-v", "0"], env)
        _django(
            [
                "shell",
                "-c",
                "from django.contrib.auth.models import User; "
                f"User.objects.create_user({USER!r}, 'alice@example.com', {PASSWORD!r}, "
                "first_name='Alice', last_name='Liddell')",
            ],
            env,
        )
        yield name


def _site(
    tmp: pytest.TempPathFactory, database: str, engine: str
) -> Iterator[tuple[ProxyNginx, Path]]:
    workdir = tmp.mktemp(f"django-{engine}")
    app = App(
        f"django-{engine}",
        [sys.executable, str(APPS / "django_app.py"), "runserver", "--noreload", "{port}"],
        workdir,
        env={
            "APP_DB": database,
            "APP_SECRET_KEY": SECRET_KEY,
            "APP_SESSION_ENGINE": f"django.contrib.sessions.backends.{engine}",
            "APP_REDIS": REDIS,
        },
        cwd=APPS,
    )
    with serving(app, workdir / "nginx", LOG_FORMAT) as nginx:
        yield nginx, workdir


@pytest.fixture(scope="module")
def db_site(
    tmp_path_factory: pytest.TempPathFactory, database: str
) -> Iterator[tuple[ProxyNginx, Path]]:
    yield from _site(tmp_path_factory, database, "db")


@pytest.fixture(scope="module")
def cache_site(
    tmp_path_factory: pytest.TempPathFactory, database: str
) -> Iterator[tuple[ProxyNginx, Path]]:
    yield from _site(tmp_path_factory, database, "cache")


def _users(database: str, **extra: Any) -> dict[str, Any]:
    return {
        "framework": "django",
        "database": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        "secret": SECRET_KEY,
        **extra,
    }


def _forged(session: str) -> list[str]:
    # A session key one character off (the db backend's keys are not signed: the
    # shipper must find no row), and the key with a quote and SQL after it.
    return [tamper(session), session + "'--"]


def _live(site: tuple[ProxyNginx, Path], users: dict[str, Any]) -> Live:
    nginx, workdir = site
    return run_live(
        workdir / "run",
        nginx,
        cookie="sessionid",
        username=USER,
        password=PASSWORD,
        log_format=LOG_FORMAT,
        users=users,
        forged=_forged,
    )


def test_db_backend_names_the_user_from_login_to_logout(
    db_site: tuple[ProxyNginx, Path], database: str
) -> None:
    """django_session + auth_user: the login line (by the response's new sessionid),
    the pages and the logout name alice.django; a tampered sessionid finds nobody."""
    live = _live(db_site, _users(database))
    assert_credited(live, USER)
    login = next(e for e in live.dry.events if e["eventType"] == "account_login")
    assert login["emailAddress"] == "alice@example.com"
    assert login["firstName"] == "Alice" and login["lastName"] == "Liddell"
    assert login["httpCode"] == "302"


def test_cache_backend_on_redis_names_the_user_from_login_to_logout(
    cache_site: tuple[ProxyNginx, Path], database: str
) -> None:
    """SESSION_ENGINE cache on Redis (the preset's redis store, pickle decoder) and
    auth_user in PostgreSQL: the same user on every line of the session."""
    live = _live(cache_site, _users(database, store={"redis": {"url": REDIS}}))
    assert_credited(live, USER)
    login = next(e for e in live.daemon if e["eventType"] == "account_login")
    assert login["emailAddress"] == "alice@example.com"
