"""Each framework preset finds the user behind the cookies the real frameworks issued.

The cookies, rows, Redis values and session files are the golden fixtures recorded
from the frameworks themselves (tests/fixtures/frameworks/); the tables are the
frameworks' own, created here in a SQLite file (WordPress: in a MariaDB database of
its own, as its preset's SQL is MySQL's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy
from structlog.testing import capture_logs

from tests.conftest import Database
from tests.support.frameworks import postgres_database
from tests.support.users import cookie_request as request
from tests.support.users import rejected
from tirreno_shipper.config import Unseal, UsersConfig
from tirreno_shipper.records import User
from tirreno_shipper.users import UserResolver
from tirreno_shipper.users.presets import PRESETS

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks"
REDIS_URL = "redis://127.0.0.1:6379/0"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / f"{name}.json").read_text())
    return data


def sqlite_db(tmp_path: Path, *statements: str, params: list[tuple[str, tuple[Any, ...]]]) -> str:
    path = tmp_path / f"app-{secrets.token_hex(3)}.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
        for statement, values in params:
            conn.execute(statement, values)
    conn.close()
    return f"sqlite:///{path}"


def resolver(users: dict[str, Any]) -> UserResolver:
    site = "preset-" + secrets.token_hex(4)
    return UserResolver(site, UsersConfig.model_validate(users))


@pytest.fixture
def redis_keys() -> Iterator[list[str]]:
    """Redis keys a test sets, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    keys: list[str] = []
    yield keys
    if keys:
        client.delete(*keys)
    client.close()


def redis_set(keys: list[str], name: str, value: bytes) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.set(name, value)
    client.close()
    keys.append(name)


def django_auth_user(user: dict[str, Any]) -> tuple[list[str], list[tuple[str, tuple[Any, ...]]]]:
    return (
        [
            "CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username TEXT, email TEXT, "
            "first_name TEXT, last_name TEXT, date_joined TEXT)"
        ],
        [
            (
                "INSERT INTO auth_user VALUES (?, ?, ?, '', '', '2024-01-02 03:04:05')",
                (user["id"], user["username"], user["email"]),
            )
        ],
    )


