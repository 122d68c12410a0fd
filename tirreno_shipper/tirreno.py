"""tirreno's acceptance rules: what its sensor does to each field, and what it fails to store.

tirreno answers 204 *before* it writes the event, so a value PostgreSQL refuses
loses the event without a sign. Every rule here is taken from the source of
tirreno v0.10.0 (``tirrenotechnologies/tirreno``; paths below are in that
repository) and, for the email filter, PHP 8.2's ``ext/filter/logical_filters.c``.
The event mapper (`tirreno_shipper.events`) uses these rules to send only values
tirreno stores as they are; the sink (`tirreno_shipper.sink`) uses them to store
what tirreno would store, and to refuse what tirreno would fail to insert.
``tests/tirreno_conformance.php`` runs the same cases through PHP itself.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tirreno_shipper.config import EVENT_TYPES

TIRRENO_VERSION = "v0.10.0"

# Maximum lengths in BYTES: `Length` compares `strlen` and cuts with `substr`
# (sensor/src/Model/Validated/Length.php; the limits are in Url.php, HttpReferer.php,
# UserAgent.php, Email.php, PageTitle.php, BrowserLanguage.php; Phone.php: 19).
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

# The fields tirreno reads (sensor/src/Model/Http/Request.php, ACCEPTABLE_FIELDS,
# less payload, fieldHistory and blacklisting, which the shipper never sends).
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

# event.traceid is varchar(36) (install/install.sql): a longer X-Request-Id
# fails the insert after the 204.
MAX_REQUEST_ID = 36

# install/install.sql, table event_http_method; EventRepository::getHttpMethod
# looks the value up with ILIKE, and stores NULL for anything else.
KNOWN_METHODS = frozenset(
    {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT", "OPTIONS"}
    | {"LINK", "UNLINK"}
)

# sensor/src/Model/Validated/Email.php: what an address FILTER_VALIDATE_EMAIL
# refuses is stored as.
BROKEN_EMAIL = "broken@user.local"
# sensor/src/Model/Validated/IpAddress.php: what an invalid address is stored as.
INVALID_IP = "0.0.0.0"  # noqa: S104 - a stored value, not an address to bind

# Reasons a value was changed, as counted in `fixed` (field:reason).
CUT = "cut"  # longer than tirreno's byte limit: cut at a character boundary
NUL = "nul"  # NUL characters removed: PostgreSQL text cannot hold them
INVALID = "invalid"  # tirreno would replace it (email placeholder, 0.0.0.0, NULL)
UNSTORABLE = "unstorable"  # tirreno would accept it and then fail to insert the event
KEPT_TYPE = "kept_type"  # httpCode left out so that tirreno keeps the rule's eventType


def limit_of(name: str) -> int:
    return FIELD_LIMITS.get(name, DEFAULT_LIMIT)


def cut(value: str, limit: int) -> str:
    """``value`` cut to at most ``limit`` UTF-8 bytes, never inside a character.

    tirreno's ``substr`` cuts at the byte: half a character is an invalid UTF-8
    sequence and PostgreSQL refuses the whole event (SQLSTATE 22021).
    """
    if len(value) <= limit and (value.isascii() or len(value) * 4 <= limit):
        return value
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return value
    # Dropping the bytes of the one character the cut went through.
    return data[:limit].decode("utf-8", "ignore")


def fit(name: str, value: str) -> tuple[str, str | None]:
    """The value to send for a plain text field, and why it changed (None: unchanged)."""
    reason = None
    if "\x00" in value:
        value, reason = value.replace("\x00", ""), NUL
    out = cut(value, limit_of(name))
    return out, (CUT if len(out) != len(value) else reason)


_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def php_urldecode(data: bytes) -> bytes:
    """PHP's ``urldecode``: ``+`` is a space, ``%XX`` (two hex digits) a byte, the rest as is."""
    if b"%" not in data:
        return data.replace(b"+", b" ")
    # '+' is no hex digit, so replacing it first cannot create or break an escape.
    return _ESCAPE.sub(lambda m: bytes((int(m[1], 16),)), data.replace(b"+", b" "))


