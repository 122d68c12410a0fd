"""TLS verification is on by default: a sensor with a certificate we cannot verify
gets no event until the operator names its CA (or explicitly turns verification off)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from tirreno_shipper.config import SensorConfig
from tirreno_shipper.sender import Outcome, send_one

FIELDS = {"ipAddress": "203.0.113.5", "url": "/tls", "eventType": "page_view"}
RID = "0f1e2d3c-4b5a-5968-8776-655443322110"


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and its key, made once for the module
    (an EC key: generated in milliseconds, where RSA takes a good part of a second)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate (apt-get install openssl)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def https_sensor(certificate: tuple[Path, Path]) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server on 127.0.0.1 with that certificate."""
    cert, key = certificate
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    # Polls for shutdown every 50 ms (the default 0.5 s is the teardown's wait).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/sensor/", cert
    finally:
        server.shutdown()
        server.server_close()


def test_unverifiable_certificate_is_refused_by_default(https_sensor: tuple[str, Path]) -> None:
    """Default settings: a self-signed sensor is a TLS failure, retried later, never sent to."""
    url, _ = https_sensor
    verdict = send_one(SensorConfig(url=url, api_key=SecretStr("k")), FIELDS, RID)
    assert verdict.outcome is Outcome.RETRY
    assert verdict.reason == "tls"


def test_ca_bundle_makes_the_certificate_trusted(https_sensor: tuple[str, Path]) -> None:
    """sensor.ca_bundle naming the sensor's CA: verified, and the event is accepted."""
    url, cert = https_sensor
    verdict = send_one(SensorConfig(url=url, api_key=SecretStr("k"), ca_bundle=cert), FIELDS, RID)
    assert verdict.outcome is Outcome.ACCEPTED


def test_verification_off_only_when_asked(https_sensor: tuple[str, Path]) -> None:
    """verify_tls: false is the explicit opt-out; it is not the default."""
    url, _ = https_sensor
    assert SensorConfig(url=url, api_key=SecretStr("k")).verify_tls is True
    verdict = send_one(SensorConfig(url=url, api_key=SecretStr("k"), verify_tls=False), FIELDS, RID)
    assert verdict.outcome is Outcome.ACCEPTED
