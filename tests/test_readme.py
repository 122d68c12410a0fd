"""The README's configuration reference names every key of the configuration model."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from tirreno_shipper.config import EVENT_TYPES, Config
from tirreno_shipper.formats import PRESET_NAMES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
# Keys documented elsewhere under their own heading (rules have their own table).
DOCUMENTED_ELSEWHERE = {"sites[N].events.rules[N]"}


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models(arg))
    return out


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys: list[str] = []
    for name, fld in model.model_fields.items():
        key = fld.alias or name
        path = f"{prefix}{key}"
        keys.append(path)
        origin = typing.get_origin(fld.annotation)
        is_list = origin is list or any(
            typing.get_origin(a) is list for a in typing.get_args(fld.annotation)
        )
        child = f"{path}[N]." if is_list else f"{path}."
        if path + "[N]" in DOCUMENTED_ELSEWHERE or child.rstrip(".") in DOCUMENTED_ELSEWHERE:
            continue
        for sub in _models(fld.annotation):
            if sub.__name__ in {"NginxFormat", "ApacheFormat", "JsonFormat"}:
                continue
            keys.extend(_keys(sub, child))
    return keys


def _documented(key: str) -> bool:
    short = key.removeprefix("sites[N].")
    # A section (``sensor``) is documented through its keys (``sensor.url``).
    return any(f"`{k}{end}" in README for k in (short, key) for end in ("`", ".", "[N]."))


def test_every_config_key_is_in_the_reference() -> None:
    """Each key path of the model appears in backticks in the README."""
    missing = [k for k in _keys(Config, "") if not _documented(k)]
    assert not missing, f"README configuration reference lacks: {missing}"


def test_rule_keys_and_event_types_are_documented() -> None:
    """The rules table names every rule key and every eventType tirreno knows."""
    from tirreno_shipper.config import Rule

    for key in Rule.model_fields:
        assert f"`{key}`" in README, key
    for event_type in EVENT_TYPES:
        assert f"`{event_type}`" in README, event_type


def test_every_preset_is_documented_with_its_server_line() -> None:
    """Each preset has a row naming the nginx log_format or Apache LogFormat it matches."""
    for preset in PRESET_NAMES:
        row = re.search(rf"^\| `{preset}` \|(.+)$", README, re.M)
        assert row, preset
        assert "log_format" in row.group(1) or "LogFormat" in row.group(1) or preset == "json"


def _mentions(text: str, *needed: str) -> None:
    missing = [n for n in needed if n not in text]
    assert not missing, missing


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, title
    return match.group(1)


def test_security_section_says_what_the_log_holds_and_where_secrets_go() -> None:
    """Session ids in the access log, its mode and retention, a read-only database user,
    and where the secrets go."""
    text = _section("Security")
    _mentions(
        text,
        "session ids",
        "`0640`",
        "rotate",
        "setfacl",
        "default_transaction_read_only",
        "GRANT SELECT",
        "/etc/tirreno-shipper/env",
        "LoadCredential=",
        "never go in `config.yaml`",
    )


def test_container_section_is_complete() -> None:
    """Port, spool volume owner, reaching the host's services, reading root:adm logs."""
    text = _section("Run it in a container")
    _mentions(
        text,
        "-p 127.0.0.1:9108:9108",
        "--group-add adm",
        "uid 10001",
        "-o 10001 -g 10001",
        "host.docker.internal:host-gateway",
        "--network host",
        "docker stop -t 20",
    )


def test_install_works_on_debian_and_rhel_as_written() -> None:
    """A virtualenv under /opt/tirreno-shipper (where the unit runs it) on both families,
    with a Python of at least 3.11 on RHEL 9 (its python3 is 3.9)."""
    text = _section("Install")
    assert "apt-get install -y python3-venv" in text
    assert "dnf install -y python3.11\npython3.11 -m venv /opt/tirreno-shipper" in text
    assert "/opt/tirreno-shipper/bin/pip install '.[postgres]'" in text
    assert "install -m 0644 deploy/config.yaml /etc/tirreno-shipper/config.yaml" in text
    assert "pip install ." not in text.replace("bin/pip install '.", "")


def test_snippets_say_where_they_go_and_what_they_replace() -> None:
    """Debian and RHEL layouts for nginx and Apache, and the override that bites."""
    nginx = README[README.index("### nginx\n") : README.index("### Apache\n")]
    _mentions(
        nginx,
        "/etc/nginx/nginx.conf",
        "replace the\nline `access_log /var/log/nginx/access.log;`",
        "log_format main",
        "`server` block",
    )
    apache = README[README.index("### Apache\n") : README.index("Both servers' escaping")]
    _mentions(
        apache,
        "000-default.conf",
        "a2enconf tirreno",
        "/etc/httpd/conf.d/tirreno.conf",
        'CustomLog "logs/access_log" tirreno',
        "replaces the server-wide one",
    )
