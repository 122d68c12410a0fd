"""What the tirreno sensor accepts (tirreno v0.10, checked on a live instance).

The server silently cuts or replaces bad values, so the shipper checks and
truncates first and counts what it had to fix; an event that would be refused
outright (no ``ipAddress`` or ``url``) never leaves the spool except to the
dead letters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from tirreno_shipper.config import EVENT_TYPES

# Maximum lengths in characters; every other field is 100.
FIELD_LIMITS: dict[str, int] = {
    "url": 2047,
    "httpReferer": 2047,
    "userAgent": 511,
    "pageTitle": 255,
    "emailAddress": 255,
    "browserLanguage": 255,
    "phoneNumber": 19,
}
DEFAULT_LIMIT = 100

KNOWN_FIELDS = frozenset(
    {
        "userName",
        "emailAddress",
        "ipAddress",
        "url",
        "userAgent",
        "eventTime",
        "firstName",
        "lastName",
        "fullName",
        "pageTitle",
        "phoneNumber",
        "httpReferer",
        "httpCode",
        "browserLanguage",
        "eventType",
        "httpMethod",
        "userCreated",
    }
)

# tirreno keeps the request id as event.traceid; a longer one fails the insert
# after the server already answered 204, so the event would be silently lost.
MAX_REQUEST_ID = 36


def limit_of(name: str) -> int:
    return FIELD_LIMITS.get(name, DEFAULT_LIMIT)


def validate_fields(fields: Mapping[str, str], request_id: str) -> str | None:
    """Return why tirreno would refuse or corrupt this event, or None if it is fine."""
    if len(request_id) > MAX_REQUEST_ID:
        return f"request id longer than {MAX_REQUEST_ID} characters"
    ip = fields.get("ipAddress")
    if not ip:
        return "missing ipAddress"
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return "ipAddress is not an IP address"
    if not fields.get("url"):
        return "missing url"
    for name, value in fields.items():
        if name not in KNOWN_FIELDS:
            return f"unknown field {name}"
        if len(value) > limit_of(name):
            return f"{name} longer than {limit_of(name)} characters"
    event_type = fields.get("eventType")
    if event_type is not None and event_type not in EVENT_TYPES:
        return f"unknown eventType {event_type}"
    return None
