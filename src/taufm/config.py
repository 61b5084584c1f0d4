"""Checking the workflow configuration against its JSON schema, with errors that name the key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from taufm.errors import TaufmError


def reject_unknown_keys(values: Mapping, known: Iterable[str], where: str) -> None:
    """A :class:`TaufmError` naming every key of ``values`` that is not in ``known``."""
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise TaufmError(f"unknown {where} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")


Settings = TypeVar("Settings")


def settings_from_mapping(cls: type[Settings], values: Mapping | None, where: str, positive: Iterable[str] = ()) -> Settings:
    """A stage's settings dataclass from its config mapping. An unknown key, or a count in
    ``positive`` that is not a positive integer, is a :class:`TaufmError` naming it."""
    values = dict(values or {})
    reject_unknown_keys(values, (f.name for f in dataclasses.fields(cls)), where)
    settings = cls(**values)
    for name in positive:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TaufmError(f"{where}.{name} must be a positive integer, got {value!r}")
    return settings


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of resolved settings as canonical JSON (sorted keys): equal settings, equal hash."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_schema(path: str | Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every violation of ``schema`` in ``config``, one line each, naming the config key."""
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = _key_path(error.absolute_path)
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            unexpected = sorted(set(error.instance) - set(allowed))
            for key in unexpected:
                full = f"{where}.{key}" if error.absolute_path else key
                messages.append(f"{full}: unknown key (allowed here: {', '.join(allowed)})")
        else:
            messages.append(f"{where}: {error.message}")
    return messages


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Raise :class:`TaufmError` listing every problem in ``config``; else fill in the defaults."""
    schema = load_schema(schema_path)
    errors = config_errors(config, schema)
    if errors:
        raise TaufmError("invalid configuration:\n  " + "\n  ".join(errors))
    from snakemake.utils import validate

    validate(config, str(schema_path), set_default=True)
    return config
