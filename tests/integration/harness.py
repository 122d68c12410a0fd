"""What the end-to-end tests share: a Django-style user directory in a real database,
the real daemon as a subprocess, and the events the driver's requests must become.

The expectations are computed from what the driver sent and what the server
answered, following the README (rules, filters, redaction, tirreno's masked-IP
userName), never by running the shipper's own parser or mapper.
"""

from __future__ import annotations

import json
import re
import secrets
from calendar import timegm
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import Database
from tests.support.shipper import Shipper
from tests.support.traffic import NEVER_EVENTS, Sent

# The README's example rules, as the config uses them.
RULES: list[dict[str, Any]] = [
    {"method": "POST", "path": "^/login/?$", "status": "3xx", "type": "account_login"},
    {
        "method": "POST",
        "path": "^/login/?$",
        "type": "account_login_fail",
        "unresolved": "anonymous",
    },
    {"path": "^/logout/?$", "type": "account_logout"},
    {"path": "^/search", "query": True, "type": "page_search"},
]
REDACT = ("token", "password", "code", "secret")


@dataclass(frozen=True, slots=True)
class UserRow:
    username: str
    email: str | None
    first_name: str | None
    last_name: str | None
    date_joined: datetime | None
    valid_email: bool  # whether tirreno would accept the address as it is

    def expected_fields(self) -> dict[str, str]:
        # tirreno's limit is 100 bytes; cut at a character boundary (ł is 2 bytes).
        out = {"userName": self.username.encode()[:100].decode("utf-8", "ignore")}
        if self.email and self.valid_email:
            out["emailAddress"] = self.email
        if self.first_name:
            out["firstName"] = self.first_name
        if self.last_name:
            out["lastName"] = self.last_name
        if self.date_joined is not None:
            out["userCreated"] = self.date_joined.strftime("%Y-%m-%d %H:%M:%S")
        return out


USERS: tuple[UserRow, ...] = (
    UserRow("alice", "alice@example.com", "Alice", "Liddell", datetime(2020, 1, 2, 3, 4, 5), True),
    UserRow(
        "zoë.ångström", "zoe@example.org", "Zoë", "Ångström", datetime(2021, 6, 7, 8, 9, 10), True
    ),
    UserRow("山田太郎", None, "太郎", "山田", datetime(2022, 12, 31, 23, 59, 59), True),
    UserRow("o'brien", "o'brien@example.ie", None, None, datetime(2019, 5, 5, 5, 5, 5), True),
    UserRow('back\\slash"quote', "not-an-email", "", None, None, False),
    UserRow("Łukasz-" + "ł" * 113, "lukasz@example.pl", "Łukasz", None, None, True),  # 120 chars
)


@dataclass
class UserDirectory:
    """auth_user and django_session tables (unique names) with `USERS` and their sessions."""

    db: Database
    user_table: str
    session_table: str
    sessions: dict[str, UserRow] = field(default_factory=dict)

    @property
    def query(self) -> str:
        return (
            "SELECT u.username AS user_name, u.email AS email_address, u.first_name, "
            "u.last_name, u.date_joined AS user_created "
            f"FROM {self.session_table} s JOIN {self.user_table} u ON u.id = s.user_id "
            "WHERE s.session_key = :key"
        )

    def counts(self) -> tuple[int, int]:
        users = self.db.rows(f"SELECT COUNT(*) FROM {self.user_table}")[0][0]
        sessions = self.db.rows(f"SELECT COUNT(*) FROM {self.session_table}")[0][0]
        return int(users), int(sessions)


def make_directory(db: Database) -> UserDirectory:
    ts = db.timestamp_type
    users = db.create(
        "auth_user",
        "id INTEGER PRIMARY KEY, username VARCHAR(150) NOT NULL, email VARCHAR(254), "
        f"first_name VARCHAR(150), last_name VARCHAR(150), date_joined {ts} NULL",
    )
    sessions = db.create(
        "django_session",
        "session_key VARCHAR(40) PRIMARY KEY, session_data TEXT, "
        f"expire_date {ts} NULL, user_id INTEGER",
    )
    directory = UserDirectory(db, users, sessions)
    db.execute(
        f"INSERT INTO {users} (id, username, email, first_name, last_name, date_joined) "
        "VALUES (:id, :username, :email, :first_name, :last_name, :date_joined)",
        [
            {
                "id": i,
                "username": u.username,
                "email": u.email,
                "first_name": u.first_name,
                "last_name": u.last_name,
                "date_joined": u.date_joined,
            }
            for i, u in enumerate(USERS, 1)
        ],
    )
    rows = []
    for i, user in enumerate(USERS, 1):
        for _ in range(2):
            key = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))
            directory.sessions[key] = user
            rows.append({"k": key, "u": i})
    # A session whose user is gone: it must resolve nobody.
    rows.append({"k": secrets.token_hex(16), "u": 999_999})
    db.execute(
        f"INSERT INTO {sessions} (session_key, session_data, expire_date, user_id) "
        "VALUES (:k, 'e30', NULL, :u)",
        rows,
    )
    return directory