def django_db(tmp_path: Path, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The recorded db-backend session in a django_session table, with its auth_user:
    the database URL and the session."""
    session = next(s for s in data["sessions"] if s["session_engine"].endswith(".db"))
    row = session["django_session_row"]
    tables, rows = django_auth_user(data["user"])
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE django_session (session_key TEXT PRIMARY KEY, session_data TEXT, "
        "expire_date TEXT)",
        *tables,
        params=[
            *rows,
            (
                "INSERT INTO django_session VALUES (?, ?, '2030-01-01')",
                (row["session_key"], row["session_data"]),
            ),
        ],
    )
    return url, session


def test_django_db_sessions(tmp_path: Path) -> None:
    """framework: django, as recorded: sessionid → django_session (signed, zlib) → auth_user."""
    data = fixture("django")
    url, session = django_db(tmp_path, data)
    r = resolver({"framework": "django", "database": url, "secret": data["secret_key"]})
    key = r.key_for(request(session["cookie"]))
    assert key is not None and key == session["cookie"]
    assert r.resolve(key) == User(
        user_name="alice", email_address="alice@example.com", user_created="2024-01-02 03:04:05"
    )
    # The same row read with another SECRET_KEY: the session data does not verify.
    other = resolver({"framework": "django", "database": url, "secret": "not-the-key"})
    assert other.resolve(key) is None
    assert rejected(other.site, "undecodable") == 1


def test_django_cache_sessions_in_redis(tmp_path: Path, redis_keys: list[str]) -> None:
    """framework: django with the cache backend on Redis: a pickled dict, plain data only."""
    data = fixture("django")
    session = next(s for s in data["sessions"] if s["session_engine"].endswith(".cache"))
    prefix = f"t{secrets.token_hex(3)}"
    redis_set(redis_keys, prefix + session["redis_key"], bytes.fromhex(session["redis_value_hex"]))
    tables, rows = django_auth_user(data["user"])
    url = sqlite_db(tmp_path, *tables, params=rows)
    r = resolver(
        {
            "framework": "django",
            "database": url,
            "secret": data["secret_key"],
            "store": {
                "redis": {
                    "url": REDIS_URL,
                    "key": prefix + ":1:django.contrib.sessions.cache{key}",
                }
            },
        }
    )
    assert r.config.decode is not None and r.config.decode.format == "pickle"
    user = r.resolve(r.key_for(request(session["cookie"])) or "")
    assert user is not None and user.user_name == "alice"
    assert r.resolve("no-such-session") is None


def test_express_connect_pg_simple_row_and_connect_redis(
    tmp_path: Path, redis_keys: list[str]
) -> None:
    """framework: express: connect.sid verified with the secret, the sid's JSON session
    (a table row or a Redis value), passport.user, then the application's users table."""
    data = fixture("express")
    pg, red = data["sessions"]
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE session (sid TEXT PRIMARY KEY, sess TEXT, expire TEXT)",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT, email TEXT)",
        params=[
            (
                "INSERT INTO session VALUES (?, ?, '2030-01-01')",
                (pg["sid"], json.dumps(pg["row"]["sess"])),
            ),
            ("INSERT INTO users VALUES (7, 'alice', 'alice@example.com')", ()),
        ],
    )
    query = "SELECT username AS user_name, email FROM users WHERE id = :user_id"
    r = resolver(
        {"framework": "express", "database": url, "secret": data["secret"], "query": query}
    )
    assert r.key_for(request(pg["cookie"])) == pg["sid"]
    assert r.resolve(pg["sid"]) == User(user_name="alice", email_address="alice@example.com")
    # Tampered: another session id under the same signature is forged, never looked up.
    forged = pg["cookie"].replace(pg["sid"][:4], "AAAA", 1)
    assert r.key_for(request(forged)) is None
    assert rejected(r.site, "forged") == 1

    prefix = f"t{secrets.token_hex(3)}:"
    redis_set(redis_keys, prefix + red["redis_key"], red["redis_value"].encode())
    rr = resolver(
        {
            "framework": "express",
            "secret": data["secret"],
            "store": {"redis": {"url": REDIS_URL, "key": prefix + "sess:{key}"}},
        }
    )
    # No query: the id found is the user name.
    assert rr.resolve(rr.key_for(request(red["cookie"])) or "") == User(user_name="7")


def test_flask_signed_cookie_redis_msgpack_and_sql(tmp_path: Path, redis_keys: list[str]) -> None:
    """framework: flask: the signed cookie session (Flask-Login's _user_id), and
    Flask-Session's msgpack in Redis and in its sessions table."""
    data = fixture("flask")
    cookie, in_redis, in_sql = data["sessions"]
    r = resolver({"framework": "flask", "secret": data["secret_key"]})
    assert r.resolve(r.key_for(request(cookie["cookie"])) or "") == User(user_name="42")
    assert r.key_for(request(cookie["cookie"][:-3] + "AAA")) is None
    assert rejected(r.site, "forged") == 1

    prefix = f"t{secrets.token_hex(3)}:"
    redis_set(
        redis_keys, prefix + in_redis["redis_key"], bytes.fromhex(in_redis["redis_value_hex"])
    )
    rr = resolver(
        {
            "framework": "flask",
            "store": {"redis": {"url": REDIS_URL, "key": prefix + "session:{key}"}},
        }
    )
    assert rr.config.key.steps() == []  # Flask-Session's id is not signed
    assert rr.resolve(rr.key_for(request(in_redis["cookie"])) or "") == User(user_name="42")

    url = sqlite_db(
        tmp_path,
        "CREATE TABLE sessions (id INTEGER PRIMARY KEY, session_id TEXT, data BLOB, expiry TEXT)",
        params=[
            (
                "INSERT INTO sessions (session_id, data) VALUES (?, ?)",
                (in_sql["row"]["session_id"], bytes.fromhex(in_sql["row"]["data_hex"])),
            )
        ],
    )
    rs = resolver({"framework": "flask", "database": url, "store": "sql"})
    assert rs.resolve(in_sql["cookie"]) == User(user_name="42")


