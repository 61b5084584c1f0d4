"""Tokenizer checks (paper Fig. 2 and 3): files written, numbers consistent, clear errors on bad input."""

from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from taufm.errors import TaufmError
from taufm.ingest.shards import CANDIDATE_COLUMNS, CANDIDATE_FEATURES, MASK_COLUMN, SPLITS, write_shard
from taufm.plots import tokenizer_checks
from taufm.plots.tokenizer_checks import FIG2_STEM, FIG3_CHARGE_STEM, FIG3_PID_STEM, FUTURE, JETCLASS, plot_tokenizer_checks
from taufm.tokenizer.preprocessing import CONTINUOUS, PID_NAMES
from taufm.tokenizer.train import MODEL_FILE, TokenizerSettings, train_tokenizer

F = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
WIDTH = 6  # candidate slots per jet
SAMPLES = ("ZH_Htautau", "qq")
TINY_MODEL = {"codebook_size": 16, "hidden_dim": 16, "n_heads": 2, "n_blocks": 1}
TINY = TokenizerSettings(epochs=1, batch_size=128, model=TINY_MODEL, device="cpu")


def _columns(n_jets: int, seed: int, *, splits=(0, 1, 2), mean_pt: float = 10.0) -> dict[str, np.ndarray]:
    """Ingested-shard columns: jets of 1..WIDTH candidates, all inside the tokenizer's angular window."""
    rng = np.random.default_rng(seed)
    mask = np.arange(WIDTH)[None, :] < rng.integers(1, WIDTH + 1, n_jets)[:, None]
    pid = rng.integers(0, len(PID_NAMES), (n_jets, WIDTH))
    values = {
        "pt": -np.sort(-rng.exponential(mean_pt, (n_jets, WIDTH)), axis=1) + 0.5,
        "deta": rng.uniform(-0.5, 0.5, (n_jets, WIDTH)),
        "dphi": rng.uniform(-0.5, 0.5, (n_jets, WIDTH)),
        "charge": np.where(np.isin(pid, (0, 1, 3)), rng.choice([-1.0, 1.0], (n_jets, WIDTH)), 0.0),
        "mass": np.where(pid == 3, 0.1396, np.where(pid == 1, 0.1057, 0.0)),
    }
    for i, flag in enumerate(("isElectron", "isMuon", "isPhoton", "isChargedHadron", "isNeutralHadron")):
        values[flag] = pid == i
    columns: dict[str, np.ndarray] = {"split": np.resize(np.array(splits, dtype=np.int8), n_jets)}
    for column in CANDIDATE_COLUMNS:
        name = column.removeprefix("cand_")
        columns[column] = np.where(mask, values.get(name, 0.0), 0.0).astype(np.float32)
    columns[MASK_COLUMN] = mask
    return columns


