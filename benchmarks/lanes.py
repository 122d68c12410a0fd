"""Lanes and the adaptive rate, in real time against the sink (the test suite's fake sensor).

Three scenarios (issue 13), each with real spools in a temporary directory, the
product's `SiteSender` and `tirreno_shipper.sink.Sink` over HTTP on 127.0.0.1:

backfill  100k backfilled events queued, live page views and logins at 5/s,
          ``rate_limit`` 9/s: every live event accepted within 2 s (p99), the
          backfill draining in the gaps.
overload  events arrive at 3x what the sensor accepts (27/s against a sensor
          bucket of 10/s, 200 per 20 s), a tenth of them ``account_*``: every
          ``account_*`` event delivered within 5 s (p99).
shared    three shippers (default config: ceiling 9/s, burst 10, 4 workers) on
          one key against the sink's per-key bucket of 10/s (200 per 20 s), for
          at least 3 minutes: together >= 90 % of the bucket's rate accepted,
          < 5 % of requests answered 429, no event lost or duplicated (by
          request id).

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/lanes.py [backfill|overload|shared|all]
        [--seconds N] [--check]

``shared`` also runs against a real tirreno (see benchmarks/real_tirreno.sh)::

    PYTHONPATH=. .venv/bin/python benchmarks/lanes.py shared --sensor-url URL --api-key K \
        --tirreno-dsn postgresql://ROLE:PASSWORD@127.0.0.1/DB

Then what tirreno stored is counted in its database (``event.traceid`` is the
X-Request-Id, refusals in ``event_incorrect``), and the answers from the shippers'
own counters (accepted 204s, retries by reason, rejected empty 200s).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pydantic import SecretStr

from tirreno_shipper import metrics
from tirreno_shipper.config import SensorConfig
from tirreno_shipper.records import Event
from tirreno_shipper.sender import SiteSender
from tirreno_shipper.sink import Sink
from tirreno_shipper.spool import Spool

KEY = "bench-key"


def event(kind: str, n: int, event_type: str = "page_view") -> Event:
    return Event(
        str(uuid.uuid4()),
        {
            "ipAddress": "192.0.2.10",
            "url": f"/{kind}/{n}",
            "eventType": event_type,
            "eventTime": "2026-12-01 10:00:00.000",
            "userName": f"user{n % 97}",
        },
    )


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


@contextmanager
def shipper(
    root: Path, name: str, url: str, *, rate: float = 9.0, key: str = KEY
) -> Iterator[tuple[Spool, SiteSender]]:
    spool = Spool.open(root / name)
    config = SensorConfig(url=url, api_key=SecretStr(key), rate_limit=rate)
    sender = SiteSender(name, config, spool)
    try:
        yield spool, sender
    finally:
        sender.stop(5)
        spool.close()


def arrivals(
    spool: Spool,
    sender: SiteSender,
    per_second: float,
    seconds: float,
    make: Callable[[int], Event],
    sent: dict[str, float],
) -> threading.Thread:
    """Spool ``make(n)`` at ``per_second`` for ``seconds`` (as the tail would), noting when."""

    def run() -> None:
        start = time.time()
        n = 0
        while (now := time.time()) < start + seconds:
            due = int((now - start) * per_second) + 1
            batch = [make(i) for i in range(n, due)]
            if batch:
                for e in batch:
                    sent[e.request_id] = time.time()
                spool.commit_chunk(sender.site, batch, None)
                sender.wake()
                n = due
            time.sleep(max(0.0, start + n / per_second - time.time()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def latencies(sink: Sink, sent: dict[str, float]) -> list[float]:
    return [r.time - sent[r.request_id] for r in sink.accepted if r.request_id in sent]


def backfill(seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, Sink(KEY, bucket_capacity=0) as sink:
        with shipper(Path(tmp), "bf", sink.url) as (spool, sender):
            for start in range(0, 100_000, 5_000):
                chunk = [event("old", i) for i in range(start, start + 5_000)]
                spool.commit_chunk("bf", chunk, None, backfill=True)
            sent: dict[str, float] = {}
            sender.start()

            def live(n: int) -> Event:
                return event("live", n, "account_login" if n % 5 == 0 else "page_view")

            arrivals(spool, sender, 5.0, seconds, live, sent).join()
            time.sleep(3)
            lat = latencies(sink, sent)
            total = len(sink.accepted)
        return {
            "scenario": "backfill",
            "seconds": seconds,
            "live_sent": len(sent),
            "live_accepted": len(lat),
            "live_p99_s": round(p99(lat), 3),
            "live_max_s": round(max(lat), 3),
            "backfill_accepted": total - len(lat),
            "ok": len(lat) == len(sent) and p99(lat) <= 2.0 and total - len(lat) > 0,
        }


def overload(seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, Sink(KEY) as sink:  # 200 per 20 s
        with shipper(Path(tmp), "ov", sink.url) as (spool, sender):
            sent: dict[str, float] = {}
            sender.start()

            def mixed(n: int) -> Event:
                return event("o", n, "account_login_fail" if n % 10 == 0 else "page_view")

            arrivals(spool, sender, 27.0, seconds, mixed, sent).join()
            time.sleep(5)
            security = {r.request_id for r in sink.accepted if r.fields["eventType"] != "page_view"}
            lat = [r.time - sent[r.request_id] for r in sink.accepted if r.request_id in security]
            wanted = sum(1 for n in range(len(sent)) if n % 10 == 0)
            accepted = len(sink.accepted)
            backlog = spool.stats("ov").depth
        return {
            "scenario": "overload",
            "seconds": seconds,
            "arrived_per_s": round(len(sent) / seconds, 1),
            "accepted_per_s": round(accepted / (seconds + 5), 2),
            "backlog_at_end": backlog,
            "account_sent": wanted,
            "account_accepted": len(lat),
            "account_p99_s": round(p99(lat), 3),
            "account_max_s": round(max(lat), 3) if lat else None,
            "429s": sink.count("429"),
            "ok": len(lat) == wanted and p99(lat) <= 5.0,
        }


def run_shared(
    url: str, key: str, seconds: float
) -> tuple[set[str], set[str], float, float, list[list[float]], list[str]]:
    """Three shippers on one key for ``seconds``: (queued ids, ids left in the spools,
    start time, elapsed, their rates every 10 s, their site names)."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        queued: set[str] = set()
        senders = []
        spools = []
        for n in range(3):
            spool, sender = stack.enter_context(shipper(Path(tmp), f"host{n}", url, key=key))
            events = [event(f"h{n}", i) for i in range(int(seconds * 10))]
            spool.commit_chunk(sender.site, events, None)
            queued.update(e.request_id for e in events)
            senders.append(sender)
            spools.append(spool)
        started = time.time()
        for sender in senders:
            sender.start()
        samples = []
        while time.time() < started + seconds:
            time.sleep(10)
            samples.append([round(s.rate.rate, 2) for s in senders])
        elapsed = time.time() - started
        for sender in senders:
            sender.stop(5)
        left: set[str] = set()
        for spool in spools:
            # Every queued row, leased or waiting out a Retry-After alike.
            with sqlite3.connect(spool.path) as conn:
                left.update(row[0] for row in conn.execute("SELECT request_id FROM events"))
        return queued, left, started, elapsed, samples, [s.site for s in senders]


