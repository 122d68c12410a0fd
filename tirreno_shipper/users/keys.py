"""A request → its session lookup key: which field holds it, and how it is transformed.

Every path a cookie can arrive by (``$cookie_NAME``, ``%{NAME}C``, a whole
``Cookie`` header, a JSON log's field) gives the value as the server saw it;
`normalise_cookie` then reads it as browsers and frameworks do (RFC 6265
§5.2: surrounding whitespace dropped, one pair of double quotes removed), so
``sessionid=K ;`` and ``sessionid="K"`` are the same session on every path and
every database.

The transforms run in the order written: ``url_decode``, ``strip_prefix``,
``split`` (separator and index), ``regex`` (one capture group, RE2: linear time
on a visitor's text), ``base64_decode``, ``sha256``/``md5``/``sha1`` (as the
application stores the key) and ``unseal`` (a framework's signed or encrypted
cookie, see `users.signed`). A step that cannot apply raises `KeyRejected`
with the reason counted: a cookie is whatever a visitor chose to send.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.parse
from collections.abc import Callable
from typing import Any

from tirreno_shipper import regex
from tirreno_shipper.config import (
    NGINX_COOKIE_NAME,
    KeySpec,
    RegexStep,
    Split,
    StripPrefix,
    Transform,
    Unseal,
    UsersConfig,
)
from tirreno_shipper.parse import LineParser
from tirreno_shipper.records import Request

# Longer keys are no session id any framework issues: the request has no key.
MAX_KEY_CHARS = 4096

# Request attributes a ``key: {field: ...}`` may name, each with the log variable
# it is parsed from (``session``: the cookie, see `LineParser.logs`); anything
# else is looked up in ``Request.extra`` under its nginx variable name.
_REQUEST_FIELDS = {
    "remote_addr": "remote_addr",
    "remote_user": "remote_user",
    "referer": "http_referer",
    "user_agent": "http_user_agent",
    "accept_language": "http_accept_language",
    "session": "session",
}

_DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
}


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_digest(key: str) -> str:
    """A short, non-reversible tag for a key, for debug logs only."""
    return sha256_hex(key)[:8]


class KeyRejected(Exception):
    """The request carries a key that cannot be looked up; ``reason`` is counted.

    ``detail`` says why in words fixed in the code (never the key or a secret), e.g.
    what an application must change for its cookies to be readable.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# Reasons a key is not looked up (`KeyRejected.reason`), counted per site.
FORGED = "forged"  # a signature that does not verify
UNDECODABLE = "undecodable"  # a step could not read the value (base64, URL, decrypt)
BAD_KEY = "bad_key"  # no key left (a split without that part, a regex that does not match)


# Characters at a cookie value's ends that `normalise_cookie` would remove.
_EDGE = frozenset(' \t"')


def normalise_cookie(value: str) -> str:
    """A cookie value as browsers and frameworks read it: trimmed, then unquoted once."""
    value = value.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return value


def _url_decode(value: str) -> str:
    # unquote never fails: an invalid escape stays as written, as browsers leave it.
    return urllib.parse.unquote(value, errors="strict") if "%" in value else value


def _base64_decode(value: str) -> str:
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = (
            base64.urlsafe_b64decode(padded)
            if "-" in value or "_" in value
            else base64.b64decode(padded, validate=True)
        )
        return raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise KeyRejected(UNDECODABLE) from exc


def _step(transform: Transform, secrets: tuple[str, ...]) -> Callable[[str], str]:
    """One transform as a function of the key; raises `KeyRejected`."""
    if isinstance(transform, str):
        if transform == "url_decode":

            def url_decode(value: str) -> str:
                try:
                    return _url_decode(value)
                except UnicodeDecodeError as exc:
                    raise KeyRejected(UNDECODABLE) from exc

            return url_decode
        if transform == "base64_decode":
            return _base64_decode
        digest = _DIGESTS[transform]
        return lambda v: str(digest(v.encode("utf-8")).hexdigest())
    if isinstance(transform, StripPrefix):
        prefix = transform.strip_prefix
        return lambda v: v.removeprefix(prefix)
    if isinstance(transform, Split):
        sep, index = transform.split, transform.index

        def split(value: str) -> str:
            parts = value.split(sep)
            if not -len(parts) <= index < len(parts):
                raise KeyRejected(BAD_KEY)
            return parts[index]

        return split
    if isinstance(transform, RegexStep):
        search = regex.compile(transform.regex).search

        def match(value: str) -> str:
            m = search(value)
            group = m.group(1) if m is not None else None
            if not group:
                raise KeyRejected(BAD_KEY)
            return group

        return match
    assert isinstance(transform, Unseal)
    return _unsealer(transform.unseal, secrets, transform.options())


