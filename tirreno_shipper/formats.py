"""Log format presets, and nginx ``log_format`` / Apache ``LogFormat`` strings
compiled into one linear-time regular expression per format.

A format is a sequence of literals and variables. Each variable becomes one
capturing group whose pattern never needs to backtrack: a quoted field is
``[^"\\]*+(?:\\.[^"\\]*+)*+`` (both servers escape ``"`` and ``\\`` inside quotes),
any other field runs possessively up to the next literal character. With only
possessive quantifiers, a near-miss line fails in one pass instead of trying
every split, so no log line an attacker writes can cost more than linear time.

CPython 3.11.0-3.11.4 (Debian 12's python3 is 3.11.2) mismatch a possessive
repeat of a group when a pass fails inside a lookaround or after backtracking
(gh-100061, gh-106052): the match resumes where the failed pass left off, not
where it began. So a repeated group here is possessive only when each pass can
fail only on a plain character or at an alternation's start; the one group with
a lookahead is a greedy repeat inside an atomic group, ``(?>(?:...)*)``, which
is what 3.11.5+ compile ``(?:...)*+`` to anyway (same speed, still linear).
tests/test_system_python.py checks the result under /usr/bin/python3.11.

Apache's LogFormat grammar comes from apachelogs (its directive tokenizer, and
``format2regex`` to reject unknown directives with apachelogs' own messages);
apachelogs' regexes are not used on the hot path (they use lazy quantifiers and
convert every field).

Variables are named as nginx names them (``remote_addr``, ``http_user_agent``,
``cookie_sessionid``); Apache directives are translated to those names so
everything after the parser sees one vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tirreno_shipper.errors import FormatError


# The shapes of a config ``format`` value that is not a preset name. config.py's
# models have these attributes; naming them here keeps this module below config
# (config validates formats by compiling them, so formats may not import config).
@runtime_checkable
class NginxSpec(Protocol):
    @property
    def nginx(self) -> str: ...


@runtime_checkable
class ApacheSpec(Protocol):
    @property
    def apache(self) -> str: ...


@runtime_checkable
class JsonSpec(Protocol):
    @property
    def json_(self) -> Mapping[str, str]: ...


INGRESS_NGINX_UPSTREAMINFO = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" $request_length $request_time [$proxy_upstream_name] '
    "[$proxy_alternative_upstream_name] $upstream_addr $upstream_response_length "
    "$upstream_response_time $upstream_status $req_id"
)
# name -> (nginx log_format, Apache LogFormat); "{cookie}" is the session cookie name.
PRESETS: dict[str, tuple[str | None, str | None]] = {
    "nginx_combined": (
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        '"$http_referer" "$http_user_agent"',
        None,
    ),
    "nginx_cookie": (
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        '"$http_referer" "$http_user_agent" "$cookie_{cookie}"',
        None,
    ),
    # ingress-nginx's default log-format-upstream ("upstreaminfo"), and the same with the
    # session cookie appended (the one line to set in its ConfigMap: see the README).
    "ingress_nginx": (INGRESS_NGINX_UPSTREAMINFO, None),
    "ingress_nginx_cookie": (INGRESS_NGINX_UPSTREAMINFO + ' "$cookie_{cookie}"', None),
    "apache_common": (None, '%h %l %u %t "%r" %>s %b'),
    "apache_combined": (None, '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"'),
    "vhost_combined": (None, '%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"'),
    "apache_cookie": (
        None,
        '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{{{cookie}}}C"',
    ),
}
# The nginx side of the json preset, for the README: one JSON object a line.
JSON_NGINX_FORMAT = (
    "log_format tirreno_json escape=json '{"
    '"time_iso8601":"$time_iso8601","remote_addr":"$remote_addr",'
    '"remote_user":"$remote_user","request":"$request","status":"$status",'
    '"body_bytes_sent":"$body_bytes_sent","http_referer":"$http_referer",'
    '"http_user_agent":"$http_user_agent","http_accept_language":"$http_accept_language",'
    '"http_x_forwarded_for":"$http_x_forwarded_for","cookie_sessionid":"$cookie_sessionid"'
    "}';"
)
PRESET_NAMES: tuple[str, ...] = (*PRESETS, "json")

NUMERIC = frozenset(
    {
        "status",
        "body_bytes_sent",
        "bytes_sent",
        "request_length",
        "request_time",
        "msec",
        "connection",
        "connection_requests",
        "pid",
        "server_port",
        "remote_port",
        "apache_D",
        "apache_T",
        "apache_k",
        "apache_I",
        "apache_O",
        "apache_S",
        "apache_b",
        "apache_B",
        "time_sec",
        "time_msec",
        "time_usec",
    }
)


@dataclass(slots=True, frozen=True)
class CompiledFormat:
    """A compiled log format.

    ``regex`` is None for JSON lines. ``groups`` names the variable each
    capturing group holds, in order (a variable logged twice keeps its first
    group). ``json_keys`` maps our variable names to the JSON keys of the line.
    ``source`` is the format text as the operator would write it in their
    server's configuration.
    """

    kind: str  # "nginx" | "apache" | "json"
    source: str
    regex: re.Pattern[str] | None
    groups: tuple[str, ...]
    json_keys: Mapping[str, str] = field(default_factory=dict)
    strftime: str | None = None  # Apache %{FORMAT}t: its strftime format
    # The first '"' of a line opens the quoted request line, when no backslash
    # precedes it (both servers escape '"' in every field with one): the text
    # between it and the next '"' is then the request line as logged.
    request_quoted_first: bool = False

    def has(self, name: str) -> bool:
        if self.kind == "json":
            return True
        return name in self.groups


def _quoted(prev: str, nxt: str) -> bool:
    return prev.endswith('"') and nxt.startswith('"')


# "Unrolled loop" form: a run of plain characters, then any number of
# (escape, run); possessive, so it never gives characters back.
_QUOTED = r'[^"\\]*+(?:\\.[^"\\]*+)*+'


# nginx joins the values of each upstream tried with ", " (and of internal
# redirects with " : "): "0.003, 0.001" is one field, not two. A pass of the
# repeat fails only in the alternation, whose failure leaves the match where the
# pass began, so "*+" reads right on 3.11.0-3.11.4 too (as it does in _QUOTED,
# whose passes fail only on a plain character).
_UPSTREAM = r"[^ ,]*+(?:(?:, | : )[^ ,]*+)*+"

# strftime directives of Apache's %{FORMAT}t that both Python's strptime and a
# fixed-shape pattern can take; a format using any other keeps the generic
# pattern (which cannot hold the separator that follows it).
_STRFTIME = {
    "Y": "[0-9]{4}",
    "y": "[0-9]{2}",
    "m": "[0-9]{2}",
    "d": "[0-9]{2}",
    "H": "[0-9]{2}",
    "I": "[0-9]{2}",
    "M": "[0-9]{2}",
    "S": "[0-9]{2}",
    "j": "[0-9]{3}",
    "b": "[A-Za-z]{3}",
    "a": "[A-Za-z]{3}",
    "B": "[A-Za-z]++",
    "A": "[A-Za-z]++",
    "p": "[A-Za-z]{2}",
    "z": "[+-][0-9]{4}",
    "T": "[0-9]{2}:[0-9]{2}:[0-9]{2}",
    "F": "[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "D": "[0-9]{2}/[0-9]{2}/[0-9]{2}",
    "R": "[0-9]{2}:[0-9]{2}",
    "%": "%",
}


def _strftime_pattern(fmt: str) -> str | None:
    """A linear pattern for the text ``strftime(fmt)`` writes, or None."""
    out = ""
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            part = _STRFTIME.get(fmt[i + 1 : i + 2])
            if part is None:
                return None
            out += part
            i += 2
        else:
            out += re.escape(fmt[i])
            i += 1
    return out


def _pattern(name: str, prev: str, nxt: str) -> str:
    """The linear-time pattern for one variable between two literals."""
    if _quoted(prev, nxt):
        return _QUOTED
    if name == "status":
        return r"[0-9]{3}|-"
    if name in NUMERIC:
        return r"-|[0-9][0-9.]*+"
    if name.startswith("upstream_") and nxt[:1] == " ":
        return _UPSTREAM
    if name == "remote_user" and len(nxt) > 1 and nxt[0] == " ":
        # Neither server escapes spaces in the user name, and any client can send
        # Basic credentials for "a b": stopping at the first space would make its
        # lines unparseable, i.e. invisible. Spaces are taken unless followed by
        # the rest of the next literal (" [" before $time_local). Atomic, not
        # "*+": a possessive group holding a lookahead misreads on 3.11.0-3.11.4.
        return f"[^ ]*+(?>(?: (?!{re.escape(nxt[1])})[^ ]*+)*)"
    if nxt:
        # re.escape escapes each of ] \\ ^ - that a class would read specially.
        # (Not "(?:(?!c).)*+": a possessive group with a lookahead misreads on
        # 3.11.0-3.11.4.)
        return f"[^{re.escape(nxt[0])}]*+"
    return r".*+"


def _build(
    kind: str, source: str, tokens: list[tuple[str, str]], patterns: Mapping[str, str] | None = None
) -> CompiledFormat:
    """``tokens`` alternate ("lit", text) and ("var", name); ``patterns`` overrides
    the pattern of a variable whose shape is known."""
    # Merge neighbouring literals so "prev"/"next" are whole literal runs.
    merged: list[tuple[str, str]] = []
    for tok in tokens:
        if merged and tok[0] == "lit" and merged[-1][0] == "lit":
            merged[-1] = ("lit", merged[-1][1] + tok[1])
        else:
            merged.append(tok)
    rx = ""
    groups: list[str] = []
    for i, (what, text) in enumerate(merged):
        if what == "lit":
            rx += re.escape(text)
            continue
        prev = merged[i - 1][1] if i > 0 and merged[i - 1][0] == "lit" else ""
        nxt = merged[i + 1][1] if i + 1 < len(merged) and merged[i + 1][0] == "lit" else ""
        if i + 1 < len(merged) and merged[i + 1][0] == "var":
            # Two variables with nothing between them cannot be split without
            # guessing; nginx and Apache formats in the wild never do this.
            raise FormatError(
                f"variables {text!r} and {merged[i + 1][1]!r} follow each other with no "
                "separator; put a space or a quote between them"
            )
        special = patterns.get(text) if patterns else None
        rx += f"({special or _pattern(text, prev, nxt)})"
        groups.append(text)
    if not groups:
        raise FormatError("the format has no variables")
    try:
        regex = re.compile(rx)
    except re.error as exc:  # pragma: no cover - escaped literals always compile
        raise FormatError(f"cannot compile the format: {exc}") from exc
    return CompiledFormat(
        kind=kind,
        source=source,
        regex=regex,
        groups=tuple(groups),
        request_quoted_first=_request_quoted_first(merged),
    )


def _request_quoted_first(merged: list[tuple[str, str]]) -> bool:
    """Whether the first quote of the format opens the quoted ``request`` variable."""
    for i, (what, text) in enumerate(merged):
        if what == "lit" and '"' in text:
            return (
                text.index('"') == len(text) - 1
                and i + 2 < len(merged)
                and merged[i + 1] == ("var", "request")
                and merged[i + 2][1].startswith('"')
            )
    return False


# --- nginx -----------------------------------------------------------------

_NGINX_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _strip_nginx_directive(text: str) -> str:
    """Accept the format as copied from nginx.conf, with or without the directive.

    ``log_format main escape=default '$remote_addr ...' '"$http_user_agent"';``
    becomes the concatenated string of its quoted parts.
    """
    stripped = text.strip()
    if not stripped.startswith("log_format"):
        return text
    parts = re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", stripped)
    if not parts:
        raise FormatError("a log_format directive without a quoted format string")
    return "".join(a or b for a, b in parts)


def compile_nginx(text: str) -> CompiledFormat:
    body = _strip_nginx_directive(text)
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _NGINX_VAR.finditer(body):
        if m.start() > pos:
            tokens.append(("lit", body[pos : m.start()]))
        tokens.append(("var", (m.group(1) or m.group(2)).lower()))
        pos = m.end()
    if pos < len(body):
        tokens.append(("lit", body[pos:]))
    return _build("nginx", body, tokens)


# --- Apache ------------------------------------------------------------------

_TIME_PARAMS = {
    "sec": "time_sec",
    "msec": "time_msec",
    "usec": "time_usec",
    "begin:sec": "time_sec",
    "begin:msec": "time_msec",
    "begin:usec": "time_usec",
}
_PLAIN = {
    "h": "remote_addr",
    "a": "remote_addr",
    "u": "remote_user",
    "t": "time_local",
    "r": "request",
    "m": "request_method",
    "U": "uri",
    "q": "query_string",
    "H": "server_protocol",
    "s": "status",
    "b": "body_bytes_sent",
    "B": "apache_B",
    "O": "bytes_sent",
    "I": "request_length",
    "D": "apache_D",
    "T": "apache_T",
    "v": "server_name",
    "V": "apache_V",
    "p": "server_port",
    "l": "apache_l",
}


def header_variable(header: str) -> str:
    """The variable a request header is logged as, as nginx names it (``X-User`` ->
    ``http_x_user``); Apache's ``%{X-User}i`` is given the same name."""
    return "http_" + header.strip().lower().replace("-", "_")


