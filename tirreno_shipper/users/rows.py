"""A user database's result row → the `User` tirreno is sent, and the anonymous user."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import structlog

from tirreno_shipper.records import User

log = structlog.get_logger(__name__)

# Result column name, lower-cased and without underscores -> User field.
# The normalisation makes ``user_name``, ``userName`` and PostgreSQL's folded
# ``username`` (an unquoted ``AS userName``) all the same column.
COLUMN_FIELDS: dict[str, str] = {
    "username": "user_name",
    "emailaddress": "email_address",
    "email": "email_address",
    "firstname": "first_name",
    "lastname": "last_name",
    "fullname": "full_name",
    "phonenumber": "phone_number",
    "phone": "phone_number",
    "usercreated": "user_created",
    "datejoined": "user_created",
    "createdat": "user_created",
}

# Warned about once per process: ignored result columns, and (under a name no
# column can have) a result without a user name column.
_reported_unknown: set[str] = set()
_NO_NAME_COLUMN = "\x00no user_name column"


def mask_ip(ip: str) -> str:
    """Mask an address exactly as tirreno's PHP tracker does for its default userName.

    Source: tirrenotechnologies/tirreno-php-tracker, ``TirrenoTracker.php``,
    ``maskIp()`` (used by ``getUserName()`` when no user name was set): with a
    ``:`` the last colon-separated group becomes ``*``; otherwise an address of
    four dot-separated parts gets its last part replaced by ``*``; anything else
    is returned unchanged. Doing the same keeps one anonymous visitor the same
    "user" in tirreno whether the PHP tracker or this shipper reported them.
    """
    if ":" in ip:
        parts = ip.split(":")
        parts[-1] = "*"
        return ":".join(parts)
    parts = ip.split(".")
    if len(parts) == 4:
        parts[3] = "*"
    return ".".join(parts)


def anonymous_user(ip: str) -> User:
    """The user tirreno's PHP tracker reports for a visitor without an account."""
    return User(user_name=mask_ip(ip))


def _format_time(value: datetime | date) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.strftime("%Y-%m-%d 00:00:00")


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime | date):
        return _format_time(value)
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", errors="replace")
    elif (
        field == "user_created"
        and isinstance(value, int | float | Decimal)
        and not isinstance(value, bool)
    ):
        # An integer creation date is a Unix timestamp (a common schema choice);
        # as a bare number it would mean nothing to tirreno.
        try:
            return _format_time(datetime.fromtimestamp(float(value), UTC))
        except (OverflowError, OSError, ValueError):
            return str(value)
    text = value if isinstance(value, str) else str(value)
    if field == "user_created":
        # SQLite and string columns hand back ISO text; normalise it when it parses.
        try:
            return _format_time(datetime.fromisoformat(text.strip()))
        except ValueError:
            pass
    return text if text.strip() else None


# Column names of a result → the `User` field of each column, in order: worked out
# once per query shape, not once per row. Only shapes with nothing to warn about
# (every column known, a user name among them) are kept: the others take the
# full path, which says what is wrong once per process.
_plans: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_MAX_PLANS = 64


def map_row(row: Mapping[str, Any]) -> User | None:
    """Map a result row to a `User` by column name; ``None`` without a user name."""
    plan = _plans.get(tuple(row))
    if plan is None:
        return _first_row(row)
    values: dict[str, str] = {}
    for column, field in plan:
        if field in values:  # the first non-empty column of several aliases wins
            continue
        raw = row[column]
        if type(raw) is str and field != "user_created":
            if raw.strip():  # _text's answer for text, without the call
                values[field] = raw
            continue
        value = _text(raw, field)
        if value is not None:
            values[field] = value
    if "user_name" not in values:
        return None
    return User(**values)


def _first_row(row: Mapping[str, Any]) -> User | None:
    """`map_row` for a query shape not seen yet: says what is wrong with its columns."""
    plan = tuple((column, column_field(column)) for column in row)
    if all(field for _, field in plan) and any(f == "user_name" for _, f in plan):
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[tuple(row)] = plan  # type: ignore[assignment]  # no None: checked above
    values: dict[str, str] = {}
    unknown: list[str] = []
    named = False
    for column, raw in row.items():
        field = column_field(column)
        if field is None:
            unknown.append(str(column))
            continue
        named = named or field == "user_name"
        if field in values:  # the first non-empty column of several aliases wins
            continue
        value = _text(raw, field)
        if value is not None:
            values[field] = value
    new = [c for c in unknown if c not in _reported_unknown]
    if new:
        # Once per column: bounded by the query's column list, which the operator wrote.
        _reported_unknown.update(new)
        log.warning(
            "resolver_columns_ignored",
            columns=new,
            known=sorted(set(COLUMN_FIELDS.values())),
            hint="a user's fields come from columns named as in `known`: alias yours AS one",
        )
    if not named and _NO_NAME_COLUMN not in _reported_unknown:
        _reported_unknown.add(_NO_NAME_COLUMN)
        log.warning(
            "resolver_no_user_name_column",
            columns=[str(c) for c in row],
            hint="every matched session is treated as nobody's (anonymous or dropped, as "
            "users.unresolved says): select the user's name AS user_name",
        )
    if "user_name" not in values:
        return None
    return User(**values)


def column_field(column: object) -> str | None:
    """The `User` field a result column feeds (``e_mail`` and ``EMAIL`` alike), if any."""
    return COLUMN_FIELDS.get(str(column).lower().replace("_", ""))
