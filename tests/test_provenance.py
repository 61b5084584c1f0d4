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
