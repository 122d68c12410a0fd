"""Parse benchmark: apachelogs' parser against the product's parse + filter + map path.

Builds a 100,000-line combined log (tests/data/elastic_apache_logs ten times) in a
temporary file and, in one run, times

* ``apachelogs.LogParser(apachelogs.COMBINED).parse`` on every line, and
* the product's path as the daemon runs it: ``SitePipeline.process`` over the
  reader's `Chunk`s (parse, exclusion filters, eventType rules, user resolution
  with a warm cache, mapping, request ids). The log has no cookie, so the site
  uses ``unresolved: anonymous`` with a real SQLite user database: every request
  resolves to the cached anonymous user of its IP.

Prints lines/s for each and the ratio (target: at least 8), over interleaved rounds.

    PYTHONPATH=. .venv/bin/python benchmarks/parse.py [--repeat 10] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sqlite3
import tempfile
import time
from pathlib import Path

import apachelogs

from tirreno_shipper.cli import freeze_startup_heap
from tirreno_shipper.config import parse_config
from tirreno_shipper.pipeline import SitePipeline
from tirreno_shipper.reader import file_chunks
from tirreno_shipper.users import UserResolver

SOURCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "elastic_apache_logs"

CONFIG = """
state_dir: {tmp}/state
sites:
  - name: bench
    sensor: {{url: "http://127.0.0.1:1/sensor/", api_key: k}}
    logs: [{{path: {log}, format: apache_combined}}]
    users:
      key: {{cookie: sessionid}}
      database: sqlite:///{tmp}/users.sqlite
      query: SELECT username AS user_name FROM sessions WHERE session_key = :key
      unresolved: anonymous
    events:
      rules:
        - {{method: POST, path: '^/login/?$', status: 3xx, type: account_login}}
        - {{method: POST, path: '^/login/?$', type: account_login_fail}}
        - {{path: '^/logout/?$', type: account_logout}}
        - {{path: '^/search', query: true, type: page_search}}
"""


def build_log(folder: Path, repeat: int) -> Path:
    data = SOURCE.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    log = folder / "access.log"
    log.write_bytes(data * repeat)
    return log


def bench_apachelogs(log: Path) -> tuple[int, float]:
    parse = apachelogs.LogParser(apachelogs.COMBINED).parse
    lines = log.read_text(encoding="latin-1").splitlines()
    started = time.perf_counter()
    for line in lines:
        try:  # noqa: SIM105 - contextlib.suppress would add a context manager per line
            parse(line)
        except apachelogs.InvalidEntryError:
            pass
    return len(lines), time.perf_counter() - started


def make_pipeline(folder: Path, log: Path) -> tuple[SitePipeline, UserResolver]:
    db = sqlite3.connect(folder / "users.sqlite")
    db.execute("CREATE TABLE IF NOT EXISTS sessions (session_key TEXT, username TEXT)")
    db.commit()
    db.close()
    site = parse_config(CONFIG.format(tmp=folder, log=log), env={}).sites[0]
    assert site.users is not None
    resolver = UserResolver(site.name, site.users)
    return SitePipeline(site, resolver), resolver


def bench_product(folder: Path, log: Path) -> tuple[int, int, float]:
    pipeline, resolver = make_pipeline(folder, log)
    parser = pipeline.parser(pipeline.site.logs[0])
    chunks = list(
        file_chunks(str(log))
    )  # read before timing: apachelogs is timed on lines in memory
    pipeline.process(chunks[0], parser)  # warm the caches, as a running daemon has them
    lines = events = 0
    started = time.perf_counter()
    for chunk in chunks:
        out, counts = pipeline.process(chunk, parser)
        lines += counts.lines
        events += len(out)
    elapsed = time.perf_counter() - started
    resolver.close()
    return lines, events, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeat", type=int, default=10, help="copies of the 10k-line log (default 10)"
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the product path afterwards")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of both (default 3); the host is shared and noisy, so each "
        "side's best round is compared, and every round's ratio is shown",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log = build_log(folder, args.repeat)
        # As `tirreno-shipper run` does before its long run; both sides get it.
        freeze_startup_heap()
        ref_rates: list[float] = []
        rates: list[float] = []
        for i in range(args.rounds):
            # Alternate which side goes first, so neither always gets the warmer machine.
            order = ("ref", "product") if i % 2 == 0 else ("product", "ref")
            for side in order:
                if side == "ref":
                    ref_lines, ref_secs = bench_apachelogs(log)
                    ref_rates.append(ref_lines / ref_secs)
                else:
                    lines, events, secs = bench_product(folder, log)
                    rates.append(lines / secs)
            print(
                f"round {i + 1}: apachelogs {ref_rates[-1]:9,.0f} lines/s, product "
                f"{rates[-1]:9,.0f} lines/s, ratio {rates[-1] / ref_rates[-1]:4.1f}x"
            )
        ref_rate, rate = max(ref_rates), max(rates)
        ratios = sorted(r / q for r, q in zip(rates, ref_rates, strict=True))
        print(f"lines: {lines:,} ({log.stat().st_size / 1e6:.1f} MB), events: {events:,}")
        print(f"apachelogs parse      : {ref_rate:12,.0f} lines/s  (best of {args.rounds})")
        print(f"parse+filter+map path : {rate:12,.0f} lines/s  (best of {args.rounds})")
        print(
            f"ratio                 : {rate / ref_rate:12.1f}x  (best against best; median round "
            f"{ratios[len(ratios) // 2]:.1f}x; target >= 8x)"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            bench_product(folder, log)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
