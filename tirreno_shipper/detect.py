"""``detect-format``: which presets parse a log, and what they find in it.

Like Matomo's log importer, it tries every preset on the first lines of a
file and ranks them by the share of lines they parse, then by how many fields
they capture (a format with a cookie beats the same format without one).
Presets that parse the same lines into the same fields (an nginx preset and
its Apache twin write identical lines) are named together as the best match:
the log cannot say which server wrote it.

Two set-up mistakes are named as such, with exit 1: a file two ``access_log`` (or
``CustomLog``) directives write in two formats (half its lines parse one way,
the rest another: `second_format`), and lines that carry no session key.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from itertools import islice

from tirreno_shipper.errors import EX_FAILURE, EX_OK, EX_USAGE, ShipperError
from tirreno_shipper.formats import PRESETS, compile_format, preset_source
from tirreno_shipper.parse import LineParser, line_parser
from tirreno_shipper.reader import file_chunks
from tirreno_shipper.records import Request

# Stand-in cookie name: the log does not say what the cookie is called.
PLACEHOLDER_COOKIE = "sessionid"


@dataclass(slots=True, frozen=True)
class Candidate:
    preset: str
    parsed: int
    total: int
    fields: tuple[str, ...]  # found in at least one line: cookie, referer, user_agent, ...
    groups: int

    @property
    def share(self) -> float:
        return self.parsed / self.total if self.total else 0.0


def sample_lines(path: str, limit: int = 500) -> list[bytes]:
    lines: list[bytes] = []
    for chunk in file_chunks(path, chunk_lines=limit):
        lines.extend(raw for _, raw in islice(chunk.lines, limit - len(lines)))
        if len(lines) >= limit:
            break
    return lines


def _is_ip(value: str | None) -> bool:
    if value is None:
        return False
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def json_cookies(lines: list[bytes]) -> tuple[list[str], bool]:
    """JSON lines name their cookies (nginx's ``$cookie_NAME`` under ``cookie_NAME``):
    the names found with a value, and whether a whole Cookie header (``http_cookie``) is."""
    names: dict[str, None] = {}
    header = False
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if value in (None, "", "-"):
                continue
            if key.startswith("cookie_") and len(key) > len("cookie_"):
                names[key.removeprefix("cookie_")] = None
            elif key == "http_cookie":
                header = True
    return list(names), header


def _parser(preset: str, json_cookie: str | None) -> tuple[LineParser, int]:
    """The preset's parser (with the stand-in cookie name) and its group count."""
    cookie = json_cookie if preset == "json" and json_cookie else PLACEHOLDER_COOKIE
    fmt = compile_format(preset, cookie_name=cookie)
    return line_parser(fmt, cookie), len(fmt.groups)


def _request(parser: LineParser, raw: bytes) -> Request | None:
    req = parser.parse(raw)
    if isinstance(req, str) or not _is_ip(req.remote_addr):
        # The pipeline drops lines without an address (bad_address); counting them would
        # let apache_combined "parse" vhost_combined lines with "host:port" as %h.
        return None
    return req


def detect(lines: list[bytes], json_cookie: str | None = None) -> list[Candidate]:
    """``json_cookie``: the cookie JSON lines name (see `json_cookies`), if any."""
    out: list[Candidate] = []
    for preset in (*PRESETS, "json"):
        parser, groups = _parser(preset, json_cookie)
        parsed = 0
        seen: set[str] = set()
        for raw in lines:
            req = _request(parser, raw)
            if req is None:
                continue
            parsed += 1
            for name, value in (
                ("cookie", req.session),
                ("referer", req.referer),
                ("user_agent", req.user_agent),
                ("time", req.time),
                ("accept_language", req.accept_language),
                ("remote_user", req.remote_user),
            ):
                if value and value != "-":
                    seen.add(name)
        if parsed:
            out.append(Candidate(preset, parsed, len(lines), tuple(sorted(seen)), groups))
    # Stable sort: same-shape nginx and Apache presets stay in preset order;
    # `report` names them together (see `equivalents`).
    out.sort(key=lambda c: (-c.parsed, -len(c.fields)))
    return out


def second_format(leftover: list[bytes], total: int) -> Candidate | None:
    """The preset that parses most of the ``leftover`` lines (of ``total``) that the
    log's format does not, when they are too many to be junk: the file is written in
    two formats, so every line of one of them is lost."""
    if len(leftover) < max(2, total * 0.05):
        return None
    json_cookie = next(iter(json_cookies(leftover)[0]), None)
    found = detect(leftover, json_cookie)
    if found and found[0].parsed * 2 >= len(leftover):
        return found[0]
    return None


MIXED_CAUSE = (
    "two access_log (nginx) or CustomLog (Apache) directives write this file in "
    "different formats, so the lines of one are never sent: keep one, in the format with "
    "the cookie (nginx on Debian/Ubuntu: replace the access_log line of nginx.conf's http "
    'block instead of adding one; README, "Log formats")'
)


def equivalents(found: list[Candidate]) -> list[Candidate]:
    """The best candidate and those that parse the same lines into the same fields."""
    best = found[0]
    return [c for c in found if (c.parsed, c.fields) == (best.parsed, best.fields)]


COOKIE_ADVICE = """\
This log carries no session cookie, so requests cannot be joined to your users.
Add the cookie as the last field of the format, then use a *_cookie preset:

  nginx (http block):
    log_format tirreno '{nginx}';
    access_log /var/log/nginx/access.log tirreno;
    -> format: nginx_cookie, users.key.cookie: sessionid

  Apache:
    LogFormat "{apache}" tirreno
    CustomLog ${{APACHE_LOG_DIR}}/access.log tirreno
    -> format: apache_cookie, users.key.cookie: sessionid

Replace "sessionid" by your framework's cookie (Django: sessionid, PHP: PHPSESSID,
Laravel: laravel_session, Rails: _APPNAME_session)."""


def report(path: str, limit: int = 500) -> tuple[str, int]:
    """The text ``detect-format`` prints, and its exit code (0 if a preset fits).

    A ``limit`` below 1 is a usage error (exit 2, as argparse's own); a file
    that cannot be read raises `ShipperError` ("cannot read FILE: reason"),
    which the command line prints as one line and exits 1 on.
    """
    if limit < 1:
        return (
            f"tirreno-shipper detect-format: error: argument --lines: "
            f"must be 1 or more (got {limit})",
            EX_USAGE,
        )
    try:
        lines = sample_lines(path, limit)
    except OSError as exc:  # missing, a folder, no permission, a broken .gz
        raise ShipperError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except EOFError as exc:  # a truncated .gz
        raise ShipperError(f"cannot read {path}: {exc}") from exc
    if not lines:
        return f"{path}: no complete lines to look at", EX_FAILURE
    named, header = json_cookies(lines)
    found = detect(lines, named[0] if named else None)
    out = [f"{path}: {len(lines)} lines examined"]
    if not found:
        out.append("No preset parses these lines. Copy your server's format into the config:")
        out.append(
            "  format: {nginx: '<your log_format string>'}  or  format: {apache: '<LogFormat>'}"
        )
        return "\n".join(out), EX_FAILURE
    for c in found:
        fields = ", ".join(c.fields) or "none"
        out.append(
            f"  {c.preset:16s} parses {c.share:6.1%} ({c.parsed}/{c.total})  fields: {fields}"
        )
    best, *twins = equivalents(found)
    other = second_format(_unparsed(best.preset, lines, named), len(lines))
    if other is not None:
        out.append(
            f"Problem: this file mixes formats: {best.parsed} lines parse as {best.preset}, "
            f"{other.parsed} others as {other.preset}: {MIXED_CAUSE}."
        )
        return "\n".join(out), EX_FAILURE
    if twins:
        names = " or ".join(f"format: {c.preset}" for c in (best, *twins))
        out.append(
            f"Best match: {names} (equivalent: they parse the same lines into the same fields; "
            "use the one named after your server)"
        )
    else:
        out.append(f"Best match: format: {best.preset}")
    if best.preset == "json":
        out.append(_json_cookie_advice(named, header))
        return "\n".join(out), EX_OK if named or header else EX_FAILURE
    if "cookie" in best.fields:
        out.append(
            "The last field holds a cookie value: set users.key.cookie to the cookie's name "
            "(the log does not say it)."
        )
        return "\n".join(out), EX_OK
    if best.preset.endswith("_cookie"):
        out.append(
            "Problem: the lines end with a cookie field, but it is empty (-) in every one: "
            "the log_format / LogFormat names another cookie than your session cookie, or "
            "nobody with a session came by yet (log in, then look again)."
        )
        return "\n".join(out), EX_FAILURE
    nginx = preset_source("nginx_cookie", "sessionid")[1]
    apache = preset_source("apache_cookie", "sessionid")[1].replace('"', '\\"')
    advice = COOKIE_ADVICE.format(nginx=nginx, apache=apache)
    out.append("Problem: t" + advice.removeprefix("T"))
    if "remote_user" in best.fields:
        out.append(
            "(The lines do carry remote_user: with HTTP authentication, users.key: "
            "{field: remote_user} finds the user without a cookie.)"
        )
        return "\n".join(out), EX_OK
    return "\n".join(out), EX_FAILURE


def _unparsed(preset: str, lines: list[bytes], named: list[str]) -> list[bytes]:
    parser, _ = _parser(preset, named[0] if named else None)
    return [raw for raw in lines if _request(parser, raw) is None]


def _json_cookie_advice(named: list[str], header: bool) -> str:
    if named:
        first = named[0]
        also = f" (also found: {', '.join(named[1:])})" if named[1:] else ""
        return (
            f"The lines carry the cookie {first!r} (key cookie_{first}){also}: set "
            f"users.key.cookie: {first} if it is your session cookie."
        )
    if header:
        return (
            "The lines carry the whole Cookie header (http_cookie): set users.key.cookie to "
            "your session cookie's name; it is read out of the header."
        )
    return (
        "These lines carry no session cookie, so requests cannot be joined to your users: add "
        '"cookie_sessionid":"$cookie_sessionid" to the log_format (with your framework\'s '
        "cookie name: Django sessionid, PHP PHPSESSID, Laravel laravel_session) and set "
        "users.key.cookie to that name."
    )
