"""Delivery of spooled events to a tirreno sensor.

tirreno takes one event per request (there is no batch endpoint), answers 204
on success and an *empty 200* on refusal, rate-limits with 429, and closes
every connection itself; a real instance accepts 15 to 25 events/s. So the
sender keeps a few requests in flight per site (``concurrency``), never posts
faster than a client-side token bucket allows, and treats the sensor as
fragile: when it struggles, the whole site backs off and only one probe event
goes out until it answers 204 again.

An event leaves the spool only when the sensor answered 204 (ack), when our
own validation says tirreno would refuse or corrupt it, or when the sensor
answered a permanent 4xx (dead letters). Everything else is released back to
the spool: delivery is at-least-once, and the only duplicates are requests in
flight (or answered but not yet acked) at a crash.

The HTTP library is httpx's own core, httpcore: `HTTPPoster` drives its
connection pool with a pre-encoded form body instead of `httpx.Client.post`
(the client's per-call work, cookies, auth, redirects, event hooks, header
merging, does not apply here; skipping it took a one-thread loop against a
local 204 sink from about 770 to about 960 events/s). Its network backend
(`deadline.DeadlineBackend`) ends every request by a deadline shorter than the
lease, whatever the sensor does, and at most `deadline.MAX_ANSWER_BYTES` of an
answer is read.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, Protocol

import httpcore
import httpx
import structlog

from tirreno_shipper import metrics, tirreno
from tirreno_shipper._version import __version__
from tirreno_shipper.adaptive import AdaptiveRate
from tirreno_shipper.clock import SYSTEM, Clock
from tirreno_shipper.config import SensorConfig
from tirreno_shipper.deadline import DeadlineBackend, read_at_most
from tirreno_shipper.errors import ConfigError, SpoolError
from tirreno_shipper.health import OK, SensorHealth
from tirreno_shipper.logs import Throttle
from tirreno_shipper.records import LeasedEvent
from tirreno_shipper.spool import BACKFILL, LANES, LIVE, SECURITY

if TYPE_CHECKING:
    from tirreno_shipper.spool import Spool

log = structlog.get_logger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Events a worker leases at once. Small, because every leased event that is
# answered but not yet acked is a possible duplicate after a crash.
BATCH = 8
# An accepted event is acked within about this long (or at the end of its batch).
ACK_WITHIN = 0.05
# A worker with nothing to send looks at the spool again this often, or at once
# when the tail wakes it after spooling events. The poll only matters for events
# whose retry delay ran out and for a backfill from another process, so it can
# be slow: each poll is a write transaction, and four workers polling twice a
# second were most of the daemon's idle CPU.
IDLE_WAIT = 2.0
# A rejection below the threshold is retried after this long, without counting
# an attempt: rejections never dead-letter an event.
REJECT_RETRY_DELAY = 2.0
# First event-level retry waits up to this long; it doubles with each attempt.
EVENT_RETRY_BASE = 1.0

# 4xx answers about the endpoint, not the event: a wrong URL, or an auth proxy
# in front of tirreno. Dead-lettering on them would move a whole stream into
# dead letters over a typo, so they keep events like a rejection does.
_ENDPOINT_4XX = frozenset({401, 403, 404, 405, 407, 410, 421})


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(slots=True, frozen=True)
class Verdict:
    """What to do with an event after one attempt; ``reason`` is short and bounded for RETRY."""

    outcome: Outcome
    reason: str
    retry_after: float | None = None
    # The HTTP status when the sensor answered (for messages such as `check`'s); what
    # to do is decided by the fields above, so it takes no part in comparisons.
    status: int | None = field(default=None, compare=False)


def user_agent() -> str:
    return f"tirreno-shipper/{__version__} (+https://github.com/tirreno)"


# -- classification ------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # An HTTP-date is GMT; parsedate_to_datetime leaves "-0000" naive.
    stamp = when.timestamp() if when.tzinfo else when.replace(tzinfo=UTC).timestamp()
    return max(0.0, stamp - (time.time() if now is None else now))


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def _error_reason(error: BaseException) -> str:
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError) for e in chain):
        return "tls"
    if any(
        isinstance(e, httpx.TimeoutException | httpcore.TimeoutException | TimeoutError)
        for e in chain
    ):
        return "timeout"
    if any(
        isinstance(e, httpx.ConnectError | httpcore.ConnectError | ConnectionRefusedError)
        for e in chain
    ):
        return "connect"
    if any(
        isinstance(
            e, httpx.TransportError | httpcore.NetworkError | httpcore.ProtocolError | OSError
        )
        for e in chain
    ):
        return "network"
    return "error"


def classify(
    status: int | None,
    body: bytes,
    headers: Mapping[str, str] | None,
    error: BaseException | None,
    *,
    now: float | None = None,
) -> Verdict:
    """Classify one attempt: an HTTP answer (``status``, ``body``, ``headers``) or an ``error``.

    Pure apart from reading the clock for an HTTP-date ``Retry-After`` (pass ``now``).
    """
    if error is not None:
        return Verdict(Outcome.RETRY, _error_reason(error))
    if status is None:
        return Verdict(Outcome.RETRY, "no_answer")
    if status == 204:
        return Verdict(Outcome.ACCEPTED, "204", status=status)
    if status in (408, 429) or 500 <= status <= 599:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
        return Verdict(Outcome.RETRY, str(status), retry_after, status)
    if 200 <= status <= 299:
        if status == 200 and not body.strip():
            return Verdict(Outcome.REJECTED, "rejected", status=status)
        # tirreno never answers this: the URL points at something else. Keep the events.
        return Verdict(
            Outcome.REJECTED, f"not a tirreno sensor (http {status} with a body)", status=status
        )
    if 300 <= status <= 399:
        location = _header(headers, "Location")
        where = f" to {_safe_url(location)}" if location else ""
        return Verdict(
            Outcome.REJECTED, f"not a tirreno sensor URL (redirect {status}{where})", status=status
        )
    if status in _ENDPOINT_4XX:
        return Verdict(
            Outcome.REJECTED, f"not a tirreno sensor URL or key (http {status})", status=status
        )
    if 400 <= status <= 499:
        return Verdict(Outcome.PERMANENT, f"http {status}", status=status)
    return Verdict(Outcome.RETRY, "http_other", status=status)


# -- rate limit ------------------------------------------------------------------


class TokenBucket:
    """A token bucket shared by a site's workers: ``rate`` events/s, bursts of ``burst``.

    It starts full, so in any window of ``w`` seconds at most ``burst + rate * w``
    events pass. ``rate`` 0 means unlimited.
    """

    def __init__(self, rate: float, burst: int, *, clock: Clock = SYSTEM) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock.monotonic()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event, until: float = math.inf) -> bool:
        """Take one token, waiting as needed; False if ``stop`` is set first, or if
        no token comes before ``until`` (monotonic)."""
        if self.rate <= 0:
            return not stop.is_set()
        while not stop.is_set():
            with self._lock:
                now = self._clock.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.rate
            if now >= until or self._clock.wait(stop, min(wait, until - now)):
                return False
        return False

    def set_rate(self, rate: float) -> None:
        """Send at ``rate`` from now on (tokens saved up so far are kept)."""
        if rate == self.rate or self.rate <= 0:
            return
        with self._lock:
            now = self._clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self.rate = float(rate)

    def give_back(self) -> None:
        """Return a token taken and not used (as if it had never been taken)."""
        if self.rate <= 0:
            return
        with self._lock:
            self._tokens = min(float(self.burst), self._tokens + 1.0)

    def empty(self) -> None:
        """Drop the saved-up tokens: from now on, the steady rate only."""
        with self._lock:
            self._tokens = 0.0
            self._stamp = self._clock.monotonic()


# -- HTTP ----------------------------------------------------------------------

# What quote_plus leaves alone: a value made only of these is its own encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
# quote_plus as one table lookup per UTF-8 byte (space is "+").
_QUOTED_BYTE = [
    chr(b) if _UNRESERVED.fullmatch(chr(b)) else "+" if b == 0x20 else f"%{b:02X}"
    for b in range(256)
]


def _quote_plus(value: str) -> str:
    return "".join(map(_QUOTED_BYTE.__getitem__, value.encode("utf-8")))


_ENCODED_NAMES = {name: _quote_plus(name) for name in tirreno.KNOWN_FIELDS}


def encode_form(fields: Mapping[str, str]) -> bytes:
    """``urllib.parse.urlencode(fields).encode()``, byte for byte, at a fraction of its cost.

    urlencode calls quote_plus, which goes through four layers of Python per
    value; the field names are a fixed set and most values (IP addresses,
    event types, status codes) need no quoting at all. Raises
    UnicodeEncodeError for a value with lone surrogates, as urlencode does.
    """
    safe = _UNRESERVED.fullmatch
    names = _ENCODED_NAMES
    parts = []
    for name, value in fields.items():
        enc_name = names.get(name)
        if enc_name is None:
            enc_name = _quote_plus(name)
        parts.append(f"{enc_name}={value if safe(value) else _quote_plus(value)}")
    return "&".join(parts).encode("ascii")


def tls_verify(config: SensorConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for the sensor: off only when asked, else the CA bundle or the system."""
    if not config.verify_tls:
        return False
    if config.ca_bundle is not None:
        try:
            return ssl.create_default_context(cafile=str(config.ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            problem = f"sensor.ca_bundle: cannot load {config.ca_bundle}: {exc} (expected PEM)"
            raise ConfigError([problem]) from exc
    return True


def _safe_url(url: str) -> str:
    """``url`` without user info, so a password in it never reaches a log."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Poster(Protocol):
    """What the sender posts through (as httpx's ``BaseTransport``): `HTTPPoster` for a
    real sensor; tests hand in one that answers without sockets."""

    def post(self, body: bytes, request_id: str) -> Verdict:
        """POST one form-encoded event; never raises: a failure is a RETRY verdict."""

    def close(self) -> None: ...


class HTTPPoster:
    """One sensor endpoint over a keep-alive connection pool; the single HTTP boundary.

    Each request, connect to last byte, ends within ``2 * timeout`` (the budget the
    sender plans leases with): the per-operation timeouts alone would let a sensor
    that dribbles its answer hold a request, and so its lease, for ever.
    """

    def __init__(self, config: SensorConfig, connections: int) -> None:
        self.url = httpx.URL(config.url)
        self._deadline = 2 * config.timeout
        self._backend = DeadlineBackend()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=tls_verify(config)),
            max_connections=connections,
            max_keepalive_connections=connections,
            network_backend=self._backend,
            retries=0,
        )
        self._target = str(self.url).encode("ascii")
        self._extensions: dict[str, Any] = {"timeout": httpx.Timeout(config.timeout).as_dict()}
        self._headers = [
            (b"Api-Key", config.key().encode("latin-1")),
            (b"User-Agent", user_agent().encode("ascii")),
            (b"Content-Type", FORM_CONTENT_TYPE.encode("ascii")),
            (b"Accept", b"*/*"),
        ]

    def post(self, body: bytes, request_id: str) -> Verdict:
        """POST one form-encoded event; never raises: a failure is a RETRY verdict."""
        headers = [*self._headers, (b"X-Request-Id", request_id.encode("ascii"))]
        try:
            with (
                self._backend.deadline(self._deadline),
                self._pool.stream(
                    b"POST",
                    self._target,
                    headers=headers,
                    content=body,
                    extensions=self._extensions,
                ) as response,
            ):
                # tirreno answers with no body: a few KiB tell a tirreno from anything
                # else, and the rest (1 GiB, streamed) is never read.
                content = read_at_most(response.iter_stream())
                status = response.status
                answer = httpx.Headers(response.headers)
        except Exception as exc:
            # Any failure before a complete answer keeps the event: even an
            # unexpected error must not lose it. It is logged by the caller.
            return classify(None, b"", None, exc)
        return classify(status, content, answer, None)

    def close(self) -> None:
        try:
            self._pool.close()
        except Exception as exc:
            log.debug("sensor_client_close_failed", error=type(exc).__name__)


def send_one(config: SensorConfig, fields: Mapping[str, str], request_id: str) -> Verdict:
    """Post one event synchronously (for ``check --send-test-event``)."""
    poster = HTTPPoster(config, 1)
    try:
        return poster.post(encode_form(fields), request_id)
    finally:
        poster.close()


# -- the site's workers --------------------------------------------------------

# The lanes a lease tries, in order: live traffic first, or (with its share) backfill.
LIVE_FIRST = (SECURITY, LIVE, BACKFILL)
BACKFILL_FIRST = (BACKFILL, SECURITY, LIVE)
# A lane's send rate is measured over this long.
RATE_WINDOW = 60.0


class LaneRates:
    """Events accepted per lane over the last `RATE_WINDOW` seconds (for status and
    the drain-time estimates)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stamps: list[deque[float]] = [deque() for _ in LANES]
        self._since = clock.monotonic()

    def sent(self, lane: int) -> None:
        with self._lock:
            self._stamps[lane].append(self._clock.monotonic())

    def rates(self) -> dict[str, float]:
        """Events/s per lane name (over the window, or since the start if shorter)."""
        now = self._clock.monotonic()
        span = max(1.0, min(RATE_WINDOW, now - self._since))
        out = {}
        with self._lock:
            for name, stamps in zip(LANES, self._stamps, strict=True):
                while stamps and stamps[0] <= now - RATE_WINDOW:
                    stamps.popleft()
                out[name] = len(stamps) / span
        return out


@dataclass(slots=True)
class _Worker:
    """What one worker holds, so `SiteSender.stop` can settle it past the grace: the
    events leased and not yet sent, and those accepted but not yet acked."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: deque[LeasedEvent] = field(default_factory=deque)
    # When the lease of ``pending`` ends (monotonic): past it, another worker may
    # have leased them.
    lease_until: float = 0.0
    # A rate-limit token taken before leasing, for the batch's first request: the
    # lease starts after the wait for it, so a batch can always send one event.
    token: bool = False
    acks: list[int] = field(default_factory=list)
    flying: int | None = None  # the event it is about to post or posting (SiteSender._fly)
    first_ack: float = 0.0
    # SiteSender._work when the batch was leased: if it moved, live events came in.
    seen: int = 0
    thread: threading.Thread | None = None


class SiteSender:
    """Sends one site's spooled events with ``config.concurrency`` worker threads.

    Whether they may send is `SensorHealth`'s call (ok, backing off, rejecting);
    how fast, the `TokenBucket`'s. ``clock`` and ``poster`` are the seams tests
    use to run it without waiting and without sockets.
    """

    def __init__(
        self,
        site: str,
        config: SensorConfig,
        spool: Spool,
        *,
        lease_seconds: float = 60.0,
        backfill_share: float = 0.05,
        clock: Clock = SYSTEM,
        poster: Poster | None = None,
    ) -> None:
        self.site = site
        self.config = config
        self.spool = spool
        self.lease_seconds = lease_seconds
        self._clock = clock
        self.bucket = TokenBucket(config.rate_limit, config.burst, clock=clock)
        # sensor.rate_limit is the ceiling; the bucket runs at what the sensor allows.
        self.rate = AdaptiveRate(config.rate_limit, clock=clock)
        self._rate_gauge = metrics.SEND_RATE_LIMIT.labels(site=site)
        self._rate_gauge.set(config.rate_limit)
        # While live events wait, this share of the sends goes to backfill: credit
        # grows with each live event sent (by share / (1 - share), so backfill gets
        # that share of all sends), and a whole credit buys one backfilled event in
        # the next lease (guarded by _cond).
        self.backfill_share = backfill_share
        self._credit_per_live = backfill_share / (1.0 - backfill_share)
        self._backfill_credit = 0.0
        # Events the sensor accepted so far (for the overload watch).
        self.accepted_total = 0
        self.lanes = LaneRates(clock)
        # The longest one request may take: a connect and a response, each up to
        # the timeout (config requires the lease to be longer).
        self._request_budget = 2 * config.timeout
        self._url = _safe_url(config.url)
        self.health = SensorHealth(
            site, self._url, config, clock=clock, on_recovery=self.bucket.empty
        )
        # Built here, not in start(): a bad CA bundle fails at construction, and
        # loading the CA store (tens of ms) is not paid while events wait.
        self._poster: Poster = (
            poster if poster is not None else HTTPPoster(config, config.concurrency)
        )
        self._stop = threading.Event()
        # Bumped by wake() (new events spooled) under _cond. A worker notes it
        # before leasing and sleeps only if it has not moved since: a wake-up
        # that lands between an empty lease and the wait is never lost, for any
        # worker, and neither is a stop.
        self._work = 0
        self._cond = threading.Condition()
        self._workers: list[_Worker] = []
        # Accepted by the sensor (204) but not yet deleted from the spool, because
        # the ack failed (a full disk): never sent again, acked when the spool can
        # be written. Guarded by _cond.
        self._accepted: set[int] = set()
        # The event each worker is about to post or posting. A request ends before its
        # lease does (HTTPPoster's deadline), but a lease is kept in wall-clock time: a
        # clock stepped forward can end it early, and the event must not be leased and
        # posted by a second worker meanwhile. Marked before the worker's last check of
        # its lease, so a lease taken after that check sees it. Guarded by its own
        # lock (not _cond, which idle workers wait on).
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._spool_error = Throttle(30.0)
        self._sent = metrics.EVENTS_SENT.labels(site=site)
        self._last_sent = metrics.LAST_SENT.labels(site=site)
        self._rejected = metrics.EVENTS_REJECTED.labels(site=site)
        self._dead = metrics.EVENTS_DEAD_LETTERED.labels(site=site)
        self._latency = metrics.SEND_LATENCY.labels(site=site)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        if self._workers:
            raise RuntimeError(f"sender for site {self.site!r} already started")
        if self._stop.is_set():
            raise RuntimeError(f"sender for site {self.site!r} was stopped; make a new one")
        self.health.publish()
        for n in range(self.config.concurrency):
            worker = _Worker()
            worker.thread = threading.Thread(
                target=self._run, args=(worker, n), name=f"send-{self.site}-{n}", daemon=True
            )
            self._workers.append(worker)
        for worker in self._workers:
            assert worker.thread is not None
            worker.thread.start()
        log.info(
            "sender_started",
            site=self.site,
            url=self._url,
            concurrency=self.config.concurrency,
            rate_limit=self.config.rate_limit,
        )

    def stop(self, grace: float) -> None:
        """Stop leasing, let in-flight requests finish within ``grace`` s, release the rest."""
        self._stop.set()
        with self._cond:
            self._work += 1
            self._cond.notify_all()
        self.health.interrupt()
        deadline = time.monotonic() + grace
        threads = [w.thread for w in self._workers if w.thread is not None]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [t for t in threads if t.is_alive()]
        if hung:
            # The requests in flight stay leased: their leases expire and the
            # spool recovers them at the next start. Nothing is lost.
            log.warning("sender_stop_grace_expired", site=self.site, hung_workers=len(hung))
            for worker in self._workers:
                try:
                    self._flush_acks(worker)  # accepted before the hang: never send them again
                except SpoolError as exc:
                    log.error("sender_ack_failed", site=self.site, error=str(exc))
                self._release_pending(worker)
        try:
            self._ack_accepted()
        except SpoolError as exc:
            log.error(
                "sender_ack_failed",
                site=self.site,
                events=len(self._accepted),
                error=str(exc),
                hint="events the sensor accepted stay in the spool and are sent again at the "
                "next start (same request ids)",
            )
        self._poster.close()
        # Closing the pool fails requests that are between reads; one blocked in
        # recv() ends at its timeout. Either way its thread is a daemon: no wait.
        deadline = time.monotonic() + 0.5
        for thread in hung:
            thread.join(max(0.0, deadline - time.monotonic()))
        log.info("sender_stopped", site=self.site, hung_workers=sum(t.is_alive() for t in threads))

    def wake(self) -> None:
        """New events were spooled: idle workers look now instead of at their next poll."""
        with self._cond:
            self._work += 1
            self._cond.notify_all()

    @property
    def state(self) -> str:
        return self.health.state

    def alive(self) -> bool:
        return bool(self._workers) and all(
            w.thread is not None and w.thread.is_alive() for w in self._workers
        )

    def wait_empty(self, timeout: float) -> bool:
        """Wait until the site's spool holds no event (dead letters aside); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.spool.stats(self.site)
            if stats.depth == 0 and stats.leased == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stop.wait(min(0.1, remaining)):
                return False

    # -- the worker loop -----------------------------------------------------

    def _run(self, worker: _Worker, n: int) -> None:
        while not self._stop.is_set():
            probing = False
            try:
                self._ack_accepted()
                limit = self.health.admit(self._stop, BATCH)
                if limit is None:
                    break
                probing = limit == 1
                seen = self._work
                lanes = LIVE_FIRST
                if limit > 1 and (turn := self._backfill_turn(limit)):
                    lanes, limit = BACKFILL_FIRST, turn
                if not worker.token:  # still held if the last lease failed
                    if not self.bucket.acquire(self._stop):
                        break
                    worker.token = True
                leased_at = self._clock.monotonic()
                batch = self.spool.lease(self.site, limit, self.lease_seconds, lanes)
                with self._cond:
                    done = self._accepted.intersection(e.id for e in batch)
                with self._in_flight_lock:
                    flying = self._in_flight.intersection(e.id for e in batch)
                if flying:
                    # The worker posting them acks or releases them when its post ends.
                    batch = [e for e in batch if e.id not in flying]
                if done:
                    # Their lease ended while their ack could not be written: they
                    # were delivered; acking is all that is left to do.
                    with worker.lock:
                        worker.acks.extend(done)
                    batch = [e for e in batch if e.id not in done]
                if not batch:
                    self._flush_acks(worker)
                    self._give_back(worker)
                    if probing:
                        self.health.end_probe()
                        probing = False
                    with self._cond:
                        if self._work == seen and not self._stop.is_set():
                            self._clock.wait_on(self._cond, IDLE_WAIT * random.uniform(0.8, 1.2))
                    continue
                with worker.lock:
                    worker.pending.extend(batch)
                    worker.lease_until = leased_at + self.lease_seconds
                    worker.seen = seen
                self._send_batch(worker, probing)
            except SpoolError as exc:
                # The spool cannot be written (a full disk): one line every 30 s,
                # not a traceback a second from each worker.
                if self._spool_error.due():
                    log.error(
                        "sender_spool_error",
                        site=self.site,
                        error=str(exc),
                        hint="sending waits until the spool can be written again; events "
                        "the sensor accepted meanwhile are not sent again",
                    )
                self._clock.wait(self._stop, 1.0)
            except Exception:
                log.exception("sender_worker_error", site=self.site, worker=n)
                self._clock.wait(self._stop, 1.0)
            finally:
                if probing:
                    self.health.end_probe()
        self._release_pending(worker)

    def _send_batch(self, worker: _Worker, probing: bool) -> None:  # noqa: C901 - per event: lease, token and state checks kept in one loop
        try:
            while not self._stop.is_set():
                if not probing and self.health.state != OK:
                    break  # the site is backing off: the rest goes back unsent
                with worker.lock:
                    if not worker.pending:
                        break
                    event = worker.pending[0]
                self._fly(worker, event.id)
                if event.lane == BACKFILL and self._work != worker.seen:
                    # Live events came in since the lease: they go first; the rest of
                    # this backfill goes back (a batch can hold a worker for seconds).
                    break
                invalid = tirreno.validate_fields(event.fields, event.request_id)
                body = b""
                if invalid is None:
                    try:
                        body = encode_form(event.fields)
                    except UnicodeEncodeError:
                        invalid = "a field is not valid Unicode (cannot be encoded as UTF-8)"
                if invalid is None:
                    if worker.token:
                        worker.token = False
                    else:
                        if worker.acks and self.bucket.rate > 0:
                            # Accepted events are acked before waiting for a token:
                            # the wait may outlast their lease, and an unacked event
                            # whose lease ended is another worker's to send again.
                            self._flush_acks(worker)
                        # Not past the point where a request could outlast the lease:
                        # workers share the bucket and a waiting one may lose the race
                        # for tokens to the others for as long as the lease lasts.
                        if not self.bucket.acquire(
                            self._stop, worker.lease_until - self._request_budget
                        ):
                            break
                if not probing and self.health.state != OK:
                    # The wait for a token can be long: a 429 or an outage seen by
                    # another worker meanwhile means this one must not post now.
                    break
                if self._clock.monotonic() + self._request_budget >= worker.lease_until:
                    # A slow sensor or a low rate limit: the next request could
                    # outlast the batch's lease, and another worker send the same
                    # events. The rest goes back while the lease still holds.
                    if invalid is None:
                        self.bucket.give_back()
                    break
                with worker.lock:
                    if not worker.pending or worker.pending[0] is not event:
                        break  # stop() took them back after its grace
                    worker.pending.popleft()
                if invalid is not None:
                    self._dead_letter(event, invalid, attempted=False)  # never sent
                    continue
                started = self._clock.monotonic()
                verdict = self._poster.post(body, event.request_id)
                self._latency.observe(self._clock.monotonic() - started)
                if verdict.outcome is Outcome.ACCEPTED:
                    with worker.lock:
                        if not worker.acks:
                            worker.first_ack = started
                        worker.acks.append(event.id)
                    self._sent.inc()
                    self.accepted_total += 1
                    self._last_sent.set_to_current_time()
                    self.health.on_success()
                    self._set_rate(self.rate.on_success())
                    self.lanes.sent(event.lane)
                    if event.lane != BACKFILL:
                        with self._cond:
                            self._backfill_credit = min(
                                BATCH, self._backfill_credit + self._credit_per_live
                            )
                    # Against a fast sensor one ack per batch saves write
                    # transactions; against a slow one, an unacked 204 is a
                    # duplicate after a crash, so it is not held for long. (Held
                    # acks live on the worker: a stop whose grace ends while the
                    # next request hangs still writes them.)
                    if self._clock.monotonic() - worker.first_ack >= ACK_WITHIN:
                        self._flush_acks(worker)
                else:
                    self._flush_acks(worker)
                    self._on_failure(event, verdict, started, probing)
        finally:
            self._fly(worker, None)
            self._give_back(worker)
            try:
                self._flush_acks(worker)
            finally:
                self._release_pending(worker)

    def _fly(self, worker: _Worker, event: int | None) -> None:
        """``event`` is the one ``worker`` posts next (None: it posts none any more)."""
        with self._in_flight_lock:
            if worker.flying is not None:
                self._in_flight.discard(worker.flying)
            if event is not None:
                self._in_flight.add(event)
            worker.flying = event

    def _backfill_turn(self, limit: int) -> int:
        """How many events this lease takes from backfill first (its share while live
        events wait); 0 for a lease of live events first."""
        with self._cond:
            turn = min(limit, int(self._backfill_credit))
            self._backfill_credit -= turn
            return turn

    def _set_rate(self, rate: float) -> None:
        if rate > 0 and rate != self.bucket.rate:
            self.bucket.set_rate(rate)
            self._rate_gauge.set(rate)

    def _give_back(self, worker: _Worker) -> None:
        if worker.token:
            worker.token = False
            self.bucket.give_back()

    def _flush_acks(self, worker: _Worker) -> None:
        with worker.lock:
            ids, worker.acks = worker.acks, []
        if not ids:
            return
        self._ack(ids)

    def _ack_accepted(self) -> None:
        """Ack the events accepted while the spool could not be written, if it can now."""
        with self._cond:
            ids = list(self._accepted)
        if ids:
            self._ack(ids)

    def _ack(self, ids: list[int]) -> None:
        """Delete delivered events; while that fails they are kept in _accepted."""
        try:
            self.spool.ack(ids)
        except SpoolError:
            with self._cond:
                self._accepted.update(ids)
            raise
        if self._accepted:
            with self._cond:
                self._accepted.difference_update(ids)

    def _release_pending(self, worker: _Worker) -> None:
        with worker.lock:
            rest = [e.id for e in worker.pending]
            worker.pending.clear()
        if rest:
            try:
                self.spool.release(rest, 0.0, count_attempt=False)
            except SpoolError as exc:
                # Still leased: the lease expires and the spool recovers them.
                log.warning(
                    "sender_release_failed", site=self.site, count=len(rest), error=str(exc)
                )
            except Exception:
                log.exception("sender_release_failed", site=self.site, count=len(rest))

    def _dead_letter(self, event: LeasedEvent, reason: str, *, attempted: bool = True) -> None:
        self.spool.dead_letter([event.id], reason, attempted=attempted)
        self._dead.inc()
        log.warning(
            "event_dead_lettered", site=self.site, request_id=event.request_id, reason=reason
        )

    # -- outcomes --------------------------------------------------------------

    def _on_failure(
        self, event: LeasedEvent, verdict: Verdict, started: float, probing: bool
    ) -> None:
        if verdict.outcome is Outcome.PERMANENT:
            self._dead_letter(event, f"{verdict.reason} from the sensor")
            return
        if verdict.outcome is Outcome.REJECTED:
            self._rejected.inc()
            rejecting = self.health.on_reject(verdict.reason, probing)
            delay = 0.0 if rejecting else REJECT_RETRY_DELAY
            self.spool.release([event.id], delay, count_attempt=False)
            return
        if self._stop.is_set():
            # Most likely our own shutdown cut the request: not the event's fault.
            self.spool.release([event.id], 0.0, count_attempt=False)
            return
        metrics.EVENTS_RETRIED.labels(site=self.site, reason=verdict.reason).inc()
        if verdict.status == 429:
            self._set_rate(self.rate.on_throttle())
        elif verdict.reason == "timeout" or (verdict.status or 0) >= 500:
            self._set_rate(self.rate.on_error())
        attempts = event.attempts + 1
        if self.config.max_attempts and attempts >= self.config.max_attempts:
            self._dead_letter(event, f"gave up after {attempts} attempts (last: {verdict.reason})")
        else:
            self.spool.release([event.id], self._event_delay(event, verdict), count_attempt=True)
        self.health.on_retry(verdict.reason, verdict.retry_after, started)

    def _event_delay(self, event: LeasedEvent, verdict: Verdict) -> float:
        cap = self.config.retry_max_delay
        if verdict.retry_after is not None:
            return min(cap, verdict.retry_after)
        # Full jitter: spreads retries of many events that failed together.
        return random.uniform(0.0, min(cap, EVENT_RETRY_BASE * 2.0 ** min(event.attempts, 30)))
