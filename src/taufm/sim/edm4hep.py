"""Writing generator records and detector output in the EDM4hep layout of the Fuτure files.

Tree ``events``; each podio collection is a group of flat jagged branches named as the leaves of
the real files' split class branches (``MCParticles.PDG``, ``MCParticles#1.index``, ...), so that
a reader addressing leaves by name reads our files and the real ones alike. Units: GeV, mm, ns.

What cannot be reproduced with uproot (it cannot write C++ class branches): the split
``vector<edm4hep::...Data>`` parent branches, and the fixed-size ``covMatrix[21]`` array of a
track state, which we write as a flat jagged branch (21 values per state, same order).
See ``docs/data-format.md``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from taufm.io import atomic_output, deterministic_uuid_function, reproducible_root_timestamps
from taufm.sim.detector import RecoEvents
from taufm.sim.pythia import GenRecord

TREE_NAME = "events"
COVARIANCE_SIZE = 21  # lower triangle of the 6x6 (d0, phi, omega, z0, tanLambda, time) matrix
_COV_DIAGONAL = {"var_D0": 0, "var_phi": 2, "var_omega": 5, "var_Z0": 9, "var_tanLambda": 14}


def collection_id(name: str) -> int:
    """A stable collection ID per collection name (podio hashes names too)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _zip(columns: dict[str, ak.Array]) -> ak.Array:
    return ak.zip(columns, depth_limit=2)


def _relation_offsets(lists: ak.Array) -> tuple[ak.Array, ak.Array, ak.Array]:
    """podio one-to-many layout: per element begin/end into one per-event index vector."""
    n = ak.num(lists, axis=2)
    end = ak.unflatten(_local_cumsum(n), ak.num(n))
    begin = end - n
    return ak.values_astype(begin, np.uint32), ak.values_astype(end, np.uint32), ak.flatten(lists, axis=2)


def _local_cumsum(n: ak.Array) -> np.ndarray:
    counts = ak.to_numpy(ak.num(n))
    flat = ak.to_numpy(ak.flatten(n)).astype(np.int64)
    total = np.cumsum(flat)
    event_start = np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts).astype(np.int64)
    before = np.concatenate([[0], total])[event_start]
    return total - before


def _index_group(indices: ak.Array, target: str) -> ak.Array:
    return _zip(
        {
            "index": ak.values_astype(indices, np.int32),
            "collectionID": ak.values_astype(ak.zeros_like(indices) + collection_id(target), np.uint32),
        }
    )


def mc_particle_branches(record: GenRecord) -> dict[str, ak.Array]:
    p = record.particles
    parents_begin, parents_end, parent_index = _relation_offsets(record.parents)
    daughters_begin, daughters_end, daughter_index = _relation_offsets(record.daughters)
    f32 = np.float32
    mc = _zip(
        {
            "PDG": ak.values_astype(p.PDG, np.int32),
            "generatorStatus": ak.values_astype(p.generatorStatus, np.int32),
            "simulatorStatus": ak.values_astype(ak.zeros_like(p.PDG), np.int32),
            "charge": ak.values_astype(p.charge, f32),
            "time": ak.values_astype(p.time, f32),
            "mass": ak.values_astype(p.mass, np.float64),
            "vertex.x": ak.values_astype(p.vx, np.float64),
            "vertex.y": ak.values_astype(p.vy, np.float64),
            "vertex.z": ak.values_astype(p.vz, np.float64),
            "endpoint.x": ak.values_astype(p.ex, np.float64),
            "endpoint.y": ak.values_astype(p.ey, np.float64),
            "endpoint.z": ak.values_astype(p.ez, np.float64),
            "momentum.x": ak.values_astype(p.px, f32),
            "momentum.y": ak.values_astype(p.py, f32),
            "momentum.z": ak.values_astype(p.pz, f32),
            "parents_begin": parents_begin,
            "parents_end": parents_end,
            "daughters_begin": daughters_begin,
            "daughters_end": daughters_end,
        }
    )
    return {
        "MCParticles": mc,
        "MCParticles#0": _index_group(parent_index, "MCParticles"),
        "MCParticles#1": _index_group(daughter_index, "MCParticles"),
    }


