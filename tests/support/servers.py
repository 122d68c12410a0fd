"""Real nginx and Apache on 127.0.0.1 and [::1], configured from scratch in a temp folder.

Each server gets its own config, document root, logs, pid file and error log under
one working folder, listens on a free port on both loopback addresses, and writes
the access-log formats the README documents. The same small site is served by
both, so one traffic driver can exercise either:

========================  =========================================================
``/``, ``/about/``,        static pages (200)
``/account/``,
``/products/N.html``
``/café/``                 a folder with a UTF-8 name (raw or percent-encoded URL)
``/login/``                200 (the form, or a failed login), but 302 to
                           ``/account/`` when the request has ``X-Login: ok``
``/logout/``               302 to ``/``
``/search``                200 (with or without a query string)
``/static/...``,           static assets
``/favicon.ico``, ...
``/healthz``               200
anything else              404
========================  =========================================================

Both launchers fail loudly (`ServerError`) when the binary is missing or the
server does not come up; tests must never skip silently because of that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

NGINX_BIN = os.environ.get("TEST_NGINX_BIN", "/usr/sbin/nginx")
APACHE_BIN = os.environ.get("TEST_APACHE_BIN", "/usr/sbin/apache2")
APACHE_MODULES = Path(os.environ.get("TEST_APACHE_MODULES", "/usr/lib/apache2/modules"))
HOSTS = ("127.0.0.1", "::1")

# The README's formats, character for character (log_format bodies without the name).
NGINX_COOKIE_FORMAT = (
    "'$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent '\n"
    '                   \'"$http_referer" "$http_user_agent" "$cookie_sessionid"\''
)
NGINX_JSON_FORMAT = (
    'escape=json \'{"time_iso8601":"$time_iso8601","remote_addr":"$remote_addr",\'\n'
    '  \'"remote_user":"$remote_user","request":"$request","status":"$status",\'\n'
    '  \'"body_bytes_sent":"$body_bytes_sent","http_referer":"$http_referer",\'\n'
    '  \'"http_user_agent":"$http_user_agent","http_accept_language":"$http_accept_language",\'\n'
    '  \'"http_x_forwarded_for":"$http_x_forwarded_for","cookie_sessionid":"$cookie_sessionid"}\''
)
APACHE_COOKIE_FORMAT = (
    r"%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-Agent}i\" \"%{sessionid}C\""
)
APACHE_COOKIE_HEADER_FORMAT = (
    r"%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-Agent}i\" \"%{Cookie}i\""
)

PAGES: dict[str, str] = {
    "index.html": "<h1>home</h1>\n",
    "about/index.html": "<h1>about</h1>\n",
    "account/index.html": "<h1>your account</h1>\n",
    "café/index.html": "<h1>café</h1>\n",
    "search": "results\n",
    "login/index.html": "<form method=post></form>\n",
    "static/app.css": "body{}\n",
    "static/app.js": "1;\n",
    "img/logo.png": "\x89PNG\n",
    "favicon.ico": "ico\n",
    "robots.txt": "User-agent: *\n",
    "healthz": "ok\n",
    **{f"products/{n}.html": f"<h1>product {n}</h1>\n" for n in range(1, 21)},
}


class ServerError(RuntimeError):
    """A web server could not be found, configured or started."""


def free_port(hosts: tuple[str, ...] = HOSTS) -> int:
    """A TCP port that is free on every address in ``hosts`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        ok = True
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise ServerError(f"no TCP port free on all of {hosts}")


def _require_binary(path: str, package: str) -> str:
    found = shutil.which(path) or (path if os.access(path, os.X_OK) else None)
    if found is None:
        raise ServerError(
            f"{path} not found: install the Debian package {package!r} "
            f"(scripts/test.sh does), or point the tests at it with the environment"
        )
    return found


def _write_site(docroot: Path) -> None:
    for rel, text in PAGES.items():
        target = docroot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], errlog: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        up = 0
        for host in HOSTS:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((host, port)) == 0:
                    up += 1
        if up == len(HOSTS):
            return
        time.sleep(0.05)
    detail = errlog.read_text(errors="replace")[-2000:] if errlog.exists() else "(no error log)"
    code = proc.poll()
    if code is None:
        proc.kill()
        proc.wait(5)
    raise ServerError(f"{what} did not come up on port {port} (exit code {code}): {detail}")


def terminate(proc: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM ``proc`` (its whole process group with ``group``), SIGKILL its group
    if it has not exited within 10 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        # The whole group: Apache's children outlive a killed parent otherwise.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class WebServer:
    """Common lifecycle of a server process in the foreground (its pid is the master's)."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir = workdir / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        # Apache's (and nginx's, as root) workers run as www-data: the document root
        # must be readable by them, wherever pytest's private tmp_path is.
        self._public = Path(tempfile.mkdtemp(prefix=f"{self.name}-docroot-"))
        self._public.chmod(0o755)
        self.docroot = self._public / "www"
        _write_site(self.docroot)
        for d in [self.docroot, *self.docroot.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
        self.port = free_port()
        self.error_log = workdir / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.access_logs: dict[str, Path] = {}
        self.env: dict[str, str] | None = None  # the server's environment (None: ours)

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            # A second instance would replace self.proc and the first outlive stop().
            raise ServerError(f"{self.name} is already running (pid {self.proc.pid})")
        cmd = self.command()
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        _wait_listening(self.port, self.proc, self.error_log, f"{self.name} ({' '.join(cmd)})")
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not running")
        return self.proc.pid

    def reopen_logs(self) -> None:
        """Make the server open its access logs again (after they were renamed)."""
        raise NotImplementedError

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)
        shutil.rmtree(self._public, ignore_errors=True)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Nginx(WebServer):
    """nginx writing the ``nginx_cookie`` and the ``json`` presets' formats.

    ``access_logs``: ``{"nginx_cookie": path, "json": path}``.
    """

    name = "nginx"

    def __init__(
        self, workdir: Path, binary: str = NGINX_BIN, *, syslog: str | None = None
    ) -> None:
        self.binary = _require_binary(binary, "nginx")
        # ``syslog``: also send the nginx_cookie lines to ``syslog:server=<this>``
        # (``unix:/path.sock`` or ``127.0.0.1:5140``), as the README shows.
        self.syslog = syslog
        super().__init__(workdir)
        self.access_logs = {
            "nginx_cookie": self.logs_dir / "nginx_cookie.log",
            "json": self.logs_dir / "nginx_json.log",
        }
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(self._config(), encoding="utf-8")

    def _head(self) -> str:
        """The main context and the start of ``http {`` (its temp folders in workdir)."""
        w = self.workdir
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temps = "\n".join(
            f"    {kind}_temp_path {w / ('tmp_' + kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {w / "nginx.pid"};
error_log {self.error_log} warn;
events {{ worker_connections 512; }}
http {{
{temps}
"""

    def _config(self) -> str:
        types = "text/html html; text/css css; application/javascript js; image/png png;"
        return f"""{self._head()}    types {{ {types} }}
    default_type text/plain;
    log_format tirreno {NGINX_COOKIE_FORMAT};
    log_format tirreno_json {NGINX_JSON_FORMAT};
    access_log {self.access_logs["nginx_cookie"]} tirreno;
    access_log {self.access_logs["json"]} tirreno_json;
{f"    access_log syslog:server={self.syslog} tirreno;" if self.syslog else ""}
    keepalive_timeout 5;
    server {{
        listen 127.0.0.1:{self.port};
        listen [::1]:{self.port};
        server_name _;
        root {self.docroot};
        index index.html;
        location = /login/ {{
            if ($http_x_login = "ok") {{ return 302 /account/; }}
            return 200 "login form\\n";
        }}
        location = /logout/ {{ return 302 /; }}
        location = /search {{ return 200 "results\\n"; }}
    }}
}}
"""

    def command(self) -> list[str]:
        return [
            self.binary,
            "-p",
            str(self.workdir),
            "-c",
            str(self.conf),
            "-e",
            str(self.error_log),
        ]

    def reopen_logs(self) -> None:
        """``kill -USR1`` the master, as Debian's logrotate script does."""
        os.kill(self.pid, signal.SIGUSR1)


class Apache(WebServer):
    """Apache (Debian's apache2, modules from ``APACHE_MODULES``) writing
    ``apache_cookie`` (``%{sessionid}C``) and a whole-``Cookie``-header format.

    ``access_logs``: ``{"apache_cookie": path, "cookie_header": path}``.
    """

    name = "apache"
    MODULES = ("mpm_event", "authz_core", "dir", "mime", "alias", "rewrite")

    def __init__(self, workdir: Path, binary: str = APACHE_BIN) -> None:
        self.binary = _require_binary(binary, "apache2")
        missing = [m for m in self.MODULES if not (APACHE_MODULES / f"mod_{m}.so").exists()]
        if missing:
            raise ServerError(f"Apache modules missing from {APACHE_MODULES}: {missing}")
        super().__init__(workdir)
        self.access_logs = {
            "apache_cookie": self.logs_dir / "apache_cookie.log",
            "cookie_header": self.logs_dir / "apache_cookie_header.log",
        }
        self.conf = workdir / "httpd.conf"
        self.conf.write_text(self._config(), encoding="utf-8")

    def _config(self) -> str:
        w = self.workdir
        modules = "\n".join(
            f"LoadModule {m}_module {APACHE_MODULES / f'mod_{m}.so'}" for m in self.MODULES
        )
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        return f"""ServerRoot "{w}"
{modules}
{user}ServerName 127.0.0.1
PidFile "{w / "httpd.pid"}"
Mutex file:{w} default
Listen 127.0.0.1:{self.port}
Listen [::1]:{self.port}
ErrorLog "{self.error_log}"
LogLevel warn
StartServers 1
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
GracefulShutdownTimeout 5
TypesConfig /dev/null
AddType text/html .html
AddType text/css .css
AddType application/javascript .js
AddType image/png .png
DocumentRoot "{self.docroot}"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "{self.docroot}">
    Require all granted
</Directory>
DirectoryIndex index.html
LogFormat "{APACHE_COOKIE_FORMAT}" tirreno
LogFormat "{APACHE_COOKIE_HEADER_FORMAT}" tirreno_cookie_header
CustomLog "{self.access_logs["apache_cookie"]}" tirreno
CustomLog "{self.access_logs["cookie_header"]}" tirreno_cookie_header
RewriteEngine On
RewriteCond %{{HTTP:X-Login}} =ok
RewriteRule ^/login/$ /account/ [R=302,L]
Redirect 302 /logout/ /
"""

    def command(self) -> list[str]:
        return [self.binary, "-f", str(self.conf), "-DFOREGROUND"]

    def reopen_logs(self) -> None:
        """A graceful restart (SIGUSR1 to the parent, what ``apache2 -k graceful`` sends)."""
        os.kill(self.pid, signal.SIGUSR1)


__all__ = [
    "APACHE_COOKIE_FORMAT",
    "APACHE_COOKIE_HEADER_FORMAT",
    "NGINX_COOKIE_FORMAT",
    "NGINX_JSON_FORMAT",
    "Apache",
    "Nginx",
    "ServerError",
    "WebServer",
    "free_port",
    "terminate",
]