def test_laravel_database_and_file_sessions(tmp_path: Path) -> None:
    """framework: laravel: the encrypted cookie's session id → sessions.user_id → users;
    with the file driver, the serialize()d attributes' login_web_* key."""
    data = fixture("laravel")
    by_driver = {s["driver"]: s for s in data["sessions"]}
    in_file, in_db = by_driver["file"], by_driver["database"]
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id INTEGER, payload TEXT)",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, created_at TEXT)",
        params=[
            ("INSERT INTO sessions VALUES (?, 5, '')", (in_db["session_id"],)),
            ("INSERT INTO users VALUES (5, 'alice', 'alice@example.com', '2024-01-02')", ()),
        ],
    )
    alice = User(
        user_name="alice@example.com",
        email_address="alice@example.com",
        full_name="alice",
        user_created="2024-01-02 00:00:00",
    )
    r = resolver({"framework": "laravel", "database": url, "secret": data["app_key"]})
    assert r.key_for(request(in_db["cookie"])) == in_db["session_id"]
    assert r.resolve(in_db["session_id"]) == alice
    other = resolver(
        {
            "framework": "laravel",
            "database": url,
            "secret": "base64:" + base64.b64encode(b"k" * 32).decode(),
        }
    )
    assert other.key_for(request(in_db["cookie"])) is None  # encrypted with another APP_KEY

    folder = tmp_path / "sessions"
    folder.mkdir()
    (folder / in_file["session_id"]).write_text(in_file["session_file_content"])
    rf = resolver(
        {
            "framework": "laravel",
            "database": url,
            "secret": data["app_key"],
            "store": {"file": f"{folder}/{{key}}"},
        }
    )
    assert rf.resolve(rf.key_for(request(in_file["cookie"])) or "") == alice


def test_php_file_sessions(tmp_path: Path) -> None:
    """framework: php: PHPSESSID → sess_<id> in PHP's session format → user_id."""
    data = fixture("php")
    (tmp_path / data["session_file"]).write_text(data["session_file_content"])
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE members (id INTEGER PRIMARY KEY, login TEXT)",
        params=[("INSERT INTO members VALUES (9, 'alice')", ())],
    )
    r = resolver(
        {
            "framework": "php",
            "store": {"file": f"{tmp_path}/sess_{{key}}"},
            "database": url,
            "query": "SELECT login AS user_name FROM members WHERE id = :user_id",
        }
    )
    assert r.resolve(r.key_for(request(data["cookie"])) or "") == User(user_name="alice")
    # fields taken from the session itself, no database
    rd = resolver(
        {
            "framework": "php",
            "store": {"file": f"{tmp_path}/sess_{{key}}"},
            "decode": {"php_session": {"fields": {"user_name": "username"}}},
        }
    )
    assert rd.resolve(data["cookie"]) == User(user_name="alice")
    for hostile in ("../../etc/passwd", "..", "a/b", "x\x00y"):
        assert rd.resolve(hostile) is None


def test_rails_cookie_store(tmp_path: Path) -> None:
    """framework: rails: the encrypted cookie store's session holds user_id."""
    data = fixture("rails")
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, created_at TEXT)",
        params=[("INSERT INTO users VALUES (3, 'alice@example.com', '2024-01-02')", ())],
    )
    for recording in data["recordings"]:
        cookie = next(c for c in recording["cookies"] if c["jar"] == "encrypted")
        r = resolver(
            {
                "framework": "rails",
                "key": {"cookie": cookie["cookie_name"]},
                "database": url,
                "secret": data["secret_key_base"],
            }
        )
        user = r.resolve(r.key_for(request(cookie["cookie"])) or "")
        assert user is not None and user.user_name == "alice@example.com", recording[
            "key_derivation"
        ]


