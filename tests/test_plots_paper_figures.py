"""Paper figures 4, 5, 7, Fig. 8 (backbones) and the headline table: numbers drawn, files written, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from taufm.errors import TaufmError
from taufm.evaluate.metrics import DETAILS_FILE, aggregate, evaluate_run, misid_at_efficiencies
from taufm.physics.tau import DECAY_MODE_NAMES
from taufm.plots import paper_figures
from taufm.plots.paper_figures import fig4_validation_loss, fig5_physics, fig7_ablations, fig8_backbones, runs_from_details, summary_table
from taufm.plots.style import STRATEGY_COLORS

TASKS = ("tau_id", "pt_regression", "decay_mode")
STRATEGIES = ("scratch", "fixed", "finetune", "part")
SIZES = (1000, 10000)
SEEDS = (0, 1)
TEST_SAMPLES = ("Z_Ztautau", "ZH_Htautau")
ABLATION_SIZE = 2000
DEFAULT_UNFREEZE = 30
N_BLOCKS = 3

# Best validation loss of one run: a task scale, a strategy factor, a size factor and a seed offset.
TASK_SCALE = {"tau_id": 0.2, "pt_regression": 0.05, "decay_mode": 0.8}
STRATEGY_FACTOR = {"scratch": 1.3, "fixed": 1.5, "finetune": 1.0, "part": 1.2}
SIZE_FACTOR = {1000: 1.5, 2000: 1.3, 10000: 1.0}
SEED_OFFSET = 0.02  # per seed
# Ablations at ABLATION_SIZE: loss factors of each ablation strategy (finetune is 1.0, fixed 1.5).
ABLATION_FACTOR = {"finetune-unfreeze0": 1.1, "finetune-unfreeze60": 1.05, "finetune-blocks1": 1.4, "finetune-blocks2": 1.2}
# Headline metrics of a run on Z_Ztautau (ZH rows get other values: they must not be used).
METRICS = {
    "misid_at_80": {"scratch": (0.040, 0.038), "finetune": (0.030, 0.032), "part": (0.035, 0.037), "fixed": (0.05, 0.05)},
    "response": {"scratch": (1.08, 1.09), "finetune": (1.02, 1.03), "part": (1.05, 1.05), "fixed": (1.1, 1.1)},
    "resolution_iqr": {"scratch": (0.15, 0.14), "finetune": (0.07, 0.07), "part": (0.10, 0.11), "fixed": (0.2, 0.2)},
    "resolution_iqr_over_median": {"scratch": (0.14, 0.13), "finetune": (0.068, 0.066), "part": (0.1, 0.1), "fixed": (0.2, 0.2)},
    "auc": {"scratch": (0.95, 0.96), "finetune": (0.97, 0.975), "part": (0.96, 0.96), "fixed": (0.9, 0.9)},
    "auc_weighted": {"scratch": (0.90, 0.91), "finetune": (0.93, 0.94), "part": (0.92, 0.92), "fixed": (0.85, 0.85)},
}


def _loss(task: str, strategy: str, size: int, seed: int) -> float:
    factor = ABLATION_FACTOR.get(strategy) or STRATEGY_FACTOR.get(strategy, 1.0)
    return TASK_SCALE[task] * factor * SIZE_FACTOR[size] + SEED_OFFSET * seed


def _row(task: str, strategy: str, size: int, seed: int, test_sample: str) -> dict:
    row = {
        "task": task,
        "strategy": strategy,
        "size": size,
        "seed": seed,
        "test_sample": test_sample,
        "best_val_loss": _loss(task, strategy, size, seed),
        "best_epoch": 10 + seed,
    }
    base = strategy.split("-")[0]
    offset = 0.0 if test_sample == "Z_Ztautau" else 0.5  # other sample: clearly different numbers
    if task == "tau_id":
        row |= {k: METRICS[k][base][seed % 2] + offset for k in ("auc", "misid_at_80")}
    elif task == "pt_regression":
        row |= {k: METRICS[k][base][seed % 2] + offset for k in ("response", "resolution_iqr", "resolution_iqr_over_median")}
    else:
        row |= {"auc_weighted": METRICS["auc_weighted"][base][seed % 2] + offset, "accuracy": 0.7}
        row |= {f"auc_{name}": 0.9 for name in DECAY_MODE_NAMES}
    return row


def _rows(strategies=STRATEGIES, seeds=SEEDS, tasks=TASKS, ablations=True) -> list[dict]:
    """The metrics table: every run once per test sample, ablations, and summary rows over seeds."""
    rows = [
        _row(task, strategy, size, seed, sample)
        for task in tasks
        for strategy in strategies
        for size in SIZES
        for seed in seeds
        for sample in TEST_SAMPLES
    ]
    if ablations:
        ablation_strategies = ("finetune", "fixed", *ABLATION_FACTOR)
        rows += [
            _row(task, strategy, ABLATION_SIZE, seed, sample)
            for task in tasks
            for strategy in ablation_strategies
            for seed in seeds
            for sample in TEST_SAMPLES
        ]
    # Summary rows as a metrics module may add them: the seed is not an integer, keys may be missing.
    rows.append({"task": "tau_id", "strategy": "finetune", "size": 1000, "seed": "mean", "best_val_loss": 99.0})
    rows.append({"task": "tau_id", "strategy": "scratch", "seed": None})
    return rows


def _mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=0))


def _outputs(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _check_figure_files(stem):
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF")
    height, width = matplotlib.image.imread(png).shape[:2]
    assert 1000 <= width <= 4000 and 500 <= height <= 2000


@pytest.fixture
def captured(monkeypatch):
    """Figures handed to save_figure, kept (not written) for inspection."""
    figures = []
    monkeypatch.setattr(paper_figures, "save_figure", lambda fig, stem: figures.append(fig))
    return figures


def _panel_texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# --- Fig. 4 ------------------------------------------------------------------------------------


def test_fig4_numbers_and_files(tmp_path):
    stem = tmp_path / "figs" / "fig4_validation_loss"
    summary = fig4_validation_loss(_rows(), stem)

    _check_figure_files(stem)
    assert _outputs(stem.parent) == ["fig4_validation_loss.pdf", "fig4_validation_loss.png"]
    assert summary["std_ddof"] == 0
    for task in TASKS:
        # Ablation strategies are not drawn; the ablation size (only finetune and fixed) is.
        assert list(summary["tasks"][task]) == list(STRATEGIES)
        for strategy in STRATEGIES:
            curve = summary["tasks"][task][strategy]
            sizes = [1000, ABLATION_SIZE, 10000] if strategy in ("finetune", "fixed") else list(SIZES)
            assert curve["size"] == sizes
            assert curve["n_seeds"] == [2] * len(sizes)
            for i, size in enumerate(sizes):
                mean, std = _mean_std([_loss(task, strategy, size, seed) for seed in SEEDS])
                assert curve["mean"][i] == pytest.approx(mean)
                assert curve["std"][i] == pytest.approx(std)
    # By hand: tau_id finetune at 1000 jets: 0.3 and 0.32 -> mean 0.31, std 0.01 (population std).
    assert summary["tasks"]["tau_id"]["finetune"]["mean"][0] == pytest.approx(0.31)
    assert summary["tasks"]["tau_id"]["finetune"]["std"][0] == pytest.approx(0.01)


def test_fig4_single_seed_and_missing_task(tmp_path, captured):
    rows = _rows(strategies=("scratch", "finetune"), seeds=(0,), tasks=("tau_id", "decay_mode"), ablations=False)
    summary = fig4_validation_loss(rows, tmp_path / "fig4")

    (fig,) = captured
    assert summary["tasks"]["pt_regression"] == {}
    assert set(summary["tasks"]["tau_id"]) == {"scratch", "finetune"}
    assert summary["tasks"]["tau_id"]["scratch"]["std"] == [None, None]
    assert summary["tasks"]["tau_id"]["scratch"]["mean"] == pytest.approx([_loss("tau_id", "scratch", s, 0) for s in SIZES])
    assert _panel_texts(fig).count("no runs of this task") == 1
    tau_axis = fig.axes[0]
    assert not tau_axis.collections, "one seed: no band"
    assert tau_axis.get_xscale() == "log"
    assert tau_axis.get_xlabel() == "Training jets" and "focal loss" in tau_axis.get_ylabel()


def test_fig4_conflicting_loss_of_one_run_is_an_error(tmp_path):
    rows = _rows(ablations=False)
    rows[1]["best_val_loss"] += 0.1  # the ZH row of the first run
    with pytest.raises(TaufmError, match="best_val_loss of run tau_id/scratch n=1000 seed=0 differs"):
        fig4_validation_loss(rows, tmp_path / "out" / "fig4")
    assert _outputs(tmp_path / "out") == []


# --- bad metrics tables (all three row readers) ----------------------------------------------


def _drop(rows, index, key):
    rows[index] = {k: v for k, v in rows[index].items() if k != key}
    return rows


def _extra(**changes):
    """The table plus one more run row (an ablation-size fine-tuning run, seed 5) with ``changes``."""
    return [*_rows(), {**_row("tau_id", "finetune", ABLATION_SIZE, 5, "Z_Ztautau"), **changes}]


def _first(rows, **match):
    return next(i for i, r in enumerate(rows) if all(r.get(k) == v for k, v in match.items()))


def _without_number(figure):
    """A run row without the number the figure needs: the loss, or the table's misID rate at 10^4 jets."""
    rows = _rows()
    if figure == "table":
        return _drop(rows, _first(rows, size=10000, test_sample="Z_Ztautau"), "misid_at_80"), "misid_at_80"
    return _drop(rows, _first(rows, size=ABLATION_SIZE), "best_val_loss"), "best_val_loss"


