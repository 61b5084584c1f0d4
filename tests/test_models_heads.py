"""The task head and the ParT baseline: shapes, masking, permutation invariance, gradients, configs."""

from __future__ import annotations

import pytest
import torch

from taufm.models.heads import ClassAttentionBlock, HeadConfig, ParticleAttentionBlock, TaskHead
from taufm.models.part import ParTConfig, ParticleTransformer

SMALL_HEAD = HeadConfig(dim=32, n_heads=4, n_particle_blocks=2, n_class_blocks=2, ffn_multiplier=2, dropout=0.1)
INPUT_DIM = 12
N_OUTPUTS = 5


def make_head() -> TaskHead:
    torch.manual_seed(0)
    return TaskHead(INPUT_DIM, N_OUTPUTS, SMALL_HEAD)


def make_part() -> ParticleTransformer:
    torch.manual_seed(0)
    return ParticleTransformer(ParTConfig(n_features=INPUT_DIM, embed_dim=24, head=SMALL_HEAD), N_OUTPUTS)


MODELS = {"head": make_head, "part": make_part}


def batch(lengths: list[int], max_length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Jets with the given numbers of real candidates, padded to ``max_length`` with zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max_length, INPUT_DIM, generator=g)
    mask = torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]
    return x.masked_fill(~mask[..., None], 0.0), mask


LENGTHS = [7, 1, 13, 0, 4]


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_finite(name):
    model = MODELS[name]().eval()
    x, mask = batch(LENGTHS, 13)
    out = model(x, mask)
    assert out.shape == (len(LENGTHS), N_OUTPUTS)
    assert torch.isfinite(out).all()


def test_blocks_keep_shapes_and_zero_padding():
    x, mask = batch(LENGTHS, 13)
    h = torch.randn(len(LENGTHS), 13, SMALL_HEAD.dim)
    y = ParticleAttentionBlock(SMALL_HEAD).eval()(h, mask)
    assert y.shape == h.shape
    assert (y[~mask] == 0).all()
    cls = ClassAttentionBlock(SMALL_HEAD).eval()(torch.randn(len(LENGTHS), 1, SMALL_HEAD.dim), y, mask)
    assert cls.shape == (len(LENGTHS), 1, SMALL_HEAD.dim)


@pytest.mark.parametrize("name", MODELS)
def test_padding_content_is_ignored(name):
    model = MODELS[name]().eval()
    x, mask = batch(LENGTHS, 13)
    noisy = x.clone()
    noisy[~mask] = 1e6 * torch.randn(int((~mask).sum()), INPUT_DIM)
    with torch.no_grad():
        assert torch.equal(model(x, mask), model(noisy, mask))
        # Even non-finite padding cannot leak in.
        noisy[~mask] = float("nan")
        assert torch.equal(model(x, mask), model(noisy, mask))


@pytest.mark.parametrize("name", MODELS)
def test_padded_length_is_ignored(name):
    model = MODELS[name]().eval()
    x, mask = batch(LENGTHS, 13)
    longer = torch.cat([x, 1e3 * torch.randn(len(LENGTHS), 7, INPUT_DIM)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(len(LENGTHS), 7, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(longer, longer_mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_batch_entries_are_independent(name):
    """A jet's output does not depend on the other jets of its batch (incl. an empty one)."""
    model = MODELS[name]().eval()
    x, mask = batch(LENGTHS, 13)
    with torch.no_grad():
        together = model(x, mask)
        alone = torch.cat([model(x[i : i + 1], mask[i : i + 1]) for i in range(len(LENGTHS))])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_jet_without_candidates_is_finite(name):
    model = MODELS[name]()
    x, mask = batch([0, 0], 6)
    for train in (False, True):
        model.train(train)
        out = model(x, mask)
        assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MODELS)
def test_permutation_invariance(name):
    model = MODELS[name]().eval()
    x, mask = batch(LENGTHS, 13)
    permuted = x.clone()
    g = torch.Generator().manual_seed(5)
    for i, n in enumerate(LENGTHS):
        permuted[i, :n] = x[i, torch.randperm(n, generator=g)]
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(permuted, mask), rtol=0, atol=1e-5)
    # Real candidates scattered among padding positions: the same jets.
    order = torch.randperm(13, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(x[:, order], mask[:, order]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name):
    """Every parameter learns. (The attention key projections have no bias by construction:
    softmax ignores a shift shared by all logits of a query, so such a bias never gets a gradient.)"""
    model = MODELS[name]().train()
    x, mask = batch(LENGTHS, 13)
    model(x, mask).square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


def test_part_config_round_trip():
    for c in (ParTConfig(), ParTConfig(n_features=7, embed_dim=64, head=HeadConfig(dim=64, n_heads=2, dropout=0.0))):
        d = c.to_dict()
        assert isinstance(d["head"], dict)
        assert ParTConfig.from_dict(d) == c
    assert ParTConfig().head.n_particle_blocks == 4
    assert HeadConfig.from_dict(HeadConfig().to_dict()) == HeadConfig()
    with pytest.raises(ValueError, match="unknown ParTConfig keys"):
        ParTConfig.from_dict({"n_feature": 3})


def test_indivisible_dim_is_a_clear_error():
    with pytest.raises(ValueError, match="dim 100 is not divisible by n_heads 8"):
        HeadConfig(dim=100, n_heads=8)
    with pytest.raises(ValueError, match="not divisible"):
        ParTConfig.from_dict({"head": {"dim": 30, "n_heads": 4}})


def test_mask_must_be_boolean():
    x, mask = batch(LENGTHS, 13)
    with pytest.raises(TypeError, match="boolean"):
        make_head()(x, mask.float())