def reco_branches(reco: RecoEvents) -> dict[str, ak.Array]:
    c = reco.candidates
    has_track = c.track >= 0
    n_track = ak.values_astype(has_track, np.int64)
    tracks_end = ak.unflatten(_local_cumsum(n_track), ak.num(n_track))
    tracks_begin = tracks_end - n_track
    zeros_u32 = ak.values_astype(ak.zeros_like(c.track), np.uint32)
    zeros_f32 = ak.values_astype(ak.zeros_like(c.energy), np.float32)
    particles = _zip(
        {
            "type": c["type"],
            "energy": c.energy,
            "momentum.x": c.px,
            "momentum.y": c.py,
            "momentum.z": c.pz,
            "referencePoint.x": zeros_f32,
            "referencePoint.y": zeros_f32,
            "referencePoint.z": zeros_f32,
            "charge": c.charge,
            "mass": c.mass,
            "goodnessOfPID": zeros_f32,
            "clusters_begin": zeros_u32,
            "clusters_end": zeros_u32,
            "tracks_begin": ak.values_astype(tracks_begin, np.uint32),
            "tracks_end": ak.values_astype(tracks_end, np.uint32),
            "particles_begin": zeros_u32,
            "particles_end": zeros_u32,
        }
    )
    t = reco.tracks
    n_states = ak.values_astype(ak.ones_like(t.D0), np.int64)
    states_end = ak.unflatten(_local_cumsum(n_states), ak.num(n_states))
    zeros_t = ak.values_astype(ak.zeros_like(t.D0), np.float32)
    tracks = _zip(
        {
            "type": ak.values_astype(ak.zeros_like(t.location), np.int32),
            "chi2": zeros_t,
            "ndf": ak.values_astype(ak.zeros_like(t.location), np.int32),
            "dEdx": zeros_t,
            "dEdxError": zeros_t,
            "radiusOfInnermostHit": zeros_t,
            "trackStates_begin": ak.values_astype(states_end - n_states, np.uint32),
            "trackStates_end": ak.values_astype(states_end, np.uint32),
        }
    )
    states = _zip(
        {
            "location": t.location,
            "D0": t.D0,
            "phi": t.phi,
            "omega": t.omega,
            "Z0": t.Z0,
            "tanLambda": t.tanLambda,
            "time": zeros_t,
            "referencePoint.x": zeros_t,
            "referencePoint.y": zeros_t,
            "referencePoint.z": zeros_t,
        }
    )
    # Covariance: 21 values per state with the diagonal variances in their lower-triangle slots.
    n_tracks_per_event = ak.to_numpy(ak.num(t.D0))
    cov = np.zeros((int(n_tracks_per_event.sum()), COVARIANCE_SIZE), dtype=np.float32)
    for field, slot in _COV_DIAGONAL.items():
        cov[:, slot] = ak.to_numpy(ak.flatten(t[field]))
    covariance = ak.unflatten(cov.reshape(-1), n_tracks_per_event * COVARIANCE_SIZE)
    track_index = ak.values_astype(c.track[has_track], np.int32)
    links = reco.links
    return {
        "MergedRecoParticles": particles,
        "MergedRecoParticles#0": _index_group(ak.values_astype(c.track[c.track < -1], np.int32), "Clusters"),
        "MergedRecoParticles#1": _index_group(track_index, "SiTracks_Refitted"),
        "SiTracks_Refitted": tracks,
        "SiTracks_Refitted_1": states,
        "SiTracks_Refitted_1.covMatrix": covariance,
        "RecoMCTruthLink": _zip({"weight": links.weight}),
        "RecoMCTruthLink#0": _index_group(links.reco, "MergedRecoParticles"),
        "RecoMCTruthLink#1": _index_group(links.mc, "MCParticles"),
    }


def event_branches(event_numbers: np.ndarray, run_number: int) -> dict[str, ak.Array]:
    n = len(event_numbers)
    one = ak.unflatten(np.ones(n, dtype=np.int32), np.ones(n, dtype=np.int64))
    zero_f = ak.values_astype(one * 0, np.float32)
    return {
        "EventHeader": _zip(
            {
                "eventNumber": ak.unflatten(event_numbers.astype(np.int32), np.ones(n, dtype=np.int64)),
                "runNumber": one * np.int32(run_number),
                "timeStamp": ak.values_astype(one * 0, np.uint64),
                "weight": ak.values_astype(one, np.float32),
            }
        ),
        "PrimaryVertices": _zip(
            {"primary": one, "chi2": zero_f, "position.x": zero_f, "position.y": zero_f, "position.z": zero_f}
        ),
    }