def rails_auth_db(tmp_path: Path, data: dict[str, Any]) -> str:
    """The generator's users and sessions tables as ActiveRecord created them, with the
    rows the recorded logins left (Bob's session was destroyed at his logout)."""
    return sqlite_db(
        tmp_path,
        *data["schema"],
        params=[
            (
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            for table in ("users", "sessions")
            for row in data[table]
        ],
    )


def rails_auth_users(tmp_path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A users section with framework: rails_auth on the recorded database and secret."""
    return {
        "framework": "rails_auth",
        "database": rails_auth_db(tmp_path, data),
        "secret": data["secret_key_base"],
    }


def _flip_signature(cookie: str) -> str:
    """The cookie with its HMAC's last hex digit changed."""
    return cookie[:-1] + ("0" if cookie[-1] != "0" else "1")


def test_rails_auth_sessions(tmp_path: Path) -> None:
    """framework: rails_auth: the signed session_id → the sessions row → users.email_address."""
    data = fixture("rails_auth")
    users = rails_auth_users(tmp_path, data)
    r = resolver(users)
    alice, bob = data["logins"]
    key = r.key_for(request(alice["cookie"]))
    assert key == str(alice["session_row_id"])
    (alice_row,) = [u for u in data["users"] if u["email_address"] == alice["email_address"]]
    assert r.resolve(key) == User(
        user_name="alice@example.com",
        email_address="alice@example.com",
        user_created=alice_row["created_at"][:19],
    )
    # Bob logged out: his cookie still verifies, but his row is gone.
    bob_key = r.key_for(request(bob["cookie"]))
    assert bob_key == str(bob["session_row_id"]) and r.resolve(bob_key) is None
    # The login line: the request has no cookie yet, the response sets it.
    assert r.key_for(request(None, sent_http_set_cookie=alice["set_cookie"])) == key

    # Anyone can send session_id=1: unsigned, tampered or signed with another secret, it
    # finds nobody and is counted as forged.
    for hostile in ("1", f"{key}--", _flip_signature(alice["cookie"])):
        assert r.key_for(request(hostile)) is None
    assert rejected(r.site, "forged") == 3
    other = resolver({**users, "secret": "another-applications-secret-key-base" * 3})
    assert other.key_for(request(alice["cookie"])) is None
    assert rejected(other.site, "forged") == 1


def test_rails_auth_sessions_as_rails_8_writes_them(tmp_path: Path) -> None:
    """The cookies derived from Rails 8's source: a UUID id, an HMAC-SHA256 signature."""
    derived = json.loads((FIXTURES / "rails_auth" / "rails8.json").read_text())
    uuid_id = next(v["value"] for v in derived["vectors"] if isinstance(v["value"], str))
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email_address TEXT, created_at TEXT)",
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id INTEGER)",
        params=[
            ("INSERT INTO users VALUES (1, 'alice@example.com', '2024-01-02 03:04:05')", ()),
            ("INSERT INTO users VALUES (2, 'carol@example.com', '2024-01-02 03:04:05')", ()),
            ("INSERT INTO sessions VALUES ('1', 1)", ()),
            ("INSERT INTO sessions VALUES (?, 2)", (uuid_id,)),
        ],
    )
    r = resolver({"framework": "rails_auth", "database": url, "secret": derived["secret_key_base"]})
    for vector in derived["vectors"]:
        user = r.resolve(r.key_for(request(vector["cookie"])) or "")
        expected = "carol@example.com" if vector["value"] == uuid_id else "alice@example.com"
        assert user is not None and user.user_name == expected, vector["name"]


def test_rails_auth_query_on_each_database(database: Database) -> None:
    """The preset's query binds the cookie's text to a bigint id on SQLite, PostgreSQL and
    MariaDB alike; a signed UUID against that column finds nobody, and no pause."""
    data = fixture("rails_auth")
    derived = json.loads((FIXTURES / "rails_auth" / "rails8.json").read_text())
    ts = database.timestamp_type
    users = database.create(
        "users", f"id BIGINT PRIMARY KEY, email_address VARCHAR(255), created_at {ts}"
    )
    sessions = database.create("sessions", "id BIGINT PRIMARY KEY, user_id BIGINT")
    database.execute(f"INSERT INTO {users} VALUES (1, 'alice@example.com', '2024-01-02 03:04:05')")
    database.execute(f"INSERT INTO {sessions} VALUES (1, 1)")
    # The generator's table names made unique to this test, the preset's query otherwise.
    query = str(PRESETS["rails_auth"]["query"])
    query = query.replace("FROM sessions ", f"FROM {sessions} ").replace(
        "JOIN users ", f"JOIN {users} "
    )
    secret = data["secret_key_base"]
    r = resolver(
        {"framework": "rails_auth", "database": database.url, "secret": secret, "query": query}
    )
    user = r.resolve(r.key_for(request(data["logins"][0]["cookie"])) or "")
    assert user is not None and user.email_address == "alice@example.com"
    uuid_cookie = next(v["cookie"] for v in derived["vectors"] if isinstance(v["value"], str))
    assert r.resolve(r.key_for(request(uuid_cookie)) or "") is None


