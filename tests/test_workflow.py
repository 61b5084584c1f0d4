"""The whole workflow on the smoke preset, run by Snakemake as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"

pytestmark = pytest.mark.workflow


def snakemake(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(SMOKE), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def smoke_outputs(results: Path) -> dict[str, list[Path]]:
    smoke = yaml.safe_load(SMOKE.read_text())["simulate"]
    return {
        "future": [
            results / "simulated" / "future" / sample / f"{sample}_{i:03d}.root"
            for sample, n in smoke["future"]["shards"].items()
            for i in range(n)
        ],
        "jetclass": [
            results / "simulated" / "jetclass" / f"{process}_{i:03d}.root"
            for process, n in smoke["jetclass"]["shards"].items()
            for i in range(n)
        ],
    }


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke") / "results"
    snakemake("--config", f"results_dir={results}")
    return results


def test_smoke_run_produces_every_output(smoke_run):
    outputs = smoke_outputs(smoke_run)
    for path in outputs["future"]:
        with uproot.open(path) as f:
            assert f["events"].num_entries == yaml.safe_load(SMOKE.read_text())["simulate"]["future"]["events_per_shard"]
    for path in outputs["jetclass"]:
        with uproot.open(path) as f:
            assert f["tree"].num_entries == yaml.safe_load(SMOKE.read_text())["simulate"]["jetclass"]["jets_per_shard"]
    ingested = sorted((smoke_run / "ingested").rglob("*.parquet"))
    assert len(ingested) == len(outputs["future"]) + len(outputs["jetclass"])
    for shard in ingested:
        manifest = json.loads(shard.with_name(shard.name + ".json").read_text())
        assert manifest["jets"] == pq.read_metadata(shard).num_rows > 0
    signal = sum(
        json.loads(p.read_text())["signal_jets"] for p in (smoke_run / "ingested" / "future").rglob("*.json") if "tautau" in p.name
    )
    assert signal > 100, "the tau samples give tau jets"
    for name in ("ZH_Htautau", "Z_Ztautau", "qq", "ZJetsToNuNu", "TTBar"):
        for ext in ("png", "pdf"):
            figure = smoke_run / "figures" / "dataquality" / f"dataquality_{name}.{ext}"
            assert figure.stat().st_size > 1000, figure
    tokenizer = smoke_run / "tokenizer"
    assert (tokenizer / "tokenizer.pt").stat().st_size > 0 and (tokenizer / "history.csv").exists()
    for stem in ("fig2_residuals", "fig3_pid_confusion", "fig3_charge_confusion"):
        assert (smoke_run / "figures" / "tokenizer" / f"{stem}.png").stat().st_size > 1000
    tokenized = sorted((smoke_run / "tokenized").rglob("*.parquet"))
    assert len(tokenized) == len(ingested)
    for shard in tokenized:  # one token per candidate the tokenizer keeps, plus start and stop
        source = smoke_run / "ingested" / shard.relative_to(smoke_run / "tokenized")
        kept = json.loads(shard.with_name(shard.name + ".json").read_text())["candidates_dropped_by_tokenizer_cuts"]
        n_tokens = pq.read_table(shard, columns=["n_tokens"]).column("n_tokens").to_numpy()
        n_candidates = np.minimum(pq.read_table(source, columns=["n_cand"]).column("n_cand").to_numpy(), len(pq.read_table(source, columns=["cand_mask"]).column("cand_mask")[0]))
        assert int((n_tokens - 2).sum()) + kept == int(n_candidates.sum())
    for shard in tokenized:
        table = pq.read_table(shard, columns=["tokens", "token_mask"]).to_pydict()
        assert all(row[0] == 0 for row in table["tokens"]), "every sequence starts with the start token"
    pretrained = smoke_run / "pretrain"
    for name in ("backbone.pt", "backbone_best.pt", "history.csv", "model_config.json", "loss_curve.png"):
        assert (pretrained / name).stat().st_size > 0, name
    assert json.loads((pretrained / "model_config.json").read_text())["vocab_size"] == 32 + 2
    grid = yaml.safe_load(SMOKE.read_text())["finetune"]["grid"]
    for task in grid["tasks"]:
        for strategy in grid["strategies"]:
            run = smoke_run / "finetune" / task / strategy / f"n{grid['sizes'][0]}" / "seed0"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["task"] == task and summary["strategy"] == strategy
            assert pq.read_metadata(run / "predictions.parquet").num_rows > 0
    assert (smoke_run / "finetune" / "pt_regression" / "finetune-blocks1" / "n100" / "seed0" / "model.pt").exists()
    table = pq.read_table(smoke_run / "metrics.parquet").to_pylist()
    values = [r for r in table if r["statistic"] == "value"]
    ablations = yaml.safe_load(SMOKE.read_text())["finetune"]["ablations"]
    ablation_strategies = [f"finetune-unfreeze{k}" for k in ablations["unfreeze_epochs"]] + [f"finetune-blocks{b}" for b in ablations["n_blocks"]] + ["fixed", "finetune"]
    cells = {(t, s, n) for t in grid["tasks"] for s in grid["strategies"] for n in grid["sizes"]}
    cells |= {(t, s, ablations["size"]) for t in ablations["tasks"] for s in ablation_strategies}
    n_cells = len(cells)
    test_samples = {"tau_id": 3, "pt_regression": 2, "decay_mode": 2}
    assert len({(r["task"], r["strategy"], r["size"], r["seed"]) for r in values}) == n_cells
    assert len([r for r in values if r["strategy"] in grid["strategies"]]) == sum(test_samples[t] * len(grid["strategies"]) for t in grid["tasks"])
    assert {r["statistic"] for r in table} == {"value", "mean", "std"}
    for stem in ("fig4_validation_loss", "fig5_physics", "fig6_tsne", "fig7_ablations"):
        for ext in ("png", "pdf"):
            assert (smoke_run / "figures" / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert "0.143" in (smoke_run / "figures" / "summary_table.md").read_text(), "the paper's numbers beside ours"
    assert list((smoke_run / "logs").rglob("*.log")), "every job keeps a log"


def test_report_holds_every_figure(smoke_run, tmp_path):
    report = tmp_path / "report.html"
    snakemake("--config", f"results_dir={smoke_run}", "--report", str(report))
    text = report.read_text(errors="replace")
    for stem in ("fig4_validation_loss", "fig5_physics", "fig6_tsne", "fig7_ablations", "summary_table", "metrics"):
        assert stem in text, stem
    assert list((smoke_run / "benchmarks").rglob("*.tsv")), "every job keeps a benchmark"


def test_rerun_has_nothing_to_do(smoke_run):
    proc = snakemake("--config", f"results_dir={smoke_run}", "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_config_typo_fails_before_any_job_naming_the_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(f"results_dir: {tmp_path / 'results'}\nsimulate:\n  future:\n    evnts_per_shard: 10\n")
    proc = snakemake("--configfile", str(SMOKE), str(bad), check=False)
    assert proc.returncode != 0
    assert "simulate.future.evnts_per_shard: unknown key" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_real_files_mode_takes_the_simulate_rules_out_of_the_dag(smoke_run, tmp_path):
    outputs = smoke_outputs(smoke_run)
    files = {
        "future": {s: [str(smoke_run / "simulated" / "future" / s / "*.root")] for s in ("ZH_Htautau", "Z_Ztautau", "qq")},
        "jetclass": {p: [str(smoke_run / "simulated" / "jetclass" / f"{p}_*.root")] for p in ("ZJetsToNuNu", "TTBar")},
    }
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "data": {"source": "files", "files": files}}))
    proc = snakemake("--configfile", str(SMOKE), str(config), "--dry-run")
    text = proc.stdout + proc.stderr
    assert "simulate_ee" not in text and "simulate_jetclass" not in text
    assert "ingest_ee" in text and "ingest_jetclass" in text
    assert all(p.exists() for p in outputs["future"] + outputs["jetclass"])

    files["future"]["qq"] = [str(tmp_path / "nowhere" / "*.root")]
    config.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "data": {"source": "files", "files": files}}))
    proc = snakemake("--configfile", str(SMOKE), str(config), "--dry-run", check=False)
    assert proc.returncode != 0
    assert "data.files.future.qq" in proc.stdout + proc.stderr and "matches no file" in proc.stdout + proc.stderr


def test_paper_preset_builds_the_full_grid(smoke_run, tmp_path):
    """The paper's preset on (here: the smoke run's) real-format files plans every grid cell."""
    files = {
        "future": {s: [str(smoke_run / "simulated" / "future" / s / "*.root")] for s in ("ZH_Htautau", "Z_Ztautau", "qq")},
        "jetclass": {p: [str(smoke_run / "simulated" / "jetclass" / f"{p}_*.root")] for p in ("ZJetsToNuNu", "TTBar")},
    }
    override = tmp_path / "files.yaml"
    override.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "data": {"source": "files", "files": files}}))
    paper = ROOT / "workflow" / "presets" / "paper.yaml"
    proc = snakemake("--configfile", str(paper), str(override), "--dry-run", "--quiet", "rules")
    grid = yaml.safe_load(paper.read_text())["finetune"]
    n_grid = len(grid["grid"]["tasks"]) * len(grid["grid"]["strategies"]) * len(grid["grid"]["sizes"]) * len(grid["grid"]["seeds"])
    ablation_strategies = len(grid["ablations"]["unfreeze_epochs"]) + len(grid["ablations"]["n_blocks"]) + 2
    n_ablations = len(grid["ablations"]["tasks"]) * ablation_strategies * len(grid["ablations"]["seeds"])
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["finetune"] == n_grid + n_ablations
    assert counts["pretrain"] == 1 and counts["train_tokenizer"] == 1


def _planned_jobs(smoke_run, tmp_path, change: dict) -> set[str]:
    override = tmp_path / "change.yaml"
    override.write_text(yaml.safe_dump({"results_dir": str(smoke_run), **change}))
    proc = snakemake("--configfile", str(SMOKE), str(override), "--dry-run", "--quiet", "rules")
    return {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()} - {"total"}


def test_a_finetune_setting_reruns_exactly_finetuning_and_evaluation(smoke_run, tmp_path):
    finetune = yaml.safe_load(SMOKE.read_text())["finetune"]
    jobs = _planned_jobs(smoke_run, tmp_path, {"finetune": {**finetune, "epochs": finetune["epochs"] + 1}})
    assert jobs == {"finetune", "metrics", "aggregate_metrics", "paper_figures", "embeddings", "all"}


def test_a_simulation_setting_reruns_everything_downstream(smoke_run, tmp_path):
    jobs = _planned_jobs(smoke_run, tmp_path, {"simulate": {**yaml.safe_load(SMOKE.read_text())["simulate"], "seed": 7}})
    assert {"simulate_ee", "simulate_jetclass", "ingest_ee", "ingest_jetclass", "dataquality", "train_tokenizer", "tokenize_ee",
            "tokenize_jetclass", "tokenizer_checks", "pretrain", "finetune", "metrics", "aggregate_metrics", "paper_figures", "embeddings"} <= jobs
