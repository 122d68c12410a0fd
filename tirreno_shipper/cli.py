"""The ``tirreno-shipper`` command line.

Exit codes: 0 clean stop; 78 (EX_CONFIG) bad configuration; 73 (EX_CANTCREAT)
the state folder cannot be created or written; 75 (EX_TEMPFAIL) another
``run`` holds the state folder; 1 unexpected failure (or ``run --once`` that
could not empty the spool in time or read every log); 130 interrupted in the
foreground. They are defined in `tirreno_shipper.errors`, with the errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tirreno_shipper._version import __version__
from tirreno_shipper.config import Config, load_config
from tirreno_shipper.errors import (
    EX_CONFIG,
    EX_FAILURE,
    EX_INTERRUPTED,
    EX_OK,
    EX_USAGE,
    ConfigError,
    ResolverError,
    ShipperError,
)
from tirreno_shipper.terminal import printable, printable_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tirreno-shipper",
        description=(
            "Tail nginx/Apache access logs and ship each meaningful request to a tirreno sensor."
        ),
    )
    p.add_argument("--version", action="version", version=f"tirreno-shipper {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", required=True, help="YAML configuration file")

    run = sub.add_parser("run", help="follow the logs and ship events (the daemon)")
    with_config(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="ship what the files hold now, wait for the spool to empty, exit",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print the events as JSON lines instead of sending them; "
            "reads each file from its start; writes no state"
        ),
    )

    check = sub.add_parser(
        "check", help="validate the config, the log paths, the user query and the sensor"
    )
    with_config(check)
    check.add_argument(
        "--send-test-event", action="store_true", help="post one clearly labelled test event"
    )

    status = sub.add_parser(
        "status", help="spool depth, dead letters, sensor state and file offsets per site"
    )
    with_config(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    bf = sub.add_parser("backfill", help="ship historical files (plain or .gz) through the spool")
    with_config(bf)
    bf.add_argument("--site", required=True, help="the site whose pipeline and sensor to use")
    bf.add_argument(
        "--log",
        type=int,
        metavar="N",
        dest="log_index",
        help="the files are old files of the site's logs entry N (0 is the first): its "
        "format is used (by default, the entry whose path the file names extend)",
    )
    bf.add_argument(
        "--from-start",
        action="store_true",
        help="ship the files whole again, even the parts an earlier backfill shipped",
    )
    bf.add_argument("files", nargs="+", metavar="FILE")

    dl = sub.add_parser(
        "dead-letters", help="list, retry or purge events the sensor will never accept as they are"
    )
    with_config(dl)
    dl.add_argument("action", choices=["list", "retry", "purge"])
    dl.add_argument("--site", help="only this site")
    dl.add_argument(
        "--id", type=int, action="append", dest="ids", help="only this dead letter id (repeatable)"
    )
    dl.add_argument("--json", action="store_true", help="list as JSON lines")

    det = sub.add_parser("detect-format", help="name the presets that parse a log file")
    det.add_argument("file")
    det.add_argument(
        "--lines", type=int, default=500, help="how many lines to examine (default 500)"
    )
    return p


def _load(path: str, *, no_secrets: bool | frozenset[str] = False) -> Config:
    return load_config(path, no_secrets=no_secrets)


def _setup_logging(config: Config, level: str | None = None) -> None:
    from tirreno_shipper.logs import setup_logging

    setup_logging(level or config.log.level, config.log.format)


def freeze_startup_heap() -> None:
    """Put everything built so far (modules, config, compiled regexes) out of the
    cyclic garbage collector's reach before the long run starts.

    None of it is ever garbage, yet every full collection, triggered every few
    thousand lines by the records the pipeline allocates, would walk all of it
    again: freezing it made the parse path 5-10 % faster (benchmarks/parse.py).
    """
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(
            f"tirreno-shipper: invalid configuration ({len(exc.problems)} problem(s)):",
            file=sys.stderr,
        )
        for problem in exc.problems:
            print(f"  - {printable(problem)}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        print("tirreno-shipper: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except ShipperError as exc:
        print(f"tirreno-shipper: {printable(str(exc), lines=True)}", file=sys.stderr)
        return EX_FAILURE
    except BrokenPipeError:
        # `... --dry-run | head`: the reader went away; not our failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "detect-format":
        from tirreno_shipper.detect import report

        text, code = report(args.file, args.lines)
        # It quotes the file's lines: escaped.
        print(printable(text, lines=True), file=sys.stderr if code == 2 else sys.stdout)
        return code
    # status and dead-letters read the spool only: they work without the
    # service's secrets in the environment (its env file is rarely sourced).
    # backfill resolves users (it needs the database) but never sends (no API key).
    unused: bool | frozenset[str] = (
        True
        if args.command in ("status", "dead-letters")
        else frozenset({"api_key"})
        if args.command == "backfill"
        else False
    )
    config = _load(args.config, no_secrets=unused)
    if args.command in ("status", "dead-letters"):
        # Their output is data (JSON with --json): log lines go to stderr, and
        # only warnings, never the spool's own info events.
        _setup_logging(config, "warning")
    if args.command == "run":
        _setup_logging(config)
        if args.dry_run:
            freeze_startup_heap()
            return _dry_run(config)
        from tirreno_shipper.daemon import run_daemon

        freeze_startup_heap()
        return run_daemon(config, config_path=Path(args.config), once=args.once)
    if args.command == "check":
        _setup_logging(config)
        from tirreno_shipper.check import run_check

        return run_check(config, send_test_event=args.send_test_event)
    if args.command == "status":
        return _status(config, as_json=args.json)
    if args.command == "backfill":
        _setup_logging(config)
        freeze_startup_heap()
        return _backfill(
            config, args.site, args.files, log_index=args.log_index, from_start=args.from_start
        )
    if args.command == "dead-letters":
        return _dead_letters(config, args.action, args.site, args.ids, as_json=args.json)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _dry_run(config: Config) -> int:
    from tirreno_shipper.backfill import dry_run

    try:
        totals = dry_run(config)
    except ResolverError as exc:
        print(f"tirreno-shipper: the user database failed: {printable(str(exc))}", file=sys.stderr)
        return EX_FAILURE
    for site, counts in totals.items():
        print(json.dumps({"summary": site, **counts.summary()}), file=sys.stderr)
    return EX_OK


def _backfill(
    config: Config, site: str, files: list[str], *, log_index: int | None, from_start: bool
) -> int:
    from tirreno_shipper.backfill import BackfillError, backfill, content_size, pick_source
    from tirreno_shipper.pipeline import Counts
    from tirreno_shipper.spool import Spool

    try:
        config.site(site)
    except KeyError:
        names = ", ".join(s.name for s in config.sites)
        print(f"tirreno-shipper: no site named {site!r} (sites: {names})", file=sys.stderr)
        return EX_CONFIG
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        print(f"tirreno-shipper: not a readable file: {', '.join(missing)}", file=sys.stderr)
        return EX_FAILURE
    try:
        sources = [pick_source(config.site(site), f, log_index) for f in files]
    except BackfillError as exc:
        print(f"tirreno-shipper: {exc}", file=sys.stderr)
        return EX_USAGE
    total_bytes = sum(content_size(f) for f in files)
    spool = Spool.open(config.state_dir)
    started = time.monotonic()
    bar: Any = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc=f"backfill {site}", file=sys.stderr
        )
    lines = events = 0

    def progress(nbytes: int, nlines: int, nevents: int) -> None:
        nonlocal lines, events
        lines += nlines
        events += nevents
        if bar is not None:
            bar.update(nbytes)
            bar.set_postfix(lines=lines, events=events)

    failed: BackfillError | None = None
    try:
        counts = backfill(
            config, site, files, spool, progress, sources=sources, from_start=from_start
        )
    except BackfillError as exc:
        failed = exc
        counts = exc.counts or Counts()
    finally:
        if bar is not None:
            bar.close()
        spool.close()
    elapsed = time.monotonic() - started
    summary = {
        "backfill": site,
        "files": len(files),
        "seconds": round(elapsed, 2),
        **counts.summary(),
    }
    print(json.dumps(summary), file=sys.stderr)
    print(
        f"backfilled {counts.events} events from {counts.lines} lines in {elapsed:.1f} s; "
        "the running daemon (or `run --once`) sends them",
        file=sys.stderr,
    )
    if failed is not None:
        print(f"tirreno-shipper: {failed}", file=sys.stderr)
        return EX_FAILURE
    return EX_OK


def _status(config: Config, as_json: bool) -> int:
    from tirreno_shipper.status import collect, render

    report = collect(config)
    print(printable_json(json.dumps(report, indent=2)) if as_json else render(report))
    return EX_OK


def _dead_letters(
    config: Config, action: str, site: str | None, ids: list[int] | None, as_json: bool
) -> int:
    from tirreno_shipper.spool import Spool
    from tirreno_shipper.state import SPOOL_FILE

    if site is not None and site not in {s.name for s in config.sites}:
        # Not an error: a site taken out of the config may still have dead letters.
        print(f"tirreno-shipper: note: no site named {site!r} in the config", file=sys.stderr)
    if not (config.state_dir / SPOOL_FILE).is_file():
        # Asking must not create the state folder (perhaps as the wrong user): as `status`.
        print(
            f"tirreno-shipper: no spool in {config.state_dir} yet (`run` has not run with this "
            "state_dir): no dead letters",
            file=sys.stderr,
        )
        return EX_OK
    spool = Spool.open(config.state_dir)
    try:
        if action == "list":
            rows = spool.dead_letters(site)
            if ids:
                rows = [r for r in rows if r.id in ids]
            for r in rows:
                if as_json:
                    print(
                        printable_json(
                            json.dumps(
                                {
                                    "id": r.id,
                                    "site": r.site,
                                    "request_id": r.request_id,
                                    "reason": r.reason,
                                    "attempts": r.attempts,
                                    "failed_at": r.failed_at,
                                    "fields": dict(r.fields),
                                },
                                ensure_ascii=False,
                            )
                        )
                    )
                else:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.failed_at))
                    # The URL is a visitor's text, the reason may quote the sensor.
                    print(
                        printable(
                            f"{r.id:>6} {r.site:12s} {when}  {r.request_id}  {r.reason}  "
                            f"{r.fields.get('url', '')}"
                        )
                    )
            if not as_json:
                print(f"{len(rows)} dead letter(s)", file=sys.stderr)
        else:
            unknown = sorted(set(ids or ()) - {r.id for r in spool.dead_letters(site)})
            if unknown:
                where = f" of site {site!r}" if site else ""
                print(
                    f"tirreno-shipper: note: no dead letter{where} with id "
                    + ", ".join(map(str, unknown))
                    + " (`dead-letters list` shows them)",
                    file=sys.stderr,
                )
            if action == "retry":
                n = spool.retry_dead_letters(site, ids)
                print(f"{n} dead letter(s) put back in the spool; the daemon sends them")
            else:
                n = spool.purge_dead_letters(site, ids)
                print(f"{n} dead letter(s) deleted")
    finally:
        spool.close()
    return EX_OK
