"""The user resolver against real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import Database
from tirreno_shipper.config import UsersConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.metrics import REGISTRY
from tirreno_shipper.records import Request, User
from tirreno_shipper.users import (
    LAST_SEEN_TTL,
    MAX_KEY_CHARS,
    UserResolver,
    anonymous_user,
    map_row,
    mask_ip,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def users_config(database: str, query: str, **over: Any) -> UsersConfig:
    data: dict[str, Any] = {"key": {"cookie": "sessionid"}, "database": database, "query": query}
    data.update(over)
    return UsersConfig.model_validate(data)


def site_name() -> str:
    return "t" + secrets.token_hex(4)


def cache_count(site: str, result: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "tirreno_shipper_resolver_cache_total", {"site": site, "result": result}
        )
        or 0.0
    )


def error_count(site: str) -> float:
    return REGISTRY.get_sample_value("tirreno_shipper_resolver_errors_total", {"site": site}) or 0.0


def request(**kw: Any) -> Request:
    base: dict[str, Any] = {
        "remote_addr": "203.0.113.7",
        "time": "2024-05-01 10:00:00",
        "method": "GET",
        "uri": "/",
        "path": "/",
        "status": 200,
    }
    base.update(kw)
    return Request(**base)


MakeResolver = Callable[..., UserResolver]


@pytest.fixture
def make_resolver() -> Iterator[MakeResolver]:
    made: list[UserResolver] = []

    def make(
        database: str,
        query: str,
        *,
        clock: Callable[[], float] | None = None,
        site: str | None = None,
        **over: Any,
    ) -> UserResolver:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        resolver = UserResolver(
            site or site_name(), users_config(database, query, **over), **kwargs
        )
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        resolver.close()


class Django:
    """A django-user-sessions style schema: a session table with a user_id column."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = db.create(
            "auth_user",
            "id INTEGER PRIMARY KEY, username VARCHAR(150) NOT NULL, email VARCHAR(254), "
            f"first_name VARCHAR(150), last_name VARCHAR(150), date_joined {db.timestamp_type}",
        )
        self.sessions = db.create(
            "django_session",
            "session_key VARCHAR(40) PRIMARY KEY, session_data TEXT, user_id INTEGER",
        )
        db.execute(
            f"INSERT INTO {self.users} (id, username, email, first_name, last_name, date_joined) "
            "VALUES (:id, :u, :e, :f, :l, :d)",
            [
                {
                    "id": 1,
                    "u": "alice",
                    "e": "alice@example.com",
                    "f": "Alice",
                    "l": "Smith",
                    "d": "2021-03-04 05:06:07",
                },
                {
                    "id": 2,
                    "u": "Zoë Łukasiewicz",
                    "e": None,
                    "f": "Zoë",
                    "l": "Łukasiewicz",
                    "d": "2022-12-31 23:59:59",
                },
                {"id": 3, "u": "山田", "e": None, "f": None, "l": None, "d": None},
            ],
        )
        db.execute(
            f"INSERT INTO {self.sessions} (session_key, session_data, user_id) "
            "VALUES (:k, 'x', :u)",
            [{"k": "k-alice", "u": 1}, {"k": "k-zoe", "u": 2}, {"k": "k-yamada", "u": 3}],
        )
        self.query = (
            "SELECT u.username AS user_name, u.email AS email_address, u.first_name, u.last_name, "
            "u.date_joined AS user_created "
            f"FROM {self.sessions} s JOIN {self.users} u ON u.id = s.user_id "
            "WHERE s.session_key = :key"
        )

    def snapshot(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return (
            self.db.rows(f"SELECT * FROM {self.users} ORDER BY id"),
            self.db.rows(f"SELECT * FROM {self.sessions} ORDER BY session_key"),
        )


@pytest.fixture
def django(database: Database) -> Django:
    return Django(database)


ALICE = User(
    user_name="alice",
    email_address="alice@example.com",
    first_name="Alice",
    last_name="Smith",
    user_created="2021-03-04 05:06:07",
)


# --- resolving against real databases ----------------------------------------------


def test_django_session_join_resolves_the_user(django: Django, make_resolver: MakeResolver) -> None:
    """A Django-style session join returns the session's user with every mapped field."""
    resolver = make_resolver(django.db.url, django.query)
    assert resolver.resolve("k-alice") == ALICE
    assert resolver.resolve("k-nobody") is None


def test_non_ascii_names_and_null_columns(django: Django, make_resolver: MakeResolver) -> None:
    """Non-ASCII names come back intact and NULL columns become None."""
    resolver = make_resolver(django.db.url, django.query)
    assert resolver.resolve("k-zoe") == User(
        user_name="Zoë Łukasiewicz",
        first_name="Zoë",
        last_name="Łukasiewicz",
        user_created="2022-12-31 23:59:59",
    )
    assert resolver.resolve("k-yamada") == User(user_name="山田")


def test_camel_case_and_alias_columns(database: Database, make_resolver: MakeResolver) -> None:
    """tirreno camelCase names and common aliases (username, email, phone, created_at) map."""
    q = database.quote
    table = database.create(
        "accounts",
        "token VARCHAR(64), login VARCHAR(50), mail VARCHAR(100), tel VARCHAR(30), "
        f"nm VARCHAR(100), made {database.timestamp_type}, shoe_size INTEGER",
    )
    database.execute(
        f"INSERT INTO {table} VALUES ('t1', 'bob', 'bob@example.org', '+41 22 555 01 01', "
        "'Bob Dylan', '2020-01-02 03:04:05', 44)"
    )
    camel = make_resolver(
        database.url,
        f"SELECT login AS {q('userName')}, mail AS {q('emailAddress')}, "
        f"tel AS {q('phoneNumber')}, nm AS {q('fullName')}, made AS {q('userCreated')}, "
        f"shoe_size FROM {table} WHERE token = :key",
    )
    aliases = make_resolver(
        database.url,
        "SELECT login AS username, mail AS email, tel AS phone, nm AS full_name, "
        f"made AS created_at FROM {table} WHERE token = :key",
    )
    # Unquoted camelCase: PostgreSQL folds it to lower case, which must still map.
    folded = make_resolver(
        database.url,
        f"SELECT login AS userName, mail AS emailAddress, made AS date_joined FROM {table} "
        "WHERE token = :key",
    )
    expected = User(
        user_name="bob",
        email_address="bob@example.org",
        phone_number="+41 22 555 01 01",
        full_name="Bob Dylan",
        user_created="2020-01-02 03:04:05",
    )
    assert camel.resolve("t1") == expected
    assert aliases.resolve("t1") == expected
    assert folded.resolve("t1") == User(
        user_name="bob", email_address="bob@example.org", user_created="2020-01-02 03:04:05"
    )


INJECTIONS = (
    "' OR 1=1 --",
    "' OR '1'='1",
    "k-alice' OR '1'='1",
    '"; DROP TABLE users; --',
    "'; DROP TABLE {users}; --",
    "1' UNION SELECT 'mallory', 'm@evil.test', NULL, NULL, NULL --",
    "k-alice\\' OR 1=1 -- ",
    "k-alice%",
    "%",
    "k-alice' -- ",
)


def test_sql_injection_keys_resolve_to_nobody_and_change_nothing(
    django: Django, make_resolver: MakeResolver
) -> None:
    """Cookie values written as SQL injections are bound as data: no user, no change."""
    before = django.snapshot()
    tables_before = django.db.table_names()
    resolver = make_resolver(django.db.url, django.query)
    for key in INJECTIONS:
        assert resolver.resolve(key.format(users=django.users)) is None, key
    assert django.snapshot() == before
    assert django.db.table_names() == tables_before
    assert resolver.resolve("k-alice") == ALICE


def test_injection_through_key_for_and_transform(
    django: Django, make_resolver: MakeResolver
) -> None:
    """The same holds for values taken from a logged header, untransformed."""
    before = django.snapshot()
    resolver = make_resolver(django.db.url, django.query, key={"header": "X-Session"})
    for key in INJECTIONS:
        raw = key.format(users=django.users)
        got = resolver.key_for(request(extra={"http_x_session": raw}))
        assert got == raw
        assert resolver.resolve(got) is None
    assert django.snapshot() == before


def test_positive_cache_ttl(django: Django, make_resolver: MakeResolver) -> None:
    """A hit is served from the cache until cache_ttl passes, then queried again."""
    clock = FakeClock()
    site = site_name()
    resolver = make_resolver(
        django.db.url, django.query, clock=clock, site=site, cache_ttl=60, negative_ttl=5
    )
    assert resolver.resolve("k-alice") == ALICE
    django.db.execute(f"UPDATE {django.users} SET email = 'new@example.com' WHERE id = 1")
    clock.advance(59)
    assert resolver.resolve("k-alice") == ALICE  # still cached
    assert (cache_count(site, "miss"), cache_count(site, "hit")) == (1, 1)
    clock.advance(2)
    assert resolver.resolve("k-alice").email_address == "new@example.com"  # type: ignore[union-attr]
    assert (cache_count(site, "miss"), cache_count(site, "hit")) == (2, 1)


def test_negative_cache_ttl_is_shorter(django: Django, make_resolver: MakeResolver) -> None:
    """A miss is remembered for negative_ttl only: a new login is seen soon after."""
    clock = FakeClock()
    site = site_name()
    resolver = make_resolver(
        django.db.url, django.query, clock=clock, site=site, cache_ttl=300, negative_ttl=10
    )
    assert resolver.resolve("k-new") is None
    django.db.execute(
        f"INSERT INTO {django.sessions} (session_key, session_data, user_id) "
        "VALUES ('k-new', 'x', 1)"
    )
    clock.advance(9)
    assert resolver.resolve("k-new") is None  # the miss is still cached
    assert cache_count(site, "hit") == 1
    clock.advance(2)
    assert resolver.resolve("k-new") == ALICE
    assert cache_count(site, "miss") == 2


def test_cache_is_a_bounded_lru(django: Django, make_resolver: MakeResolver) -> None:
    """With cache_size 2, the least recently used key is evicted first."""
    site = site_name()
    resolver = make_resolver(django.db.url, django.query, site=site, cache_size=2)
    for key in ("k-alice", "k-zoe", "k-alice", "k-yamada"):  # k-zoe is now the oldest
        resolver.resolve(key)
    assert len(resolver._cache) == 2
    assert (cache_count(site, "miss"), cache_count(site, "hit")) == (3, 1)
    resolver.resolve("k-alice")
    assert cache_count(site, "hit") == 2
    resolver.resolve("k-zoe")
    assert cache_count(site, "miss") == 4


def test_last_seen_user_survives_logout(django: Django, make_resolver: MakeResolver) -> None:
    """A logout logged after the session row was deleted still resolves to its user."""
    clock = FakeClock()
    resolver = make_resolver(django.db.url, django.query, clock=clock, cache_ttl=60)
    assert resolver.resolve("k-alice") == ALICE
    django.db.execute(f"DELETE FROM {django.sessions} WHERE session_key = 'k-alice'")
    clock.advance(61)  # the cached hit has expired: the query now finds nothing
    assert resolver.resolve("k-alice") == ALICE
    clock.advance(LAST_SEEN_TTL)
    assert resolver.resolve("k-alice") is None


def test_last_seen_works_without_a_cache(django: Django, make_resolver: MakeResolver) -> None:
    """Last-seen attribution does not depend on the hit cache being enabled."""
    resolver = make_resolver(django.db.url, django.query, cache_ttl=0, negative_ttl=0)
    assert resolver.resolve("k-zoe") is not None
    django.db.execute(f"DELETE FROM {django.sessions} WHERE session_key = 'k-zoe'")
    assert resolver.resolve("k-zoe") is not None
    assert resolver.resolve("k-alice") == ALICE


def test_sha256_hashed_session_ids(database: Database, make_resolver: MakeResolver) -> None:
    """With transform sha256 the cookie is hashed before lookup (Rails-style stored digests)."""
    table = database.create(
        "sessions", "id VARCHAR(80) PRIMARY KEY, user_email VARCHAR(100), login VARCHAR(50)"
    )
    cookie = "0c9c8e5f2a7b4e6d9f1a3b5c7d9e1f20"
    database.execute(
        f"INSERT INTO {table} VALUES (:id, 'carol@example.net', 'carol')",
        {"id": hashlib.sha256(cookie.encode()).hexdigest()},
    )
    resolver = make_resolver(
        database.url,
        f"SELECT login AS user_name, user_email AS email FROM {table} WHERE id = :key",
        key={"cookie": "_app_session", "transform": "sha256"},
    )
    key = resolver.key_for(request(session=cookie))
    assert key == hashlib.sha256(cookie.encode()).hexdigest()
    assert resolver.resolve(key) == User(user_name="carol", email_address="carol@example.net")
    # The raw cookie itself is not what is stored.
    assert resolver.resolve(cookie) is None


def test_key_from_field_remote_user(database: Database, make_resolver: MakeResolver) -> None:
    """key: {field: remote_user} looks the authenticated user name up."""
    table = database.create("people", "login VARCHAR(50), email VARCHAR(100)")
    database.execute(f"INSERT INTO {table} VALUES ('dave', 'dave@example.com')")
    resolver = make_resolver(
        database.url,
        f"SELECT login AS user_name, email FROM {table} WHERE login = :key",
        key={"field": "remote_user"},
    )
    key = resolver.key_for(request(remote_user="dave", session="ignored"))
    assert key == "dave"
    assert resolver.resolve(key) == User(user_name="dave", email_address="dave@example.com")
    assert resolver.key_for(request(remote_user=None)) is None


def test_key_from_header(database: Database, make_resolver: MakeResolver) -> None:
    """key: {header: X-User-Id} reads the logged header from extra['http_x_user_id']."""
    table = database.create("members", "ext_id VARCHAR(20), handle VARCHAR(50)")
    database.execute(f"INSERT INTO {table} VALUES ('u-42', 'erin')")
    resolver = make_resolver(
        database.url,
        f"SELECT handle AS user_name FROM {table} WHERE ext_id = :key",
        key={"header": "X-User-Id"},
    )
    key = resolver.key_for(request(extra={"http_x_user_id": "u-42"}))
    assert key == "u-42"
    assert resolver.resolve(key) == User(user_name="erin")
    assert resolver.key_for(request(extra={})) is None


# --- keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "req", "expected"),
    [
        ({"cookie": "sessionid"}, request(session="abc"), "abc"),
        ({"cookie": "sessionid"}, request(session=None), None),
        ({"cookie": "sessionid"}, request(session="-"), None),
        ({"cookie": "sessionid"}, request(session=""), None),
        ({"cookie": "sessionid"}, request(session="a\x00b"), None),
        ({"cookie": "sessionid"}, request(session="\udcff"), None),
        ({"cookie": "sessionid"}, request(session="x" * (MAX_KEY_CHARS + 1)), None),
        (
            {"cookie": "s", "transform": "md5"},
            request(session="abc"),
            hashlib.md5(b"abc").hexdigest(),
        ),
        (
            {"cookie": "s", "transform": "sha1"},
            request(session="abc"),
            hashlib.sha1(b"abc").hexdigest(),
        ),
        (
            {"cookie": "s", "transform": "sha256"},
            request(session="ü"),
            hashlib.sha256("ü".encode()).hexdigest(),
        ),
        ({"field": "remote_user"}, request(remote_user="-"), None),
        ({"field": "$remote_user"}, request(remote_user="frank"), "frank"),
        ({"field": "upstream_http_x_user"}, request(extra={"upstream_http_x_user": "7"}), "7"),
        ({"header": "x-user-id"}, request(extra={"http_x_user_id": "9"}), "9"),
    ],
)
def test_key_for(key: dict[str, str], req: Request, expected: str | None, tmp_path: Any) -> None:
    """key_for extracts the configured key, refuses absent or impossible ones, and transforms."""
    (tmp_path / "k.sqlite").touch()
    resolver = UserResolver(
        site_name(), users_config(f"sqlite:///{tmp_path}/k.sqlite", "SELECT :key", key=key)
    )
    try:
        assert resolver.key_for(req) == expected
    finally:
        resolver.close()