@pytest.mark.parametrize(
    ("make_rows", "message"),
    [
        (lambda f: _without_number(f)[0], r"metrics row \d+ \(tau_id/\w+ n=\d+ seed=0\) has no key '(best_val_loss|misid_at_80)'"),
        (lambda f: _drop(_rows(), 0, "seed"), "metrics row 0 has no key 'seed'"),
        (lambda f: _drop(_rows(), 3, "task"), "metrics row 3 .*has no key 'task'"),
        (lambda f: _extra(task="tauid"), "unknown task 'tauid'"),
        (lambda f: _extra(best_val_loss="low", misid_at_80="low", size=ABLATION_SIZE if f != "table" else 10000), "is not a number"),
        (lambda f: _extra(size=0), "not a positive integer"),
        (lambda f: [*_rows(), "not a row"], "is not a mapping"),
        (lambda f: {"task": "tau_id"}, "sequence of rows"),
        (lambda f: [{**r, "seed": str(r["seed"])} for r in _rows()], "no per-run rows.*seed is not an integer"),
    ],
    ids=["no-number", "no-seed", "no-task", "unknown-task", "string-value", "zero-size", "not-a-row", "not-a-table", "csv-strings"],
)
@pytest.mark.parametrize("figure", ["fig4", "fig7", "fig8", "table"])
def test_bad_rows_are_clear_errors_and_write_nothing(tmp_path, make_rows, message, figure):
    rows = make_rows(figure)
    out = tmp_path / "out"
    with pytest.raises(TaufmError, match=message):
        if figure == "fig4":
            fig4_validation_loss(rows, out / "fig4")
        elif figure == "fig8":
            fig8_backbones(rows, out / "fig8")
        elif figure == "fig7":
            fig7_ablations(rows, out / "fig7", ABLATION_SIZE, default_unfreeze_epoch=DEFAULT_UNFREEZE, n_blocks_total=N_BLOCKS)
        else:
            summary_table(rows, 10000, out / "summary.md", out / "summary.csv")
    assert _outputs(out) == []


# --- Fig. 5 ------------------------------------------------------------------------------------

N_TAU, N_TAU_ZH, N_QQ = 300, 60, 300
# Per strategy: tau ID score separation, pT response spread, decay-mode probability sharpness.
QUALITY = {"scratch": 1.0, "fixed": 0.7, "finetune": 1.6, "part": 1.3}


