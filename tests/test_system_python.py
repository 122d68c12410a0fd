"""The parser reads every line the same under Debian 12's own Python as under this one.

The README has operators ``pip install`` the package and run it under systemd,
which on Debian 12 means /usr/bin/python3.11, CPython 3.11.2. CPython 3.11.0 to
3.11.4 mismatch some possessive repeats (gh-100061, gh-106052: a pattern that
read every line on 3.11.5+ read none there), so the same script, which compiles
every preset and a few custom formats and parses the bundled logs, their
near-miss mutations and hand-made edge cases, runs under both interpreters and
must print the same. Debian's python3.11 is a hard requirement (scripts/test.sh
installs it): a missing interpreter fails, it does not skip.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

# (kind, text): kind "preset" (text is the name; cookie "sid"), "nginx" or "apache".
FORMATS: list[tuple[str, str]] = [
    ("preset", "nginx_combined"),
    ("preset", "nginx_cookie"),
    ("preset", "apache_common"),
    ("preset", "apache_combined"),
    ("preset", "vhost_combined"),
    ("preset", "apache_cookie"),
    (
        "nginx",
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        '"$http_referer" "$http_user_agent" $request_time $upstream_response_time '
        "$upstream_addr",
    ),
    ("nginx", '$remote_addr-$remote_user [$time_local] "$request" $status'),
    ("nginx", "$remote_user\\$status^$body_bytes_sent-$http_user_agent]$msec"),
    ("nginx", "log_format main '$remote_addr $host [$time_local] \"$request\" $status';"),
    ("apache", '%h %{%Y-%m-%d %H:%M:%S}t "%r" %>s %{X}i'),
    ("apache", '%a %l %u %t "%r" %>s %b %D "%{Referer}i" "%{User-Agent}i" "%{sid}C"'),
    ("apache", "%a-%u-%>s [%r] %D"),
]

T = "[29/Nov/2026:10:00:01 +0100]"
UA = '"Mozilla/5.0 (X11; Linux x86_64)"'
CRAFTED = [
    f'203.0.113.7 - a b {T} "GET /x HTTP/1.1" 200 5 "-" {UA}',
    f'203.0.113.7 - a  [b {T} "GET /x HTTP/1.1" 200 5 "-" {UA} "s1"',
    f'203.0.113.7 - a b  {T} "GET /x HTTP/1.1" 200 5 "-" {UA}',
    f'203.0.113.7 - - - {T} "GET /x HTTP/1.1" 200 5 "-" {UA} "s\\"1"',
    f'203.0.113.7 - -  {T} "GET / HTTP/1.1" 200 5 "-" {UA}',
    f'203.0.113.7 - - {T} "GET /\\\\ HTTP/1.1" 200 5 "a\\"b" "\\x41\\" 0.012 0.003, 0.001 : 0.004 '
    "10.0.0.1:80, 10.0.0.2:80",
    f'203.0.113.7 - u v {T} "GET / HTTP/1.1" 304 0 "-" {UA} 0.1 - -',
    f'203.0.113.7 - - {T} "GET / HTTP/1.1" 200 5 "-" {UA} 0.1 0.2,  0.3 x',
    f'203.0.113.7-a b {T} "POST /login HTTP/1.1" 302',
    f'203.0.113.7-a-b {T} "POST /login HTTP/1.1" 302',
    "bob\\200^512-curl/8.0]1732874401.123",
    "b^o-b\\200^512-cu\\rl]1732874401.123",
    f'203.0.113.7 shop.example.com {T} "GET / HTTP/1.1" 200',
    '203.0.113.7 2026-11-29 10:00:01 "GET / HTTP/1.1" 200 x y',
    f'2001:db8::1 - a b {T} "GET / HTTP/1.1" 200 5 1234 "-" {UA} "sid-1"',
    "203.0.113.7-a b-200 [GET / HTTP/1.1] 1234",
    "203.0.113.7--200 [GET / HTTP/1.1] -",
]

# Run by both interpreters: reads {"formats": [...], "lines": [...]} on stdin,
# prints each format's pattern, each line's groups and LineParser's verdict.
SCRIPT = """
import json, sys
from tirreno_shipper.formats import compile_apache, compile_format, compile_nginx
from tirreno_shipper.parse import line_parser

job = json.load(sys.stdin)
out = []
for kind, text in job["formats"]:
    if kind == "preset":
        fmt = compile_format(text, "sid")
    else:
        fmt = (compile_nginx if kind == "nginx" else compile_apache)(text)
    parser = line_parser(fmt, "sid")
    fullmatch = fmt.regex.fullmatch
    results = []
    for line in job["lines"]:
        m = fullmatch(line)
        verdict = parser.parse(line.encode("latin-1"))
        results.append([None if m is None else list(m.groups()), repr(verdict)])
    out.append({"pattern": fmt.regex.pattern, "results": results})
