"""The whole workflow on the smoke preset, run by Snakemake as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
import yaml

from taufm import paths
from taufm.finetune.packs import pack_families
from taufm.finetune.strategies import parse_strategy
from tests.slurm_smoke import TRAINING_RULES, SlurmSmokeRun

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"

pytestmark = pytest.mark.workflow


def snakemake(*args: str, check: bool = True, targets: Sequence[str | Path] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *map(str, targets), "--cores", "2", "--configfile", str(SMOKE), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def smoke_listed_files() -> dict[str, dict[str, list[str]]]:
    """The files the smoke preset reads instead of simulating (per kind, per sample)."""
    files = yaml.safe_load(SMOKE.read_text()).get("data", {}).get("files", {})
    return {kind: {name: globs for name, globs in (files.get(kind) or {}).items() if globs} for kind in ("future", "jetclass")}


def smoke_outputs(results: Path) -> dict[str, list[Path]]:
    """The simulated shards of the smoke run (samples read from files are not simulated)."""
    smoke = yaml.safe_load(SMOKE.read_text())["simulate"]
    listed = smoke_listed_files()
    return {
        "future": [
            results / "simulated" / "future" / sample / f"{sample}_{i:03d}.root"
            for sample, n in smoke["future"]["shards"].items()
            if sample not in listed["future"]
            for i in range(n)
        ],
        "jetclass": [
            results / "simulated" / "jetclass" / f"{process}_{i:03d}.root"
            for process, n in smoke["jetclass"]["shards"].items()
            if process not in listed["jetclass"]
            for i in range(n)
        ],
    }


def smoke_input_globs(results: Path) -> dict[str, dict[str, list[str]]]:
    """data.files that name every input of the smoke run: its simulated shards and its files."""
    listed = smoke_listed_files()
    future = {s: listed["future"].get(s) or [str(results / "simulated" / "future" / s / "*.root")] for s in ("ZH_Htautau", "Z_Ztautau", "qq")}
    jetclass = {p: listed["jetclass"].get(p) or [str(results / "simulated" / "jetclass" / f"{p}_*.root")] for p in ("ZJetsToNuNu", "TTBar")}
    return {"future": future, "jetclass": jetclass}


# A results directory with a space and a shell command substitution in its name: every path
# in every rule's command must be quoted (an unquoted one breaks the job or runs the command).
INJECTION_MARK = "taufm-injected"
ODD_RESULTS_NAME = f"results dir $(touch {INJECTION_MARK})"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke") / ODD_RESULTS_NAME
    snakemake("--config", f"results_dir={results}")
    return results


def test_the_local_profile_applies_by_itself(tmp_path):
    """profiles/default (rerun-incomplete, printed commands, ...) is used without being named:
    run from the repository root, Snakemake finds workflow/Snakefile and the profile under the
    working directory's profiles/ (the catalog's standard layout)."""
    proc = snakemake("--config", f"results_dir={tmp_path / 'results'}", "--dry-run", "--quiet", "rules")
    assert "workflow specific profile profiles/default" in proc.stdout + proc.stderr


def test_paths_with_spaces_and_dollars_are_quoted_in_every_rule(smoke_run):
    assert smoke_run.name == ODD_RESULTS_NAME and (smoke_run / "metrics.parquet").exists()
    for directory in (ROOT, smoke_run, smoke_run.parent, Path.cwd()):
        assert not list(directory.rglob(INJECTION_MARK)), f"a rule ran the substitution in {directory}"


def test_smoke_run_produces_every_output(smoke_run):
    outputs = smoke_outputs(smoke_run)
    for path in outputs["future"]:
        with uproot.open(path) as f:
            assert f["events"].num_entries == yaml.safe_load(SMOKE.read_text())["simulate"]["future"]["events_per_shard"]
    for path in outputs["jetclass"]:
        with uproot.open(path) as f:
            assert f["tree"].num_entries == yaml.safe_load(SMOKE.read_text())["simulate"]["jetclass"]["jets_per_shard"]
    ingested = sorted((smoke_run / "ingested").rglob("*.parquet"))
    listed = smoke_listed_files()
    n_listed = sum(len(globs) for kind in listed.values() for globs in kind.values())
    assert len(ingested) == len(outputs["future"]) + len(outputs["jetclass"]) + n_listed
    for sample, (fixture,) in listed["future"].items():  # a split-class podio file, read as real data is
        manifest = json.loads(paths.manifest(smoke_run / "ingested" / "future" / sample / f"{sample}_000.parquet").read_text())
        assert manifest["input"] == fixture and manifest["layout"]["generation"] == Path(fixture).name.split("_")[0]
        assert manifest["layout"]["has_tracks"] and manifest["signal_jets"] > 10
    for shard in ingested:
        manifest = json.loads(shard.with_name(shard.name + ".json").read_text())
        assert manifest["jets"] == pq.read_metadata(shard).num_rows > 0
    signal = sum(
        json.loads(paths.manifest(shard).read_text())["signal_jets"] for shard in ingested if "tautau" in shard.name
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
    backbones = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["pretrain"]["backbones"]
    assert {"tokens-ntp", "continuous-mpm"} <= set(backbones), "the smoke run pretrains an alternative backbone"
    for backbone, entry in backbones.items():
        pretrained = smoke_run / "pretrain" / backbone
        for name in ("backbone.pt", "backbone_best.pt", "history.csv", "model_config.json", "loss_curve.png"):
            assert (pretrained / name).stat().st_size > 0, (backbone, name)
        model_config = json.loads((pretrained / "model_config.json").read_text())
        assert model_config["vocab_size"] == 32 + 2 and model_config["backbone"]["name"] == backbone
        assert model_config["model"]["inputs"] == entry["inputs"] and model_config["model"]["causal"] == (entry["objective"] == "ntp")
    for shard in tokenized:  # each token's features beside it: 14 channels per position
        table = pq.read_table(shard, columns=["tokens", "token_features"])
        assert len(table.column("token_features")[0]) == 14 * len(table.column("tokens")[0])
    grid = yaml.safe_load(SMOKE.read_text())["finetune"]["grid"]
    for task in grid["tasks"]:
        for strategy in grid["strategies"]:
            run = smoke_run / "finetune" / task / strategy / f"n{grid['sizes'][0]}" / "seed0"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["task"] == task and summary["strategy"] == strategy
            expected = parse_strategy(strategy, 0)
            assert (summary["backbone_name"], summary["inputs"]) == (expected.backbone, expected.inputs)
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
    for stem in ("fig4_validation_loss", "fig5_physics", "fig6_tsne", "fig7_ablations", "fig8_backbones"):
        for ext in ("png", "pdf"):
            assert (smoke_run / "figures" / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert {r["backbone"] for r in values} == {"tokens-ntp", "continuous-mpm", None} and {r["inputs"] for r in values} == {"paper"}
    stages = {r["stage"] for r in pq.read_table(smoke_run / "grid_cost.parquet").to_pylist()}
    assert {f"pretrain@{b}" for b in backbones} <= stages, "each backbone's pretraining cost is in the grid cost"
    assert "0.143" in (smoke_run / "figures" / "summary_table.md").read_text(), "the paper's numbers beside ours"
    assert list((smoke_run / "logs").rglob("*.log")), "every job keeps a log"


def test_every_job_leaves_a_provenance_record(smoke_run):
    from taufm.provenance import config_hash, record_path, stage_source_hash

    shards = [p for sub in ("simulated", "ingested", "tokenized") for p in (smoke_run / sub).rglob("*") if p.suffix in (".root", ".parquet")]
    records = [record_path(p, is_directory=False) for p in shards]
    backbones = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["pretrain"]["backbones"]
    records += [record_path(smoke_run / d, is_directory=True) for d in ("tokenizer", *(f"pretrain/{b}" for b in backbones), "figures", "figures/tokenizer")]
    records += [record_path(run, is_directory=True) for run in {p.parent for p in (smoke_run / "finetune").rglob("model.pt")}]
    records += [record_path(smoke_run / "pretrain" / b / "loss_curve", False) for b in backbones] + [record_path(smoke_run / "metrics.csv", False)]
    missing = [str(r.relative_to(smoke_run)) for r in records if not r.exists()]
    assert not missing, missing
    record = json.loads(record_path(next((smoke_run / "finetune").rglob("model.pt")).parent, is_directory=True).read_text())
    assert record["stage"] == "finetune" and record["device"] == "cpu"
    assert record["config_sha256"] == config_hash(record["config"]) and record["config"]["settings"]["device"] == "cpu"
    assert record["code_sha256"] == stage_source_hash("finetune")
    assert all(record["versions"][name] for name in ("torch", "uproot", "awkward", "fastjet", "pythia8mc", "snakemake"))
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)


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


def test_snakemake_lint_is_clean(tmp_path):
    proc = snakemake("--config", f"results_dir={tmp_path / 'results'}", "--lint")
    text = proc.stdout + proc.stderr
    assert "Lints for" not in text and "in a good condition" in text, text[-3000:]


def test_real_files_mode_takes_the_simulate_rules_out_of_the_dag(smoke_run, tmp_path):
    outputs = smoke_outputs(smoke_run)
    files = smoke_input_globs(smoke_run)
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
    files = smoke_input_globs(smoke_run)
    override = tmp_path / "files.yaml"
    override.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "data": {"source": "files", "files": files}}))
    paper = ROOT / "workflow" / "presets" / "paper.yaml"
    proc = snakemake("--configfile", str(paper), str(override), "--dry-run", "--quiet", "rules")
    grid = yaml.safe_load(paper.read_text())["finetune"]
    n_grid = len(grid["grid"]["tasks"]) * len(grid["grid"]["strategies"]) * len(grid["grid"]["sizes"]) * len(grid["grid"]["seeds"])
    ablation_strategies = len(grid["ablations"]["unfreeze_epochs"]) + len(grid["ablations"]["n_blocks"]) + 2
    n_ablations = len(grid["ablations"]["tasks"]) * ablation_strategies * len(grid["ablations"]["seeds"])
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    # config.yaml packs the seeds of the small cells (finetune.pack), the preset keeps that: each
    # pack job trains cells_per_job cells, every other cell is its own finetune job.
    packing = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["finetune"]["pack"]
    per_job = {family.rule: family.cells_per_job for family in pack_families({**grid, "pack": packing})}
    assert per_job, "the paper preset packs its small cells"
    planned_cells = counts["finetune"] + sum(counts.get(rule, 0) * n for rule, n in per_job.items())
    assert planned_cells == n_grid + n_ablations
    backbones = {**yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["pretrain"]["backbones"], **yaml.safe_load(paper.read_text())["pretrain"]["backbones"]}
    assert set(backbones) == {"tokens-ntp", "continuous-ntp", "continuous-mpm"}
    assert counts["finetune_pack"] > 0 and counts["pretrain"] == len(backbones) and counts["train_tokenizer"] == 1


def _planned_jobs(smoke_run, tmp_path, change: dict) -> set[str]:
    override = tmp_path / "change.yaml"
    override.write_text(yaml.safe_dump({"results_dir": str(smoke_run), **change}))
    proc = snakemake("--configfile", str(SMOKE), str(override), "--dry-run", "--quiet", "rules")
    return {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()} - {"total"}


def test_a_finetune_setting_reruns_exactly_finetuning_and_evaluation(smoke_run, tmp_path):
    finetune = yaml.safe_load(SMOKE.read_text())["finetune"]
    jobs = _planned_jobs(smoke_run, tmp_path, {"finetune": {**finetune, "epochs": finetune["epochs"] + 1}})
    # The smoke preset packs strategies: the single-strategy families stay per-cell jobs.
    assert jobs == {"finetune", "finetune_pack", "finetune_pack_ablations", "metrics", "aggregate_metrics", "paper_figures", "embeddings", "all"}


def test_a_figure_style_edit_redraws_the_figures_only(smoke_run, tmp_path):
    """Edit plots/style.py in a copy of the workflow and package (imported through PYTHONPATH),
    dry-run it against the smoke run's results and metadata: only figure jobs are planned."""
    import os
    import shutil

    copy = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", copy / "src", ignore=ignore)
    shutil.copytree(ROOT / "workflow", copy / "workflow", ignore=ignore)  # the Snakefile, rules and envs
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}

    def planned() -> set[str]:
        cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--snakefile", str(copy / "workflow" / "Snakefile"), "--configfile", str(SMOKE),
               "--config", f"results_dir={smoke_run}", "--dry-run", "--quiet", "rules"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()} - {"total"}

    assert planned() == set(), "the unedited copy hashes like the checkout"
    style = copy / "src" / "taufm" / "plots" / "style.py"
    assert "DPI = 150" in style.read_text()
    style.write_text(style.read_text().replace("DPI = 150", "DPI = 200"))
    assert planned() == {"dataquality", "tokenizer_checks", "pretrain_loss_curve", "paper_figures", "embeddings", "all"}


