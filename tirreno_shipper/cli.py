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
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tirreno_shipper._version import __version__
from tirreno_shipper.errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_FAILURE,
    EX_INTERRUPTED,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    ConfigError,
    ResolverError,
    ShipperError,
)
from tirreno_shipper.terminal import printable, printable_json

if TYPE_CHECKING:
    from tirreno_shipper.config import Config

DEFAULT_CONFIG = "/etc/tirreno-shipper/config.yaml"
CONFIG_ENV = "TIRRENO_SHIPPER_CONFIG"

# shtab's file completion, named without importing shtab (the parser is built at every start).
_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files"}

_CONFIG_ENV_HELP = (
    f"{CONFIG_ENV}  the configuration file when -c is not given (default {DEFAULT_CONFIG})"
)
_SECRETS_HELP = "TIRRENO_API_KEY, ...  whatever ${VAR} the configuration names (the secrets)"


@dataclass(frozen=True, slots=True)
class _Doc:
    """What a command's --help (and the man page) says after its options."""

    exits: tuple[tuple[int, str], ...]
    env: tuple[str, ...]
    examples: tuple[str, ...]

    def epilog(self) -> str:
        lines = ["exit codes:"]
        lines += [f"  {code:<4}{meaning}" for code, meaning in self.exits]
        lines += ["", "environment:"]
        lines += [f"  {e}" for e in self.env] or ["  (none)"]
        lines += ["", "example:" if len(self.examples) == 1 else "examples:"]
        lines += [f"  {x}" for x in self.examples]
        return "\n".join(lines)


_CONFIG_EXIT = (EX_CONFIG, "the configuration is invalid (each problem is listed)")