# --- failures ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["postgresql+psycopg", "mysql+pymysql"])
def test_database_down_raises_and_is_not_cached(
    kind: str, unused_tcp_port: int, make_resolver: MakeResolver
) -> None:
    """A server that does not answer raises ResolverError every time, without the password."""
    site = site_name()
    resolver = make_resolver(
        f"{kind}://reader:s3cr3t-pw@127.0.0.1:{unused_tcp_port}/test",
        "SELECT 'x' AS user_name WHERE 'a' = :key",
        site=site,
        timeout=2,
    )
    for _ in range(2):
        with pytest.raises(ResolverError) as info:
            resolver.resolve("k-secret-cookie")
        message = str(info.value)
        assert "s3cr3t-pw" not in message
        assert "k-secret-cookie" not in message
        assert f"127.0.0.1:{unused_tcp_port}" in message
    assert error_count(site) == 2
    assert len(resolver._cache) == 0
    with pytest.raises(ResolverError, match="user database"):
        resolver.check()


@pytest.mark.parametrize("where", ["missing/dir/u.sqlite", "typo.sqlite"])
def test_a_missing_sqlite_file_is_an_error_naming_it_and_is_not_created(
    tmp_path: Any, make_resolver: MakeResolver, where: str
) -> None:
    """A mistyped SQLite path raises ResolverError naming the file (not a later "no such
    table"), and sqlite3 does not leave an empty database there."""
    path = tmp_path / where
    with pytest.raises(ResolverError, match=f"no SQLite file at {path}"):
        make_resolver(f"sqlite:///{path}", "SELECT 1 AS user_name WHERE 1 = :key")
    assert not path.exists()


