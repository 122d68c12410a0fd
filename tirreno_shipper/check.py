"""``check``: prove a configuration works before the daemon runs it.

For each site: the log paths can be opened, the user query runs (with a key
that cannot exist), the sensor answers; with ``--send-test-event``, one
clearly labelled event is posted and the verdict reported. Prints one line per
check and exits 0 only if every check passed.
"""

from __future__ import annotations

import glob
import os
import sys
import time
import uuid
from typing import TextIO

import httpx

from tirreno_shipper.config import Config, SiteConfig
from tirreno_shipper.errors import ResolverError
from tirreno_shipper.sender import Outcome, send_one, tls_verify, user_agent
from tirreno_shipper.users import UserResolver


def _check_logs(site: SiteConfig, out: TextIO) -> bool:
    ok = True
    for src in site.logs:
        paths = sorted(glob.glob(src.path)) if glob.has_magic(src.path) else [src.path]
        if not paths or not any(os.path.exists(p) for p in paths):
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
                    fh.read(1)
                print(f"  [ok]   logs {p}: readable", file=out)
            except OSError as exc:
                print(
                    f"  [FAIL] logs {p}: {exc.strerror} "
                    "(the service user needs read access, e.g. group adm)",
                    file=out,
                )
                ok = False
    return ok


def _check_users(site: SiteConfig, out: TextIO) -> bool:
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
        print(f"  [FAIL] users: {exc}", file=out)
        return False
    print(f"  [ok]   users: the query runs ({ms:.0f} ms)", file=out)
    return True


def _check_sensor(site: SiteConfig, out: TextIO, send_test_event: bool) -> bool:
    cfg = site.sensor
    verify = tls_verify(cfg)  # the same TLS settings the sender uses
    try:
        # Any HTTP answer proves DNS, TCP and TLS; tirreno answers GET on /sensor/ too.
        r = httpx.get(
            cfg.url, timeout=cfg.timeout, verify=verify, headers={"User-Agent": user_agent()}
        )
        print(f"  [ok]   sensor {cfg.url}: reachable (HTTP {r.status_code})", file=out)
    except httpx.HTTPError as exc:
        print(f"  [FAIL] sensor {cfg.url}: {type(exc).__name__}: {exc}", file=out)
        return False
    if not send_test_event:
        return True
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
    verdict = send_one(cfg, fields, str(uuid.uuid4()))
    if verdict.outcome is Outcome.ACCEPTED:
        print(
            "  [ok]   test event accepted (204): look for user 'tirreno-shipper-check' in tirreno",
            file=out,
        )
        return True
    if verdict.outcome is Outcome.REJECTED:
        print(
            "  [FAIL] test event rejected (empty 200): "
            "check sensor.api_key / api_key_file and sensor.url",
            file=out,
        )
        return False
    print(
        f"  [FAIL] test event not accepted: {verdict.outcome.name.lower()} ({verdict.reason})",
        file=out,
    )
    return False


def run_check(config: Config, send_test_event: bool = False, out: TextIO = sys.stdout) -> int:
    print("configuration: valid", file=out)
    ok = True
    for site in config.sites:
        print(f"site {site.name}:", file=out)
        ok &= _check_logs(site, out)
        ok &= _check_users(site, out)
        ok &= _check_sensor(site, out, send_test_event)
    print("all checks passed" if ok else "some checks FAILED", file=out)
    return 0 if ok else 1
