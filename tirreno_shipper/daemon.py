"""The daemon: one isolated runner per site, a supervisor, signals and reload.

Per site: a tail thread (tail → parse → filter → resolve → map → spool, in
one transaction per chunk with the file checkpoint) and the site's sender
workers. A site whose database, key or log is broken pauses alone; the others
go on. The main thread supervises: it restarts dead stages, publishes gauges,
writes ``status.json``, pings the systemd watchdog, recovers expired leases
and handles signals:

- SIGTERM/SIGINT: stop reading (the chunk in hand is committed or left for
  the next start), give in-flight requests ``shutdown_grace`` seconds, exit 0.
  A second signal exits at once: everything read is already in the spool.
- SIGHUP: reload the configuration; an invalid one is logged and ignored;
  sites added, removed or changed are started or restarted alone. The file
  is read on a thread of its own, so a SIGTERM meanwhile is served at once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

import structlog

from tirreno_shipper import metrics
from tirreno_shipper.config import Config, SiteConfig, load_config
from tirreno_shipper.config_watch import ConfigWatch
from tirreno_shipper.errors import (
    EX_CANTCREAT,
    EX_FAILURE,
    EX_INTERRUPTED,
    EX_OK,
    EX_TEMPFAIL,
    ConfigError,
    ResolverError,
    SpoolError,
)
from tirreno_shipper.ingest import SiteIngest, SpoolFull
from tirreno_shipper.inputs import LogInput, open_input
from tirreno_shipper.logs import Throttle
from tirreno_shipper.notify import Notifier
from tirreno_shipper.overload import OverloadWatch
from tirreno_shipper.pipeline import Counts
from tirreno_shipper.records import Checkpoint, Chunk
from tirreno_shipper.sender import SiteSender
from tirreno_shipper.spool import Spool, drain_seconds
from tirreno_shipper.state import DaemonState, FileState, SiteState, lock_state_dir, write_status
from tirreno_shipper.stats import StatsLine
from tirreno_shipper.tail import FileStatus
from tirreno_shipper.tail.waker import Waker

log = structlog.get_logger(__name__)

RESOLVER_BACKOFF_MAX = 30.0


# How often the per-lane gauges are counted again (seconds).
LANES_EVERY = 10.0


class SiteRunner:
    """Everything one site runs: its tail thread, waker and sender."""

    def __init__(self, site: SiteConfig, spool: Spool, *, poll_interval: float, once: bool) -> None:
        self.site = site
        self.name = site.name
        self.spool = spool
        self.poll_interval = poll_interval
        self.once = once
        self.drained = threading.Event()  # --once: every file read to its end
        self.paused: str | None = None
        self.last_error: str | None = None
        self.files: list[FileStatus] = []
        self.unreadable: dict[str, str] = {}  # path -> why it cannot be opened
        self.restarts = 0
        self._stop = threading.Event()
        # Held while the tail writes to the spool, and to set _stop: see stop_reading.
        self._commit_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._waker: Waker | None = None
        self._ingest: SiteIngest | None = None  # made by the tail thread (see _tail_main)
        self.overload = OverloadWatch(site.name)
        self._tailers: list[LogInput] = []
        self._pending: list[Chunk | None] = []
        self.sender = self._new_sender()
        self._sender_started = False
        self._lag = metrics.FILE_LAG.labels(site=site.name)
        # Exported at 0 from the start, before the tail makes its SiteIngest (which
        # counts them): an alert on increase() needs the series to exist.
        metrics.SPOOL_FULL.labels(site=site.name)
        metrics.EVENTS_DROPPED.labels(site=site.name)
        self._unparseable = _UnparseableLines(site.name)
        self._may_drop = site.spool.on_full == "drop_oldest"

    def watch_overload(self, backlog: int) -> None:
        """Feed the overload watch the live events spooled and accepted so far."""
        if self._ingest is not None:
            self.overload.observe(
                self._ingest.spooled_total,
                self.sender.accepted_total,
                backlog,
                self.sender.rate.rate,
            )

    def _new_sender(self) -> SiteSender:
        return SiteSender(
            self.name,
            self.site.sensor,
            self.spool,
            lease_seconds=self.site.spool.lease_timeout,
            backfill_share=self.site.spool.backfill_share,
        )

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        checkpoints = self.spool.get_checkpoints(self.name)
        # As the supervisor's tick: a poll_interval under a second finds the file a
        # rename rotation created within one poll, not one second.
        scan = min(1.0, self.poll_interval)
        for src in self.site.logs:
            self._tailers.append(
                open_input(self.name, src, checkpoints, self._wake, scan_interval=scan)
            )
            self._pending.append(None)
        # Record every file found now, before the first line is processed: if we
        # are stopped before that (a slow user database at start-up) and the log
        # is rotated meanwhile, the next start must still know the old file, or
        # its lines would never be read.
        known = {(cp.file, cp.offset) for cp in checkpoints}
        for tailer in self._tailers:
            for fs in tailer.status():
                if (fs.file, fs.offset) not in known:
                    self.spool.commit_chunk(self.name, [], Checkpoint(fs.path, fs.file, fs.offset))
        dirs = sorted({d for t in self._tailers for d in t.watch_dirs()})
        self._waker = Waker(dirs, self._wake)
        try:
            self._waker.start()
        except Exception as exc:  # inotify limits: polling still works
            log.warning("watch_failed", site=self.name, error=str(exc), fallback="stat polling")
        self.sender.start()
        self._sender_started = True
        self._start_tail()
        log.info("site_started", site=self.name, logs=[s.where for s in self.site.logs])

    def _start_tail(self) -> None:
        self._thread = threading.Thread(
            target=self._tail_main, name=f"tail-{self.name}", daemon=True
        )
        self._thread.start()

    def check_stuck(self) -> None:
        """A user query that outlives every timeout (a proxy or firewall that keeps the
        connection open and never answers) is shown as the database being down: the
        tail waits inside it, and nothing else would say why the site ships nothing."""
        resolver = self._ingest.resolver if self._ingest is not None else None
        users = self.site.users
        if resolver is None or users is None or (started := resolver.query_started) is None:
            return
        waited = time.monotonic() - started
        if waited > 2 * users.timeout + STUCK_MARGIN and self.paused is None:
            self.last_error = (
                f"a user query has not answered for {waited:.0f} s (users.timeout is "
                f"{users.timeout:g} s): the database or the network to it hangs"
            )
            self._set_paused("resolver_down")

    def restart_dead_stages(self) -> None:
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            self.restarts += 1
            metrics.STAGE_RESTARTS.labels(site=self.name, stage="tail").inc()
            log.error("stage_restarted", site=self.name, stage="tail")
            self._start_tail()
        if self._sender_started and not self.sender.alive() and not self._stop.is_set():
            # A worker that died took nothing with it: its leases are released or
            # expire. A fresh sender (a stopped one cannot start again) takes over.
            self.restarts += 1
            metrics.STAGE_RESTARTS.labels(site=self.name, stage="sender").inc()
            log.error("stage_restarted", site=self.name, stage="sender")
            self.sender.stop(0.0)
            self.sender = self._new_sender()
            self.sender.start()

    def stop_reading(self) -> None:
        """From now on this runner's tail writes nothing to the spool.

        Taken under the commit lock: a chunk being committed is committed first,
        and a tail still inside its user lookups (a slow or hung database) finds
        the flag when it gets to its commit, and drops the chunk. So a runner that
        replaces this one (a reload) reads checkpoints that no longer move, and
        reads those lines itself: they are never spooled twice.
        """
        with self._commit_lock:
            self._stop.set()
        self._wake.set()

    def join_tail(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, grace: float) -> None:
        """Stop reading (at once), give the sender ``grace`` s for requests in flight."""
        self.stop_reading()
        # A tail caught in a user lookup cannot be interrupted, but it can no longer
        # write either: it is not waited for past this moment (it closes its own
        # files and connections when the lookup ends).
        self.join_tail(min(grace, TAIL_JOIN))
        if self._waker is not None:
            self._waker.stop()
        self.sender.stop(grace)
        if self._thread is None:
            self._close_tail()
        # Not "resumed": it stopped. The gauges go back to 0, quietly.
        for reason in PAUSE_REASONS:
            metrics.SITE_PAUSED.labels(site=self.name, reason=reason).set(0)
        self.paused = None
        log.info("site_stopped", site=self.name)

    def _close_tail(self) -> None:
        for tailer in self._tailers:
            tailer.close()
        if self._ingest is not None:
            self._ingest.close()

    def alive(self) -> dict[str, bool]:
        return {
            "tail": self._thread is not None and self._thread.is_alive(),
            "sender": self.sender.alive(),
        }

    # -- the tail thread --------------------------------------------------------

    def _set_paused(self, reason: str | None) -> None:
        if reason == self.paused:
            return
        for r in PAUSE_REASONS:
            metrics.SITE_PAUSED.labels(site=self.name, reason=r).set(1 if r == reason else 0)
        if reason is None:
            log.info("site_resumed", site=self.name, was=self.paused)
        else:
            log.warning("site_paused", site=self.name, reason=reason, error=self.last_error)
        self.paused = reason

    def _tail_main(self) -> None:
        backoff = 1.0
        last_snapshot = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_snapshot >= 1.0:
                # Paused passes too: the lag metric must keep growing while a site
                # waits for its database or for room in the spool.
                self._snapshot()
                last_snapshot = now
            try:
                if self._ingest is None:
                    self._ingest = SiteIngest(self.site, self.spool)
                progressed = self._step(self._ingest)
                if self.paused is not None:
                    self._set_paused(None)
                    self.last_error = None
                backoff = 1.0
                if not progressed:
                    if self.once and all(p is None for p in self._pending):
                        self._snapshot()  # --once reads `unreadable` once drained
                        self.drained.set()
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
            except ResolverError as exc:
                if self._stop.is_set():
                    break  # stopped while the lookup failed: the next run retries it
                self.last_error = str(exc)
                self._set_paused("resolver_down")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RESOLVER_BACKOFF_MAX)
            except SpoolFull:
                self._set_paused("spool_full")
                self._stop.wait(min(self.poll_interval, 1.0))
            except SpoolError as exc:
                self.last_error = str(exc)
                self._set_paused("spool_error")
                log.error("spool_write_failed", site=self.name, error=str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RESOLVER_BACKOFF_MAX)
            except Exception as exc:  # a worker loop never dies
                if self._stop.is_set():
                    break  # stopped meanwhile (its files may be closing): nothing to say
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("tail_step_failed", site=self.name)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RESOLVER_BACKOFF_MAX)
        self._snapshot()
        self._close_tail()

    def _step(self, ingest: SiteIngest) -> bool:
        """Process one chunk per log source; True if anything was read."""
        progressed = False
        for i, tailer in enumerate(self._tailers):
            if self._stop.is_set():
                break
            chunk = self._pending[i] or tailer.poll()
            if chunk is None:
                # A quiet poll is when the tailer releases identities it no longer
                # needs (a copytruncated file's empty head): drop them now, not at
                # the next line, or `status` shows a stale file meanwhile.
                if not self._retire(tailer):
                    break
                continue
            # Held until committed: if the resolver or the spool fails, the same
            # lines are processed again later; nothing is skipped.
            self._pending[i] = chunk
            events, counts = ingest.process(chunk, i)
            with self._commit_lock:
                if self._stop.is_set():
                    break  # stopped during the lookups: see stop_reading
                ingest.store(events, counts, chunk.checkpoint(), may_drop=self._may_drop)
            self._pending[i] = None
            self._unparseable.note(chunk.path, self.site.logs[i].format_label, counts)
            if events:
                self.sender.wake()
            if not self._retire(tailer):
                break
            progressed = True
        return progressed

    def _retire(self, tailer: LogInput) -> bool:
        """Delete the checkpoints ``tailer`` no longer needs; False once stopped."""
        retired = tailer.retired()
        if retired:
            with self._commit_lock:
                if self._stop.is_set():
                    return False
                self.spool.delete_checkpoints(self.name, retired)
        return True

    def _snapshot(self) -> None:
        files: list[FileStatus] = []
        lag = 0
        unreadable: dict[str, str] = {}
        for tailer in self._tailers:
            files.extend(tailer.status())
            lag += tailer.lag_bytes()
            unreadable.update(tailer.unreadable)
        self.files = files
        self.unreadable = unreadable
        self._lag.set(lag)


class _UnparseableLines:
    """Says, as a warning, that lines could not be parsed: at once the first time, then
    at most once a minute with the counts since. A wrong format would otherwise show
    only as a metric, while nothing of the log is sent."""

    EVERY = 60.0

    def __init__(self, site: str) -> None:
        self.site = site
        self._said = Throttle(self.EVERY)
        self._since = time.monotonic()
        self._lines = 0
        self._bad: Counter[str] = Counter()
        self._files: dict[str, str] = {}

    def note(self, path: str, format_label: str, counts: Counts) -> None:
        now = time.monotonic()
        if not self._bad and now - self._since >= self.EVERY:
            self._lines, self._since = 0, now
        self._lines += counts.lines
        if counts.unparseable:
            self._bad.update(counts.unparseable)
            self._files[path] = format_label
        if self._bad and self._said.due():
            log.warning(
                "lines_unparseable",
                site=self.site,
                unparseable=dict(self._bad),
                lines_read=self._lines,
                files={p: f"read as {label}" for p, label in sorted(self._files.items())},
                hint="these lines are counted (lines_unparseable_total) and never sent; if "
                "most are, the format is not the log's: `tirreno-shipper detect-format FILE` "
                "names the one that fits",
            )
            self._since = now
            self._lines = 0
            self._bad.clear()
            self._files.clear()


PAUSE_REASONS = ("resolver_down", "spool_full", "spool_error")
# How long a stopping site waits for its tail thread to end: only for tidiness,
# since a stopped tail writes nothing (see SiteRunner.stop_reading).
TAIL_JOIN = 1.0
# Past twice users.timeout and this, a user query in flight is taken for hung.
STUCK_MARGIN = 5.0


class Daemon:
    def __init__(self, config: Config, config_path: Path | None, *, once: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.once = once
        self.notifier = Notifier()
        self.runners: dict[str, SiteRunner] = {}
        self.spool: Spool | None = None
        self.metrics_server: metrics.MetricsServer | None = None
        self._tick = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        # A reload's file is parsed on this thread, never on the main one, which
        # handles signals: a slow parse must not hold up SIGTERM (see _start_reload).
        self._loader: threading.Thread | None = None
        self._loaded: Config | Exception | None = None
        self._signals = 0
        self._heartbeat = time.monotonic()
        self._last_recover = 0.0
        self._lock_fd: int | None = None
        self._stats = StatsLine(config.log.stats_interval)
        # Per-lane gauges count a site's queued rows by lane (a scan of its index):
        # every LANES_EVERY seconds, not at every tick.
        self._lanes_due = Throttle(LANES_EVERY)
        self._watch = ConfigWatch(config_path) if config_path is not None else None

    # -- signals ----------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # Everything read is in the spool already; leases expire and are
            # recovered at the next start. Exiting now loses nothing.
            message = "second signal, exiting now"
            if os.isatty(2):
                line = f"tirreno-shipper: {message}\n"
            else:  # journald and containers get the same JSON lines as every other event
                line = json.dumps({"event": "second_signal_exit", "level": "warning"}) + "\n"
            os.write(2, line.encode())
            os._exit(EX_INTERRUPTED)
        self.request_stop()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.request_reload()

    def request_stop(self) -> None:
        """Stop as SIGTERM does (from a signal handler or another thread)."""
        self._stop_requested = True
        self._tick.set()

    def request_reload(self) -> None:
        """Reload the configuration as SIGHUP does."""
        self._reload_requested = True
        self._tick.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- health and status ---------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, object]]:
        problems: dict[str, object] = {}
        if time.monotonic() - self._heartbeat > 15:
            problems["supervisor"] = "stalled"
        for name, runner in list(self.runners.items()):
            dead = [stage for stage, ok in runner.alive().items() if not ok]
            if dead:
                problems[name] = {"dead": dead}
        return not problems, ({"problems": problems} if problems else {})

    def ready(self) -> tuple[bool, dict[str, object]]:
        """/readyz: the configuration is loaded, the spool open and every site started."""
        waiting = sorted({s.name for s in self.config.sites} - set(self.runners))
        if self.spool is None or waiting:
            return False, {"spool_open": self.spool is not None, "sites_not_started": waiting}
        return True, {}

    def _status(self) -> DaemonState:
        sites = {
            name: SiteState(
                sensor_state=runner.sender.state,
                paused=runner.paused,
                last_error=runner.last_error,
                unreadable=runner.unreadable,
                stages=runner.alive(),
                files=tuple(
                    FileState(
                        path=f.path,
                        identity=f.file.key(),
                        offset=f.offset,
                        size=f.size,
                        lag_bytes=max(0, f.size - f.offset),
                    )
                    for f in runner.files
                ),
                send_rates={k: round(v, 2) for k, v in runner.sender.lanes.rates().items()},
                rate_limit=round(runner.sender.rate.rate, 2),
            )
            for name, runner in self.runners.items()
        }
        return DaemonState(pid=os.getpid(), updated=time.time(), sites=sites)

    def _write_status(self) -> None:
        try:
            write_status(self.config.state_dir, self._status())
        except OSError as exc:
            log.warning("status_write_failed", error=str(exc))

    def _publish_gauges(self) -> None:
        assert self.spool is not None
        now = time.time()
        lanes_due = self._lanes_due.due()
        for name in self.runners:
            try:
                stats = self.spool.stats(name)
            except SpoolError as exc:
                log.warning("spool_stats_failed", site=name, error=str(exc))
                continue
            metrics.SPOOL_DEPTH.labels(site=name).set(stats.depth)
            metrics.SPOOL_BYTES.labels(site=name).set(stats.bytes)
            age = now - stats.oldest_created if stats.oldest_created else 0.0
            metrics.SPOOL_OLDEST_AGE.labels(site=name).set(max(0.0, age))
            if lanes_due:
                self._publish_lanes(name, now)
            self.runners[name].watch_overload(stats.depth)

    def _publish_lanes(self, name: str, now: float) -> None:
        assert self.spool is not None
        try:
            lanes = self.spool.lane_stats(name)
        except SpoolError as exc:
            log.warning("spool_stats_failed", site=name, error=str(exc))
            return
        rates = self.runners[name].sender.lanes.rates()
        drains = drain_seconds([lane.depth for lane in lanes], sum(rates.values()))
        for lane, drain in zip(lanes, drains, strict=True):
            labels = {"site": name, "lane": lane.lane}
            metrics.LANE_DEPTH.labels(**labels).set(lane.depth)
            age = now - lane.oldest_created if lane.oldest_created else 0.0
            metrics.LANE_OLDEST_AGE.labels(**labels).set(max(0.0, age))
            metrics.LANE_SEND_RATE.labels(**labels).set(rates.get(lane.lane, 0.0))
            metrics.LANE_DRAIN_SECONDS.labels(**labels).set(-1 if drain is None else drain)

    # -- sites ----------------------------------------------------------------------

    def _start_site(self, site: SiteConfig) -> None:
        assert self.spool is not None
        try:
            runner = SiteRunner(
                site, self.spool, poll_interval=self.config.poll_interval, once=self.once
            )
        except Exception:
            # A bad sensor.ca_bundle fails here. One site's broken log path or
            # sensor never stops the others, at start-up or at a reload.
            log.exception("site_start_failed", site=site.name)
            return
        self.runners[site.name] = runner
        try:
            runner.start()
        except Exception as exc:
            runner.last_error = str(exc)
            log.exception("site_start_failed", site=site.name)

    def _stop_sites(self, names: list[str]) -> None:
        """Stop these sites at once: every tail stops writing, then they share one
        grace window for requests in flight (a reload of many sites, or a shutdown,
        takes one grace, not one each: the watchdog and /healthz wait meanwhile)."""
        runners = [r for name in names if (r := self.runners.pop(name, None)) is not None]
        for runner in runners:
            runner.stop_reading()
        grace = self.config.shutdown_grace
        threads = [
            threading.Thread(target=r.stop, args=(grace,), name=f"stop-{r.name}") for r in runners
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(grace + 10)

    def _start_reload(self) -> None:
        """Read the configuration again on a thread of its own; `_reload` applies it.

        The main thread goes on supervising meanwhile (watchdog pings, /healthz, a
        SIGTERM that ends the run at once): however long a file takes to read, a
        stop is never queued behind it. A thread still reading at shutdown is
        left behind (it writes nothing).
        """
        assert self.config_path is not None
        path = self.config_path
        self.notifier.reloading()

        def load() -> None:
            try:
                self._loaded = load_config(path)
            except Exception as exc:  # handed to the main thread, which says it
                self._loaded = exc
            finally:
                self._tick.set()

        self._loaded = None
        self._loader = threading.Thread(target=load, name="reload", daemon=True)
        self._loader.start()

    def _reload_step(self) -> None:
        """Start a requested reload, or apply the one that has been read."""
        if self._loader is not None:
            if self._loader.is_alive():
                return  # a request meanwhile is served after this one
            self._loader = None
            loaded, self._loaded = self._loaded, None
            if loaded is not None:
                self._reload(loaded)
        if self._reload_requested:
            self._reload_requested = False
            if self.config_path is not None:
                self._start_reload()

    def _reload(self, new: Config | Exception) -> None:
        if isinstance(new, ConfigError):
            log.error("reload_rejected", problems=new.problems, kept="the running configuration")
            self.notifier.ready("reload rejected; running the previous configuration")
            return
        if isinstance(new, Exception):
            log.error(
                "reload_rejected",
                problems=[f"{type(new).__name__}: {new}"],
                kept="the running configuration",
            )
            self.notifier.ready("reload rejected; running the previous configuration")
            return
        if new.state_dir != self.config.state_dir:
            log.warning("reload_state_dir_ignored", hint="a new state_dir takes effect at restart")
        old_sites = {s.name: s for s in self.config.sites}
        new_sites = {s.name: s for s in new.sites}
        removed = sorted(old_sites.keys() - new_sites.keys())
        changed = [
            name
            for name, site in new_sites.items()
            if name in old_sites and (site != old_sites[name] or name not in self.runners)
        ]
        self._stop_sites(removed + changed)
        for name in removed:
            metrics.forget_site(name)
            left = self.spool.stats(name).depth if self.spool is not None else 0
            if left:
                log.warning(
                    "site_removed",
                    site=name,
                    events_left=left,
                    hint="its spooled events stay in the spool, unsent; add the site back to "
                    "send them",
                )
            else:
                log.info("site_removed", site=name)
        for name, site in new_sites.items():
            if name not in old_sites:
                self._start_site(site)
                log.info("site_added", site=name)
            elif name in changed:
                self._start_site(site)
                log.info("site_reconfigured", site=name)
        from tirreno_shipper.logs import setup_logging

        setup_logging(new.log.level, new.log.format)
        self._stats.every = new.log.stats_interval
        # The spool stays where it was opened: keep its state_dir (status.json goes there).
        new = new.model_copy(update={"state_dir": self.config.state_dir})
        metrics_changed = new.metrics != self.config.metrics
        if metrics_changed:
            self._stop_metrics()
        self.config = new
        if metrics_changed and not self._start_metrics():
            # The sites are running: keep shipping; the error above says what is missing.
            log.warning("reloaded_without_metrics", listen=new.metrics and new.metrics.listen)
        log.info("reloaded", sites=sorted(new_sites))
        self.notifier.ready("reloaded")

    def _start_metrics(self) -> bool:
        """Listen on ``metrics.listen``; False if the address cannot be bound."""
        if self.config.metrics is None:
            return True
        m = self.config.metrics
        try:
            self.metrics_server = metrics.MetricsServer(m.host, m.port, self.health, self.ready)
            self.metrics_server.start()
            log.info("metrics_listening", listen=m.listen)
            return True
        except OSError as exc:
            log.error(
                "metrics_listen_failed",
                listen=m.listen,
                error=str(exc),
                hint="another process holds this address: free it or change metrics.listen",
            )
            self.metrics_server = None
            return False

    def _stop_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None

    # -- main loop ------------------------------------------------------------------

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self, *, report_errors: bool = True) -> int | None:
        """Take the state_dir; None when taken (or, without ``report_errors``, when
        the lock file cannot be opened: the spool then says why), else the exit code."""
        state_dir = self.config.state_dir
        try:
            lock = lock_state_dir(state_dir)
        except OSError as exc:
            if not report_errors:
                return None
            log.error("state_dir_lock_failed", state_dir=str(state_dir), error=str(exc))
            return EX_CANTCREAT
        if isinstance(lock, str):
            log.error(
                "state_dir_in_use",
                state_dir=str(state_dir),
                pid=lock,
                hint="another `tirreno-shipper run` uses this state_dir; stop it first, or give "
                "each daemon its own state_dir (two would send every line twice)",
            )
            return EX_TEMPFAIL
        self._lock_fd = lock
        return None

    def start(self) -> int | None:
        """Open the spool and start the metrics server and every site; an exit code on failure."""
        # Lock before the spool is opened, so a second daemon never even runs the
        # spool's start-up checks beside a live one. A state_dir that does not
        # exist yet is nobody's: it is created by opening the spool, then locked.
        if self.config.state_dir.is_dir() and (failed := self._lock(report_errors=False)):
            return failed
        try:
            self.spool = Spool.open(self.config.state_dir)
        except SpoolError as exc:
            log.error("spool_open_failed", state_dir=str(self.config.state_dir), error=str(exc))
            return EX_CANTCREAT
        if self._lock_fd is None and (failed := self._lock()) is not None:
            self.spool.close()
            self.spool = None
            return failed
        recovered = self.spool.recover_leases()
        if recovered:
            log.info("leases_recovered", count=recovered)
        if not self._start_metrics():
            # Refuse rather than run without /healthz: a probe would then ask
            # whatever holds the port, and nothing would say this one is blind.
            self.spool.close()
            self.spool = None
            self._release_lock()
            return EX_FAILURE
        for site in self.config.sites:
            self._start_site(site)
        self.notifier.ready(f"shipping {len(self.runners)} site(s)")
        log.info("daemon_started", sites=sorted(self.runners), once=self.once, pid=os.getpid())
        return None

    def run(self) -> int:
        """Supervise until stopped (starting first unless `start` already ran); the exit code."""
        if self.spool is None:
            failed = self.start()
            if failed is not None:
                return failed
        assert self.spool is not None
        code = EX_OK
        once_deadline = time.monotonic() + self.config.once_timeout
        last_watchdog = 0.0
        last_status = 0.0
        # systemd's WATCHDOG_USEC/2 is the longest a ping may wait: wake often
        # enough that a ping is never later than that. A poll_interval under a
        # second asks for that latency everywhere: `--once` sees the spool empty,
        # and a changed config file is noticed, within one poll, not one second.
        interval = self.notifier.watchdog_interval
        tick = min(1.0, self.config.poll_interval)
        if interval is not None:
            tick = min(tick, interval / 2)
        try:
            while not self._stop_requested:
                self._tick.wait(tick)
                self._tick.clear()
                now = time.monotonic()
                self._heartbeat = now
                # Asked at every tick, so a change made while reloading on change is
                # off is not acted on later, when a SIGHUP turns it on.
                changed = self._watch is not None and self._watch.changed()
                if changed and self.config.reload_on_change and not self.once:
                    log.info("config_changed", path=str(self.config_path), reloading=True)
                    self.request_reload()
                self._reload_step()
                for runner in self.runners.values():
                    runner.restart_dead_stages()
                    runner.check_stuck()
                if now - self._last_recover >= 10.0:
                    self._last_recover = now
                    try:
                        n = self.spool.recover_leases()
                        if n:
                            log.info("leases_recovered", count=n)
                    except SpoolError as exc:
                        log.warning("lease_recovery_failed", error=str(exc))
                self._publish_gauges()
                self._stats.tick(self.runners)
                if now - last_status >= 2.0:
                    self._write_status()
                    last_status = now
                if interval is not None and now - last_watchdog >= interval / 2:
                    self.notifier.watchdog()
                    last_watchdog = now
                if self.once:
                    done = self._once_done(once_deadline)
                    if done is not None:
                        code = done
                        break
        finally:
            self._shutdown()
        return code

    def _once_done(self, deadline: float) -> int | None:
        """None while ``--once`` is still working; else the exit code."""
        assert self.spool is not None
        now = time.monotonic()
        drained = all(r.drained.is_set() for r in self.runners.values())
        if drained:
            empty = all(
                (st := self.spool.stats(name)).depth == 0 and st.leased == 0
                for name in self.runners
            )
            unreadable = {n: r.unreadable for n, r in self.runners.items() if r.unreadable}
            if empty and unreadable:
                # Everything readable was sent, but a configured log was not read:
                # a cron job or an init container must not take that for success.
                log.error(
                    "once_incomplete",
                    unreadable=unreadable,
                    hint="the daemon's user cannot open these logs; fix their permissions "
                    "and run again (what was read is not sent twice)",
                )
                return EX_FAILURE
            if empty:
                log.info("once_complete")
                return EX_OK
        if now >= deadline:
            left = {name: self.spool.stats(name).depth for name in self.runners}
            log.error(
                "once_timeout",
                seconds=self.config.once_timeout,
                files_read=drained,
                events_left=left,
                hint="the events stay in the spool and the next run sends them; "
                "raise once_timeout to wait longer",
            )
            return EX_FAILURE
        return None

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("daemon_stopping", grace=self.config.shutdown_grace)
        self._stop_sites(list(self.runners))
        self._write_status()
        self._stop_metrics()
        if self.spool is not None:
            self.spool.close()
        self._release_lock()  # after the spool: nobody may start while we still write
        log.info("daemon_stopped")


def run_daemon(config: Config, config_path: Path | None = None, *, once: bool = False) -> int:
    daemon = Daemon(config, config_path, once=once)
    if threading.current_thread() is threading.main_thread():
        daemon.install_signals()
    return daemon.run()


__all__: list[str] = ["Daemon", "SiteRunner", "run_daemon"]