def test_the_sqlite_users_database_is_opened_read_only(
    tmp_path: Any, make_resolver: MakeResolver
) -> None:
    """We only read the users database: the connection refuses writes (odd path characters too)."""
    import sqlite3

    path = tmp_path / "users 1%.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (k TEXT, n TEXT)")
        conn.execute("INSERT INTO users VALUES ('s1', 'alice')")
    conn.close()
    resolver = make_resolver(f"sqlite:///{path}", "SELECT n AS user_name FROM users WHERE k = :key")
    assert resolver.resolve("s1") == User(user_name="alice")
    assert resolver._db is not None
    with pytest.raises(Exception, match="readonly"), resolver._db.engine.connect() as db:
        db.exec_driver_sql("INSERT INTO users VALUES ('s2', 'mallory')")


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("postgres://reader@db/shop", "write postgresql+psycopg://"),
        ("mysql://reader@db/shop", "write mysql+pymysql://"),
        ("mariadb://reader@db/shop", "write mysql+pymysql://"),
        ("oracle+nosuchdriver://reader@db/shop", "postgresql+psycopg://, mysql+pymysql://"),
    ],
)
def test_a_url_scheme_without_our_drivers_names_the_one_to_write(
    url: str, hint: str, make_resolver: MakeResolver
) -> None:
    with pytest.raises(ResolverError, match=re.escape(hint)):
        make_resolver(url, "SELECT 1 AS user_name WHERE 1 = :key")


