"""Packed cells: several cells of one task in one process give bitwise the run directories of the
cells run alone; the workflow's pack families cover each packed cell once."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

import taufm.finetune.train as module
from taufm import paths
from taufm.cli import main
from taufm.errors import TaufmError
from taufm.finetune.packs import PACK_RULES, cell_settings, pack_cell_arguments, pack_directory, pack_families
from taufm.finetune.train import Cell, run_finetune, run_finetune_pack

from .test_finetune import SETTINGS, world  # noqa: F401 (the fixture)

TIMING_KEYS = ("training_seconds", "device_seconds", "wall_seconds", "jets_per_second", "peak_memory_mb")
RUN_FILES = ("config.json", "history.csv", "model.pt", "predictions.parquet", "summary.json")


def _same_run_directory(a, b) -> None:
    wa, wb = (torch.load(p / "model.pt", weights_only=True) for p in (a, b))
    assert wa["model"].keys() == wb["model"].keys() and all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert wa["config"] == wb["config"] and wa["best"] == wb["best"]
    for name in ("config.json", "history.csv", "predictions.parquet", "predictions.parquet.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert {k: v for k, v in sa.items() if k not in TIMING_KEYS} == {k: v for k, v in sb.items() if k not in TIMING_KEYS}


def test_a_packed_pair_writes_bitwise_what_each_cell_writes_alone(world, tmp_path, monkeypatch):  # noqa: F811
    _, shards, backbone = world
    settings = dataclasses.replace(SETTINGS, val_subset_jets=25)
    cells = [Cell("fixed", 120, 0, tmp_path / "pack" / "fixed"), Cell("finetune", 100, 1, tmp_path / "pack" / "finetune")]
    reads = {"data": 0, "checkpoint": 0}
    real_data, real_checkpoint = module.load_task_data, module.load_checkpoint

    def counting_data(*args, **kwargs):
        reads["data"] += 1
        return real_data(*args, **kwargs)

    def counting_checkpoint(*args, **kwargs):
        reads["checkpoint"] += 1
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(module, "load_task_data", counting_data)
    monkeypatch.setattr(module, "load_checkpoint", counting_checkpoint)
    done = []
    summaries = run_finetune_pack("pt_regression", cells, shards, settings, backbone, on_cell_done=lambda cell, summary: done.append(cell.strategy))
    assert done == ["fixed", "finetune"] and [s["strategy"] for s in summaries] == done
    assert reads == {"data": 2 + 2, "checkpoint": 1}, "train, val and the two test samples once; the backbone once"
    monkeypatch.undo()

    for cell in cells:
        run_finetune("pt_regression", cell.strategy, cell.size, cell.seed, shards, tmp_path / "alone" / cell.strategy, settings, backbone)
        _same_run_directory(tmp_path / "pack" / cell.strategy, tmp_path / "alone" / cell.strategy)


def test_packs_are_checked_before_any_cell_trains(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    good = Cell("fixed", 50, 0, tmp_path / "good")
    for bad, message in (
        (Cell("part", 50, 0, tmp_path / "part"), "backbone strategies or part cells, not both"),
        (Cell("fixed", 10**6, 0, tmp_path / "big"), "1000000"),
        (Cell("finetune-blocks9", 50, 0, tmp_path / "deep"), "blocks"),
        (Cell("frozen", 50, 0, tmp_path / "unknown"), "unknown strategy 'frozen'"),
        (Cell("finetune", 50, 1, tmp_path / "good"), "the same run directory"),
    ):
        with pytest.raises(TaufmError, match=message):
            run_finetune_pack("pt_regression", [good, bad], shards, SETTINGS, backbone)
        assert not (tmp_path / "good").exists(), message
    with pytest.raises(TaufmError, match="no cells"):
        run_finetune_pack("pt_regression", [], shards, SETTINGS, backbone)


def test_the_finetune_pack_command_writes_each_run_directory_and_its_record(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    settings = json.dumps({**{k: v for k, v in SETTINGS.to_dict().items() if k != "tasks"}, "epochs": 1})
    words = [f"{sample}={p}" for sample, files in shards.items() for p in files]
    argv = ["finetune-pack", "--task", "decay_mode", "--backbone", str(backbone), "--settings", settings, "--output-dir", str(tmp_path / "pack"), "--threads", "1"]
    argv += ["--cell", "fixed", "60", "0", str(tmp_path / "a"), "--cell", "scratch", "60", "1", str(tmp_path / "b"), *words]
    assert main(argv) == 0
    for run, strategy, seed in ((tmp_path / "a", "fixed", 0), (tmp_path / "b", "scratch", 1)):
        assert all((run / name).stat().st_size > 0 for name in RUN_FILES)
        record = json.loads((run / "provenance.json").read_text())
        assert record["stage"] == "finetune" and record["command"] == "finetune-pack"
        assert (record["config"]["strategy"], record["config"]["seed"], record["config"]["output_dir"]) == (strategy, seed, str(run))
        assert json.loads((run / "config.json").read_text())["seed"] == seed
    assert json.loads((tmp_path / "pack" / "provenance.json").read_text())["command"] == "finetune-pack"

    bad = [w if w != "60" else "sixty" for w in argv]
    bad[bad.index("--output-dir") + 1] = str(tmp_path / "bad")
    assert main(bad) == 2 and not (tmp_path / "bad").exists()


# ---- the workflow's pack families (no torch, no Snakemake) ----


def _finetune_config(**changes) -> dict:
    config = {
        "grid": {"tasks": ["tau_id", "pt_regression"], "strategies": ["scratch", "fixed", "finetune", "part"], "sizes": [1000, 10000, 100000], "seeds": [0, 1, 2]},
        "ablations": {"tasks": ["pt_regression"], "size": 2000, "seeds": [0, 1, 2], "unfreeze_epochs": [0, 30], "n_blocks": [1]},
        "pack": {"by": ["strategies", "seeds"], "max_size": 10000},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        config[section] = {**config[section], name: value}
    return config


def _all_cells(config) -> set[tuple]:
    """What common.smk's finetune_runs() lists, as (task, strategy, size, seed)."""
    grid, ablations = config["grid"], config["ablations"]
    cells = {(t, s, n, seed) for t in grid["tasks"] for s in grid["strategies"] for n in grid["sizes"] for seed in grid["seeds"]}
    strategies = [f"finetune-unfreeze{k}" for k in ablations["unfreeze_epochs"]] + [f"finetune-blocks{b}" for b in ablations["n_blocks"]] + ["fixed", "finetune"]
    return cells | {(t, s, ablations["size"], seed) for t in ablations["tasks"] for s in strategies for seed in ablations["seeds"]}


