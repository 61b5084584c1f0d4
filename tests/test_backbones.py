"""The backbones of pretrain.backbones: input kinds (tokens, continuous) x objectives (ntp, mpm).

Each pretrains a few epochs on CPU with falling loss; masked particle modelling never lets a
hidden candidate's own input reach what is predicted; the config resolves one job per backbone.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from taufm.config import checked_settings, pretrain_backbone_payload, validate_config
from taufm.errors import TaufmError
from taufm.ingest.shards import write_shard
from taufm.models.gpt import GPTBackbone, GPTConfig
from taufm.pretrain.data import TokenBatches
from taufm.pretrain.train import BEST_BACKBONE_FILE, HISTORY_FILE, PretrainSettings, hidden_candidates, load_backbone, pretrain
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, TOKEN_FEATURE_NAMES, token_feature_array, token_features

K = 8  # codes 1..8, start 0, stop 9
LENGTH = 12
TINY = {"dim": 32, "n_heads": 4, "n_blocks": 2, "ffn_multiplier": 2}


def candidate_channels(codes: np.ndarray) -> np.ndarray:
    """Features a code stands for: a scaled value and a one-hot 'PID' of code mod 5."""
    out = np.zeros((*codes.shape, len(TOKEN_FEATURE_NAMES)), dtype=np.float32)
    out[..., 0] = codes / K
    out[..., 1] = np.cos(codes)
    out[..., 5 + codes % 5] = 1.0
    out[..., 10] = 0.1 * codes  # a lifetime channel, never read by a backbone
    return out


def write_feature_token_shard(path, n_jets=256, seed=0):
    """Token sequences with structure (each code is the previous one plus one, mod K) and the
    features of each code at its position, as tokenize writes them."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n_jets, LENGTH), dtype=np.int32)
    features = np.zeros((n_jets, LENGTH, len(TOKEN_FEATURE_NAMES)), dtype=np.float32)
    n = rng.integers(1, LENGTH - 1, n_jets)
    first = rng.integers(1, K + 1, n_jets)
    for i in range(n_jets):
        codes = (first[i] - 1 + np.arange(n[i])) % K + 1
        tokens[i, 1 : n[i] + 1] = codes
        tokens[i, n[i] + 1] = K + 1
        features[i, 1 : n[i] + 1] = candidate_channels(codes)
    mask = np.arange(LENGTH)[None, :] < (n + 2)[:, None]
    split = np.resize(np.array([0, 0, 0, 0, 0, 0, 1, 2], dtype=np.int8), n_jets)
    manifest = {"token_ids": {"start": 0, "codes": [1, K], "stop": K + 1, "padding": 0, "vocabulary_size": K + 2}, "tokenizer": {"sha256": "synthetic"}}
    write_shard(path, {"split": split, "tokens": tokens, "token_mask": mask, "token_features": features.reshape(n_jets, -1)}, manifest)
    return tokens, mask, features


BACKBONES = {
    "tokens-ntp": {"inputs": "tokens", "objective": "ntp"},
    "continuous-ntp": {"inputs": "continuous", "objective": "ntp"},
    "continuous-mpm": {"inputs": "continuous", "objective": "mpm", "mask_fraction": 0.4, "target": "tokens"},
    "continuous-mpm-features": {"inputs": "continuous", "objective": "mpm", "mask_fraction": 0.4, "target": "features"},
    "tokens-mpm": {"inputs": "tokens", "objective": "mpm", "mask_fraction": 0.3, "target": "tokens"},
}


def settings_for(name: str, **overrides) -> PretrainSettings:
    values = {
        "model": {**TINY, "positional": "learned" if BACKBONES[name]["objective"] == "mpm" else "none"},
        "max_length": LENGTH,
        "batch_size": 32,
        "epochs": 8,
        "learning_rate": 3e-3,
        "warmup_steps": 5,
        "device": "cpu",
        "backbone": {"name": name, **BACKBONES[name]},
        **overrides,
    }
    return PretrainSettings.from_mapping(values)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_backbone_pretrains_with_falling_loss(tmp_path, name):
    shard = tmp_path / "tokens.parquet"
    write_feature_token_shard(shard, n_jets=512)
    summary = pretrain([shard], tmp_path / name, settings_for(name))
    with open(tmp_path / name / HISTORY_FILE) as handle:
        rows = list(csv.DictReader(handle))
    train = [float(r["train_loss"]) for r in rows]
    val = [float(r["val_loss"]) for r in rows]
    assert len(rows) == 8 and all(np.isfinite(train + val))
    assert train[-1] < 0.9 * train[0], train
    assert val[-1] < val[0], val
    assert summary["backbone"]["name"] == name
    backbone = load_backbone(tmp_path / name / BEST_BACKBONE_FILE)
    assert backbone.config.inputs == BACKBONES[name]["inputs"]
    assert backbone.config.causal == (BACKBONES[name]["objective"] == "ntp")
    payload = torch.load(tmp_path / name / BEST_BACKBONE_FILE, weights_only=False)
    assert payload["config"]["backbone_name"] == name and payload["config"]["objective"]["objective"] == BACKBONES[name]["objective"]


