"""Running Pythia 8 (the ``pythia8mc`` wheel) and turning its event record into an EDM4hep-style
generator record: one row per particle with PDG, status, charge, mass, momentum, production
vertex, end point, and parent/daughter relations, all computed over whole batches (no Python loop
per particle).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import awkward as ak
import numpy as np

from taufm.arrays import expand_ranges
from taufm.errors import TaufmError

SPEED_OF_LIGHT_MM_PER_NS = 299.792458

# HepMC/EDM4hep generatorStatus conventions used in the written record.
STATUS_FINAL = 1
STATUS_DECAYED = 2
STATUS_BEAM = 4


def make_pythia(settings: Iterable[str], seed: int):
    """An initialised, silent Pythia instance with ``settings`` and ``seed``."""
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for line in ["Print:quiet = on", "Next:numberCount = 0", "Random:setSeed = on", f"Random:seed = {seed}", *settings]:
        if not pythia.readString(line):
            raise TaufmError(f"Pythia rejected the setting {line!r}")
    if not pythia.init():
        raise TaufmError("Pythia failed to initialise with settings: " + "; ".join(settings))
    return pythia


@dataclass(frozen=True)
class GenRecord:
    """Generator-level particles of a batch of events, EDM4hep field names and units (GeV, mm, ns).

    ``particles`` holds one record per particle (jagged per event) with fields PDG,
    generatorStatus, charge, mass, time, px/py/pz/energy and vertex/endpoint x/y/z.
    ``parents`` and ``daughters`` hold, per particle, the local indices of related particles;
    they are mutually consistent by construction (j is a daughter of i iff i is a parent of j).
    """

    particles: ak.Array
    parents: ak.Array
    daughters: ak.Array

    def __len__(self) -> int:
        return len(self.particles)


def _expand_ranges(owner: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, the pairs (owner[i], k) for k in first[i]..last[i] inclusive."""
    which, k = expand_ranges(first, last + 1)
    return owner[which], k


def _pythia_edges(status, m1, m2, d1, d2, offsets_of_particle):
    """All (parent, child) global index pairs implied by Pythia's mother and daughter codes.

    Pythia encodes relations in two pointers each (see the Pythia 8 manual, "Particle
    Properties"): one mother, two mothers, or, for string-fragmentation hadrons (|status| 81-86,
    101-106), a range of mothers; one daughter, two daughters, or a range of daughters. Taking the
    union of both directions gives a relation that is consistent both ways.
    """
    idx = np.arange(len(status))
    base = offsets_of_particle
    abs_status = np.abs(status)
    parents, children = [], []

    # Mothers.
    single = (m1 > 0) & ((m2 == 0) | (m2 == m1))
    parents.append(base[single] + m1[single])
    children.append(idx[single])
    is_range = ((abs_status >= 81) & (abs_status <= 86)) | ((abs_status >= 101) & (abs_status <= 106))
    ranged = (m1 > 0) & (m2 > m1) & is_range
    own, k = _expand_ranges(idx[ranged], m1[ranged], m2[ranged])
    parents.append(base[own] + k)
    children.append(own)
    two = (m1 > 0) & (m2 > 0) & (m1 != m2) & ~ranged
    for m in (m1, m2):
        parents.append(base[two] + m[two])
        children.append(idx[two])

    # Daughters.
    single = (d1 > 0) & ((d2 == 0) | (d2 == d1))
    parents.append(idx[single])
    children.append(base[single] + d1[single])
    ranged = (d1 > 0) & (d2 > d1)
    own, k = _expand_ranges(idx[ranged], d1[ranged], d2[ranged])
    parents.append(own)
    children.append(base[own] + k)
    two = (d2 > 0) & (d1 > d2)
    for d in (d1, d2):
        parents.append(idx[two])
        children.append(base[two] + d[two])

    return np.concatenate(parents), np.concatenate(children)


def _relation_lists(owner: np.ndarray, other: np.ndarray, event_of: np.ndarray, local_of: np.ndarray, counts: np.ndarray) -> ak.Array:
    """Jagged per event, per particle: local indices of ``other`` grouped by ``owner`` (global ids)."""
    order = np.lexsort((other, owner))
    owner, other = owner[order], other[order]
    per_particle = np.bincount(owner, minlength=len(event_of))
    flat = ak.unflatten(local_of[other], per_particle)
    return ak.unflatten(flat, counts)