def _jobs(family) -> list[dict]:
    """Every job of a family, by expanding its wildcards over their constraints."""
    constraints = family.wildcard_constraints()
    values = {name: constraints[name].replace("\\", "").split("|") for name in constraints}
    jobs = [{}]
    for name, options in values.items():
        jobs = [{**job, name: option} for job in jobs for option in options]
    return jobs


def _packed(config) -> dict[tuple, str]:
    packed = {}
    for family in pack_families(config):
        for job in _jobs(family):
            for strategy, size, seed in family.cells(job):
                cell = (job["task"], strategy, size, seed)
                assert cell not in packed, f"{cell} in two jobs"
                packed[cell] = family.rule
    return packed


@pytest.mark.parametrize("by", [["seeds"], ["strategies"], ["strategies", "seeds"]])
def test_pack_families_pack_each_small_cell_once_and_nothing_else(by):
    config = _finetune_config(pack__by=by)
    packed = _packed(config)
    everything = _all_cells(config)
    assert set(packed) <= everything
    small = {c for c in everything if c[2] <= 10000}
    part_alone = by == ["strategies"]  # a pack of one ParT cell is the cell's own job
    assert {c for c in small if not (part_alone and c[1] == "part")} == set(packed)
    assert {packed[c] for c in packed if c[1] == "part"} <= {PACK_RULES["part"]}
    # The ablations' fixed and finetune at 2000 jets: no grid family at that size packs them.
    assert packed[("pt_regression", "fixed", 2000, 0)] == PACK_RULES["ablations"]


def test_a_cell_of_both_the_grid_and_the_ablations_is_packed_once():
    config = _finetune_config(ablations__size=1000, ablations__seeds=[0, 5])
    packed = _packed(config)
    assert packed[("pt_regression", "fixed", 1000, 0)] == PACK_RULES["grid"]
    assert ("pt_regression", "fixed", 1000, 5) not in packed, "partly covered: its own job"
    assert packed[("pt_regression", "finetune-unfreeze30", 1000, 5)] == PACK_RULES["ablations"]


def test_no_packing_by_default_and_bad_dimensions_are_named():
    assert pack_families(_finetune_config(pack__by=[])) == []
    assert pack_families({k: v for k, v in _finetune_config().items() if k != "pack"}) == []
    with pytest.raises(TaufmError, match="finetune.pack.by: unknown dimension"):
        pack_families(_finetune_config(pack__by=["sizes"]))
    assert pack_families(_finetune_config(pack__max_size=10)) == []


def test_pack_rule_outputs_arguments_and_directories_agree():
    (grid, part, ablations) = pack_families(_finetune_config(pack__by=["seeds"]))
    assert (grid.rule, part.rule, ablations.rule) == (PACK_RULES["grid"], PACK_RULES["part"], PACK_RULES["ablations"])
    assert grid.cells_per_job == 3 and grid.uses_backbone and not part.uses_backbone
    patterns = grid.run_patterns()
    assert patterns == [paths.FINETUNE_RUN.format(task="{task}", strategy="{strategy}", size="{size}", seed=s) for s in (0, 1, 2)]
    wildcards = {"task": "tau_id", "strategy": "fixed", "size": "1000"}
    words = pack_cell_arguments(grid, wildcards, "results")
    assert words[:5] == ["--cell", "fixed", "1000", "0", f"results/{paths.FINETUNE_RUN.format(task='tau_id', strategy='fixed', size=1000, seed=0)}"]
    assert [pattern.format(**wildcards) for pattern in patterns] == [w[len("results/") :] for w in words[4::5]]
    assert pack_directory(grid, wildcards, "results") == "results/finetune/packs/grid_tau_id_fixed_n1000"
    assert re.fullmatch(grid.wildcard_constraints()["size"], "1000") and not re.fullmatch(grid.wildcard_constraints()["size"], "100000")
    assert cell_settings({"epochs": 3, "pack": {"by": ["seeds"]}}) == {"epochs": 3}
