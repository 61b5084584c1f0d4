"""Shared fixtures: small simulated shards, generated once per test session."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from taufm.sim.ee import simulate_ee_shard
from tests import slurm_smoke

# The unit tests train tiny networks: on one intra-op thread they run several times faster than on
# two that synchronise around every small kernel (measured: a 200-jet fine-tuning cell 1.0 s
# against 14.8 s on 2 busy cores), and the second core stays free for what runs beside.
torch.set_num_threads(1)

# Sizes: enough taus for statistical tests of decay-mode fractions, small enough for CI.
EE_TEST_EVENTS = {"Z_Ztautau": 800, "ZH_Htautau": 200, "qq": 200}


@pytest.fixture(scope="session", autouse=True)
def background_slurm_smoke_run(request, tmp_path_factory):
    """The Slurm smoke run (``tests/slurm_smoke.py``), started before the session's first test
    when a collected test will wait for it, so that its scheduler waits overlap the other tests."""
    if not any(slurm_smoke.FIXTURE in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    run = slurm_smoke.SlurmSmokeRun(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="session")
def ee_files(tmp_path_factory):
    """One shard per Fuτure sample, written by the real generator + detector + writer."""
    out = tmp_path_factory.mktemp("ee")
    files = {}
    for sample, n in EE_TEST_EVENTS.items():
        files[sample] = out / f"{sample}_000.root"
        simulate_ee_shard(sample, 0, n, files[sample], seed=11)
    return files


def read_collection(path, collection: str) -> ak.Array:
    """All leaves of one collection group (``MCParticles.*``) as a record array, leaf names as fields."""
    with uproot.open(path) as f:
        tree = f["events"]
        names = [k for k in tree.keys() if k.startswith(collection + ".")]
        arrays = tree.arrays(names)
    return ak.zip({n[len(collection) + 1 :]: arrays[n] for n in names}, depth_limit=2)


def read_relation(path, collection: str, relation: int) -> tuple[ak.Array, ak.Array, ak.Array]:
    """(begin, end, index) of a podio one-to-many relation, e.g. MCParticles daughters (#1)."""
    field = {("MCParticles", 0): "parents", ("MCParticles", 1): "daughters", ("MergedRecoParticles", 1): "tracks"}[
        (collection, relation)
    ]
    with uproot.open(path) as f:
        tree = f["events"]
        begin = tree[f"{collection}.{field}_begin"].array()
        end = tree[f"{collection}.{field}_end"].array()
        index = tree[f"{collection}#{relation}.index"].array()
    return begin, end, index


def relation_lists(begin: ak.Array, end: ak.Array, index: ak.Array) -> ak.Array:
    """Per event, per element: the related indices, from podio's begin/end + index vector."""
    counts = ak.to_numpy(ak.num(begin))
    b = ak.to_numpy(ak.flatten(begin)).astype(np.int64)
    e = ak.to_numpy(ak.flatten(end)).astype(np.int64)
    idx_counts = ak.to_numpy(ak.num(index))
    idx_start = np.repeat(np.concatenate([[0], np.cumsum(idx_counts)[:-1]]), counts)
    flat_index = ak.to_numpy(ak.flatten(index))
    lengths = e - b
    starts = np.repeat(b + idx_start, lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    values = flat_index[starts + within]
    return ak.unflatten(ak.unflatten(values, lengths), counts)
