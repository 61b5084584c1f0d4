"""The fine-tuning grid cell: strategies freeze, load and train what they should; run outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from taufm.errors import TaufmError
from taufm.finetune.train import FinetuneSettings, build_model, parse_strategy, run_finetune, set_backbone_trainable
from taufm.ingest.shards import CANDIDATE_FEATURES, MASK_COLUMN, write_shard
from taufm.pretrain.train import PretrainSettings, pretrain

K = 8
LENGTH = 10
SAMPLES = ("ZH_Htautau", "Z_Ztautau", "qq")
SETTINGS = FinetuneSettings(epochs=3, unfreeze_epoch=1, batch_size=32, head={"dim": 16, "n_heads": 2}, part={"embed_dim": 16, "head": {"dim": 16, "n_heads": 2, "n_particle_blocks": 1}}, device="cpu")


def write_sample(path, sample: str, n: int, seed: int) -> None:
    """A shard with the columns of both an ingested and a token shard, labels per sample."""
    rng = np.random.default_rng(seed)
    tau = sample != "qq"
    n_cand = rng.integers(1, LENGTH - 2, n)
    tokens = np.zeros((n, LENGTH), dtype=np.int32)
    mask = np.arange(LENGTH)[None, :] < (n_cand + 2)[:, None]
    for i in range(n):
        tokens[i, 1 : n_cand[i] + 1] = rng.integers(1, K + 1, n_cand[i])
        tokens[i, n_cand[i] + 1] = K + 1
    jet_pt = rng.uniform(10, 80, n).astype(np.float32)
    cand_mask = np.arange(LENGTH - 2)[None, :] < n_cand[:, None]
    columns = {
        "sample": np.full(n, sample, dtype=object),
        "event": np.arange(n, dtype=np.int64),
        "jet_index": np.zeros(n, dtype=np.int16),
        "split": np.resize(np.array([0, 0, 0, 0, 0, 0, 1, 2], dtype=np.int8), n),
        "label": np.full(n, int(tau), dtype=np.int8),
        "decay_mode": (rng.integers(0, 6, n) if tau else np.full(n, -1)).astype(np.int8),
        "jet_pt": jet_pt,
        "jet_eta": rng.normal(0, 1, n).astype(np.float32),
        "jet_phi": rng.uniform(-3, 3, n).astype(np.float32),
        "jet_energy": jet_pt * 1.2,
        "gen_tau_vis_pt": (jet_pt * rng.uniform(0.8, 1.2, n)).astype(np.float32) if tau else np.full(n, np.nan, dtype=np.float32),
        "gen_tau_charge": np.full(n, -1.0 if tau else 0.0, dtype=np.float32),
        "tokens": tokens,
        "token_mask": mask,
        MASK_COLUMN: cand_mask,
    }
    for name in (*CANDIDATE_FEATURES, "d0", "d0err", "dz", "dzerr"):
        columns[f"cand_{name}"] = np.where(cand_mask, rng.uniform(0.1, 1.0, cand_mask.shape), 0.0).astype(np.float32)
    manifest = {"token_ids": {"start": 0, "codes": [1, K], "stop": K + 1, "padding": 0, "vocabulary_size": K + 2}, "tokenizer": {"sha256": "synthetic"}}
    write_shard(path, columns, manifest)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    shards = {}
    for i, sample in enumerate(SAMPLES):
        shards[sample] = [d / f"{sample}_000.parquet"]
        write_sample(shards[sample][0], sample, 400, seed=i)
    pretrain([p for v in shards.values() for p in v], d / "pretrain", PretrainSettings(model={"dim": 16, "n_heads": 2, "n_blocks": 2}, max_length=LENGTH, batch_size=64, epochs=1, device="cpu"))
    return d, shards, d / "pretrain" / "backbone_best.pt"


def _pretrained(path):
    return torch.load(path, weights_only=True)["backbone"]


def test_strategies_start_from_the_right_weights(world):
    _, _, backbone = world
    pretrained = _pretrained(backbone)
    for name, same in (("fixed", True), ("finetune", True), ("finetune-blocks1", True), ("scratch", False)):
        model = build_model("tau_id", parse_strategy(name, 1), SETTINGS, backbone, seed=0)
        state = model.backbone.state_dict()
        equal = all(torch.equal(state[k], v) for k, v in pretrained.items())
        assert equal == same, name


def _backbone_after_each_epoch(monkeypatch):
    """Snapshot the backbone whenever validation runs (once per epoch)."""
    import taufm.finetune.train as module

    snapshots = []
    real = module.evaluate_outputs

    def spy(model, *args, **kwargs):
        if hasattr(model, "backbone") and model.training is not None:
            snapshots.append({k: v.clone() for k, v in model.backbone.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(module, "evaluate_outputs", spy)
    return snapshots


def test_fixed_never_changes_and_finetune_changes_only_after_unfreezing(world, tmp_path, monkeypatch):
    _, shards, backbone = world
    pretrained = _pretrained(backbone)
    snapshots = _backbone_after_each_epoch(monkeypatch)
    run_finetune("pt_regression", "fixed", 200, 0, shards, tmp_path / "fixed", SETTINGS, backbone)
    assert all(torch.equal(s[k], pretrained[k]) for s in snapshots[:3] for k in pretrained)
    snapshots.clear()
    run_finetune("pt_regression", "finetune", 200, 0, shards, tmp_path / "finetune", SETTINGS, backbone)
    after_frozen_epoch, after_unfrozen = snapshots[0], snapshots[1]
    assert all(torch.equal(after_frozen_epoch[k], pretrained[k]) for k in pretrained), "frozen in epoch 0"
    assert not all(torch.equal(after_unfrozen[k], pretrained[k]) for k in pretrained), "trained from epoch 1"
    history = (tmp_path / "finetune" / "history.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in history[1:]] == ["0", "1", "1"]


def test_frozen_backbone_is_in_eval_mode_and_has_no_gradients(world):
    _, _, backbone = world
    model = build_model("decay_mode", parse_strategy("fixed", 1), SETTINGS, backbone, seed=0)
    model.train()
    set_backbone_trainable(model, False)
    assert not model.backbone.training and model.head.training
    tokens, mask = torch.randint(1, K + 1, (4, LENGTH)), torch.ones(4, LENGTH, dtype=torch.bool)
    model(tokens, mask).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None for p in model.head.parameters())


def test_run_directory_holds_config_history_model_and_predictions(world, tmp_path):
    _, shards, backbone = world
    summary = run_finetune("decay_mode", "finetune", 150, 1, shards, tmp_path, SETTINGS, backbone)
    for name in ("config.json", "history.csv", "model.pt", "predictions.parquet", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    predictions = pq.read_table(tmp_path / "predictions.parquet").to_pydict()
    assert set(predictions["sample"]) == {"Z_Ztautau", "ZH_Htautau"}
    probabilities = np.stack([predictions[f"prob_{n}"] for n in ("1h0pi0", "1h1pi0", "1hNpi0", "3h0pi0", "3hNpi0", "rare")], axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["size"] == 150 and config["seed"] == 1 and config["backbone"]["sha256"]
    assert summary["best_epoch"] in (0, 1, 2)


def test_part_baseline_trains_on_candidate_features(world, tmp_path):
    _, shards, _ = world
    summary = run_finetune("tau_id", "part", 200, 0, shards, tmp_path, SETTINGS)
    assert summary["backbone"] is None
    predictions = pq.read_table(tmp_path / "predictions.parquet").to_pydict()
    assert set(predictions["sample"]) == {"Z_Ztautau", "ZH_Htautau", "qq"}
    assert all(0.0 <= s <= 1.0 for s in predictions["score"])


def test_bad_requests_fail_before_training(world, tmp_path):
    _, shards, backbone = world
    with pytest.raises(TaufmError, match="unknown task 'tauid'"):
        run_finetune("tauid", "fixed", 10, 0, shards, tmp_path, SETTINGS, backbone)
    with pytest.raises(TaufmError, match="unknown strategy 'frozen'"):
        run_finetune("tau_id", "frozen", 10, 0, shards, tmp_path, SETTINGS, backbone)
    with pytest.raises(TaufmError, match="1000000"):
        run_finetune("tau_id", "fixed", 1_000_000, 0, shards, tmp_path, SETTINGS, backbone)
    with pytest.raises(TaufmError, match="blocks"):
        run_finetune("tau_id", "finetune-blocks9", 10, 0, shards, tmp_path, SETTINGS, backbone)
    payload = torch.load(backbone, weights_only=True)
    payload["config"]["model"]["dim"] = 32
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(TaufmError, match="other.pt"):
        run_finetune("tau_id", "fixed", 10, 0, shards, tmp_path / "run", SETTINGS, tmp_path / "other.pt")
    assert not (tmp_path / "run").exists()
    assert parse_strategy("finetune-unfreezenever", 5).unfreeze_epoch is None
    with pytest.raises(TaufmError, match="ParT"):
        parse_strategy("part-blocks2", 5)


def test_fig6_embeddings_of_three_backbones(world, tmp_path):
    from taufm.evaluate.embeddings import embed_tau_jets, plot_tsne

    _, shards, backbone = world
    run_finetune("decay_mode", "finetune-unfreeze0", 150, 0, shards, tmp_path / "dm", SETTINGS, backbone)
    result = embed_tau_jets(shards["Z_Ztautau"], backbone, tmp_path / "dm" / "model.pt", max_jets=40, seed=0)
    n = len(result["decay_mode"])
    assert 0 < n <= 40
    for stage in ("untrained", "pretrained", "fine-tuned"):
        assert result[f"embedding_{stage}"].shape == (n, 16)
        assert result[f"tsne_{stage}"].shape == (n, 2) and np.isfinite(result[f"tsne_{stage}"]).all()
    assert not np.allclose(result["embedding_untrained"], result["embedding_pretrained"])
    assert not np.allclose(result["embedding_pretrained"], result["embedding_fine-tuned"]), "fine-tuning moved the backbone"
    plot_tsne(result, tmp_path / "fig6_tsne")
    assert (tmp_path / "fig6_tsne.png").stat().st_size > 1000 and (tmp_path / "fig6_tsne.pdf").exists()
    run_finetune("decay_mode", "part", 100, 0, shards, tmp_path / "part", SETTINGS)
    with pytest.raises(TaufmError, match="no backbone weights"):
        embed_tau_jets(shards["Z_Ztautau"], backbone, tmp_path / "part" / "model.pt", max_jets=10)

    # The probes of the same embeddings: every stage and probe, scored on the t-SNE's jets.
    from taufm.evaluate.embeddings import PROBES, STAGES, load_backbones, plot_probes, probe_decay_modes
    from taufm.evaluate.metrics import write_probes

    backbones = load_backbones(backbone, tmp_path / "dm" / "model.pt", seed=0)  # the ones embed_tau_jets drew (same seed)
    rows = probe_decay_modes(shards["Z_Ztautau"], backbones, result, train_jets=120, neighbours=5, seed=0)
    assert [(r["backbone_stage"], r["probe"]) for r in rows] == [(s, p) for s in STAGES for p in PROBES]
    majority = np.mean(result["decay_mode"] == np.bincount(result["decay_mode"]).argmax())
    for row in rows:
        assert row["test_jets"] == n and 0 < row["train_jets"] <= 120
        assert 0 <= row["balanced_accuracy"] <= 1 and 0 <= row["accuracy"] <= 1
        assert row["accuracy_error"] == pytest.approx(np.sqrt(row["accuracy"] * (1 - row["accuracy"]) / n))
        assert row["majority_fraction"] <= majority + 1e-12  # the train split's majority mode, scored on the test jets
    assert rows == probe_decay_modes(shards["Z_Ztautau"], backbones, result, train_jets=120, neighbours=5, seed=0)
    write_probes(rows, tmp_path / "probes.csv", tmp_path / "probes.parquet")
    header = (tmp_path / "probes.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["backbone", "backbone_stage", "probe"] and "accuracy" in header and "neighbours" in header
    assert {r["backbone"] for r in rows} == {"tokens-ntp"}
    plot_probes(rows, tmp_path / "probes")
    assert (tmp_path / "probes.png").stat().st_size > 1000 and (tmp_path / "probes.pdf").exists()


def test_embedding_probes_name_what_is_missing(world, tmp_path):
    from taufm.evaluate.embeddings import embed_tau_jets, load_backbones, probe_decay_modes

    _, shards, backbone = world
    run_finetune("decay_mode", "finetune-unfreeze0", 100, 0, shards, tmp_path / "dm", SETTINGS, backbone)
    result = embed_tau_jets(shards["Z_Ztautau"], backbone, tmp_path / "dm" / "model.pt", max_jets=20, seed=0)
    backbones = load_backbones(backbone, tmp_path / "dm" / "model.pt")
    with pytest.raises(TaufmError, match="no tau jets in the train split of: .*qq_000.parquet"):
        probe_decay_modes(shards["qq"], backbones, result)
    with pytest.raises(TaufmError, match="hold one decay mode only"):
        probe_decay_modes(shards["Z_Ztautau"], backbones, result, train_jets=1)


def test_a_backbone_of_another_tokenizer_is_refused(world, tmp_path):
    """Same vocabulary size, another tokenizer: its pretrained weights mean other particles."""
    import shutil

    from taufm import paths

    _, shards, backbone = world
    other = {}
    for sample, files in shards.items():
        other[sample] = []
        for shard in files:
            copy = tmp_path / "tokens" / shard.name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(shard, copy)
            manifest = json.loads(paths.manifest(shard).read_text())
            manifest["tokenizer"]["sha256"] = "another-tokenizer"
            paths.manifest(copy).write_text(json.dumps(manifest))
            other[sample].append(copy)
    for strategy in ("finetune", "fixed"):
        with pytest.raises(TaufmError, match=r"backbone_best.pt: pretrained on tokens of tokenizer synthetic.*made by tokenizer another-toke"):
            run_finetune("pt_regression", strategy, 100, 0, other, tmp_path / strategy, SETTINGS, backbone)
        assert not (tmp_path / strategy / "model.pt").exists()
    # From scratch only borrows the architecture: the vocabulary must fit, the tokenizer need not.
    run_finetune("pt_regression", "scratch", 100, 0, other, tmp_path / "scratch", SETTINGS, backbone)

    payload = torch.load(backbone, weights_only=True)
    payload["config"]["vocab_size"] = 99
    torch.save(payload, tmp_path / "wide.pt")
    with pytest.raises(TaufmError, match=r"wide.pt: embeds a vocabulary of 99 tokens; the token shards .* use"):
        run_finetune("pt_regression", "scratch", 100, 0, shards, tmp_path / "wide", SETTINGS, tmp_path / "wide.pt")


def test_finetuning_decays_weight_matrices_only(world, tmp_path, monkeypatch):
    import taufm.finetune.train as module
    from taufm.train.runtime import adamw

    built = []

    def spy(modules, *args):
        built.append((modules, adamw(modules, *args)))
        return built[-1][1]

    monkeypatch.setattr(module, "adamw", spy)
    _, shards, backbone = world
    run_finetune("pt_regression", "finetune", 100, 0, shards, tmp_path, FinetuneSettings(**{**dataclasses.asdict(SETTINGS), "epochs": 1, "weight_decay": 0.1}), backbone)
    ((modules, optimizer),) = built
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    linear = {id(m.weight) for model in modules for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert decayed == linear, "decay on every linear weight matrix, on nothing else (embeddings, norms, biases, class token)"


def test_a_killed_cell_resumes_to_the_same_model(world, tmp_path, monkeypatch):
    import taufm.finetune.train as module

    _, shards, backbone = world
    full = run_finetune("pt_regression", "finetune", 120, 0, shards, tmp_path / "full", SETTINGS, backbone)
    real = module.evaluate_outputs
    calls = {"n": 0}

    def killed_at_the_second_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate_outputs", killed_at_the_second_validation)
    with pytest.raises(KeyboardInterrupt):
        run_finetune("pt_regression", "finetune", 120, 0, shards, tmp_path / "resumed", SETTINGS, backbone)
    monkeypatch.setattr(module, "evaluate_outputs", real)
    assert (tmp_path / "resumed" / module.LAST_CHECKPOINT).exists() and not (tmp_path / "resumed" / "model.pt").exists()
    resumed = run_finetune("pt_regression", "finetune", 120, 0, shards, tmp_path / "resumed", SETTINGS, backbone)
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["best_val_loss"] == full["best_val_loss"]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "history.csv").read_text() == (tmp_path / "resumed" / "history.csv").read_text()

    # Finished, its outputs deleted (as Snakemake does before a rerun): written again, unchanged.
    for name in ("model.pt", "history.csv", "predictions.parquet", "summary.json", "config.json"):
        (tmp_path / "resumed" / name).unlink()
    run_finetune("pt_regression", "finetune", 120, 0, shards, tmp_path / "resumed", SETTINGS, backbone)
    c = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "full" / "history.csv").read_text() == (tmp_path / "resumed" / "history.csv").read_text()