json.dump({"version": sys.version, "formats": out}, sys.stdout)
"""


def _read(path: Path) -> list[str]:
    return [raw.decode("latin-1") for raw in path.read_bytes().splitlines()]


def _samples() -> dict[str, list[str]]:
    """Named groups of lines: real logs, hand-made cases, their mutations, long lines."""
    elastic = _read(DATA / "elastic_apache_logs")
    # Every 5th line, the three with \\x escapes and line 8899 (truncated).
    picked = [line for n, line in enumerate(elastic, 1) if n % 5 == 0 or "\\" in line or n == 8899]
    groups = {
        "example": _read(ROOT / "examples" / "access.log"),
        "vhost": _read(DATA / "apachelogs_vhost_combined.log"),
        "crafted": CRAFTED,
        "elastic": picked,
    }
    base = groups["example"] + groups["vhost"] + CRAFTED + picked[:50]
    rnd = random.Random(20261129)
    mutated = []
    for _ in range(3000):
        chars = list(rnd.choice(base))
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(chars) + 1)
            if rnd.random() < 0.6:
                chars.insert(i, rnd.choice(' []"\\-,:^a0'))
            elif chars:
                del chars[min(i, len(chars) - 1)]
        mutated.append("".join(chars))
    groups["mutated"] = mutated
    groups["long"] = [
        "1.2.3.4 - " + "u " * 2000 + T + ' "GET / HTTP/1.1" 200 1 "-" "-"',
        "1.2.3.4 - " + " [" * 2000,
        "1.2.3.4 - - " + T + ' "' + "\\" * 4001 + '" 200 1',
        "1 " * 3000,
    ]
    return groups


def _start(python: str, job: Path) -> subprocess.Popen[str]:
    """SCRIPT under ``python``, with this venv's packages, reading ``job``."""
    paths = sysconfig.get_paths()
    site = dict.fromkeys([paths["purelib"], paths["platlib"]])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *site]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    with job.open() as stdin:
        return subprocess.Popen(
            [python, "-c", SCRIPT],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )


def _result(proc: subprocess.Popen[str], python: str) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, (
        f"{python} could not run the parser with this venv's packages:\n{stderr[-3000:]}"
    )
    result: dict[str, Any] = json.loads(stdout)
    return result


def _here(job: Path) -> dict[str, Any]:
    """SCRIPT in this interpreter, in this process (the job on stdin, the answer on stdout)."""
    out = io.StringIO()
    with (
        job.open() as stdin,
        mock.patch.object(sys, "stdin", stdin),
        contextlib.redirect_stdout(out),
    ):
        exec(SCRIPT, {"__name__": "system_python_script"})
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def test_debian_system_python_parses_like_this_one(tmp_path: Path) -> None:
    """Every preset and custom format reads every sample line identically under
    /usr/bin/python3.11 (Debian 12: 3.11.2) and the interpreter running the tests."""
    if not SYSTEM_PYTHON.exists():
        pytest.fail(
            f"{SYSTEM_PYTHON} is missing: install Debian's python3.11 "
            "(apt-get install python3.11; scripts/test.sh does), the interpreter the "
            "README's pip install + systemd setup runs the daemon under on Debian 12"
        )
    samples = _samples()
    lines = [line for group in samples.values() for line in group]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"formats": FORMATS, "lines": lines}))
    # The system interpreter works in its process while this one runs the same script.
    system_proc = _start(str(SYSTEM_PYTHON), job)
    try:
        ours = _here(job)
    finally:
        system = _result(system_proc, str(SYSTEM_PYTHON))
    for (kind, text), mine, theirs in zip(FORMATS, ours["formats"], system["formats"], strict=True):
        assert theirs["pattern"] == mine["pattern"]
        for line, a, b in zip(lines, mine["results"], theirs["results"], strict=True):
            assert b == a, (
                f"{kind} {text!r}, pattern {mine['pattern']!r}\nline {line[:300]!r}\n"
                f"Python {ours['version'].split()[0]}: {a}\n"
                f"{SYSTEM_PYTHON} ({system['version'].split()[0]}): {b}"
            )

    # Both could be wrong alike (a venv built on the system Python itself), so
    # the known-good lines must also parse.
    def verdicts(preset: str, group: str) -> list[list[Any]]:
        results = system["formats"][FORMATS.index(("preset", preset))]["results"]
        start = 0
        for name, members in samples.items():
            if name == group:
                return list(results[start : start + len(members)])
            start += len(members)
        raise KeyError(group)

    def accepted(preset: str, group: str) -> int:
        return sum(v[1].startswith("Request(") for v in verdicts(preset, group))

    # examples/access.log holds one line that is not an access log line at all.
    assert accepted("nginx_cookie", "example") == len(samples["example"]) - 1
    assert accepted("vhost_combined", "vhost") == 6
    for preset in ("apache_combined", "nginx_combined"):
        assert accepted(preset, "elastic") == len(samples["elastic"]) - 1  # line 8899
    assert verdicts("nginx_combined", "crafted")[0][0][1] == "a b"