def _predictions(task: str, strategy: str, seed: int, overrides: dict | None = None) -> pa.Table:
    """A predictions.parquet of one run (columns of docs/data-format.md), random but sensible."""
    rng = np.random.default_rng([TASKS.index(task), STRATEGIES.index(strategy), seed])
    quality = QUALITY[strategy]
    samples = ["Z_Ztautau"] * N_TAU + ["ZH_Htautau"] * N_TAU_ZH + (["qq"] * N_QQ if task == "tau_id" else [])
    n = len(samples)
    tau = np.arange(n) < N_TAU + N_TAU_ZH
    decay_mode = np.where(tau, rng.choice(6, size=n, p=[0.25, 0.35, 0.1, 0.15, 0.1, 0.05]), -1)
    gen_pt = np.where(tau, rng.uniform(10.0, 45.0, n), np.nan)
    jet_pt = np.where(tau, gen_pt * rng.normal(1.0, 0.1, n), rng.uniform(20.0, 60.0, n))
    columns = {
        "sample": pa.array(samples),
        "event": pa.array(np.arange(n), pa.int64()),
        "jet_index": pa.array(np.zeros(n), pa.int16()),
        "label": pa.array(tau, pa.int8()),
        "decay_mode": pa.array(decay_mode, pa.int8()),
        "jet_pt": pa.array(jet_pt, pa.float32()),
        "jet_eta": pa.array(rng.uniform(-2, 2, n), pa.float32()),
        "gen_tau_vis_pt": pa.array(gen_pt, pa.float32()),
    }
    if task == "tau_id":
        logit = rng.normal(np.where(tau, 1.0, -1.0) * quality, 1.0)
        columns["target"] = pa.array(tau.astype(np.float32))
        columns["score"] = pa.array(1 / (1 + np.exp(-logit)), pa.float32())
    elif task == "pt_regression":
        log_ratio = np.log(gen_pt / jet_pt) + rng.normal(0.05 / quality, 0.12 / quality, n)
        columns["target"] = pa.array(np.log(gen_pt / jet_pt), pa.float32())
        columns["pred_log_ratio"] = pa.array(log_ratio, pa.float32())
        columns["pred_pt"] = pa.array(np.exp(log_ratio) * jet_pt, pa.float32())
    else:
        logits = rng.normal(0.0, 1.0, (n, 6))
        logits[np.arange(n), np.clip(decay_mode, 0, 5)] += 1.2 * quality
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        columns["target"] = pa.array(decay_mode, pa.int64())
        columns["pred_decay_mode"] = pa.array(probs.argmax(axis=1), pa.int64())
        for i, name in enumerate(DECAY_MODE_NAMES):
            columns[f"prob_{name}"] = pa.array(probs[:, i], pa.float32())
    for name, values in (overrides or {}).items():
        columns[name] = values
    return pa.table(columns)


def _run_dir(root, task, strategy, seed, table=None, size=10000):
    """A run directory as the metrics stage leaves it: predictions, summary, history and the
    metrics details Fig. 5 draws (written by taufm.evaluate.metrics.evaluate_run)."""
    directory = root / "finetune" / task / strategy / f"n{size}" / f"seed{seed}"
    directory.mkdir(parents=True)
    pq.write_table(_predictions(task, strategy, seed) if table is None else table, directory / "predictions.parquet")
    (directory / "summary.json").write_text(json.dumps({"task": task, "strategy": strategy, "size": size, "seed": seed}))
    (directory / "history.csv").write_text("epoch,val_loss\n0,0.5\n")
    _, details = evaluate_run(directory, n_bootstrap=5)
    (directory / DETAILS_FILE).write_text(json.dumps(details))
    return directory


@pytest.fixture
def fig5_runs(tmp_path):
    """Run directories of every task and strategy at 1e4 jets, two seeds each."""
    return {
        task: {strategy: [_run_dir(tmp_path, task, strategy, seed) for seed in SEEDS] for strategy in STRATEGIES}
        for task in TASKS
    }


def _read(directory, sample="Z_Ztautau"):
    """The columns of one run's predictions, as float arrays (the sample column as strings)."""
    table = pq.read_table(directory / "predictions.parquet")
    data = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    return {k: v.astype(str) if k == "sample" else v.astype(np.float64) for k, v in data.items()}


def _misid_at(signal, background, efficiency):
    """The misID rate at ``efficiency``, point by point along sklearn's ROC curve."""
    label = np.r_[np.ones(len(signal)), np.zeros(len(background))]
    fpr, tpr, _ = roc_curve(label, np.r_[signal, background], drop_intermediate=False)
    for i in range(len(tpr)):
        if tpr[i] >= efficiency:
            if tpr[i] == efficiency or i == 0:
                return fpr[i]
            return fpr[i - 1] + (efficiency - tpr[i - 1]) / (tpr[i] - tpr[i - 1]) * (fpr[i] - fpr[i - 1])
    raise AssertionError("the ROC ends at efficiency 1")