def test_sql_error_is_raised_not_cached_and_recovers(
    database: Database, make_resolver: MakeResolver
) -> None:
    """A query on a missing table raises each time and resolves once the table exists."""
    table = database.name("late")
    resolver = make_resolver(
        database.url, f"SELECT login AS user_name FROM {table} WHERE k = :key", negative_ttl=300
    )
    for _ in range(2):
        with pytest.raises(ResolverError):
            resolver.resolve("k1")
    database.execute(f"CREATE TABLE {table} (k VARCHAR(10), login VARCHAR(10))")
    database.execute(f"INSERT INTO {table} VALUES ('k1', 'gina')")
    assert resolver.resolve("k1") == User(user_name="gina")


def test_error_messages_and_logs_never_hold_the_key(
    database: Database, make_resolver: MakeResolver
) -> None:
    """Neither a ResolverError nor a log event carries the session key."""
    secret = "SeSsIoN-" + secrets.token_hex(8)
    resolver = make_resolver(
        database.url, "SELECT login AS user_name FROM no_such_table_x WHERE k = :key"
    )
    with capture_logs() as logs, pytest.raises(ResolverError) as info:
        resolver.resolve(secret)
    assert secret not in str(info.value)
    assert logs
    assert secret not in repr(logs)


@pytest.mark.parametrize(
    "key_expr",
    [
        "CAST(upper(:key) AS INTEGER)",
        "CAST(lower(:key) AS INTEGER)",
        "CAST(initcap(CAST(:key AS TEXT)) AS INTEGER)",
    ],
)
def test_a_key_echoed_in_another_case_or_cast_is_hidden(
    key_expr: str, server_database: Database, make_resolver: MakeResolver
) -> None:
    """The database's message hides the key whatever case or cast it echoes it in."""
    db = server_database
    if db.kind != "postgresql":
        # MariaDB casts a non-number to 0 without an error: nothing is echoed to hide.
        key_expr = "CAST(:key AS SIGNED)"
    table = db.create("cased_ids", "id INTEGER PRIMARY KEY, login VARCHAR(20)")
    resolver = make_resolver(
        db.url, f"SELECT login AS user_name FROM {table} WHERE id = {key_expr}", site=site_name()
    )
    secret = "MixedCase-Cookie-" + secrets.token_hex(6)
    with capture_logs() as logs:
        assert resolver.resolve(secret) is None
    shown = repr(logs).lower()
    assert secret.lower() not in shown
    if db.kind == "postgresql":
        assert "invalid input syntax" in shown  # the message itself is kept, key masked