DOCS: dict[str, _Doc] = {
    "run": _Doc(
        exits=(
            (EX_OK, "stopped by SIGTERM/SIGINT (or --once: everything sent)"),
            (
                EX_FAILURE,
                "a failure; --once: the spool did not empty in once_timeout, or a "
                "log could not be read",
            ),
            (EX_CANTCREAT, "state_dir cannot be created or written"),
            (EX_TEMPFAIL, "another `run` holds state_dir"),
            _CONFIG_EXIT,
            (EX_INTERRUPTED, "interrupted in the foreground"),
        ),
        env=(
            _CONFIG_ENV_HELP,
            _SECRETS_HELP,
            "NOTIFY_SOCKET, WATCHDOG_USEC  set by systemd (Type=notify, WatchdogSec)",
            "JOURNAL_STREAM  set by systemd: log lines then carry their priority",
        ),
        examples=(
            "tirreno-shipper run --once --dry-run | head",
            "tirreno-shipper run -c /etc/tirreno-shipper/config.yaml",
        ),
    ),
    "validate": _Doc(
        exits=((EX_OK, "the configuration is valid"), _CONFIG_EXIT),
        env=(_CONFIG_ENV_HELP, "(no secret is needed: unset ${VARS} of secrets are fine)"),
        examples=("tirreno-shipper validate -c /etc/tirreno-shipper/config.yaml",),
    ),
    "check": _Doc(
        exits=(
            (EX_OK, "every check passed"),
            (EX_FAILURE, "a check failed (its [FAIL] line says why)"),
            _CONFIG_EXIT,
        ),
        env=(_CONFIG_ENV_HELP, _SECRETS_HELP),
        examples=(
            "set -a; . /etc/tirreno-shipper/env; set +a; tirreno-shipper check --send-test-event",
        ),
    ),
    "status": _Doc(
        exits=((EX_OK, "the report was printed"), _CONFIG_EXIT),
        env=(_CONFIG_ENV_HELP, "(no secret is needed)"),
        examples=("tirreno-shipper status --json",),
    ),
    "backfill": _Doc(
        exits=(
            (EX_OK, "every file was spooled"),
            (EX_FAILURE, "a file was refused (no line parses) or cut short, or the spool failed"),
            (EX_USAGE, "--log names no logs entry, or a file matches none"),
            _CONFIG_EXIT,
            (EX_INTERRUPTED, "interrupted (run it again: it goes on where it stopped)"),
        ),
        env=(_CONFIG_ENV_HELP, "the users database's ${VARS} (not the API key)"),
        examples=(
            "tirreno-shipper backfill --site shop /var/log/nginx/access.log.2.gz "
            "/var/log/nginx/access.log.3.xz",
        ),
    ),
    "dead-letters": _Doc(
        exits=((EX_OK, "done (an unknown --site or --id is a note, not an error)"), _CONFIG_EXIT),
        env=(_CONFIG_ENV_HELP, "(no secret is needed)"),
        examples=(
            "tirreno-shipper dead-letters list --json",
            "tirreno-shipper dead-letters retry --site shop",
        ),
    ),
    "spool": _Doc(
        exits=(
            (EX_OK, "removed, nothing to remove, or not confirmed"),
            (EX_USAGE, "--before is not a time, or no terminal to ask on and no --yes"),
            _CONFIG_EXIT,
        ),
        env=(_CONFIG_ENV_HELP, "(no secret is needed)"),
        examples=(
            "tirreno-shipper spool purge --site shop --lane backfill",
            "tirreno-shipper spool purge --site shop --before 2026-12-01T06:00 --yes",
        ),
    ),
    "detect-format": _Doc(
        exits=(
            (EX_OK, "a preset fits and the lines carry a session key"),
            (
                EX_FAILURE,
                "no preset fits, two formats are mixed, no session cookie is "
                "logged, or the file cannot be read (the cause is printed)",
            ),
            (EX_USAGE, "--lines below 1"),
        ),
        env=(),
        examples=("tirreno-shipper detect-format /var/log/nginx/access.log",),
    ),
    "sink": _Doc(
        exits=(
            (EX_OK, "stopped by SIGINT (Ctrl-C) or SIGTERM"),
            (EX_FAILURE, "cannot listen on that address"),
            (EX_USAGE, "no --api-key and no TIRRENO_API_KEY"),
        ),
        env=("TIRRENO_API_KEY  the key the sink accepts when --api-key is not given",),
        examples=(
            "tirreno-shipper sink --listen 127.0.0.1:8585 --api-key test   # sensor.url: "
            "http://127.0.0.1:8585/sensor/",
        ),
    ),
    "completion": _Doc(
        exits=((EX_OK, "the script was printed"),),
        env=(),
        examples=(
            "tirreno-shipper completion bash > /etc/bash_completion.d/tirreno-shipper",
            "tirreno-shipper completion zsh > /usr/local/share/zsh/site-functions/_tirreno-shipper",
        ),
    ),
    "man": _Doc(
        exits=((EX_OK, "the page was printed"),),
        env=(),
        examples=("tirreno-shipper man > /usr/local/share/man/man1/tirreno-shipper.1",),
    ),
}


