"""``check``: prove a configuration works before the daemon runs it.

The state folder can be used as ``run`` will use it; for each site: the log
paths can be opened, the user query runs (with a key that cannot exist), the
sensor's URL answers a POST as tirreno's does; with ``--send-test-event``, one
clearly labelled event is posted and the verdict reported. Prints one line per
check, and nothing else (log events of the code it runs are caught and either
turned into report lines or dropped), and exits 0 only if every check passed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import http
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import httpx
import structlog

from tirreno_shipper.config import Config, SiteConfig
from tirreno_shipper.detect import MIXED_CAUSE, second_format
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.parse import EXCLUDED_PATH, LineParser
from tirreno_shipper.pipeline import SitePipeline
from tirreno_shipper.reader import followed_files, selected
from tirreno_shipper.records import Request
from tirreno_shipper.sender import FORM_CONTENT_TYPE, Outcome, send_one, tls_verify, user_agent
from tirreno_shipper.state import SPOOL_FILE, lock_holder
from tirreno_shipper.tail.container import Framing, container_input
from tirreno_shipper.terminal import PrintableWriter
from tirreno_shipper.users import UserResolver
from tirreno_shipper.users.keys import KeyExtractor

# Statuses that, answering the POST events are sent with, mean nothing takes
# events at this URL: tirreno's sensor answers 204 or an empty 200 there.
WRONG_PATH_STATUSES = frozenset({404, 405, 410})
SENSOR_PATH_HINT = (
    "the path is wrong: sensor.url must be tirreno's sensor endpoint, "
    "https://<tirreno host>/sensor/"
)
# `run` exits 73 (errors.EX_CANTCREAT) when the spool cannot be opened in state_dir.
STATE_DIR_HINT = (
    "`run` exits 73 on this: create it writable by the service user, or change state_dir"
)

# What a status to the test event means, beyond the sender's short reason.
_STATUS_MEANING = {
    **dict.fromkeys(WRONG_PATH_STATUSES, SENSOR_PATH_HINT),
    401: "refused before tirreno (an authenticating proxy?); tirreno itself answers a wrong "
    "key with an empty 200",
    403: "refused before tirreno (a proxy or firewall rule?); tirreno itself answers a wrong "
    "key with an empty 200",
    407: "a proxy in the way wants credentials",
    429: "rate limited: too many events for this key right now; try again shortly",
}


def _state_dir_problem(state_dir: Path) -> str | None:
    """Why ``run`` could not open its spool in ``state_dir``, in `Spool`'s words; None if it can.

    Nothing is created: a missing folder passes when ``run`` could create it
    (the nearest existing ancestor is a folder this user may write in).
    """
    directory = Path(state_dir)
    if directory.is_dir():
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"state_dir {directory} is not writable by this user"
        spool = directory / SPOOL_FILE
        if spool.exists() and not os.access(spool, os.R_OK | os.W_OK):
            return f"cannot open spool {spool}: {os.strerror(errno.EACCES)}"
        return None
    if directory.exists() or directory.is_symlink():
        return f"cannot use state_dir {directory}: it exists and is not a directory"
    ancestor = directory.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        reason = errno.ENOTDIR
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        reason = errno.EROFS if os.statvfs(ancestor).f_flag & os.ST_RDONLY else errno.EACCES
    else:
        return None
    return f"cannot create state_dir {directory}: {os.strerror(reason)}"


def _check_state_dir(config: Config, out: TextIO) -> bool:
    directory = config.state_dir
    problem = _state_dir_problem(directory)
    if problem is not None:
        print(f"  [FAIL] {problem} ({STATE_DIR_HINT})", file=out)
        return False
    if directory.is_dir():
        holder = lock_holder(directory)
        running = f"; a daemon runs on it (pid {holder})" if holder else ""
        print(f"  [ok]   state_dir {directory}: writable{running}", file=out)
    else:
        print(f"  [ok]   state_dir {directory}: missing; `run` creates it", file=out)
    return True


class _LogCatcher:
    """Log events emitted while check runs: kept here, never printed as log lines."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        self.events.append({"level": method, **event})
        raise structlog.DropEvent

    def take(self) -> list[dict[str, Any]]:
        taken, self.events = self.events, []
        return taken