def test_rejected_value_is_a_miss_and_hides_the_key(
    server_database: Database, make_resolver: MakeResolver
) -> None:
    """A key the database refuses for the column's type is nobody, not an endless retry."""
    db = server_database
    table = db.create("numeric_ids", "id INTEGER PRIMARY KEY, login VARCHAR(20)")
    db.execute(f"INSERT INTO {table} VALUES (5, 'hank')")
    site = site_name()
    # MariaDB compares leniently; CAST makes PostgreSQL raise a data error.
    key_expr = "CAST(:key AS INTEGER)" if db.kind == "postgresql" else ":key"
    resolver = make_resolver(
        db.url, f"SELECT login AS user_name FROM {table} WHERE id = {key_expr}", site=site
    )
    secret = "not-a-number-" + secrets.token_hex(6)
    with capture_logs() as logs:
        assert resolver.resolve(secret) is None
    assert secret not in repr(logs)
    assert resolver.resolve("5") == User(user_name="hank")
    if db.kind == "postgresql":
        assert error_count(site) == 1


def test_query_timeout_raises(server_database: Database, make_resolver: MakeResolver) -> None:
    """A query that hangs past users.timeout raises ResolverError instead of blocking."""
    sleep = "pg_sleep(10)" if server_database.kind == "postgresql" else "SLEEP(10)"
    resolver = make_resolver(
        server_database.url, f"SELECT 'x' AS user_name, {sleep} AS z WHERE 'a' <> :key", timeout=1
    )
    started = time.monotonic()
    with pytest.raises(ResolverError, match="time"):  # "statement timeout" / "timed out"
        resolver.resolve("k")
    assert time.monotonic() - started < 5


# --- credentials in the URL --------------------------------------------------------------


