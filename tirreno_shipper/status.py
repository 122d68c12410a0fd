"""``status``: what the spool holds and how far each file has been read.

Works with or without a running daemon: the spool and the checkpoints are in
SQLite (safe to read beside the daemon thanks to WAL), the live parts (sensor
state, pauses) come from the ``status.json`` the daemon rewrites every few
seconds, and file sizes from ``os.stat`` now.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tirreno_shipper.config import Config
from tirreno_shipper.spool import Spool, drain_seconds
from tirreno_shipper.state import SPOOL_FILE, SiteState, lock_holder, read_status
from tirreno_shipper.terminal import printable

STALE_AFTER = 30.0


def _daemon_status(config: Config) -> dict[str, Any]:
    """Whether a daemon runs (its lock, not status.json, says so), and its live state
    from status.json when that is fresh."""
    pid = lock_holder(config.state_dir)
    state = read_status(config.state_dir)
    age = time.time() - (state.updated if state is not None else 0.0)
    fresh = pid is not None and state is not None and state.pid == pid and age < STALE_AFTER
    return {
        "running": pid is not None,
        "pid": pid,
        "sites": state.sites if fresh and state is not None else {},
        "stale_seconds": round(age) if pid is not None and not fresh and state else None,
    }


def collect(config: Config) -> dict[str, Any]:
    if not (config.state_dir / SPOOL_FILE).is_file():
        # Asking must not create the state folder (perhaps as the wrong user).
        return {
            "state_dir": str(config.state_dir),
            "daemon": {"running": False, "pid": None},
            "note": "no spool here yet: `tirreno-shipper run` has not run with this state_dir",
            "sites": {},
        }
    spool = Spool.open(config.state_dir)
    live = _daemon_status(config)
    now = time.time()
    report: dict[str, Any] = {
        "state_dir": str(config.state_dir),
        "daemon": {"running": live["running"], "pid": live["pid"]},
        "sites": {},
    }
    if live["stale_seconds"] is not None:
        report["note"] = (
            f"the daemon runs but has not updated status.json for {live['stale_seconds']} s "
            "(a full disk or an unwritable state folder?): sensor states and pauses below "
            "are unknown; see its log"
        )
    try:
        for site in config.sites:
            stats = spool.stats(site.name)
            live_site: SiteState | None = live["sites"].get(site.name)
            files = []
            for cp in spool.get_checkpoints(site.name):
                try:
                    st = os.stat(cp.path)
                    same = (st.st_dev, st.st_ino) == (cp.file.dev, cp.file.ino)
                except OSError:
                    st, same = None, False
                size = st.st_size if st is not None and same else None
                files.append(
                    {
                        "path": cp.path,
                        "identity": cp.file.key(),
                        "offset": cp.offset,
                        "size": size,
                        "lag_bytes": max(0, size - cp.offset) if size is not None else None,
                        "note": None
                        if same
                        else "rotated away or missing: read to its end, then dropped",
                    }
                )
            report["sites"][site.name] = {
                "spool_depth": stats.depth,
                "spool_bytes": stats.bytes,
                "leased": stats.leased,
                "oldest_age_seconds": round(now - stats.oldest_created, 1)
                if stats.oldest_created
                else None,
                "dead_letters": stats.dead_letters,
                "sensor_state": live_site.sensor_state
                if live_site is not None
                else "unknown (daemon not running)"
                if not live["running"]
                else "unknown",
                "paused": live_site.paused if live_site is not None else None,
                "last_error": live_site.last_error if live_site is not None else None,
                "unreadable": live_site.unreadable if live_site is not None else {},
                "files": files,
                "rate_limit": live_site.rate_limit if live_site is not None else None,
                "lanes": _lanes(spool, site.name, live_site, now),
            }
        configured = {site.name for site in config.sites}
        for name in spool.sites():
            if name in configured:
                continue
            stats = spool.stats(name)
            if stats.depth or stats.dead_letters:
                # Removed from the configuration with events still spooled: nothing
                # sends them, and only this report says they are there.
                report.setdefault("unconfigured_sites", {})[name] = {
                    "spool_depth": stats.depth,
                    "dead_letters": stats.dead_letters,
                }
    finally:
        spool.close()
    return report


def _lanes(spool: Spool, site: str, live: SiteState | None, now: float) -> dict[str, Any]:
    """Per lane: depth, oldest age, the send rate over the last minute and the time to
    drain at the site's current rate (rates are known only while the daemon runs)."""
    lanes = spool.lane_stats(site)
    rates = live.send_rates if live is not None else {}
    total = sum(rates.values())
    drains = drain_seconds([lane.depth for lane in lanes], total) if live else [None] * 3
    return {
        lane.lane: {
            "depth": lane.depth,
            "oldest_age_seconds": round(now - lane.oldest_created, 1)
            if lane.oldest_created
            else None,
            "send_rate": rates.get(lane.lane) if live is not None else None,
            "drain_seconds": drain,
        }
        for lane, drain in zip(lanes, drains, strict=True)
    }


def render(report: dict[str, Any]) -> str:
    daemon = report["daemon"]
    lines = [
        f"state_dir: {report['state_dir']}",
        "daemon: " + (f"running (pid {daemon['pid']})" if daemon["running"] else "not running"),
    ]
    if report.get("note"):
        lines.append(report["note"])
    for name, site in report["sites"].items():
        age = site["oldest_age_seconds"]
        lines.append(f"site {name}:")
        oldest = f", oldest {age} s" if age is not None else ""
        lines.append(
            f"  spool: {site['spool_depth']} events ({site['spool_bytes']} bytes), "
            f"{site['leased']} in flight{oldest}; dead letters: {site['dead_letters']}"
        )
        lines += [
            _lane_line(lane, info)
            for lane, info in site["lanes"].items()
            if info["depth"] or info["send_rate"]
        ]
        if site.get("rate_limit") is not None:
            lines.append(f"  send rate now: {site['rate_limit']:g} events/s at most")
        state = site["sensor_state"]
        lines.append(
            f"  sensor: {state}" + (f"; paused: {site['paused']}" if site["paused"] else "")
        )
        if site["last_error"]:
            lines.append(f"  last error: {site['last_error']}")
        for path, error in site["unreadable"].items():
            lines.append(f"  cannot read {path}: {error}")
        if not site["files"]:
            lines.append("  files: none checkpointed yet")
        for f in site["files"]:
            size = f["size"] if f["size"] is not None else "?"
            lag = f["lag_bytes"] if f["lag_bytes"] is not None else "?"
            lines.append(
                f"  {f['path']}  offset {f['offset']} / size {size}  lag {lag} B"
                f"  [{f['identity'][:40]}]"
            )
            if f["note"]:
                lines.append(f"    ({f['note']})")
    for name, site in report.get("unconfigured_sites", {}).items():
        lines.append(
            f"site {name} (not in the configuration): {site['spool_depth']} events spooled, "
            f"never sent unless the site is added back; dead letters: {site['dead_letters']}"
        )
    # Paths, errors and site names may hold anything: each line is shown escaped.
    return "\n".join(map(printable, lines))


def _lane_line(lane: str, info: dict[str, Any]) -> str:
    parts = [f"{info['depth']} events"]
    if info["oldest_age_seconds"] is not None:
        parts.append(f"oldest {info['oldest_age_seconds']} s")
    if info["send_rate"] is not None:
        parts.append(f"sending {info['send_rate']:g}/s")
    if info["drain_seconds"] is not None:
        parts.append(f"empty in about {_duration(info['drain_seconds'])}")
    elif info["depth"] and info["send_rate"] is not None:
        parts.append("not draining")
    return f"  lane {lane}: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
