"""Ingest: lines/s from a 1,000,000-line file through tail, parse, filter,
resolve (warm cache), map and spool, as the daemon's tail thread does it, with
CPU seconds and peak memory, beside apachelogs' parse alone on the same file in
the same run.

The log is the real Apache combined log of ``tests/data`` (10,000 lines,
elastic/examples) with a session cookie appended to every line (``apache_cookie``
format: four known users and anonymous visitors), repeated to the line count.
apachelogs parses it with the matching LogFormat. apachelogs is timed on the
first ``--apachelogs-lines`` lines (default 100,000) because at ~50 µs a line
the whole file would take most of a minute; a rate is a rate.

    .venv/bin/python benchmarks/ingest.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tirreno_shipper.cli import freeze_startup_heap  # noqa: E402
from tirreno_shipper.config import parse_config  # noqa: E402
from tirreno_shipper.pipeline import SitePipeline  # noqa: E402
from tirreno_shipper.spool import Spool  # noqa: E402
from tirreno_shipper.tail import Tailer  # noqa: E402
from tirreno_shipper.users import UserResolver  # noqa: E402

SOURCE = ROOT / "tests" / "data" / "elastic_apache_logs"
SESSIONS = ["s1alice", "s2bob", "s3zoe", "s4yamada", "-", "-", "-", "-"]
APACHE_COOKIE = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{sessionid}C"'


def make_log(path: Path, lines: int) -> int:
    src = [ln for ln in SOURCE.read_bytes().split(b"\n") if ln]
    written = 0
    with path.open("wb") as out:
        while written < lines:
            for i, line in enumerate(src):
                if written >= lines:
                    break
                cookie = SESSIONS[i % len(SESSIONS)].encode()
                out.write(line + b' "' + cookie + b'"\n')
                written += 1
    return path.stat().st_size


def make_users(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username TEXT, email TEXT);
        CREATE TABLE django_session (session_key TEXT PRIMARY KEY, user_id INTEGER);
        INSERT INTO auth_user VALUES (1,'alice','alice@example.com'),(2,'bob','bob@example.org'),
            (3,'zoe','zoe@example.net'),(4,'yamada',NULL);
        INSERT INTO django_session VALUES ('s1alice',1),('s2bob',2),('s3zoe',3),('s4yamada',4);
        """
    )
    con.commit()
    con.close()


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--apachelogs-lines", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = d / "access.log"
        size = make_log(log, args.lines)
        make_users(d / "users.sqlite")
        config = parse_config(
            f"""
state_dir: {d / "state"}
sites:
  - name: bench
    sensor: {{url: "http://127.0.0.1:9/sensor/", api_key: k}}
    logs: [{{path: {log}, format: apache_cookie, start_at: beginning}}]
    users:
      key: {{cookie: sessionid}}
      database: sqlite:///{d / "users.sqlite"}
      query: "SELECT u.username AS user_name, u.email AS email_address FROM django_session s
              JOIN auth_user u ON u.id = s.user_id WHERE s.session_key = :key"
      unresolved: anonymous
"""
        )
        site = config.sites[0]
        print(f"file: {args.lines:,} lines, {size / 1e6:.0f} MB (apache_cookie, real lines)")

        # --- the product: tail -> pipeline -> spool, as SiteRunner._step does
        spool = Spool.open(config.state_dir)
        resolver = UserResolver(site.name, site.users) if site.users else None
        pipeline = SitePipeline(site, resolver)
        parser = pipeline.parser(site.logs[0])
        tailer = Tailer(site.name, [str(log)], start_at="beginning")
        # As `tirreno-shipper run` does before its long run; apachelogs runs after it too.
        freeze_startup_heap()
        rss_before = rss_peak_mb()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        lines = events = 0
        while True:
            chunk = tailer.poll()
            if chunk is None:
                break
            evs, counts = pipeline.process(chunk, parser)
            spool.commit_chunk(site.name, evs, chunk.checkpoint())
            lines += counts.lines
            events += len(evs)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        product_rate = lines / wall
        print(
            f"product   : {lines:,} lines -> {events:,} events in {wall:.1f} s "
            f"= {product_rate:,.0f} lines/s; CPU {cpu:.1f} s; peak RSS {rss_peak_mb():.0f} MB "
            f"(before {rss_before:.0f} MB)"
        )
        tailer.close()
        spool.close()
        if resolver is not None:
            resolver.close()

        # --- the baseline: apachelogs parse alone, same file, same process
        import apachelogs

        parser_ref = apachelogs.LogParser(APACHE_COOKIE)
        n = 0
        t0 = time.perf_counter()
        with log.open("rb") as fh:
            for raw in fh:
                if n >= args.apachelogs_lines:
                    break
                with contextlib.suppress(apachelogs.InvalidEntryError):
                    parser_ref.parse(raw.decode("latin-1"))
                n += 1
        ref_wall = time.perf_counter() - t0
        ref_rate = n / ref_wall
        print(
            f"apachelogs: {n:,} lines parsed in {ref_wall:.1f} s = {ref_rate:,.0f} lines/s "
            "(parse only)"
        )
        ratio = product_rate / ref_rate
        print(f"ratio     : {ratio:.1f}x apachelogs' parse rate (target >= 8x)")


if __name__ == "__main__":
    main()