def _write(path, columns) -> list:
    write_shard(path, columns, {"stage": "synthetic"})
    return [path]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two JetClass shards, two Fuτure samples (ZH in two shards), and a tiny trained tokenizer."""
    root = tmp_path_factory.mktemp("tokenizer_checks")
    jetclass = [root / "jetclass_000.parquet", root / "jetclass_001.parquet"]
    _write(jetclass[0], _columns(240, 1))
    _write(jetclass[1], _columns(150, 2))
    future = {
        "ZH_Htautau": [
            *_write(root / "ZH_000.parquet", _columns(90, 3, mean_pt=5.0)),
            *_write(root / "ZH_001.parquet", _columns(60, 4, mean_pt=5.0)),
        ],
        "qq": _write(root / "qq_000.parquet", _columns(120, 5, mean_pt=3.0)),
    }
    torch.manual_seed(0)
    train_tokenizer(jetclass, root / "tokenizer", TINY)
    return {"root": root, "tokenizer": root / "tokenizer" / MODEL_FILE, "jetclass": jetclass, "future": future}


@pytest.fixture(scope="module")
def result(setup):
    out = setup["root"] / "figures"
    summary = plot_tokenizer_checks(setup["tokenizer"], setup["jetclass"], setup["future"], out, max_jets=10_000)
    return out, summary


def _test_mask_sum(shards) -> int:
    total = 0
    for path in shards:
        table = pq.read_table(path, columns=["split", MASK_COLUMN])
        split = table.column("split").to_numpy()
        mask = np.stack(table.column(MASK_COLUMN).to_numpy(zero_copy_only=False))
        total += int(mask[split == SPLITS.index("test")].sum())
    return total


def test_figures_are_written(result):
    out, summary = result
    stems = (FIG2_STEM, FIG3_PID_STEM, FIG3_CHARGE_STEM)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{ext}" for s in stems for ext in ("pdf", "png"))
    for stem, files in summary["files"].items():
        assert files == {"png": str(out / f"{stem}.png"), "pdf": str(out / f"{stem}.pdf")}
        image = matplotlib.image.imread(files["png"])
        assert image.shape[0] >= 600 and image.shape[1] >= 1000
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000


def test_candidate_counts_equal_the_mask_sums_of_the_split(setup, result):
    _, summary = result
    datasets = summary["datasets"]
    assert list(datasets) == [JETCLASS, *SAMPLES]
    assert datasets[JETCLASS]["n_candidates"] == _test_mask_sum(setup["jetclass"])
    for sample in SAMPLES:
        assert datasets[sample]["n_candidates"] == _test_mask_sum(setup["future"][sample])
    future = summary["confusion"][FUTURE]
    assert future["pid"]["n_candidates"] == sum(datasets[s]["n_candidates"] for s in SAMPLES)
    assert summary["confusion"][JETCLASS]["pid"]["n_candidates"] == datasets[JETCLASS]["n_candidates"]


def test_confusion_rows_are_normalised_by_reconstructed_class(result):
    _, summary = result
    for panel in (JETCLASS, FUTURE):
        for kind, n in (("pid", 5), ("charge", 3)):
            c = summary["confusion"][panel][kind]
            counts = np.array(c["counts_reco_by_true"])
            assert counts.shape == (n, n)
            assert counts.sum() == c["n_candidates"]
            for row_counts, row in zip(counts, c["fractions_reco_by_true"], strict=True):
                if row_counts.sum() == 0:
                    assert row == [None] * n
                else:
                    assert sum(row) == pytest.approx(1.0)
                    assert row == pytest.approx(list(row_counts / row_counts.sum()))
            assert c["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
            per_true = counts.sum(axis=0)
            for i, name in enumerate(c["classes"]):
                expected = counts[i, i] / per_true[i] if per_true[i] else None
                assert c["recall"][name] == (pytest.approx(expected) if expected is not None else None)
    assert summary["confusion"][JETCLASS]["pid"]["classes"] == list(PID_NAMES)
    assert summary["confusion"][JETCLASS]["charge"]["classes"] == ["-1", "0", "+1"]
    # The per-dataset numbers of JetClass are those of its Fig. 3 panel.
    jetclass = summary["datasets"][JETCLASS]
    assert jetclass["pid"]["accuracy"] == summary["confusion"][JETCLASS]["pid"]["accuracy"]
    assert jetclass["pid"]["recall"] == summary["confusion"][JETCLASS]["pid"]["recall"]


def test_residual_numbers(result):
    _, summary = result
    for name, numbers in summary["datasets"].items():
        assert set(numbers["residuals"]) == set(CONTINUOUS)
        for feature, r in numbers["residuals"].items():
            assert r["kind"] == ("relative" if feature == "pt" else "absolute")
            assert r["q25"] <= r["median"] <= r["q75"]
            assert r["iqr"] == pytest.approx(r["q75"] - r["q25"])
            assert 0 <= r["n_outside_range"] <= numbers["n_candidates"], name
    for feature, width in summary["residual_range"].items():
        assert width > 0 and math.isfinite(width), feature
        # The range holds the bulk of the JetClass residuals.
        outside = summary["datasets"][JETCLASS]["residuals"][feature]["n_outside_range"]
        assert outside <= 0.02 * summary["datasets"][JETCLASS]["n_candidates"] + 1
    json.dumps(summary, allow_nan=False)  # JSON-friendly: no numpy types, no NaN


def test_every_panel_is_labelled(setup, tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(tokenizer_checks, "save_figure", lambda fig, stem: drawn.setdefault(stem.name, fig) and (stem, stem))
    plot_tokenizer_checks(setup["tokenizer"], setup["jetclass"], setup["future"], tmp_path, max_jets=50)
    assert set(drawn) == {FIG2_STEM, FIG3_PID_STEM, FIG3_CHARGE_STEM}
    residual_axes = drawn[FIG2_STEM].axes
    assert len(residual_axes) == 4
    for ax in residual_axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert len(ax.get_legend().get_texts()) == 1 + len(SAMPLES)
    assert "[GeV]" in residual_axes[3].get_xlabel() and "[rad]" in residual_axes[2].get_xlabel()
    for stem, n in ((FIG3_PID_STEM, 5), (FIG3_CHARGE_STEM, 3)):
        matrices = [ax for ax in drawn[stem].axes if ax.images]
        assert len(matrices) == 2  # JetClass and Fuτure; the colour bar is the third axis
        assert len(drawn[stem].axes) == 3
        for ax in matrices:
            assert ax.get_xlabel().startswith("True") and ax.get_ylabel().startswith("Reconstructed")
            assert len(ax.texts) == n * n
    assert "JetClass" in matrices[0].get_title() and "Fuτure" in matrices[1].get_title()


def test_max_jets_limits_the_sample(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer_checks, "save_figure", lambda fig, stem: (stem, stem))
    small = plot_tokenizer_checks(setup["tokenizer"], setup["jetclass"], {}, tmp_path, max_jets=10)
    assert small["datasets"][JETCLASS]["n_candidates"] <= 10 * WIDTH
    assert small["future_samples"] == [] and FUTURE not in small["confusion"]


def _absent(setup, tmp):
    return {"tokenizer": tmp / "absent.pt"}, "absent.pt: no such checkpoint"


def _not_a_tokenizer(setup, tmp):
    path = tmp / "other.pt"
    torch.save({"config": {"something": 1}, "model": {}}, path)
    return {"tokenizer": path}, "other.pt: not a tokenizer checkpoint"


def _garbage_tokenizer(setup, tmp):
    path = tmp / "garbage.pt"
    path.write_text("not a checkpoint")
    return {"tokenizer": path}, "garbage.pt: not a readable"


def _missing_column(setup, tmp):
    columns = _columns(30, 7)
    del columns[MASK_COLUMN]
    return {"future": {"qq": _write(tmp / "nomask.parquet", columns)}}, "nomask.parquet: missing column.*cand_mask"


def _missing_shard(setup, tmp):
    return {"jetclass": [tmp / "gone.parquet"]}, "gone.parquet: no such shard"


def _no_test_jets(setup, tmp):
    shards = _write(tmp / "trainonly.parquet", _columns(30, 8, splits=(0, 1)))
    return {"future": {"qq": shards}}, "qq has no candidates in the test split of .*trainonly.parquet"


def _no_shards(setup, tmp):
    return {"future": {"ZH_Htautau": []}}, "no shards given for ZH_Htautau"


def _name_clash(setup, tmp):
    return {"future": {JETCLASS: setup["jetclass"]}}, "clashes"


@pytest.mark.parametrize(
    "case",
    [_absent, _not_a_tokenizer, _garbage_tokenizer, _missing_column, _missing_shard, _no_test_jets, _no_shards, _name_clash],
    ids=lambda f: f.__name__.strip("_"),
)
def test_bad_input_is_a_clear_error_and_writes_nothing(setup, tmp_path, case):
    changes, message = case(setup, tmp_path)
    args = {"tokenizer": setup["tokenizer"], "jetclass": setup["jetclass"], "future": setup["future"]} | changes
    out = tmp_path / "out"
    with pytest.raises(TaufmError, match=message):
        plot_tokenizer_checks(args["tokenizer"], args["jetclass"], args["future"], out)
    assert not out.exists() or list(out.iterdir()) == []
