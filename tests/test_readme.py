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