def test_the_paper_backbone_keeps_its_modules_and_initialisation():
    torch.manual_seed(3)
    paper = GPTBackbone(GPTConfig(vocab_size=K + 2, max_length=LENGTH, **TINY))
    names = {name for name, _ in paper.named_parameters()}
    assert not any(n.startswith(("special", "hidden_embedding")) for n in names)
    torch.manual_seed(3)
    with_mask = GPTBackbone(GPTConfig(vocab_size=K + 2, max_length=LENGTH, mask_embedding=True, **TINY))
    shared = {k: v for k, v in with_mask.state_dict().items() if k != "hidden_embedding"}
    assert all(torch.equal(shared[k], v) for k, v in paper.state_dict().items())  # the mask vector draws last


def _continuous_model(**overrides) -> GPTBackbone:
    torch.manual_seed(0)
    values = {"inputs": "continuous", "n_features": N_CANDIDATE_CHANNELS, **TINY, **overrides}
    config = GPTConfig(vocab_size=K + 2, max_length=LENGTH, **values)
    return GPTBackbone(config).eval()


def _batch(n_jets=6, seed=1):
    rng = np.random.default_rng(seed)
    n = rng.integers(3, LENGTH - 1, n_jets)
    tokens = np.zeros((n_jets, LENGTH), dtype=np.int64)
    features = np.zeros((n_jets, LENGTH, N_CANDIDATE_CHANNELS), dtype=np.float32)
    for i in range(n_jets):
        codes = rng.integers(1, K + 1, n[i])
        tokens[i, 1 : n[i] + 1] = codes
        tokens[i, n[i] + 1] = K + 1
        features[i, 1 : n[i] + 1] = candidate_channels(codes)[:, :N_CANDIDATE_CHANNELS]
    mask = np.arange(LENGTH)[None, :] < (n + 2)[:, None]
    return torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(features)


@pytest.mark.parametrize("inputs", ["tokens", "continuous"])
def test_a_hidden_candidates_own_input_never_reaches_any_prediction(inputs):
    """Masked particle modelling: change the input of every hidden candidate (its token or its
    features) and nothing the backbone outputs changes, at its position or anywhere; change a
    visible candidate and the hidden position's prediction does change."""
    tokens, mask, features = _batch()
    model = _continuous_model(causal=False, mask_embedding=True, positional="learned", inputs=inputs, n_features=N_CANDIDATE_CHANNELS if inputs == "continuous" else 0)
    hidden = hidden_candidates(tokens, mask, K + 2, 0.4, seed=0, split="train", step=0)
    assert hidden.any()
    x = features if inputs == "continuous" else tokens
    changed = x.clone()
    if inputs == "continuous":
        changed[hidden] = torch.randn(int(hidden.sum()), N_CANDIDATE_CHANNELS) * 5
    else:
        changed[hidden] = (changed[hidden] % K) + 1
    with torch.no_grad():
        a, b = model(x, mask, hidden=hidden), model(changed, mask, hidden=hidden)
    assert torch.equal(a[mask], b[mask])
    visible = mask & ~hidden & (tokens != 0) & (tokens != K + 1)
    jet = int(torch.nonzero(hidden.any(dim=1) & visible.any(dim=1))[0])
    position = int(torch.nonzero(visible[jet])[0])
    other = x.clone()
    other[jet, position] = other[jet, position] * 3 + 1 if inputs == "continuous" else (other[jet, position] % K) + 1
    with torch.no_grad():
        c = model(other, mask, hidden=hidden)
    assert not torch.allclose(a[jet][hidden[jet]], c[jet][hidden[jet]])


def test_hidden_candidates_are_real_candidates_drawn_from_seed_and_step():
    tokens, mask, _ = _batch(n_jets=200)
    hidden = hidden_candidates(tokens, mask, K + 2, 0.4, seed=5, split="train", step=7)
    candidates = mask & (tokens >= 1) & (tokens <= K)
    assert not (hidden & ~candidates).any()  # never the start, stop or padding
    assert 0.33 < hidden.sum() / candidates.sum() < 0.47
    assert torch.equal(hidden, hidden_candidates(tokens, mask, K + 2, 0.4, seed=5, split="train", step=7))
    assert not torch.equal(hidden, hidden_candidates(tokens, mask, K + 2, 0.4, seed=5, split="train", step=8))
    assert not torch.equal(hidden, hidden_candidates(tokens, mask, K + 2, 0.4, seed=5, split="val", step=7))