def test_a_simulation_setting_reruns_everything_downstream(smoke_run, tmp_path):
    jobs = _planned_jobs(smoke_run, tmp_path, {"simulate": {**yaml.safe_load(SMOKE.read_text())["simulate"], "seed": 7}})
    assert {"simulate_ee", "simulate_jetclass", "ingest_ee", "ingest_jetclass", "dataquality", "train_tokenizer", "tokenize_ee",
            "tokenize_jetclass", "tokenizer_checks", "pretrain", "finetune", "metrics", "aggregate_metrics", "paper_figures", "embeddings"} <= jobs


# ---- the same smoke run on a real (single-node) Slurm cluster, through the shipped profile ----
# (started in the background by tests/conftest.py: tests/slurm_smoke.py)


def test_slurm_profile_is_found_by_name_from_the_repository_root(tmp_path):
    """`snakemake --profile slurm all` plans the workflow (a dry run needs no cluster)."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "all", "--dry-run", "--quiet", "rules",
           "--configfile", str(SMOKE), "--config", f"results_dir={tmp_path / 'results'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in proc.stderr and "finetune" in proc.stdout


@pytest.fixture(scope="session")
def slurm_smoke_run(background_slurm_smoke_run) -> tuple[Path, SlurmSmokeRun]:
    run = background_slurm_smoke_run.wait()
    return run.results, run


@pytest.fixture(scope="session")
def slurm_cluster(slurm_smoke_run):
    return slurm_smoke_run[1].cluster


def test_slurm_profile_runs_the_smoke_preset_with_gpus_for_training_only(slurm_cluster, slurm_smoke_run):
    results, _ = slurm_smoke_run
    assert (results / "metrics.parquet").exists() and (results / "figures" / "fig5_physics.png").exists()
    jobs = slurm_cluster.sacct("JobID", "Partition", "State", "AllocTRES", "Comment")
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(job)
    assert set(TRAINING_RULES) | {"simulate_ee", "ingest_ee", "metrics", "paper_figures"} <= set(by_rule), sorted(by_rule)
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            assert job["State"] == "COMPLETED", (rule, job)
            if rule in TRAINING_RULES:
                assert job["Partition"] == "gpu" and "gres/gpu=1" in job["AllocTRES"], (rule, job)
            else:
                assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], (rule, job)
    n_finetune = len(list((results / "finetune").rglob("model.pt")))
    assert len(by_rule["finetune"]) == n_finetune > 0

    for rule in ("finetune", "pretrain"):
        record = json.loads(next((results / rule).rglob("provenance.json")).read_text())
        assert record["slurm_job_id"] in {job["JobID"] for job in by_rule[rule]}, "the record names the Slurm job"


def _comparable_outputs(results: Path) -> dict[Path, object]:
    """What two smoke runs with the same seeds must agree on, by relative path: the bytes of the
    simulated files, jet and token shards, tokenizer and backbone; the tensors of every fine-tuned
    model (its file also records the run's paths); every prediction, metric and comparison."""
    import torch

    found: dict[Path, object] = {}
    for subdir, pattern in (("simulated", "*.root"), ("ingested", "*.parquet"), ("tokenized", "*.parquet"), ("tokenizer", "tokenizer.pt"),
                            ("pretrain", "backbone*.pt")):
        for path in (results / subdir).rglob(pattern):
            found[path.relative_to(results)] = path.read_bytes()
    for path in (results / "finetune").rglob("model.pt"):
        found[path.relative_to(results)] = torch.load(path, map_location="cpu", weights_only=False)["model"]
    for pattern in ("finetune/**/predictions.parquet", "metrics.parquet", "comparisons.parquet"):
        for path in results.glob(pattern):
            table = pq.read_table(path).to_pandas()
            found[path.relative_to(results)] = table.drop(columns=[c for c in MEASURED_COLUMNS if c in table.columns])
    return found


# What a run measured of itself, not what it computed: seconds, rates and memory differ between
# two runs of the same job, and a resumed cell counts only the jets it trained after resuming
# (parameters and FLOPs per jet do not differ, and are compared).
MEASURED_COLUMNS = ("device_seconds", "jets_per_second", "peak_memory_mb", "train_flops_estimate")


def assert_same_outputs(first: Path, second: Path, only: set[Path] | None = None) -> None:
    import torch

    ours, theirs = _comparable_outputs(first), _comparable_outputs(second)
    if only is not None:
        ours = {k: v for k, v in ours.items() if k in only}
    assert sorted(ours) == sorted(k for k in theirs if only is None or k in only) and ours
    for relative, value in ours.items():
        other = theirs[relative]
        if isinstance(value, dict):
            assert value.keys() == other.keys() and all(torch.equal(value[k], other[k]) for k in value), relative
        elif isinstance(value, bytes):
            assert value == other, relative
        else:
            assert value.shape == other.shape and value.equals(other), relative


KILL_AFTER = "a fine-tuning cell's first epoch"
# The killed run's grid: fewer cells than the smoke run, one job each (each is compared with the
# smoke run's, which packs strategies), among them one that unfreezes its backbone mid-training
# and the ParT.
KILLED_RUN_GRID = {"tasks": ["pt_regression", "decay_mode"], "strategies": ["finetune", "part"]}


@pytest.fixture(scope="session")
def killed_and_resumed_run(tmp_path_factory):
    """The smoke run (on a smaller grid, up to each cell's metrics: the figures are the smoke
    run's) killed with SIGKILL, snakemake and every job it started (a lost node, kill -9 of the
    process group), while fine-tuning: as soon as a cell has written its first epoch's checkpoint
    and not yet its summary. Then the README's instructions, word for word: ``snakemake
    --unlock`` and the same command again."""
    import os
    import signal
    import time

    base = tmp_path_factory.mktemp("killed")
    results = base / "results"
    smoke = yaml.safe_load(SMOKE.read_text())["finetune"]
    override = base / "grid.yaml"
    finetune = {**smoke, "grid": {**smoke["grid"], **KILLED_RUN_GRID}, "ablations": {**smoke["ablations"], "tasks": []}, "pack": {"by": []}}
    override.write_text(yaml.safe_dump({"results_dir": str(results), "finetune": finetune}))
    args = [str(override)]  # after the --configfile of snakemake()
    grid = finetune["grid"]
    targets = [results / "finetune" / t / s / f"n{n}" / "seed0" / "metrics.json" for t in grid["tasks"] for s in grid["strategies"] for n in grid["sizes"]]
    cmd = [sys.executable, "-m", "snakemake", *map(str, targets), "--cores", "2", "--configfile", str(SMOKE), *args]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, killed_in = time.monotonic() + 1200, None
    try:
        while process.poll() is None and time.monotonic() < deadline:
            cells = [c.parent for c in (results / "finetune").glob("*/*/*/*/checkpoint_last.pt")]
            unfinished = [c for c in cells if not (c / "summary.json").exists()]
            if unfinished:
                os.killpg(process.pid, signal.SIGKILL)
                killed_in = unfinished
                break
            time.sleep(0.1)
    finally:
        if process.poll() is None and killed_in is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert killed_in, f"the run ended (exit {process.returncode}) before {KILL_AFTER}: nothing was killed"
    locked = snakemake(*args, check=False, targets=targets)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr, "a killed run leaves its lock"
    snakemake(*args, "--unlock", targets=targets)
    resumed = snakemake(*args, targets=targets)
    return results, killed_in, resumed


def test_a_killed_run_resumes_as_the_readme_says_and_equals_an_uninterrupted_one(smoke_run, killed_and_resumed_run):
    results, killed_in, resumed = killed_and_resumed_run
    logs = {p.name: p.read_text() for p in (results / "logs" / "finetune").glob("*.log")}
    resumed_cells = [name for name, text in logs.items() if "resuming from" in text]
    assert resumed_cells, f"no fine-tuning cell resumed from its checkpoint (killed in {killed_in})"
    cells = {p.parent for p in (results / "finetune").rglob("model.pt")}
    assert {(c.parts[-4], c.parts[-3]) for c in cells} == {(t, s) for t in KILLED_RUN_GRID["tasks"] for s in KILLED_RUN_GRID["strategies"]}
    # Every output the killed run shares with the smoke run, bar the tables over the whole grid.
    shared = {k for k in _comparable_outputs(results) if k.name not in ("metrics.parquet", "comparisons.parquet")}
    assert_same_outputs(results, smoke_run, only=shared)


def test_a_forced_tokenizer_rerun_rewrites_its_outputs(killed_and_resumed_run):
    """Snakemake deletes a job's outputs before a forced rerun; the tokenizer then resumes from its
    finished checkpoint and must still write them all, with the same weights."""
    results, _, _ = killed_and_resumed_run
    tokenizer = results / "tokenizer" / "tokenizer.pt"
    before = tokenizer.read_bytes()
    # The command: the tokenizer alone (--until), forced; nargs options end at the next option.
    snakemake(str(results.parent / "grid.yaml"), "--until", "train_tokenizer", "--forcerun", "train_tokenizer")
    assert tokenizer.read_bytes() == before and (results / "tokenizer" / "history.csv").exists()


def test_two_runs_with_one_seed_are_identical(smoke_run, slurm_smoke_run):
    """The Slurm run (its training stages with device auto, the CPU here) against the local one:
    byte-identical shards, tokenizer and backbone, equal models, predictions and metrics of the
    cells both ran. Without a test cluster, the killed-and-resumed run compares the same way."""
    results, _ = slurm_smoke_run
    shared = {k for k in _comparable_outputs(results) if k.parts[0] != "finetune" and k.name not in ("metrics.parquet", "comparisons.parquet")}
    shared |= {k for k in _comparable_outputs(results) if k.parts[0] == "finetune"}
    assert any(k.parts[0] == "finetune" for k in shared)
    assert_same_outputs(results, smoke_run, only=shared)
