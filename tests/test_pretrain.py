"""GPT backbone and pretraining: masking, learning, exact resume, DDP equivalence, loading."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from taufm.errors import TaufmError
from taufm.ingest.shards import write_shard
from taufm.models.gpt import GPTBackbone, GPTConfig, NextTokenHead, next_token_loss, next_token_loss_from_embeddings
from taufm.pretrain.train import BACKBONE_FILE, BEST_BACKBONE_FILE, HISTORY_FILE, LAST_CHECKPOINT, PretrainSettings, load_backbone, pretrain

K = 8  # codebook size of the synthetic tokens: ids 0 start, 1..8 codes, 9 stop
TINY = {"dim": 32, "n_heads": 4, "n_blocks": 2, "ffn_multiplier": 2}


def write_token_shard(path, n_jets=256, length=12, seed=0):
    """Sequences with structure to learn: each code is the previous one plus one (mod K)."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n_jets, length), dtype=np.int32)
    n = rng.integers(1, length - 1, n_jets)
    first = rng.integers(1, K + 1, n_jets)
    for i in range(n_jets):
        codes = (first[i] - 1 + np.arange(n[i])) % K + 1
        tokens[i, 1 : n[i] + 1] = codes
        tokens[i, n[i] + 1] = K + 1
    mask = np.arange(length)[None, :] < (n + 2)[:, None]
    split = np.resize(np.array([0, 0, 0, 0, 0, 0, 1, 2], dtype=np.int8), n_jets)
    manifest = {"token_ids": {"start": 0, "codes": [1, K], "stop": K + 1, "padding": 0, "vocabulary_size": K + 2}, "tokenizer": {"sha256": "synthetic"}}
    write_shard(path, {"split": split, "tokens": tokens, "token_mask": mask}, manifest)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPTBackbone(GPTConfig(vocab_size=K + 2, max_length=12, **{**TINY, **overrides})).eval()


def test_changing_a_later_token_never_changes_an_earlier_output():
    model = tiny_model()
    tokens = torch.randint(1, K + 1, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.bool)
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] % K) + 1
    a, b = model(tokens, mask), model(changed, mask)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_padding_content_never_changes_outputs_or_loss():
    model = tiny_model(positional="learned")
    head = NextTokenHead(model.config)
    tokens = torch.randint(1, K + 1, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 9:] = False
    other = tokens.clone()
    other[~mask] = torch.randint(1, K + 2, (int((~mask).sum()),))
    a, b = model(tokens, mask), model(other, mask)
    assert torch.equal(a[mask], b[mask])
    la, lb = next_token_loss(head(a), tokens, mask), next_token_loss(head(b), other, mask)
    assert torch.equal(la[0], lb[0]) and int(la[1]) == int(lb[1]) == int((mask[:, 1:] & mask[:, :-1]).sum())


def test_the_head_runs_only_where_a_prediction_counts():
    model = tiny_model()
    head = NextTokenHead(model.config)
    tokens = torch.randint(1, K + 1, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 10:] = False
    embeddings = model(tokens, mask)
    rows = []
    handle = head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    loss, count = next_token_loss_from_embeddings(head, embeddings, tokens, mask)
    handle.remove()
    reference, reference_count = next_token_loss(head(embeddings), tokens, mask)
    assert rows == [int(count)] == [3 + 9 + 11], "one logit row per counted prediction"
    assert int(count) == int(reference_count) and torch.allclose(loss, reference, rtol=1e-6)
    loss.backward()
    assert head.linear.weight.grad is not None and torch.isfinite(head.linear.weight.grad).all()


def test_fewer_blocks_give_the_intermediate_embeddings():
    model = tiny_model()
    tokens, mask = torch.randint(1, K + 1, (2, 12)), torch.ones(2, 12, dtype=torch.bool)
    assert model(tokens, mask, n_blocks=1).shape == model(tokens, mask).shape
    assert not torch.allclose(model(tokens, mask, n_blocks=1), model(tokens, mask))


SETTINGS = PretrainSettings(model=TINY, max_length=12, batch_size=32, epochs=4, learning_rate=3e-3, warmup_steps=5, checkpoint_every=3, seed=3, device="cpu")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("pretrain")
    write_token_shard(d / "tokens_000.parquet")
    summary = pretrain([d / "tokens_000.parquet"], d / "out", SETTINGS)
    return d, summary


