"""One definition of every setting: the package's JSON schema.

Each stage's settings dataclass (or keyword defaults) must list exactly the schema's keys for the
JSON that stage's command receives, at the schema's defaults, so that the two cannot drift apart;
and every command refuses a wrong type, an out-of-range value or an unknown key, naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from taufm.cli import build_parser, main
from taufm.config import SCHEMA_PATH, SETTINGS_PAYLOADS, checked_settings, payload_schema, pretrain_backbone_payload, validate_config
from taufm.errors import TaufmError

ROOT = Path(__file__).resolve().parents[1]


def _plain(value):
    """Dataclasses, tuples and mappings as the JSON the schema describes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _resolved(schema: dict, node: dict) -> dict:
    if "$ref" in node:
        return schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def schema_properties(name: str) -> dict[str, dict]:
    """The properties of a settings payload, ``$ref`` resolved."""
    schema = payload_schema(name)
    return {k: _resolved(schema, v) for k, v in schema["properties"].items()}


def schema_defaults(name: str) -> dict:
    """The top-level default of every key of a payload (each must have one)."""
    properties = schema_properties(name)
    missing = sorted(k for k, v in properties.items() if "default" not in v)
    assert not missing, f"{name}: no default in the schema for {missing}"
    return {k: v["default"] for k, v in properties.items()}


def dataclass_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{f.name} has no default"
        out[f.name] = _plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
    return out


def keyword_defaults(function, leave_out=()) -> dict:
    return {n: _plain(p.default) for n, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY and n not in leave_out}


def _stage_settings_classes():
    from taufm.finetune.train import FinetuneSettings
    from taufm.ingest.ee import EEIngestSettings
    from taufm.pretrain.train import PretrainSettings
    from taufm.tokenizer.train import TokenizerSettings

    return {"ingest.future": EEIngestSettings, "tokenizer": TokenizerSettings, "pretrain": PretrainSettings, "finetune": FinetuneSettings}


# ---- the schema ships with the package ----


def test_the_schema_is_package_data_not_a_checkout_file():
    import taufm

    assert SCHEMA_PATH == Path(taufm.__file__).resolve().parent / "schemas" / "config.schema.yaml"
    assert SCHEMA_PATH.is_file() and not SCHEMA_PATH.is_symlink()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["taufm"]
    assert any(SCHEMA_PATH.relative_to(SCHEMA_PATH.parents[1]).match(pattern) for pattern in package_data)
    assert not (ROOT / "workflow" / "schemas").exists(), "one schema, in the package"


# ---- dataclasses and keyword defaults vs the schema ----


@pytest.mark.parametrize("name", ["ingest.future", "tokenizer", "pretrain", "finetune"])
def test_stage_dataclass_has_the_schema_keys_and_defaults(name):
    """Top-level defaults; a field that is itself a settings dataclass (ingest.future.collections)
    is compared with the schema's defaults inside it. Plain mappings (tokenizer.model, ...) default
    to {} in both; the command fills them from the schema (test below)."""
    cls = _stage_settings_classes()[name]
    ours, schemas = dataclass_defaults(cls), schema_defaults(name)
    completed = checked_settings(name, {})
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            schemas[f.name] = completed[f.name]
    assert set(ours) == set(schemas), f"{cls.__name__} vs the schema of {name}"
    assert ours == schemas, f"{cls.__name__} defaults vs the schema of {name}"


def test_jetclass_ingestion_keywords_have_the_schema_keys_and_defaults():
    from taufm.ingest.jetclass import ingest_jetclass_file

    assert keyword_defaults(ingest_jetclass_file, leave_out=("sample", "config")) == schema_defaults("ingest.jetclass")


def test_simulation_defaults_are_the_schemas():
    from taufm.sim.ee import simulate_ee_shard
    from taufm.sim.jetclass import simulate_jetclass_shard

    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["simulate"]["properties"]
    future, jetclass = (schema[sample]["properties"] for sample in ("future", "jetclass"))
    jet = schema_defaults("simulate.jetclass.jet")
    keywords = keyword_defaults(simulate_jetclass_shard)
    assert {k.removeprefix("jet_"): v for k, v in keywords.items() if k.startswith("jet_")} == jet
    assert keywords["sqrt_s"] == jetclass["sqrt_s"]["default"]
    assert keywords["multiparton_interactions"] == jetclass["multiparton_interactions"]["default"]
    assert keyword_defaults(simulate_ee_shard)["sqrt_s"] == future["sqrt_s"]["default"]
    parser = build_parser()
    ee = parser.parse_args(["simulate-ee", "--sample", "qq", "--shard", "0", "--events", "1", "--output", "x.root"])
    jc = parser.parse_args(["simulate-jetclass", "--process", "TTBar", "--shard", "0", "--jets", "1", "--output", "x.root"])
    assert (ee.sqrt_s, jc.sqrt_s, jc.mpi) == (future["sqrt_s"]["default"], jetclass["sqrt_s"]["default"], jetclass["multiparton_interactions"]["default"])