def _texts(info: pytest.ExceptionInfo[ResolverError], logs: Sequence[Mapping[str, Any]]) -> str:
    return str(info.value) + "\n" + repr(logs)


@pytest.fixture
def mariadb_login(mariadb_engine: Any) -> Iterator[Callable[[str], str]]:
    """Make a MariaDB account with the given password (dropped after); returns its name."""
    import sqlalchemy

    made: list[str] = []

    def make(password: str) -> str:
        name = "tsleak_" + secrets.token_hex(4)
        with mariadb_engine.begin() as conn:
            conn.execute(
                sqlalchemy.text(f"CREATE USER '{name}'@'%' IDENTIFIED BY :pw"), {"pw": password}
            )
            made.append(name)
            conn.execute(sqlalchemy.text(f"GRANT SELECT ON test.* TO '{name}'@'%'"))
        return name

    yield make
    with mariadb_engine.begin() as conn:
        for name in made:
            conn.execute(sqlalchemy.text(f"DROP USER IF EXISTS '{name}'@'%'"))


def test_a_password_with_an_unescaped_at_is_refused_without_showing_it(
    mariadb_login: Callable[[str], str], make_resolver: MakeResolver
) -> None:
    """SQLAlchemy ends a password at its first "@": the rest became the host name, printed by
    every error ("Can't connect to MySQL server on 'ss-Zz9Leak@127.0.0.1'"). The resolver
    refuses such a URL, naming the fix and no part of it; percent-encoded, it works."""
    password = "p@ss-Zz9Leak" + secrets.token_hex(4)
    user = mariadb_login(password)
    query = "SELECT 'someone' AS user_name WHERE 'k' = :key"
    encoded = password.replace("@", "%40")
    good = make_resolver(f"mysql+pymysql://{user}:{encoded}@127.0.0.1:3306/test", query)
    good.check()
    assert good.resolve("k") == User(user_name="someone")
    with capture_logs() as logs, pytest.raises(ResolverError) as info:
        make_resolver(f"mysql+pymysql://{user}:{password}@127.0.0.1:3306/test", query)
    assert "%40" in str(info.value)
    text = _texts(info, logs)
    for part in (password, password.partition("@")[2], user):
        assert part not in text


@pytest.mark.parametrize(
    ("scheme", "key"),
    [
        ("mysql+pymysql", "password"),
        ("postgresql+psycopg", "PASSWD"),
        ("postgresql+psycopg", "password"),
        ("postgresql+psycopg", "sslpassword"),
        ("postgresql+psycopg", "Pwd"),
        ("postgresql+psycopg", "secret"),
        ("postgresql+psycopg", "token"),
    ],
)
def test_credential_query_parameters_are_masked_in_messages_and_logs(
    scheme: str, key: str, unused_tcp_port: int, make_resolver: MakeResolver
) -> None:
    """?password=... (and passwd, pwd, sslpassword, secret, token, in any case) is masked in
    the URL errors show and in the driver's text, in the error and in every log event."""
    secret = "QueryPwLeak" + secrets.token_hex(4)
    other = "charset=utf8mb4" if scheme.startswith("mysql") else "application_name=a"
    resolver = make_resolver(
        f"{scheme}://reader@127.0.0.1:{unused_tcp_port}/test?{other}&{key}={secret}",
        "SELECT 'x' AS user_name WHERE 'a' = :key",
        timeout=2,
    )
    with capture_logs() as logs, pytest.raises(ResolverError) as info:
        resolver.resolve("k")
    with pytest.raises(ResolverError) as info2:
        resolver.check()
    text = _texts(info, logs) + str(info2.value)
    assert secret not in text
    assert f"127.0.0.1:{unused_tcp_port}/test?" in str(info.value)
    assert f"{key}=***" in str(info.value)
    assert other in str(info.value)  # other options stay readable


def test_a_credential_query_parameter_is_masked_when_the_database_answers(
    mariadb_login: Callable[[str], str], make_resolver: MakeResolver
) -> None:
    """With the right ?password= the query runs; its failures never show the password."""
    password = "QueryPw-" + secrets.token_hex(6)
    user = mariadb_login(password)
    url = f"mysql+pymysql://{user}@127.0.0.1:3306/test?password={password}"
    make_resolver(url, "SELECT 'someone' AS user_name WHERE 'k' = :key").check()
    failing = make_resolver(url, "SELECT login AS user_name FROM no_such_table_z WHERE k = :key")
    with capture_logs() as logs, pytest.raises(ResolverError) as info:
        failing.resolve("k")
    assert "no_such_table_z" in str(info.value)
    assert password not in _texts(info, logs)
    wrong = make_resolver(
        f"mysql+pymysql://{user}@127.0.0.1:3306/test?password={password}x",
        "SELECT 'someone' AS user_name WHERE 'k' = :key",
    )
    with capture_logs() as logs, pytest.raises(ResolverError, match="Access denied") as info:
        wrong.check()
    assert password not in _texts(info, logs)


