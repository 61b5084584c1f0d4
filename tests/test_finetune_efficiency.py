"""A grid cell at a fraction of its cost, computing the same thing: the frozen backbone's outputs
cached, each epoch judged on a validation subset, the kept model once on the whole set; compute
accounting in the summary; a killed cell still resumes bitwise."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import taufm.finetune.train as module
from taufm.finetune.data import load_task_data, validation_subset
from taufm.finetune.tasks import loss, task_settings
from taufm.finetune.train import FinetuneSettings, PassCounts, build_model, flop_estimates, model_inputs, parse_strategy, run_finetune

from .test_finetune import SETTINGS, world  # noqa: F401 (the fixture)

TIMING_KEYS = ("training_seconds", "device_seconds", "wall_seconds", "jets_per_second", "peak_memory_mb")


def _settings(**changes) -> FinetuneSettings:
    return dataclasses.replace(SETTINGS, **changes)


def _history(path) -> list[dict]:
    with open(path / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)["model"]


def _predictions(path) -> dict:
    return pq.read_table(path / "predictions.parquet").to_pydict()


# ---- the frozen backbone computed once ----


@pytest.mark.parametrize("strategy", ["fixed", "finetune", "finetune-blocks1"])
def test_the_cached_frozen_backbone_trains_the_same_model(world, tmp_path, strategy):  # noqa: F811
    """fixed: frozen throughout; finetune (unfreeze_epoch 1 of 3 epochs): cached in epoch 0, then
    the whole model trains; blocks1: the cache holds the first block's outputs."""
    _, shards, backbone = world
    runs = {}
    for cached in (True, False):
        settings = _settings(cache_frozen_backbone=cached, val_subset_jets=30)
        runs[cached] = run_finetune("pt_regression", strategy, 200, 0, shards, tmp_path / str(cached), settings, backbone)
    cached, uncached = runs[True], runs[False]
    assert cached["frozen_backbone_cache"]["train_jets"] == 200 and cached["frozen_backbone_cache"]["val_jets"] == 30
    assert cached["frozen_backbone_cache"]["megabytes"] > 0
    assert uncached["frozen_backbone_cache"] == {"train_jets": 0, "val_jets": 0, "megabytes": 0.0}
    assert cached["best_epoch"] == uncached["best_epoch"]
    assert cached["best_val_loss"] == pytest.approx(uncached["best_val_loss"], rel=1e-5)
    a, b = _history(tmp_path / "True"), _history(tmp_path / "False")
    assert [r["backbone_trainable"] for r in a] == [r["backbone_trainable"] for r in b] == (["0", "0", "0"] if strategy == "fixed" else ["0", "1", "1"])
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([float(r[key]) for r in a], [float(r[key]) for r in b], rtol=1e-5)
    wa, wb = _weights(tmp_path / "True"), _weights(tmp_path / "False")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    np.testing.assert_allclose(_predictions(tmp_path / "True")["pred_pt"], _predictions(tmp_path / "False")["pred_pt"], rtol=1e-4)


def test_a_cache_over_its_limit_runs_uncached_with_a_warning(world, tmp_path, caplog):  # noqa: F811
    _, shards, backbone = world
    reference = run_finetune("pt_regression", "fixed", 200, 0, shards, tmp_path / "uncached", _settings(cache_frozen_backbone=False), backbone)
    with caplog.at_level(logging.WARNING, logger="taufm.finetune.frozen"):
        none = run_finetune("pt_regression", "fixed", 200, 0, shards, tmp_path / "none", _settings(cache_max_mb=0), backbone)
    assert none["frozen_backbone_cache"] == {"train_jets": 0, "val_jets": 0, "megabytes": 0.0}
    assert "finetune.cache_max_mb = 0" in caplog.text
    assert (tmp_path / "none" / "history.csv").read_text() == (tmp_path / "uncached" / "history.csv").read_text(), "the uncached path exactly"
    assert none["best_val_loss"] == reference["best_val_loss"]
    # Room for the training jets (200 x 10 tokens x 16 floats) but not also the validation jets.
    train_mb = 200 * 10 * 16 * 4 / 2**20
    part = run_finetune("pt_regression", "fixed", 200, 0, shards, tmp_path / "part", _settings(cache_max_mb=train_mb * 1.1), backbone)
    assert part["frozen_backbone_cache"]["train_jets"] == 200 and part["frozen_backbone_cache"]["val_jets"] == 0
    assert part["frozen_backbone_cache"]["megabytes"] == pytest.approx(train_mb)