def test_detector_parameters_have_no_schema_defaults_to_drift_from():
    """Two bases (taufm.sim.detector's CLIC-like defaults, DELPHES_CMS_LIKE) hold the detector
    defaults; the schema states only keys and ranges (keys: tests/test_config.py)."""
    for name in ("detector.future", "detector.jetclass"):
        assert all("default" not in v for v in schema_properties(name).values()), name
        assert checked_settings(name, {}) == {}


def test_nested_model_settings_have_the_schema_keys():
    from taufm.finetune.tasks import TaskSettings
    from taufm.models.gpt import GPTConfig
    from taufm.models.heads import HeadConfig
    from taufm.models.part import ParTConfig
    from taufm.models.vqvae import VQVAEConfig
    from taufm.tokenizer.preprocessing import Preprocessing

    def keys(cls, leave_out=()):
        return {f.name for f in dataclasses.fields(cls)} - set(leave_out)

    tokenizer, pretrain, finetune = (schema_properties(n) for n in ("tokenizer", "pretrain", "finetune"))
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    # The shape of the data, not settings: set from the preprocessing and the tokenizer.
    assert set(tokenizer["model"]["properties"]) == keys(VQVAEConfig, ("n_inputs", "n_continuous", "n_charge_classes", "n_pid_classes"))
    assert set(tokenizer["preprocessing"]["properties"]) == keys(Preprocessing)
    # The input kind and the attention follow from the backbone's objective (pretrain.backbones).
    assert set(pretrain["model"]["properties"]) == keys(GPTConfig, ("vocab_size", "max_length", "inputs", "n_features", "causal", "mask_embedding"))
    assert set(finetune["head"]["properties"]) == keys(HeadConfig)
    assert set(finetune["part"]["properties"]) == keys(ParTConfig) | {"inputs"}  # the input set, read by taufm.finetune.train.part_settings
    assert set(schema["$defs"]["task_settings"]["properties"]) == keys(TaskSettings)
    assert {k: v["default"] for k, v in tokenizer["preprocessing"]["properties"].items()} == dataclasses.asdict(Preprocessing())


def test_lepton_cleaning_modes_are_the_schemas():
    from taufm.ingest.ee import LEPTON_CLEANING_MODES

    assert schema_properties("ingest.future")["lepton_cleaning"]["enum"] == list(LEPTON_CLEANING_MODES)


@pytest.mark.parametrize("name", ["ingest.future", "tokenizer", "pretrain", "finetune"])
def test_a_command_without_settings_runs_at_the_schema_defaults(name):
    """Nested defaults too (tokenizer.model, pretrain.model): from the schema, not the model code."""
    settings = _stage_settings_classes()[name].from_mapping({})
    expected = checked_settings(name, {})
    assert {k: _plain(getattr(settings, k)) for k in expected} == expected
    if name == "tokenizer":
        assert settings.model == {k: v["default"] for k, v in schema_properties("tokenizer")["model"]["properties"].items()}


def test_the_workflow_passes_complete_valid_payloads():
    """What the rules pass (SETTINGS_PAYLOADS over the validated config) passes the commands'
    checks unchanged: the schema's defaults add nothing to it."""
    config = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    for name, payload in SETTINGS_PAYLOADS.items():
        if name == "pretrain":  # one job per backbone
            for backbone in config["pretrain"]["backbones"]:
                values = pretrain_backbone_payload(config, backbone)
                assert checked_settings(name, copy.deepcopy(values)) == values, backbone
            continue
        values = payload.from_config(config)
        assert checked_settings(name, copy.deepcopy(values)) == values, name


def test_a_float_is_not_a_count_in_the_config_either():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["finetune"]["epochs"] = 10.0
    with pytest.raises(TaufmError, match=r"finetune\.epochs: 10\.0 is not of type 'integer'"):
        validate_config(config)


# ---- every command refuses bad settings, naming the key ----

