"""`Request` + `User` → the tirreno event: field names, eventType, truncation,
query redaction, client IP and the deterministic request id.

tirreno silently rewrites what it does not like (an invalid IP becomes
``0.0.0.0``, a bad email ``broken@user.local``, an over-long value is cut at the
byte) and loses the event when PostgreSQL refuses the result, so the mapper
applies tirreno's acceptance rules (`tirreno_shipper.tirreno`) itself and counts
every change in ``fixed``, by field and reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import operator
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

from tirreno_shipper import tirreno
from tirreno_shipper.config import ClientIpConfig
from tirreno_shipper.memo import Memo
from tirreno_shipper.records import Event, Request, User, UserShape

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
        # IPv4-mapped becomes IPv4 and an IPv6 zone is dropped: tirreno stores
        # 0.0.0.0 for what PHP's FILTER_VALIDATE_IP refuses.
        out = tirreno.ip_address(ip)
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


class Redactor:
    """Replaces the values of secret parameters by ``REDACTED``, in the query and
    in path parameters (``/app;jsessionid=...``), for ``url`` and ``httpReferer``."""

    def __init__(self, names: Sequence[str]) -> None:
        alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
        # In the query a value runs to the next parameter; in the path to the next segment.
        self._query = re.compile(rf"(?i)([?&;](?:{alternatives})=)[^&;#]*")
        self._path = re.compile(rf"(?i)(;(?:{alternatives})=)[^/;?#]*")

    def __call__(self, uri: str) -> str:
        path, mark, query = uri.partition("?")
        if ";" in path:
            path = self._path.sub(r"\1REDACTED", path)
        if mark:
            query = self._query.sub(r"\1REDACTED", mark + query)
        return path + query


def redactor(names: Sequence[str]) -> Redactor | None:
    return Redactor(names) if names else None


def _plain(value: str, limit: int) -> bool:
    """True when ``value`` needs no change (the common case, checked without encoding)."""
    return len(value) <= limit and value.isascii() and "\x00" not in value


class EventMapper:
    """Builds the form fields of one event with tirreno's acceptance rules
    (`tirreno_shipper.tirreno`); counts each change in ``fixed`` as ``field:reason``."""

    def __init__(self, client_ip: ClientIpConfig, redact_query: Sequence[str]) -> None:
        self.client = ClientIp(client_ip)
        self._redact = redactor(redact_query)
        self._url_memo: Memo[str, str] = Memo()
        self.fixed: Counter[str] = Counter()

    def _fit(self, name: str, value: str) -> str:
        out, reason = tirreno.fit(name, value)
        if reason is not None:
            self.fixed[f"{name}:{reason}"] += 1
        return out

    def url(self, uri: str) -> str:
        """``uri`` with secret parameters redacted (memoised: URLs repeat)."""
        if self._redact is None or ("?" not in uri and ";" not in uri):
            return uri
        out = self._url_memo.get(uri)
        if out is None:
            out = self._redact(uri)
            if out == uri:
                out = uri  # the same object: `build` counts a redaction by identity
            self._url_memo.put(uri, out, 2 * len(uri))
        return out

    def build(  # noqa: C901 - per event: all fields in one frame, no call per field
        self,
        req: Request,
        user: User | None,
        ip: str,
        event_type: str,
        rid: str,
        *,
        keep_type: bool = False,
    ) -> Event:
        """``ip`` is the already validated client address (`ClientIp.of`).

        At a status of 400 or more tirreno stores page_error whatever the type
        says: with ``keep_type`` (the rule's choice) httpCode is left out so the
        type survives; otherwise the type sent is page_error, as stored.
        """
        assert req.uri is not None
        url = self.url(req.uri)
        if url is not req.uri:
            self.fixed["url:redacted"] += 1
        fields: dict[str, str] = {
            "ipAddress": ip,
            "url": url if _plain(url, 2047) else self._fit("url", url),
        }
        if req.time is not None:
            fields["eventTime"] = req.time
        if req.user_agent is not None:
            ua = req.user_agent
            fields["userAgent"] = ua if _plain(ua, 511) else self._fit("userAgent", ua)
        if req.referer is not None:
            redacted = self.url(req.referer)
            if redacted is not req.referer:
                self.fixed["httpReferer:redacted"] += 1
            ref, reason = tirreno.referer(redacted)
            if reason is not None:
                self.fixed[f"httpReferer:{reason}"] += 1
            fields["httpReferer"] = ref
        status = req.status
        if status is not None:
            if status < 400:
                fields["httpCode"] = str(status)
            elif keep_type and event_type != "page_error":
                self.fixed[f"httpCode:{tirreno.KEPT_TYPE}"] += 1
            else:
                fields["httpCode"] = str(status)
                event_type = "page_error"
        if req.method is not None:
            method = tirreno.method(req.method)
            if method is None:
                self.fixed[f"httpMethod:{tirreno.INVALID}"] += 1
            else:
                fields["httpMethod"] = method
        if req.accept_language is not None:
            fields["browserLanguage"] = self._fit("browserLanguage", req.accept_language)
        fields["eventType"] = event_type
        if user is not None:
            shape = user.mapped
            if shape is None:
                shape = _remember_fields(user)
            values = shape.values
            if values is None:
                values = shape.own(user)
            # One name per value by construction; strict= would double the cost.
            fields.update(zip(shape.names, values))  # noqa: B905
            for name in shape.fixed:
                self.fixed[name] += 1
        return Event(rid, fields)


# The `User` attribute each user field is sent from.
_ATTRIBUTES = {
    "userName": "user_name",
    "emailAddress": "email_address",
    "firstName": "first_name",
    "lastName": "last_name",
    "fullName": "full_name",
    "phoneNumber": "phone_number",
    "userCreated": "user_created",
}
# One shape per (field names, changes): a few dozen at most (subsets of seven fields,
# each with a reason or two).
_SHAPES: dict[tuple[tuple[str, ...], tuple[str, ...]], UserShape] = {}


def _remember_fields(user: User) -> UserShape:
    """Work out ``user``'s fields once and keep them on the record (`User.mapped`, a memo
    and not the value): the shared shape, or a copy with the values if they are not the
    record's own strings (a cut, a lower-cased address, a normalised phone number)."""
    fields, fixed = user_fields(user)
    names = tuple(fields)
    shape = _SHAPES.get((names, fixed))
    if shape is None:
        own = _own_values([_ATTRIBUTES[name] for name in names])
        shape = _SHAPES.setdefault((names, fixed), UserShape(names, fixed, own))
    if any(value is not getattr(user, _ATTRIBUTES[name]) for name, value in fields.items()):
        shape = shape._replace(values=tuple(fields.values()))
    object.__setattr__(user, "mapped", shape)
    return shape