def _apache_body(text: str) -> str:
    """The format itself, from a whole ``LogFormat "..." name`` line or the quoted text."""
    body = text.strip()
    if body.startswith("LogFormat"):
        m = re.match(r'LogFormat\s+"((?:[^"\\]|\\.)*)"', body)
        if not m:
            raise FormatError('a LogFormat directive without a quoted format: LogFormat "..." name')
        return m.group(1).replace('\\"', '"')
    if '\\"' in body:
        # The format as written between LogFormat's quotes in httpd.conf (the
        # README's and DESIGN's examples): Apache's config parser turns \" into ".
        return body.replace('\\"', '"')
    return body


def _apache_time(param: str) -> tuple[str, str | None]:
    """The variable of ``%{param}t``, and its strftime format when it has one."""
    if param in _TIME_PARAMS:
        return _TIME_PARAMS[param], None
    if "%" in param:
        fmt = param.removeprefix("begin:").removeprefix("end:")
        if "msec_frac" in fmt or "usec_frac" in fmt:
            raise FormatError("%{..msec_frac}t is not supported; use %t or %{msec}t")
        return "time_strftime", fmt
    return f"apache_t_{param}", None


def _apache_variable(d: str, param: str | None) -> tuple[str, str | None]:
    """The variable a directive ``%{param}d`` logs (and a strftime format for ``%{..}t``)."""
    if param is None:
        return _PLAIN.get(d, f"apache_{d}"), None
    if d == "i":
        return header_variable(param), None
    if d == "C":
        return "cookie_" + param.strip(), None
    if d == "a" and param == "c":
        return "apache_peer_addr", None
    if d == "t":
        return _apache_time(param)
    if d == "T":
        return f"apache_T_{param}", None
    return f"apache_{d}_{param}", None