@contextlib.contextmanager
def _catch_logs() -> Iterator[_LogCatcher]:
    """Route structlog events to a `_LogCatcher` and mute library logging below ERROR.

    check reports every problem itself; a JSON log line of the same failure
    among its report lines would say it twice. Restores the configuration after.
    """
    catcher = _LogCatcher()
    saved = structlog.get_config()
    root = logging.getLogger()
    saved_level = root.level
    structlog.configure(
        processors=[catcher],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    root.setLevel(logging.ERROR)
    try:
        yield catcher
    finally:
        structlog.configure(**saved)
        root.setLevel(saved_level)


# How much of a log's end `check` parses with its format: enough lines to tell a
# wrong format from a few odd lines, little enough to read at once.
SAMPLE_BYTES = 256 * 1024
SAMPLE_LINES = 200


def _check_logs(site: SiteConfig, out: TextIO) -> bool:
    ok = True
    pipeline = SitePipeline(site, None)
    keys = KeyExtractor(site.users) if site.users is not None else None
    for src in site.logs:
        parser = pipeline.parser(src)
        problem = keys.format_problem(parser) if keys is not None else None
        if problem is not None:
            # Certain from the format alone, whatever the lines hold.
            print(f"  [FAIL] logs {src.where}: {src.format_label} {problem}", file=out)
            ok = False
        if src.syslog is not None:
            # Nothing to read before the daemon binds it; run says if it cannot.
            print(f"  [ok]   logs {src.where}: a syslog listener, bound by run", file=out)
            continue
        if glob.has_magic(src.path):
            # The files `run` follows: a folder is not a log, a compressed match is a
            # rotated copy (sent with backfill, never followed).
            paths = [p for p in followed_files(src.path, site.name) if selected(p, src)]
            for p in sorted(set(glob.glob(src.path)) - set(paths)):
                if os.path.isfile(p):
                    print(
                        f"  [warn] logs {p}: compressed: not followed; to send it: "
                        f"tirreno-shipper backfill -c CONFIG --site {site.name} {p}",
                        file=out,
                    )
        else:
            paths = [src.path]
        if not any(os.path.exists(p) for p in paths):
            parent = os.path.dirname(src.path) or "."
            if os.path.isdir(parent) and os.access(parent, os.R_OK | os.X_OK):
                print(
                    f"  [warn] logs {src.path}: no such file yet (it is picked up when it appears)",
                    file=out,
                )
            else:
                print(
                    f"  [FAIL] logs {src.path}: folder {parent} missing or not readable", file=out
                )
                ok = False
            continue
        for p in paths:
            try:
                with open(p, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    fh.seek(max(0, size - SAMPLE_BYTES))
                    tail = fh.read(SAMPLE_BYTES)
            except OSError as exc:
                hint = (
                    " (the service user needs read access, e.g. group adm)"
                    if isinstance(exc, PermissionError)
                    else ""
                )
                print(f"  [FAIL] logs {p}: {exc.strerror}{hint}", file=out)
                ok = False
                continue
            ok = (
                _check_sample(
                    p,
                    src.format_label,
                    tail,
                    parser,
                    out,
                    cut=size > len(tail),
                    keys=keys if problem is None else None,
                    framing=container_input(src)[0],
                )
                and ok
            )
    return ok


def _check_sample(
    path: str,
    label: str,
    tail: bytes,
    parser: LineParser,
    out: TextIO,
    *,
    cut: bool,
    keys: KeyExtractor | None,
    framing: Framing | None = None,
) -> bool:
    """Whether the file's last lines parse with its format, in one format only; and a
    warning if none carries the session key: each would otherwise show only as a
    growing unparseable or unresolved count."""
    lines = tail.split(b"\n")
    if cut:
        lines = lines[1:]  # the first is a piece of a line
    lines = [line.removesuffix(b"\r") for line in lines if line.strip()]
    if framing is not None:
        # A container log: the lines inside the runtime's framing.
        records, _bad, _end = framing.unwrap(list(enumerate(lines)), len(lines), final=True)
        lines = [line for _, line in records]
    lines = lines[-SAMPLE_LINES:]
    if not lines:
        print(f"  [ok]   logs {path}: readable (no lines yet)", file=out)
        return True
    results = [(line, parser.parse(line)) for line in lines]
    leftover = [line for line, r in results if isinstance(r, str) and r != EXCLUDED_PATH]
    parsed = len(lines) - len(leftover)
    said = f"{parsed} of its last {len(lines)} lines parse as {label}"
    detect = f"`tirreno-shipper detect-format {path}` names the format that fits"
    if parsed == 0:
        print(f"  [FAIL] logs {path}: readable, but none of its last {len(lines)} lines "
              f"parses as {label}: {detect}", file=out)  # fmt: skip
        return False
    other = second_format(leftover, len(lines))
    if other is not None:
        print(f"  [FAIL] logs {path}: mixes formats: {said}, {other.parsed} others as "
              f"{other.preset}: {MIXED_CAUSE}", file=out)  # fmt: skip
        return False
    requests = [r for _, r in results if isinstance(r, Request)]
    if keys is not None and requests and not any(keys.raw(r) for r in requests):
        # The format logs the key (else `_check_logs` failed it): on a quiet site
        # nobody may have logged in among the last requests, so no failure.
        print(f"  [warn] logs {path}: {keys.empty_in_sample(parser, len(requests))}",
              file=out)  # fmt: skip
    if parsed < len(lines) * 0.9:
        print(f"  [warn] logs {path}: readable; only {said} (the others are never sent): "
              f"{detect}", file=out)  # fmt: skip
        return True
    print(f"  [ok]   logs {path}: readable; {said}", file=out)
    return True


def _check_users(site: SiteConfig, out: TextIO, logs: _LogCatcher) -> bool:
    logs.take()
    if site.users is None:
        print("  [ok]   users: none configured (every event is anonymous)", file=out)
        return True
    try:
        resolver = UserResolver(site.name, site.users)
        try:
            started = time.monotonic()
            resolver.check()
            ms = (time.monotonic() - started) * 1000
        finally:
            resolver.close()
    except ResolverError as exc:
        # The resolver also logged it (resolver_failed): said once, here.
        print(f"  [FAIL] users: {exc}", file=out)
        return False
    print(f"  [ok]   users: the query runs ({ms:.0f} ms)", file=out)
    for event in logs.take():
        detail = event.get("hint") or event.get("error") or event["event"]
        print(f"  [warn] users: {detail}", file=out)
    return True


def _check_sensor(site: SiteConfig, out: TextIO, send_test_event: bool) -> bool:
    cfg = site.sensor
    verify = tls_verify(cfg)  # the same TLS settings the sender uses
    try:
        # Asked the way events are sent (a form POST to the URL) but without the
        # Api-Key, which tirreno answers with an empty 200 and stores nothing.
        # Any HTTP answer proves DNS, TCP and TLS; only a "nothing here" answer
        # to a POST says that the path is wrong (a GET of /sensor/ may get 405).
        r = httpx.post(
            cfg.url,
            content=b"",
            timeout=cfg.timeout,
            verify=verify,
            headers={"User-Agent": user_agent(), "Content-Type": FORM_CONTENT_TYPE},
        )
    except httpx.HTTPError as exc:
        print(f"  [FAIL] sensor {cfg.url}: {type(exc).__name__}: {exc}", file=out)
        return False
    reachable = r.status_code not in WRONG_PATH_STATUSES
    if r.status_code == 200 and r.content.strip():
        # tirreno's sensor answers a keyless POST with an empty 200; a page with a body
        # is some other application on that host and port (a default site, a catch-all).
        reachable = False
        kind = r.headers.get("content-type", "").split(";")[0] or "a body"
        print(
            f"  [FAIL] sensor {cfg.url}: not tirreno: it answers a POST without Api-Key with "
            f"a page (HTTP 200, {kind}, {len(r.content)} bytes), where tirreno's sensor answers "
            "an empty 200; check the host, port and path of sensor.url",
            file=out,
        )
    elif r.status_code == 200:
        print(
            f"  [ok]   sensor {cfg.url}: answers as tirreno's sensor does (an empty 200 to a "
            "POST without Api-Key)",
            file=out,
        )
    elif reachable:
        print(f"  [ok]   sensor {cfg.url}: reachable (HTTP {r.status_code})", file=out)
    else:
        print(
            f"  [FAIL] sensor {cfg.url}: {_http(r.status_code)}: {SENSOR_PATH_HINT}",
            file=out,
        )
    if not send_test_event:
        return reachable
    return _send_test_event(site, out) and reachable


def _send_test_event(site: SiteConfig, out: TextIO) -> bool:
    fields = {
        "ipAddress": "127.0.0.1",
        "url": "/tirreno-shipper/check",
        "userName": "tirreno-shipper-check",
        "userAgent": user_agent(),
        "eventTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "eventType": "page_view",
        "pageTitle": "tirreno-shipper check --send-test-event",
        "httpMethod": "GET",
        "httpCode": "200",
    }
    verdict = send_one(site.sensor, fields, str(uuid.uuid4()))
    if verdict.outcome is Outcome.ACCEPTED:
        print(
            "  [ok]   test event accepted (204): look for user 'tirreno-shipper-check' in tirreno",
            file=out,
        )
        return True
    if verdict.outcome is Outcome.REJECTED and verdict.reason == "rejected":
        print(
            "  [FAIL] test event rejected (empty 200): "
            "check sensor.api_key / api_key_file and sensor.url",
            file=out,
        )
        return False
    status = verdict.status
    if status is None:  # no HTTP answer: connect, timeout, tls, ...
        print(
            f"  [FAIL] test event not accepted: {verdict.outcome.name.lower()} ({verdict.reason})",
            file=out,
        )
        return False
    meaning = _STATUS_MEANING.get(status)
    if meaning is None:
        # The sender's own reason, unless it only repeats the status ("http 400", "503").
        meaning = "" if verdict.reason in (str(status), f"http {status}") else verdict.reason
        if status >= 500:
            meaning = "tirreno's sensor or the database behind it failed; try again later"
    print(
        f"  [FAIL] test event not accepted: {_http(status)}{': ' + meaning if meaning else ''}",
        file=out,
    )
    return False


def _http(status: int) -> str:
    """``HTTP 404 Not Found``; just ``HTTP 599`` for a status without a standard phrase."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def run_check(config: Config, send_test_event: bool = False, out: TextIO | None = None) -> int:
    # Log lines it reads, database errors and the sensor's answers are shown: escaped.
    out = cast(TextIO, PrintableWriter(out if out is not None else sys.stdout))
    with _catch_logs() as logs:
        print("configuration: valid", file=out)
        ok = _check_state_dir(config, out)
        for site in config.sites:
            print(f"site {site.name}:", file=out)
            ok &= _check_logs(site, out)
            ok &= _check_users(site, out, logs)
            ok &= _check_sensor(site, out, send_test_event)
    print("all checks passed" if ok else "some checks FAILED", file=out)
    return 0 if ok else 1