def test_fig5_numbers_and_files(tmp_path, fig5_runs):
    stem = tmp_path / "figs" / "fig5_physics"
    summary = fig5_physics(fig5_runs, stem, 10000)

    _check_figure_files(stem)
    assert _outputs(stem.parent) == ["fig5_physics.pdf", "fig5_physics.png"]
    assert summary["size"] == 10000
    for task in TASKS:
        assert list(summary[task]) == list(STRATEGIES)
        assert all(summary[task][s]["n_seeds"] == 2 for s in STRATEGIES)

    for strategy in STRATEGIES:
        # (a) misID at 80%: Z_Ztautau tau jets against qq jets, on the ROC polyline.
        expected = []
        for directory in fig5_runs["tau_id"][strategy]:
            d = _read(directory)
            signal = d["score"][(d["sample"] == "Z_Ztautau") & (d["label"] == 1)]
            background = d["score"][(d["sample"] == "qq") & (d["label"] == 0)]
            expected.append(_misid_at(signal, background, 0.8))
        st = summary["tau_id"][strategy]
        assert st["misid_at_80"]["values"] == pytest.approx(expected)
        assert st["misid_at_80"]["mean"] == pytest.approx(np.mean(expected))
        assert st["misid_at_80"]["std"] == pytest.approx(np.std(expected))
        i80 = st["efficiency"].index(0.8)
        assert st["misid_mean"][i80] == pytest.approx(np.mean(expected))
        assert st["misid_min"][i80] == pytest.approx(min(expected))

        # (b) response of the Z_Ztautau jets only: median and IQR per seed, then mean over seeds.
        medians, iqrs = [], []
        for directory in fig5_runs["pt_regression"][strategy]:
            d = _read(directory)
            z = d["sample"] == "Z_Ztautau"
            response = d["pred_pt"][z] / d["gen_tau_vis_pt"][z]
            q25, q50, q75 = np.percentile(response, [25, 50, 75])
            medians.append(q50)
            iqrs.append(q75 - q25)
        st = summary["pt_regression"][strategy]
        assert st["median"]["mean"] == pytest.approx(np.mean(medians))
        assert st["iqr"]["mean"] == pytest.approx(np.mean(iqrs))
        assert st["iqr"]["std"] == pytest.approx(np.std(iqrs))
        assert sum(st["fraction_mean"]) == pytest.approx(1.0)

        # (c) one-vs-rest AUC per class on the Z_Ztautau tau jets.
        aucs = {name: [] for name in DECAY_MODE_NAMES}
        for directory in fig5_runs["decay_mode"][strategy]:
            d = _read(directory)
            z = d["sample"] == "Z_Ztautau"
            for i, name in enumerate(DECAY_MODE_NAMES):
                aucs[name].append(roc_auc_score(d["decay_mode"][z] == i, d[f"prob_{name}"][z]))
        for name in DECAY_MODE_NAMES:
            assert summary["decay_mode"][strategy]["auc"][name]["mean"] == pytest.approx(np.mean(aucs[name]))
            assert summary["decay_mode"][strategy]["auc"][name]["max"] == pytest.approx(max(aucs[name]))
    # The fake predictions are ordered by quality: fine-tuning beats training from scratch.
    assert summary["tau_id"]["finetune"]["misid_at_80"]["mean"] < summary["tau_id"]["scratch"]["misid_at_80"]["mean"]
    assert summary["pt_regression"]["finetune"]["iqr"]["mean"] < summary["pt_regression"]["scratch"]["iqr"]["mean"]


def test_misid_curve_by_hand():
    signal = np.arange(1, 11) / 10  # 0.1 ... 1.0
    background = np.array([0.05, 0.25, 0.3, 0.35, 0.95])
    label, score = np.r_[np.ones(10), np.zeros(5)], np.r_[signal, background]
    # ROC points (efficiency, misID) from the highest cut down: (0.1, 0) (0.1, 0.2) (0.2, 0.2) ...
    # (0.7, 0.2) (0.7, 0.4) (0.8, 0.6) (0.8, 0.8) (0.9, 0.8) (1, 0.8) (1, 1).
    assert misid_at_efficiencies(label, score, [0.8]) == pytest.approx([0.6])  # reached exactly: lowest misID
    # 0.2 exactly; 0.75 halfway from (0.7, 0.4) to (0.8, 0.6); 0.85 from (0.8, 0.8) to (0.9, 0.8); 1.
    assert misid_at_efficiencies(label, score, [0.2, 0.75, 0.85, 1.0]) == pytest.approx([0.2, 0.5, 0.8, 0.8])


def test_figures_draw_stored_numbers_and_compute_no_metric():
    """One implementation of each metric (taufm.evaluate.metrics): the figure code imports no
    metric library and defines no ROC, AUC or quantile of its own."""
    source = Path(paper_figures.__file__).read_text()
    for forbidden in ("sklearn", "roc_curve", "roc_auc", "percentile", "quantile", "predictions.parquet"):
        assert forbidden not in source, forbidden


def test_fig5_draws_the_listed_runs_only(tmp_path, captured):
    """The run list comes from the workflow: a run directory left from an earlier config (here a
    seed no longer in the grid) is not drawn, and runs of other sizes are not either."""
    listed = [_run_dir(tmp_path, "tau_id", "finetune", seed) / DETAILS_FILE for seed in SEEDS]
    listed.append(_run_dir(tmp_path, "tau_id", "finetune", 0, size=1000) / DETAILS_FILE)
    stale = _run_dir(tmp_path, "tau_id", "finetune", 7)  # beside the others, not listed
    runs = runs_from_details(listed, 10000)
    assert runs == {"tau_id": {"finetune": [p.parent for p in listed[:2]]}}
    summary = fig5_physics(runs, tmp_path / "fig5", 10000)
    assert summary["tau_id"]["finetune"]["runs"] == [str(p.parent) for p in listed[:2]]
    assert str(stale) not in json.dumps(summary)


def test_fig5_single_seed_and_missing_tasks(tmp_path, captured):
    runs = {
        "tau_id": {
            "scratch": [_run_dir(tmp_path, "tau_id", "scratch", 0)],
            "finetune": str(_run_dir(tmp_path, "tau_id", "finetune", 0)),  # one path, not a list
            "finetune-unfreeze0": [tmp_path / "not read"],  # ablations are not drawn
        },
        "decay_mode": {"finetune": []},
    }
    summary = fig5_physics(runs, tmp_path / "fig5", 10000)

    (fig,) = captured
    assert list(summary["tau_id"]) == ["scratch", "finetune"]
    assert summary["tau_id"]["scratch"]["n_seeds"] == 1
    assert summary["tau_id"]["scratch"]["misid_at_80"]["std"] is None
    assert summary["tau_id"]["scratch"]["misid_min"] == summary["tau_id"]["scratch"]["misid_max"]
    assert summary["pt_regression"] == {} and summary["decay_mode"] == {}
    assert _panel_texts(fig) == ["no pT regression runs", "no decay-mode runs"]
    assert not fig.axes[0].collections, "one seed: no band"
    assert fig.axes[0].get_yscale() == "log"