# command -> (argv with {settings} where the JSON goes, the payload's config key prefix)
COMMANDS = {
    "ingest-ee": (["ingest-ee", "--sample", "qq", "--output", "{out}/x.parquet", "--settings", "{settings}", "{out}/missing.root"], "ingest.future"),
    "ingest-jetclass": (["ingest-jetclass", "--sample", "TTBar", "--output", "{out}/x.parquet", "--settings", "{settings}", "{out}/missing.root"], "ingest.jetclass"),
    "train-tokenizer": (["train-tokenizer", "--settings", "{settings}", "--output-dir", "{out}/tokenizer", "{out}/missing.parquet"], "tokenizer"),
    "pretrain": (["pretrain", "--settings", "{settings}", "--output-dir", "{out}/pretrain", "{out}/missing.parquet"], "pretrain"),
    "finetune": (
        ["finetune", "--task", "tau_id", "--strategy", "scratch", "--size", "10", "--seed", "0", "--settings", "{settings}", "--output-dir", "{out}/run", "qq={out}/missing.parquet"],
        "finetune",
    ),
    "simulate-jetclass --jet": (["simulate-jetclass", "--process", "TTBar", "--shard", "0", "--jets", "1", "--output", "{out}/x.root", "--jet", "{settings}"], "simulate.jetclass.jet"),
    "simulate-ee --detector": (["simulate-ee", "--sample", "qq", "--shard", "0", "--events", "1", "--output", "{out}/x.root", "--detector", "{settings}"], "detector.future"),
}

# command -> [(case, settings, the key and value the message must name)]
BAD_SETTINGS = {
    "ingest-ee": [
        ("wrong type", {"signed_angles": "yes"}, "ingest.future.signed_angles: 'yes' is not of type 'boolean'"),
        ("out of range", {"jet_radius": -0.4}, "ingest.future.jet_radius: -0.4 is less than or equal to the minimum of 0"),
        ("unknown key", {"jet_radus": 0.4}, "unknown ingest.future setting(s): jet_radus"),
        ("shared setting", {"split_ratios": {"train": 1.5, "val": 0.1, "test": 0.1}}, "ingest.split_ratios.train: 1.5 is greater than the maximum of 1"),
    ],
    "ingest-jetclass": [
        ("wrong type", {"max_candidates": "many"}, "ingest.jetclass.max_candidates: 'many' is not of type 'integer'"),
        ("out of range", {"max_candidates": 0}, "ingest.jetclass.max_candidates: 0 is less than the minimum of 1"),
        ("unknown key", {"max_candidate": 16}, "unknown ingest.jetclass setting(s): max_candidate"),
    ],
    "train-tokenizer": [
        ("wrong type", {"epochs": 2.5}, "tokenizer.epochs: 2.5 is not of type 'integer'"),
        ("out of range", {"model": {"codebook_size": 1}}, "tokenizer.model.codebook_size: 1 is less than the minimum of 2"),
        ("unknown key", {"checks": {"split": "test"}}, "unknown tokenizer setting(s): checks"),
    ],
    "pretrain": [
        ("wrong type", {"learning_rate": "fast"}, "pretrain.learning_rate: 'fast' is not of type 'number'"),
        ("out of range", {"model": {"dropout": 1.5}}, "pretrain.model.dropout: 1.5 is greater than the maximum of 1"),
        ("unknown key", {"processes": 2}, "unknown pretrain setting(s): processes"),
    ],
    "finetune": [
        ("wrong type", {"early_stopping_patience": "3"}, "finetune.early_stopping_patience: '3' is not of type 'integer', 'null'"),
        ("out of range", {"batch_size": 0}, "finetune.batch_size: 0 is less than the minimum of 1"),
        ("unknown key", {"head": {"width": 16}}, "unknown finetune.head setting(s): width"),
    ],
    "simulate-jetclass --jet": [
        ("wrong type", {"radius": "wide"}, "simulate.jetclass.jet.radius: 'wide' is not of type 'number'"),
        ("out of range", {"pt_min": -1}, "simulate.jetclass.jet.pt_min: -1 is less than the minimum of 0"),
        ("unknown key", {"eta_max": 2.0}, "unknown simulate.jetclass.jet setting(s): eta_max"),
    ],
    "simulate-ee --detector": [
        ("wrong type", {"ecal_stochastic": "low"}, "detector.future.ecal_stochastic: 'low' is not of type 'number'"),
        ("out of range", {"tracking_efficiency": 1.5}, "detector.future.tracking_efficiency: 1.5 is greater than the maximum of 1"),
        ("unknown key", {"ecal_stohastic": 0.1}, "unknown detector.future setting(s): ecal_stohastic"),
    ],
}


def test_every_payload_command_is_covered():
    assert {key for _, key in COMMANDS.values()} == set(SETTINGS_PAYLOADS) - {"detector.jetclass"}  # the same schema as detector.future


@pytest.mark.parametrize(
    "command, settings, message",
    [pytest.param(command, settings, message, id=f"{command}: {case}") for command, cases in BAD_SETTINGS.items() for case, settings, message in cases],
)
def test_bad_settings_stop_the_command_naming_the_key(tmp_path, capsys, command, settings, message):
    template, _ = COMMANDS[command]
    argv = [word.replace("{settings}", json.dumps(settings)).replace("{out}", str(tmp_path)) for word in template]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"taufm {argv[0]}: error: " in err
    assert message in err
    assert list(tmp_path.iterdir()) == [], "nothing written"
