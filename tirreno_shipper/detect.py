"""``detect-format``: which presets parse a log, and what they find in it.

Like Matomo's log importer, it tries every preset on the first lines of a
file and ranks them by the share of lines they parse, then by how many fields
they capture (a format with a cookie beats the same format without one).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from itertools import islice

from tirreno_shipper.formats import PRESETS, compile_format, preset_source
from tirreno_shipper.parse import LineParser
from tirreno_shipper.reader import file_chunks

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


def detect(lines: list[bytes]) -> list[Candidate]:
    out: list[Candidate] = []
    for preset in (*PRESETS, "json"):
        fmt = compile_format(preset, cookie_name=PLACEHOLDER_COOKIE)
        parser = LineParser(fmt, PLACEHOLDER_COOKIE)
        parsed = 0
        seen: set[str] = set()
        for raw in lines:
            req = parser.parse(raw)
            if isinstance(req, str):
                continue
            if not _is_ip(req.remote_addr):
                # The pipeline drops such lines (bad_address); counting them would let
                # apache_combined "parse" vhost_combined lines with "host:port" as %h.
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
                if value:
                    seen.add(name)
        if parsed:
            out.append(Candidate(preset, parsed, len(lines), tuple(sorted(seen)), len(fmt.groups)))
    # Stable sort: between same-shape nginx and Apache presets, preset order decides.
    out.sort(key=lambda c: (-c.parsed, -len(c.fields)))
    return out


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
    """The text ``detect-format`` prints, and its exit code (0 if a preset fits)."""
    lines = sample_lines(path, limit)
    if not lines:
        return f"{path}: no complete lines to look at", 1
    found = detect(lines)
    out = [f"{path}: {len(lines)} lines examined"]
    if not found:
        out.append("No preset parses these lines. Copy your server's format into the config:")
        out.append(
            "  format: {nginx: '<your log_format string>'}  or  format: {apache: '<LogFormat>'}"
        )
        return "\n".join(out), 1
    for c in found:
        fields = ", ".join(c.fields) or "none"
        out.append(
            f"  {c.preset:16s} parses {c.share:6.1%} ({c.parsed}/{c.total})  fields: {fields}"
        )
    best = found[0]
    out.append(f"Best match: format: {best.preset}")
    if "cookie" in best.fields:
        out.append(
            "The last field holds a cookie value: set users.key.cookie to the cookie's name "
            "(the log does not say it)."
        )
    elif not any("cookie" in c.fields for c in found if c.share >= best.share):
        nginx = preset_source("nginx_cookie", "sessionid")[1]
        apache = preset_source("apache_cookie", "sessionid")[1].replace('"', '\\"')
        out.append(COOKIE_ADVICE.format(nginx=nginx, apache=apache))
    return "\n".join(out), 0