def _unsealer(
    scheme: str, secrets: tuple[str, ...], options: dict[str, str]
) -> Callable[[str], str]:
    """The framework's unsealing function under the current secret, then the previous
    ones (keys derived once); raises ValueError for a configuration it cannot use
    (worded without the secret)."""
    # Imported here: `cryptography` costs ~7 MB of memory, and only a site that
    # unseals a framework's cookie needs it.
    from tirreno_shipper.users import signed

    current, *previous = secrets or ("",)
    inner = signed.unsealer(scheme, current, previous=previous, **options)

    def unseal(value: str) -> str:
        try:
            return inner(value)
        except signed.CookieRejected as exc:
            raise KeyRejected(exc.reason, exc.detail) from None

    return unseal


# The variables a response's new session cookie is logged in, by server.
SET_COOKIE_FIELDS = ("sent_http_set_cookie", "upstream_http_set_cookie", "apache_o_Set-Cookie")


def response_fields(cookie: str) -> tuple[str, ...]:
    """The extra log variables that may carry the response's ``cookie``."""
    nginx = () if "*" in cookie else ("upstream_cookie_" + cookie.lower(),)
    return (*nginx, *SET_COOKIE_FIELDS)


def _set_cookie_value(header: str, cookie: str) -> str | None:
    """``cookie``'s value in logged Set-Cookie header(s), if the response set it.

    nginx joins several Set-Cookie headers with "; " (1.23+) or logs the first;
    Apache joins them with ", ". Attributes (``Path=/``) are never a cookie named
    like the session's, so scanning every ``name=value`` pair is enough.
    """
    prefix = cookie[:-1] if cookie.endswith("*") else None
    for part in header.replace(", ", "; ").split(";"):
        name, eq, value = part.partition("=")
        name = name.strip()
        if eq and (name == cookie or (prefix is not None and name.startswith(prefix))):
            value = normalise_cookie(value)
            # A logout's Set-Cookie deletes the cookie (empty, or "deleted").
            return value if value and value != "deleted" else None
    return None


def _logged_as(spec: KeySpec) -> str:
    """The log variable the request's key is parsed from (``session`` for a cookie)."""
    if spec.cookie:
        return "session"
    assert spec.variable is not None
    return spec.variable if spec.header else _REQUEST_FIELDS.get(spec.variable, spec.variable)


def _how_to_log(spec: KeySpec, kind: str) -> str:
    """What to add to a log format of ``kind`` for it to carry the key."""
    if spec.cookie:
        cookie = spec.cookie
        if kind == "apache":
            if "*" in cookie:
                return 'add "%{Cookie}i" to the LogFormat (the whole Cookie header)'
            return f'add "%{{{cookie}}}C" to the LogFormat, as the apache_cookie preset does'
        if not NGINX_COOKIE_NAME.match(cookie):
            return 'add "$http_cookie" to the log_format (the whole Cookie header)'
        return f'add "$cookie_{cookie}" to the log_format, as the nginx_cookie preset does'
    if spec.header:
        logged = f"%{{{spec.header}}}i" if kind == "apache" else f"${spec.variable}"
        return f'add "{logged}" to the log format'
    return f"log the variable ${spec.variable}"


def _response_cookie_variable(cookie: str, kind: str) -> str:
    """How a log format of ``kind`` logs the response's ``cookie`` (a login's new session)."""
    if kind == "apache":
        return "%{Set-Cookie}o"
    if "*" in cookie or not NGINX_COOKIE_NAME.match(cookie):
        return "$upstream_http_set_cookie"
    return f"$upstream_cookie_{cookie}"


def _key_getter(config: UsersConfig) -> Callable[[Request], str | None]:
    spec = config.key
    if spec.cookie:
        # The parser already extracted the configured cookie into ``session``.
        return lambda r: r.session
    name = spec.variable  # the config model's one name for the field or header
    assert name is not None
    if spec.header:
        return lambda r: r.extra.get(name)
    field = name
    if field in _REQUEST_FIELDS:
        return lambda r: getattr(r, field)
    return lambda r: r.extra.get(field)


