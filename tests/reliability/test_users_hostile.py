"""A visitor's cookie can never pause a site, and the user query can never write.

Issue 14, points 1 and 7, against the real stores: a key whose statement fails for
reasons of its own (a collation, an encoding, a function raising, a Redis key of
another type, a path out of the folder) makes that line unresolved, counted by
reason, and the next key resolves; only a store out of reach raises `ResolverError`.
Every users connection is read-only: a query that deletes or creates fails to.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy

from tests.conftest import Database
from tests.support.users import rejected
from tirreno_shipper.config import UsersConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.records import User
from tirreno_shipper.users import UserResolver

EMOJI = "\U0001f600"  # nginx logs it \xF0\x9F\x98\x80; the parser gives it back
REDIS_URL = "redis://127.0.0.1:6379/0"


def make(users: dict[str, Any]) -> UserResolver:
    return UserResolver("hostile-" + secrets.token_hex(4), UsersConfig.model_validate(users))


@pytest.mark.parametrize("charset", ["utf8mb3", "latin1"])
def test_mariadb_collation_error_is_one_unresolved_line(
    mariadb_engine: sqlalchemy.Engine, charset: str
) -> None:
    """A utf8mb3/latin1 session column compared with a 4-byte character raises 1267
    (illegal mix of collations): that key is nobody, the site goes on."""
    table = f"sess_{secrets.token_hex(4)}"
    with mariadb_engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {table} (k VARCHAR(64) CHARACTER SET {charset}, login VARCHAR(64))"
        )
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES ('good', 'alice')")
    try:
        url = mariadb_engine.url.set(query={"charset": "utf8mb4"})
        r = make(
            {
                "key": {"cookie": "sessionid"},
                "database": url.render_as_string(hide_password=False),
                "query": f"SELECT login AS user_name FROM {table} WHERE k = :key",
            }
        )
        assert r.resolve(EMOJI) is None
        assert rejected(r.site) == 1
        assert r.resolve("good") == User(user_name="alice")
        r.close()
    finally:
        with mariadb_engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {table}")


@pytest.fixture
def latin1_postgres(postgres_engine: sqlalchemy.Engine) -> Iterator[str]:
    name = f"latin1_{secrets.token_hex(4)}"
    with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    url = postgres_engine.url.set(database=name)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE sess (k TEXT, login TEXT)")
        conn.exec_driver_sql("INSERT INTO sess VALUES ('good', 'alice')")
    engine.dispose()
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")


def test_latin1_postgresql_encoding_error_is_one_unresolved_line(latin1_postgres: str) -> None:
    """A character LATIN1 lacks raises UnicodeEncodeError in the driver: counted, no pause."""
    r = make(
        {
            "key": {"cookie": "sessionid"},
            "database": latin1_postgres,
            "query": "SELECT login AS user_name FROM sess WHERE k = :key",
        }
    )
    assert r.resolve(EMOJI) is None
    assert rejected(r.site) == 1
    assert r.resolve("good") == User(user_name="alice")
    r.close()


def test_a_function_raising_on_the_key_is_one_unresolved_line(database: Database) -> None:
    """A query whose function fails on this value (a cast, JSON parsing) skips the line."""
    table = database.create("fn", "k VARCHAR(64), login VARCHAR(64)")
    database.execute(f"INSERT INTO {table} VALUES ('1', 'alice')")
    casts = {
        "sqlite": "json_extract(:key, '$') IS NOT NULL",
        "postgresql": "CAST(:key AS INTEGER) > 0",
        "mariadb": "JSON_EXTRACT(:key, '$') IS NOT NULL",
    }
    r = make(
        {
            "key": {"cookie": "sessionid"},
            "database": database.url,
            "query": f"SELECT login AS user_name FROM {table} WHERE k = :key AND "
            + casts[database.kind],
        }
    )
    for hostile in ("not json {", "'; DROP TABLE x; --", EMOJI):
        assert r.resolve(hostile) is None
    assert r.resolve("1") == User(user_name="alice")
    r.close()


def test_redis_wrong_type_is_one_unresolved_line_and_redis_down_pauses(
    unused_tcp_port: int,
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"t{secrets.token_hex(3)}:"
    client.hset(prefix + "hash", "a", "1")
    client.set(prefix + "good", '{"user_id": "alice"}')
    try:
        r = make(
            {
                "key": {"cookie": "sessionid"},
                "store": {"redis": {"url": REDIS_URL, "key": prefix + "{key}"}},
                "decode": {"json": {"path": "user_id"}},
            }
        )
        assert r.resolve("hash") is None  # WRONGTYPE
        assert rejected(r.site) == 1
        for hostile in (EMOJI, "\r\nFLUSHALL\r\n", "*", "x" * 4000):
            assert r.resolve(hostile) is None
        assert client.get(prefix + "good") is not None
        assert r.resolve("good") == User(user_name="alice")
        r.close()
    finally:
        client.delete(prefix + "hash", prefix + "good")
        client.close()
    down = make(
        {
            "key": {"cookie": "sessionid"},
            "store": {"redis": {"url": f"redis://127.0.0.1:{unused_tcp_port}/0"}},
            "decode": "json",
            "timeout": 1,
        }
    )
    with pytest.raises(ResolverError, match="redis"):
        down.resolve("k")


def test_file_store_keys_never_leave_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "sessions"
    folder.mkdir()
    (folder / "sess_good").write_text('user_id|s:5:"alice";')
    (tmp_path / "sess_secret").write_text('user_id|s:7:"mallory";')
    (folder / "sess_dir").mkdir()
    r = make(
        {
            "key": {"cookie": "PHPSESSID"},
            "store": {"file": f"{folder}/sess_{{key}}"},
            "decode": {"php_session": {"path": "user_id"}},
        }
    )
    for hostile in ("../sess_secret", "/../../sess_secret", "..", "a\x00b", "dir", EMOJI):
        assert r.resolve(hostile) is None
    assert r.resolve("good") == User(user_name="alice")


def test_undecodable_stored_values_are_counted(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    import pickle

    (folder / "evil").write_bytes(pickle.dumps(Path("/etc/passwd")))  # names a class
    (folder / "junk").write_bytes(b"\x80\x05junk")
    r = make(
        {
            "key": {"cookie": "sessionid"},
            "store": {"file": f"{folder}/{{key}}"},
            "decode": {"pickle": {"path": "_auth_user_id"}},
        }
    )
    assert r.resolve("evil") is None and r.resolve("junk") is None
    assert rejected(r.site, "undecodable") == 2


def test_the_user_query_cannot_write(database: Database) -> None:
    """DELETE, CREATE TABLE ... AS and INSERT through users.query all fail to write, on
    `check` and on a lookup: every users connection is read-only."""
    audit = database.create("audit", "note VARCHAR(64)")
    database.execute(f"INSERT INTO {audit} VALUES ('keep me')")
    before = database.table_names()
    writes = [
        f"DELETE FROM {audit} WHERE :key IS NOT NULL",
        f"CREATE TABLE {database.name('pwned')} AS SELECT :key AS user_name",
        f"INSERT INTO {audit} (note) SELECT :key",
    ]
    for query in writes:
        r = make({"key": {"cookie": "sessionid"}, "database": database.url, "query": query})
        with pytest.raises(ResolverError):
            r.check()
        assert r.resolve("k") is None
        r.close()
    assert database.rows(f"SELECT note FROM {audit}") == [("keep me",)]
    assert database.table_names() == before


def test_sqlite_read_only_holds_for_a_uri_the_operator_wrote(tmp_path: Path) -> None:
    """mode=rw in the operator's URI is still refused writes (PRAGMA query_only)."""
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (note TEXT)")
        conn.execute("INSERT INTO t VALUES ('keep me')")
    conn.close()
    r = make(
        {
            "key": {"cookie": "sessionid"},
            "database": f"sqlite:///file:{path}?mode=rw&uri=true",
            "query": "DELETE FROM t WHERE :key IS NOT NULL",
        }
    )
    assert r.resolve("k") is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT note FROM t").fetchall() == [("keep me",)]
    conn.close()


