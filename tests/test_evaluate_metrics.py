"""Test-set metrics of fine-tuning runs (taufm.evaluate.metrics), checked against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taufm.errors import TaufmError
from taufm.evaluate import metrics as m
from taufm.physics.tau import DECAY_MODE_NAMES

NAN = float("nan")

# A ROC worked out by hand: 4 taus, 5 background jets, one tau tied with a background jet (0.4).
# Points (TPR, FPR) for thresholds 0.9 .. 0.2: (.25,0) (.25,.2) (.5,.2) (.5,.4) (.75,.4) (.75,.6)
# (1,.8) (1,1). AUC by pairs: (5 + 4 + 3 + 1 + 0.5) / 20 = 0.675.
TAU_SCORES = [0.9, 0.8, 0.6, 0.4]
BKG_SCORES = [0.85, 0.7, 0.5, 0.4, 0.2]

# Decay modes: classes 0, 1 and 3 present (2, 3 and 1 jets), 2, 4 and 5 absent.
DM_TRUE = [0, 0, 1, 1, 1, 3]
DM_COLUMNS = {
    0: [0.9, 0.4, 0.5, 0.1, 0.1, 0.1],  # positives 0.9, 0.4 vs 0.5, 0.1, 0.1, 0.1: 7/8
    1: [0.05, 0.3, 0.4, 0.8, 0.3, 0.2],  # positives 0.4, 0.8, 0.3 vs 0.05, 0.3, 0.2: 8.5/9
    3: [0.0, 0.1, 0.05, 0.05, 0.5, 0.6],  # positive 0.6 above all: 1
}
DM_AUCS = {0: 7 / 8, 1: 8.5 / 9, 3: 1.0}
DM_WEIGHTED = (2 * 7 / 8 + 3 * 8.5 / 9 + 1 * 1.0) / 6


def _dm_probabilities() -> np.ndarray:
    probs = np.full((len(DM_TRUE), len(DECAY_MODE_NAMES)), 0.01)
    for c, column in DM_COLUMNS.items():
        probs[:, c] = column
    return probs


def _binary(tau, bkg):
    return np.array([1] * len(tau) + [0] * len(bkg)), np.array(tau + bkg, dtype=float)


# --- binary classification -------------------------------------------------------------------


def test_auc_counts_ties_as_one_half():
    assert m.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)
    assert m.roc_auc(*_binary(TAU_SCORES, BKG_SCORES)) == pytest.approx(0.675)


def test_auc_and_misid_are_nan_without_both_classes():
    assert math.isnan(m.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(m.roc_auc([0, 0], [0.2, 0.5]))
    assert math.isnan(m.misid_at_efficiency([1, 1], [0.2, 0.5], 0.8))
    assert math.isnan(m.roc_auc([0, 1], [0.2, NAN]))  # a diverged model: NaN, not an exception
    tpr, fpr = m.roc_curve([1, 1], [0.2, 0.5])
    assert tpr.size == 0 and fpr.size == 0


def test_roc_curve_points():
    tpr, fpr = m.roc_curve(*_binary(TAU_SCORES, BKG_SCORES))
    np.testing.assert_allclose(tpr, [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.8, 1])


def test_misid_interpolates_between_the_points_around_the_efficiency():
    label, score = _binary(TAU_SCORES, BKG_SCORES)
    # 0.8 lies between (0.75, 0.6) and (1, 0.8): 0.6 + (0.05 / 0.25) * 0.2.
    assert m.misid_at_efficiency(label, score, 0.8) == pytest.approx(0.64)
    assert m.misid_at_efficiency(label, score) == pytest.approx(0.64)  # DEFAULT_EFFICIENCY
    # 0.6 lies between (0.5, 0.4) and (0.75, 0.4).
    assert m.misid_at_efficiency(label, score, 0.6) == pytest.approx(0.4)
    # 0.5 is reached exactly at FPR 0.2 and 0.4: the working point is the lower one.
    assert m.misid_at_efficiency(label, score, 0.5) == pytest.approx(0.2)
    assert m.misid_at_efficiency(label, score, 0.0) == 0.0
    assert m.misid_at_efficiency(label, score, 1.0) == pytest.approx(0.8)
    with pytest.raises(TaufmError, match="efficiency"):
        m.misid_at_efficiency(label, score, 1.5)


# --- pT regression ---------------------------------------------------------------------------


def test_response_resolution_of_a_known_ratio_array():
    # Ratios 0.8, 0.9, 1.0, 1.1, 1.3 plus an infinite one (true = 0) and a NaN one: left out.
    pred = [8.0, 9.0, 10.0, 11.0, 13.0, 5.0, NAN]
    true = [10.0, 10.0, 10.0, 10.0, 10.0, 0.0, 10.0]
    r = m.response_resolution(np.array(pred), np.array(true))
    assert r["n"] == 5
    assert r["response"] == pytest.approx(1.0)
    assert r["iqr"] == pytest.approx(0.2)  # q75 = 1.1, q25 = 0.9 (linear interpolation)
    assert r["iqr_over_median"] == pytest.approx(0.2)
    empty = m.response_resolution(np.array([1.0]), np.array([0.0]))
    assert empty["n"] == 0 and math.isnan(empty["response"]) and math.isnan(empty["iqr"])


def test_response_in_bins():
    gen_pt = np.array([5.0, 15.0, 20.0, 40.0, 50.0])
    pred = np.array([4.0, 18.0, 22.0, 40.0, 100.0])  # ratios 0.8, 1.2 | 1.1, 1.0 | 2.0 (outside)
    rows = m.response_in_bins(pred, gen_pt, gen_pt, [0.0, 20.0, 40.0, 60.0, 80.0])
    assert [(r["bin_low"], r["bin_high"]) for r in rows] == [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert [r["n"] for r in rows] == [2, 1, 2, 0]
    assert rows[0]["response"] == pytest.approx(1.0)
    assert rows[0]["iqr"] == pytest.approx(0.2)  # q75 - q25 of (0.8, 1.2): 1.1 - 0.9
    assert rows[1]["response"] == pytest.approx(1.1)
    assert rows[2]["response"] == pytest.approx(1.5)
    assert math.isnan(rows[3]["response"])
    last = m.response_in_bins(pred, gen_pt, gen_pt, [20.0, 40.0])  # the last bin includes its upper edge
    assert last[0]["n"] == 2
    with pytest.raises(TaufmError, match="edges"):
        m.response_in_bins(pred, gen_pt, gen_pt, [10.0, 5.0])


# --- decay modes -----------------------------------------------------------------------------


def test_decay_mode_aucs_with_absent_classes():
    aucs = m.decay_mode_aucs(np.array(DM_TRUE), _dm_probabilities())
    for c, name in enumerate(DECAY_MODE_NAMES):
        if c in DM_AUCS:
            assert aucs[name] == pytest.approx(DM_AUCS[c])
        else:
            assert math.isnan(aucs[name])
    assert aucs["weighted"] == pytest.approx(DM_WEIGHTED)


def test_decay_mode_aucs_with_one_class_only():
    aucs = m.decay_mode_aucs(np.array([2, 2, 2]), np.full((3, 6), 1 / 6))
    assert all(math.isnan(v) for v in aucs.values())
    with pytest.raises(TaufmError, match="shape"):
        m.decay_mode_aucs(np.array([0, 1]), np.zeros((2, 5)))


def test_confusion_counts():
    counts = m.confusion(np.array([0, 0, 1, 2, 5, -1, 2]), np.array([0, 1, 1, 2, 0, 3, 2]))
    expected = np.zeros((6, 6), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[5, 0] = 1
    expected[2, 2] = 2
    np.testing.assert_array_equal(counts, expected)  # the -1 (not a tau) is not counted
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(m.confusion(np.array([0, 1]), np.array([1, 1]), n_classes=2), [[0, 1], [0, 1]])


# --- history and run directories -------------------------------------------------------------


def _write_history(path: Path, losses, epoch_column: bool = True) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss"] if epoch_column else ["train_loss", "val_loss"])
        for i, loss in enumerate(losses):
            writer.writerow([i, 1.0, loss] if epoch_column else [1.0, loss])
    return path


def test_best_validation_loss(tmp_path):
    assert m.best_validation_loss(_write_history(tmp_path / "a.csv", [0.5, 0.3, "nan", 0.3, 0.4])) == (0.3, 1)
    assert m.best_validation_loss(_write_history(tmp_path / "b.csv", [0.5, 0.2], epoch_column=False)) == (0.2, 1)
    loss, epoch = m.best_validation_loss(_write_history(tmp_path / "c.csv", ["nan"]))
    assert math.isnan(loss) and epoch == -1
    with pytest.raises(TaufmError, match="missing.csv"):
        m.best_validation_loss(tmp_path / "missing.csv")
    (tmp_path / "d.csv").write_text("epoch,train_loss\n0,1.0\n")
    with pytest.raises(TaufmError, match=r"d\.csv.*val_loss"):
        m.best_validation_loss(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("epoch,val_loss\n0,abc\n")
    with pytest.raises(TaufmError, match=r"e\.csv"):
        m.best_validation_loss(tmp_path / "e.csv")


def test_best_validation_loss_of_a_subset_validated_run_is_the_whole_sets(tmp_path):
    """Fine-tuning judged each epoch on a validation subset: the kept epoch's row holds the kept
    model's loss on the whole set (val_loss_full), and that is the run's validation loss."""
    (tmp_path / "h.csv").write_text("epoch,val_loss,val_loss_full\n0,0.50,\n1,0.30,0.34\n2,0.31,\n")
    assert m.best_validation_loss(tmp_path / "h.csv") == (0.34, 1)
    (tmp_path / "i.csv").write_text("epoch,val_loss,val_loss_full\n0,0.5,0.6\n1,0.3,0.34\n")
    with pytest.raises(TaufmError, match=r"i\.csv: val_loss_full is set on 2 epochs"):
        m.best_validation_loss(tmp_path / "i.csv")


def _jets(sample: str, n: int, **columns) -> dict[str, list]:
    base = {
        "sample": [sample] * n,
        "event": list(range(n)),
        "jet_index": [0] * n,
        "label": [1] * n,
        "decay_mode": [0] * n,
        "jet_pt": [30.0] * n,
        "jet_eta": [0.1] * n,
        "gen_tau_vis_pt": [25.0] * n,
        "target": [1.0] * n,
    }
    return {**base, **columns}


def _write_run(run_dir: Path, task: str, parts: list[dict], seed: int = 1, losses=(0.5, 0.3, 0.4), strategy: str = "finetune", **summary_keys) -> Path:
    run_dir.mkdir(parents=True)
    table = {k: sum((p[k] for p in parts), []) for k in parts[0]}
    pq.write_table(pa.table(table), run_dir / "predictions.parquet")
    summary = {"task": task, "strategy": strategy, "size": 1000, "seed": seed, "best_epoch": 1, **summary_keys}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    _write_history(run_dir / "history.csv", losses)
    return run_dir


def _tau_id_run(run_dir: Path) -> Path:
    ztt = _jets("Z_Ztautau", 5, label=[1, 1, 1, 1, 0], decay_mode=[0, 1, 0, 3, -1], score=[*TAU_SCORES, 0.99])
    zh = _jets("ZH_Htautau", 2, score=[0.95, 0.9])
    qq = _jets("qq", 5, label=[0] * 5, decay_mode=[-1] * 5, gen_tau_vis_pt=[0.0] * 5, score=BKG_SCORES)
    return _write_run(run_dir, "tau_id", [ztt, zh, qq])


def test_run_metrics_tau_id(tmp_path):
    rows = m.run_metrics(_tau_id_run(tmp_path / "run"))
    assert [r["test_sample"] for r in rows] == ["Z_Ztautau", "ZH_Htautau", "qq"]
    ztt, zh, qq = rows
    assert {k: ztt[k] for k in ("task", "strategy", "backbone", "inputs", "size", "seed", "n_jets", "best_val_loss", "best_epoch")} == {
        "task": "tau_id",
        "strategy": "finetune",
        "backbone": "tokens-ntp",  # a summary without backbone_name: the name's default backbone
        "inputs": "paper",
        "size": 1000,
        "seed": 1,
        "n_jets": 5,
        "best_val_loss": 0.3,
        "best_epoch": 1,
    }
    # Z_Ztautau taus against qq only: its non-tau jet (score 0.99) does not count.
    assert ztt["auc"] == pytest.approx(0.675)
    assert ztt["misid_at_80"] == pytest.approx(0.64)
    assert (ztt["n_signal"], ztt["n_background"]) == (4, 1)
    assert zh["auc"] == 1.0 and zh["misid_at_80"] == 0.0 and zh["n_jets"] == 2
    assert qq["n_jets"] == 5 and (qq["n_signal"], qq["n_background"]) == (0, 5)
    assert math.isnan(qq["auc"]) and math.isnan(qq["misid_at_80"])
    assert list(ztt)[:10] == ["task", "strategy", "backbone", "inputs", "size", "seed", "test_sample", "n_jets", "best_val_loss", "best_epoch"]


def test_run_metrics_tau_id_without_background_gives_nan(tmp_path):
    run = _write_run(tmp_path / "run", "tau_id", [_jets("Z_Ztautau", 3, score=[0.2, 0.5, 0.9])])
    (row,) = m.run_metrics(run)
    assert math.isnan(row["auc"]) and math.isnan(row["misid_at_80"])


def test_run_metrics_pt_regression(tmp_path):
    ztt = _jets("Z_Ztautau", 5, gen_tau_vis_pt=[10.0] * 5, pred_pt=[8.0, 9.0, 10.0, 11.0, 13.0], pred_log_ratio=[0.0] * 5)
    zh = _jets("ZH_Htautau", 2, gen_tau_vis_pt=[20.0, 0.0], pred_pt=[30.0, 10.0], pred_log_ratio=[0.0] * 2)
    rows = m.run_metrics(_write_run(tmp_path / "run", "pt_regression", [ztt, zh]))
    assert [r["test_sample"] for r in rows] == ["Z_Ztautau", "ZH_Htautau"]
    assert rows[0]["response"] == pytest.approx(1.0)
    assert rows[0]["resolution_iqr"] == pytest.approx(0.2)
    assert rows[0]["resolution_iqr_over_median"] == pytest.approx(0.2)
    assert rows[1]["n_jets"] == 2
    assert rows[1]["response"] == pytest.approx(1.5)  # the jet with gen pT 0 has no finite ratio
    assert rows[1]["resolution_iqr"] == 0.0


def test_run_metrics_decay_mode(tmp_path):
    probs = _dm_probabilities()
    pred = [0, 1, 1, 1, 1, 3]  # 5 of 6 right
    ztt = _jets("Z_Ztautau", 6, decay_mode=DM_TRUE, pred_decay_mode=pred, **{f"prob_{n}": probs[:, c].tolist() for c, n in enumerate(DECAY_MODE_NAMES)})
    zh = _jets("ZH_Htautau", 2, decay_mode=[4, 4], pred_decay_mode=[4, 2], **{f"prob_{n}": [1 / 6] * 2 for n in DECAY_MODE_NAMES})
    rows = m.run_metrics(_write_run(tmp_path / "run", "decay_mode", [ztt, zh]))
    ztt_row, zh_row = rows
    assert ztt_row["auc_weighted"] == pytest.approx(DM_WEIGHTED)
    assert ztt_row["accuracy"] == pytest.approx(5 / 6)
    for c, name in enumerate(DECAY_MODE_NAMES):
        assert (ztt_row[f"auc_{name}"] == pytest.approx(DM_AUCS[c])) if c in DM_AUCS else math.isnan(ztt_row[f"auc_{name}"])
    assert zh_row["accuracy"] == 0.5
    assert math.isnan(zh_row["auc_weighted"]) and math.isnan(zh_row["auc_3hNpi0"])


def test_task_metrics_cover_every_task():
    from taufm.finetune.tasks import TASK_NAMES

    assert set(m.TASK_METRICS) == set(TASK_NAMES)


def test_run_metrics_file_problems_name_the_file(tmp_path):
    run = _tau_id_run(tmp_path / "run")
    table = pq.read_table(run / "predictions.parquet")
    pq.write_table(table.drop_columns(["score"]), run / "predictions.parquet")
    with pytest.raises(TaufmError, match=r"predictions\.parquet.*score"):
        m.run_metrics(run)
    (run / "predictions.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TaufmError, match=r"predictions\.parquet"):
        m.run_metrics(run)
    (run / "predictions.parquet").unlink()
    with pytest.raises(TaufmError, match=r"predictions\.parquet"):
        m.run_metrics(run)
    (run / "summary.json").write_text(json.dumps({"task": "tau_id", "strategy": "x", "size": 10}))
    with pytest.raises(TaufmError, match=r"summary\.json.*seed"):
        m.run_metrics(run)
    (run / "summary.json").write_text(json.dumps({"task": "nope", "strategy": "scratch", "size": 10, "seed": 0}))
    with pytest.raises(TaufmError, match="unknown task"):
        m.run_metrics(run)


def _pt_run(run_dir: Path, strategy: str, **summary_keys) -> Path:
    ztt = _jets("Z_Ztautau", 3, gen_tau_vis_pt=[10.0] * 3, pred_pt=[9.0, 10.0, 12.0])
    return _write_run(run_dir, "pt_regression", [ztt], strategy=strategy, **summary_keys)


@pytest.mark.parametrize(
    ("strategy", "summary_keys", "backbone", "inputs"),
    [
        # Summaries that say it: taken as they are (the ParT's configured input set is not in its name).
        ("fixed@continuous-mpm+lifetime", {"backbone_name": "continuous-mpm", "inputs": "paper+lifetime"}, "continuous-mpm", "paper+lifetime"),
        ("part", {"backbone_name": None, "inputs": "paper+lifetime"}, None, "paper+lifetime"),
        ("finetune", {"backbone_name": "tokens-ntp", "inputs": "paper"}, "tokens-ntp", "paper"),
        # Summaries of an older taufm, without the keys: read off the strategy name.
        ("fixed@continuous-mpm+lifetime", {}, "continuous-mpm", "paper+lifetime"),
        ("part", {}, None, "paper"),
        ("part+lifetime", {}, None, "paper+lifetime"),
        ("finetune", {}, "tokens-ntp", "paper"),
        ("finetune-blocks1@continuous-mpm", {"inputs": "paper"}, "continuous-mpm", "paper"),  # one key missing
    ],
)
def test_run_rows_name_the_backbone_and_input_set(tmp_path, strategy, summary_keys, backbone, inputs):
    (row,) = m.run_metrics(_pt_run(tmp_path / "run", strategy, **summary_keys), n_bootstrap=0)
    assert (row["strategy"], row["backbone"], row["inputs"]) == (strategy, backbone, inputs)
    assert list(row)[:4] == ["task", "strategy", "backbone", "inputs"]


@pytest.mark.parametrize(
    ("strategy", "summary_keys", "message"),
    [
        ("finetune", {"backbone_name": 3, "inputs": "paper"}, r"summary\.json: backbone_name must be a backbone's name or null, got 3"),
        ("finetune", {"backbone_name": "tokens-ntp", "inputs": ""}, r"summary\.json: inputs must be an input set's name, got ''"),
        ("fine-tune", {}, r"summary\.json: no 'backbone_name', and the strategy name does not say it: unknown strategy 'fine-tune'"),
    ],
)
def test_bad_backbone_or_inputs_in_a_summary_name_the_file_and_key(tmp_path, strategy, summary_keys, message):
    with pytest.raises(TaufmError, match=message):
        m.run_metrics(_pt_run(tmp_path / "run", strategy, **summary_keys), n_bootstrap=0)


# --- aggregation and the table ---------------------------------------------------------------


def _row(seed, sample="Z_Ztautau", size=1000, **metrics):
    return {"task": "tau_id", "strategy": "scratch", "size": size, "seed": seed, "test_sample": sample, "n_jets": 100, **metrics}


def test_aggregate_means_and_stds_over_seeds():
    rows = [
        _row(2, auc=0.9, misid_at_80=0.02),
        _row(1, auc=0.8, misid_at_80=0.04),
        _row(3, auc=NAN, misid_at_80=0.06),
        _row(1, sample="qq", auc=NAN, misid_at_80=NAN),
        _row(1, size=2000, auc=0.7, misid_at_80=0.1),
    ]
    out = m.aggregate(rows)
    assert len(out) == 5 + 3 * 2
    first = out[:5]
    assert [(r["seed"], r["statistic"]) for r in first] == [(1, "value"), (2, "value"), (3, "value"), (None, "mean"), (None, "std")]
    mean, std = first[3], first[4]
    assert mean["n_seeds"] == std["n_seeds"] == 3
    assert mean["auc"] == pytest.approx(0.85)  # NaN seed left out
    assert std["auc"] == pytest.approx(0.05)  # ddof = 0
    assert mean["misid_at_80"] == pytest.approx(0.04)
    assert std["misid_at_80"] == pytest.approx(math.sqrt((0.02**2 + 0 + 0.02**2) / 3))
    assert mean["n_jets"] == 100 and std["n_jets"] == 0
    qq_mean = next(r for r in out if r["test_sample"] == "qq" and r["statistic"] == "mean")
    assert math.isnan(qq_mean["auc"])  # no seed has a value: NaN, no warning
    single_std = next(r for r in out if r["size"] == 2000 and r["statistic"] == "std")
    assert single_std["auc"] == 0.0 and single_std["n_seeds"] == 1
    with pytest.raises(TaufmError, match="two metrics rows"):
        m.aggregate([_row(1, auc=0.5), _row(1, auc=0.6)])


def test_summary_rows_carry_the_groups_backbone_and_inputs():
    def run(strategy, seed, backbone, inputs, auc):
        return {**_row(seed, auc=auc), "strategy": strategy, "backbone": backbone, "inputs": inputs}

    rows = [
        run("fixed@continuous-mpm+lifetime", 0, "continuous-mpm", "paper+lifetime", 0.8),
        run("fixed@continuous-mpm+lifetime", 1, "continuous-mpm", "paper+lifetime", 0.9),
        run("part", 0, None, "paper", 0.7),
    ]
    out = m.aggregate(rows)
    described = [(r["strategy"], r["statistic"], r["backbone"], r["inputs"]) for r in out]
    assert described == [
        ("fixed@continuous-mpm+lifetime", "value", "continuous-mpm", "paper+lifetime"),
        ("fixed@continuous-mpm+lifetime", "value", "continuous-mpm", "paper+lifetime"),
        ("fixed@continuous-mpm+lifetime", "mean", "continuous-mpm", "paper+lifetime"),
        ("fixed@continuous-mpm+lifetime", "std", "continuous-mpm", "paper+lifetime"),
        ("part", "value", None, "paper"),
        ("part", "mean", None, "paper"),
        ("part", "std", None, "paper"),
    ]
    assert out[2]["auc"] == pytest.approx(0.85) and out[3]["auc"] == pytest.approx(0.05)
    assert list(out[2])[:4] == ["task", "strategy", "backbone", "inputs"]
    assert m.aggregate([_row(1, auc=0.5)])[1]["backbone"] is None  # rows without the columns: None
    with pytest.raises(TaufmError, match=r"strategy part, size 1000, sample Z_Ztautau disagree on inputs: 'paper', 'paper\+lifetime'"):
        m.aggregate([run("part", 0, None, "paper", 0.7), run("part", 1, None, "paper+lifetime", 0.7)])


def test_table_of_runs_on_two_backbones_has_the_strategy_columns(tmp_path):
    rows = [
        *m.run_metrics(_pt_run(tmp_path / "a", "finetune@continuous-mpm+lifetime"), n_bootstrap=0),
        *m.run_metrics(_pt_run(tmp_path / "b", "part", backbone_name=None, inputs="paper"), n_bootstrap=0),
    ]
    m.write_table(m.aggregate(rows), tmp_path / "t.csv", tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names[:9] == ["task", "strategy", "backbone", "inputs", "size", "seed", "statistic", "n_seeds", "test_sample"]
    assert table.schema.field("backbone").type == pa.string() and table.schema.field("inputs").type == pa.string()
    assert table.column("backbone").to_pylist() == ["continuous-mpm"] * 3 + [None] * 3
    assert table.column("inputs").to_pylist() == ["paper+lifetime"] * 3 + ["paper"] * 3
    with open(tmp_path / "t.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [(r["backbone"], r["inputs"]) for r in records] == [("continuous-mpm", "paper+lifetime")] * 3 + [("", "paper")] * 3


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_write_table_round_trips(tmp_path):
    rows = m.aggregate([_row(1, auc=0.8, misid_at_80=0.1 / 3), _row(2, auc=NAN, misid_at_80=0.02), _row(1, sample="qq", auc=NAN)])
    csv_path, parquet_path = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "metrics.parquet"
    m.write_table(rows, csv_path, parquet_path)
    table = pq.read_table(parquet_path)
    assert table.column_names[: len(m.TABLE_KEYS)] == list(m.TABLE_KEYS)
    assert table.schema.field("seed").type == pa.int64() and table.schema.field("auc").type == pa.float64()
    records = table.to_pylist()
    assert len(records) == len(rows)
    for row, record in zip(rows, records):
        for name in table.column_names:
            assert _same(record[name], row.get(name)), (name, record[name], row.get(name))
    # qq has no misid_at_80 in its rows: null in Parquet, empty in the CSV
    with open(csv_path, newline="") as handle:
        text_rows = list(csv.DictReader(handle))
    assert len(text_rows) == len(records)
    for text, record in zip(text_rows, records):
        assert list(text) == table.column_names
        for name, value in record.items():
            if value is None:
                assert text[name] == ""
            elif isinstance(value, float):
                assert _same(float(text[name]), value)
            else:
                assert text[name] == str(value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.parquet"]  # no leftovers


def test_write_table_of_run_metrics(tmp_path):
    rows = m.run_metrics(_tau_id_run(tmp_path / "run"))
    m.write_table(m.aggregate(rows), tmp_path / "t.csv", tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.num_rows == 3 * 3
    assert table.column_names[:12] == [*m.TABLE_KEYS, "n_jets", "best_val_loss", "best_epoch"]
    assert set(table.column("statistic").to_pylist()) == {"value", "mean", "std"}