def _history(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_loss_falls_and_outputs_are_written(pretrained):
    d, summary = pretrained
    rows = _history(d / "out" / HISTORY_FILE)
    assert len(rows) == 4
    assert float(rows[-1]["train_loss"]) < 0.6 * float(rows[0]["train_loss"])
    assert float(rows[-1]["val_loss"]) < np.log(K + 2), "better than guessing"
    for name in (BACKBONE_FILE, BEST_BACKBONE_FILE, "model_config.json"):
        assert (d / "out" / name).stat().st_size > 0
    assert not list((d / "out").glob("*.png")), "figures are drawn by figure jobs, not by the training"


def test_loss_curve_is_drawn_from_the_history_by_its_own_command(pretrained, tmp_path, capsys):
    from taufm.cli import main

    d, _ = pretrained
    assert main(["loss-curve", "--history", str(d / "out" / HISTORY_FILE), "--output-stem", str(tmp_path / "curve")]) == 0
    for ext in ("png", "pdf"):
        assert (tmp_path / f"curve.{ext}").stat().st_size > 1000
    bad = tmp_path / "no_validation.csv"
    bad.write_text("epoch,train_loss\n0,1.5\n")
    assert main(["loss-curve", "--history", str(bad), "--output-stem", str(tmp_path / "bad")]) == 2
    assert "no_validation.csv: training history lacks column(s) val_loss" in capsys.readouterr().err
    assert (tmp_path / "provenance" / "curve.json").exists(), "a provenance record for the figure"
    assert not list(tmp_path.glob("bad*")) and not (tmp_path / "provenance" / "bad.json").exists(), "nothing written on error"


def test_saved_weights_load_bit_identically_and_mismatches_are_errors(pretrained):
    d, _ = pretrained
    payload = torch.load(d / "out" / BACKBONE_FILE, weights_only=True)
    loaded = load_backbone(d / "out" / BACKBONE_FILE, expect={"vocab_size": K + 2, "dim": 32})
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in payload["backbone"].items())
    with pytest.raises(TaufmError, match="vocab_size"):
        load_backbone(d / "out" / BACKBONE_FILE, expect={"vocab_size": 32002})
    with pytest.raises(TaufmError, match="dim"):
        load_backbone(d / "out" / BACKBONE_FILE, expect={"dim": 256})
    payload["config"]["model"]["dim"] = 64  # weights of one size, config of another
    torch.save(payload, d / "bad.pt")
    with pytest.raises(TaufmError, match="bad.pt: weights do not fit"):
        load_backbone(d / "bad.pt")


