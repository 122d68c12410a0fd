"""`Request` + `User` → the tirreno event: field names, eventType, truncation,
query redaction, client IP and the deterministic request id.

tirreno silently rewrites what it does not like (an invalid IP becomes
``0.0.0.0``, a bad email ``broken@user.local``, an over-long value is cut), so
the mapper fixes values itself and counts every fix in ``fixed``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

from tirreno_shipper.config import ClientIpConfig
from tirreno_shipper.memo import Memo
from tirreno_shipper.records import Event, Request, User
from tirreno_shipper.tirreno import FIELD_LIMITS, limit_of

# Namespace of every request id; changing it would make resent events look new.
REQUEST_ID_NAMESPACE = uuid.UUID("6f1d5a0c-3b5e-5c8a-9d0e-7a4f2b9c1e30")
_NS = REQUEST_ID_NAMESPACE.bytes


# RFC 4122 variant: the top two bits of the 17th nibble become 10.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def request_ids(site: str, file_key: str) -> Callable[[int], str]:
    """A function offset → UUIDv5 of site, file identity and offset.

    The same value as ``uuid.uuid5(REQUEST_ID_NAMESPACE, f"{site}|{file_key}|{offset}")``;
    the hash of the common prefix is computed once per file and copied per line.
    """
    prefix = hashlib.sha1(_NS + f"{site}|{file_key}|".encode())  # noqa: S324 - as UUIDv5 says

    def for_offset(offset: int) -> str:
        h = prefix.copy()
        h.update(b"%d" % offset)
        x = h.hexdigest()
        # Version nibble 5; variant bits 10xx on the 17th nibble.
        return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"

    return for_offset


def request_id(site: str, file_key: str, offset: int) -> str:
    """UUIDv5 of site, file identity and byte offset."""
    return request_ids(site, file_key)(offset)


_UNKNOWN = object()
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")


class ClientIp:
    """The client address: ``remote_addr``, or the right-most ``X-Forwarded-For``
    entry that is not one of our trusted proxies (left-most if all are)."""

    def __init__(self, config: ClientIpConfig) -> None:
        self.forwarded_for = config.forwarded_for
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies)
        # X-Forwarded-For hops are a visitor's text: the memo is bounded in size too.
        self._valid: Memo[str, str | None] = Memo(max_entries=65536)

    def valid(self, ip: str | None) -> str | None:
        """The normalised address, or None if ``ip`` is not an IP address (cached)."""
        if ip is None:
            return None
        known = self._valid.get(ip, _UNKNOWN)
        if known is not _UNKNOWN:
            return known  # type: ignore[return-value]
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
            mapped = getattr(addr, "ipv4_mapped", None)
            out: str | None = str(mapped or addr)
        except ValueError:
            out = None
        self._valid.put(ip, out, len(ip))
        return out

    def _trusted_addr(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self._trusted)

    def of(self, req: Request) -> str | None:
        remote = self.valid(req.remote_addr)
        if not self.forwarded_for or remote is None or not self._trusted_addr(remote):
            return remote
        chain = req.extra.get("http_x_forwarded_for")
        if not chain:
            return remote
        hops = [h for h in (self.valid(p.strip()) for p in chain.split(",")) if h]
        for hop in reversed(hops):
            if not self._trusted_addr(hop):
                return hop
        return hops[0] if hops else remote


def redactor(names: Sequence[str]) -> re.Pattern[str] | None:
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"(?i)([?&;](?:{alternatives})=)[^&;#]*")


class EventMapper:
    """Builds the form fields of one event; counts each value it had to fix."""

    def __init__(self, client_ip: ClientIpConfig, redact_query: Sequence[str]) -> None:
        self.client = ClientIp(client_ip)
        self._redact = redactor(redact_query)
        self._url_memo: Memo[str, str] = Memo()
        self.fixed: Counter[str] = Counter()
        # A user's fields (validated, cut) per User record: the resolver hands
        # out the same records all day. The names it had to fix are kept too,
        # so `fixed` still counts every event that carried a fixed value.
        self._user_memo: dict[User, tuple[dict[str, str], tuple[str, ...]]] = {}

    def _cut(self, name: str, value: str) -> str:
        limit = FIELD_LIMITS.get(name, 100)
        if len(value) > limit:
            self.fixed[name] += 1
            return value[:limit]
        return value

    def url(self, uri: str) -> str:
        if self._redact is None or "?" not in uri:
            return uri
        out = self._url_memo.get(uri)
        if out is None:
            out = self._redact.sub(r"\1REDACTED", uri)
            self._url_memo.put(uri, out, 2 * len(uri))
        return out

    def build(self, req: Request, user: User | None, ip: str, event_type: str, rid: str) -> Event:
        """``ip`` is the already validated client address (`ClientIp.of`)."""
        assert req.uri is not None
        url = self.url(req.uri)
        fields: dict[str, str] = {
            "ipAddress": ip,
            "url": url if len(url) <= 2047 else self._cut("url", url),
        }
        if req.time is not None:
            fields["eventTime"] = req.time
        if req.user_agent is not None:
            ua = req.user_agent
            fields["userAgent"] = ua if len(ua) <= 511 else self._cut("userAgent", ua)
        if req.referer is not None:
            ref = req.referer
            fields["httpReferer"] = ref if len(ref) <= 2047 else self._cut("httpReferer", ref)
        if req.status is not None:
            fields["httpCode"] = str(req.status)
        if req.method is not None:
            method = req.method
            fields["httpMethod"] = method if len(method) <= 100 else self._cut("httpMethod", method)
        if req.accept_language is not None:
            fields["browserLanguage"] = self._cut("browserLanguage", req.accept_language)
        fields["eventType"] = event_type
        if user is not None:
            memo = self._user_memo.get(user)
            if memo is None:
                before = Counter(self.fixed)
                user_fields: dict[str, str] = {}
                self._user_fields(user_fields, user)
                fixed = tuple((self.fixed - before).elements())
                if len(self._user_memo) >= 65536:
                    self._user_memo.clear()
                memo = self._user_memo[user] = (user_fields, fixed)
            else:
                for name in memo[1]:
                    self.fixed[name] += 1
            fields.update(memo[0])
        return Event(rid, fields)

    def _user_fields(self, fields: dict[str, str], user: User) -> None:
        fields["userName"] = self._cut("userName", user.user_name)
        if user.email_address:
            email = user.email_address.strip()
            if _EMAIL.fullmatch(email) and len(email) <= limit_of("emailAddress"):
                fields["emailAddress"] = email
            else:
                # tirreno would store broken@user.local; better to send none.
                self.fixed["emailAddress"] += 1
        for name, value in (
            ("firstName", user.first_name),
            ("lastName", user.last_name),
            ("fullName", user.full_name),
            ("userCreated", user.user_created),
        ):
            if value:
                fields[name] = self._cut(name, value)
        if user.phone_number:
            phone = re.sub(r"[^0-9+]", "", user.phone_number)
            if phone and len(phone) <= limit_of("phoneNumber"):
                fields["phoneNumber"] = phone
            else:
                self.fixed["phoneNumber"] += 1
