"""A PostgreSQL or MariaDB server of a test's own: a fresh data folder, a free port, 127.0.0.1.

For the tests that restart the database under the daemon. The machine's shared servers
(``tests/conftest.py``) serve every other test, some of them at the same moment in other
pytest-xdist workers: restarting those would cut their connections too. A server of its own
costs a test about 3 s (``initdb`` or ``mariadb-install-db``, then the start).

Both fail loudly (`ServerError`) when a binary is missing or the server does not come up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.servers import ServerError, free_port, terminate

POSTGRES_BIN = Path("/usr/lib/postgresql")
MARIADB_BIN = os.environ.get("TEST_MARIADBD_BIN", "/usr/sbin/mariadbd")


def _run(cmd: list[str], what: str, timeout: float = 60) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({' '.join(cmd)}): {result.stdout}{result.stderr}")


class OwnDatabaseServer:
    """Lifecycle shared by both: ``start``, ``restart`` (the outage under test), ``stop``."""

    kind = ""

    def __init__(self) -> None:
        # Not pytest's tmp_path: that is private to root, and PostgreSQL refuses to run as root.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.kind}-"))
        self.port = free_port(("127.0.0.1",))

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> Self:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class OwnPostgres(OwnDatabaseServer):
    """Debian's newest PostgreSQL, ``initdb`` with trust authentication, run by ``pg_ctl``
    (as the ``postgres`` user when we are root, as Debian's cluster is)."""

    kind = "postgresql"

    def __init__(self) -> None:
        versions = sorted(POSTGRES_BIN.glob("*/bin/pg_ctl"))
        if not versions:
            raise ServerError(f"no {POSTGRES_BIN}/*/bin/pg_ctl: install Debian's postgresql")
        self.bin = versions[-1].parent
        super().__init__()
        self.data = self.workdir / "data"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.workdir, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.workdir / "server.log")
        cmd = [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, *args]
        _run([*cmd, "-o", options], f"pg_ctl {args[0]}")

    def start(self) -> Self:
        if not self.data.exists():
            initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust"]
            _run([*self._as, *initdb, "-U", "postgres", "-N"], "initdb")
        self._pg_ctl("start", "-w")
        return self

    def restart(self) -> None:
        """``pg_ctl restart`` in fast mode (active sessions are cut), as a package upgrade does."""
        self._pg_ctl("restart", "-w", "-m", "fast")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ServerError):
                self._pg_ctl("stop", "-w", "-m", "immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


class OwnMariaDB(OwnDatabaseServer):
    """``mariadb-install-db`` (root without a password), ``mariadbd`` in the foreground,
    with a database ``test``; none of /etc/mysql's configuration is read."""

    kind = "mariadb"

    def __init__(self) -> None:
        if not os.access(MARIADB_BIN, os.X_OK):
            raise ServerError(f"{MARIADB_BIN} not found: install Debian's mariadb-server")
        super().__init__()
        self.data = self.workdir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = ["--user=root"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/test?charset=utf8mb4"

    def _admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["mariadb-admin", "-h", "127.0.0.1", "-P", str(self.port), "-uroot", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> Self:
        if not self.data.exists():
            _run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", *self._user,
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                "mariadb-install-db",
            )  # fmt: skip
            fresh = True
        else:
            fresh = False
        w = self.workdir
        cmd = [MARIADB_BIN, "--no-defaults", f"--datadir={self.data}", *self._user,
               f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={w / 'sock'}",
               f"--pid-file={w / 'pid'}", f"--log-error={w / 'error.log'}",
               "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while self._admin("ping").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = w / "error.log"
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ServerError(f"mariadbd did not come up on port {self.port}: {detail}")
            time.sleep(0.1)
        if fresh:
            _run(
                ["mariadb", "-h", "127.0.0.1", "-P", str(self.port), "-uroot", "-e",
                 "CREATE DATABASE test"],
                "CREATE DATABASE test",
            )  # fmt: skip
        return self

    def restart(self) -> None:
        """``mariadb-admin shutdown``, then ``mariadbd`` again on the same data and port."""
        result = self._admin("shutdown")
        if result.returncode != 0:
            raise ServerError(f"mariadb-admin shutdown failed: {result.stderr}")
        if self.proc is not None:
            self.proc.wait(30)
        self.start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


OWN_SERVERS: dict[str, type[OwnPostgres] | type[OwnMariaDB]] = {
    "postgresql": OwnPostgres,
    "mariadb": OwnMariaDB,
}

__all__ = ["OWN_SERVERS", "OwnDatabaseServer", "OwnMariaDB", "OwnPostgres"]