@pytest.mark.parametrize("n_jets", [200, 7])  # a full global batch, and an epoch's last, short one
def test_each_process_hides_its_rows_of_the_global_batch_as_one_process_would(n_jets):
    """Under DDP a process holds rows rank, rank + world_size, ... of the global batch: its hidden
    candidates are those rows of the single process's, so MPM does not depend on the number of
    processes."""
    tokens, mask, _ = _batch(n_jets=n_jets)
    alone = hidden_candidates(tokens, mask, K + 2, 0.4, seed=5, split="train", step=3)
    for world_size in (2, 3):
        for rank in range(world_size):
            share = slice(rank, None, world_size)
            ours = hidden_candidates(tokens[share], mask[share], K + 2, 0.4, seed=5, split="train", step=3, rank=rank, world_size=world_size)
            assert torch.equal(ours, alone[share]), (rank, world_size)


def test_a_continuous_backbone_ignores_padding_and_is_causal_for_ntp():
    tokens, mask, features = _batch()
    model = _continuous_model()
    other = features.clone()
    other[~mask] = 7.0
    with torch.no_grad():
        a, b = model(features, mask), model(other, mask)
    assert torch.equal(a[mask], b[mask])
    later = features.clone()
    later[:, 3] += 1.0
    with torch.no_grad():
        c = model(later, mask)
    assert torch.equal(a[:, :3], c[:, :3])
    with pytest.raises(ValueError, match="continuous backbone takes features"):
        model(tokens, mask)


def test_token_features_follow_the_token_order():
    channels = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) + 1
    mask = np.array([[True, False, True, False], [False, False, False, True]])
    out = token_features(channels, mask)
    assert out.shape == (2, 6, 3)
    assert np.array_equal(out[0, 1], channels[0, 0]) and np.array_equal(out[0, 2], channels[0, 2])
    assert np.array_equal(out[1, 1], channels[1, 3])
    assert not out[0, [0, 3, 4, 5]].any() and not out[1, [0, 2, 3, 4, 5]].any()
    assert np.array_equal(token_feature_array(np.zeros((2, 6 * len(TOKEN_FEATURE_NAMES)))).shape, (2, 6, len(TOKEN_FEATURE_NAMES)))


def test_batches_carry_features_only_when_asked(tmp_path):
    shard = tmp_path / "tokens.parquet"
    tokens, mask, features = write_feature_token_shard(shard, n_jets=64)
    plain = next(iter(TokenBatches([shard], "train", 16, LENGTH, seed=0).epoch(0)))
    with_features = next(iter(TokenBatches([shard], "train", 16, LENGTH, seed=0, features=True).epoch(0)))
    assert len(plain) == 2 and len(with_features) == 3
    assert torch.equal(plain[0], with_features[0])
    assert with_features[2].shape == (16, LENGTH, N_CANDIDATE_CHANNELS)
    assert torch.equal(with_features[2][..., 0] * K, with_features[0].float() * ((with_features[0] >= 1) & (with_features[0] <= K)))


def test_a_token_shard_without_features_names_the_fix(tmp_path):
    shard = tmp_path / "old.parquet"
    manifest = {"token_ids": {"vocabulary_size": K + 2}, "tokenizer": {"sha256": "x"}}
    write_shard(shard, {"split": np.zeros(4, np.int8), "tokens": np.zeros((4, 5), np.int32), "token_mask": np.ones((4, 5), bool)}, manifest)
    with pytest.raises(TaufmError, match="old.parquet: missing column.*token_features.*tokenize again"):
        TokenBatches([shard], "train", 2, 5, features=True)


def test_the_config_resolves_one_job_per_backbone():
    config = validate_config(
        {
            "pretrain": {
                "epochs": 3,
                "model": {"dim": 64, "n_heads": 4},
                "backbones": {"tokens-ntp": {"inputs": "tokens", "objective": "ntp"}, "continuous-mpm": {"inputs": "continuous", "objective": "mpm", "epochs": 2, "model": {"positional": "learned"}}},
            }
        }
    )
    paper = checked_settings("pretrain", pretrain_backbone_payload(config, "tokens-ntp"))
    mpm = checked_settings("pretrain", pretrain_backbone_payload(config, "continuous-mpm"))
    assert paper["epochs"] == 3 and paper["backbone"] == {"name": "tokens-ntp", "inputs": "tokens", "objective": "ntp", "mask_fraction": 0.4, "target": "tokens"}
    assert mpm["epochs"] == 2 and mpm["model"]["positional"] == "learned" and mpm["model"]["dim"] == 64
    assert mpm["backbone"]["objective"] == "mpm" and "backbones" not in mpm
    with pytest.raises(TaufmError, match="no backbone 'continuous-ntp'"):
        pretrain_backbone_payload(config, "continuous-ntp")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"bad_name!": {"inputs": "tokens", "objective": "ntp"}}, "pretrain.backbones"),
        ({"x": {"inputs": "pixels", "objective": "ntp"}}, "pretrain.backbones.x.inputs"),
        ({"x": {"inputs": "tokens", "objective": "ntp", "mask_fraction": 1.5}}, "pretrain.backbones.x.mask_fraction"),
        ({"x": {"inputs": "tokens"}}, "pretrain.backbones.x"),
    ],
)
def test_a_bad_backbone_entry_is_named(entry, message):
    with pytest.raises(TaufmError, match=message):
        validate_config({"pretrain": {"backbones": entry}})
