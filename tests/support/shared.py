"""A folder built once per test run and shared by the pytest-xdist workers.

Each worker has its own session and module fixtures: a module-scoped fixture that takes a
minute (a virtualenv with the package installed) would run once per worker that draws one
of its tests. Built under the run's base temp folder (the workers' common parent) behind a
file lock instead: the first worker builds it, the others wait for it and reuse it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` by the first worker to ask.

    A build that failed leaves no mark: the next worker to ask starts it again (and
    fails the same way, with its own message)."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's, not this worker's
    folder = root / f"shared-{name}"
    done = root / f"shared-{name}.done"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