def shared(seconds: float) -> dict[str, object]:
    with Sink(KEY) as sink:
        queued, left, started, elapsed, samples, _ = run_shared(sink.url, KEY, seconds)
        answers = sink.answer_log()
        ids = Counter(r.request_id for r in sink.accepted)
        accepted_in_time = sum(1 for r in sink.accepted if r.time <= started + elapsed)
    throttled = sum(1 for a in answers if a.answer == "429")
    lost = queued - set(ids) - left
    return verdict(elapsed, accepted_in_time, len(answers), throttled, lost, ids, samples)


def verdict(
    elapsed: float,
    accepted: int,
    requests: int,
    throttled: int,
    lost: set[str],
    ids: Counter[str],
    samples: list[list[float]],
    **extra: object,
) -> dict[str, object]:
    share = accepted / (elapsed * 10.0)  # the bucket: 200 per 20 s
    dup = sum(n - 1 for n in ids.values())
    return {
        "scenario": "shared",
        "seconds": round(elapsed),
        "accepted": accepted,
        "share_of_bucket": round(share, 3),
        "requests": requests,
        "429s": throttled,
        "429_share": round(throttled / max(1, requests), 3),
        "lost": len(lost),
        "duplicated": dup,
        **extra,
        "rates_every_10s": samples,
        "ok": share >= 0.9 and throttled / max(1, requests) < 0.05 and not lost and not dup,
    }


