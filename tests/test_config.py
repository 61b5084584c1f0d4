"""The config schema: defaults, typos and wrong types named before any job runs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from taufm.config import SCHEMA_PATH as SCHEMA
from taufm.config import config_errors, load_schema, validate_config
from taufm.errors import TaufmError
from taufm.sim.detector import DetectorParameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def default_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_and_presets_are_valid(default_config):
    validate_config(default_config, SCHEMA)
    for preset in (ROOT / "workflow" / "presets").glob("*.yaml"):
        merged = copy.deepcopy(default_config)
        _deep_update(merged, yaml.safe_load(preset.read_text()))
        validate_config(merged, SCHEMA)


def _deep_update(base, new):
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def test_empty_config_gets_every_default():
    config = validate_config({}, SCHEMA)
    assert config["data"]["source"] == "embedded"
    assert config["simulate"]["future"]["events_per_shard"] > 0
    assert config["simulate"]["jetclass"]["jet"]["radius"] == 0.8


def test_typo_is_named_with_its_full_key(default_config):
    default_config["simulate"]["future"]["evnts_per_shard"] = 10
    with pytest.raises(TaufmError, match=r"simulate\.future\.evnts_per_shard: unknown key"):
        validate_config(default_config, SCHEMA)


def test_wrong_types_and_values_are_named(default_config):
    default_config["simulate"]["future"]["shards"]["qq"] = 0
    default_config["simulate"]["jetclass"]["jets_per_shard"] = "many"
    default_config["data"]["source"] = "file"
    default_config["detector"]["future"]["ecal_stochastic"] = -1
    errors = "\n".join(config_errors(default_config, load_schema(SCHEMA)))
    assert "simulate.future.shards.qq" in errors
    assert "simulate.jetclass.jets_per_shard" in errors
    assert "data.source: 'file' is not one of" in errors
    assert "detector.future.ecal_stochastic" in errors


def test_unknown_sample_in_shards_is_rejected(default_config):
    default_config["simulate"]["future"]["shards"]["ttbar"] = 1
    with pytest.raises(TaufmError, match=r"simulate\.future\.shards\.ttbar: unknown key"):
        validate_config(default_config, SCHEMA)


def test_schema_detector_keys_match_the_detector_parameters():
    schema = load_schema(SCHEMA)
    in_schema = set(schema["$defs"]["detector"]["properties"])
    assert in_schema == {f.name for f in dataclasses.fields(DetectorParameters)}


def test_config_file_lists_every_detector_parameter_with_its_default(default_config):
    """config.yaml documents the CLIC-like response: it must name every parameter, at the code's default."""
    assert default_config["detector"]["future"] == dataclasses.asdict(DetectorParameters())


def test_stage_settings_name_an_unknown_key_and_a_bad_count():
    from taufm.errors import TaufmError
    from taufm.finetune.train import FinetuneSettings
    from taufm.pretrain.train import PretrainSettings

    with pytest.raises(TaufmError, match="unknown pretrain setting"):
        PretrainSettings.from_mapping({"epohcs": 3})
    with pytest.raises(TaufmError, match=r"pretrain\.epochs: 0 is less than the minimum of 1"):
        PretrainSettings.from_mapping({"epochs": 0})
    with pytest.raises(TaufmError, match=r"finetune\.batch_size: 2\.5 is not of type 'integer'"):
        FinetuneSettings.from_mapping({"batch_size": 2.5})
    assert PretrainSettings.from_mapping({"epochs": 4}).epochs == 4


def test_config_hash_ignores_key_order_only():
    from taufm.config import config_hash

    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1, "b": [1, 2]}) != config_hash({"a": 1, "b": [2, 1]})
    assert len(config_hash({})) == 64


def test_default_config_and_presets_meet_the_cross_setting_constraints(default_config):
    from taufm.config_checks import cross_setting_errors

    assert cross_setting_errors(validate_config(copy.deepcopy(default_config), SCHEMA)) == []
    for preset in (ROOT / "workflow" / "presets").glob("*.yaml"):
        merged = copy.deepcopy(default_config)
        _deep_update(merged, yaml.safe_load(preset.read_text()))
        assert cross_setting_errors(validate_config(merged, SCHEMA)) == [], preset.name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ingest": {"split_ratios": {"train": 0.8, "val": 0.15, "test": 0.1}}}, "ingest.split_ratios: train 0.8, val 0.15, test 0.1 sum to 1.05, not 1"),
        ({"pretrain": {"model": {"dim": 100, "n_heads": 8}}}, "pretrain.model: dim 100 is not divisible by n_heads 8"),
        ({"tokenizer": {"model": {"hidden_dim": 30, "n_heads": 4}}}, "tokenizer.model: hidden_dim 30 is not divisible by n_heads 4"),
        ({"finetune": {"head": {"dim": 10, "n_heads": 4}}}, "finetune.head: dim 10 is not divisible by n_heads 4"),
        ({"finetune": {"ablations": {"n_blocks": [1, 5]}}}, "strategy 'finetune-blocks5' uses 5 pretrained blocks; backbone tokens-ntp has 3"),
        ({"finetune": {"grid": {"strategies": ["scratch", "part-blocks2"]}}}, "the ParT baseline has no backbone"),
        ({"finetune": {"grid": {"strategies": ["fixed-unfreeze3"]}}}, "only finetune has an unfreeze epoch"),
        ({"finetune": {"grid": {"strategies": ["fixed@continuous-ntp"]}}}, "strategy 'fixed@continuous-ntp': unknown backbone @continuous-ntp; pretrain.backbones has: tokens-ntp, continuous-mpm"),
        (
            {"pretrain": {"backbones": {"continuous-mpm": {"inputs": "continuous", "objective": "mpm", "model": {"n_blocks": 1}}}}, "finetune": {"grid": {"strategies": ["finetune-blocks2@continuous-mpm"]}}},
            "strategy 'finetune-blocks2@continuous-mpm' uses 2 pretrained blocks; backbone continuous-mpm has 1",
        ),
        ({"pretrain": {"backbones": {"continuous-mpm": {"inputs": "continuous", "objective": "mpm", "model": {"dim": 30}}}}}, "pretrain.backbones.continuous-mpm: model dim 30 is not divisible by n_heads 8"),
    ],
)
def test_constraints_between_settings_are_named(default_config, change, message):
    from taufm.config_checks import check_cross_settings

    _deep_update(default_config, change)
    config = validate_config(default_config, SCHEMA)
    with pytest.raises(TaufmError, match="invalid configuration") as err:
        check_cross_settings(config)
    assert message in str(err.value)


def test_snakemake_dry_run_stops_on_a_cross_setting_error(tmp_path):
    import subprocess
    import sys

    override = tmp_path / "bad.yaml"
    override.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "pretrain": {"model": {"n_blocks": 2}}, "finetune": {"ablations": {"n_blocks": [3]}}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(override)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "strategy 'finetune-blocks3' uses 3 pretrained blocks; backbone tokens-ntp has 2" in proc.stdout + proc.stderr