def test_fig5_runs_without_background_jets_are_a_no_data_panel(tmp_path, captured):
    table = _predictions("tau_id", "finetune", 0)
    table = table.filter(pc.not_equal(table["sample"], "qq"))
    runs = {"tau_id": {"finetune": [_run_dir(tmp_path, "tau_id", "finetune", 0, table)]}}
    summary = fig5_physics(runs, tmp_path / "fig5", 10000)

    assert summary["tau_id"] == {}
    assert _panel_texts(captured[0])[0].startswith("no runs with Z_Ztautau τ jets")


def test_fig5_leaves_out_a_diverged_run_with_a_warning(tmp_path, caplog):
    table = _predictions("tau_id", "finetune", 0)
    score = table["score"].to_numpy().copy()
    score[3] = np.nan
    table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(score, pa.float32()))
    runs = {"tau_id": {"finetune": [_run_dir(tmp_path, "tau_id", "finetune", 0, table), _run_dir(tmp_path, "tau_id", "finetune", 1)]}}
    with caplog.at_level("WARNING"):
        summary = fig5_physics(runs, tmp_path / "fig5", 10000)
    assert summary["tau_id"]["finetune"]["n_seeds"] == 1
    assert "no finite misID curve" in caplog.text and "seed0" in caplog.text