# The podio generations we write, by the names their leaves take (see docs/data-format.md):
# - podio-0.16 (EDM4hep 0.7, Fuτure v1): relations `<collection>#N`, vector members
#   `<collection>_N`, particle flow `MergedRecoParticles` with `type` — how we write by default;
# - podio-0.17 (podio 0.17-1.2, EDM4hep 0.10): relations and vector members
#   `_<collection>_<name>`, particle flow `PandoraPFOs`, still with `type`;
# - podio-1.3 (podio >= 1.3, EDM4hep 1.x, Fuτure v3): as podio-0.17, with `PDG` on reconstructed
#   particles, double-precision (Vector3d) generator momenta, the track-state covariance in a
#   `covMatrix.values` member and links as `_<link>_from` / `_<link>_to`.
PODIO_GENERATIONS = ("podio-0.16", "podio-0.17", "podio-1.3")
_UNDERSCORE_NAMES = {
    "MCParticles#0": "_MCParticles_parents",
    "MCParticles#1": "_MCParticles_daughters",
    "MergedRecoParticles": "PandoraPFOs",
    "MergedRecoParticles#0": "_PandoraPFOs_clusters",
    "MergedRecoParticles#1": "_PandoraPFOs_tracks",
    "SiTracks_Refitted_1": "_SiTracks_Refitted_trackStates",
    "SiTracks_Refitted_1.covMatrix": "_SiTracks_Refitted_trackStates.covMatrix",
    "RecoMCTruthLink#0": "_RecoMCTruthLink_rec",
    "RecoMCTruthLink#1": "_RecoMCTruthLink_sim",
}
_PODIO_1_3_NAMES = {
    **_UNDERSCORE_NAMES,
    "SiTracks_Refitted_1.covMatrix": "_SiTracks_Refitted_trackStates.covMatrix.values",
    "RecoMCTruthLink#0": "_RecoMCTruthLink_from",
    "RecoMCTruthLink#1": "_RecoMCTruthLink_to",
}
TRACK_BRANCH_GROUPS = ("SiTracks_Refitted", "SiTracks_Refitted_1", "SiTracks_Refitted_1.covMatrix")


def check_generation(generation: str) -> None:
    if generation not in PODIO_GENERATIONS:
        raise ValueError(f"unknown podio generation {generation!r}; known: {', '.join(PODIO_GENERATIONS)}")


def rename_for_generation(branches: dict[str, ak.Array], generation: str, tracks: bool = True) -> dict[str, ak.Array]:
    """Branch groups (written as podio-0.16) under the leaf names of ``generation``.

    ``tracks=False`` leaves the track collections out, as in files slimmed of them: the
    particle-flow candidates keep their (now dangling) track relation, as podio writes it.
    """
    check_generation(generation)
    if not tracks:
        branches = {k: v for k, v in branches.items() if k not in TRACK_BRANCH_GROUPS}
    if generation == "podio-0.16":
        return branches
    names = _PODIO_1_3_NAMES if generation == "podio-1.3" else _UNDERSCORE_NAMES
    out = {}
    for name, array in branches.items():
        if generation == "podio-1.3" and name == "MergedRecoParticles":
            array = ak.zip({("PDG" if f == "type" else f): array[f] for f in ak.fields(array)}, depth_limit=2)
        if generation == "podio-1.3" and name == "MCParticles":
            double = {f"momentum.{c}" for c in "xyz"}
            array = ak.zip({f: (ak.values_astype(array[f], np.float64) if f in double else array[f]) for f in ak.fields(array)}, depth_limit=2)
        out[names.get(name, name)] = array
    return out


class EDM4hepWriter:
    """Write batches of events to one EDM4hep-layout ROOT file, atomically and reproducibly.

    ``generation`` names the podio generation whose leaf names the file takes
    (:data:`PODIO_GENERATIONS`); ``tracks=False`` writes no track collections. Use as a context
    manager; the file appears under its final name only when the block ends without an exception.
    """

    def __init__(self, path: str | Path, run_number: int = 0, generation: str = "podio-0.16", tracks: bool = True) -> None:
        check_generation(generation)
        self.path = Path(path)
        self.run_number = run_number
        self.generation = generation
        self.tracks = tracks
        self._tree = None

    def __enter__(self) -> EDM4hepWriter:
        self._atomic = atomic_output(self.path)
        tmp = self._atomic.__enter__()
        self._stamps = reproducible_root_timestamps()
        self._stamps.__enter__()
        self._file = uproot.recreate(tmp, uuid_function=deterministic_uuid_function(self.path.name))
        return self

    def write(self, record: GenRecord, reco: RecoEvents, event_numbers: np.ndarray) -> None:
        branches = {**event_branches(event_numbers, self.run_number), **mc_particle_branches(record), **reco_branches(reco)}
        branches = rename_for_generation(branches, self.generation, self.tracks)
        if self._tree is None:
            self._tree = self._file.mktree(
                TREE_NAME,
                {k: v.type for k, v in branches.items()},
                counter_name=lambda name: f"n{name}",
                field_name=lambda outer, inner: f"{outer}.{inner}",
            )
        self._tree.extend(branches)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        finally:
            self._stamps.__exit__(exc_type, exc, tb)
            self._atomic.__exit__(exc_type, exc, tb)
