"""The ParT baseline as the real Particle Transformer: pairwise features (numbers), their
embedding as attention biases, masking, permutation invariance, learning, FLOP counting and the
model cost in the fine-tuning summary."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import taufm.models.part as part_module
from taufm.errors import TaufmError
from taufm.finetune.train import FinetuneSettings, run_finetune
from taufm.models.heads import Attention, HeadConfig, TaskHead
from taufm.models.masking import attention_mask
from taufm.models.part import PAIR_EPSILON, PART_PREPROCESSING, ParTConfig, ParticleTransformer, candidate_kinematics, pair_features
from taufm.pretrain.train import PretrainSettings, pretrain
from taufm.train.runtime import forward_flops_per_jet
from tests.test_finetune import LENGTH, SAMPLES, write_sample

HEAD = HeadConfig(dim=32, n_heads=4, n_particle_blocks=2, n_class_blocks=1, ffn_multiplier=2, dropout=0.1)
N_OUTPUTS = 3


def make_part(pair_features: bool = True, seed: int = 0, head: HeadConfig = HEAD, **kwargs) -> ParticleTransformer:
    torch.manual_seed(seed)
    return ParticleTransformer(ParTConfig(embed_dim=24, head=head, pair_features=pair_features, pair_embed_dims=(16, 16), **kwargs), N_OUTPUTS)


def raw_jets(lengths: list[int], max_length: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (jets, max_length, 10 SPEC §4 features) of plausible tau-like jets, and the mask."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    mask = np.arange(max_length)[None, :] < np.asarray(lengths)[:, None]
    pid = rng.integers(0, 5, (n, max_length))
    features = np.zeros((n, max_length, 10), dtype=np.float32)
    features[..., 0] = rng.exponential(5.0, (n, max_length)) + 0.5  # pT
    features[..., 1] = np.where(pid == 3, 0.1396, 0.0)  # mass: pions, else massless
    features[..., 2] = rng.normal(0, 0.15, (n, max_length))  # Δη
    features[..., 3] = rng.normal(0, 0.15, (n, max_length))  # Δφ
    features[..., 4] = np.where(pid == 3, rng.choice([-1.0, 1.0], (n, max_length)), 0.0)  # charge
    features[..., 5:] = np.eye(5, dtype=np.float32)[pid]
    return np.where(mask[..., None], features, 0.0).astype(np.float32), mask


def part_inputs(lengths: list[int], max_length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """What fine-tuning feeds the ParT: the preprocessed features and the mask."""
    prepared = PART_PREPROCESSING.model_inputs(*raw_jets(lengths, max_length, seed))
    return torch.from_numpy(prepared["inputs"]), torch.from_numpy(prepared["mask"])


LENGTHS = [7, 1, 12, 0, 4]


# --- the pair features, by hand ------------------------------------------------------------------


def _p4(pt, eta, phi, mass):
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return math.sqrt(px * px + py * py + pz * pz + mass * mass), px, py, pz


def test_pair_features_of_a_two_candidate_jet_are_the_formulas():
    # A 10 GeV charged pion and a 5 GeV photon on either side of φ = ±π (Δφ wraps to -0.0832);
    # a third, padded slot holds garbage.
    cands = [(10.0, 0.1, 3.1, 0.13957), (5.0, -0.2, -3.1, 0.0)]
    energies = [_p4(*c)[0] for c in cands]
    kinematics = [[[10.0, 5.0, 1e9]], [[0.1, -0.2, float("nan")]], [[3.1, -3.1, float("inf")]], [[*energies, -1.0]]]
    mask = torch.tensor([[True, True, False]])
    out = pair_features(*(torch.tensor(k, dtype=torch.float64) for k in kinematics), mask)
    assert out.shape == (1, 3, 3, 4) and out.dtype == torch.float64
    out32 = pair_features(*(torch.tensor(k) for k in kinematics), mask)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32[0, :2, 0, :], out[0, :2, 0, :].float(), rtol=1e-4, atol=1e-4)

    delta_phi = 3.1 - (-3.1) - 2 * math.pi
    delta_r = math.hypot(0.1 - (-0.2), delta_phi)
    assert delta_r == pytest.approx(0.311319, abs=1e-6)
    kt = min(10.0, 5.0) * delta_r
    z = 5.0 / 15.0
    (e1, x1, y1, z1), (e2, x2, y2, z2) = (_p4(*c) for c in cands)
    m2 = (e1 + e2) ** 2 - (x1 + x2) ** 2 - (y1 + y2) ** 2 - (z1 + z2) ** 2
    # Another way to the same mass: m² = m1² + m2² + 2 (E1 E2 - p1·p2).
    assert m2 == pytest.approx(0.13957**2 + 2 * (e1 * e2 - x1 * x2 - y1 * y2 - z1 * z2), rel=1e-9)
    assert m2 == pytest.approx(4.9090, abs=1e-3)
    expected = [math.log(delta_r), math.log(kt), math.log(z), math.log(m2)]
    assert expected[2] == pytest.approx(-1.098612, abs=1e-6)
    for a, b in ((0, 1), (1, 0)):  # symmetric in the pair
        np.testing.assert_allclose(out[0, a, b].numpy(), expected, rtol=1e-9)
    # A candidate with itself: ΔR = kT = 0 (clamped), z = 1/2, m² = (2 m)² (clamped when massless).
    ln_eps = math.log(PAIR_EPSILON)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [ln_eps, ln_eps, math.log(0.5), math.log(4 * 0.13957**2)], rtol=1e-9)
    np.testing.assert_allclose(out[0, 1, 1].numpy(), [ln_eps, ln_eps, math.log(0.5), ln_eps], rtol=1e-9)
    # Pairs with the padded slot are zeros, whatever the slot held.
    assert (out[0, 2] == 0).all() and (out[0, :, 2] == 0).all()


def test_the_model_reads_the_kinematics_back_from_its_inputs():
    features, mask = raw_jets([5], 5)
    inputs = torch.from_numpy(PART_PREPROCESSING.model_inputs(features, mask)["inputs"])
    pt, eta, phi, energy = (t[0].numpy() for t in candidate_kinematics(inputs))
    np.testing.assert_allclose(pt, features[0, :, 0], rtol=1e-5)
    np.testing.assert_allclose(eta, features[0, :, 2], atol=1e-6)
    np.testing.assert_allclose(phi, features[0, :, 3], atol=1e-6)
    expected_energy = np.sqrt((features[0, :, 0] * np.cosh(features[0, :, 2])) ** 2 + features[0, :, 1] ** 2)
    np.testing.assert_allclose(energy, expected_energy, rtol=1e-5)


# --- masking, invariance, the biases reaching the attention -------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_padded_candidates_change_nothing(training):
    """Garbage (huge, NaN) in padded slots leaves real jets' outputs as they are, also in
    training mode: the pair BatchNorms see real pairs only."""
    model = make_part().train(training)
    x, mask = part_inputs(LENGTHS, 12)
    noisy = x.clone()
    noisy[~mask] = 1e6 * torch.randn(int((~mask).sum()), x.shape[-1])
    runs = []
    for inputs in (x, noisy, noisy.masked_fill(~mask[..., None], float("nan"))):
        torch.manual_seed(3)  # the same dropout masks
        runs.append(model(inputs, mask))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    if not training:
        longer = torch.cat([x, 1e3 * torch.randn(len(LENGTHS), 5, x.shape[-1])], dim=1)
        longer_mask = torch.cat([mask, torch.zeros(len(LENGTHS), 5, dtype=torch.bool)], dim=1)
        with torch.no_grad():
            torch.testing.assert_close(model(x, mask), model(longer, longer_mask), rtol=0, atol=1e-5)


def test_outputs_are_permutation_invariant_over_real_candidates():
    model = make_part().eval()
    x, mask = part_inputs(LENGTHS, 12)
    permuted = x.clone()
    g = torch.Generator().manual_seed(5)
    for i, n in enumerate(LENGTHS):
        permuted[i, :n] = x[i, torch.randperm(n, generator=g)]
    order = torch.randperm(12, generator=g)  # real candidates scattered among the padding
    with torch.no_grad():
        reference = model(x, mask)
        torch.testing.assert_close(reference, model(permuted, mask), rtol=0, atol=1e-5)
        torch.testing.assert_close(reference, model(x[:, order], mask[:, order]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pair_features", [True, False])
def test_which_candidates_are_close_reaches_the_attention(pair_features, monkeypatch):
    """The same per-candidate inputs, but the kinematics of the pair features swapped between two
    candidates (so other candidates are close to each other): the output changes with the pair
    features on, and cannot without them."""
    model = make_part(pair_features=pair_features).eval()
    x, mask = part_inputs([6], 6)
    with torch.no_grad():
        reference = model(x, mask)
        real = part_module.candidate_kinematics

        def swapped(features):
            return tuple(t[:, [0, 4, 2, 3, 1, 5]] for t in real(features))

        monkeypatch.setattr(part_module, "candidate_kinematics", swapped)
        changed = model(x, mask)
    if pair_features:
        # Small at initialisation (the head's value projections start at std 0.02), but far
        # above rounding (~1e-8 here).
        assert (reference - changed).abs().max() > 1e-6
    else:
        assert torch.equal(reference, changed)


def test_attention_bias_is_added_where_allowed_only():
    torch.manual_seed(0)
    attention = Attention(16, 2, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    allowed = attention_mask(mask)
    plain = attention(x, x, allowed)
    torch.testing.assert_close(attention(x, x, allowed, torch.zeros(2, 2, 5, 5)), plain, rtol=0, atol=1e-6)
    bias = torch.randn(2, 2, 5, 5)
    with_bias = attention(x, x, allowed, bias)
    assert (with_bias - plain).abs().max() > 1e-3
    junk = bias.clone().masked_fill(~allowed.expand_as(bias), 1e9)  # huge where not allowed: still excluded
    torch.testing.assert_close(attention(x, x, allowed, junk), with_bias, rtol=0, atol=1e-6)


def test_task_head_without_a_bias_is_unchanged_and_checks_the_bias_shape():
    torch.manual_seed(0)
    head = TaskHead(8, 2, HEAD).eval()
    x, mask = torch.randn(3, 6, 8), torch.arange(6)[None, :] < torch.tensor([6, 2, 0])[:, None]
    with torch.no_grad():
        assert torch.equal(head(x, mask), head(x, mask, attention_bias=None))
        torch.testing.assert_close(head(x, mask, attention_bias=torch.zeros(3, HEAD.n_heads, 6, 6)), head(x, mask), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="attention_bias"):
        head(x, mask, attention_bias=torch.zeros(3, 1, 6, 6))


class _EarlierParT(nn.Module):
    """The baseline as it was before the pair features: embedding MLP -> TaskHead."""

    def __init__(self, config: ParTConfig, n_outputs: int) -> None:
        super().__init__()
        self.embedding = nn.Sequential(nn.LayerNorm(config.n_features), nn.Linear(config.n_features, config.embed_dim), nn.GELU(), nn.Linear(config.embed_dim, config.embed_dim))
        self.head = TaskHead(config.embed_dim, n_outputs, config.head)

    def forward(self, features, mask):
        return self.head(self.embedding(features.masked_fill(~mask[..., None], 0.0)), mask)


def test_without_pair_features_it_is_the_earlier_model():
    model = make_part(pair_features=False).eval()
    torch.manual_seed(0)
    earlier = _EarlierParT(model.config, N_OUTPUTS).eval()
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in earlier.named_parameters()]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in earlier.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), earlier.state_dict().values(), strict=True))
    x, mask = part_inputs(LENGTHS, 12)
    with torch.no_grad():
        assert torch.equal(model(x, mask), earlier(x, mask))
    # With them: the same embedding and head (same initial weights), plus the pair embedding.
    with_pairs = make_part(pair_features=True)
    extra = [n for n, _ in with_pairs.named_parameters() if n not in names]
    assert extra and all(n.startswith("pair_embedding.") for n in extra)
    assert all(torch.equal(with_pairs.state_dict()[k], v) for k, v in model.state_dict().items())


def test_config_round_trip_and_clear_errors():
    config = ParTConfig(pair_features=False, pair_embed_dims=(8, 4))
    d = config.to_dict()
    assert d["pair_embed_dims"] == [8, 4] and d["pair_features"] is False
    assert ParTConfig.from_dict(json.loads(json.dumps(d))) == config
    assert ParTConfig.from_dict({"pair_embed_dims": [32]}).pair_embed_dims == (32,)
    assert ParTConfig().pair_features is True and ParTConfig().pair_embed_dims == (64, 64, 64)
    with pytest.raises(TaufmError, match="pair_embed_dims.*0"):
        ParTConfig.from_dict({"pair_embed_dims": [64, 0]})
    with pytest.raises(TaufmError, match="pair_features.*'yes'"):
        ParTConfig.from_dict({"pair_features": "yes"})
    with pytest.raises(TaufmError, match="n_features is 3"):
        ParTConfig(n_features=3)
    ParTConfig(n_features=3, pair_features=False)  # the plain transformer needs no kinematics


# --- learning and cost --------------------------------------------------------------------------


def test_a_few_training_steps_reduce_the_loss():
    """Toy task: does the jet (2 to 8 candidates) hold at least two photons?"""
    rng = np.random.default_rng(8)
    features, mask = raw_jets(list(rng.integers(2, 9, 256)), 8, seed=7)
    y = torch.from_numpy(((features[..., 7] * mask).sum(axis=1) >= 2).astype(np.float32))
    prepared = PART_PREPROCESSING.model_inputs(features, mask)
    x, m = torch.from_numpy(prepared["inputs"]), torch.from_numpy(prepared["mask"])
    torch.manual_seed(0)
    head = HeadConfig(dim=16, n_heads=2, n_particle_blocks=1, n_class_blocks=1, ffn_multiplier=2, dropout=0.0)
    model = ParticleTransformer(ParTConfig(embed_dim=16, head=head, pair_embed_dims=(16,)), 1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x, m)[:, 0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses


def test_forward_flops_per_jet_counts_products_and_attention():
    linear = nn.Linear(5, 3)
    assert forward_flops_per_jet(linear, torch.randn(4, 5)) == 2 * 5 * 3
    torch.manual_seed(0)
    attention = Attention(16, 2, dropout=0.0)
    x, mask = torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool)
    projections, products = 4 * 2 * 7 * 16 * 16, 2 * 2 * 7 * 7 * 16
    assert forward_flops_per_jet(attention, x, x, attention_mask(mask)) == projections + products
    model = make_part().train()
    flops = {}
    for length in (8, 16):
        flops[length] = forward_flops_per_jet(model, *part_inputs([length] * 4, length))
    assert 0 < flops[8] < flops[16]
    assert model.training and all(m.training for m in model.modules()), "modes restored"
    with pytest.raises(TaufmError, match="non-empty"):
        forward_flops_per_jet(model, torch.zeros(0, 8, 10), torch.zeros(0, 8, dtype=torch.bool))


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("part_finetune")
    shards = {}
    for i, sample in enumerate(SAMPLES):
        shards[sample] = [d / f"{sample}_000.parquet"]
        write_sample(shards[sample][0], sample, 300, seed=i)
    return d, shards


SMALL = FinetuneSettings(epochs=1, batch_size=64, head={"dim": 16, "n_heads": 2}, part={"embed_dim": 16, "head": {"dim": 16, "n_heads": 2, "n_particle_blocks": 1}}, device="cpu")


def test_finetune_summary_states_the_model_cost(toy_shards, tmp_path):
    d, shards = toy_shards
    summaries = {}
    for pairs in (True, False):
        settings = dataclasses.replace(SMALL, part={**SMALL.part, "pair_features": pairs})
        summaries[pairs] = run_finetune("tau_id", "part", 150, 0, shards, tmp_path / f"part_{pairs}", settings)
        on_disk = json.loads((tmp_path / f"part_{pairs}" / "summary.json").read_text())
        assert {k: on_disk[k] for k in ("n_parameters", "n_trainable_parameters", "flops_per_jet")} == {k: summaries[pairs][k] for k in ("n_parameters", "n_trainable_parameters", "flops_per_jet")}
    for summary in summaries.values():
        assert summary["n_trainable_parameters"] == summary["n_parameters"] > 0
        assert summary["flops_per_jet"] > 0
    assert summaries[True]["n_parameters"] > summaries[False]["n_parameters"]
    assert summaries[True]["flops_per_jet"] > summaries[False]["flops_per_jet"]

    # A frozen backbone: only the head is trainable at the end.
    pretrain([p for v in shards.values() for p in v], d / "pretrain", PretrainSettings(model={"dim": 16, "n_heads": 2, "n_blocks": 1}, max_length=LENGTH, batch_size=64, epochs=1, device="cpu"))
    fixed = run_finetune("tau_id", "fixed", 150, 0, shards, tmp_path / "fixed", SMALL, d / "pretrain" / "backbone_best.pt")
    assert 0 < fixed["n_trainable_parameters"] < fixed["n_parameters"]
    assert fixed["flops_per_jet"] > 0