def compile_apache(text: str) -> CompiledFormat:
    try:
        from apachelogs.directives import DIRECTIVE_RGX, format2regex
        from apachelogs.errors import Error as ApachelogsError
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise FormatError("apachelogs is not installed") from exc
    body = _apache_body(text)
    try:
        format2regex(body)  # apachelogs' verdict on the grammar and the directive names
    except ApachelogsError as exc:
        raise FormatError(f"unknown or invalid Apache LogFormat directive: {exc}") from exc
    tokens: list[tuple[str, str]] = []
    strftime: str | None = None
    for m in DIRECTIVE_RGX.finditer(body):
        lit = m.group("literal")
        d = m.group("directive")
        if lit is not None or d == "%":
            tokens.append(("lit", "%" if lit is None else lit))
            continue
        name, fmt = _apache_variable(d, m.group("param"))
        strftime = fmt or strftime
        if name == "time_local":
            # Apache writes %t with its brackets: "[10/Oct/2000:13:55:36 -0700]".
            tokens += [("lit", "["), ("var", name), ("lit", "]")]
        else:
            tokens.append(("var", name))
    special = _strftime_pattern(strftime) if strftime else None
    compiled = _build("apache", body, tokens, {"time_strftime": special} if special else None)
    return CompiledFormat(
        kind=compiled.kind,
        source=compiled.source,
        regex=compiled.regex,
        groups=compiled.groups,
        strftime=strftime,
        request_quoted_first=compiled.request_quoted_first,
    )


