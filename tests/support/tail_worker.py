"""A minimal tail-into-spool loop, run as a subprocess by the crash test and killed at will.

Usage: ``python -m tests.support.tail_worker STATE_DIR LOG_PATH RUN_ID``

Each line ``seq N`` becomes one event whose request id is ``N/RUN_ID``: a line read
twice, even by two runs at the same offset, is two rows, so the test sees any
duplicate the spool's unique request id would otherwise hide.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import structlog

from tirreno_shipper.records import Event
from tirreno_shipper.spool import Spool
from tirreno_shipper.tail import Tailer

SITE = "crash"


def main(argv: list[str]) -> int:
    state_dir, log_path, run_id = Path(argv[0]), argv[1], argv[2]
    # stdout is the "ready" channel to the test; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    spool = Spool.open(state_dir)
    tailer = Tailer(
        SITE,
        [log_path],
        start_at="beginning",
        checkpoints=spool.get_checkpoints(SITE),
        # Small chunks: more commits, so more places for a kill to land.
        chunk_lines=50,
        scan_interval=0.05,
        rotated_grace=0.3,
    )
    ready = False
    while True:
        chunk = tailer.poll()
        if chunk is not None:
            events = []
            for _offset, raw in chunk.lines:
                text = raw.decode("utf-8", "replace")
                seq = text.removeprefix("seq ")
                events.append(Event(f"{seq}/{run_id}", {"seq": seq}))
            spool.commit_chunk(SITE, events, chunk.checkpoint())
        retired = tailer.retired()
        if retired:
            spool.delete_checkpoints(SITE, retired)
        if chunk is None:
            if not ready:
                print("ready", flush=True)
                ready = True
            time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
