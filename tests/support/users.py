"""Helpers of the users tests: a request carrying a cookie, and the rejection counter."""

from __future__ import annotations

from tirreno_shipper.metrics import REGISTRY
from tirreno_shipper.records import Request


def cookie_request(session: str | None, **extra: str) -> Request:
    """A GET / whose session cookie (as the parser extracted it) is ``session``."""
    return Request(
        remote_addr="203.0.113.7",
        time="2024-05-01 10:00:00",
        method="GET",
        uri="/",
        path="/",
        status=200,
        session=session,
        extra=extra,
    )


def rejected(site: str, reason: str = "key_error") -> float:
    """How many keys of ``site`` resolved to nobody for ``reason`` (resolver_rejected)."""
    value = REGISTRY.get_sample_value(
        "tirreno_shipper_resolver_rejected_total", {"site": site, "reason": reason}
    )
    return value or 0.0
