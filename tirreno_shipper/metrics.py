"""Prometheus metrics and the ``/healthz`` endpoint.

Every metric is labelled by ``site`` only (and a bounded ``reason``/``state``
where it says so): never by path fragments, user agents or anything else a
client controls, so label cardinality stays bounded and no secret can leak
into a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_P = "tirreno_shipper_"

LINES_READ = Counter(_P + "lines_read", "Complete lines read from log files", ["site"], registry=REGISTRY)
LINES_PARSED = Counter(_P + "lines_parsed", "Lines parsed into requests", ["site"], registry=REGISTRY)
LINES_UNPARSEABLE = Counter(
    _P + "lines_unparseable",
    "Lines skipped, by reason (no_match, too_long, invalid_bytes, bad_field)",
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
    "Event fields cut to tirreno's limits or replaced because invalid",
    ["site", "field"],
    registry=REGISTRY,
)
EVENTS_SPOOLED = Counter(_P + "events_spooled", "Events written to the spool", ["site"], registry=REGISTRY)
EVENTS_SENT = Counter(_P + "events_sent", "Events accepted by the sensor (204)", ["site"], registry=REGISTRY)
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
SPOOL_DEPTH = Gauge(_P + "spool_depth", "Events waiting in the spool", ["site"], registry=REGISTRY)
SPOOL_BYTES = Gauge(_P + "spool_bytes", "Bytes of events waiting in the spool", ["site"], registry=REGISTRY)
SPOOL_OLDEST_AGE = Gauge(
    _P + "spool_oldest_age_seconds", "Age of the oldest spooled event", ["site"], registry=REGISTRY
)
SPOOL_FULL = Counter(
    _P + "spool_full", "Times the tail paused because the spool was full", ["site"], registry=REGISTRY
)
SEND_LATENCY = Histogram(
    _P + "send_latency_seconds",
    "Time for one POST to the sensor",
    ["site"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RESOLVER_CACHE = Counter(
    _P + "resolver_cache", "User resolver cache lookups, by result (hit, miss)", ["site", "result"], registry=REGISTRY
)
RESOLVER_QUERY_LATENCY = Histogram(
    _P + "resolver_query_seconds",
    "Time for one user query",
    ["site"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
    registry=REGISTRY,
)
RESOLVER_ERRORS = Counter(_P + "resolver_errors", "User queries that failed", ["site"], registry=REGISTRY)
FILE_LAG = Gauge(_P + "file_lag_bytes", "Bytes written to the site's logs not yet read", ["site"], registry=REGISTRY)
FILE_ROTATIONS = Counter(
    _P + "file_rotations", "Rotations seen, by kind (rename, truncate, delete)", ["site", "kind"], registry=REGISTRY
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
STAGE_RESTARTS = Counter(
    _P + "stage_restarts", "Worker threads restarted after dying", ["site", "stage"], registry=REGISTRY
)

SENSOR_STATES = ("ok", "backing_off", "rejecting")


def set_sensor_state(site: str, state: str) -> None:
    for s in SENSOR_STATES:
        SENSOR_STATE.labels(site=site, state=s).set(1 if s == state else 0)