def test_rails_auth_cookie_renamed(tmp_path: Path) -> None:
    """key.cookie renames the cookie and the purpose Rails signed into it with it."""
    data = fixture("rails_auth")
    users = rails_auth_users(tmp_path, data)
    r = resolver({**users, "key": {"cookie": "auth_session"}})
    # session_id's cookie replayed as another cookie: its purpose is cookie.session_id.
    assert r.key_for(request(data["logins"][0]["cookie"])) is None
    assert rejected(r.site, "forged") == 1
    step = UsersConfig.model_validate({**users, "key": {"cookie": "auth_session"}}).key.steps()[1]
    assert isinstance(step, Unseal) and step.options()["cookie_name"] == "auth_session"


def test_rails_marshal_cookie_is_undecodable_and_said_once(tmp_path: Path) -> None:
    """A Marshal-serialized cookie (cookies_serializer :marshal) finds nobody, is counted
    undecodable, and the log says once what the application must change."""
    data = fixture("rails_auth")
    secret = data["secret_key_base"]
    # The signed jar's envelope around Marshal's 11, signed as Rails 7+ signs.
    marshal = base64.b64encode(b"\x04\x08i\x10").decode()
    envelope = {"_rails": {"message": marshal, "exp": None, "pur": "cookie.session_id"}}
    body = base64.b64encode(json.dumps(envelope).encode())
    key = hashlib.pbkdf2_hmac("sha256", secret.encode(), b"signed cookie", 1000, 64)
    cookie = f"{body.decode()}--{hmac.new(key, body, 'sha1').hexdigest()}"
    r = resolver({"framework": "rails_auth", "database": "sqlite://", "secret": secret})
    with capture_logs() as logs:
        assert r.key_for(request(cookie)) is None
        assert r.key_for(request(cookie)) is None
    assert rejected(r.site, "undecodable") == 2
    (said,) = [e for e in logs if e["event"] == "resolver_key_rejected"]
    assert "Marshal-serialized" in said["error"] and "set it to :json" in said["error"]
    assert cookie not in str(said) and secret not in str(said)


def test_rotated_secret_still_resolves(tmp_path: Path) -> None:
    """users.previous_secrets: cookies and session rows signed with a rotated-out secret
    still find their user, as the application still accepts them; nothing else does."""
    rails = fixture("rails_auth")
    new_secret = "the-secret-key-base-after-the-rotation-" * 3
    rails_users = {**rails_auth_users(tmp_path, rails), "secret": new_secret}
    cookie = rails["logins"][0]["cookie"]
    rotated = resolver({**rails_users, "previous_secrets": ["older-one", rails["secret_key_base"]]})
    user = rotated.resolve(rotated.key_for(request(cookie)) or "")
    assert user is not None and user.user_name == "alice@example.com"
    forgotten = resolver(rails_users)
    assert forgotten.key_for(request(cookie)) is None
    assert rejected(forgotten.site, "forged") == 1

    # Django reads django_session.session_data with SECRET_KEY_FALLBACKS too (the decoder).
    django = fixture("django")
    url, session = django_db(tmp_path, django)
    keyfile = tmp_path / "fallbacks"
    keyfile.write_text(f"{django['secret_key']}\n")
    r = resolver(
        {
            "framework": "django",
            "database": url,
            "secret": new_secret,
            "previous_secrets_file": str(keyfile),
        }
    )
    user = r.resolve(session["cookie"])
    assert user is not None and user.user_name == "alice"


def test_unseal_steps_bind_the_cookie_the_key_is_read_from() -> None:
    """Laravel's prefix and Rails' purpose name the cookie: the operator's, when renamed."""

    def unseal_options(users: dict[str, Any]) -> dict[str, str]:
        steps = UsersConfig.model_validate({"secret": "s" * 32, **users}).key.steps()
        (step,) = [s for s in steps if isinstance(s, Unseal)]
        return step.options()

    laravel = {"framework": "laravel", "database": "sqlite://"}
    assert unseal_options(laravel)["cookie_name"] == "laravel_session"
    # APP_NAME=My Shop names the cookie my_shop_session.
    renamed = unseal_options({**laravel, "key": {"cookie": "my_shop_session"}})
    assert renamed["cookie_name"] == "my_shop_session"
    # Read from a header: no cookie name to bind, the scheme's default stands.
    assert "cookie_name" not in unseal_options({**laravel, "key": {"header": "X-Session"}})
    rails = unseal_options({**laravel, "framework": "rails", "key": {"cookie": "_shop_session"}})
    assert rails["cookie_name"] == "_shop_session"