def referer(text: str) -> tuple[str, str | None]:
    """The ``httpReferer`` to send so that tirreno stores exactly ``text``.

    sensor/src/Model/Validated/HttpReferer.php cuts at 2047 bytes and then
    ``urldecode``s: a ``%FF`` would become a byte PostgreSQL refuses and ``+`` a
    space. Escaping ``%`` and ``+`` makes the decode give back ``text`` itself
    (the referer as the web server logged it, like ``url``); the cut is made here,
    at a character boundary and never inside an escape.
    """
    reason = None
    if "\x00" in text:
        text, reason = text.replace("\x00", ""), NUL
    encoded = text.replace("%", "%25").replace("+", "%2B")
    limit = FIELD_LIMITS["httpReferer"]
    short = cut(encoded, limit)
    if short is encoded or len(short) == len(encoded):
        return encoded, reason
    # '%' only starts an escape now; a cut may leave '%' or '%2' at the end.
    tail = short.rfind("%", len(short) - 2)
    if tail >= 0:
        short = short[:tail]
    return short, CUT


def stored_referer(sent: str) -> bytes:
    """What tirreno keeps of a received ``httpReferer`` (bytes: it may not be UTF-8)."""
    return php_urldecode(sent.encode("utf-8", "surrogatepass")[: FIELD_LIMITS["httpReferer"]])


# -- email -------------------------------------------------------------------------
#
# PHP's FILTER_VALIDATE_EMAIL (ext/filter/logical_filters.c, php_filter_validate_email,
# regexp1: tirreno passes no FILTER_FLAG_EMAIL_UNICODE) rewritten without its two
# nested quantifiers, which backtrack exponentially in Python's engine on a long
# failing domain: `((xn--)?label\.){1,126}){1,}` is `(label\.)+` (an "xn--" label
# is a label), and the TLD's `xn--` alternative is a case of `[a-z][a-z0-9]*`.
# Its two length look-aheads are counted by `_units`. tests/test_tirreno.py
# checks this against PHP's own filter_var.

_ATOM = rb"[\x21\x23-\x27\x2A\x2B\x2D\x2F-\x39\x3D\x3F\x5E-\x7E]+"
_QUOTED = rb"\x22(?:[\x01-\x08\x0B\x0C\x0E-\x1F\x21\x23-\x5B\x5D-\x7F]|\x5C[\x00-\x7F])*\x22"
_WORD = rb"(?:" + _ATOM + rb"|" + _QUOTED + rb")"
_HOST = rb"(?!.*[^.]{64,})(?:[a-z0-9]+(?:-+[a-z0-9]+)*\.)+[a-z][a-z0-9]*(?:-+[a-z0-9]+)*"
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_H16 = rb"[a-f0-9]{1,4}"
_LITERAL = (
    rb"\[(?:(?:IPv6:(?:(?:" + _H16 + rb"(?::" + _H16 + rb"){7})"
    rb"|(?:(?!(?:.*[a-f0-9][:\]]){7,})(?:" + _H16 + rb"(?::" + _H16 + rb"){0,5})?::"
    rb"(?:" + _H16 + rb"(?::" + _H16 + rb"){0,5})?)))"
    rb"|(?:(?:IPv6:(?:(?:" + _H16 + rb"(?::" + _H16 + rb"){5}:)"
    rb"|(?:(?!(?:.*[a-f0-9]:){5,})(?:" + _H16 + rb"(?::" + _H16 + rb"){0,3})?::"
    rb"(?:" + _H16 + rb"(?::" + _H16 + rb"){0,3}:)?)))?"
    rb"" + _OCTET + rb"(?:\." + _OCTET + rb"){3}))\]"
)
_PHP_LOCAL = re.compile(_WORD + rb"(?:\." + _WORD + rb")*@", re.I)
_PHP_HOST = re.compile(_HOST + rb"\Z", re.I)
_PHP_LITERAL = re.compile(_LITERAL + rb"\Z", re.I)
# The longest address literal: "[IPv6:" + 45 characters + "]".
_MAX_LITERAL = 52

# install/install.sql: CREATE DOMAIN email ... CHECK (the column event_email.email).
# An address PHP accepts but this refuses (a quoted local part, an address literal)
# fails the insert after the 204.
_DB_EMAIL = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
)


def _units(data: bytes) -> tuple[int, int]:
    """The most "characters" PHP's two look-aheads can count: (from the start,
    before an '@'). A unit is one byte other than '\\' and '"', or a '\\' pair,
    each with optional quotes around it."""
    n = len(data)
    if b'"' not in data and b"\\" not in data:
        # Every byte is a unit (as the walk below finds, ~100 times slower): the
        # address's usual shape, checked once per distinct user.
        return n, max(data.rfind(b"@"), 0)
    return _walk_units(data)