def test_a_bad_url_option_is_named_with_the_drivers_words() -> None:
    """?read_timeout=abc: the message says what is wrong and with which option (a bare
    "ValueError" did not), and still holds no password, even one repeated in an option."""
    with pytest.raises(ResolverError) as info:
        UserResolver(
            "s",
            users_config(
                "mysql+pymysql://reader:Zz9pw@127.0.0.1:3306/test?read_timeout=abc",
                "SELECT 'x' AS user_name WHERE 'a' = :key",
            ),
        )
    message = str(info.value)
    assert "ValueError" in message and "'abc'" in message and "read_timeout" in message
    assert "Zz9pw" not in message
    with pytest.raises(ResolverError) as info:
        UserResolver(
            "s",
            users_config(
                "mysql+pymysql://reader:Zz9pw@127.0.0.1:3306/test?connect_timeout=Zz9pw",
                "SELECT 'x' AS user_name WHERE 'a' = :key",
            ),
        )
    assert "connect_timeout" in str(info.value)
    assert "Zz9pw" not in str(info.value)


# --- check -----------------------------------------------------------------------------


def test_check_passes_on_a_good_query(django: Django, make_resolver: MakeResolver) -> None:
    """check() runs the real query once and accepts it."""
    make_resolver(django.db.url, django.query).check()


def test_check_accepts_integer_keyed_queries(
    server_database: Database, make_resolver: MakeResolver
) -> None:
    """check() also works when the key column is an integer (a text key is refused there)."""
    table = server_database.create("ids", "id INTEGER, login VARCHAR(20)")
    make_resolver(
        server_database.url,
        f"SELECT login AS user_name FROM {table} WHERE id = CAST(:key AS INTEGER)"
        if server_database.kind == "postgresql"
        else f"SELECT login AS user_name FROM {table} WHERE id = :key",
    ).check()


def test_check_reports_a_missing_table(database: Database, make_resolver: MakeResolver) -> None:
    """check() raises ResolverError naming the database when the query fails."""
    resolver = make_resolver(
        database.url, "SELECT name AS user_name FROM no_such_table_y WHERE k = :key"
    )
    with pytest.raises(ResolverError, match="user database"):
        resolver.check()


def test_check_requires_a_user_name_column(django: Django, make_resolver: MakeResolver) -> None:
    """check() refuses a query whose columns never give a user name."""
    query = django.query.replace("u.username AS user_name", "u.username AS login")
    with pytest.raises(ResolverError, match="no user name column"):
        make_resolver(django.db.url, query).check()


def test_missing_driver_is_a_clear_error() -> None:
    """A URL whose dialect is unknown raises ResolverError with an install hint."""
    with pytest.raises(ResolverError, match="install"):
        UserResolver("s", users_config("nosuchdb+nodriver://h/db", "SELECT :key"))


# --- anonymous users and row mapping ----------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("203.0.113.77", "203.0.113.*"),
        ("10.0.0.1", "10.0.0.*"),
        ("2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::8a2e:370:*"),
        ("2001:db8::1", "2001:db8::*"),
        ("::1", "::*"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_anonymous_user_masks_like_tirreno_php_tracker(ip: str, name: str) -> None:
    """anonymous_user masks the last IPv4 octet / IPv6 group with '*', as TirrenoTracker::maskIp."""
    assert mask_ip(ip) == name
    assert anonymous_user(ip) == User(user_name=name)


def test_map_row_converts_values() -> None:
    """Datetimes become UTC text, numbers text, bytes UTF-8, NULLs None, unknown columns ignored."""
    cet = timezone(timedelta(hours=2))
    row = {
        "userName": b"J\xc3\xb6rg",
        "EMAIL_ADDRESS": None,
        "email": "j@example.com",
        "phone": 41225550101,
        "first_name": "",
        "created_at": datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=cet),
        "favourite_colour": "blue",
    }
    assert map_row(row) == User(
        user_name="Jörg",
        email_address="j@example.com",
        phone_number="41225550101",
        user_created="2024-03-01 10:00:00",
    )
    assert map_row({"user_name": 42, "user_created": datetime(2020, 1, 2, 3, 4, 5)}) == User(
        user_name="42", user_created="2020-01-02 03:04:05"
    )
    assert map_row({"user_name": "a", "date_joined": date(2019, 5, 6)}) == User(
        user_name="a", user_created="2019-05-06 00:00:00"
    )
    assert map_row({"user_name": "a", "userCreated": 1_700_000_000}) == User(
        user_name="a", user_created="2023-11-14 22:13:20"
    )
    assert map_row({"user_name": "a", "user_created": "2021-02-03T04:05:06+01:00"}) == User(
        user_name="a", user_created="2021-02-03 03:05:06"
    )
    assert map_row({"user_name": "a", "phone_number": Decimal("12.50")}) == User(
        user_name="a", phone_number="12.50"
    )