# --- presets and specs -----------------------------------------------------------


def preset_source(name: str, cookie_name: str | None) -> tuple[str, str]:
    """(kind, format text) of a preset, with the cookie name filled in."""
    nginx, apache = PRESETS[name]
    if "{cookie}" in (nginx or apache or "") and not cookie_name:
        raise FormatError(
            f"preset {name!r} logs the session cookie: set users.key.cookie to its name "
            "(e.g. sessionid, PHPSESSID, laravel_session)"
        )
    if nginx is not None:
        return "nginx", nginx.replace("{cookie}", cookie_name or "")
    assert apache is not None
    return "apache", apache.replace("{{{cookie}}}", "{" + (cookie_name or "") + "}").replace(
        "{cookie}", cookie_name or ""
    )


def compile_format(spec: object, cookie_name: str | None = None) -> CompiledFormat:
    """Compile a config ``format`` value: a preset name, ``{nginx: ...}``,
    ``{apache: ...}``, ``json`` or ``{json: {var: key}}``."""
    if isinstance(spec, str):
        if spec == "json":
            return CompiledFormat(kind="json", source="json", regex=None, groups=())
        if spec not in PRESETS:
            import difflib

            # "combined" is both servers' name for one format: offer each server's.
            close = [n for n in PRESET_NAMES if n.endswith("_" + spec)] or (
                difflib.get_close_matches(spec, PRESET_NAMES, n=1)
            )
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise FormatError(
                f"unknown preset {spec!r}{hint} (presets: {', '.join(PRESET_NAMES)}; or write "
                "{nginx: '<log_format>'} / {apache: '<LogFormat>'})"
            )
        kind, text = preset_source(spec, cookie_name)
        return compile_nginx(text) if kind == "nginx" else compile_apache(text)
    if isinstance(spec, NginxSpec):
        return compile_nginx(spec.nginx)
    if isinstance(spec, ApacheSpec):
        return compile_apache(spec.apache)
    if isinstance(spec, JsonSpec):
        return CompiledFormat(
            kind="json", source="json", regex=None, groups=(), json_keys=dict(spec.json_)
        )
    raise FormatError(f"unsupported format specification: {spec!r}")
