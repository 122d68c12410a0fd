"""Access-log lines → `Request` records, fast.

One precompiled expression matches the whole line (see `formats`); only the
fields the event needs are converted, and the slow conversions are cached:
a busy log repeats the same timestamp for every request in a second, so the
timestamp → tirreno ``eventTime`` conversion runs once per second of log, not
once per line.

Bytes are read as Latin-1 (a lossless byte → character map), matched, and each
field is unescaped (nginx ``\\xHH``; Apache ``\\xhh \\" \\\\ \\t \\n``) and
decoded as UTF-8 with a Latin-1 fallback, field by field, only when it holds a
backslash or a non-ASCII character. JSON lines follow the same rule: nginx's
``escape=json`` writes bytes >= 0x80 unchanged, so a line that is not UTF-8 is
decoded with ``surrogateescape`` and each string field re-decoded on its own.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tirreno_shipper.formats import CompiledFormat
from tirreno_shipper.memo import Memo
from tirreno_shipper.records import EMPTY, Request

# Reasons a line is skipped; each is a metric label.
NO_MATCH = "no_match"
INVALID_BYTES = "invalid_bytes"
BAD_TIME = "bad_time"
BAD_STATUS = "bad_status"
TOO_LONG = "too_long"
REASONS = (NO_MATCH, INVALID_BYTES, BAD_TIME, BAD_STATUS, TOO_LONG)
# Not a parse failure: the path matched the site's exclusion rules, which the
# parser is given so that an excluded static asset costs one regex and no more.
EXCLUDED_PATH = "excluded_path"

_ESCAPE = re.compile(rb'\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|["\\nrtvbf/])')
_SIMPLE = {
    b'"': b'"',
    b"\\": b"\\",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
    b"b": b"\b",
    b"f": b"\f",
    b"/": b"/",
}


def _unescape_one(m: re.Match[bytes]) -> bytes:
    esc = m.group(1)
    if esc[:1] == b"x":
        return bytes((int(esc[1:], 16),))
    if esc[:1] == b"u":  # nginx escape=json writes \u00XX for control bytes
        return chr(int(esc[1:], 16)).encode("utf-8")
    return _SIMPLE[esc]


def decode_field(value: str) -> str:
    """Unescape a field read as Latin-1 and decode it as UTF-8, else Latin-1."""
    if value.isascii() and "\\" not in value:
        return value
    raw = value.encode("latin-1")
    if b"\\" in raw:
        raw = _ESCAPE.sub(_unescape_one, raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# In a JSON string of a line with bytes that are not UTF-8, U+DC80..U+DCFF stand
# for those bytes (surrogateescape); any other lone surrogate came from a
# \uD800-style escape in the JSON text.
_SURROGATE = re.compile("[\ud800-\udfff]")
_OTHER_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def redecode_escaped(text: str) -> str:
    """A JSON string of a line read with ``surrogateescape``, decoded as its field's bytes:
    UTF-8 if they are, else Latin-1 (as `decode_field` does for the text formats).

    Lone surrogates from ``\\ud800`` escapes become U+FFFD, as on the UTF-8 path.
    (A forged ``\\udce9`` escape cannot be told from a raw 0xE9 byte; nginx never
    writes one, and either way the result is encodable text.)
    """
    if _SURROGATE.search(text) is None:  # this field was UTF-8: left as it is
        return text
    pieces = [p.encode("utf-8", "surrogateescape") for p in _OTHER_SURROGATE.split(text)]
    try:
        return "\ufffd".join(p.decode("utf-8") for p in pieces)
    except UnicodeDecodeError:
        return "\ufffd".join(p.decode("latin-1") for p in pieces)


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def _fmt(dt: datetime, millis: bool) -> str:
    dt = dt.astimezone(UTC)
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} {dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    return f"{text}.{dt.microsecond // 1000:03d}" if millis else text


_DAY_BASE: dict[str, int | None] = {}


def _day_base(date_tz: str) -> int | None:
    """Epoch seconds of local midnight for ``10/Oct/2000 -0700`` (cached per day and zone)."""
    base = _DAY_BASE.get(date_tz, -1)
    if base != -1:
        return base
    try:
        day, mon, year_tz = date_tz.split("/")
        year, tz = year_tz.split(" ")
        hh, mm = tz[1:3], tz[3:5]
        if len(tz) != 5 or tz[0] not in "+-" or not (tz[1:].isascii() and tz[1:].isdigit()):
            raise ValueError(tz)
        if int(hh) > 23 or int(mm) > 59:  # as datetime.fromisoformat refuses them
            raise ValueError(tz)
        sign = -1 if tz[0] == "-" else 1
        offset = (int(hh) * 3600 + int(mm) * 60) * sign
        midnight = datetime(int(year), _MONTHS[mon], int(day), tzinfo=UTC)
        result: int | None = int(midnight.timestamp()) - offset
    except (ValueError, KeyError, IndexError):
        result = None
    if len(_DAY_BASE) > 1024:
        _DAY_BASE.clear()
    _DAY_BASE[date_tz] = result
    return result


def time_local_to_utc(value: str) -> str | None:
    """``10/Oct/2000:13:55:36 -0700`` → ``2000-10-10 20:55:36``.

    The date and zone part is converted once per day; the time of day is
    plain arithmetic, so a cache miss costs about a microsecond.
    """
    if len(value) != 26 or value[11] != ":" or value[20] != " ":
        return None
    base = _day_base(value[:11] + value[20:])
    hms = value[12:20]
    digits = hms[:2] + hms[3:5] + hms[6:]
    # isascii: Latin-1 "²" passes isdigit() but int() refuses it.
    if (
        base is None
        or hms[2] != ":"
        or hms[5] != ":"
        or not (digits.isascii() and digits.isdigit())
    ):
        return None
    secs = base + int(hms[:2]) * 3600 + int(hms[3:5]) * 60 + int(hms[6:])
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))


def iso8601_to_utc(value: str) -> str | None:
    try:
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.astimezone()  # nginx always writes the zone; a bare time is local
        return _fmt(dt, dt.microsecond != 0)
    except (ValueError, OverflowError):  # year 1 or 9999 shifted out of range by the zone
        return None


def epoch_to_utc(value: str, scale: float, millis: bool) -> str | None:
    try:
        seconds = float(value) / scale
        return _fmt(datetime.fromtimestamp(seconds, UTC), millis)
    except (ValueError, OverflowError, OSError):
        return None


class _TimeCache:
    """Memoises a timestamp conversion, within the memo budgets (a JSON log's
    ``time_iso8601`` is whatever text the line holds)."""

    __slots__ = ("_convert", "_hits", "_memo")

    def __init__(self, convert: Callable[[str], str | None]) -> None:
        self._memo: Memo[str, str | None] = Memo()
        self._hits = self._memo.data  # subscripted: a hit is this one look-up, every line
        self._convert = convert

    def __call__(self, value: str) -> str | None:
        try:
            return self._hits[value]
        except KeyError:
            pass
        out = self._convert(value)
        self._memo.put(value, out, len(value))
        return out


_METHOD_OK: dict[str, bool] = {}
_METHOD_RE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")


def _method_ok(method: str) -> bool:
    ok = _METHOD_OK.get(method)
    if ok is None:
        ok = _METHOD_RE.fullmatch(method) is not None
        if ok and len(_METHOD_OK) < 256:  # a refused one may be any size
            _METHOD_OK[method] = ok
    return ok


def split_request(line: str | None) -> tuple[str | None, str | None]:
    """``GET /a?b HTTP/1.1`` → (method, target). HTTP/0.9's ``GET /a`` has no version.

    Garbage (a TLS handshake on the HTTP port, a scanner's junk) gives
    ``(None, None)``: a request without a method, never an exception.
    (The line parser memoises its whole request-line decision, this included.)
    """
    if not line:
        return None, None
    parts = line.split(" ")
    if len(parts) not in (2, 3):
        return None, None
    method, target = parts[0], parts[1]
    if not _method_ok(method) or not target:
        return None, None
    if len(parts) == 3 and not parts[2].startswith("HTTP/"):
        return None, None
    return method, target


def normalise_target(target: str) -> str | None:
    """The path and query of a request target; absolute-form is reduced to its path."""
    if target.startswith("/"):
        return target
    if target.startswith(("http://", "https://")):
        slash = target.find("/", target.find("//") + 2)
        return target[slash:] if slash != -1 else "/"
    if target == "*":  # OPTIONS * HTTP/1.1
        return None
    return None


def _cookie_re(name: str) -> re.Pattern[str]:
    # A name ending in '*' is a prefix (wordpress_logged_in_<hash of the site URL>).
    pattern = re.escape(name[:-1]) + r"[^=;,\s]*" if name.endswith("*") else re.escape(name)
    return re.compile(r"(?:^|[;,]\s*)" + pattern + r"=([^;,]*)")


def _absent(value: str | None) -> str | None:
    if value is None or value in {"-", ""}:
        return None
    return value


_ABSENT = frozenset(("-", ""))


def _text_function() -> Callable[[str | None], str | None]:
    """`_text`, with what it reads held in the closure: called for every field of every
    line, where a closure's variables cost less than globals."""
    absent = _ABSENT
    decode = decode_field

    def text(value: str | None) -> str | None:
        """A text-format field as the event wants it: None for ``-``/empty, else decoded."""
        if value is None or value in absent:
            return None
        if value.isascii() and "\\" not in value:
            return value
        out = decode(value)
        return None if out in absent else out

    return text


_text = _text_function()

# What a request line decides, memoised per request line as logged:
# (method, uri, path, excluded by the site's path rules).
_RequestDecision = tuple[str | None, str | None, str | None, bool]
_Groups = tuple[str | None, ...]


class LineParser(ABC):
    """Parse lines of one compiled format into `Request` records.

    ``parse`` returns the record, or a reason string (one of `REASONS`) for a
    line it skips: no exceptions on the hot path. ``extra`` names variables to
    keep in ``Request.extra`` (a header used as the user key, X-Forwarded-For).
    Made by `line_parser`, which picks the text or the JSON parser for the format.
    """

    def __init__(
        self,
        fmt: CompiledFormat,
        cookie_name: str | None = None,
        extra: Collection[str] = (),
        exclude_path: Callable[[str], bool] | None = None,
    ) -> None:
        self.fmt = fmt
        self.cookie_name = cookie_name
        self._exclude_path = exclude_path
        self._cookie_var = f"cookie_{cookie_name}" if cookie_name else None
        if self._cookie_var and fmt.kind == "nginx":
            # compile_nginx lowercases variable names, as nginx itself does ($cookie_PHPSESSID).
            self._cookie_var = self._cookie_var.lower()
        self._cookie_in_header = _cookie_re(cookie_name) if cookie_name else None
        self._extra = tuple(dict.fromkeys(extra))
        self._local = _TimeCache(time_local_to_utc)
        self._iso = _TimeCache(iso8601_to_utc)
        self.fast: Callable[[bytes], Request | str] = self._build()

    @abstractmethod
    def _build(self) -> Callable[[bytes], Request | str]:
        """The per-line function (``fast``), specialised to ``fmt``."""

    def parse(self, raw: bytes) -> Request | str:
        """The `Request` of one line (without its newline), or why it was skipped.

        Hot loops call ``parser.fast`` (the same function without this method's
        extra call frame).
        """
        return self.fast(raw)

    def logs(self, name: str) -> bool:
        """Whether this format's lines can hold the variable ``name``; ``session`` is the
        session cookie, logged as its own variable or inside the whole Cookie header.

        Always true for JSON lines, which may hold any key.
        """
        if name == "session":
            return self._cookie_var is not None and (
                self.fmt.has(self._cookie_var) or self.fmt.has("http_cookie")
            )
        return self.fmt.has(name)

    def _time(self, kind: str, value: str) -> str | None:
        if kind == "time_local":
            return self._local(value)
        if kind == "time_iso8601":
            return self._iso(value)
        if kind == "msec":
            return epoch_to_utc(value, 1.0, True)
        if kind == "time_msec":
            return epoch_to_utc(value, 1000.0, True)
        if kind == "time_usec":
            return epoch_to_utc(value, 1_000_000.0, True)
        if kind == "time_sec":
            return epoch_to_utc(value, 1.0, False)
        if kind == "time_strftime" and self.fmt.strftime:
            try:
                dt = datetime.strptime(value, self.fmt.strftime)
                return _fmt(dt if dt.tzinfo else dt.astimezone(), False)
            except (ValueError, OverflowError):
                return None
        return None

    def _time_converter(self, kind: str) -> Callable[[str], str | None]:
        if kind == "time_local":
            return self._local
        if kind == "time_iso8601":
            return self._iso
        return lambda value: self._time(kind, value)

    def _session_in_header(self, header: str | None) -> str | None:
        """The session cookie's value in a logged ``Cookie:`` header."""
        if not header or self._cookie_in_header is None:
            return None
        cm = self._cookie_in_header.search(header)
        return _absent(cm.group(1).strip()) if cm else None


def line_parser(
    fmt: CompiledFormat,
    cookie_name: str | None = None,
    extra: Collection[str] = (),
    exclude_path: Callable[[str], bool] | None = None,
) -> LineParser:
    """The parser for ``fmt``: `JsonLineParser` for JSON lines, else `TextLineParser`.

    ``exclude_path`` is the site's path exclusion (`RequestFilter.path_excluded`):
    an excluded line is answered `EXCLUDED_PATH` as early as the parser can tell.
    """
    kind = JsonLineParser if fmt.kind == "json" else TextLineParser
    return kind(fmt, cookie_name, extra, exclude_path)


# Prefer the most precise timestamp the format logs.
_TIME_KINDS = (
    "msec",
    "time_msec",
    "time_usec",
    "time_iso8601",
    "time_local",
    "time_sec",
    "time_strftime",
)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each field sits in a text format's match groups.

    A field the format does not log points at ``none``: the index of a constant
    None appended to the groups, so the per-line code needs no test for it.
    """

    none: int
    time_kind: str
    time: int
    status: int
    addr: int
    user: int
    request: int
    method: int
    uri: int
    path: int
    query: int
    referer: int
    agent: int
    lang: int
    cookie: int
    cookie_header: int
    extra: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, groups: Sequence[str], cookie_var: str | None, extra: Sequence[str]) -> _Layout:
        none = len(groups)
        first = {name: i for i, name in reversed(list(enumerate(groups)))}

        def at(name: str | None) -> int:
            return first.get(name, none) if name else none

        time_kind = next((k for k in _TIME_KINDS if k in first), "")
        return cls(
            none=none,
            time_kind=time_kind,
            time=at(time_kind),
            status=at("status"),
            addr=at("remote_addr"),
            user=at("remote_user"),
            request=at("request"),
            method=at("request_method"),
            uri=at("request_uri"),
            path=at("uri"),
            query=first.get("query_string", first.get("args", none)),
            referer=at("http_referer"),
            agent=at("http_user_agent"),
            lang=at("http_accept_language"),
            cookie=at(cookie_var),
            cookie_header=at("http_cookie") if cookie_var else none,
            extra=tuple((name, first[name]) for name in extra if name in first),
        )


def _target_of(layout: _Layout) -> Callable[[_Groups], tuple[str | None, str | None]]:
    """Method and target of a format that logs them apart ($request_method, $uri, $args)."""
    i_method, i_uri, i_path, i_query, none = (
        layout.method,
        layout.uri,
        layout.path,
        layout.query,
        layout.none,
    )

    def target_of(g: _Groups) -> tuple[str | None, str | None]:
        method = _text(g[i_method])
        target = _text(g[i_uri]) or _text(g[i_path])
        if target is not None and i_uri == none and i_query != none:
            q = _text(g[i_query])
            if q:
                target += q if q.startswith("?") else "?" + q
        return method, target

    return target_of


def _request_decider(
    layout: _Layout, exclude_path: Callable[[str], bool] | None
) -> Callable[[_Groups], _RequestDecision]:
    """Method, URI, path and the exclusion verdict of a line's request."""
    i_request = layout.request
    target_of = None if i_request != layout.none else _target_of(layout)

    def request_of(g: _Groups) -> _RequestDecision:
        if target_of is None:
            method, target = split_request(_text(g[i_request]))
        else:
            method, target = target_of(g)
        if target is None:
            uri = path = None
        elif target[0] == "/":
            uri = target
            path = target.partition("?")[0]
        else:
            uri = normalise_target(target)
            path = uri.partition("?")[0] if uri else None
        excluded = exclude_path is not None and path is not None and exclude_path(path)
        return method, uri, path, excluded

    return request_of


class TextLineParser(LineParser):
    """Lines of an nginx or Apache text format, matched by one precompiled expression.

    The per-line function is a closure specialised to the format: everything that
    depends only on the format (group indexes, which converter, which fields
    exist) is decided once when it is built, so the per-line code is straight-line
    local-variable work; on a 200-byte line this halves the cost of the generic
    version.
    """

    def _build(self) -> Callable[[bytes], Request | str]:
        assert self.fmt.regex is not None
        layout = _Layout.of(self.fmt.groups, self._cookie_var, self._extra)
        # The request line as logged -> its decision: request lines repeat all
        # day, and this is most of the per-line work.
        requests: Memo[str | None, _RequestDecision] = Memo()
        # Request lines (bytes) known to be excluded: most lines of a site are
        # its static assets, and those are let go without the full match.
        excluded: Memo[bytes, bool] = Memo()
        parse = self._line_function(layout, requests, excluded)
        if self.fmt.request_quoted_first and layout.request != layout.none and self._exclude_path:
            return _skip_known_excluded(parse, excluded)
        return parse

    def _line_function(  # noqa: C901 - per line: a call per field would cost more than the branches
        self,
        layout: _Layout,
        requests: Memo[str | None, _RequestDecision],
        excluded_raw: Memo[bytes, bool],
    ) -> Callable[[bytes], Request | str]:
        assert self.fmt.regex is not None
        fullmatch = self.fmt.regex.fullmatch
        nones = (None,)
        none = layout.none
        i_time, has_time = layout.time, layout.time != none
        conv_time = self._time_converter(layout.time_kind)
        i_status, has_status = layout.status, layout.status != none
        i_request, has_request = layout.request, layout.request != none
        i_addr, i_user = layout.addr, layout.user
        i_referer, i_agent, i_lang = layout.referer, layout.agent, layout.lang
        i_cookie, has_cookie = layout.cookie, layout.cookie != none
        i_cookie_header = layout.cookie_header if self._cookie_in_header is not None else none
        i_extra = layout.extra
        text = _text_function()
        absent = _ABSENT
        session_in_header = self._session_in_header
        request_of = _request_decider(layout, self._exclude_path)
        known_request = requests.get
        remember_request = requests.put
        remember_excluded = excluded_raw.put

        def parse(raw: bytes) -> Request | str:
            if b"\x00" in raw:
                return INVALID_BYTES
            m = fullmatch(raw.decode("latin-1").removesuffix("\r"))
            if m is None:
                return NO_MATCH
            g = m.groups() + nones
            if has_request:
                key = g[i_request]
                hit = known_request(key)
                if hit is None:
                    hit = request_of(g)
                    # The decision holds the URI and path: about three times the line's text.
                    remember_request(key, hit, 3 * len(key) if key else 1)
                    if hit[3] and key is not None:
                        remember_excluded(key.encode("latin-1"), True, len(key))
                method, uri, path, excluded = hit
            else:
                method, uri, path, excluded = request_of(g)
            if excluded:
                return EXCLUDED_PATH
            when = None
            if has_time:
                when = conv_time(g[i_time])
                if when is None:
                    return BAD_TIME
            status = None
            if has_status:
                s = g[i_status]
                if s != "-":
                    if not s.isdigit():
                        return BAD_STATUS
                    status = int(s)
            if has_cookie:
                session = text(g[i_cookie])
            elif i_cookie_header != none:
                session = session_in_header(text(g[i_cookie_header]))
            else:
                session = None
            extra = EMPTY
            if i_extra:
                found = {name: v for name, i in i_extra if (v := text(g[i])) is not None}
                extra = found or EMPTY
            return Request(
                g[i_addr] if g[i_addr] not in absent else None,
                when,
                method,
                uri,
                path,
                status,
                text(g[i_user]),
                text(g[i_referer]),
                text(g[i_agent]),
                text(g[i_lang]),
                session,
                extra,
            )

        return parse


def _skip_known_excluded(
    full: Callable[[bytes], Request | str], excluded_raw: Memo[bytes, bool]
) -> Callable[[bytes], Request | str]:
    """``full``, after a shortcut for the lines whose request line was excluded before.

    Such a line is excluded again without the full match (it would be counted as
    filtered even if a later field were malformed: it is never sent either way).
    The text before the first quote must hold no backslash: then that quote is no
    escaped '"' inside an earlier field, and opens the request line. Only for
    formats whose first quoted field is the request line.
    """

    known = excluded_raw.data  # the dict itself: a plain `in`, every line

    def parse_or_skip(raw: bytes) -> Request | str:
        parts = raw.split(b'"', 2)
        if len(parts) == 3 and parts[1] in known and b"\\" not in parts[0]:
            return INVALID_BYTES if b"\x00" in raw else EXCLUDED_PATH
        return full(raw)

    return parse_or_skip


class JsonLineParser(LineParser):
    """Lines of nginx ``escape=json`` formats: one JSON object per line."""

    def _build(self) -> Callable[[bytes], Request | str]:
        return self._parse_json

    def _parse_json(self, raw: bytes) -> Request | str:  # noqa: C901 - per JSON line: one frame, no call per field
        escaped = False
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError:
            # nginx escape=json writes bytes >= 0x80 as they are: one Latin-1 byte
            # in a header must not hide the request. Each field is re-decoded in get.
            try:
                obj = json.loads(raw.decode("utf-8", "surrogateescape"))
            except (ValueError, RecursionError):
                return NO_MATCH
            escaped = True
        except (ValueError, RecursionError):  # "[[[[..." nests past the stack
            return NO_MATCH
        if not isinstance(obj, dict):
            return NO_MATCH
        keys = self.fmt.json_keys

        def get(name: str) -> str | None:
            v = obj.get(keys.get(name, name))
            if v is None:
                return None
            text = v if isinstance(v, str) else str(v)
            if not text.isascii():
                if escaped:
                    text = redecode_escaped(text)
                else:
                    # "\ud800" decodes to a lone surrogate, which no later stage can encode.
                    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            return _absent(text)

        when = None
        for kind in ("msec", "time_iso8601", "time_local"):
            v = get(kind)
            if v is not None:
                when = self._time(kind, v)
                if when is None:
                    return BAD_TIME
                break
        status: int | None = None
        s = get("status")
        if s is not None:
            if not (len(s) == 3 and s.isascii() and s.isdigit()):
                return BAD_STATUS
            status = int(s)
        request = get("request")
        if request is not None:
            method, target = split_request(request)
        else:
            method, target = get("request_method"), get("request_uri")
        uri = normalise_target(target) if target else None
        path = uri.split("?", 1)[0] if uri else None
        # The pipeline leaves path exclusion to the parser (as for text formats).
        if path is not None and self._exclude_path is not None and self._exclude_path(path):
            return EXCLUDED_PATH
        session: str | None = None
        if self._cookie_var:
            session = get(self._cookie_var)
            if session is None:
                session = self._session_in_header(get("http_cookie"))
        extra = {name: v for name in self._extra if (v := get(name)) is not None}
        return Request(
            get("remote_addr"),
            when,
            method,
            uri,
            path,
            status,
            get("remote_user"),
            get("http_referer"),
            get("http_user_agent"),
            get("http_accept_language"),
            session,
            extra,
        )