def _walk_units(data: bytes) -> tuple[int, int]:
    """`_units` by walking every way to read quotes and backslash pairs."""
    n = len(data)
    best = [-1] * (n + 1)
    best[0] = 0
    most = most_at = 0
    for p in range(n + 1):
        units = best[p]
        if units < 0:
            continue
        most = max(most, units)
        if p < n and data[p] == 0x40:
            most_at = max(most_at, units)
        for q in (p, p + 1) if p < n and data[p] == 0x22 else (p,):
            if q >= n:
                continue
            c = data[q]
            if c == 0x5C:
                if q + 1 >= n or data[q + 1] > 0x7E:
                    continue
                r = q + 2
            elif c == 0x22:
                continue
            else:
                r = q + 1
            for s in (r, r + 1) if r < n and data[r] == 0x22 else (r,):
                best[s] = max(best[s], units + 1)
    return most, most_at


def php_filter_validate_email(value: str) -> bool:
    """``filter_var($value, FILTER_VALIDATE_EMAIL) !== false`` in PHP 8.2."""
    data = value.encode("utf-8", "surrogatepass")
    # Checked before the cache: at most 320 bytes a key.
    return len(data) <= 320 and _validate_email(data)


# The mapper checks a user's address once per record (`User.mapped`); what checks it per
# event (a dry run's and the test sink's "stored" fields) sees a few users over and over.
@functools.lru_cache(maxsize=256)
def _validate_email(data: bytes) -> bool:
    local = _PHP_LOCAL.match(data)
    if local is None:
        return False
    domain = data[local.end() :]
    if not (
        _PHP_HOST.match(domain) or (len(domain) <= _MAX_LITERAL and _PHP_LITERAL.match(domain))
    ):
        return False
    most, most_at = _units(data)
    return most < 255 and most_at < 65


def normalise_email(value: str) -> str:
    """Email.php: ``strtolower(str_replace(' ', '', $value))`` (ASCII only in PHP 8.2)."""
    value = value.replace(" ", "")
    lowered = value.lower() if value.isascii() else value.translate(_ASCII_LOWER)
    # The same object when nothing changed: the user's record and its event fields
    # then share one string (for every cached user).
    return value if lowered == value else lowered


_ASCII_LOWER = {c: c + 32 for c in range(0x41, 0x5B)}


def stored_email(value: str) -> str:
    """What tirreno keeps of a received ``emailAddress`` (Email.php)."""
    value = normalise_email(value)
    return value if php_filter_validate_email(value) else BROKEN_EMAIL


def email(value: str) -> tuple[str | None, str | None]:
    """The ``emailAddress`` to send (None: send none) and why it changed.

    An address tirreno would replace by ``broken@user.local`` is left out (reason
    ``invalid``): the account keeps its last good address instead of a placeholder.
    One PHP accepts but the database refuses (``"a b"@x.org``, ``a@[10.0.0.1]``) is
    left out too (``unstorable``): sent, it would lose the whole event.
    """
    norm = normalise_email(value)
    if not php_filter_validate_email(norm):
        return None, INVALID
    if not _DB_EMAIL.fullmatch(norm):
        return None, UNSTORABLE
    # Spaces removed and lower case: tirreno does the same, so no change to count.
    return norm, None


# -- the other fields -----------------------------------------------------------------


def ip_address(value: str) -> str | None:
    """A client address as tirreno's FILTER_VALIDATE_IP accepts it (IpAddress.php), or None.

    IPv4-mapped IPv6 becomes IPv4; an IPv6 zone (``fe80::1%eth0``) is dropped:
    PHP refuses it and tirreno would store 0.0.0.0.
    """
    try:
        addr = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.scope_id is not None:
            return str(ipaddress.IPv6Address(str(addr).partition("%")[0]))
    return str(addr)


def method(value: str) -> str | None:
    """The ``httpMethod`` to send: a method tirreno knows (upper case), else None.

    An unknown method is stored as NULL; and the lookup is an ILIKE, so ``G_T`` or
    ``%`` would be stored as some other method.
    """
    upper = value.upper()
    return upper if upper in KNOWN_METHODS else None


def stored_type(event_type: str | None, http_code: int | None) -> str:
    """The eventType tirreno stores (Repository/EventRepository.php, ``insert``):
    any httpCode >= 400 is page_error, an unknown or missing type page_view."""
    if http_code is not None and http_code >= 400:
        return "page_error"
    if event_type is None:
        return "page_view"
    lower = event_type.lower()
    return lower if lower in EVENT_TYPES else "page_view"


# Timestamp.php / UserCreated.php: 'Y-m-d H:i:s.v', 'Y-m-d H:i:s' or 'Y-m-d H:i:s.u';
# anything else is the server's "now" (eventTime) or NULL (userCreated).
_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,6})?")