def _own_values(attributes: list[str]) -> Callable[[User], tuple[str, ...]]:
    """A record's values of ``attributes``, as a tuple (attrgetter's is one only for two
    or more)."""
    if len(attributes) > 1:
        get: Callable[[User], tuple[str, ...]] = operator.attrgetter(*attributes)
        return get
    (only,) = attributes

    def one(user: User) -> tuple[str, ...]:
        return (getattr(user, only),)

    return one


def user_fields(user: User) -> tuple[dict[str, str], tuple[str, ...]]:
    """A user's tirreno fields (validated, cut) and the changes that took, as counted in
    ``fixed`` (``field:reason``), once per event that carries the user."""
    fields: dict[str, str] = {}
    fixed: list[str] = []
    name, reason = tirreno.fit("userName", user.user_name)
    fields["userName"] = name
    if reason is not None:
        fixed.append(f"userName:{reason}")
    if user.email_address:
        email, reason = tirreno.email(user.email_address)
        if reason is not None:
            fixed.append(f"emailAddress:{reason}")
        if email is not None:
            fields["emailAddress"] = email
    for field, value in (
        ("firstName", user.first_name),
        ("lastName", user.last_name),
        ("fullName", user.full_name),
    ):
        if value:
            fields[field], reason = tirreno.fit(field, value)
            if reason is not None:
                fixed.append(f"{field}:{reason}")
    if user.user_created:
        if tirreno.time_ok(user.user_created):
            fields["userCreated"] = user.user_created
        else:
            # tirreno would store NULL (UserCreated.php).
            fixed.append(f"userCreated:{tirreno.INVALID}")
    if user.phone_number:
        phone = re.sub(r"[^0-9+]", "", user.phone_number)
        if phone and len(phone) <= tirreno.limit_of("phoneNumber"):
            fields["phoneNumber"] = phone
            if phone != user.phone_number.replace(" ", ""):
                # tirreno removes spaces itself; other separators are our change.
                fixed.append("phoneNumber:normalised")
        else:
            fixed.append(f"phoneNumber:{tirreno.INVALID}")
    return fields, tuple(fixed)
