"""Compute accounting (issue 16): every training stage records what it cost — device-seconds,
jets per second, peak memory, parameters and forward FLOPs per jet — and no timing enters a
checkpoint (two runs with one seed must still write byte-identical models)."""

from __future__ import annotations

import json
import math

import torch

from taufm.train.runtime import ComputeMeter, forward_flops_per_jet

from .test_pretrain import pretrained  # noqa: F401 (the fixture)
from .test_tokenizer import trained  # noqa: F401 (the fixture)

COST_KEYS = ("device_seconds", "wall_seconds", "jets_trained", "jets_per_second", "peak_memory_mb", "peak_memory_kind")


def test_compute_meter_counts_jets_seconds_and_devices():
    meter = ComputeMeter("cpu", devices=2)
    for _ in range(3):
        meter.add_jets(64)
    cost = meter.summary()
    assert set(cost) == set(COST_KEYS)
    assert cost["jets_trained"] == 3 * 64 * 2, "each of the 2 data-parallel processes saw its 192 jets"
    assert cost["device_seconds"] == 2 * cost["wall_seconds"] > 0
    assert cost["jets_per_second"] == cost["jets_trained"] / cost["wall_seconds"]
    assert cost["peak_memory_kind"] == "cpu_max_rss" and cost["peak_memory_mb"] > 10


def test_flops_of_a_linear_layer_are_exact():
    layer = torch.nn.Linear(8, 4)
    assert forward_flops_per_jet(layer, torch.zeros(5, 8)) == 2 * 8 * 4  # one multiply-add = 2 FLOPs


def test_the_tokenizer_summary_states_its_cost(trained):  # noqa: F811
    _, _, summary = trained
    assert summary["jets_trained"] == 3 * summary["training_jets"]  # 3 epochs
    assert summary["device_seconds"] > 0 and summary["jets_per_second"] > 0
    assert summary["flops_per_jet"] > 0 and summary["n_parameters"] > summary["flops_per_jet"] / 1e6
    assert not math.isnan(summary["peak_memory_mb"])


def test_pretraining_states_its_cost_beside_the_checkpoints_not_in_them(pretrained):  # noqa: F811
    d, summary = pretrained
    cost = json.loads((d / "out" / "model_config.json").read_text())["cost"]
    assert cost["device_seconds"] > 0 and cost["jets_trained"] > 0 and cost["flops_per_jet"] > 0
    assert cost["n_parameters"] == sum(p.numel() for p in torch.load(d / "out" / "backbone.pt", weights_only=True)["backbone"].values())
    for name in ("backbone.pt", "backbone_best.pt"):
        payload = torch.load(d / "out" / name, weights_only=True)
        assert "device_seconds" not in json.dumps(payload["config"], default=str), f"{name} holds a timing"
