"""The VQ-VAE tokenizer: preprocessing, quantisation, masking, training, tokens, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from taufm.errors import TaufmError
from taufm.ingest.shards import CANDIDATE_FEATURES, MASK_COLUMN, write_shard
from taufm.models.vqvae import VQVAE, VQVAEConfig, VectorQuantizer, reconstruction_losses
from taufm.tokenizer.preprocessing import Preprocessing
from taufm.tokenizer.tokenize import (
    N_CANDIDATE_CHANNELS,
    TOKEN_FEATURES_COLUMN,
    codes_of_tokens,
    stop_token,
    token_feature_array,
    token_sequences,
    tokenize_shard,
)
from taufm.tokenizer.train import TokenizerSettings, load_tokenizer, train_tokenizer

F = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
TINY_MODEL = {"codebook_size": 16, "hidden_dim": 16, "n_heads": 2, "n_blocks": 1, "dead_code_patience": 5}


def synthetic_jets(n_jets: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Jets of 1..width candidates with physical-looking features (pT-ordered)."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, width + 1, n_jets)
    mask = np.arange(width)[None, :] < n[:, None]
    f = np.zeros((n_jets, width, len(CANDIDATE_FEATURES)), dtype=np.float32)
    f[..., F["pt"]] = -np.sort(-rng.exponential(10.0, (n_jets, width)), axis=1) + 0.5
    f[..., F["deta"]] = rng.normal(0, 0.1, (n_jets, width))
    f[..., F["dphi"]] = rng.normal(0, 0.1, (n_jets, width))
    pid = rng.integers(0, 5, (n_jets, width))
    for i, flag in enumerate(("isElectron", "isMuon", "isPhoton", "isChargedHadron", "isNeutralHadron")):
        f[..., F[flag]] = pid == i
    charged = np.isin(pid, (0, 1, 3))
    f[..., F["charge"]] = np.where(charged, rng.choice([-1.0, 1.0], (n_jets, width)), 0.0)
    f[..., F["mass"]] = np.where(pid == 3, 0.1396, np.where(pid == 1, 0.1057, 0.0))
    return np.where(mask[..., None], f, 0.0).astype(np.float32), mask


def write_synthetic_shard(path, n_jets=300, width=8, seed=0, splits=(0, 1, 2), impact_parameters: bool = False) -> None:
    """A jet shard of :func:`synthetic_jets`; d0/dz (mm) and their errors are zero unless
    ``impact_parameters``, then drawn per candidate."""
    features, mask = synthetic_jets(n_jets, width, seed)
    columns = {"split": np.resize(np.array(splits, dtype=np.int8), n_jets), "label": np.zeros(n_jets, dtype=np.int8)}
    for i, name in enumerate(CANDIDATE_FEATURES):
        columns[f"cand_{name}"] = features[..., i]
    for extra in ("d0", "d0err", "dz", "dzerr"):
        columns[f"cand_{extra}"] = np.zeros((n_jets, width), dtype=np.float32)
    if impact_parameters:
        rng = np.random.default_rng(seed + 1)
        for extra, scale in (("d0", 0.1), ("d0err", 0.01), ("dz", 0.1), ("dzerr", 0.01)):
            values = rng.normal(0.0, scale, (n_jets, width))
            columns[f"cand_{extra}"] = np.where(mask, np.abs(values) if extra.endswith("err") else values, 0.0).astype(np.float32)
        columns["jet_eta"] = rng.normal(0.0, 1.0, n_jets).astype(np.float32)  # the axis they are signed against
    columns[MASK_COLUMN] = mask
    write_shard(path, columns, {"stage": "synthetic"})


def test_preprocessing_round_trips_continuous_features():
    features, mask = synthetic_jets(50, 6)
    p = Preprocessing()
    m = p.select(features, mask)
    physical = p.invert_continuous(p.continuous(features, m))
    for j, name in enumerate(("pt", "deta", "dphi", "mass")):
        np.testing.assert_allclose(physical[..., j][m], features[..., F[name]][m], rtol=1e-5, atol=1e-6)


def test_preprocessing_applies_the_angular_cut_and_classes():
    features, mask = synthetic_jets(5, 4)
    features[0, 0, F["deta"]] = 0.9
    p = Preprocessing(max_abs_angle=0.8)
    assert not p.select(features, mask)[0, 0]
    assert Preprocessing(max_abs_angle=None).select(features, mask)[0, 0]
    inputs = p.model_inputs(features, mask)
    assert set(np.unique(inputs["charge"][inputs["mask"]])) <= {0, 1, 2}
    np.testing.assert_array_equal(inputs["pid"][mask], np.argmax(features[..., F["isElectron"] :][mask], axis=-1))


def test_quantisation_picks_the_nearest_code():
    q = VectorQuantizer(VQVAEConfig(codebook_size=4, latent_dim=2))
    q.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    q.initialized.fill_(True)
    q.eval()
    z = torch.tensor([[[0.9, 0.2], [0.1, 0.1], [4.0, 4.5], [0.2, 0.7]]])
    out = q(z, torch.ones(1, 4, dtype=torch.bool))
    assert out["codes"].tolist() == [[1, 0, 3, 2]]
    assert torch.allclose(out["quantized"], q.codebook.data[[1, 0, 3, 2]][None])


def test_gradients_reach_the_encoder_through_the_straight_through_path():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**TINY_MODEL))
    features, mask = synthetic_jets(8, 5)
    batch = {k: torch.from_numpy(v) for k, v in Preprocessing().model_inputs(features, mask).items()}
    out = model(batch["inputs"], batch["mask"])
    reconstruction_losses(out, batch)["continuous"].backward()  # no VQ term: only straight-through
    assert model.input_projection.weight.grad.abs().sum() > 0
    assert model.to_latent.weight.grad.abs().sum() > 0


def test_unused_code_is_replaced_after_patience_batches():
    q = VectorQuantizer(VQVAEConfig(codebook_size=3, latent_dim=2, dead_code_patience=3))
    q.codebook.data = torch.tensor([[0.0, 0.0], [100.0, 100.0], [0.1, 0.0]])
    q.initialized.fill_(True)
    q.train()
    z = torch.tensor([[[0.0, 0.01], [0.1, 0.02]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    for batch in range(3):
        out = q(z, mask)
        assert int(out["replaced"]) == (1 if batch == 2 else 0)
    assert torch.cdist(q.codebook.data[1:2], z[0]).min() < 1e-6, "the dead code moved onto a latent"


def test_padding_never_changes_codes_or_losses():
    torch.manual_seed(1)
    model = VQVAE(VQVAEConfig(**TINY_MODEL)).eval()
    features, mask = synthetic_jets(6, 5, seed=3)
    p = Preprocessing()
    clean = {k: torch.from_numpy(v) for k, v in p.model_inputs(features, mask).items()}
    garbage = {k: v.clone() for k, v in clean.items()}
    pad = ~clean["mask"]
    garbage["inputs"][pad] = torch.randn(int(pad.sum()), clean["inputs"].shape[-1]) * 50
    garbage["continuous"][pad] = 7.0
    garbage["pid"][pad] = 3
    with torch.no_grad():
        a, b = model(clean["inputs"], clean["mask"]), model(garbage["inputs"], garbage["mask"])
    assert torch.equal(a["codes"], b["codes"])
    la, lb = reconstruction_losses(a, clean), reconstruction_losses(b, garbage)
    for key in la:
        assert torch.allclose(la[key], lb[key])
    assert torch.allclose(a["vq_loss"], b["vq_loss"])


def test_kmeans_initialisation_ignores_padding():
    q = VectorQuantizer(VQVAEConfig(codebook_size=2, latent_dim=1))
    q.train()
    z = torch.tensor([[[1.0], [1.1], [1000.0]], [[2.0], [2.1], [1000.0]]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    q(z, mask)
    assert q.codebook.data.max() < 10, "no code was placed on padded latents"


def test_token_sequences_round_trip():
    codes = np.array([[3, -1, 5, -1], [-1, -1, -1, -1], [0, 1, 2, 3]])
    mask = codes >= 0
    tokens, token_mask = token_sequences(codes, mask, codebook_size=8)
    assert tokens.tolist() == [[0, 4, 6, 9, 0, 0], [0, 9, 0, 0, 0, 0], [0, 1, 2, 3, 4, 9]]
    assert token_mask.sum(axis=1).tolist() == [4, 2, 6]
    back, back_mask = codes_of_tokens(tokens, token_mask, 8)
    assert [list(back[i][back_mask[i]]) for i in range(3)] == [[3, 5], [], [0, 1, 2, 3]]
    assert stop_token(8) == 9


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    write_synthetic_shard(d / "jets_000.parquet", n_jets=800, seed=0, splits=(0, 0, 0, 0, 0, 0, 1, 2))
    settings = TokenizerSettings(epochs=3, batch_size=32, learning_rate=3e-3, model=TINY_MODEL, device="cpu", seed=5)
    summary = train_tokenizer([d / "jets_000.parquet"], d / "out", settings)
    return d, settings, summary


def test_training_beats_the_mean_prediction_and_writes_history(trained):
    d, _, summary = trained
    assert summary["val_best"]["continuous"] < summary["val_mean_prediction"]["continuous"]
    assert summary["val_best"]["pid"] < summary["val_mean_prediction"]["pid"]
    history = (d / "out" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3 and "val_code_usage" in history[0] and "val_perplexity" in history[0]


def test_seeded_training_is_reproducible_and_resumes_exactly(trained, tmp_path, monkeypatch):
    import taufm.tokenizer.train as train_module

    d, settings, _ = trained
    train_tokenizer([d / "jets_000.parquet"], tmp_path / "again", settings)
    a = torch.load(d / "out" / "tokenizer.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "again" / "tokenizer.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # A run killed during its third epoch's validation, then restarted with the same command.
    real_evaluate = train_module.evaluate
    calls = {"n": 0}

    def killed_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer([d / "jets_000.parquet"], tmp_path / "resumed", settings)
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    train_tokenizer([d / "jets_000.parquet"], tmp_path / "resumed", settings)
    full = torch.load(d / "out" / train_module.LAST_CHECKPOINT, weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / train_module.LAST_CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert len((tmp_path / "resumed" / "history.csv").read_text().splitlines()) == 1 + 3


def test_tokenize_a_shard_and_decode_it_back(trained, tmp_path):
    d, _, _ = trained
    manifest = tokenize_shard(d / "jets_000.parquet", d / "out" / "tokenizer.pt", tmp_path / "tokens.parquet")
    table = pq.read_table(tmp_path / "tokens.parquet").to_pydict()
    tokens, token_mask = np.array(table["tokens"]), np.array(table["token_mask"])
    assert manifest["token_ids"] == {"start": 0, "codes": [1, 16], "stop": 17, "padding": 0, "vocabulary_size": 18}
    assert np.all(tokens[:, 0] == 0)
    n = token_mask.sum(axis=1)
    assert np.all(tokens[np.arange(len(n)), n - 1] == 17)
    assert np.all(tokens[~token_mask] == 0)
    inner = tokens[:, 1:-1][token_mask[:, 1:-1]]
    assert np.all((inner >= 1) & (inner <= 17))
    source = pq.read_table(d / "jets_000.parquet", columns=[MASK_COLUMN, "split"]).to_pydict()
    assert np.array_equal(n - 2, np.array(source[MASK_COLUMN]).sum(axis=1)), "one token per candidate"
    assert table["split"] == source["split"], "jet columns are carried over"
    # Identical tokens from a second run: tokenization is deterministic.
    tokenize_shard(d / "jets_000.parquet", d / "out" / "tokenizer.pt", tmp_path / "again.parquet")
    assert pq.read_table(tmp_path / "again.parquet").to_pydict()["tokens"] == table["tokens"]


def test_a_shard_without_impact_parameters_gets_zero_lifetime_channels_said_once(trained, tmp_path, caplog):
    """A shard ingested without the d0/dz columns still tokenizes: its candidates' lifetime
    channels are zero, the tokenizer channels are those of the full shard, and the warning naming
    the shard comes once, not once per batch."""
    d, _, _ = trained
    write_synthetic_shard(tmp_path / "with_ip.parquet", seed=5, impact_parameters=True)
    stripped = pq.read_table(tmp_path / "with_ip.parquet").drop_columns(["cand_d0", "cand_d0err", "cand_dz", "cand_dzerr"])
    pq.write_table(stripped, tmp_path / "no_ip.parquet")
    full = tokenize_shard(tmp_path / "with_ip.parquet", d / "out" / "tokenizer.pt", tmp_path / "full.parquet", batch_size=64)
    with caplog.at_level("WARNING", logger="taufm.tokenizer.tokenize"):
        manifest = tokenize_shard(tmp_path / "no_ip.parquet", d / "out" / "tokenizer.pt", tmp_path / "no_ip_tokens.parquet", batch_size=64)
    assert manifest["jets"] == full["jets"] > 64, "several batches"
    said = [r.getMessage() for r in caplog.records if "lifetime channels are zero" in r.getMessage()]
    assert len(said) == 1 and "no_ip.parquet" in said[0]
    ours = token_feature_array(pq.read_table(tmp_path / "no_ip_tokens.parquet").column(TOKEN_FEATURES_COLUMN).to_pylist())
    theirs = token_feature_array(pq.read_table(tmp_path / "full.parquet").column(TOKEN_FEATURES_COLUMN).to_pylist())
    assert np.all(ours[..., N_CANDIDATE_CHANNELS:] == 0) and np.any(theirs[..., N_CANDIDATE_CHANNELS:] != 0)
    np.testing.assert_array_equal(ours[..., :N_CANDIDATE_CHANNELS], theirs[..., :N_CANDIDATE_CHANNELS])
    # ...and one that is also empty gives an empty token shard.
    write_synthetic_shard(tmp_path / "empty.parquet", n_jets=0)
    pq.write_table(pq.read_table(tmp_path / "empty.parquet").drop_columns(["cand_d0", "cand_d0err", "cand_dz", "cand_dzerr"]), tmp_path / "empty_no_ip.parquet")
    assert tokenize_shard(tmp_path / "empty_no_ip.parquet", d / "out" / "tokenizer.pt", tmp_path / "empty_tokens.parquet")["jets"] == 0
    assert pq.read_metadata(tmp_path / "empty_tokens.parquet").num_rows == 0


def test_bad_inputs_are_named(trained, tmp_path):
    d, settings, _ = trained
    with pytest.raises(TaufmError, match="codebook_size"):
        load_tokenizer(d / "out" / "tokenizer.pt", codebook_size=32000)
    write_shard(tmp_path / "wrong.parquet", {"split": np.zeros(3, dtype=np.int8), "x": np.zeros(3)}, {})
    with pytest.raises(TaufmError, match="wrong.parquet: missing column"):
        train_tokenizer([tmp_path / "wrong.parquet"], tmp_path / "out", settings)
    with pytest.raises(TaufmError, match="wrong.parquet: missing column"):
        tokenize_shard(tmp_path / "wrong.parquet", d / "out" / "tokenizer.pt", tmp_path / "t.parquet")
    write_synthetic_shard(tmp_path / "empty.parquet", n_jets=0)
    # (An empty shard tokenizes into an empty token shard: tests/test_empty_shards.py.)
    with pytest.raises(TaufmError, match="no training jets"):
        train_tokenizer([tmp_path / "empty.parquet"], tmp_path / "out", settings)
    with pytest.raises(TaufmError, match="codebok_size"):
        TokenizerSettings.from_mapping({"model": {"codebok_size": 8}})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(TaufmError, match="junk.pt"):
        load_tokenizer(tmp_path / "junk.pt")
    assert not (tmp_path / "t.parquet").exists()


def test_a_finished_run_rerun_after_its_outputs_were_deleted_writes_them_again(trained, tmp_path):
    """Snakemake deletes a job's outputs before rerunning it (e.g. --forcerun): the resumed run,
    with no epoch left, must still write every output, the best epoch's model included."""
    import shutil

    import taufm.tokenizer.train as train_module

    d, settings, _ = trained
    shutil.copytree(d / "out", tmp_path / "out")
    for name in (train_module.MODEL_FILE, train_module.HISTORY_FILE, train_module.SUMMARY_FILE):
        (tmp_path / "out" / name).unlink()
    summary = train_tokenizer([d / "jets_000.parquet"], tmp_path / "out", settings)
    for name in (train_module.MODEL_FILE, train_module.HISTORY_FILE, train_module.SUMMARY_FILE):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    first = torch.load(d / "out" / train_module.MODEL_FILE, weights_only=True)
    again = torch.load(tmp_path / "out" / train_module.MODEL_FILE, weights_only=True)
    assert all(torch.equal(first["model"][k], again["model"][k]) for k in first["model"])
    assert again["validation"] == first["validation"] and summary["best_epoch"] == first["validation"]["epoch"]
    assert (tmp_path / "out" / train_module.HISTORY_FILE).read_text() == (d / "out" / train_module.HISTORY_FILE).read_text()


