"""Prometheus metrics and the ``/healthz`` and ``/readyz`` endpoints.

Every metric is labelled by ``site`` only (and a bounded ``reason``/``state``
where it says so): never by path fragments, user agents or anything else a
client controls, so label cardinality stays bounded and no secret can leak
into a label.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

from tirreno_shipper._version import __version__

# A `_created` series beside every counter and histogram doubles the output and
# says only when the process started (process_start_time_seconds says that once).
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
# (read from /proc; nothing on a system without it) and python_info.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_P = "tirreno_shipper_"

LINES_READ = Counter(
    _P + "lines_read", "Complete lines read from log files", ["site"], registry=REGISTRY
)
LINES_PARSED = Counter(
    _P + "lines_parsed", "Lines parsed into requests", ["site"], registry=REGISTRY
)
LINES_UNPARSEABLE = Counter(
    _P + "lines_unparseable",
    "Lines skipped, by reason (no_match, too_long, invalid_bytes, bad_time, bad_status, "
    "bad_address)",
    ["site", "reason"],
    registry=REGISTRY,
)
REQUESTS_FILTERED = Counter(
    _P + "requests_filtered",
    "Requests excluded by filters, by reason (path, user_agent, status, method)",
    ["site", "reason"],
    registry=REGISTRY,
)
REQUESTS_UNRESOLVED = Counter(
    _P + "requests_unresolved",
    "Requests whose user could not be resolved, by outcome (dropped, anonymous)",
    ["site", "outcome"],
    registry=REGISTRY,
)
FIELDS_TRUNCATED = Counter(
    _P + "fields_fixed",
    "Event fields changed to what tirreno stores: cut, NUL removed, left out, normalised",
    ["site", "field", "reason"],
    registry=REGISTRY,
)
EVENTS_SPOOLED = Counter(
    _P + "events_spooled", "Events written to the spool", ["site"], registry=REGISTRY
)
EVENTS_SENT = Counter(
    _P + "events_sent", "Events accepted by the sensor (204)", ["site"], registry=REGISTRY
)
EVENTS_REJECTED = Counter(
    _P + "events_rejected", "Sensor answers of an empty 200 (rejected)", ["site"], registry=REGISTRY
)
EVENTS_RETRIED = Counter(
    _P + "events_retried",
    "Send attempts that will be retried, by reason (429, 5xx, timeout, connect, ...)",
    ["site", "reason"],
    registry=REGISTRY,
)
EVENTS_DEAD_LETTERED = Counter(
    _P + "events_dead_lettered", "Events moved to dead letters", ["site"], registry=REGISTRY
)
EVENTS_DROPPED = Counter(
    _P + "events_dropped",
    "Events dropped from a full spool (only with spool.on_full: drop_oldest)",
    ["site"],
    registry=REGISTRY,
)
EVENTS_SHED = Counter(
    _P + "events_shed",
    "page_view events dropped from a full spool to make room (spool.on_overload: shed_page_views)",
    ["site"],
    registry=REGISTRY,
)
SPOOL_DEPTH = Gauge(_P + "spool_depth", "Events waiting in the spool", ["site"], registry=REGISTRY)
SPOOL_BYTES = Gauge(
    _P + "spool_bytes", "Bytes of events waiting in the spool", ["site"], registry=REGISTRY
)
SPOOL_OLDEST_AGE = Gauge(
    _P + "spool_oldest_age_seconds", "Age of the oldest spooled event", ["site"], registry=REGISTRY
)
SPOOL_FULL = Counter(
    _P + "spool_full",
    "Times the tail paused because the spool was full",
    ["site"],
    registry=REGISTRY,
)
SEND_LATENCY = Histogram(
    _P + "send_latency_seconds",
    "Time for one POST to the sensor",
    ["site"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RESOLVER_CACHE = Counter(
    _P + "resolver_cache",
    "User resolver cache lookups, by result (hit, miss)",
    ["site", "result"],
    registry=REGISTRY,
)
RESOLVER_QUERY_LATENCY = Histogram(
    _P + "resolver_query_seconds",
    "Time for one user query",
    ["site"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
    registry=REGISTRY,
)
RESOLVER_ERRORS = Counter(
    _P + "resolver_errors", "User queries that failed", ["site"], registry=REGISTRY
)
RESOLVER_REJECTED = Counter(
    _P + "resolver_rejected",
    "Session keys looked up for nobody because of the key itself, by reason "
    "(forged, undecodable, bad_key, key_error)",
    ["site", "reason"],
    registry=REGISTRY,
)
FILE_LAG = Gauge(
    _P + "file_lag_bytes",
    "Bytes written to the site's logs not yet read",
    ["site"],
    registry=REGISTRY,
)
FILE_ROTATIONS = Counter(
    _P + "file_rotations",
    "Rotations seen, by kind (rename, truncate, delete)",
    ["site", "kind"],
    registry=REGISTRY,
)
SYSLOG_DROPPED = Counter(
    _P + "syslog_dropped",
    "Syslog datagrams the kernel dropped because the listener's buffer was full (SO_RXQ_OVFL)",
    ["site"],
    registry=REGISTRY,
)
SENSOR_STATE = Gauge(
    _P + "sensor_state",
    "1 for the sensor's current state (ok, backing_off, rejecting), 0 for the others",
    ["site", "state"],
    registry=REGISTRY,
)
SITE_PAUSED = Gauge(
    _P + "site_paused",
    "1 while the site's tail is paused, by reason (resolver_down, spool_full)",
    ["site", "reason"],
    registry=REGISTRY,
)
LAST_SENT = Gauge(
    _P + "last_sent_timestamp_seconds",
    "Unix time of the last event the sensor accepted (204); alert on time() minus this",
    ["site"],
    registry=REGISTRY,
)
SEND_RATE_LIMIT = Gauge(
    _P + "send_rate_limit",
    "Events/s the sender allows itself now: sensor.rate_limit, lowered after 429s and "
    "sustained timeouts/5xx and grown back (0: no limit)",
    ["site"],
    registry=REGISTRY,
)
LANE_DEPTH = Gauge(
    _P + "lane_depth",
    "Events waiting in the spool, by lane (security, live, backfill)",
    ["site", "lane"],
    registry=REGISTRY,
)
LANE_OLDEST_AGE = Gauge(
    _P + "lane_oldest_age_seconds",
    "Age of the lane's oldest spooled event",
    ["site", "lane"],
    registry=REGISTRY,
)
LANE_SEND_RATE = Gauge(
    _P + "lane_send_rate",
    "Events/s of the lane the sensor accepted over the last minute",
    ["site", "lane"],
    registry=REGISTRY,
)
LANE_DRAIN_SECONDS = Gauge(
    _P + "lane_drain_seconds",
    "Estimated seconds to send the lane's backlog at the site's current rate (-1: no "
    "estimate, nothing is being accepted)",
    ["site", "lane"],
    registry=REGISTRY,
)
STAGE_RESTARTS = Counter(
    _P + "stage_restarts",
    "Worker threads restarted after dying",
    ["site", "stage"],
    registry=REGISTRY,
)

SENSOR_STATES = ("ok", "backing_off", "rejecting")

# Every metric above (all are labelled by site), found rather than listed: a metric
# added later cannot be left out of forget_site.
SITE_METRICS = tuple(v for v in list(globals().values()) if isinstance(v, MetricWrapperBase))

# Defined after SITE_METRICS: it has no site label. Constant 1; the labels say what runs.
BUILD_INFO = Gauge(
    _P + "build_info",
    "Always 1: the version of tirreno-shipper and of Python that run",
    ["version", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)


def site_totals(site: str) -> dict[str, float]:
    """Every sample of ``site`` by sample name (``..._total``), summed over the other
    labels (reasons, states); a metric the site has no sample of yet is absent."""
    totals: dict[str, float] = {}
    for metric in SITE_METRICS:
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get("site") == site:
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def forget_site(site: str) -> None:
    """Stop exporting a site removed from the configuration: its last lag, depth and
    sensor state would otherwise stay on /metrics (and in alerts) until a restart."""
    for metric in SITE_METRICS:
        metric.remove_by_labels({"site": site})


def set_sensor_state(site: str, state: str) -> None:
    for s in SENSOR_STATES:
        SENSOR_STATE.labels(site=site, state=s).set(1 if s == state else 0)


# --- the HTTP endpoint ---------------------------------------------------------


# health() -> (healthy, details); details name what is not alive.
HealthCheck = Callable[[], tuple[bool, dict[str, object]]]


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(REGISTRY)
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/health"):
            self._answer(*self.server.health())
        elif path == "/readyz":
            self._answer(*self.server.ready())
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _answer(self, ok: bool, details: dict[str, object]) -> None:
        payload = {"status": "ok" if ok else "unhealthy", **details}
        self._send(200 if ok else 503, json.dumps(payload).encode(), "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # scrapes every few seconds would drown the daemon's own log


def _always_ready() -> tuple[bool, dict[str, object]]:
    return True, {}


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` (Prometheus text format), ``/healthz`` (every stage alive) and
    ``/readyz`` (configuration loaded, spool open, sites started): 200 or 503 + JSON."""

    daemon_threads = True

    def __init__(
        self, host: str, port: int, health: HealthCheck, ready: HealthCheck = _always_ready
    ) -> None:
        self.health = health
        self.ready = ready
        super().__init__((host, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
