"""Generator-level leptons for jet cleaning: which final-state electrons and muons are prompt.

A prompt lepton comes from the hard process, a W/Z/H/γ* or a tau's leptonic decay. Electrons
from a π0/η Dalitz decay or a photon conversion, and leptons from heavy-flavour decays, are not:
they sit inside (tau or quark) jets, and cleaning jets near them removes genuine tau jets in the
π0 decay modes only. The origin of a lepton is its first ancestor of another flavour, found by
walking up through its own copies (a generator records every radiation or recoil as a new
copy): a hadron or a photon there means "not prompt"; anything else (a boson, a tau, a beam
particle, no ancestor at all) means prompt. Vectorised over the whole batch: the walk goes one
generation at a time over (lepton, ancestor) pairs.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

LEPTON_FLAVOURS = (11, 13)
PHOTON = 22
# PDG codes from 100 up are hadrons (mesons, baryons, nuclei); below are quarks, leptons, bosons
# and generator-internal codes.
FIRST_HADRON_CODE = 100


def parents_from_daughters(daughters: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Global (over the batch) parent lists in CSR form: ``parents[offsets[i]:offsets[i+1]]``."""
    per_event = ak.to_numpy(ak.num(daughters))
    start = np.cumsum(per_event) - per_event
    n_daughters = ak.to_numpy(ak.flatten(ak.num(daughters, axis=2)))
    event_of = np.repeat(np.arange(len(per_event)), per_event)
    parent = np.repeat(np.arange(len(n_daughters)), n_daughters)
    child = ak.to_numpy(ak.flatten(ak.flatten(daughters, axis=2))).astype(np.int64) + start[event_of[parent]]
    order = np.argsort(child, kind="stable")
    parent, child = parent[order], child[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(child, minlength=len(n_daughters)))])
    return offsets, parent


def prompt_leptons(particles: ak.Array, daughters: ak.Array, flavours: tuple[int, ...] = LEPTON_FLAVOURS) -> np.ndarray:
    """Per particle of the flattened batch: a final-state (status 1) lepton of ``flavours``
    that is prompt (see the module docstring)."""
    flat = ak.flatten(particles)
    apdg = np.abs(ak.to_numpy(flat.PDG).astype(np.int64))
    status = ak.to_numpy(flat.generatorStatus)
    leptons = np.flatnonzero((status == 1) & np.isin(apdg, flavours))
    offsets, parents = parents_from_daughters(daughters)
    not_prompt = np.zeros(len(apdg), dtype=bool)

    # Walk up: pairs (lepton, ancestor); only copies of the lepton's own flavour go on up.
    owner, frontier = leptons, leptons
    seen = np.zeros(0, dtype=np.int64)
    while len(frontier):
        n = offsets[frontier + 1] - offsets[frontier]
        owner = np.repeat(owner, n)
        frontier = parents[np.repeat(offsets[frontier], n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))]
        same = apdg[frontier] == apdg[owner]
        origin = ~same
        bad = origin & ((apdg[frontier] >= FIRST_HADRON_CODE) | (apdg[frontier] == PHOTON))
        not_prompt[owner[bad]] = True
        owner, frontier = owner[same], frontier[same]
        # A record that loops back on itself must not loop us: each pair is walked once.
        key, first = np.unique(owner * len(apdg) + frontier, return_index=True)
        fresh = first[~np.isin(key, seen)]
        seen = np.concatenate([seen, key])
        owner, frontier = owner[fresh], frontier[fresh]
    prompt = np.zeros(len(apdg), dtype=bool)
    prompt[leptons] = ~not_prompt[leptons]
    return prompt