def test_killed_run_resumes_to_identical_weights(pretrained, tmp_path, monkeypatch):
    import taufm.pretrain.train as module

    d, _ = pretrained
    real = module.next_token_loss_from_embeddings
    calls = {"n": 0}

    def dies_at_step_ten(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "next_token_loss_from_embeddings", dies_at_step_ten)
    with pytest.raises(KeyboardInterrupt):
        pretrain([d / "tokens_000.parquet"], tmp_path, SETTINGS)
    monkeypatch.setattr(module, "next_token_loss_from_embeddings", real)
    assert (tmp_path / LAST_CHECKPOINT).exists()
    pretrain([d / "tokens_000.parquet"], tmp_path, SETTINGS)
    full = torch.load(d / "out" / BACKBONE_FILE, weights_only=True)["backbone"]
    resumed = torch.load(tmp_path / BACKBONE_FILE, weights_only=True)["backbone"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [r["train_loss"] for r in _history(tmp_path / HISTORY_FILE)] == [r["train_loss"] for r in _history(d / "out" / HISTORY_FILE)]


def test_two_gloo_processes_follow_the_single_process_loss_curve(pretrained, tmp_path):
    d, _ = pretrained
    settings = '{"model": {"dim": 32, "n_heads": 4, "n_blocks": 2, "ffn_multiplier": 2}, "max_length": 12, "batch_size": 32, "epochs": 4, "learning_rate": 0.003, "warmup_steps": 5, "checkpoint_every": 3, "seed": 3, "device": "cpu"}'
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "taufm.cli", "pretrain", "--threads", "1", "--settings", settings, "--output-dir", str(tmp_path), str(d / "tokens_000.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "model_config.json").read_text())["world_size"] == 2
    single = _history(d / "out" / HISTORY_FILE)
    double = _history(tmp_path / HISTORY_FILE)
    for a, b in zip(single, double, strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-4)


def test_bad_settings_and_inputs_are_named(tmp_path):
    with pytest.raises(TaufmError, match="n_block"):
        PretrainSettings.from_mapping({"model": {"n_block": 3}})
    write_shard(tmp_path / "not_tokens.parquet", {"split": np.zeros(2, dtype=np.int8)}, {"token_ids": {}, "tokenizer": {"sha256": "x"}})
    with pytest.raises(TaufmError, match="not_tokens.parquet"):
        pretrain([tmp_path / "not_tokens.parquet"], tmp_path / "out", SETTINGS)


def test_best_backbone_holds_the_best_epoch_also_after_a_resume(tmp_path, monkeypatch):
    """The best epoch is not the last; the outputs are deleted (as Snakemake does before a rerun)
    and the run resumed from its last checkpoint: backbone_best.pt still holds the best epoch."""
    import taufm.pretrain.train as module

    write_token_shard(tmp_path / "tokens_000.parquet")
    losses = iter([1.0, 0.5, 2.0, 3.0])  # best: epoch 1
    monkeypatch.setattr(module, "validation_loss", lambda *args, **kwargs: next(losses))
    settings = PretrainSettings(**{**SETTINGS.to_dict(), "epochs": 4})
    snapshots = {}
    real_payload = module.backbone_payload

    def remember(backbone, head, vocabulary, extra, objective=None):
        payload = real_payload(backbone, head, vocabulary, extra, objective)
        snapshots.setdefault(extra.get("validation", {}).get("epoch"), payload["backbone"])
        return payload

    monkeypatch.setattr(module, "backbone_payload", remember)
    pretrain([tmp_path / "tokens_000.parquet"], tmp_path / "out", settings)
    best = torch.load(tmp_path / "out" / BEST_BACKBONE_FILE, weights_only=True)
    assert best["validation"]["epoch"] == 1
    assert all(torch.equal(best["backbone"][k], snapshots[1][k]) for k in best["backbone"])
    last = torch.load(tmp_path / "out" / BACKBONE_FILE, weights_only=True)["backbone"]
    assert not all(torch.equal(best["backbone"][k], last[k]) for k in last)

    for name in (BACKBONE_FILE, BEST_BACKBONE_FILE, HISTORY_FILE, "model_config.json"):
        (tmp_path / "out" / name).unlink()
    pretrain([tmp_path / "tokens_000.parquet"], tmp_path / "out", settings)
    for name in (BACKBONE_FILE, BEST_BACKBONE_FILE, HISTORY_FILE, "model_config.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    again = torch.load(tmp_path / "out" / BEST_BACKBONE_FILE, weights_only=True)
    assert again["validation"] == best["validation"]
    assert all(torch.equal(again["backbone"][k], best["backbone"][k]) for k in best["backbone"])
    assert len(_history(tmp_path / "out" / HISTORY_FILE)) == 4


def test_pretraining_on_other_shards_starts_afresh(pretrained, tmp_path, caplog):
    import shutil

    d, _ = pretrained
    shutil.copytree(d / "out", tmp_path / "out")
    write_token_shard(tmp_path / "tokens_000.parquet", seed=1)
    with caplog.at_level("WARNING"):
        pretrain([tmp_path / "tokens_000.parquet"], tmp_path / "out", SETTINGS)
    assert "written with other input shards: starting afresh" in caplog.text
    assert len(_history(tmp_path / "out" / HISTORY_FILE)) == SETTINGS.epochs


def test_pretraining_decays_weight_matrices_only(tmp_path, monkeypatch):
    import taufm.pretrain.train as module
    from taufm.train.runtime import adamw

    built = []
    monkeypatch.setattr(module, "adamw", lambda *a, **k: built.append(adamw(*a, **k)) or built[-1])
    write_token_shard(tmp_path / "tokens_000.parquet", n_jets=64)
    pretrain([tmp_path / "tokens_000.parquet"], tmp_path / "out", PretrainSettings(**{**SETTINGS.to_dict(), "epochs": 1, "weight_decay": 0.1}))
    (optimizer,) = built
    decayed = [p for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(p.ndim == 2 for p in decayed)
    not_decayed = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p.ndim == 1 for p in not_decayed), "norms and biases"