class KeyExtractor:
    """A request's (transformed) lookup key, as the configuration describes it."""

    __slots__ = (
        "_cookie",
        "_get",
        "_plain",
        "_response",
        "_response_fields",
        "_spec",
        "_steps",
        "problem",
    )

    def __init__(self, config: UsersConfig) -> None:
        self._spec = config.key
        self._get = _key_getter(config)
        # A chain it cannot build (an unseal secret the scheme cannot use) is
        # `problem`, for the resolver to refuse; `raw` still works without it.
        self.problem: str | None = None
        try:
            secrets = config.secret_texts()
            self._steps = tuple(_step(t, secrets) for t in config.key.steps())
        except ValueError as exc:
            self.problem = str(exc)
            self._steps = ()
        cookie = config.key.cookie
        self._cookie = cookie
        self._response = config.key.response if cookie else "off"
        self._response_fields = response_fields(cookie) if cookie else ()
        # A cookie key with no transforms, read from the request first.
        self._plain = bool(cookie) and not self._steps and self._response != "prefer"

    def logged(self, parser: LineParser) -> tuple[bool, bool]:
        """Whether ``parser``'s format can carry the key: (in the request, in the
        response's new session cookie, counted only where ``key.response`` reads it)."""
        request = parser.logs(_logged_as(self._spec))
        response = any(parser.logs(name) for name in self._response_fields)
        return request, response and self._response != "off"

    def format_problem(self, parser: LineParser) -> str | None:
        """Why no line in ``parser``'s format can carry the key, and what to log; None if
        some can. Known from the format alone: every request would be unresolved."""
        if any(self.logged(parser)):
            return None
        how = _how_to_log(self._spec, parser.fmt.kind)
        return f"logs no {self._spec.label} (users.key): every request would be unresolved; {how}"

    def empty_in_sample(self, parser: LineParser, sampled: int) -> str:
        """What a format that logs the key, empty in all ``sampled`` requests, means;
        and what to verify when somebody did log in."""
        spec = self._spec
        said = (
            f"{spec.label} is logged but empty in all {sampled} sampled requests: expected if "
            "nobody logged in lately (a quiet night, a crawl); otherwise check that"
        )
        if not spec.cookie:
            return f"{said} whatever sets ${spec.variable} (a proxy, the application) sets it"
        named = (
            f"starts with {spec.cookie[:-1]}" if spec.cookie.endswith("*") else f"is {spec.cookie}"
        )
        said = f"{said} the name of the application's session cookie {named}"
        if self._response == "off":
            return said
        if self.logged(parser)[1]:
            return f"{said} (no response set it either: no login in the sample)"
        variable = _response_cookie_variable(spec.cookie, parser.fmt.kind)
        return (
            f"{said}, and log the response's cookie too ({variable}): a login's new session "
            "is only there"
        )

    def raw(self, request: Request, *, response: str | None = None) -> str | None:
        """The key as logged, normalised (before the transforms), or ``None``."""
        mode = (response or self._response) if self._cookie else "off"
        value = None if mode == "prefer" else self._present(self._get(request))
        if value is None and mode != "off":
            value = self._from_response(request)
            if value is None and mode == "prefer":
                value = self._present(self._get(request))
        return value

    def _present(self, value: str | None) -> str | None:
        if value is None or value == "-":
            return None
        if self._cookie:
            value = normalise_cookie(value)
        return value if value.strip() else None

    def _from_response(self, request: Request) -> str | None:
        extra = request.extra
        if not extra:
            return None
        assert self._cookie is not None
        for name in self._response_fields:
            logged = extra.get(name)
            if not logged or logged == "-":
                continue
            if name.startswith("upstream_cookie_"):
                return self._present(logged)
            found = _set_cookie_value(logged, self._cookie)
            if found is not None:
                return found
        return None

    def __call__(self, request: Request, *, response: str | None = None) -> str | None:
        """The lookup key of ``request``, or ``None`` when it has none; raises
        `KeyRejected` when it has one that no step can read."""
        if self._plain and response is None:
            # The common case, per line: the request's own cookie, already clean.
            value = request.session
            if (
                value
                and value != "-"
                and value.isascii()
                and value[0] not in _EDGE
                and value[-1] not in _EDGE
                and len(value) <= MAX_KEY_CHARS
                and "\x00" not in value
            ):
                return value
        value = self.raw(request, response=response)
        if value is None:
            return None
        if len(value) > MAX_KEY_CHARS or "\x00" in value:
            # No framework issues such keys; binding them only invites errors
            # (PostgreSQL refuses NUL) and memory growth in the cache.
            raise KeyRejected(BAD_KEY)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: no driver could send it
                raise KeyRejected(BAD_KEY) from None
        for step in self._steps:
            value = step(value)
            if not value or "\x00" in value:
                raise KeyRejected(BAD_KEY)
        return value