def test_spring_session_jdbc(tmp_path: Path) -> None:
    """framework: spring: SESSION is the base64 of the id; PRINCIPAL_NAME names the user."""
    sid = "6f1c1a2e-1f0b-4a4e-9b2b-3d2f4c5e6a7b"
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE SPRING_SESSION (PRIMARY_ID TEXT, SESSION_ID TEXT, PRINCIPAL_NAME TEXT)",
        params=[("INSERT INTO SPRING_SESSION VALUES ('p', ?, 'alice')", (sid,))],
    )
    r = resolver({"framework": "spring", "database": url})
    cookie = base64.b64encode(sid.encode()).decode()
    assert r.key_for(request(cookie)) == sid
    assert r.resolve(sid) == User(user_name="alice")
    assert r.key_for(request("%%%not base64")) is None


def test_spring_session_jdbc_on_postgresql() -> None:
    """framework: spring on PostgreSQL, in a database of its own holding SPRING_SESSION as
    Spring Session JDBC's schema-postgresql.sql creates it (unquoted, so folded to lower
    case; SESSION_ID CHAR(36)). Not a recording: Spring could not be built here (no Maven
    repository), so the cookie is made as DefaultCookieSerializer makes it (standard
    base64 of the id). A session from before the login (PRINCIPAL_NAME NULL), another id
    and a NUL byte in the decoded key all resolve to nobody without pausing the site."""
    sid, anonymous = str(uuid.uuid4()), str(uuid.uuid4())
    with postgres_database("spring_") as name:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname=name) as conn:
            conn.execute(
                "CREATE TABLE SPRING_SESSION (SESSION_ID CHAR(36) NOT NULL, "
                "CREATION_TIME BIGINT NOT NULL, LAST_ACCESS_TIME BIGINT NOT NULL, "
                "MAX_INACTIVE_INTERVAL INT NOT NULL, PRINCIPAL_NAME VARCHAR(100), "
                "CONSTRAINT SPRING_SESSION_PK PRIMARY KEY (SESSION_ID))"
            )
            conn.execute(
                "INSERT INTO SPRING_SESSION VALUES (%s, 1, 1, 1800, 'alice'), "
                "(%s, 1, 1, 1800, NULL)",
                (sid, anonymous),
            )
        url = f"postgresql+psycopg://postgres@127.0.0.1/{name}"
        r = resolver({"framework": "spring", "database": url})
        try:
            cookie = base64.b64encode(sid.encode()).decode()
            assert not cookie.endswith("=")  # 36 characters: no padding to lose in a log
            assert r.resolve(r.key_for(request(cookie)) or "") == User(user_name="alice")
            assert r.resolve(anonymous) is None
            other = base64.b64encode(str(uuid.uuid4()).encode()).decode()
            assert r.resolve(r.key_for(request(other)) or "") is None
            # PostgreSQL refuses NUL in text: the key chain drops it; given to the store
            # anyway, it is this key's error (counted), not the database's (no pause).
            assert r.key_for(request(base64.b64encode(b"a\x00b").decode())) is None
            assert r.resolve("a\x00b") is None
            assert rejected(r.site, "key_error") == 1
        finally:
            r.close()


@pytest.fixture
def wordpress_db(mariadb_engine: sqlalchemy.Engine) -> Iterator[str]:
    """A MariaDB database of its own, holding WordPress's two tables as it creates them."""
    data = fixture("wordpress")
    name = f"wp_{secrets.token_hex(4)}"
    with mariadb_engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = mariadb_engine.url.set(database=name)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE wp_users (ID BIGINT PRIMARY KEY, user_login VARCHAR(60), "
            "user_email VARCHAR(100), display_name VARCHAR(250), user_registered DATETIME)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE wp_usermeta (umeta_id BIGINT AUTO_INCREMENT PRIMARY KEY, "
            "user_id BIGINT, meta_key VARCHAR(255), meta_value LONGTEXT, KEY (meta_key))"
        )
        conn.exec_driver_sql(
            "INSERT INTO wp_users VALUES (1, 'alice', 'alice@example.com', 'Alice', "
            "'2024-01-02 03:04:05')"
        )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO wp_usermeta (user_id, meta_key, meta_value) "
                "VALUES (1, 'session_tokens', :v)"
            ),
            {"v": data["usermeta_session_tokens"]},
        )
    engine.dispose()
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with mariadb_engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}")