def config_path(given: str | None) -> str:
    """-c, else $TIRRENO_SHIPPER_CONFIG, else /etc/tirreno-shipper/config.yaml."""
    return given or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tirreno-shipper",
        description=(
            "Tail nginx/Apache access logs and ship each meaningful request to a tirreno sensor."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Every command takes --log-level and --log-format; those that read the\n"
            f"configuration take -c FILE (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG}).\n"
            "`tirreno-shipper COMMAND --help` lists the command's exit codes, environment\n"
            "variables and an example.\n\n"
            "first steps:\n"
            "  tirreno-shipper detect-format /var/log/nginx/access.log\n"
            "  tirreno-shipper validate\n"
            "  tirreno-shipper check --send-test-event\n"
            "  tirreno-shipper run --once --dry-run | head"
        ),
    )
    p.add_argument("--version", action="version", version=f"tirreno-shipper {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides the configuration's log.level",
    )
    common.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        help="overrides log.format (auto: console on a TTY, JSON lines otherwise)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            parents=[common],
            epilog=DOCS[name].epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if config:
            action = sp.add_argument(
                "-c",
                "--config",
                metavar="FILE",
                help=f"YAML configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
            )
            action.complete = _FILES  # type: ignore[attr-defined]
        return sp

    run = command("run", "follow the logs and ship events (the daemon)")
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

    command(
        "validate",
        "check the whole configuration offline: keys, formats, rules, regexes "
        "(no network, database or secret needed)",
    )

    check = command(
        "check", "validate the config, then try the state folder, logs, user query and sensor"
    )
    check.add_argument(
        "--send-test-event", action="store_true", help="post one clearly labelled test event"
    )

    status = command("status", "spool depth, dead letters, sensor state and file offsets per site")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    bf = command(
        "backfill",
        "ship old log files (plain, .gz, .bz2 or .xz) through the spool; the daemon sends them",
    )
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
    files = bf.add_argument(
        "files", nargs="+", metavar="FILE", help="plain, .gz, .bz2 or .xz access logs"
    )
    files.complete = _FILES  # type: ignore[attr-defined]

    dl = command(
        "dead-letters", "list, retry or purge events the sensor will never accept as they are"
    )
    dl.add_argument("action", choices=["list", "retry", "purge"])
    dl.add_argument("--site", help="only this site")
    dl.add_argument(
        "--id", type=int, action="append", dest="ids", help="only this dead letter id (repeatable)"
    )
    dl.add_argument("--json", action="store_true", help="list as JSON lines")

    sp = command("spool", "remove queued events on purpose (a mistaken backfill)")
    sp.add_argument("action", choices=["purge"])
    sp.add_argument("--site", required=True, help="the site whose queued events to remove")
    sp.add_argument("--lane", choices=["security", "live", "backfill"], help="only this lane")
    sp.add_argument("--before", metavar="TIME", help="only events spooled before (ISO 8601)")
    sp.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")

    det = command(
        "detect-format",
        "name the presets that parse a log file, and what is wrong with it",
        config=False,
    )
    log_file = det.add_argument("file", help="an access log (plain, .gz, .bz2 or .xz)")
    log_file.complete = _FILES  # type: ignore[attr-defined]
    det.add_argument(
        "--lines", type=int, default=500, help="how many lines to examine (default 500)"
    )

    sink = command(
        "sink",
        "a local stand-in for a tirreno sensor that prints each event it receives",
        config=False,
    )
    sink.add_argument(
        "--listen",
        default="127.0.0.1:8585",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8585); point sensor.url at "
        "http://HOST:PORT/sensor/",
    )
    sink.add_argument(
        "--api-key",
        metavar="K",
        help="the key it accepts (default: $TIRRENO_API_KEY); another key gets tirreno's empty 200",
    )
    sink.add_argument(
        "--rate",
        type=int,
        default=200,
        metavar="N",
        help="answer 429 past N events per 20 s, as tirreno's default bucket (0: never)",
    )

    comp = command("completion", "print the bash or zsh completion script", config=False)
    comp.add_argument("shell", choices=["bash", "zsh"])
    command("man", "print the manual page (roff), made from this parser", config=False)
    return p


def _load(path: str, *, no_secrets: bool | frozenset[str] = False) -> Config:
    # Imported here: --version, --help, detect-format, sink, man and completion read no
    # configuration and start without pydantic and YAML.
    from tirreno_shipper.config import load_config

    return load_config(path, no_secrets=no_secrets)


