"""Fine-tuning from each backbone of pretrain.backbones, with or without the lifetime channels.

Strategy names ``<base>[-ablation][@<backbone>][+lifetime]`` parse to what they say; the model's
inputs change only when a strategy asks (token ids or the tokenizer channels for the backbone,
the lifetime channels past it into the head); a cell from a continuous masked-particle backbone
and ``+lifetime`` cells train end to end (the frozen cache computing the same thing); a
checkpoint, a pack or a token shard that does not fit the strategy is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from taufm.errors import TaufmError
from taufm.finetune.strategies import DEFAULT_BACKBONE, parse_strategy
from taufm.finetune.train import (
    BackboneCheckpoint,
    Cell,
    FinetuneSettings,
    build_model,
    head_channels,
    model_inputs,
    resolve_strategy,
    run_finetune,
    run_finetune_pack,
)
from taufm.ingest.shards import CANDIDATE_FEATURES, MASK_COLUMN, write_shard
from taufm.pretrain.train import BEST_BACKBONE_FILE, PretrainSettings, pretrain
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, TOKEN_FEATURE_NAMES, TOKEN_FEATURES_COLUMN, token_feature_array

K = 8  # codes 1..8, start 0, stop 9
LENGTH = 10
DIM = 16
N_LIFETIME = len(TOKEN_FEATURE_NAMES) - N_CANDIDATE_CHANNELS  # 4
SAMPLES = ("ZH_Htautau", "Z_Ztautau", "qq")
SETTINGS = FinetuneSettings(
    epochs=2,
    unfreeze_epoch=1,
    batch_size=32,
    head={"dim": 16, "n_heads": 2, "n_particle_blocks": 1, "n_class_blocks": 1},
    val_subset_jets=30,
    device="cpu",
)
BACKBONES = {
    "tokens-ntp": {"inputs": "tokens", "objective": "ntp"},
    "continuous-mpm": {"inputs": "continuous", "objective": "mpm", "mask_fraction": 0.4, "target": "tokens"},
}


def sample_columns(sample: str, n: int, seed: int, with_features: bool = True) -> dict[str, np.ndarray]:
    """The columns of a token shard that fine-tuning reads (and the candidate columns of an
    ingested one), with each token's features: tokenizer channels and lifetime channels at the
    candidate positions, zero at start, stop and padding."""
    rng = np.random.default_rng(seed)
    tau = sample != "qq"
    n_cand = rng.integers(1, LENGTH - 2, n)
    tokens = np.zeros((n, LENGTH), dtype=np.int32)
    features = np.zeros((n, LENGTH, len(TOKEN_FEATURE_NAMES)), dtype=np.float32)
    mask = np.arange(LENGTH)[None, :] < (n_cand + 2)[:, None]
    for i in range(n):
        codes = rng.integers(1, K + 1, n_cand[i])
        tokens[i, 1 : n_cand[i] + 1] = codes
        tokens[i, n_cand[i] + 1] = K + 1
        features[i, 1 : n_cand[i] + 1, 0] = codes / K
        features[i, 1 : n_cand[i] + 1, 1:N_CANDIDATE_CHANNELS] = rng.normal(0, 1, (n_cand[i], N_CANDIDATE_CHANNELS - 1))
        features[i, 1 : n_cand[i] + 1, N_CANDIDATE_CHANNELS:] = rng.normal(0.3 if tau else 0.0, 0.5, (n_cand[i], N_LIFETIME))
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
    if with_features:
        columns[TOKEN_FEATURES_COLUMN] = features.reshape(n, -1)
    for name in (*CANDIDATE_FEATURES, "d0", "d0err", "dz", "dzerr"):
        columns[f"cand_{name}"] = np.where(cand_mask, rng.uniform(0.1, 1.0, cand_mask.shape), 0.0).astype(np.float32)
    return columns


MANIFEST = {"token_ids": {"start": 0, "codes": [1, K], "stop": K + 1, "padding": 0, "vocabulary_size": K + 2}, "tokenizer": {"sha256": "synthetic"}}


def write_shards(directory, n: int = 320, with_features: bool = True) -> dict[str, list]:
    directory.mkdir(parents=True, exist_ok=True)
    shards = {}
    for i, sample in enumerate(SAMPLES):
        path = directory / f"{sample}_000.parquet"
        write_shard(path, sample_columns(sample, n, seed=i, with_features=with_features), MANIFEST)
        shards[sample] = [path]
    return shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Token shards with token_features and two tiny pretrained backbones (one epoch each)."""
    d = tmp_path_factory.mktemp("finetune_backbones")
    shards = write_shards(d / "tokens")
    files = [p for v in shards.values() for p in v]
    backbones = {}
    for name, kind in BACKBONES.items():
        settings = PretrainSettings.from_mapping(
            {
                "model": {"dim": DIM, "n_heads": 2, "n_blocks": 2, "ffn_multiplier": 2, "positional": "learned" if kind["objective"] == "mpm" else "none"},
                "max_length": LENGTH,
                "batch_size": 64,
                "epochs": 1,
                "warmup_steps": 2,
                "device": "cpu",
                "backbone": {"name": name, **kind},
            }
        )
        pretrain(files, d / name, settings)
        backbones[name] = d / name / BEST_BACKBONE_FILE
    return d, shards, backbones