def test_a_checkpoint_of_other_inputs_or_code_is_not_resumed(trained, tmp_path, monkeypatch, caplog):
    import shutil

    import taufm.provenance
    import taufm.tokenizer.train as train_module

    d, settings, _ = trained
    shutil.copytree(d / "out", tmp_path / "out")
    # Same settings, other input shard: the old checkpoint (at its last epoch) must not be taken.
    write_synthetic_shard(tmp_path / "jets_000.parquet", n_jets=800, seed=1, splits=(0, 0, 0, 0, 0, 0, 1, 2))
    with caplog.at_level("WARNING"):
        train_tokenizer([tmp_path / "jets_000.parquet"], tmp_path / "out", settings)
    assert "written with other input shards: starting afresh" in caplog.text
    first = torch.load(d / "out" / train_module.MODEL_FILE, weights_only=True)["model"]
    other = torch.load(tmp_path / "out" / train_module.MODEL_FILE, weights_only=True)["model"]
    assert not all(torch.equal(first[k], other[k]) for k in first), "trained on the new shard"
    assert len((tmp_path / "out" / train_module.HISTORY_FILE).read_text().splitlines()) == 1 + settings.epochs

    caplog.clear()
    monkeypatch.setattr(taufm.provenance, "stage_source_hash", lambda stage, root=None: "edited")
    with caplog.at_level("WARNING"):
        train_tokenizer([tmp_path / "jets_000.parquet"], tmp_path / "out", settings)
    assert "written with other taufm code: starting afresh" in caplog.text