def test_the_held_connection_is_pinged_after_idle_time_and_replaced_after_an_error(
    postgres_engine: sqlalchemy.Engine,
) -> None:
    """One connection serves every lookup; one the server closed is noticed by the ping
    after idle time (the lookup succeeds), or fails one lookup and is replaced."""
    now = [1000.0]
    url = postgres_engine.url.render_as_string(hide_password=False)
    config = UsersConfig.model_validate(
        {
            "key": {"cookie": "sessionid"},
            "database": url,
            "query": "SELECT :key AS user_name",
        }
    )
    r = UserResolver("held-" + secrets.token_hex(4), config, clock=lambda: now[0])
    assert r._db is not None

    def backend() -> int:
        assert r._db is not None
        _, row = r._db.execute(sqlalchemy.text("SELECT pg_backend_pid() AS pid"), {}, "")
        assert row is not None
        return int(row["pid"])

    def terminate(pid: int) -> None:
        with postgres_engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.commit()

    assert r.resolve("a") == User(user_name="a")
    first = backend()
    assert r.resolve("b") == User(user_name="b") and backend() == first  # held
    terminate(first)
    now[0] += 60  # idle: pinged before use, and replaced
    assert r.resolve("c") == User(user_name="c")
    second = backend()
    assert second != first
    terminate(second)
    with pytest.raises(ResolverError):  # busy: no ping; the lookup fails once
        r.resolve("d")
    assert r.resolve("d") == User(user_name="d")
    r.close()
