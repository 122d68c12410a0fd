"""Express 5 + express-session + connect-pg-simple + passport behind nginx,
`users.framework: express`.

apps/express/app.js (its packages pinned by package-lock.json, installed with
``npm ci`` by scripts/test.sh) keeps sessions in a new PostgreSQL database's
``session`` table and its users in ``users``. The cookie ``connect.sid`` cannot be
logged as ``$cookie_connect.sid`` (nginx ends the variable name at the dot): nginx
logs the whole ``Cookie`` header (``$http_cookie``) and the response's
``$sent_http_set_cookie``, and the shipper picks ``connect.sid`` out of both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import psycopg
import pytest

from tests.support.frameworks import (
    APPS,
    App,
    ProxyNginx,
    assert_credited,
    nginx_format,
    postgres_database,
    run_live,
    serving,
    tamper,
)

pytestmark = pytest.mark.integration

APP = APPS / "express"
SECRET = "express-live-test-" + secrets.token_hex(16)
USER, PASSWORD = "alice.express", "correct horse battery"
LOG_FORMAT = nginx_format("$http_cookie", "$sent_http_set_cookie")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A new database with the app's users table (scrypt hashes, as app.js checks them)."""
    with postgres_database("fw_express_") as name:
        salt = secrets.token_hex(8)
        digest = hashlib.scrypt(
            PASSWORD.encode(), salt=salt.encode(), n=16384, r=8, p=1, dklen=32
        ).hex()
        dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE users (id serial PRIMARY KEY, username text UNIQUE NOT NULL,"
                " salt text NOT NULL, password_hash text NOT NULL)"
            )
            # Another user first: the query must pick passport.user's row.
            conn.execute("INSERT INTO users VALUES (1, 'bob', '', '')")
            conn.execute(
                "INSERT INTO users VALUES (7, %s, %s, %s)",
                (USER, salt, digest),
            )
        yield name


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, database: str
) -> Iterator[tuple[ProxyNginx, Path]]:
    node = shutil.which("node")
    if node is None or not (APP / "node_modules" / "express").is_dir():
        pytest.fail(
            f"node or {APP}/node_modules is missing: scripts/test.sh installs them "
            "(apt-get install nodejs npm; cd tests/integration/apps/express && npm ci)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("express")
    app = App(
        "express",
        [node, str(APP / "app.js")],
        workdir,
        env={"APP_DB": database, "APP_SECRET": SECRET},
        cwd=APP,
    )
    app.env["PORT"] = str(app.port)
    with serving(app, workdir / "nginx", LOG_FORMAT) as nginx:
        yield nginx, workdir


def _signed(sid: str, secret: str) -> str:
    """express-session's cookie value for ``sid`` signed with ``secret`` (URL-encoded)."""
    mac = hmac.new(secret.encode(), sid.encode(), hashlib.sha256).digest()
    return quote("s:" + sid + "." + base64.b64encode(mac).decode().rstrip("="), safe="")


def _forged(session: str) -> list[str]:
    sid = unquote(session)[2:].split(".")[0]
    assert _signed(sid, SECRET) == session, "the test's signing is express-session's"
    return [
        tamper(session),  # one character of the sid or signature changed
        _signed(sid, "another-secret"),  # the live sid, signed with another secret
        _signed(sid[:-1] + ("A" if sid[-1] != "A" else "B"), "another-secret"),
    ]


def test_express_pg_session_names_the_user_from_login_to_logout(
    site: tuple[ProxyNginx, Path], database: str
) -> None:
    """connect.sid unsealed with the secret → session.sess.passport.user (7) → users:
    the login line (its Set-Cookie), the pages and the logout name alice.express;
    a tampered cookie or one signed with another secret finds nobody."""
    nginx, workdir = site
    live = run_live(
        workdir / "run",
        nginx,
        cookie="connect.sid",
        username=USER,
        password=PASSWORD,
        log_format=LOG_FORMAT,
        users={
            "framework": "express",
            "database": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            "secret": SECRET,
            "query": "SELECT username AS user_name FROM users WHERE id = :user_id",
        },
        forged=_forged,
    )
    assert_credited(live, USER)
