"""Checking the workflow configuration against its JSON schema, with errors that name the key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import jsonschema
import yaml

from taufm.errors import TaufmError


def reject_unknown_keys(values: Mapping, known: Iterable[str], where: str) -> None:
    """A :class:`TaufmError` naming every key of ``values`` that is not in ``known``."""
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise TaufmError(f"unknown {where} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")


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
