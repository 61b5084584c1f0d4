"""Generator-level tau leptons: decay products, leptonic/hadronic, visible momentum, decay mode.

Works on a generator record shaped like :class:`taufm.sim.pythia.GenRecord` (jagged particles
with PDG, generatorStatus, charge, px, py, pz, energy, plus per-particle daughter index lists),
as produced by the generator or read back from EDM4hep files. Vectorised over the whole batch:
the decay chain is followed a generation at a time, never a Python loop per tau.

The decaying tau is the last copy of a tau: one with daughters, none of them a tau, and not a
final-state particle (generators differ in the status codes of intermediate copies, so the
record's structure decides, not the code). Decay products of a tau are its daughters, where a
decayed intermediate resonance (rho, omega, a1, K*, ...: any non-final particle with daughters)
is replaced by its own daughters; pi0, eta and neutral kaons are products in their own right
(they count as neutral hadrons, SPEC §3), as is anything that did not decay. Final-state
particles are never descended into (in simulated files their daughters are detector secondaries).
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

NEUTRINOS = (12, 14, 16)
LEPTONS = (11, 13)
# Neutral mesons counted as one neutral hadron even when the generator decayed them.
COUNTED_NEUTRAL_MESONS = (111, 221, 130, 310, 311)

DECAY_MODE_NAMES = ("1h0pi0", "1h1pi0", "1hNpi0", "3h0pi0", "3hNpi0", "rare")
DM_1H0PI0, DM_1H1PI0, DM_1HNPI0, DM_3H0PI0, DM_3HNPI0, DM_RARE = range(6)
_MAX_GENERATIONS = 10


@dataclass(frozen=True)
class GenTaus:
    """Per event, one entry per decaying tau (the last copy of each |PDG| 15).

    Fields: index (in the event's particle list), charge, hadronic (bool), decay_mode (0-5 for
    hadronic taus, -1 for leptonic), n_charged, n_neutral, n_photons, and the visible
    four-momentum vis_px, vis_py, vis_pz, vis_energy. ``products`` lists the decay-product
    indices per tau.
    """

    taus: ak.Array
    products: ak.Array


def decay_mode(n_charged: np.ndarray, n_neutral: np.ndarray, n_photons: np.ndarray) -> np.ndarray:
    """SPEC §3 decay mode from counts of charged hadrons, neutral hadrons and photons directly
    from the tau (a daughter of the tau itself, not of a resonance).

    Two-prong decays go to the three-prong classes, as the reference code does.
    """
    one = n_charged == 1
    three = (n_charged == 2) | (n_charged == 3)
    dm = np.full(len(n_charged), DM_RARE, dtype=np.int8)
    dm[one & (n_neutral == 0)] = DM_1H0PI0
    dm[one & (n_neutral == 1)] = DM_1H1PI0
    dm[one & (n_neutral >= 2)] = DM_1HNPI0
    dm[three & (n_neutral == 0)] = DM_3H0PI0
    dm[three & (n_neutral >= 1)] = DM_3HNPI0
    dm[n_photons > 0] = DM_RARE
    return dm


def find_taus(particles: ak.Array, daughters: ak.Array) -> GenTaus:
    """All decayed taus of a batch with their decay products, type and decay mode."""
    counts = ak.to_numpy(ak.num(particles))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    flat = ak.flatten(particles)
    pdg = ak.to_numpy(flat.PDG).astype(np.int64)
    apdg = np.abs(pdg)
    status = ak.to_numpy(flat.generatorStatus)
    charge = ak.to_numpy(flat.charge)
    n_daughters = ak.to_numpy(ak.flatten(ak.num(daughters, axis=2)))
    daughter_start = np.concatenate([[0], np.cumsum(n_daughters)[:-1]])
    event_of = np.repeat(np.arange(len(counts)), counts)
    daughter_global = ak.to_numpy(ak.flatten(ak.flatten(daughters, axis=2) + start)).astype(np.int64)

    decayed = (status != 1) & (n_daughters > 0)
    # A tau with a tau among its daughters is an intermediate copy (radiation, recoil or a
    # generator's bookkeeping): only the last copy decays, whatever the status codes say.
    parent_of_daughter = np.repeat(np.arange(len(apdg)), n_daughters)
    has_tau_daughter = np.bincount(parent_of_daughter[apdg[daughter_global] == 15], minlength=len(apdg)) > 0
    is_tau = (apdg == 15) & decayed & ~has_tau_daughter
    tau_global = np.flatnonzero(is_tau)
    descend = decayed & ~np.isin(apdg, COUNTED_NEUTRAL_MESONS) & (apdg != 15)

    # Frontier expansion: (tau number, particle) pairs, one generation per iteration.
    owner = np.arange(len(tau_global))
    frontier = tau_global
    done_owner, done_particle, done_direct = [], [], []
    for generation in range(_MAX_GENERATIONS):
        n = n_daughters[frontier]
        child_owner = np.repeat(owner, n)
        offsets = np.repeat(daughter_start[frontier], n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        child = daughter_global[offsets]
        deeper = descend[child]
        done_owner.append(child_owner[~deeper])
        done_particle.append(child[~deeper])
        done_direct.append(np.full(int((~deeper).sum()), generation == 0))
        owner, frontier = child_owner[deeper], child[deeper]
        if len(frontier) == 0:
            break
    owner = np.concatenate(done_owner)
    product = np.concatenate(done_particle)
    direct = np.concatenate(done_direct)  # a daughter of the tau itself, not of a resonance
    order = np.lexsort((product, owner))
    owner, product, direct = owner[order], product[order], direct[order]

    ap = apdg[product]
    is_nu = np.isin(ap, NEUTRINOS)
    # Leptons and photons count only as the tau's own daughters (SPEC §3): a photon from
    # omega -> pi0 gamma does not make a decay "rare", nor an e± from a resonance "leptonic".
    is_lepton = np.isin(ap, LEPTONS)
    is_photon = ap == 22
    is_charged_hadron = (charge[product] != 0) & ~is_lepton
    is_neutral_hadron = (charge[product] == 0) & ~is_nu & ~is_photon
    n_tau = len(tau_global)

    def per_tau(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = mask.astype(float) if weights is None else np.where(mask, weights, 0.0)
        return np.bincount(owner, weights=w, minlength=n_tau)

    n_charged = per_tau(is_charged_hadron).astype(np.int64)
    n_neutral = per_tau(is_neutral_hadron).astype(np.int64)
    n_photons = per_tau(is_photon & direct).astype(np.int64)
    n_leptons = per_tau(is_lepton & direct).astype(np.int64)
    hadronic = (n_leptons == 0) & (n_charged > 0)
    dm = np.where(hadronic, decay_mode(n_charged, n_neutral, n_photons), -1).astype(np.int8)
    visible = ~is_nu
    vis = {k: per_tau(visible, ak.to_numpy(flat[k])[product]) for k in ("px", "py", "pz", "energy")}

    tau_event = event_of[tau_global]
    per_event = np.bincount(tau_event, minlength=len(counts))
    taus = ak.unflatten(
        ak.zip(
            {
                "index": tau_global - start[tau_event],
                "charge": charge[tau_global],
                "hadronic": hadronic,
                "decay_mode": dm,
                "n_charged": n_charged,
                "n_neutral": n_neutral,
                "n_photons": n_photons,
                "vis_px": vis["px"],
                "vis_py": vis["py"],
                "vis_pz": vis["pz"],
                "vis_energy": vis["energy"],
            },
            depth_limit=1,
        ),
        per_event,
    )
    products_local = product - start[event_of[product]]
    products = ak.unflatten(ak.unflatten(products_local, np.bincount(owner, minlength=n_tau)), per_event)
    return GenTaus(taus=taus, products=products)