# ---- 1. strategy names ----


def test_strategy_names_carry_backbone_and_input_set():
    s = parse_strategy("fixed@continuous-mpm", 5)
    assert (s.base, s.backbone, s.inputs, s.n_blocks, s.unfreeze_epoch, s.family) == ("fixed", "continuous-mpm", "paper", None, None, "fixed")
    assert s.uses_backbone and s.pretrained

    s = parse_strategy("finetune-blocks1@continuous-ntp+lifetime", 5)
    assert (s.base, s.backbone, s.inputs, s.n_blocks, s.unfreeze_epoch, s.family) == ("finetune", "continuous-ntp", "paper+lifetime", 1, 5, "finetune-blocks1")

    s = parse_strategy("part+lifetime", 5, backbones=["continuous-mpm"])  # the ParT needs no backbone of the list
    assert (s.base, s.backbone, s.inputs, s.n_blocks, s.unfreeze_epoch, s.family) == ("part", None, "paper+lifetime", None, 0, "part")
    assert not s.uses_backbone and head_channels(s) == 0

    s = parse_strategy("finetune", 3)
    assert (s.base, s.backbone, s.inputs, s.n_blocks, s.unfreeze_epoch, s.family) == ("finetune", DEFAULT_BACKBONE, "paper", None, 3, "finetune")
    assert DEFAULT_BACKBONE == "tokens-ntp"
    assert parse_strategy("finetune", 3, default_inputs="paper+lifetime").inputs == "paper+lifetime"  # the configured input set
    assert parse_strategy("finetune-unfreeze2@tokens-ntp", 3).unfreeze_epoch == 2
    assert head_channels(parse_strategy("finetune+lifetime", 3)) == 4 and head_channels(parse_strategy("finetune", 3)) == 0
    assert resolve_strategy("fixed@continuous-mpm", dataclasses.replace(SETTINGS, inputs="paper+lifetime")).inputs == "paper+lifetime"


def test_a_strategy_naming_an_unconfigured_backbone_is_refused():
    configured = ["tokens-ntp", "continuous-mpm"]
    assert parse_strategy("fixed@continuous-mpm", 5, backbones=configured).backbone == "continuous-mpm"
    with pytest.raises(TaufmError) as err:
        parse_strategy("finetune@continuous-ntp+lifetime", 5, backbones=configured)
    message = str(err.value)
    assert "'finetune@continuous-ntp+lifetime'" in message and "@continuous-ntp" in message
    assert "tokens-ntp, continuous-mpm" in message, message

    with pytest.raises(TaufmError) as err:
        parse_strategy("finetune", 5, backbones=["continuous-mpm"])
    message = str(err.value)
    assert "'finetune'" in message and "the default tokens-ntp" in message and "continuous-mpm" in message, message
    with pytest.raises(TaufmError, match="pretrain.backbones has: none"):
        parse_strategy("fixed", 5, backbones=[])