def test_wordpress_logged_in_cookie(wordpress_db: str) -> None:
    """framework: wordpress: the wordpress_logged_in_<hash> cookie (a name pattern):
    a Cookie header; its token's sha256 in session_tokens names the user; a forged
    login name with no live token finds nobody."""
    data = fixture("wordpress")
    r = resolver({"framework": "wordpress", "database": wordpress_db})
    key = r.key_for(request(data["cookie"]))
    assert key is not None and key == data["token_sha256"]
    assert r.resolve(key) == User(
        user_name="alice",
        email_address="alice@example.com",
        full_name="Alice",
        user_created="2024-01-02 03:04:05",
    )
    forged = data["cookie"].replace(data["token"], "x" * 43)
    assert r.resolve(r.key_for(request(forged)) or "") is None


def test_laravel_redis_sessions_serialized_twice(tmp_path: Path, redis_keys: list[str]) -> None:
    """framework: laravel, store: redis: the recorded value is serialize()d twice
    (``s:239:"a:4:{...}";``); the php_session decoder unwraps the outer string once."""
    data = fixture("laravel")
    in_redis = next(s for s in data["sessions"] if s["driver"] == "redis")
    assert in_redis["redis_value"].startswith("s:")
    prefix = f"t{secrets.token_hex(3)}"
    redis_set(redis_keys, prefix + in_redis["redis_key"], in_redis["redis_value"].encode())
    url = sqlite_db(
        tmp_path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, created_at TEXT)",
        params=[("INSERT INTO users VALUES (5, 'alice', 'alice@example.com', NULL)", ())],
    )
    r = resolver(
        {
            "framework": "laravel",
            "database": url,
            "secret": data["app_key"],
            "store": {
                "redis": {"url": REDIS_URL, "key": prefix + "laravel_database_laravel_cache:{key}"}
            },
        }
    )
    user = r.resolve(r.key_for(request(in_redis["cookie"])) or "")
    assert user is not None and user.user_name == "alice@example.com"
    # Wrapped twice, or a length that does not match: no session.
    wrapped = in_redis["redis_value"]
    for bad in (f's:{len(wrapped)}:"{wrapped}";', wrapped.replace("s:", "s:9", 1)):
        redis_set(redis_keys, prefix + "laravel_database_laravel_cache:bad", bad.encode())
        assert r.resolve("bad") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_logout_is_credited_after_the_session_is_gone_from_any_store(
    tmp_path: Path, redis_keys: list[str]
) -> None:
    """The user last seen with a session is remembered (a day): the logout line, read
    after the application deleted the Redis value or the session file, still names them."""
    prefix = f"t{secrets.token_hex(3)}:"
    redis_set(redis_keys, prefix + "sess:k1", b'{"passport": {"user": "alice"}}')
    folder = tmp_path / "php"
    folder.mkdir()
    (folder / "sess_k1").write_text('user_id|s:5:"alice";')
    stores = {
        "redis": {"redis": {"url": REDIS_URL, "key": prefix + "sess:{key}"}},
        "file": {"file": f"{folder}/sess_{{key}}"},
    }
    decoders = {
        "redis": {"json": {"path": "passport.user"}},
        "file": {"php_session": {"path": "user_id"}},
    }
    for kind, store in stores.items():
        clock = Clock()
        config = UsersConfig.model_validate(
            {"key": {"cookie": "sessionid"}, "store": store, "decode": decoders[kind]}
        )
        r = UserResolver(f"logout-{kind}", config, clock=clock)
        assert r.resolve("k1") == User(user_name="alice")
        if kind == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            client.delete(prefix + "sess:k1")
            client.close()
        else:
            (folder / "sess_k1").unlink()
        clock.now += 3600  # past cache_ttl: the store is asked again, and has nothing
        assert r.resolve("k1") == User(user_name="alice"), kind
        clock.now += 2 * 86400
        assert r.resolve("k1") is None, kind
