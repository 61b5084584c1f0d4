"""The configuration's one definition: the JSON schema ``taufm/schemas/config.schema.yaml``.

The schema holds the type, range and default of every setting. :func:`validate_config` checks the
workflow's config against it (and fills in the defaults) before any job runs; every ``taufm``
command checks the JSON settings it receives against the part of the schema they come from
(:data:`SETTINGS_PAYLOADS`, :func:`checked_settings`) and fills in the same defaults, so a
command run by hand and one run by the workflow agree. Errors name the config key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from taufm.errors import TaufmError

# Package data (pyproject.toml), so an installed taufm finds it without a checkout.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def reject_unknown_keys(values: Mapping, known: Iterable[str], where: str) -> None:
    """A :class:`TaufmError` naming every key of ``values`` that is not in ``known``."""
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise TaufmError(_unknown_keys_message(where, unknown, known))


def _unknown_keys_message(where: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    return f"unknown {where} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of resolved settings as canonical JSON (sorted keys): equal settings, equal hash."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


@functools.cache
def _package_schema() -> dict:
    return load_schema(SCHEMA_PATH)


def _strict_validator_class(schema: dict) -> type:
    """The schema's validator, where ``integer`` means a JSON integer: 2.0 is not a count."""
    base = jsonschema.validators.validator_for(schema)
    checker = base.TYPE_CHECKER.redefine("integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def _defaults_filling_validator_class(schema: dict) -> type:
    """A validator that also sets every missing property that has a ``default`` (a copy of it),
    descending into the mappings it fills (the jsonschema FAQ recipe, as snakemake.utils.validate
    uses it). A default behind a ``$ref`` is not filled in at the referring property."""
    base = _strict_validator_class(schema)
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every violation of ``schema`` in ``config``, one line each, naming the config key."""
    validator = _strict_validator_class(schema)(schema)
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


def fill_defaults(instance: dict, schema: dict) -> dict:
    """``instance`` with every default of ``schema`` it lacks set in place (checked first)."""
    _defaults_filling_validator_class(schema)(schema).validate(instance)
    return instance


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Raise :class:`TaufmError` listing every problem in ``config``; else fill in the defaults."""
    schema = load_schema(schema_path)
    errors = config_errors(config, schema)
    if errors:
        raise TaufmError("invalid configuration:\n  " + "\n  ".join(errors))
    return fill_defaults(config, schema)


# ---- The JSON settings each command receives, in terms of the config ----


@dataclass(frozen=True)
class SettingsPayload:
    """The JSON settings object one ``taufm`` command takes (``--settings``, ``--jet``,
    ``--detector``), as the workflow rules build it from the config: the mapping under
    ``section`` without the keys in ``left_out`` (settings of other rules), plus settings shared
    with other stages (payload key -> their config key)."""

    section: str
    left_out: tuple[str, ...] = ()
    shared: Mapping[str, str] = field(default_factory=dict)
    # Payload keys the workflow sets per job (no config key of their own) -> their schema in $defs.
    per_job: Mapping[str, str] = field(default_factory=dict)

    def config_key(self, path: Iterable) -> str:
        """The config key of a place in the payload (a shared setting under its own section)."""
        parts = [str(p) for p in path]
        if parts and parts[0] in self.shared:
            return ".".join([self.shared[parts[0]], *parts[1:]])
        return ".".join([self.section, *parts])

    def from_config(self, config: Mapping) -> dict:
        """The payload of a validated config (what the rule passes to the command)."""
        values = {k: v for k, v in _config_value(config, self.section).items() if k not in self.left_out}
        values.update({key: _config_value(config, where) for key, where in self.shared.items()})
        return values


_SPLIT_AND_CHUNKS = {"split_ratios": "ingest.split_ratios", "chunk_size": "ingest.chunk_size"}

# Keyed by the name each stage reports its settings under (the ``where`` of settings_from_mapping).
SETTINGS_PAYLOADS: dict[str, SettingsPayload] = {
    "simulate.jetclass.jet": SettingsPayload("simulate.jetclass.jet"),  # simulate-jetclass --jet
    "detector.future": SettingsPayload("detector.future"),  # simulate-ee --detector
    "detector.jetclass": SettingsPayload("detector.jetclass"),  # simulate-jetclass --detector
    "ingest.future": SettingsPayload("ingest.future", shared=_SPLIT_AND_CHUNKS),  # ingest-ee
    "ingest.jetclass": SettingsPayload("ingest.jetclass", shared=_SPLIT_AND_CHUNKS),  # ingest-jetclass
    "tokenizer": SettingsPayload("tokenizer", left_out=("checks",)),  # train-tokenizer
    # pretrain: one job per backbone (pretrain_backbone_payload)
    "pretrain": SettingsPayload("pretrain", left_out=("processes", "backbones"), per_job={"backbone": "backbone_objective"}),
    "finetune": SettingsPayload("finetune", left_out=("grid", "ablations")),  # finetune
}


BACKBONE_OVERRIDES = ("model", "epochs")  # keys of a pretrain.backbones entry that override pretrain's own


def pretrain_backbone_payload(config: Mapping, name: str) -> dict:
    """The settings of the pretraining job of backbone ``name`` (of a validated config): the
    pretrain section with the backbone's own ``model`` and ``epochs`` over it, and the backbone's
    name, inputs and objective as ``backbone``."""
    backbones = config["pretrain"]["backbones"]
    if name not in backbones:
        raise TaufmError(f"pretrain.backbones has no backbone {name!r} (it has: {', '.join(backbones)})")
    entry = backbones[name]
    values = SETTINGS_PAYLOADS["pretrain"].from_config(config)
    values = {**values, "model": {**values.get("model", {}), **entry.get("model", {})}}
    if "epochs" in entry:
        values["epochs"] = entry["epochs"]
    objective = {"name": name, **{k: v for k, v in entry.items() if k not in BACKBONE_OVERRIDES}}
    schema = _package_schema()
    values["backbone"] = fill_defaults(objective, {"$defs": schema["$defs"], **schema["$defs"]["backbone_objective"]})
    return values


def _config_value(config: Mapping, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        node = node[key]
    return node


def _schema_node(schema: dict, dotted: str) -> dict:
    """The schema of one config key (a ``$ref`` resolved)."""
    node = schema
    for key in dotted.split("."):
        node = node["properties"][key]
        if "$ref" in node:
            node = _config_value(schema, node["$ref"].removeprefix("#/").replace("/", "."))
    return node


def payload_schema(name: str) -> dict:
    """A JSON schema of the settings payload ``name`` (see :data:`SETTINGS_PAYLOADS`)."""
    payload = SETTINGS_PAYLOADS[name]
    schema = _package_schema()
    section = _schema_node(schema, payload.section)
    properties = {k: v for k, v in section["properties"].items() if k not in payload.left_out}
    properties.update({key: _schema_node(schema, where) for key, where in payload.shared.items()})
    # Inlined rather than referred to, so that their defaults are filled in.
    properties.update({key: schema["$defs"][name] for key, name in payload.per_job.items()})
    return copy.deepcopy(
        {"$schema": schema["$schema"], "$defs": schema["$defs"], "type": "object", "additionalProperties": False, "properties": properties}
    )


def payload_errors(name: str, values: Mapping) -> list[str]:
    """Every violation of its schema in a settings payload, one line each, naming the config key."""
    payload = SETTINGS_PAYLOADS[name]
    schema = payload_schema(name)
    validator = _strict_validator_class(schema)(schema)
    messages = []
    for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.absolute_path))):
        where = payload.config_key(error.absolute_path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            messages.append(_unknown_keys_message(where, sorted(set(error.instance) - set(known)), known))
        else:
            messages.append(f"{where}: {error.message}")
    return messages


def checked_settings(name: str, values: Mapping | None) -> dict:
    """The settings payload ``name`` checked against the schema (type, range, unknown keys: a
    :class:`TaufmError` naming the key and value) and with the schema's defaults filled in."""
    if name not in SETTINGS_PAYLOADS:
        raise ValueError(f"no settings payload {name!r} in taufm.config.SETTINGS_PAYLOADS")
    values = copy.deepcopy(dict(values or {}))
    errors = payload_errors(name, values)
    if errors:
        raise TaufmError("; ".join(errors))
    return fill_defaults(values, payload_schema(name))


Settings = TypeVar("Settings")


def settings_from_mapping(cls: type[Settings], values: Mapping | None, where: str, positive: Iterable[str] = ()) -> Settings:
    """A stage's settings dataclass from the JSON settings it was given: checked against the
    schema and completed with its defaults (:func:`checked_settings`; ``where`` names the payload
    in :data:`SETTINGS_PAYLOADS`). A count in ``positive`` that is not a positive integer is also
    a :class:`TaufmError` naming it (the schema already states most such ranges)."""
    values = checked_settings(where, values)
    reject_unknown_keys(values, (f.name for f in dataclasses.fields(cls)), where)  # schema and dataclass out of step
    settings = cls(**values)
    for name in positive:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TaufmError(f"{where}.{name} must be a positive integer, got {value!r}")
    return settings