def time_ok(value: str) -> bool:
    return _TIME.fullmatch(value) is not None


# -- what tirreno stores ---------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Stored:
    """An event as tirreno keeps it; ``lost`` says why the insert would fail (None: stored)."""

    fields: dict[str, str | None]
    lost: str | None


def _text(name: str, data: bytes) -> tuple[str | None, str | None]:
    """Decode a value tirreno would store; the loss reason if PostgreSQL refuses it."""
    if b"\x00" in data:
        return None, f"{name} holds a NUL byte (PostgreSQL refuses it)"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, f"{name} is not valid UTF-8 after tirreno's cut or decode (SQLSTATE 22021)"


def tirreno_stores(fields: Mapping[str, str], request_id: str | None = None) -> Stored:
    """Run tirreno's own transformations (sensor/src/Factory/RequestFactory.php and
    the Validated models) over the received fields: the values it keeps, or why
    the insert would fail after the 204."""
    out: dict[str, str | None] = {}
    lost: str | None = None
    if request_id is not None and len(request_id) > MAX_REQUEST_ID:
        lost = f"X-Request-Id longer than {MAX_REQUEST_ID} characters (event.traceid)"
    for name, value in fields.items():
        if name not in KNOWN_FIELDS:
            continue
        data = value.encode("utf-8", "surrogatepass")
        stored: str | None
        why: str | None = None
        if name == "httpReferer":
            stored, why = _text(name, stored_referer(value))
        elif name == "emailAddress":
            stored = stored_email(value)
            if "\x00" in stored:
                why = f"{name} holds a NUL byte (PostgreSQL refuses it)"
            elif stored != BROKEN_EMAIL and not _DB_EMAIL.fullmatch(stored):
                why = f"emailAddress {stored!r} fails the database's email CHECK"
        elif name == "ipAddress":
            ip = value.replace(" ", "")
            stored = ip if _php_ip(ip) else INVALID_IP
        elif name == "phoneNumber":
            stored, why = _text(name, data.replace(b" ", b"")[: limit_of(name)])
        elif name == "httpCode":
            stored = str(int(value)) if value.isascii() and value.isdigit() else "0"
        elif name in ("eventTime", "userCreated"):
            stored = value if time_ok(value) else ("now" if name == "eventTime" else None)
        elif name == "httpMethod":
            cut_method, why = _text(name, data[: limit_of(name)])
            stored = cut_method.upper() if cut_method and _ilike_method(cut_method) else None
        else:
            stored, why = _text(name, data[: limit_of(name)])
        out[name] = stored
        lost = lost or why
    if out.get("userName") is None:
        # RequestFactory: no userName is md5 of the stored email, or 'N/A' with neither.
        mail = out.get("emailAddress")
        out["userName"] = hashlib.md5(mail.encode()).hexdigest() if mail else "N/A"  # noqa: S324
    code = out.get("httpCode")
    out["eventType"] = stored_type(out.get("eventType"), int(code) if code else None)
    return Stored(out, lost)


def _ilike_method(value: str) -> bool:
    # ILIKE with its wildcards, as EventRepository::getHttpMethod queries it.
    if value.upper() in KNOWN_METHODS:
        return True
    if "%" not in value and "_" not in value:
        return False
    pattern = re.compile(
        "".join("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in value),
        re.I | re.S,
    )
    return any(pattern.fullmatch(m) for m in KNOWN_METHODS)


def _php_ip(value: str) -> bool:
    # FILTER_VALIDATE_IP: plain IPv4 (no leading zeros) or IPv6 without a zone.
    if "%" in value or not value.isascii():
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def validate_fields(fields: Mapping[str, str], request_id: str) -> str | None:
    """Why tirreno would refuse, rewrite or lose this event; None if it stores it as sent."""
    if len(request_id) > MAX_REQUEST_ID:
        return f"request id longer than {MAX_REQUEST_ID} characters"
    ip = fields.get("ipAddress")
    if not ip:
        return "missing ipAddress"
    if not _php_ip(ip):
        return "ipAddress is not an IP address tirreno accepts (it would store 0.0.0.0)"
    if not fields.get("url"):
        return "missing url"
    for name, value in fields.items():
        if name not in KNOWN_FIELDS:
            return f"unknown field {name}"
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit_of(name):
            return f"{name} longer than {limit_of(name)} bytes"
    event_type = fields.get("eventType")
    if event_type is not None and event_type not in EVENT_TYPES:
        return f"unknown eventType {event_type}"
    return tirreno_stores(fields, request_id).lost
