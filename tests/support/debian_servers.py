"""nginx and Apache run from a copy of Debian's own default configuration
(``/etc/nginx``, ``/etc/apache2`` as the packages install them), moved into a temp
folder: its paths, port and document root rewritten, nothing else changed. What
the README tells an operator to edit is edited in the copy by the tests.

Never a system service: each runs in the foreground on 127.0.0.1 and [::1].
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.servers import (
    APACHE_BIN,
    NGINX_BIN,
    ServerError,
    WebServer,
    _require_binary,
)

DEBIAN_NGINX = Path("/etc/nginx")
DEBIAN_APACHE = Path("/etc/apache2")


def _rewrite(root: Path, replacements: dict[str, str]) -> None:
    """Replace text in every regular file (not symlinks) under ``root``."""
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = text
        for old, value in replacements.items():
            new = new.replace(old, value)
        if new != text:
            path.write_text(new, encoding="utf-8")


def _config_test(cmd: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, check=False)


class DebianNginx(WebServer):
    """Debian's nginx.conf, conf.d, sites-enabled/default and all, in ``workdir/etc/nginx``.

    ``etc``: that copy; ``log_dir``: what ``/var/log/nginx`` became; ``rewrite``: the
    path mapping, for text the tests install in the copy (the README's snippets).
    """

    name = "nginx"

    def __init__(self, workdir: Path, binary: str = NGINX_BIN) -> None:
        self.binary = _require_binary(binary, "nginx")
        if not (DEBIAN_NGINX / "nginx.conf").is_file():
            raise ServerError(f"{DEBIAN_NGINX}/nginx.conf missing: install Debian's nginx")
        super().__init__(workdir)
        self.etc = workdir / "etc" / "nginx"
        self.log_dir = self.logs_dir
        # sites-enabled/default is an absolute symlink into /etc/nginx: copied as a file.
        shutil.copytree(DEBIAN_NGINX, self.etc, symlinks=False)
        user = "root" if os.geteuid() == 0 else "www-data"
        self.mapping = {
            "/etc/nginx/": f"{self.etc}/",
            "/var/log/nginx/": f"{self.log_dir}/",
            "/run/nginx.pid": str(workdir / "nginx.pid"),
            "user www-data;": f"user {user};",
            "listen 80 default_server;": f"listen 127.0.0.1:{self.port} default_server;",
            "listen [::]:80 default_server;": f"listen [::1]:{self.port} default_server;",
            "/var/www/html": str(self.docroot),
            "worker_processes auto;": "worker_processes 1;",
        }
        _rewrite(self.etc, self.mapping)
        self.conf = self.etc / "nginx.conf"

    def rewrite(self, text: str) -> str:
        for old, value in self.mapping.items():
            text = text.replace(old, value)
        return text

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf), "-e", str(self.error_log), "-g", "daemon off;"]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the copy."""
        return _config_test(
            [self.binary, "-t", "-c", str(self.conf), "-e", str(self.error_log)], None
        )

    @property
    def access_log(self) -> Path:
        return self.log_dir / "access.log"


class DebianApache(WebServer):
    """Debian's apache2.conf, ports.conf, mods-enabled, conf-enabled and
    sites-enabled/000-default.conf, in ``workdir/etc/apache2``, run with the variables
    /etc/apache2/envvars sets (their folders in ``workdir``)."""

    name = "apache"

    def __init__(self, workdir: Path, binary: str = APACHE_BIN) -> None:
        self.binary = _require_binary(binary, "apache2")
        if not (DEBIAN_APACHE / "apache2.conf").is_file():
            raise ServerError(f"{DEBIAN_APACHE}/apache2.conf missing: install Debian's apache2")
        super().__init__(workdir)
        self.etc = workdir / "etc" / "apache2"
        self.log_dir = self.logs_dir
        # Its *-enabled links are relative (../mods-available/...): they resolve in the copy.
        shutil.copytree(DEBIAN_APACHE, self.etc, symlinks=True)
        for name in ("run", "lock"):
            (workdir / name).mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "APACHE_CONFDIR": str(self.etc),
            "APACHE_RUN_USER": "www-data",
            "APACHE_RUN_GROUP": "www-data",
            "APACHE_PID_FILE": str(workdir / "run" / "apache2.pid"),
            "APACHE_RUN_DIR": str(workdir / "run"),
            "APACHE_LOCK_DIR": str(workdir / "lock"),
            "APACHE_LOG_DIR": str(self.log_dir),
            "LANG": "C",
        }
        self.mapping = {
            "Listen 80\n": f"Listen 127.0.0.1:{self.port}\nListen [::1]:{self.port}\n",
            "<VirtualHost *:80>": f"<VirtualHost *:{self.port}>",
            "/var/www/html": str(self.docroot),
            # apache2.conf grants access below /var/www/ only.
            "<Directory /var/www/>": f"<Directory {self.docroot}/>",
        }
        _rewrite(self.etc, self.mapping)
        self.error_log = self.log_dir / "error.log"  # apache2.conf's ErrorLog

    def command(self) -> list[str]:
        return [self.binary, "-d", str(self.etc), "-f", str(self.etc / "apache2.conf"),
                "-DFOREGROUND"]  # fmt: skip

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """``apache2 -t`` (configtest) on the copy."""
        return _config_test(
            [self.binary, "-d", str(self.etc), "-f", str(self.etc / "apache2.conf"), "-t"],
            self.env,
        )

    @property
    def access_log(self) -> Path:
        return self.log_dir / "access.log"
