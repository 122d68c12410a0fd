"""Comparing what the fake sensor accepted with what the driver's requests must become."""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tests.integration.harness import Expected, UserRow, event_epoch, expected_event
from tests.support.fake_sensor import FakeSensor, Received
from tests.support.traffic import Sent, token_of

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_SLACK = 1.0  # the logs' clocks have whole seconds


def expectations(
    sent: Iterable[Sent], sessions: Mapping[str, UserRow], *, accept_language: bool
) -> dict[int, Expected]:
    out = {}
    for s in sent:
        exp = expected_event(s, sessions, accept_language=accept_language)
        if exp is not None:
            out[s.seq] = exp
    return out


def compare(site: str, expected: Mapping[int, Expected], accepted: Sequence[Received]) -> list[str]:
    """Every difference between the events expected and those accepted, one line each."""
    problems: list[str] = []
    by_token: dict[int, list[Received]] = defaultdict(list)
    for r in accepted:
        token = token_of(r.fields)
        if token is None:
            problems.append(f"{site}: an event no request of the driver explains: {r.fields}")
            continue
        by_token[token].append(r)
    for token, got in sorted(by_token.items()):
        if token not in expected:
            problems.append(f"{site}: unexpected event for request {token}: {got[0].fields}")
        elif len(got) > 1:
            ids = [g.request_id for g in got]
            problems.append(f"{site}: request {token} arrived {len(got)} times (ids {ids})")
    for token, exp in sorted(expected.items()):
        got = by_token.get(token, [])
        if not got:
            s = exp.sent
            problems.append(
                f"{site}: missing event for request {token} ({s.kind} {s.method} {s.target!r} "
                f"-> {s.status}, from {s.host})"
            )
            continue
        fields = dict(got[0].fields)
        event_time = fields.pop("eventTime", None)
        if fields != exp.fields:
            diff = {
                k: (exp.fields.get(k), fields.get(k))
                for k in sorted(set(fields) | set(exp.fields))
                if exp.fields.get(k) != fields.get(k)
            }
            problems.append(f"{site}: request {token} ({exp.sent.kind}): expected/got {diff}")
        if event_time is None:
            problems.append(f"{site}: request {token} has no eventTime")
        else:
            t = event_epoch(event_time)
            low, high = math.floor(exp.sent.started) - TIME_SLACK, exp.sent.finished + TIME_SLACK
            if not low <= t <= high:
                problems.append(
                    f"{site}: request {token}: eventTime {event_time} outside [{low}, {high}]"
                )
    return problems


def request_id_problems(sensors: Iterable[FakeSensor]) -> list[str]:
    problems: list[str] = []
    ids: Counter[str | None] = Counter()
    for sensor in sensors:
        ids.update(r.request_id for r in sensor.accepted)
        # Answered 204 but tirreno would fail to insert it: lost without a sign.
        problems.extend(f"event lost in tirreno ({r.lost}): {r.fields}" for r in sensor.lost)
    for rid, n in ids.items():
        if rid is None or not UUID_RE.match(rid):
            problems.append(f"bad X-Request-Id {rid!r} ({n} events)")
        elif n > 1:
            problems.append(f"X-Request-Id {rid} accepted {n} times")
    return problems


def copytruncate(path: Path) -> None:
    """What logrotate's ``copytruncate`` does (after shifting an older ``.1`` to ``.2``)."""
    first = path.with_name(path.name + ".1")
    if first.exists():
        os.rename(first, path.with_name(path.name + ".2"))
    shutil.copyfile(path, first)
    os.truncate(path, 0)


def rename_rotate(paths: Iterable[Path]) -> None:
    for path in paths:
        os.rename(path, path.with_name(path.name + ".1"))


def private_mode_problems(state_dir: Path) -> list[str]:
    problems = []
    for name in ("spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm"):
        path = state_dir / name
        if not path.exists():
            problems.append(f"{path} does not exist while the daemon runs")
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != 0o600:
            problems.append(f"{path} has mode {oct(mode)}, not 0o600")
    return problems


def summarize(problems: Sequence[str], shown: int = 3) -> str:
    """Problems grouped by site and kind, with a few examples of each."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        site, sep, rest = p.partition(": ")
        if not sep:  # not about one site (e.g. X-Request-Id problems)
            site, rest = "all sites", p
        kind = (
            " ".join(rest.split()[:2])
            if rest.startswith(("missing", "unexpected"))
            else ("fields" if "expected/got" in rest else rest.split()[0])
        )
        groups[f"{site}: {kind}"].append(p)
    lines = [f"{len(problems)} problem(s):"]
    for key, items in sorted(groups.items()):
        lines.append(f"  {key}: {len(items)}")
        lines.extend(f"      {item[:600]}" for item in items[:shown])
    return "\n".join(lines)