def test_strategies_that_train_the_backbone_cache_nothing(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    for strategy in ("scratch", "finetune-unfreeze0"):
        summary = run_finetune("pt_regression", strategy, 100, 0, shards, tmp_path / strategy, _settings(epochs=1), backbone)
        assert summary["frozen_backbone_cache"]["train_jets"] == 0, strategy


# ---- validation on a subset, the kept model on the whole set ----


def test_validation_subset_is_seeded_sorted_and_none_when_it_is_everything():
    a = validation_subset(1000, 100, 0)
    assert len(a) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(a, validation_subset(1000, 100, 0))
    assert not np.array_equal(a, validation_subset(1000, 100, 1))
    assert validation_subset(1000, None, 0) is None and validation_subset(1000, 1000, 0) is None and validation_subset(50, 1000, 0) is None


def test_each_epoch_on_the_subset_the_kept_model_on_the_whole_set(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    settings = _settings(val_subset_jets=20)
    summary = run_finetune("pt_regression", "finetune", 200, 0, shards, tmp_path, settings, backbone)
    spec = task_settings("pt_regression", None)
    val = load_task_data("pt_regression", spec, shards, spec.train_samples, "val", ("tokens", "token_mask"))
    n_val = len(val["target"])
    assert summary["val_jets"] == n_val > 20 and summary["val_subset_jets"] == 20

    rows = _history(tmp_path)
    losses = [float(r["val_loss"]) for r in rows]
    assert summary["best_epoch"] == int(np.argmin(losses)) and summary["best_val_loss_subset"] == min(losses)
    assert [r["val_loss_full"] != "" for r in rows] == [i == summary["best_epoch"] for i in range(len(rows))], "on the kept epoch's row only"
    assert float(rows[summary["best_epoch"]]["val_loss_full"]) == summary["best_val_loss"]
    assert list(rows[0])[list(rows[0]).index("val_loss") + 1] == "val_loss_full"

    # The kept model, evaluated here on all validation jets and on the subset.
    model = build_model("pt_regression", parse_strategy("finetune", 1), settings, backbone, seed=0)
    model.load_state_dict(_weights(tmp_path))
    x, m = model_inputs(parse_strategy("finetune", 1), val)
    outputs = torch.from_numpy(module.evaluate_outputs(model, x, m, 64, torch.device("cpu")))
    target = torch.from_numpy(val["target"])
    assert float(loss("pt_regression", outputs, target, spec)) == pytest.approx(summary["best_val_loss"], rel=1e-6)
    subset = validation_subset(n_val, 20, 0)
    assert float(loss("pt_regression", outputs[subset], target[subset], spec)) == pytest.approx(summary["best_val_loss_subset"], rel=1e-5)
    kept = torch.load(tmp_path / "model.pt", weights_only=True)["best"]
    assert kept["val_loss_full"] == summary["best_val_loss"] and kept["epoch"] == summary["best_epoch"]


def test_without_a_subset_the_whole_set_judges_every_epoch_and_max_val_jets_caps_it(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    summary = run_finetune("pt_regression", "fixed", 100, 0, shards, tmp_path / "all", _settings(val_subset_jets=None, max_val_jets=30), backbone)
    assert summary["val_jets"] == summary["val_subset_jets"] == 30
    assert summary["best_val_loss"] == summary["best_val_loss_subset"]
    rows = _history(tmp_path / "all")
    assert float(rows[summary["best_epoch"]]["val_loss_full"]) == float(rows[summary["best_epoch"]]["val_loss"])


# ---- compute accounting ----


def test_the_summary_states_what_training_cost(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    runs = {
        "fixed": run_finetune("pt_regression", "fixed", 100, 0, shards, tmp_path / "fixed", SETTINGS, backbone),
        "fixed-uncached": run_finetune("pt_regression", "fixed", 100, 0, shards, tmp_path / "fixed-uncached", _settings(cache_frozen_backbone=False), backbone),
        "finetune": run_finetune("pt_regression", "finetune", 100, 0, shards, tmp_path / "finetune", SETTINGS, backbone),
        "part": run_finetune("pt_regression", "part", 100, 0, shards, tmp_path / "part", SETTINGS),
    }
    for name, summary in runs.items():
        on_disk = json.loads((tmp_path / name / "summary.json").read_text())
        for key in ("device_seconds", "wall_seconds", "jets_trained", "jets_per_second", "peak_memory_mb", "peak_memory_kind", "training_seconds", "train_flops_estimate", "validation_flops_estimate"):
            assert key in on_disk, (name, key)
        assert summary["jets_trained"] == 100 * SETTINGS.epochs
        assert summary["jets_per_second"] > 0 and summary["device_seconds"] >= summary["training_seconds"] > 0
        assert summary["peak_memory_kind"] == "cpu_max_rss" and summary["peak_memory_mb"] > 0
        assert summary["head_flops_per_jet"] + summary["backbone_flops_per_jet"] == summary["flops_per_jet"]
    epochs, n, v = SETTINGS.epochs, 100, runs["fixed"]["val_jets"]
    head, bb, full = (runs["fixed"][k] for k in ("head_flops_per_jet", "backbone_flops_per_jet", "flops_per_jet"))
    assert bb > 0 and head > 0
    # Cached: the head's forward + backward every epoch, the backbone once per cached jet.
    assert runs["fixed"]["train_flops_estimate"] == pytest.approx(3 * head * n * epochs + bb * n)
    assert runs["fixed"]["validation_flops_estimate"] == pytest.approx(head * v * epochs + bb * v)
    # Uncached: the frozen backbone's forward and the head's 3x every epoch.
    assert runs["fixed-uncached"]["train_flops_estimate"] == pytest.approx((bb + 3 * head) * n * epochs)
    assert runs["fixed-uncached"]["validation_flops_estimate"] == pytest.approx(full * v * epochs)
    # finetune (unfreeze_epoch 1): one cached epoch, then the whole model's 3x.
    assert runs["finetune"]["train_flops_estimate"] == pytest.approx(3 * head * n + bb * n + 3 * full * n * (epochs - 1))
    assert runs["part"]["backbone_flops_per_jet"] == 0
    assert runs["part"]["train_flops_estimate"] == pytest.approx(3 * runs["part"]["flops_per_jet"] * n * epochs)


def test_flop_estimates_count_each_kind_of_pass():
    counts = PassCounts(trained=10, trained_frozen=20, trained_cached=30, cached=40, validated=5, validated_cached=6, cached_val=7)
    estimates = flop_estimates(counts, flops_per_jet=100.0, backbone_flops_per_jet=60.0)
    assert estimates["train_flops_estimate"] == 3 * 100 * 10 + (60 + 3 * 40) * 20 + 3 * 40 * 30 + 60 * 40
    assert estimates["validation_flops_estimate"] == 100 * 5 + 40 * 6 + 60 * 7


# ---- killed and resumed: still bitwise the uninterrupted cell ----


@pytest.mark.parametrize(
    "strategy, changes",
    [
        ("fixed", {}),  # killed in a cached epoch, resumed into cached epochs: the cache is recomputed
        ("finetune", {"unfreeze_epoch": 2}),  # resumed into the last cached epoch, then unfrozen
        ("finetune", {"cache_frozen_backbone": False}),
    ],
)
def test_a_killed_cell_with_cache_and_subset_resumes_bitwise(world, tmp_path, monkeypatch, strategy, changes):  # noqa: F811
    _, shards, backbone = world
    settings = _settings(val_subset_jets=25, **changes)
    full = run_finetune("pt_regression", strategy, 120, 0, shards, tmp_path / "full", settings, backbone)
    real = module.evaluate_outputs
    calls = {"n": 0}

    def killed_at_the_second_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate_outputs", killed_at_the_second_validation)
    with pytest.raises(KeyboardInterrupt):
        run_finetune("pt_regression", strategy, 120, 0, shards, tmp_path / "resumed", settings, backbone)
    monkeypatch.setattr(module, "evaluate_outputs", real)
    state = torch.load(tmp_path / "resumed" / module.LAST_CHECKPOINT, weights_only=True)
    assert state["epoch"] == 0 and not (tmp_path / "resumed" / "model.pt").exists()
    assert set(state) == {"config", "model", "optimizer", "scheduler", "generator", "rng", "epoch", "finished", "best", "best_state", "stale", "history"}, "no cache in it"

    resumed = run_finetune("pt_regression", strategy, 120, 0, shards, tmp_path / "resumed", settings, backbone)
    if settings.cache_frozen_backbone and strategy == "fixed":
        assert resumed["frozen_backbone_cache"]["train_jets"] == 120, "recomputed on resume"
    assert resumed["jets_trained"] == 120 * (settings.epochs - 1), "this process's epochs"
    for key in ("best_epoch", "best_val_loss", "best_val_loss_subset"):
        assert resumed[key] == full[key], key
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("history.csv", "config.json", "predictions.parquet"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    assert math.isfinite(full["best_val_loss"])
