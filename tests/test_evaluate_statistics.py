"""Statistics on every number (taufm.evaluate.metrics): bootstrap intervals over the test jets,
the interval of the seed mean, the paper's comparisons between strategies, the per-epoch metrics
by the same definitions, and the metrics -> aggregate -> figures commands on real run folders."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from taufm.cli import main
from taufm.errors import TaufmError
from taufm.evaluate import metrics as m
from taufm.finetune.tasks import epoch_metrics
from taufm.physics.tau import DECAY_MODE_NAMES

N_TAU, N_QQ = 300, 300


def _tau_id_predictions(quality: float, seed: int, n_tau: int = N_TAU, first_event: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = n_tau + N_QQ
    tau = np.arange(n) < n_tau
    score = 1 / (1 + np.exp(-rng.normal(np.where(tau, quality, -quality), 1.0)))
    return pa.table(
        {
            "sample": ["Z_Ztautau"] * n_tau + ["qq"] * N_QQ,
            "event": np.arange(first_event, first_event + n),
            "jet_index": np.zeros(n, dtype=np.int16),
            "label": tau.astype(np.int8),
            "score": score.astype(np.float32),
        }
    )


def _run(root, strategy: str, seed: int, table: pa.Table, size: int = 1000, loss: float = 0.5):
    directory = root / "finetune" / "tau_id" / strategy / f"n{size}" / f"seed{seed}"
    directory.mkdir(parents=True)
    pq.write_table(table, directory / "predictions.parquet")
    summary = {"task": "tau_id", "strategy": strategy, "size": size, "seed": seed, "device_seconds": 5.0, "flops_per_jet": 2e4, "jets_trained": 2000, "jets_per_second": 400.0}
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "history.csv").write_text(f"epoch,val_loss\n0,{loss + 0.1}\n1,{loss}\n")
    return directory


def test_bootstrap_interval_of_one_run(tmp_path):
    run = _run(tmp_path, "finetune", 0, _tau_id_predictions(0.6, 0))
    rows, details = m.evaluate_run(run, n_bootstrap=100)
    ztt = rows[0]
    assert ztt["test_sample"] == "Z_Ztautau"
    replicates = details["samples"]["Z_Ztautau"]["bootstrap"]
    assert set(replicates) == {"auc", "misid_at_80"} and all(len(v) == 100 for v in replicates.values())
    for name in ("auc", "misid_at_80"):
        low, high = ztt[f"{name}_ci68_low"], ztt[f"{name}_ci68_high"]
        assert low < ztt[name] < high, name
        assert (low, high) == pytest.approx(tuple(np.percentile(replicates[name], [16, 84])))
    # The AUC's bootstrap spread is about its analytic standard error (Hanley-McNeil ~ 0.01 here).
    assert 0.003 < np.std(replicates["auc"]) < 0.03
    # The qq row has no metric: no interval either.
    assert math.isnan(rows[1]["auc_ci68_low"]) and math.isnan(rows[1]["misid_at_80_ci68_high"])
    # Same call, same replicates; no replicates, NaN intervals.
    assert m.evaluate_run(run, n_bootstrap=100)[1]["samples"]["Z_Ztautau"]["bootstrap"] == replicates
    (row, _qq) = m.run_metrics(run, n_bootstrap=0)
    assert math.isnan(row["auc_ci68_low"]) and row["auc"] == ztt["auc"]
    with pytest.raises(TaufmError, match="bootstrap replicates must be a non-negative integer"):
        m.evaluate_run(run, n_bootstrap=-1)


def test_bootstrap_indices_depend_on_the_size_and_seed_only():
    a = list(m.bootstrap_indices(50, 3, seed=4))
    b = list(m.bootstrap_indices(50, 3, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], next(m.bootstrap_indices(50, 1, seed=5)))
    assert all(x.min() >= 0 and x.max() < 50 for x in a)


def test_the_details_hold_the_figure_curves(tmp_path):
    run = _run(tmp_path, "finetune", 0, _tau_id_predictions(1.5, 0))
    rows, details = m.evaluate_run(run, n_bootstrap=2)
    curve = details["samples"]["Z_Ztautau"]["curves"]["misid"]
    assert curve["efficiency"] == m.EFFICIENCY_GRID.tolist()
    assert curve["misid"][curve["efficiency"].index(0.8)] == pytest.approx(rows[0]["misid_at_80"])
    assert (curve["n_signal"], curve["n_background"]) == (N_TAU, N_QQ)
    assert details["samples"]["qq"]["curves"] == {}
    assert details["samples"]["Z_Ztautau"]["jets_sha256"] != details["samples"]["qq"]["jets_sha256"]


def _grid(tmp_path, same_jets: bool = True):
    """Two seeds each of scratch (weaker) and finetune (stronger) on the same (or other) test jets."""
    runs = []
    for seed in (0, 1):
        runs.append(_run(tmp_path, "scratch", seed, _tau_id_predictions(0.5, 10 + seed), loss=0.6 + 0.01 * seed))
        other = {} if same_jets else {"first_event": 5000}
        runs.append(_run(tmp_path, "finetune", seed, _tau_id_predictions(0.8, 20 + seed, **other), loss=0.4 + 0.02 * seed))
    return runs


def test_the_mean_row_carries_the_interval_of_the_seed_mean(tmp_path):
    evaluated = [m.evaluate_run(run, n_bootstrap=50) for run in _grid(tmp_path)]
    rows = [r for run_rows, _ in evaluated for r in run_rows]
    details = [d for _, d in evaluated]
    out = m.aggregate(rows, details)
    mean = next(r for r in out if r["statistic"] == "mean" and r["strategy"] == "finetune" and r["test_sample"] == "Z_Ztautau")
    seeds = [d["samples"]["Z_Ztautau"]["bootstrap"]["auc"] for d in details if d["run"]["strategy"] == "finetune"]
    expected = np.percentile(np.mean(seeds, axis=0), [16, 84])
    assert (mean["auc_ci68_low"], mean["auc_ci68_high"]) == pytest.approx(tuple(expected))
    # Without the details, the mean of the runs' own bounds.
    plain = next(r for r in m.aggregate(rows) if r["statistic"] == "mean" and r["strategy"] == "finetune" and r["test_sample"] == "Z_Ztautau")
    own = [r["auc_ci68_low"] for r in rows if r["strategy"] == "finetune" and r["test_sample"] == "Z_Ztautau"]
    assert plain["auc_ci68_low"] == pytest.approx(np.mean(own))


def test_comparisons_are_paired_on_the_same_jets(tmp_path):
    evaluated = [m.evaluate_run(run, n_bootstrap=50) for run in _grid(tmp_path)]
    rows = [r for run_rows, _ in evaluated for r in run_rows]
    details = [d for _, d in evaluated]
    comparisons = m.compare_strategies(rows, details)
    # Only finetune - scratch ran (no fixed, no part); per test sample: auc, misid_at_80, best_val_loss.
    assert {(c["strategy_a"], c["strategy_b"]) for c in comparisons} == {("finetune", "scratch")}
    by = {(c["test_sample"], c["metric"]): c for c in comparisons}
    auc = by[("Z_Ztautau", "auc")]
    value = {s: [r["auc"] for r in rows if r["strategy"] == s and r["test_sample"] == "Z_Ztautau"] for s in ("finetune", "scratch")}
    assert auc["difference"] == pytest.approx(np.mean(value["finetune"]) - np.mean(value["scratch"]))
    assert auc["difference"] > 0 and auc["bootstrap"] == "paired"
    assert auc["difference_ci68_low"] < auc["difference"] < auc["difference_ci68_high"]
    se = math.sqrt(np.var(value["finetune"], ddof=1) / 2 + np.var(value["scratch"], ddof=1) / 2)
    assert auc["difference_seed_se"] == pytest.approx(se)
    loss = by[("Z_Ztautau", "best_val_loss")]
    assert loss["difference"] == pytest.approx((0.4 + 0.42) / 2 - (0.6 + 0.61) / 2)
    assert loss["bootstrap"] == "none" and math.isnan(loss["difference_ci68_low"])
    # Tested on other jets (another fingerprint): the replicates are not paired.
    independent = m.compare_strategies(*_evaluated(tmp_path / "other", same_jets=False))
    other = next(c for c in independent if c["metric"] == "auc" and c["test_sample"] == "Z_Ztautau")
    assert other["bootstrap"] == "independent" and other["difference_ci68_low"] < other["difference_ci68_high"]


def _evaluated(root, same_jets):
    evaluated = [m.evaluate_run(run, n_bootstrap=50) for run in _grid(root, same_jets)]
    return [r for run_rows, _ in evaluated for r in run_rows], [d for _, d in evaluated]


def test_comparisons_table_round_trips(tmp_path):
    rows, details = _evaluated(tmp_path, True)
    comparisons = m.compare_strategies(rows, details)
    m.write_comparisons(comparisons, tmp_path / "c.csv", tmp_path / "c.parquet")
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.column_names[:6] == list(m.COMPARISON_KEYS)
    assert table.num_rows == len(comparisons)
    m.write_comparisons([], tmp_path / "e.csv", tmp_path / "e.parquet")
    assert pq.read_table(tmp_path / "e.parquet").column_names == list(m.COMPARISON_KEYS)


def test_epoch_metrics_use_the_test_metrics_definitions():
    rng = np.random.default_rng(0)
    n = 200
    target = (rng.random(n) < 0.4).astype(np.float32)
    logits = rng.normal(target * 2 - 1, 1.0).astype(np.float32)[:, None]
    assert epoch_metrics("tau_id", logits, target, {})["auc"] == pytest.approx(m.roc_auc(target, 1 / (1 + np.exp(-logits[:, 0]))))

    jet_pt = rng.uniform(20, 50, n)
    gen = jet_pt * rng.normal(0.9, 0.1, n)
    gen[:5] = 0.0  # no finite ratio: left out by both
    out = rng.normal(0.0, 0.1, n).astype(np.float32)[:, None]
    got = epoch_metrics("pt_regression", out, out[:, 0], {"jet_pt": jet_pt, "gen_tau_vis_pt": gen})
    want = m.response_resolution(np.exp(out[:, 0]) * jet_pt, gen)
    assert got["response_median"] == pytest.approx(want["response"]) and got["resolution_iqr"] == pytest.approx(want["iqr"])

    modes = rng.choice([0, 1, 3], size=n)
    logits = rng.normal(0, 1, (n, len(DECAY_MODE_NAMES))).astype(np.float32)
    logits[np.arange(n), modes] += 1.0
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    got = epoch_metrics("decay_mode", logits, modes, {})
    assert got["auc_weighted"] == pytest.approx(m.decay_mode_aucs(modes, probs)["weighted"], rel=1e-5)


def test_metrics_aggregate_and_figures_commands(tmp_path, capsys):
    """The commands the workflow runs, on run folders: the figures draw the listed runs only."""
    runs = _grid(tmp_path)
    stale = _run(tmp_path, "finetune", 9, _tau_id_predictions(3.0, 99))  # left from an earlier config
    for run in [*runs, stale]:
        assert main(["metrics", "--run-dir", str(run), "--output", str(run / "metrics.json"), "--details", str(run / m.DETAILS_FILE),
                     "--bootstrap-replicates", "20"]) == 0
    out = tmp_path / "tables"
    tokenizer_summary = tmp_path / "tokenizer_summary.json"
    tokenizer_summary.write_text(json.dumps({"device_seconds": 30.0, "flops_per_jet": 1e5, "jets_trained": 1000, "jets_per_second": 33.3, "peak_memory_mb": 200.0}))
    tables = ["--csv", str(out / "metrics.csv"), "--parquet", str(out / "metrics.parquet"),
              "--comparisons-csv", str(out / "comparisons.csv"), "--comparisons-parquet", str(out / "comparisons.parquet"),
              "--grid-cost-csv", str(out / "grid_cost.csv"), "--grid-cost-parquet", str(out / "grid_cost.parquet"),
              "--stage-cost", f"tokenizer={tokenizer_summary}"]
    assert main(["aggregate-metrics", *tables, *(str(r / "metrics.json") for r in runs)]) == 0
    comparisons = pq.read_table(out / "comparisons.parquet").to_pylist()
    assert {c["bootstrap"] for c in comparisons if c["metric"] == "auc" and c["test_sample"] == "Z_Ztautau"} == {"paired"}
    figures = tmp_path / "figures"
    cost = pq.read_table(out / "grid_cost.parquet").to_pylist()
    assert [(r["stage"], r["strategy"]) for r in cost] == [("finetune", "scratch"), ("finetune", "finetune"), ("tokenizer", None), ("total", None)]
    assert cost[-1]["device_seconds"] == pytest.approx(30.0 + 2 * 2 * 5.0)  # each run's summary says 5 s
    assert cost[2]["train_flops_estimate"] == pytest.approx(3 * 1e5 * 1000)
    args = ["paper-figures", "--metrics", str(out / "metrics.parquet"), "--comparisons", str(out / "comparisons.parquet"),
            "--grid-cost", str(out / "grid_cost.parquet"),
            "--size", "1000", "--ablation-size", "1000", "--unfreeze-epoch", "1", "--n-blocks", "2", "--output-dir", str(figures)]
    assert main([*args, *(str(r / m.DETAILS_FILE) for r in runs)]) == 0
    text = (figures / "summary_table.md").read_text()
    assert "## Differences between strategies" in text and "seeds ±" in text
    assert (figures / "grid_cost.png").stat().st_size > 1000
    with (figures / "summary_table.csv").open(newline="") as handle:
        table = {row["key"]: row for row in csv.DictReader(handle)}
    auc = next(c for c in comparisons if c["metric"] == "auc" and c["test_sample"] == "Z_Ztautau")
    assert float(table["auc"]["finetune_minus_scratch"]) == pytest.approx(auc["difference"])
    assert float(table["auc"]["finetune_ci68_low"]) < float(table["auc"]["finetune_mean"]) < float(table["auc"]["finetune_ci68_high"])

    # A metrics file without its details beside it is named.
    (runs[0] / m.DETAILS_FILE).unlink()
    assert main(["aggregate-metrics", *tables, str(runs[0] / "metrics.json")]) == 2
    assert "metrics_details.json: not a run details file" in capsys.readouterr().err
    code = main([*args[:2], str(tmp_path / "nowhere.parquet"), *args[3:], str(runs[1] / m.DETAILS_FILE)])
    assert code == 2 and "nowhere.parquet: not a readable metrics table" in capsys.readouterr().err


def test_every_row_carries_the_runs_cost(tmp_path):
    run = _run(tmp_path, "finetune", 0, _tau_id_predictions(0.8, 0))
    rows = m.run_metrics(run, n_bootstrap=0)
    for row in rows:
        assert row["device_seconds"] == 5.0 and row["flops_per_jet"] == 2e4 and row["jets_per_second"] == 400.0
        assert row["train_flops_estimate"] == 3 * 2e4 * 2000  # from the forward FLOPs when the summary has no estimate
        assert math.isnan(row["peak_memory_mb"])  # not in this summary: NaN, not an error
    (point, total) = m.grid_cost(rows)
    assert point["n_runs"] == 1 and point["device_seconds"] == 5.0, "a run counts once, whatever its test samples"
    assert total["stage"] == "total" and total["train_flops_estimate"] == 3 * 2e4 * 2000


def test_bad_stage_costs_and_run_details_are_named(tmp_path, capsys):
    run = _run(tmp_path, "finetune", 0, _tau_id_predictions(0.8, 0))
    assert main(["metrics", "--run-dir", str(run), "--output", str(run / "metrics.json"), "--details", str(run / m.DETAILS_FILE),
                 "--bootstrap-replicates", "2"]) == 0
    not_an_object = tmp_path / "summary.json"
    not_an_object.write_text("[1, 2]")
    out = tmp_path / "tables"
    tables = ["--csv", str(out / "m.csv"), "--parquet", str(out / "m.parquet"), "--comparisons-csv", str(out / "c.csv"),
              "--comparisons-parquet", str(out / "c.parquet"), "--grid-cost-csv", str(out / "g.csv"), "--grid-cost-parquet", str(out / "g.parquet")]
    assert main(["aggregate-metrics", *tables, "--stage-cost", f"tokenizer={not_an_object}", str(run / "metrics.json")]) == 2
    assert "summary.json: not a training summary" in capsys.readouterr().err
    assert not out.exists(), "nothing half-written"

    from taufm.plots.paper_figures import runs_from_details

    details = json.loads((run / m.DETAILS_FILE).read_text())
    details["run"]["size"] = "1000"
    (run / m.DETAILS_FILE).write_text(json.dumps(details))
    with pytest.raises(TaufmError, match=r"metrics_details\.json: the run's size and seed must be integers"):
        runs_from_details([run / m.DETAILS_FILE], 1000)