def _bad_fig5(tmp_path, case):
    good = _run_dir(tmp_path, "tau_id", "scratch", 0)
    if case == "no-details":
        directory = _run_dir(tmp_path, "tau_id", "finetune", 0)
        (directory / DETAILS_FILE).unlink()
        return {"tau_id": {"scratch": [good], "finetune": [directory]}}
    if case == "no-directory":
        return {"tau_id": {"scratch": [good, tmp_path / "absent"]}}
    if case == "missing-curve":
        directory = _run_dir(tmp_path, "pt_regression", "scratch", 0)
        details = json.loads((directory / DETAILS_FILE).read_text())
        del details["samples"]["Z_Ztautau"]["curves"]["response"]
        (directory / DETAILS_FILE).write_text(json.dumps(details))
        return {"tau_id": {"scratch": [good]}, "pt_regression": {"scratch": [directory]}}
    if case == "corrupt":
        directory = _run_dir(tmp_path, "decay_mode", "scratch", 0)
        (directory / DETAILS_FILE).write_text("{not json")
        return {"decay_mode": {"scratch": [directory]}}
    if case == "other-task":
        return {"decay_mode": {"scratch": [good]}}
    return {"tauid": {"scratch": [good]}}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-details", r"seed0/metrics_details\.json does not exist"),
        ("no-directory", "absent does not exist"),
        ("missing-curve", r"metrics_details\.json: sample Z_Ztautau has no curves\.response"),
        ("corrupt", r"cannot read .*metrics_details\.json"),
        ("other-task", "a tau_id run, listed as decay_mode"),
        ("unknown-task", "unknown task.*'tauid'"),
    ],
)
def test_fig5_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, case, message):
    runs = _bad_fig5(tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(TaufmError, match=message):
        fig5_physics(runs, out / "fig5_physics", 10000)
    assert _outputs(out) == []


# --- Fig. 7 ------------------------------------------------------------------------------------


def test_fig7_numbers_and_files(tmp_path):
    stem = tmp_path / "fig7_ablations"
    summary = fig7_ablations(_rows(), stem, ABLATION_SIZE, default_unfreeze_epoch=DEFAULT_UNFREEZE, n_blocks_total=N_BLOCKS)

    _check_figure_files(stem)
    unfreeze, blocks = summary["unfreeze"], summary["blocks"]
    # Unfreeze epochs 0, 30 (finetune), 60 and "never" (fixed) one step (30) right of 60.
    assert unfreeze["x_ticks"] == [0, 30, 60, 90]
    assert unfreeze["x_labels"] == ["0", "30", "60", "never\n(fixed)"]
    assert blocks["x_ticks"] == [1, 2, 3]
    for task in TASKS:
        line = unfreeze["tasks"][task]
        assert line["strategy"] == ["finetune-unfreeze0", "finetune", "finetune-unfreeze60", "fixed"]
        means = [_mean_std([_loss(task, s, ABLATION_SIZE, seed) for seed in SEEDS])[0] for s in line["strategy"]]
        stds = [_mean_std([_loss(task, s, ABLATION_SIZE, seed) for seed in SEEDS])[1] for s in line["strategy"]]
        assert line["mean"] == pytest.approx(means)
        assert line["minimum"] == pytest.approx(min(means))
        assert line["normalised_mean"] == pytest.approx([m / min(means) for m in means])
        assert line["normalised_std"] == pytest.approx([s / min(means) for s in stds])
        assert min(line["normalised_mean"]) == pytest.approx(1.0)
        line = blocks["tasks"][task]
        assert line["strategy"] == ["finetune-blocks1", "finetune-blocks2", "finetune"]
        assert line["x"] == [1, 2, 3]
        assert line["normalised_mean"][-1] == pytest.approx(1.0)  # all blocks is best in the fake table
    # By hand: tau_id at 2000 jets, finetune 0.26 and 0.28 (mean 0.27, the minimum); fixed 0.39, 0.41.
    assert unfreeze["tasks"]["tau_id"]["normalised_mean"][3] == pytest.approx(0.40 / 0.27)


def test_fig7_ablation_runs_win_over_base_runs_and_single_seed(tmp_path, captured):
    rows = [
        _row("tau_id", "finetune", ABLATION_SIZE, 0, "Z_Ztautau"),
        {**_row("tau_id", "finetune-unfreeze30", ABLATION_SIZE, 0, "Z_Ztautau"), "best_val_loss": 0.5},
        {**_row("tau_id", "finetune-unfreezenever", ABLATION_SIZE, 0, "Z_Ztautau"), "best_val_loss": 0.6},
        _row("tau_id", "fixed", ABLATION_SIZE, 0, "Z_Ztautau"),
        _row("tau_id", "scratch", ABLATION_SIZE, 0, "Z_Ztautau"),  # not an ablation point
        _row("tau_id", "finetune-unfreeze0", 1000, 0, "Z_Ztautau"),  # another size
    ]
    summary = fig7_ablations(rows, tmp_path / "fig7", ABLATION_SIZE, default_unfreeze_epoch=30, n_blocks_total=3)

    line = summary["unfreeze"]["tasks"]["tau_id"]
    assert line["strategy"] == ["finetune-unfreeze30", "finetune-unfreezenever"]
    assert line["mean"] == pytest.approx([0.5, 0.6])
    assert line["std"] == [None, None]
    assert line["x"] == [30, 45]  # one unfreeze epoch: "never" half of it further right
    assert summary["blocks"]["tasks"]["tau_id"]["strategy"] == ["finetune"]
    assert set(summary["unfreeze"]["tasks"]) == {"tau_id"}


def test_fig7_without_ablation_runs_shows_no_data(tmp_path, captured):
    rows = [_row("tau_id", "scratch", ABLATION_SIZE, 0, "Z_Ztautau")]
    summary = fig7_ablations(rows, tmp_path / "fig7", ABLATION_SIZE, default_unfreeze_epoch=30, n_blocks_total=3)
    assert summary["unfreeze"]["tasks"] == {} and summary["blocks"]["tasks"] == {}
    assert _panel_texts(captured[0]) == ["no ablation runs", "no ablation runs"]


def test_fig7_bad_arguments(tmp_path):
    with pytest.raises(TaufmError, match="n_blocks_total"):
        fig7_ablations(_rows(), tmp_path / "fig7", ABLATION_SIZE, default_unfreeze_epoch=30, n_blocks_total=0)
    with pytest.raises(TaufmError, match="default_unfreeze_epoch"):
        fig7_ablations(_rows(), tmp_path / "fig7", ABLATION_SIZE, default_unfreeze_epoch=-1, n_blocks_total=3)
    assert _outputs(tmp_path) == []


# --- Fig. 8 ------------------------------------------------------------------------------------

# Strategies of the backbone table: (label drawn, backbone, inputs, loss and metric factor).
FIG8_STRATEGIES = {
    "scratch": ("From scratch (tokens-ntp)", "tokens-ntp", "paper", 1.3),
    "fixed": ("Fixed backbone (tokens-ntp)", "tokens-ntp", "paper", 1.5),
    "fixed@continuous-mpm": ("Fixed backbone (continuous-mpm)", "continuous-mpm", "paper", 1.4),
    "finetune": ("Fine-tuned backbone (tokens-ntp)", "tokens-ntp", "paper", 1.0),
    "finetune+lifetime": ("Fine-tuned backbone (tokens-ntp) + lifetime", "tokens-ntp", "paper+lifetime", 0.8),
    "finetune@continuous-mpm": ("Fine-tuned backbone (continuous-mpm)", "continuous-mpm", "paper", 0.9),
    "finetune@continuous-mpm+lifetime": ("Fine-tuned backbone (continuous-mpm) + lifetime", "continuous-mpm", "paper+lifetime", 0.7),
    "part": ("ParT (baseline)", None, "paper", 1.2),
    "part+lifetime": ("ParT (baseline) + lifetime", None, "paper+lifetime", 1.1),
}
FIG8_METRIC_BASE = {"tau_id": ("misid_at_80", 0.03), "pt_regression": ("resolution_iqr_over_median", 0.1), "decay_mode": ("auc_weighted", 0.5)}
FIG8_SEED_STEP = 0.01  # metric: base × factor + step × seed on Z_Ztautau (ZH: +1, never drawn)


def _fig8_value(task, strategy, size, seed):
    _, base = FIG8_METRIC_BASE[task]
    return base * FIG8_STRATEGIES[strategy][3] * SIZE_FACTOR[size] + FIG8_SEED_STEP * seed


def _fig8_loss(task, strategy, size, seed):
    return TASK_SCALE[task] * FIG8_STRATEGIES[strategy][3] * SIZE_FACTOR[size] + SEED_OFFSET * seed


def _fig8_rows(strategies=tuple(FIG8_STRATEGIES), seeds=SEEDS, with_columns=True):
    """The aggregated metrics table of two backbones and two input sets (and an ablation, not drawn)."""
    rows = []
    for task in TASKS:
        key, _ = FIG8_METRIC_BASE[task]
        for strategy in (*strategies, "finetune-blocks1@continuous-mpm"):
            _, backbone, inputs, _ = FIG8_STRATEGIES.get(strategy, (None, "continuous-mpm", "paper", 5.0))
            for size in SIZES:
                for seed in seeds:
                    for sample, offset in (("Z_Ztautau", 0.0), ("ZH_Htautau", 1.0)):
                        known = strategy in FIG8_STRATEGIES
                        row = {"task": task, "strategy": strategy, "size": size, "seed": seed, "test_sample": sample}
                        if with_columns:
                            row |= {"backbone": backbone, "inputs": inputs}
                        row["best_val_loss"] = _fig8_loss(task, strategy, size, seed) if known else 9.0
                        row[key] = (_fig8_value(task, strategy, size, seed) if known else 9.0) + offset
                        rows.append(row)
    return aggregate(rows)


def _line_styles(fig):
    return {line.get_label(): (line.get_color(), line.get_linestyle(), line.get_marker()) for ax in fig.axes for line in ax.get_lines()}


def test_fig8_two_backbones_and_two_input_sets(tmp_path):
    stem = tmp_path / "figs" / "fig8_backbones"
    summary = fig8_backbones(_fig8_rows(), stem)

    _check_figure_files(stem)
    assert _outputs(stem.parent) == ["fig8_backbones.pdf", "fig8_backbones.png"]
    assert list(summary) == ["best_val_loss", "misid_at_80", "resolution_iqr_over_median", "auc_weighted"]
    labels = [label for label, *_ in FIG8_STRATEGIES.values()]  # drawing order; the ablation is left out
    for task in TASKS:
        key, _ = FIG8_METRIC_BASE[task]
        assert list(summary[key]) == [task]
        for quantity, value in (("best_val_loss", _fig8_loss), (key, _fig8_value)):
            lines = summary[quantity][task]
            assert list(lines) == labels
            for strategy, (label, backbone, inputs, _) in FIG8_STRATEGIES.items():
                line = lines[label]
                assert (line["strategy"], line["backbone"], line["inputs"]) == (strategy, backbone, inputs)
                assert line["size"] == list(SIZES) and line["n_seeds"] == [2, 2]
                for i, size in enumerate(SIZES):
                    mean, std = _mean_std([value(task, strategy, size, seed) for seed in SEEDS])
                    assert line["mean"][i] == pytest.approx(mean)
                    assert line["std"][i] == pytest.approx(std)
    # By hand: misID of finetune@continuous-mpm+lifetime at 10^4 jets: 0.021 and 0.031 (Z_Ztautau
    # only; the ZH rows are 1 higher) -> mean 0.026, population std 0.005.
    line = summary["misid_at_80"]["tau_id"]["Fine-tuned backbone (continuous-mpm) + lifetime"]
    assert line["mean"][1] == pytest.approx(0.026) and line["std"][1] == pytest.approx(0.005)
    assert summary["best_val_loss"]["pt_regression"]["ParT (baseline) + lifetime"]["mean"][0] == pytest.approx(0.05 * 1.1 * 1.5 + 0.01)
    json.dumps(summary)  # JSON-able


def test_fig8_colours_by_backbone_and_family_dashes_for_lifetime(tmp_path, captured):
    fig8_backbones(_fig8_rows(), tmp_path / "fig8")
    (fig,) = captured
    styles = _line_styles(fig)
    palette = paper_figures.BACKBONE_PALETTE
    assert styles["Fine-tuned backbone (tokens-ntp)"] == (STRATEGY_COLORS["finetune"], "-", "o")
    assert styles["Fine-tuned backbone (tokens-ntp) + lifetime"] == (STRATEGY_COLORS["finetune"], "--", "o")
    assert styles["Fixed backbone (tokens-ntp)"] == (STRATEGY_COLORS["fixed"], "-", "s")
    # Other backbones: the palette in (family, backbone) order: fixed@continuous-mpm, then finetune@continuous-mpm.
    assert styles["Fixed backbone (continuous-mpm)"] == (palette[0], "-", "s")
    assert styles["Fine-tuned backbone (continuous-mpm)"] == (palette[1], "-", "o")
    assert styles["Fine-tuned backbone (continuous-mpm) + lifetime"] == (palette[1], "--", "o")
    assert styles["ParT (baseline) + lifetime"] == (STRATEGY_COLORS["part"], "--", "D")
    assert styles["From scratch (tokens-ntp)"] == (STRATEGY_COLORS["scratch"], "-", "v")
    assert len(fig.axes) == 6 and all(ax.get_xscale() == "log" for ax in fig.axes)
    assert [ax.get_ylabel() for ax in fig.axes[3:]] == [
        "misID rate at 80% τ efficiency (Z_Ztautau)", "pT resolution (Z_Ztautau)", "decay-mode AUC (Z_Ztautau)"]
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == len(FIG8_STRATEGIES)


def test_fig8_of_a_table_without_backbone_strategies(tmp_path):
    """The paper's grid only (no @backbone, no +lifetime, no backbone/inputs columns): the default backbone's lines."""
    stem = tmp_path / "fig8"
    summary = fig8_backbones(_rows(), stem)

    _check_figure_files(stem)
    labels = ["From scratch (tokens-ntp)", "Fixed backbone (tokens-ntp)", "Fine-tuned backbone (tokens-ntp)", "ParT (baseline)"]
    for quantity, task in (("best_val_loss", "decay_mode"), ("misid_at_80", "tau_id"), ("auc_weighted", "decay_mode")):
        assert list(summary[quantity][task]) == labels
    finetune = summary["misid_at_80"]["tau_id"]["Fine-tuned backbone (tokens-ntp)"]
    assert (finetune["backbone"], finetune["inputs"]) == ("tokens-ntp", "paper")
    assert finetune["size"] == [1000, ABLATION_SIZE, 10000]  # the ablation size's finetune runs count too
    assert finetune["mean"] == pytest.approx([0.031] * 3) and finetune["std"] == pytest.approx([0.001] * 3)
    assert summary["best_val_loss"]["tau_id"]["ParT (baseline)"]["backbone"] is None
    loss = summary["best_val_loss"]["tau_id"]["Fine-tuned backbone (tokens-ntp)"]
    assert loss["mean"][0] == pytest.approx(0.31) and loss["std"][0] == pytest.approx(0.01)  # as in Fig. 4


def test_fig8_single_seed_missing_task_and_sample(tmp_path, captured):
    rows = [r for r in _fig8_rows(strategies=("finetune", "finetune@continuous-mpm+lifetime"), seeds=(1,)) if r["task"] != "pt_regression"]
    rows = [r for r in rows if not (r["task"] == "decay_mode" and r["test_sample"] == "Z_Ztautau")]
    summary = fig8_backbones(rows, tmp_path / "fig8")

    (fig,) = captured
    assert summary["best_val_loss"]["pt_regression"] == {} and summary["resolution_iqr_over_median"]["pt_regression"] == {}
    assert summary["auc_weighted"]["decay_mode"] == {}  # decay-mode runs, but none on Z_Ztautau
    line = summary["misid_at_80"]["tau_id"]["Fine-tuned backbone (continuous-mpm) + lifetime"]
    assert line["std"] == [None, None] and line["n_seeds"] == [1, 1]
    assert line["mean"] == pytest.approx([_fig8_value("tau_id", "finetune@continuous-mpm+lifetime", s, 1) for s in SIZES])
    assert sorted(_panel_texts(fig)) == ["no Z_Ztautau rows", "no runs of this task", "no runs of this task"]
    assert not fig.axes[0].collections, "one seed: no band"


def test_fig8_of_an_empty_table_and_of_an_older_table(tmp_path, captured):
    summary = fig8_backbones([], tmp_path / "fig8")
    assert summary == {"best_val_loss": dict.fromkeys(TASKS, {}), **{key: {task: {}} for task, (key, _) in FIG8_METRIC_BASE.items()}}
    assert _panel_texts(captured[-1]) == ["no runs of this task"] * 6
    # A table of an older taufm, without backbone and inputs columns: read off the strategy names.
    older = fig8_backbones(_fig8_rows(with_columns=False), tmp_path / "fig8")
    line = older["auc_weighted"]["decay_mode"]["Fixed backbone (continuous-mpm)"]
    assert (line["strategy"], line["backbone"], line["inputs"]) == ("fixed@continuous-mpm", "continuous-mpm", "paper")
    assert older["auc_weighted"]["decay_mode"]["ParT (baseline) + lifetime"]["backbone"] is None


def test_fig8_bad_strategy_rows_are_clear_errors(tmp_path):
    rows = _fig8_rows()
    with pytest.raises(TaufmError, match=r"Fig\. 8: metrics row \d+ \(tau_id/fine-tune n=1000 seed=0\): unknown strategy 'fine-tune'"):
        fig8_backbones([*rows, {**rows[0], "strategy": "fine-tune"}], tmp_path / "out" / "fig8")
    other = {**rows[0], "seed": 7, "inputs": "paper+lifetime"}  # a scratch run that says other inputs than its strategy's runs
    with pytest.raises(TaufmError, match=r"rows of strategy 'scratch' disagree on its backbone and inputs"):
        fig8_backbones([*rows, other], tmp_path / "out" / "fig8")
    assert _outputs(tmp_path / "out") == []


# --- headline table ----------------------------------------------------------------------------


def test_summary_table_numbers_and_files(tmp_path):
    md, csv_path = tmp_path / "tables" / "summary.md", tmp_path / "tables" / "summary.csv"
    table = summary_table(_rows(), 10000, md, csv_path)

    assert _outputs(md.parent) == ["summary.csv", "summary.md"]
    by_key = {row["key"]: row for row in table}
    assert list(by_key) == ["misid_at_80", "response", "resolution_iqr_over_median", "resolution_iqr", "auc", "auc_weighted"]
    paper = {"misid_at_80": (0.039, 0.031), "response": (1.082, 1.027), "resolution_iqr_over_median": (0.143, 0.068)}
    for key, (scratch, finetune) in paper.items():
        assert (by_key[key]["paper_scratch"], by_key[key]["paper_finetune"]) == (scratch, finetune)
        assert by_key[key]["paper_finetune_over_scratch"] == pytest.approx(finetune / scratch)
    assert by_key["resolution_iqr"]["paper_scratch"] is None
    for key, row in by_key.items():
        for strategy in ("scratch", "finetune", "part"):
            mean, std = _mean_std(METRICS[key][strategy])  # the Z_Ztautau values, never the ZH ones
            assert row[f"{strategy}_mean"] == pytest.approx(mean)
            assert row[f"{strategy}_std"] == pytest.approx(std)
            assert row[f"{strategy}_n_seeds"] == 2
        assert row["finetune_over_scratch"] == pytest.approx(row["finetune_mean"] / row["scratch_mean"])
        assert "fixed_mean" not in row
    # By hand: misID 0.040, 0.038 -> 0.039 ± 0.001; resolution 0.068, 0.066 -> 0.067.
    assert by_key["misid_at_80"]["scratch_mean"] == pytest.approx(0.039)
    assert by_key["resolution_iqr_over_median"]["finetune_mean"] == pytest.approx(0.067)

    text = md.read_text()
    for number in ("0.143", "0.068", "1.082", "1.027", "0.039", "0.031"):
        assert number in text
    assert "| pT resolution | (q75 - q25) / q50 of pred / gen visible τ pT | 0.143 | 0.068 |" in text
    assert "0.039 ± 0.001 (2)" in text
    assert "ParT" in text
    with csv_path.open() as f:
        records = list(csv.DictReader(f))
    assert [r["key"] for r in records] == list(by_key)
    assert float(records[0]["finetune_mean"]) == pytest.approx(0.031)
    assert records[3]["paper_scratch"] == ""


def test_summary_table_single_seed_without_part(tmp_path):
    rows = _rows(strategies=("scratch", "finetune"), seeds=(1,), ablations=False)
    table = summary_table(rows, 1000, tmp_path / "s.md", tmp_path / "s.csv")

    row = table[0]
    assert row["scratch_mean"] == pytest.approx(0.038) and row["scratch_std"] is None and row["scratch_n_seeds"] == 1
    assert row["part_mean"] is None and row["part_n_seeds"] == 0
    text = (tmp_path / "s.md").read_text()
    assert "ParT" not in text
    assert "0.038 (1)" in text
    assert "differs from the paper's" in text


def test_summary_table_writes_both_files_or_neither(tmp_path, monkeypatch):
    def broken_writer(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(paper_figures.csv, "DictWriter", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        summary_table(_rows(ablations=False), 1000, tmp_path / "out" / "s.md", tmp_path / "out" / "s.csv")
    assert _outputs(tmp_path / "out") == []


def test_summary_table_missing_test_sample_key(tmp_path):
    rows = _drop(_rows(ablations=False), 0, "test_sample")
    with pytest.raises(TaufmError, match="metrics row 0 .* has no key 'test_sample'"):
        summary_table(rows, 1000, tmp_path / "out" / "s.md", tmp_path / "out" / "s.csv")
    assert _outputs(tmp_path / "out") == []


def test_an_empty_table_gives_no_data_panels_and_an_empty_summary(tmp_path, captured):
    assert fig4_validation_loss([], tmp_path / "fig4")["tasks"] == dict.fromkeys(TASKS, {})
    assert _panel_texts(captured[-1]) == ["no runs of this task"] * 3
    fig7_ablations([], tmp_path / "fig7", ABLATION_SIZE, default_unfreeze_epoch=30, n_blocks_total=3)
    assert _panel_texts(captured[-1]) == ["no ablation runs"] * 2
    table = summary_table([], 10000, tmp_path / "s.md", tmp_path / "s.csv")
    assert all(row["finetune_mean"] is None and row["scratch_n_seeds"] == 0 for row in table)
    assert "| 0.143 | 0.068 | 0.476 | — | — | — |" in (tmp_path / "s.md").read_text()
