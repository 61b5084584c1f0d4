"""Tasks (targets, losses, predictions, metrics, settings) and task data (cuts, loading, subsets)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from taufm.errors import TaufmError
from taufm.finetune.data import JET_COLUMNS, load_task_data, nested_subset, select_jets
from taufm.finetune.tasks import (
    TASK_NAMES,
    default_task_settings,
    epoch_metrics,
    loss,
    n_outputs,
    predict,
    targets,
    task_settings,
)
from taufm.ingest.shards import SPLITS, write_shard
from taufm.physics.tau import DECAY_MODE_NAMES


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# --- settings -----------------------------------------------------------------------------------


def test_default_settings_follow_spec():
    tau_id = default_task_settings("tau_id")
    assert tau_id.train_samples == ("Z_Ztautau", "qq")
    assert tau_id.test_samples == ("Z_Ztautau", "ZH_Htautau", "qq")
    assert (tau_id.min_jet_pt, tau_id.signal_only) == (20.0, False)
    assert (tau_id.focal_gamma, tau_id.class_weights) == (2.0, (10.0, 1.0))
    reg = default_task_settings("pt_regression")
    assert (reg.train_samples, reg.test_samples) == (("Z_Ztautau",), ("Z_Ztautau", "ZH_Htautau"))
    assert (reg.min_jet_pt, reg.signal_only, reg.huber_delta) == (0.0, True, 1.0)
    dm = default_task_settings("decay_mode")
    assert (dm.train_samples, dm.test_samples) == (("Z_Ztautau",), ("Z_Ztautau", "ZH_Htautau"))
    assert (dm.min_jet_pt, dm.signal_only) == (5.0, True)
    assert [n_outputs(t) for t in TASK_NAMES] == [1, 1, 6]


def test_overrides_apply_and_are_checked():
    settings = task_settings("tau_id", {"min_jet_pt": 30, "class_weights": [5, 2], "train_samples": ["qq"]})
    assert settings.min_jet_pt == 30.0 and settings.class_weights == (5.0, 2.0)
    assert settings.train_samples == ("qq",)
    assert settings.to_dict()["class_weights"] == [5.0, 2.0]
    assert task_settings("decay_mode", None) == default_task_settings("decay_mode")
    with pytest.raises(TaufmError, match="min_jet_ptt"):
        task_settings("tau_id", {"min_jet_ptt": 10})
    with pytest.raises(TaufmError, match="class_weights"):
        task_settings("tau_id", {"class_weights": [1.0]})
    with pytest.raises(TaufmError, match="train_samples"):
        task_settings("tau_id", {"train_samples": "qq"})
    with pytest.raises(TaufmError, match="huber_delta"):
        task_settings("pt_regression", {"huber_delta": 0})


@pytest.mark.parametrize(
    "call",
    [
        lambda: default_task_settings("tau_idd"),
        lambda: task_settings("tau_idd", {}),
        lambda: n_outputs("tau_idd"),
        lambda: targets("tau_idd", {}),
        lambda: predict("tau_idd", np.zeros((1, 1)), {}),
        lambda: select_jets("tau_idd", default_task_settings("tau_id"), {"jet_pt": np.ones(1)}),
    ],
)
def test_unknown_task_is_named(call):
    with pytest.raises(TaufmError, match="tau_idd") as err:
        call()
    assert all(name in str(err.value) for name in TASK_NAMES)


# --- losses against hand computations -----------------------------------------------------------


def test_focal_loss_by_hand():
    out = np.array([2.0, -1.0, 0.5, -3.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    settings = dataclasses.replace(default_task_settings("tau_id"), focal_gamma=2.0, class_weights=(10.0, 1.0))
    p = _sigmoid(out)
    p_t = np.where(y == 1, p, 1 - p)
    w = np.where(y == 1, 1.0, 10.0)
    expected = np.mean(-w * (1 - p_t) ** 2 * np.log(p_t))
    got = loss("tau_id", torch.tensor(out[:, None], dtype=torch.float32), torch.tensor(y, dtype=torch.float32), settings)
    assert got.shape == () and got.item() == pytest.approx(expected, rel=1e-5)
    # one jet with a logit of 0 and y = 1: 1 * 0.5^2 * log 2
    one = loss("tau_id", torch.zeros(1, 1), torch.ones(1), settings)
    assert one.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    # gamma 0 and unit weights: plain binary cross entropy
    bce_settings = dataclasses.replace(settings, focal_gamma=0.0, class_weights=(1.0, 1.0))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(out), torch.tensor(y))
    assert loss("tau_id", torch.tensor(out[:, None]), torch.tensor(y), bce_settings).item() == pytest.approx(bce.item(), rel=1e-6)
    # stable for extreme logits
    extreme = loss("tau_id", torch.tensor([[200.0], [-200.0]]), torch.tensor([0.0, 1.0]), settings)
    assert torch.isfinite(extreme) and extreme.item() == pytest.approx((10 * 200 + 200) / 2, rel=1e-5)


def test_huber_loss_by_hand():
    out = torch.tensor([[0.2], [2.0], [-1.5]])
    target = torch.zeros(3)
    settings = default_task_settings("pt_regression")
    # |d| <= 1: d^2/2; otherwise |d| - 1/2
    assert loss("pt_regression", out, target, settings).item() == pytest.approx((0.02 + 1.5 + 1.0) / 3, rel=1e-6)
    half = dataclasses.replace(settings, huber_delta=0.5)
    # delta 0.5: 0.2 -> 0.02; 2.0 -> 0.5 * (2 - 0.25); 1.5 -> 0.5 * (1.5 - 0.25)
    assert loss("pt_regression", out, target, half).item() == pytest.approx((0.02 + 0.875 + 0.625) / 3, rel=1e-6)


def test_cross_entropy_by_hand():
    out = np.array(
        [
            [2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.1, 0.2, 3.0, -1.0, 0.0, 0.5],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    y = np.array([0, 3, 5])
    log_softmax = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(3), y])
    got = loss("decay_mode", torch.tensor(out, dtype=torch.float32), torch.tensor(y), default_task_settings("decay_mode"))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the uniform row alone: log 6
    assert loss("decay_mode", torch.zeros(1, 6), torch.tensor([4]), default_task_settings("decay_mode")).item() == pytest.approx(math.log(6))


# --- targets and predictions ---------------------------------------------------------------------


def test_targets_by_hand():
    columns = {
        "label": np.array([1, 0, 1], dtype=np.int8),
        "jet_pt": np.array([20.0, 30.0, 40.0], dtype=np.float32),
        "gen_tau_vis_pt": np.array([10.0, np.nan, 40.0], dtype=np.float32),
        "decay_mode": np.array([3, 0, 5], dtype=np.int8),
    }
    tau_id = targets("tau_id", columns)
    assert tau_id.dtype == np.float32 and tau_id.tolist() == [1.0, 0.0, 1.0]
    reg = targets("pt_regression", {c: v[[0, 2]] for c, v in columns.items()})
    assert reg.dtype == np.float32 and np.allclose(reg, [math.log(0.5), 0.0])
    dm = targets("decay_mode", columns)
    assert dm.dtype == np.int64 and dm.tolist() == [3, 0, 5]
    with pytest.raises(TaufmError, match="decay_mode"):
        targets("decay_mode", {"decay_mode": np.array([1, -1])})
    with pytest.raises(TaufmError, match="gen_tau_vis_pt"):
        targets("pt_regression", {"jet_pt": np.ones(2)})


def test_predict_by_hand():
    assert np.allclose(predict("tau_id", np.array([[0.0], [2.0]]), {})["score"], [0.5, _sigmoid(2.0)])
    extreme = predict("tau_id", np.array([-1000.0, 1000.0]), {})["score"]
    assert extreme.tolist() == [0.0, 1.0]
    reg = predict("pt_regression", np.array([[0.0], [math.log(2)], [-math.log(4)]]), {"jet_pt": np.array([10.0, 20.0, 40.0])})
    assert np.allclose(reg["pred_pt"], [10.0, 40.0, 10.0]) and np.allclose(reg["pred_log_ratio"], [0.0, math.log(2), -math.log(4)])
    out = np.array([[0.0, 0.0, 5.0, 0.0, 0.0, 0.0], [0.0] * 5 + [1.0]])
    dm = predict("decay_mode", out, {})
    assert dm["pred_decay_mode"].tolist() == [2, 5]
    assert set(dm) == {"pred_decay_mode", *(f"prob_{n}" for n in DECAY_MODE_NAMES)}
    probs = np.stack([dm[f"prob_{n}"] for n in DECAY_MODE_NAMES], axis=1)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[1, 5] == pytest.approx(math.e / (5 + math.e))


# --- per-epoch metrics ---------------------------------------------------------------------------


def _pair_auc(y, score):
    """ROC AUC by counting (positive, negative) pairs, ties as one half."""
    pos, neg = score[y], score[~y]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_tau_id_auc():
    y = np.array([0, 0, 1, 1, 0], dtype=np.float32)
    assert epoch_metrics("tau_id", np.array([[-2.0], [-1.0], [1.0], [3.0], [0.5]]), y, {}) == {"auc": 1.0}
    assert epoch_metrics("tau_id", np.array([[2.0], [1.0], [-1.0], [-3.0], [0.5]]), y, {})["auc"] == 0.0
    mixed = np.array([-2.0, 1.5, 1.0, 3.0, 0.5])
    assert epoch_metrics("tau_id", mixed, y, {})["auc"] == pytest.approx(_pair_auc(y.astype(bool), mixed))
    assert math.isnan(epoch_metrics("tau_id", np.array([[0.1], [0.2]]), np.ones(2, dtype=np.float32), {})["auc"])


def test_pt_regression_response_and_resolution():
    ratio = np.array([1.2, 0.8, 1.0, 0.9, 1.1])
    gen = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    jet = np.array([20.0, 10.0, 30.0, 50.0, 40.0])
    out = np.log(ratio * gen / jet)[:, None]  # pred_pt / gen = ratio
    metrics = epoch_metrics("pt_regression", out, np.log(gen / jet), {"jet_pt": jet, "gen_tau_vis_pt": gen})
    assert metrics["response_median"] == pytest.approx(1.0, rel=1e-6)
    assert metrics["resolution_iqr"] == pytest.approx(1.1 - 0.9, rel=1e-5)
    empty = epoch_metrics("pt_regression", np.zeros((0, 1)), np.zeros(0), {"jet_pt": np.zeros(0), "gen_tau_vis_pt": np.zeros(0)})
    assert all(math.isnan(v) for v in empty.values())


def test_decay_mode_accuracy_and_weighted_auc():
    y = np.array([0, 0, 1, 3])
    out = np.zeros((4, 6))
    out[0, 0], out[1, 1], out[2, 1], out[3, 3] = 3.0, 2.0, 4.0, 1.0  # jet 1 misclassified
    metrics = epoch_metrics("decay_mode", out, y, {})
    assert metrics["accuracy"] == pytest.approx(0.75)
    dm = predict("decay_mode", out, {})
    aucs = {c: _pair_auc(y == c, dm[f"prob_{DECAY_MODE_NAMES[c]}"]) for c in (0, 1, 3)}
    expected = (2 * aucs[0] + aucs[1] + aucs[3]) / 4
    assert metrics["auc_weighted"] == pytest.approx(expected)
    perfect = np.eye(6)[y] * 5
    assert epoch_metrics("decay_mode", perfect, y, {}) == {"accuracy": 1.0, "auc_weighted": 1.0}
    single = epoch_metrics("decay_mode", perfect[:2], y[:2], {})
    assert single["accuracy"] == 1.0 and math.isnan(single["auc_weighted"])


# --- cuts and subsets ----------------------------------------------------------------------------


def test_select_jets_per_task():
    columns = {
        "jet_pt": np.array([3.0, 10.0, 25.0, 30.0, 22.0, 0.0]),
        "label": np.array([1, 1, 0, 1, 1, 1]),
        "gen_tau_vis_pt": np.array([5.0, 8.0, np.nan, 0.0, np.inf, 4.0]),
    }
    assert select_jets("tau_id", default_task_settings("tau_id"), columns).tolist() == [False, False, True, True, True, False]
    assert select_jets("decay_mode", default_task_settings("decay_mode"), columns).tolist() == [False, True, False, True, True, False]
    # pt regression: no pT cut, but a finite target (generator and jet pT positive and finite)
    assert select_jets("pt_regression", default_task_settings("pt_regression"), columns).tolist() == [True, True, False, False, False, False]
    with pytest.raises(TaufmError, match="label"):
        select_jets("decay_mode", default_task_settings("decay_mode"), {"jet_pt": np.ones(2)})


def test_nested_subsets():
    small, medium, large = (nested_subset(5000, n, seed=3) for n in (10, 100, 1000))
    assert len(small) == 10 and len(set(large.tolist())) == 1000 and large.max() < 5000
    assert set(small) <= set(medium) <= set(large)
    assert np.array_equal(medium[:10], small) and np.array_equal(large[:100], medium)
    assert np.array_equal(nested_subset(5000, 100, seed=3), medium)
    assert not np.array_equal(nested_subset(5000, 100, seed=4), medium)
    with pytest.raises(TaufmError, match="1001") as err:
        nested_subset(1000, 1001, seed=0)
    assert "1000" in str(err.value)
    with pytest.raises(TaufmError):
        nested_subset(1000, 0, seed=0)


# --- loading task data from shards ---------------------------------------------------------------

ROWS = 12
WIDTH = 6


def _shard_columns(sample: str, shard: int, signal: bool) -> dict[str, np.ndarray]:
    rows = np.arange(ROWS)
    label = (rows % 2 == 0).astype(np.int8) if signal else np.zeros(ROWS, dtype=np.int8)
    gen_pt = np.where(label == 1, 10.0 + rows, np.nan).astype(np.float32)
    tokens = (1000 * shard + rows[:, None] * 10 + np.arange(WIDTH)[None, :]).astype(np.int32)
    return {
        "sample": np.array([sample] * ROWS, dtype=object),
        "file": np.array([f"{sample}_{shard:03d}.root"] * ROWS, dtype=object),
        "event": (1000 * shard + rows).astype(np.int64),
        "jet_index": (rows % 2).astype(np.int16),
        "split": (rows % 3).astype(np.int8),
        "label": label,
        "decay_mode": np.where(label == 1, rows % 6, -1).astype(np.int8),
        "jet_pt": (4.0 * rows).astype(np.float32),  # 0, 4, ..., 44
        "jet_eta": np.zeros(ROWS, dtype=np.float32),
        "jet_phi": np.zeros(ROWS, dtype=np.float32),
        "jet_energy": (5.0 * rows).astype(np.float32),
        "gen_tau_vis_pt": gen_pt,
        "gen_tau_charge": np.where(label == 1, 1.0, 0.0).astype(np.float32),
        "n_tokens": np.full(ROWS, WIDTH, dtype=np.int16),
        "tokens": tokens,
        "token_mask": np.ones((ROWS, WIDTH), dtype=bool),
    }


@pytest.fixture(scope="module")
def task_shards(tmp_path_factory):
    """Token-shard-like files: Z_Ztautau in two shards (tau and non-tau jets), qq in one."""
    root = tmp_path_factory.mktemp("finetune_shards")
    layout = {"Z_Ztautau": (True, [0, 1]), "qq": (False, [0])}
    shards, columns = {}, {}
    for sample, (signal, numbers) in layout.items():
        shards[sample] = []
        for number in numbers:
            path = root / sample / f"{sample}_{number:03d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            columns[(sample, number)] = _shard_columns(sample, number, signal)
            write_shard(path, columns[(sample, number)], {"sample": sample})
            shards[sample].append(path)
    return shards, columns


def _expected_rows(columns, order, split, keep):
    """(sample, event) of the rows to expect, by a plain loop over samples, shards and rows."""
    rows = []
    for sample, number in order:
        c = columns[(sample, number)]
        for i in range(ROWS):
            if c["split"][i] == SPLITS.index(split) and keep(c, i):
                rows.append((sample, int(c["event"][i])))
    return rows


def test_load_task_data_rows_order_and_target(task_shards):
    shards, columns = task_shards
    settings = default_task_settings("tau_id")
    data = load_task_data("tau_id", settings, shards, ["Z_Ztautau", "qq"], "train", extra_columns=("tokens", "token_mask"))
    assert set(data) == {*JET_COLUMNS, "tokens", "token_mask", "target"}
    order = [("Z_Ztautau", 0), ("Z_Ztautau", 1), ("qq", 0)]
    expected = _expected_rows(columns, order, "train", lambda c, i: c["jet_pt"][i] >= 20)
    assert list(zip(data["sample"].tolist(), data["event"].tolist(), strict=True)) == expected
    assert np.all(data["split"] == 0)
    assert data["tokens"].shape == (len(expected), WIDTH) and data["tokens"].dtype == np.int32
    shard, row = np.divmod(data["event"], 1000)
    assert np.array_equal(data["tokens"][:, 0], 1000 * shard + 10 * row)
    assert np.array_equal(data["target"], data["label"].astype(np.float32))
    # reversed sample order: qq rows first
    flipped = load_task_data("tau_id", settings, shards, ["qq", "Z_Ztautau"], "train")
    assert flipped["sample"].tolist() == ["qq"] * 2 + ["Z_Ztautau"] * (len(expected) - 2)


@pytest.mark.parametrize("split", SPLITS)
def test_load_task_data_tau_only_tasks(task_shards, split):
    shards, columns = task_shards
    order = [("Z_Ztautau", 0), ("Z_Ztautau", 1)]
    reg = load_task_data("pt_regression", default_task_settings("pt_regression"), shards, ["Z_Ztautau"], split)
    assert list(zip(reg["sample"], reg["event"].tolist(), strict=True)) == _expected_rows(columns, order, split, lambda c, i: c["label"][i] == 1 and c["jet_pt"][i] > 0)
    assert np.allclose(reg["target"], np.log(reg["gen_tau_vis_pt"] / reg["jet_pt"])) and reg["target"].dtype == np.float32
    dm = load_task_data("decay_mode", default_task_settings("decay_mode"), shards, ["Z_Ztautau"], split)
    expected = _expected_rows(columns, order, split, lambda c, i: c["label"][i] == 1 and c["jet_pt"][i] >= 5)
    assert list(zip(dm["sample"], dm["event"].tolist(), strict=True)) == expected
    assert dm["target"].dtype == np.int64 and np.array_equal(dm["target"], dm["decay_mode"])


def test_load_task_data_errors(task_shards):
    shards, _ = task_shards
    settings = default_task_settings("tau_id")
    with pytest.raises(TaufmError, match="ZH_Htautau"):
        load_task_data("tau_id", settings, shards, ["Z_Ztautau", "ZH_Htautau"], "test")
    with pytest.raises(TaufmError, match="cand_pt") as err:
        load_task_data("tau_id", settings, shards, ["qq"], "test", extra_columns=("cand_pt",))
    assert "qq_000.parquet" in str(err.value)
    with pytest.raises(TaufmError, match="Z_Ztautau"):
        load_task_data("tau_id", settings, {"qq": shards["Z_Ztautau"]}, ["qq"], "test")
    with pytest.raises(TaufmError, match="no .*jets"):
        load_task_data("pt_regression", default_task_settings("pt_regression"), shards, ["qq"], "train")
    with pytest.raises(TaufmError, match="tau_idd"):
        load_task_data("tau_idd", settings, shards, ["qq"], "train")
