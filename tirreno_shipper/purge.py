"""``spool purge``: remove queued events on purpose (a mistaken backfill, say).

Only queued events go: never those a sender holds right now (leased), never
checkpoints (the files are not read again) and never dead letters (``dead-letters
purge`` is for those). On a terminal it asks first; elsewhere it needs ``--yes``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime

from tirreno_shipper.config import Config
from tirreno_shipper.errors import EX_OK, EX_USAGE
from tirreno_shipper.spool import LANES, Spool
from tirreno_shipper.state import SPOOL_FILE


def parse_before(text: str) -> float:
    """``--before``: an ISO 8601 time (``2026-12-01T06:00``, ``...Z``, ``...+01:00``); one
    without an offset is the machine's local time. Raises ValueError."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return when.astimezone().timestamp()


def run_purge(
    config: Config,
    site: str,
    lane: str | None,
    before: str | None,
    *,
    yes: bool,
    ask: Callable[[str], str] = input,
    interactive: bool | None = None,
) -> int:
    if site not in {s.name for s in config.sites}:
        print(f"tirreno-shipper: note: no site named {site!r} in the config", file=sys.stderr)
    try:
        stamp = parse_before(before) if before is not None else None
    except ValueError:
        print(
            f"tirreno-shipper: --before {before!r} is not a time; give an ISO 8601 time such "
            "as 2026-12-01T06:00 (local) or 2026-12-01T05:00Z",
            file=sys.stderr,
        )
        return EX_USAGE
    if not (config.state_dir / SPOOL_FILE).is_file():
        print(f"tirreno-shipper: no spool in {config.state_dir} yet: nothing to purge")
        return EX_OK
    lanes = tuple(range(len(LANES))) if lane is None else (LANES.index(lane),)
    what = (
        f"site {site}"
        + (f", lane {lane}" if lane else "")
        + (f", created before {before}" if before else "")
    )
    with Spool.open(config.state_dir) as spool:
        found = spool.purgeable(site, lanes=lanes, before=stamp)
        if not sum(found.values()):
            print(f"nothing to purge ({what})")
            return EX_OK
        listing = ", ".join(f"{n} {name}" for name, n in found.items() if n)
        if not yes:
            if not (sys.stdin.isatty() if interactive is None else interactive):
                print(
                    f"tirreno-shipper: would remove {listing} queued event(s) ({what}); "
                    "add --yes to remove them (no terminal to ask on)",
                    file=sys.stderr,
                )
                return EX_USAGE
            answer = ask(f"Remove {listing} queued event(s) ({what})? They are never sent. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing removed")
                return EX_OK
        removed = spool.purge(site, lanes=lanes, before=stamp)
    done = ", ".join(f"{n} {name}" for name, n in removed.items() if n) or "nothing"
    print(
        f"removed {done} ({what}); events a sender holds right now, checkpoints and dead "
        "letters were left alone"
    )
    return EX_OK
