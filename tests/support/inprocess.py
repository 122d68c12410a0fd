"""The daemon run in the test process, on a thread of its own: `daemon_thread`.

For a test of what the daemon does (the spool, the sensor, its log events), not of
the process: no interpreter to start, no package to import again. Signals, locks
and exit codes as a shell or systemd sees them stay with `shipper.Shipper`. The
Prometheus metrics are the test process's, shared by every daemon run in it: a
test that reads them gives its site a name of its own. Log events are read with
``structlog.testing.capture_logs`` until a reload: the daemon sets logging up again
then (as it does in its own process), and `daemon_thread` puts the test process's
set-up back when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from tirreno_shipper.config import load_config
from tirreno_shipper.daemon import Daemon


@contextlib.contextmanager
def daemon_thread(config: Path) -> Iterator[Daemon]:
    """`Daemon.run` on ``config`` in a thread, yielded once started (the spool open and
    every site running); stopped at the end as SIGTERM stops it, and its exit code
    checked to be 0."""
    logged_by = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    daemon = Daemon(load_config(config), config)
    failed = daemon.start()
    assert failed is None, f"the daemon did not start (exit {failed})"
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), name="daemon")
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        structlog.configure(**logged_by)  # a reload set logging up for the daemon
        root.handlers, root.level = handlers, level
    assert not thread.is_alive(), "the daemon did not stop within 30 s"
    assert codes == [0], codes