def record_from_batch(batch: ak.Array, charge_of) -> GenRecord:
    """Convert a ``pythia.nextBatch(n)`` result into a :class:`GenRecord`.

    Pythia's entry 0 (the event as a whole, id 90) is not a particle and is dropped; the indices of
    the other entries shift down by one. ``charge_of`` maps a PDG id to its charge (Pythia's
    ``particleData.charge``; the batch interface does not carry charges).
    """
    prt = batch.prt
    counts_with_system = ak.to_numpy(ak.num(prt))
    flat = ak.flatten(prt)
    status = ak.to_numpy(flat.status).astype(np.int64)
    m1 = ak.to_numpy(flat.mother1).astype(np.int64)
    m2 = ak.to_numpy(flat.mother2).astype(np.int64)
    d1 = ak.to_numpy(flat.daughter1).astype(np.int64)
    d2 = ak.to_numpy(flat.daughter2).astype(np.int64)
    n_total = len(status)
    event_start = np.repeat(np.cumsum(counts_with_system) - counts_with_system, counts_with_system)
    parent, child = _pythia_edges(status, m1, m2, d1, d2, event_start)

    # Drop the system entry (local index 0) and edges touching it; deduplicate edges.
    local_with_system = np.arange(n_total) - event_start
    keep_particle = local_with_system > 0
    keep_edge = keep_particle[parent] & keep_particle[child]
    # One int64 key per edge (sorted by parent, then child) makes deduplication a 1-D unique.
    # (np.unique takes a slow hashing path for int64 in numpy 2.4: sort and compare instead.)
    key = np.sort(parent[keep_edge] * n_total + child[keep_edge])
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    parent, child = key // n_total, key % n_total
    new_global = np.cumsum(keep_particle) - 1
    parent, child = new_global[parent], new_global[child]

    counts = counts_with_system - 1
    kept = np.flatnonzero(keep_particle)
    event_of = np.repeat(np.arange(len(counts)), counts)
    local_of = local_with_system[kept] - 1

    pid = ak.to_numpy(flat.id)[kept].astype(np.int32)
    status_k = status[kept]
    # generatorStatus: final state 1; decayed particles (whose daughters are decay products,
    # Pythia status 91-99) 2; beams 4; everything else keeps |Pythia status| (11-200 are
    # generator-specific codes in HepMC/EDM4hep).
    decayed = np.zeros(len(kept), dtype=bool)
    child_status = np.abs(status[kept][child])
    decayed[parent[(child_status >= 91) & (child_status <= 99)]] = True
    gen_status = np.abs(status_k).astype(np.int32)
    gen_status[status_k > 0] = STATUS_FINAL
    gen_status[(status_k < 0) & decayed] = STATUS_DECAYED
    gen_status[np.abs(status_k) == 12] = STATUS_BEAM

    p = flat.p
    vprod = flat.vProd
    vx = ak.to_numpy(ak.fill_none(vprod.px, 0.0))[kept]
    vy = ak.to_numpy(ak.fill_none(vprod.py, 0.0))[kept]
    vz = ak.to_numpy(ak.fill_none(vprod.pz, 0.0))[kept]
    vt = ak.to_numpy(ak.fill_none(vprod.e, 0.0))[kept]

    unique_ids, inverse = np.unique(pid, return_inverse=True)
    charge = np.array([charge_of(int(i)) for i in unique_ids], dtype=np.float32)[inverse]

    # End point: where the particle's first daughter was produced (zero if it has none).
    first_daughter = np.full(len(kept), -1)
    order = np.lexsort((child, parent))
    firsts = np.unique(parent[order], return_index=True)
    first_daughter[firsts[0]] = child[order][firsts[1]]
    has_end = first_daughter >= 0
    ex, ey, ez = (np.where(has_end, v[first_daughter], 0.0) for v in (vx, vy, vz))

    columns = {
        "PDG": pid,
        "generatorStatus": gen_status,
        "charge": charge,
        "mass": ak.to_numpy(flat.m)[kept],
        "time": (vt / SPEED_OF_LIGHT_MM_PER_NS).astype(np.float32),
        "px": ak.to_numpy(p.px)[kept],
        "py": ak.to_numpy(p.py)[kept],
        "pz": ak.to_numpy(p.pz)[kept],
        "energy": ak.to_numpy(p.e)[kept],
        "vx": vx,
        "vy": vy,
        "vz": vz,
        "ex": ex,
        "ey": ey,
        "ez": ez,
    }
    particles = ak.unflatten(ak.zip(columns, depth_limit=1), counts)
    parents = _relation_lists(child, parent, event_of, local_of, counts)
    daughters = _relation_lists(parent, child, event_of, local_of, counts)
    return GenRecord(particles=particles, parents=parents, daughters=daughters)


def generate_record(pythia, n_events: int) -> GenRecord:
    """Generate ``n_events`` events with an initialised Pythia and return their record."""
    batch = pythia.nextBatch(n_events)
    if len(batch) != n_events:
        raise TaufmError(f"Pythia produced {len(batch)} of {n_events} requested events (too many errors)")
    return record_from_batch(batch, pythia.particleData.charge)
