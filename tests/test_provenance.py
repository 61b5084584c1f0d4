"""Source hashes: a stage's hash follows exactly the package files it runs."""

from __future__ import annotations

import pytest

from taufm.provenance import source_files, source_hash


def _tree(root):
    (root / "finetune").mkdir(parents=True)
    (root / "finetune" / "train.py").write_text("x = 1\n")
    (root / "plots").mkdir()
    (root / "plots" / "style.py").write_text("colour = 'red'\n")
    (root / "io.py").write_text("def write(): pass\n")


def test_hash_changes_with_the_stage_sources_only(tmp_path):
    _tree(tmp_path)
    finetune, figures = source_hash("finetune", "io", root=tmp_path), source_hash("plots/style", root=tmp_path)
    (tmp_path / "plots" / "style.py").write_text("colour = 'blue'\n")
    assert source_hash("finetune", "io", root=tmp_path) == finetune
    assert source_hash("plots/style", root=tmp_path) != figures
    (tmp_path / "finetune" / "new_module.py").write_text("")
    assert source_hash("finetune", "io", root=tmp_path) != finetune, "a new file counts"


def test_files_and_unknown_parts(tmp_path):
    _tree(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in source_files("io", "finetune", root=tmp_path)] == ["finetune/train.py", "io.py"]
    with pytest.raises(ValueError, match="nowhere"):
        source_hash("nowhere", root=tmp_path)


def test_real_package_parts_exist():
    for part in ("sim", "ingest", "tokenizer", "pretrain", "finetune", "evaluate/metrics", "plots/paper_figures", "models/gpt"):
        assert len(source_hash(part)) == 16


def test_every_stage_names_existing_sources():
    from taufm.provenance import STAGE_SOURCES, stage_source_hash

    for stage in STAGE_SOURCES:
        assert len(stage_source_hash(stage)) == 16
    with pytest.raises(ValueError, match="unknown stage 'tokeniser'"):
        stage_source_hash("tokeniser")


def test_figure_style_is_hashed_by_figure_stages_only():
    from taufm.provenance import STAGE_SOURCES

    drawing = {stage for stage, parts in STAGE_SOURCES.items() if "plots/style" in parts or "plots" in parts}
    assert drawing == {"dataquality", "tokenizer_checks", "figures", "embeddings"}


def test_record_holds_settings_hash_code_git_versions_and_device():
    from taufm.provenance import build_record, config_hash, stage_source_hash

    settings = {"epochs": 3, "lr": 1e-3}
    record = build_record("finetune", "finetune", settings, device="cpu", argv=["taufm", "finetune"])
    assert record["config"] == settings
    assert record["config_sha256"] == config_hash({"lr": 1e-3, "epochs": 3}), "key order does not matter"
    assert record["config_sha256"] != config_hash({**settings, "epochs": 4})
    assert record["code_sha256"] == stage_source_hash("finetune")
    assert set(record["versions"]) >= {"torch", "uproot", "awkward", "fastjet", "pythia8mc", "snakemake", "python"}
    assert record["versions"]["uproot"] is not None
    assert record["device"] == "cpu"
    assert set(record["git"]) == {"commit", "dirty", "checkout"}


def test_git_state_of_a_checkout_and_of_a_plain_directory(tmp_path):
    import subprocess

    from taufm.provenance import git_state

    assert git_state(tmp_path) == {"commit": None, "dirty": None, "checkout": None}
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, env=env)  # noqa: E731
    run("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    run("add", "a.py")
    run("commit", "-q", "-m", "one")
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_record_paths():
    from pathlib import Path

    from taufm.provenance import record_path

    assert record_path("r/finetune/tau_id/scratch/n100/seed0", is_directory=True) == Path("r/finetune/tau_id/scratch/n100/seed0/provenance.json")
    assert record_path("r/ingested/future/qq/qq_000.parquet", is_directory=False) == Path("r/ingested/future/qq/provenance/qq_000.parquet.json")


def test_the_cli_records_a_command_that_succeeds_and_nothing_for_one_that_fails(tmp_path, capsys):
    import json

    from taufm.cli import main
    from taufm.provenance import config_hash

    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,val_loss\n0,2.0,2.1\n1,1.5,1.7\n")
    assert main(["loss-curve", "--history", str(history), "--output-stem", str(tmp_path / "figs" / "curve")]) == 0
    record = json.loads((tmp_path / "figs" / "provenance" / "curve.json").read_text())
    assert record["stage"] == "figures" and record["command"] == "loss-curve"
    assert record["config"]["history"] == str(history) and record["config_sha256"] == config_hash(record["config"])
    assert record["argv"][:2] == ["taufm", "loss-curve"]
    assert main(["loss-curve", "--history", str(tmp_path / "missing.csv"), "--output-stem", str(tmp_path / "figs" / "other")]) == 2
    assert "missing.csv: cannot read the training history" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "figs" / "provenance").iterdir()) == ["curve.json"]


def test_stage_sources_follow_the_import_graph(tmp_path):
    from taufm.provenance import import_closure

    pkg = tmp_path / "taufm"
    (pkg / "stage").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stage" / "__init__.py").write_text("")
    (pkg / "stage" / "run.py").write_text("from taufm.helpers import tool\n\ndef main():\n    from . import late\n    import taufm.deep.module\n")
    (pkg / "stage" / "late.py").write_text("from .sibling import VALUE\n")
    (pkg / "stage" / "sibling.py").write_text("VALUE = 1\n")
    (pkg / "helpers.py").write_text("def tool(): pass\n")
    (pkg / "deep").mkdir()
    (pkg / "deep" / "module.py").write_text("")
    (pkg / "unused.py").write_text("")
    closure = import_closure(["taufm.stage.run"], root=pkg)
    assert closure == ["__init__", "deep/module", "helpers", "stage/__init__", "stage/late", "stage/run", "stage/sibling"]


def test_every_import_of_a_stage_is_in_its_hash():
    """The edges a hand-written list missed: ingestion imports taufm.sim.jetclass (the JetClass
    labels) and taufm.physics.leptons; the data-quality figures use taufm.physics.tau."""
    from taufm.provenance import STAGE_SOURCES

    assert {"sim/jetclass", "physics/leptons", "physics/tau", "ingest/edm4hep"} <= set(STAGE_SOURCES["ingest"])
    assert "physics/tau" in STAGE_SOURCES["dataquality"]
    assert all("provenance" not in s and "cli" != s for sources in STAGE_SOURCES.values() for s in sources)


def test_each_command_runs_only_modules_of_its_stage():
    """What the CLI imports for a command must lie in the hash of the stage it records: an entry
    module missing from STAGE_ENTRY_MODULES fails here."""
    import ast
    from pathlib import Path

    import taufm.cli
    from taufm.provenance import PACKAGE_ROOT, STAGE_SOURCES

    handlers = {node.name: node for node in ast.walk(ast.parse(Path(taufm.cli.__file__).read_text())) if isinstance(node, ast.FunctionDef)}
    for command, stage in taufm.cli.COMMAND_STAGES.items():
        handler = handlers[f"_cmd_{command.replace('-', '_')}"]
        imported = {node.module for node in ast.walk(handler) if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("taufm.")}
        modules = {name.removeprefix("taufm.").replace(".", "/") for name in imported}
        modules = {m for m in modules if (PACKAGE_ROOT / f"{m}.py").is_file() and m != "provenance"}
        assert modules and modules <= set(STAGE_SOURCES[stage]), (command, modules - set(STAGE_SOURCES[stage]))