def test_a_new_normformer_block_is_the_identity():
    from taufm.models.vqvae import NormFormerBlock

    torch.manual_seed(0)
    block = NormFormerBlock(dim=16, n_heads=4, dropout=0.0)
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(block(x, mask), x * mask[..., None])
    # ...and it learns: the zeroed weights get gradients.
    block(x, mask).pow(2).sum().backward()
    assert block.norm_attn.weight.grad.abs().sum() > 0 and block.mlp[-1].weight.grad.abs().sum() > 0


def test_tokenizer_training_decays_no_bias_norm_or_codebook(trained, tmp_path, monkeypatch):
    import taufm.tokenizer.train as train_module
    from taufm.train.runtime import adamw

    built = []
    monkeypatch.setattr(train_module, "adamw", lambda *a, **k: built.append(adamw(*a, **k)) or built[-1])
    d, settings, _ = trained
    train_tokenizer([d / "jets_000.parquet"], tmp_path / "out", TokenizerSettings(**{**settings.to_dict(), "epochs": 1, "weight_decay": 0.1}))
    (optimizer,) = built
    decayed = [p for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(p.ndim == 2 for p in decayed)
    assert any(g["weight_decay"] == 0 and any(p.ndim == 1 for p in g["params"]) for g in optimizer.param_groups)