def _setup_logging(
    args: argparse.Namespace, config: Config | None, level: str | None = None
) -> None:
    """--log-level / --log-format first, then ``level`` (the command's own), then the
    configuration's ``log`` section."""
    from tirreno_shipper.logs import force, setup_logging

    force(args.log_level, args.log_format)  # a SIGHUP reload keeps them
    setup_logging(
        level or (config.log.level if config else "info"),
        config.log.format if config else "auto",
    )


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

        _setup_logging(args, None, "warning")
        text, code = report(args.file, args.lines)
        # It quotes the file's lines: escaped.
        print(printable(text, lines=True), file=sys.stderr if code == 2 else sys.stdout)
        return code
    if args.command == "sink":
        from tirreno_shipper.sinkcmd import run_sink

        _setup_logging(args, None)
        return run_sink(args.listen, args.api_key or os.environ.get("TIRRENO_API_KEY"), args.rate)
    if args.command == "completion":
        import shtab

        print(shtab.complete(_parser(), shell=args.shell), end="")
        return EX_OK
    if args.command == "man":
        from tirreno_shipper.manpage import render

        print(render(_parser(), DOCS), end="")
        return EX_OK
    path = config_path(args.config)
    if args.command == "validate":
        from tirreno_shipper.validate import validate

        _setup_logging(args, None, "warning")
        print(validate(path))
        return EX_OK
    # status and dead-letters read the spool only: they work without the
    # service's secrets in the environment (its env file is rarely sourced).
    # backfill resolves users (it needs the database) but never sends (no API key).
    unused: bool | frozenset[str] = (
        True
        if args.command in ("status", "dead-letters", "spool")
        else frozenset({"api_key"})
        if args.command == "backfill"
        else False
    )
    config = _load(path, no_secrets=unused)
    if args.command in ("status", "dead-letters", "spool"):
        # Their output is data (JSON with --json): log lines go to stderr, and
        # only warnings, never the spool's own info events.
        _setup_logging(args, config, "warning")
    if args.command == "run":
        _setup_logging(args, config)
        if args.dry_run:
            freeze_startup_heap()
            return _dry_run(config)
        from tirreno_shipper.daemon import run_daemon

        freeze_startup_heap()
        return run_daemon(config, config_path=Path(path), once=args.once)
    if args.command == "check":
        _setup_logging(args, config)
        from tirreno_shipper.check import run_check

        return run_check(config, send_test_event=args.send_test_event)
    if args.command == "status":
        return _status(config, as_json=args.json)
    if args.command == "backfill":
        _setup_logging(args, config)
        freeze_startup_heap()
        return _backfill(
            config, args.site, args.files, log_index=args.log_index, from_start=args.from_start
        )
    if args.command == "dead-letters":
        return _dead_letters(config, args.action, args.site, args.ids, as_json=args.json)
    if args.command == "spool":
        from tirreno_shipper.purge import run_purge

        return run_purge(config, args.site, args.lane, args.before, yes=args.yes)
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


class BackfillProgress:
    """``backfill_progress`` log lines when no progress bar can be drawn: a backfill
    must not look hung for as long as it runs."""

    EVERY = 10.0

    def __init__(
        self, site: str, total_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.site = site
        self.total = total_bytes
        self.clock = clock
        self.started = clock()
        self._said = -math.inf  # the first chunk is said at once: it started, and how big
        self.bytes = self.lines = self.events = 0

    def add(self, nbytes: int, nlines: int, nevents: int) -> None:
        self.bytes += nbytes
        self.lines += nlines
        self.events += nevents
        now = self.clock()
        if now - self._said < self.EVERY:
            return
        self._said = now
        import structlog

        structlog.get_logger("tirreno_shipper.backfill").info(
            "backfill_progress",
            site=self.site,
            percent=round(100 * self.bytes / self.total, 1) if self.total else None,
            bytes=self.bytes,
            total_bytes=self.total,
            lines=self.lines,
            events=self.events,
            seconds=round(now - self.started, 1),
        )


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
    # Not a TTY (systemd-run, cron, a pipe): a log line every PROGRESS_EVERY seconds.
    said = BackfillProgress(site, total_bytes) if bar is None else None

    def progress(nbytes: int, nlines: int, nevents: int) -> None:
        nonlocal lines, events
        lines += nlines
        events += nevents
        if bar is not None:
            bar.update(nbytes)
            bar.set_postfix(lines=lines, events=events)
        if said is not None:
            said.add(nbytes, nlines, nevents)

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