@pytest.mark.parametrize("row", [{}, {"user_name": None}, {"user_name": "  "}, {"email": "x@y.z"}])
def test_map_row_without_user_name_is_unresolved(row: dict[str, Any]) -> None:
    """A row without a user name resolves to nobody."""
    assert map_row(row) is None


def test_map_row_warns_once_of_ignored_columns_and_of_no_user_name_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A misspelt alias (``AS mail``) or a query without a user name column would silently
    drop fields or every user: each is a warning, once per process, naming the columns."""
    from tirreno_shipper.users import rows as users

    monkeypatch.setattr(users, "_reported_unknown", set())
    with capture_logs() as logs:
        for _ in range(3):
            assert map_row({"user_name": "a", "mail": "a@b.c", "joined": "2020"}) == User("a")
            assert map_row({"login": "a", "email": "a@b.c"}) is None
            assert map_row({"user_name": None}) is None  # a NULL name is nobody: no warning
    assert [(e["event"], e["columns"]) for e in logs] == [
        ("resolver_columns_ignored", ["mail", "joined"]),
        ("resolver_columns_ignored", ["login"]),
        ("resolver_no_user_name_column", ["login", "email"]),
    ]
    assert all(e["log_level"] == "warning" for e in logs)
    assert "email_address" in logs[0]["known"] and "AS user_name" in logs[2]["hint"]


def test_timezone_aware_column_is_converted_to_utc(
    make_resolver: MakeResolver, postgres_engine: Any
) -> None:
    """A PostgreSQL timestamptz in a non-UTC session zone arrives as UTC text."""
    url = postgres_engine.url.render_as_string(hide_password=False)
    resolver = make_resolver(
        url + "?options=-c%20TimeZone%3DEurope/Zurich",
        "SELECT 'ivy' AS user_name, TIMESTAMPTZ '2024-07-01 12:00:00+02' AS user_created "
        "WHERE 'k' = :key",
    )
    assert resolver.resolve("k") == User(user_name="ivy", user_created="2024-07-01 10:00:00")


def test_a_url_option_the_driver_does_not_know_is_a_resolver_error(
    make_resolver: MakeResolver,
) -> None:
    """PyMySQL raises TypeError for an unknown keyword (?pwd=): a ResolverError naming it,
    its value masked, from resolve and from check alike (no traceback, no crash)."""
    resolver = make_resolver(
        "mysql+pymysql://root@127.0.0.1:3306/test?pwd=Opt1onSecret",
        "SELECT 1 AS user_name WHERE 1 = :key",
    )
    calls: list[Callable[[], object]] = [lambda: resolver.resolve("k"), resolver.check]
    for call in calls:
        with pytest.raises(ResolverError, match="refused an option") as info:
            call()
        assert "'pwd'" in str(info.value) and "Opt1onSecret" not in str(info.value)


def test_a_chunks_keys_are_read_together_and_leave_no_lock(
    tmp_path: Path, make_resolver: MakeResolver
) -> None:
    """resolve_many answers as resolve does, key by key (repeats and unknown keys too), and
    the read transaction the SQLite lookups share is over when it returns: the application,
    writing to its own database, is never locked out by it."""
    path = tmp_path / "app.sqlite"
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    con.executescript(
        "CREATE TABLE s (k TEXT PRIMARY KEY, name TEXT);"
        "INSERT INTO s VALUES ('k1', 'ann'), ('k2', 'bob'), ('k3', 'ann');"
    )
    query = "SELECT name AS user_name FROM s WHERE k = :key"
    site = site_name()
    resolver = make_resolver(f"sqlite:///{path}", query, site=site)
    found = resolver.resolve_many(["k1", "k2", "nobody", "k1", "k3"])
    assert found == {"k1": User("ann"), "k2": User("bob"), "nobody": None, "k3": User("ann")}
    assert found["k1"] is found["k3"]  # one record for one user
    assert (cache_count(site, "miss"), cache_count(site, "hit")) == (4, 1)
    con.execute("BEGIN EXCLUSIVE")  # timeout 0: fails at once if a reader still holds a lock
    con.execute("UPDATE s SET name = 'cy' WHERE k = 'k2'")
    con.execute("COMMIT")
    other = make_resolver(f"sqlite:///{path}", query, cache_ttl=0, negative_ttl=0)
    assert other.resolve_many(["k2", "nobody"]) == {"k2": User("cy"), "nobody": None}
    con.execute("BEGIN EXCLUSIVE")
    con.execute("COMMIT")
    con.close()
