"""The command line called in the test process: `run_in_process`.

Starting ``python -m tirreno_shipper`` costs about 0.4 s of CPU (the interpreter,
the package, pydantic's validators), which most command-line tests pay for
nothing: what they check is the output, the exit code and the files written, not
the process. `run_in_process` calls `tirreno_shipper.cli.main` with the same
arguments, environment and folder as `run_cli` and returns the same
`subprocess.CompletedProcess`, so a test changes one name. Each command keeps a
test through `run_cli` (the console script, the exit code a shell or systemd
sees, a traceback's exit 1).

What ``main`` changes in the process is put back after it: the logging set-up
(structlog, the root logger's handlers, ``--log-level``/``--log-format``),
``gc.freeze``, signal handlers, the environment, the working folder and the
standard streams. A command that leaves a thread running fails the test: in
its own process that thread would have ended with it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from subprocess import CompletedProcess
from unittest import mock

import structlog

from tests.support.shipper import ROOT, child_env
from tirreno_shipper import logs
from tirreno_shipper.cli import main

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_in_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    unset: Collection[str] = (),
    cwd: Path = ROOT,
) -> CompletedProcess[str]:
    """``tirreno-shipper ARGS`` as `run_cli` runs it, in this process: stdout, stderr
    and the exit code (argparse's ``SystemExit`` too: ``--help``, a usage error).

    For the call only, ``unset`` names are taken out of this process's environment
    (a secret the operator's shell does not have) and ``env`` is added to it."""
    out, err = io.StringIO(), io.StringIO()
    environ = {k: v for k, v in child_env().items() if k not in unset} | dict(env or {})
    with (
        _restored(),
        mock.patch.dict(os.environ, environ, clear=True),
        contextlib.chdir(cwd),
        _streams(out, err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = _exit_code(exc, err)
    return CompletedProcess(["tirreno-shipper", *args], code, out.getvalue(), err.getvalue())


def _exit_code(exc: SystemExit, err: io.StringIO) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=err)  # sys.exit("message"): printed, exit 1, as the interpreter does
    return 1


@contextlib.contextmanager
def _streams(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """stdout and stderr to ``out`` and ``err``; stdin empty and not a terminal, as
    under `run_cli` in CI."""
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(), out, err
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def _restored() -> Iterator[None]:
    """Put back what ``main`` configures for the whole process; fail on a thread left."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    handlers_of = {s: signal.getsignal(s) for s in _SIGNALS}
    threads = set(threading.enumerate())
    frozen = gc.get_freeze_count()
    try:
        yield
    finally:
        logs.force(None, None)
        structlog.configure(**config)
        root.handlers = handlers
        root.setLevel(level)
        for signum, handler in handlers_of.items():
            if handler is not None:  # None: not set from Python, nothing to put back
                signal.signal(signum, handler)
        if not frozen:
            gc.unfreeze()  # `run` and `backfill` freeze what they built (freeze_startup_heap)
    left = [t for t in set(threading.enumerate()) - threads if not _ends(t)]
    assert not left, f"the command left threads running: {left}"


def _ends(thread: threading.Thread, timeout: float = 5.0) -> bool:
    thread.join(timeout)
    return not thread.is_alive()