# -- expectations ----------------------------------------------------------------


def mask_ip(ip: str) -> str:
    """tirreno's PHP tracker ``maskIp()``: the last group becomes ``*``."""
    sep = ":" if ":" in ip else "."
    parts = ip.split(sep)
    if sep == ":" or len(parts) == 4:
        parts[-1] = "*"
    return sep.join(parts)


def redact(url: str) -> str:
    return re.sub(rf"([?&;](?:{'|'.join(REDACT)})=)[^&;#]*", r"\1REDACTED", url)


@dataclass(frozen=True, slots=True)
class Expected:
    sent: Sent
    fields: dict[str, str]  # every field but eventTime


def expected_event(
    sent: Sent, sessions: Mapping[str, UserRow], *, accept_language: bool
) -> Expected | None:
    """The event ``sent`` must become, or None if it must not become one."""
    if sent.kind in NEVER_EVENTS or sent.status is None:
        return None
    assert sent.method is not None and sent.target is not None
    path = sent.target.split("?", 1)[0]
    has_query = "?" in sent.target
    unresolved = "drop"
    if sent.method == "POST" and re.search("^/login/?$", path) and 300 <= sent.status < 400:
        event_type = "account_login"
    elif sent.method == "POST" and re.search("^/login/?$", path):
        event_type, unresolved = "account_login_fail", "anonymous"
    elif re.search("^/logout/?$", path):
        event_type = "account_logout"
    elif path.startswith("/search") and has_query:
        event_type = "page_search"
    else:
        event_type = "page_error" if sent.status >= 400 else "page_view"
    user = sessions.get(sent.session_key) if sent.session_key else None
    if user is not None:
        user_fields = user.expected_fields()
    elif unresolved == "anonymous":
        user_fields = {"userName": mask_ip(sent.host)}
    else:
        return None
    fields = {
        "ipAddress": sent.host,
        "url": redact(sent.target),
        "httpCode": str(sent.status),
        "httpMethod": sent.method,
        "eventType": event_type,
        **user_fields,
    }
    if event_type.startswith("account_") and sent.status >= 400:
        # The README's default: an account_* rule keeps its type and sends no code
        # (tirreno would store any code >= 400 as page_error).
        del fields["httpCode"]
    if sent.user_agent is not None:
        fields["userAgent"] = sent.user_agent
    if sent.referer is not None:
        # Redacted like url; '%' and '+' escaped so that tirreno's urldecode gives it back.
        fields["httpReferer"] = redact(sent.referer).replace("%", "%25").replace("+", "%2B")
    if accept_language and sent.accept_language is not None:
        fields["browserLanguage"] = sent.accept_language
    return Expected(sent, fields)


def event_epoch(event_time: str) -> float:
    """tirreno's ``Y-m-d H:i:s[.v]`` (UTC) as epoch seconds."""
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in event_time else "%Y-%m-%d %H:%M:%S"
    return timegm(datetime.strptime(event_time, fmt).timetuple()) + (
        float("0." + event_time.split(".")[1]) if "." in event_time else 0.0
    )


# -- the daemon ------------------------------------------------------------------


def shipper_for(workdir: Path, config: Mapping[str, Any], env: Mapping[str, str]) -> Shipper:
    """The daemon on ``config``, written to ``workdir/config.yaml``; not started yet."""
    path = workdir / "config.yaml"
    # JSON is YAML: no quoting surprises in format strings and regexes.
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    metrics = config.get("metrics")
    return Shipper(
        path,
        env=env,
        log_path=workdir / "shipper.stderr",
        metrics_url=f"http://{metrics['listen']}" if metrics else None,
        start=False,
    )


def site_config(
    name: str,
    *,
    sensor_url: str,
    key_env: str,
    log_path: Path,
    log_format: str | Mapping[str, str],
    directory: UserDirectory,
) -> dict[str, Any]:
    return {
        "name": name,
        "sensor": {
            "url": sensor_url,
            "api_key": "${" + key_env + "}",
            "rate_limit": 0,
            "concurrency": 4,
            "timeout": 5,
        },
        "logs": [{"path": str(log_path), "format": log_format, "start_at": "beginning"}],
        "users": {
            "key": {"cookie": "sessionid"},
            "database": directory.db.url,
            "query": directory.query,
            "cache_ttl": 300,
            "unresolved": "drop",
        },
        "events": {"rules": RULES, "redact_query": list(REDACT)},
    }


def find_secrets(haystacks: Mapping[str, str], needles: Sequence[str]) -> list[str]:
    """``where: which secret`` for every secret found in any haystack (secrets shown cut)."""
    found = []
    for where, text in haystacks.items():
        for needle in needles:
            if needle and needle in text:
                found.append(f"{where}: {needle[:6]}...")
    return found