@pytest.mark.parametrize(
    "name, message",
    [
        ("part@x", r"strategy 'part@x': the ParT baseline starts from no backbone \(drop @x\)"),
        ("fixed@Bad_Name", r"unknown strategy 'fixed@Bad_Name'; a strategy is .*\[@<backbone>\]\[\+lifetime\]"),
        ("finetune+d0", r"unknown strategy 'finetune\+d0'; a strategy is "),
        ("finetune@continuous-mpm+lifetime+lifetime", r"unknown strategy"),
        ("finetune+lifetime@continuous-mpm", r"unknown strategy"),  # the backbone comes before the input set
        ("part-blocks1+lifetime", r"ParT baseline has no backbone to unfreeze or truncate"),
    ],
)
def test_malformed_strategy_names_are_rejected_clearly(name, message):
    with pytest.raises(TaufmError, match=message):
        parse_strategy(name, 5)


# ---- 2. the model's inputs and the lifetime channels ----


def _data(n: int = 12, seed: int = 4) -> dict[str, np.ndarray]:
    columns = sample_columns("Z_Ztautau", n, seed)
    return {k: columns[k] for k in ("tokens", "token_mask", TOKEN_FEATURES_COLUMN)}


def _moved(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same jets with other lifetime channels at every real candidate (tokens and
    tokenizer channels unchanged)."""
    features = token_feature_array(data[TOKEN_FEATURES_COLUMN]).copy()
    candidates = features[..., 0] != 0
    features[..., N_CANDIDATE_CHANNELS:] = np.where(candidates[..., None], features[..., N_CANDIDATE_CHANNELS:] * -2 + 1.5, 0.0)
    return {**data, TOKEN_FEATURES_COLUMN: features.reshape(len(features), -1)}


def test_lifetime_channels_enter_the_inputs_only_when_asked():
    data = _data()
    features = token_feature_array(data[TOKEN_FEATURES_COLUMN])
    moved = _moved(data)
    assert not np.array_equal(token_feature_array(moved[TOKEN_FEATURES_COLUMN])[..., N_CANDIDATE_CHANNELS:], features[..., N_CANDIDATE_CHANNELS:])

    # Tokens backbone: the token ids exactly as before; +lifetime: float, ids in channel 0.
    plain, mask = model_inputs(parse_strategy("finetune", 1), data, "tokens")
    assert plain.dtype == np.int64 and plain.shape == (12, LENGTH)
    np.testing.assert_array_equal(plain, data["tokens"])
    np.testing.assert_array_equal(mask, data["token_mask"].astype(bool))
    lifetime, mask2 = model_inputs(parse_strategy("finetune+lifetime", 1), data, "tokens")
    assert lifetime.dtype == np.float32 and lifetime.shape == (12, LENGTH, 1 + N_LIFETIME)
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_array_equal(lifetime[..., 0], data["tokens"])
    np.testing.assert_array_equal(lifetime[..., 1:], features[..., N_CANDIDATE_CHANNELS:])
    assert lifetime[..., 1:].any()

    # Continuous backbone: the tokenizer channels (10), then the lifetime ones (14).
    continuous, _ = model_inputs(parse_strategy("fixed@continuous-mpm", 1), data, "continuous")
    assert continuous.dtype == np.float32 and continuous.shape == (12, LENGTH, 10)
    np.testing.assert_array_equal(continuous, features[..., :N_CANDIDATE_CHANNELS])
    continuous_lifetime, _ = model_inputs(parse_strategy("fixed@continuous-mpm+lifetime", 1), data, "continuous")
    assert continuous_lifetime.shape == (12, LENGTH, 14)
    np.testing.assert_array_equal(continuous_lifetime, features)

    # Other lifetime channels change the +lifetime inputs, and only their lifetime channels.
    np.testing.assert_array_equal(model_inputs(parse_strategy("finetune", 1), moved, "tokens")[0], plain)
    np.testing.assert_array_equal(model_inputs(parse_strategy("fixed@continuous-mpm", 1), moved, "continuous")[0], continuous)
    moved_lifetime = model_inputs(parse_strategy("finetune+lifetime", 1), moved, "tokens")[0]
    np.testing.assert_array_equal(moved_lifetime[..., 0], lifetime[..., 0])
    assert not np.allclose(moved_lifetime[..., 1:], lifetime[..., 1:])
    moved_continuous = model_inputs(parse_strategy("fixed@continuous-mpm+lifetime", 1), moved, "continuous")[0]
    np.testing.assert_array_equal(moved_continuous[..., :N_CANDIDATE_CHANNELS], continuous)
    assert not np.allclose(moved_continuous[..., N_CANDIDATE_CHANNELS:], continuous_lifetime[..., N_CANDIDATE_CHANNELS:])

    # Jets read without the token features: a strategy that needs them says which column.
    bare = {k: v for k, v in data.items() if k != TOKEN_FEATURES_COLUMN}
    np.testing.assert_array_equal(model_inputs(parse_strategy("finetune", 1), bare, "tokens")[0], plain)
    for name, kind in (("fixed@continuous-mpm", "continuous"), ("finetune+lifetime", "tokens")):
        with pytest.raises(TaufmError, match=f"strategy {re.escape(repr(name))} needs the token shards' token_features column"):
            model_inputs(parse_strategy(name, 1), bare, kind)


def _outputs(model, x, mask):
    model.eval()
    with torch.no_grad():
        return model.backbone_outputs(torch.from_numpy(x), torch.from_numpy(mask)), model(torch.from_numpy(x), torch.from_numpy(mask))


@pytest.mark.parametrize("backbone_name, plain_name", [("tokens-ntp", "finetune"), ("continuous-mpm", "finetune@continuous-mpm")])
def test_the_lifetime_channels_bypass_the_backbone_into_the_head(world, backbone_name, plain_name):
    _, _, backbones = world
    kind = BACKBONES[backbone_name]["inputs"]
    data = _data()
    moved = _moved(data)
    plain_strategy, lifetime_strategy = parse_strategy(plain_name, 1), parse_strategy(plain_name + "+lifetime", 1)
    plain = build_model("tau_id", plain_strategy, SETTINGS, backbones[backbone_name], seed=0)
    lifetime = build_model("tau_id", lifetime_strategy, SETTINGS, backbones[backbone_name], seed=0)
    assert plain.head.input_projection.in_features == DIM
    assert lifetime.head.input_projection.in_features == DIM + N_LIFETIME
    assert lifetime.n_head_channels == N_LIFETIME and plain.n_head_channels == 0

    x_plain, mask = model_inputs(plain_strategy, data, kind)
    x_lifetime, _ = model_inputs(lifetime_strategy, data, kind)
    embedded_plain, out_plain = _outputs(plain, x_plain, mask)
    embedded_lifetime, out_lifetime = _outputs(lifetime, x_lifetime, mask)
    # The backbone's part is the plain backbone's, the lifetime channels appended as they are.
    assert embedded_plain.shape == (12, LENGTH, DIM) and embedded_lifetime.shape == (12, LENGTH, DIM + N_LIFETIME)
    torch.testing.assert_close(embedded_lifetime[..., :DIM], embedded_plain, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(embedded_lifetime[..., DIM:].numpy(), token_feature_array(data[TOKEN_FEATURES_COLUMN])[..., N_CANDIDATE_CHANNELS:])

    # Other lifetime channels: the +lifetime model's output moves, the plain one's cannot.
    x_plain_moved, _ = model_inputs(plain_strategy, moved, kind)
    x_lifetime_moved, _ = model_inputs(lifetime_strategy, moved, kind)
    embedded_moved, out_lifetime_moved = _outputs(lifetime, x_lifetime_moved, mask)
    torch.testing.assert_close(embedded_moved[..., :DIM], embedded_lifetime[..., :DIM], rtol=0, atol=0)
    assert (out_lifetime_moved - out_lifetime).abs().max() > 1e-5, "the head reads the lifetime channels"
    assert torch.equal(_outputs(plain, x_plain_moved, mask)[1], out_plain)

    # And they reach the head's input layer in training.
    lifetime.train()
    lifetime(torch.from_numpy(x_lifetime), torch.from_numpy(mask)).sum().backward()
    assert lifetime.head.input_projection.weight.grad[:, DIM:].abs().sum() > 0


# ---- 3. end to end ----


def _summary(path) -> dict:
    return json.loads((path / "summary.json").read_text())


@pytest.mark.parametrize(
    "strategy, backbone_name, inputs",
    [
        ("fixed@continuous-mpm", "continuous-mpm", "paper"),
        ("finetune@continuous-mpm+lifetime", "continuous-mpm", "paper+lifetime"),
        ("finetune+lifetime", "tokens-ntp", "paper+lifetime"),
    ],
)
def test_a_cell_trains_from_its_backbone_with_its_inputs(world, tmp_path, strategy, backbone_name, inputs):
    _, shards, backbones = world
    returned = run_finetune("tau_id", strategy, 120, 0, shards, tmp_path, SETTINGS, backbones[backbone_name])
    summary = _summary(tmp_path)
    assert summary["strategy"] == strategy and summary["backbone_name"] == backbone_name and summary["inputs"] == inputs
    assert returned["backbone_name"] == backbone_name and returned["inputs"] == inputs
    assert summary["backbone"]["path"] == str(backbones[backbone_name])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["backbone_name"] == backbone_name and config["inputs"] == inputs
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 1 + SETTINGS.epochs
    assert np.isfinite(summary["best_val_loss"])
    if strategy.startswith("fixed"):
        assert summary["frozen_backbone_cache"]["train_jets"] == 120 and summary["frozen_backbone_cache"]["val_jets"] == 30
    predictions = pq.read_table(tmp_path / "predictions.parquet").to_pydict()
    assert set(predictions["sample"]) == set(SAMPLES)
    scores = np.asarray(predictions["score"], dtype=np.float64)
    assert scores.size > 0 and np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert weights["head.input_projection.weight"].shape == (16, DIM + (N_LIFETIME if inputs == "paper+lifetime" else 0))
    first = "backbone.embedding.weight" if BACKBONES[backbone_name]["inputs"] == "tokens" else "backbone.embedding.0.weight"
    assert weights[first].shape == ((K + 2, DIM) if BACKBONES[backbone_name]["inputs"] == "tokens" else (DIM, N_CANDIDATE_CHANNELS))


def test_the_frozen_cache_trains_the_same_continuous_lifetime_cell(world, tmp_path):
    _, shards, backbones = world
    runs = {}
    for cached in (True, False):
        settings = dataclasses.replace(SETTINGS, cache_frozen_backbone=cached)
        runs[cached] = run_finetune("tau_id", "fixed@continuous-mpm+lifetime", 120, 0, shards, tmp_path / str(cached), settings, backbones["continuous-mpm"])
    cached, uncached = runs[True], runs[False]
    assert cached["frozen_backbone_cache"]["train_jets"] == 120 and cached["frozen_backbone_cache"]["val_jets"] == 30
    # The cache holds the backbone's outputs and the 4 lifetime channels per position.
    assert cached["frozen_backbone_cache"]["megabytes"] == pytest.approx((120 + 30) * LENGTH * (DIM + N_LIFETIME) * 4 / 2**20)
    assert uncached["frozen_backbone_cache"] == {"train_jets": 0, "val_jets": 0, "megabytes": 0.0}
    assert cached["best_epoch"] == uncached["best_epoch"]
    assert cached["best_val_loss"] == pytest.approx(uncached["best_val_loss"], rel=1e-5)
    assert cached["best_val_loss_subset"] == pytest.approx(uncached["best_val_loss_subset"], rel=1e-5)
    a = pq.read_table(tmp_path / "True" / "predictions.parquet").to_pydict()["score"]
    b = pq.read_table(tmp_path / "False" / "predictions.parquet").to_pydict()["score"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_pack_mixes_input_sets_of_one_backbone(world, tmp_path):
    _, shards, backbones = world
    cells = [Cell("fixed", 60, 0, tmp_path / "fixed"), Cell("fixed+lifetime", 60, 0, tmp_path / "fixed+lifetime")]
    summaries = run_finetune_pack("tau_id", cells, shards, SETTINGS, backbones["tokens-ntp"])
    assert [(s["strategy"], s["backbone_name"], s["inputs"]) for s in summaries] == [("fixed", "tokens-ntp", "paper"), ("fixed+lifetime", "tokens-ntp", "paper+lifetime")]
    widths = [torch.load(c.output_dir / "model.pt", weights_only=True)["model"]["head.input_projection.weight"].shape[1] for c in cells]
    assert widths == [DIM, DIM + N_LIFETIME]


# ---- 4. what does not fit is named ----


def test_a_checkpoint_of_another_backbone_is_refused(world, tmp_path):
    _, shards, backbones = world
    assert BackboneCheckpoint.read(backbones["tokens-ntp"]).name == "tokens-ntp"
    assert BackboneCheckpoint.read(backbones["continuous-mpm"]).name == "continuous-mpm"
    with pytest.raises(TaufmError) as err:
        run_finetune("tau_id", "fixed@continuous-mpm", 50, 0, shards, tmp_path / "run", SETTINGS, backbones["tokens-ntp"])
    message = str(err.value)
    assert "'continuous-mpm'" in message and "'tokens-ntp'" in message and str(backbones["tokens-ntp"]) in message, message
    with pytest.raises(TaufmError, match=r"starts from backbone 'tokens-ntp', but .*continuous-mpm.* holds backbone 'continuous-mpm'"):
        run_finetune("tau_id", "finetune+lifetime", 50, 0, shards, tmp_path / "run", SETTINGS, backbones["continuous-mpm"])
    assert not (tmp_path / "run").exists(), "refused before anything is written"


def test_a_pack_of_two_backbones_is_refused(world, tmp_path):
    _, shards, backbones = world
    cells = [Cell("fixed@continuous-mpm", 50, 0, tmp_path / "a"), Cell("fixed", 50, 0, tmp_path / "b")]
    with pytest.raises(TaufmError, match=r"tau_id: the cells of a pack start from one backbone \(fixed@continuous-mpm, fixed\)"):
        run_finetune_pack("tau_id", cells, shards, SETTINGS, backbones["continuous-mpm"])
    cells = [Cell("fixed@continuous-mpm+lifetime", 50, 0, tmp_path / "a"), Cell("finetune@tokens-ntp+lifetime", 50, 0, tmp_path / "b")]
    with pytest.raises(TaufmError, match="start from one backbone"):
        run_finetune_pack("tau_id", cells, shards, SETTINGS, backbones["tokens-ntp"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_token_shards_without_token_features_are_named(world, tmp_path):
    """Shards tokenized before token_features existed: fine for the paper's tokens backbone,
    a clear error for a continuous backbone or +lifetime."""
    _, _, backbones = world
    old = write_shards(tmp_path / "old", n=160, with_features=False)
    for strategy, backbone_name in (("fixed@continuous-mpm", "continuous-mpm"), ("finetune+lifetime", "tokens-ntp")):
        with pytest.raises(TaufmError) as err:
            run_finetune("tau_id", strategy, 40, 0, old, tmp_path / strategy, SETTINGS, backbones[backbone_name])
        message = str(err.value)
        assert "token_features" in message and "old" in message and ".parquet" in message, message
        assert not (tmp_path / strategy).exists()
    summary = run_finetune("tau_id", "fixed", 40, 0, old, tmp_path / "fixed", dataclasses.replace(SETTINGS, epochs=1), backbones["tokens-ntp"])
    assert summary["backbone_name"] == "tokens-ntp" and np.isfinite(summary["best_val_loss"])


def test_the_embedding_probes_read_a_continuous_backbone(world, tmp_path):
    """Fig. 6's probes for a continuous-input backbone: its three stages embed the token
    features (not the tokens) of the same test jets, and the probe rows carry its name."""
    from taufm.evaluate.embeddings import embed_jets, load_backbones, probe_decay_modes

    _, shards, backbones = world
    run_finetune("decay_mode", "finetune@continuous-mpm", 100, 0, shards, tmp_path / "dm", dataclasses.replace(SETTINGS, epochs=1), backbones["continuous-mpm"])
    stages = load_backbones(backbones["continuous-mpm"], tmp_path / "dm" / "model.pt", seed=0)
    assert {b.config.inputs for b in stages.values()} == {"continuous"}
    test = embed_jets(shards["Z_Ztautau"], stages, max_jets=50, seed=0)
    assert test["embedding_pretrained"].shape == (len(test["decay_mode"]), DIM)
    assert not np.allclose(test["embedding_pretrained"], test["embedding_untrained"])
    rows = probe_decay_modes(shards["Z_Ztautau"], stages, test, train_jets=100, neighbours=5, seed=0, backbone="continuous-mpm")
    assert len(rows) == 6 and {r["backbone"] for r in rows} == {"continuous-mpm"}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