def counted(name: str, sites: list[str], **labels: str) -> int:
    """Sum of a shipper counter over the benchmark's sites (the answers they saw)."""
    return int(
        sum(metrics.REGISTRY.get_sample_value(name, {"site": s, **labels}) or 0 for s in sites)
    )


def shared_real(seconds: float, url: str, key: str, dsn: str) -> dict[str, object]:
    """``shared`` against a real tirreno: stored rows counted in its PostgreSQL by traceid."""
    import psycopg  # dev dependency; only this mode needs it

    queued, left, _, elapsed, samples, sites = run_shared(url, key, seconds)
    p = "tirreno_shipper_"  # metrics._P
    ok_204 = counted(p + "events_sent_total", sites)
    rejected = counted(p + "events_rejected_total", sites)
    retried = {
        reason: counted(p + "events_retried_total", sites, reason=reason)
        for reason in ("429", "500", "502", "503", "504", "timeout", "connect", "no_answer")
    }
    requests = ok_204 + rejected + sum(retried.values())
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT traceid, count(*) FROM event WHERE traceid = ANY(%s) GROUP BY traceid",
            (list(queued),),
        ).fetchall()
        incorrect = conn.execute(
            "SELECT count(*) FROM event_incorrect WHERE traceid = ANY(%s)", (list(queued),)
        ).fetchone()
    ids = Counter({str(t): int(n) for t, n in rows})
    # Sent with 204 (gone from the spool) but not stored.
    lost = queued - set(ids) - left
    return verdict(
        elapsed,
        ok_204,
        requests,
        retried["429"],
        lost,
        ids,
        samples,
        stored=len(ids),
        event_incorrect=incorrect[0] if incorrect else 0,
        left_in_spools=len(left),
        retried_by_reason={k: v for k, v in retried.items() if v},
        rejected=rejected,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenario", nargs="?", default="all", choices=["backfill", "overload", "shared", "all"]
    )
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--sensor-url", help="shared only: a real tirreno, not the sink")
    parser.add_argument("--api-key", help="with --sensor-url: its key (dshb_api.key)")
    parser.add_argument("--tirreno-dsn", help="with --sensor-url: its PostgreSQL, to count rows")
    args = parser.parse_args()
    if args.sensor_url:
        if args.scenario != "shared" or not (args.api_key and args.tirreno_dsn):
            parser.error("--sensor-url runs 'shared' only and needs --api-key and --tirreno-dsn")
        result = shared_real(args.seconds or 200.0, args.sensor_url, args.api_key, args.tirreno_dsn)
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] or not args.check else 1
    runs = {"backfill": (backfill, 120.0), "overload": (overload, 120.0), "shared": (shared, 200.0)}
    chosen = list(runs) if args.scenario == "all" else [args.scenario]
    ok = True
    for name in chosen:
        run, default = runs[name]
        result = run(args.seconds or default)
        print(json.dumps(result), flush=True)
        ok &= bool(result["ok"])
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
