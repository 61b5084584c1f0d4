"""Reading Fuτure EDM4hep ROOT files (and ours) in bounded chunks, in either podio naming.

Real Fuτure files were written by the podio of early 2023: relations live in ``<collection>#N``
branches and the particle-flow collection is ``MergedRecoParticles`` with a ``type`` field.
Newer podio/EDM4hep files name relations ``_<collection>_<relation>`` and the particle-flow
collection ``PandoraPFOs`` with a ``PDG`` field. :class:`PodioNaming` maps one logical name to
each; :func:`detect_naming` picks the one a file uses, and everything downstream sees one shape:
:class:`EventChunk`. Leaves are addressed by name, so split class branches (real files) and flat
branches (our generator's files) read alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from taufm.arrays import expand_ranges
from taufm.errors import TaufmError

TREE_NAME = "events"
TRACK_STATE_AT_IP = 1


@dataclass(frozen=True)
class PodioNaming:
    """Branch names of the collections and relations the ingestion reads."""

    name: str
    mc: str
    mc_daughters_index: str
    reco: str
    reco_type: str
    reco_tracks_index: str
    tracks: str
    track_states: str
    event_number: str

    def needed(self) -> list[str]:
        """The leaves every file must have (covariance leaves are found by prefix)."""
        mc = [f"{self.mc}.{f}" for f in ("PDG", "generatorStatus", "charge", "mass", "momentum.x", "momentum.y", "momentum.z", "daughters_begin", "daughters_end")]
        reco = [
            f"{self.reco}.{f}"
            for f in (self.reco_type, "energy", "momentum.x", "momentum.y", "momentum.z", "charge", "mass", "tracks_begin", "tracks_end")
        ]
        tracks = [f"{self.tracks}.trackStates_begin", f"{self.tracks}.trackStates_end"]
        states = [f"{self.track_states}.{f}" for f in ("location", "D0", "Z0")]
        return [*mc, self.mc_daughters_index, *reco, self.reco_tracks_index, *tracks, *states]


NAMINGS = {
    "podio-legacy": PodioNaming(
        name="podio-legacy",
        mc="MCParticles",
        mc_daughters_index="MCParticles#1.index",
        reco="MergedRecoParticles",
        reco_type="type",
        reco_tracks_index="MergedRecoParticles#1.index",
        tracks="SiTracks_Refitted",
        track_states="SiTracks_Refitted_1",
        event_number="EventHeader.eventNumber",
    ),
    "podio-current": PodioNaming(
        name="podio-current",
        mc="MCParticles",
        mc_daughters_index="_MCParticles_daughters.index",
        reco="PandoraPFOs",
        reco_type="PDG",
        reco_tracks_index="_PandoraPFOs_tracks.index",
        tracks="SiTracks_Refitted",
        track_states="_SiTracks_Refitted_trackStates",
        event_number="EventHeader.eventNumber",
    ),
}


@dataclass(frozen=True)
class EventChunk:
    """A contiguous range of events of one file, in the shape ingestion works on.

    ``gen``: jagged per event: PDG, generatorStatus, charge, mass, px, py, pz, energy.
    ``gen_daughters``: jagged per event and particle: daughter indices.
    ``reco``: jagged per event: type (PDG code as written), charge, mass, px, py, pz, energy,
    and d0, d0err, dz, dzerr of the candidate's track at the IP (NaN without a track).
    """

    file: Path
    entry_start: int
    event_number: np.ndarray
    gen: ak.Array
    gen_daughters: ak.Array
    reco: ak.Array

    def __len__(self) -> int:
        return len(self.event_number)


def open_events_tree(path: str | Path):
    """Open ``path`` and return (file, tree); clear errors for missing, corrupt or wrong files."""
    path = Path(path)
    if not path.exists():
        raise TaufmError(f"{path}: no such file")
    try:
        file = uproot.open(path)
    except Exception as err:  # uproot raises many types for damaged files
        raise TaufmError(f"{path}: not a readable ROOT file ({type(err).__name__}: {err})") from err
    try:
        tree = file[TREE_NAME]
    except Exception as err:
        file.close()
        raise TaufmError(f"{path}: no tree '{TREE_NAME}' (an EDM4hep file has one; found: {', '.join(file.keys()) or 'nothing'})") from err
    return file, tree


def _leaf_names(tree) -> set[str]:
    return {name.split("/")[-1] for name in tree.keys(recursive=True)}


def detect_naming(tree, path: str | Path) -> PodioNaming:
    """The podio naming of a tree, from which daughter-relation branch it holds."""
    leaves = _leaf_names(tree)
    for naming in NAMINGS.values():
        if naming.mc_daughters_index in leaves and f"{naming.reco}.{naming.reco_type}" in leaves:
            missing = [b for b in naming.needed() if b not in leaves]
            if missing:
                raise TaufmError(f"{path}: missing branch(es) {', '.join(missing)} ({naming.name} naming)")
            return naming
    raise TaufmError(
        f"{path}: not an EDM4hep event file in a known podio naming: needs MCParticles relations "
        f"({' or '.join(n.mc_daughters_index for n in NAMINGS.values())}) and a particle-flow collection "
        f"({' or '.join(f'{n.reco}.{n.reco_type}' for n in NAMINGS.values())})"
    )


def _covariance_leaf(tree, naming: PodioNaming, path) -> str | None:
    prefix = f"{naming.track_states}.covMatrix"
    names = sorted(n for n in _leaf_names(tree) if n.startswith(prefix))
    return names[0] if names else None


def relation_lists(begin: ak.Array, end: ak.Array, index: ak.Array) -> ak.Array:
    """Per event, per element: the related indices, from podio's begin/end and index vector."""
    counts = ak.to_numpy(ak.num(begin))
    b = ak.to_numpy(ak.flatten(begin)).astype(np.int64)
    e = ak.to_numpy(ak.flatten(end)).astype(np.int64)
    idx_counts = ak.to_numpy(ak.num(index))
    idx_start = np.repeat(np.cumsum(idx_counts) - idx_counts, counts)
    flat_index = ak.to_numpy(ak.flatten(index)).astype(np.int64)
    owner, position = expand_ranges(b + idx_start, e + idx_start)
    if len(position) and (position.max() >= len(flat_index) or position.min() < 0):
        raise TaufmError("relation ranges point outside their index vector")
    lengths = np.bincount(owner, minlength=len(b))
    return ak.unflatten(ak.unflatten(flat_index[position], lengths), counts)


def _track_parameters(arrays: ak.Array, naming: PodioNaming, cov_leaf: str | None, path) -> dict[str, ak.Array]:
    """d0, dz and their errors at the IP for each reco candidate (NaN where it has no track)."""
    r = naming.reco
    n_cand = ak.to_numpy(ak.num(arrays[f"{r}.tracks_begin"]))
    tb = ak.to_numpy(ak.flatten(arrays[f"{r}.tracks_begin"])).astype(np.int64)
    te = ak.to_numpy(ak.flatten(arrays[f"{r}.tracks_end"])).astype(np.int64)
    event = np.repeat(np.arange(len(n_cand)), n_cand)
    track_index = arrays[naming.reco_tracks_index]
    ti_counts = ak.to_numpy(ak.num(track_index))
    ti_flat = ak.to_numpy(ak.flatten(track_index)).astype(np.int64)
    ti_start = np.cumsum(ti_counts) - ti_counts
    has = te > tb
    # The candidate's first track, as an index within its event's track collection.
    track_local = np.full(len(tb), -1, dtype=np.int64)
    track_local[has] = ti_flat[ti_start[event[has]] + tb[has]]

    s_begin = arrays[f"{naming.tracks}.trackStates_begin"]
    n_tracks = ak.to_numpy(ak.num(s_begin))
    track_start = np.cumsum(n_tracks) - n_tracks
    sb = ak.to_numpy(ak.flatten(s_begin)).astype(np.int64)
    se = ak.to_numpy(ak.flatten(arrays[f"{naming.tracks}.trackStates_end"])).astype(np.int64)
    states = naming.track_states
    n_states = ak.to_numpy(ak.num(arrays[f"{states}.D0"]))
    state_start = np.cumsum(n_states) - n_states
    location = ak.to_numpy(ak.flatten(arrays[f"{states}.location"]))
    track_event = np.repeat(np.arange(len(n_tracks)), n_tracks)
    # Per track: the state at the IP if there is one, else its first state.
    owner, state = expand_ranges(sb + state_start[track_event], se + state_start[track_event])
    chosen = np.full(len(sb), -1, dtype=np.int64)
    first = np.unique(owner, return_index=True)
    chosen[first[0]] = state[first[1]]
    at_ip = location[state] == TRACK_STATE_AT_IP
    ip_first = np.unique(owner[at_ip], return_index=True)
    chosen[ip_first[0]] = state[at_ip][ip_first[1]]

    if np.any(track_local[has] >= n_tracks[event[has]]) or np.any(track_local[has] < 0):
        raise TaufmError(f"{path}: {naming.reco_tracks_index} points outside {naming.tracks}")
    cand_state = np.full(len(tb), -1, dtype=np.int64)
    cand_state[has] = chosen[track_start[event[has]] + track_local[has]]
    has &= cand_state >= 0

    d0 = ak.to_numpy(ak.flatten(arrays[f"{states}.D0"])).astype(np.float64)
    z0 = ak.to_numpy(ak.flatten(arrays[f"{states}.Z0"])).astype(np.float64)
    out = {k: np.full(len(tb), np.nan) for k in ("d0", "d0err", "dz", "dzerr")}
    out["d0"][has] = d0[cand_state[has]]
    out["dz"][has] = z0[cand_state[has]]
    if cov_leaf is not None:
        cov = arrays[cov_leaf]
        flat_cov = ak.to_numpy(ak.flatten(cov, axis=None)).astype(np.float64).reshape(-1, 21)
        if len(flat_cov) != len(d0):
            raise TaufmError(f"{path}: {cov_leaf} does not hold 21 values per track state")
        out["d0err"][has] = np.sqrt(np.maximum(flat_cov[cand_state[has], 0], 0.0))
        out["dzerr"][has] = np.sqrt(np.maximum(flat_cov[cand_state[has], 9], 0.0))
    return {k: ak.unflatten(v, n_cand) for k, v in out.items()}


def iterate_events(path: str | Path, chunk_size: int = 10_000) -> Iterator[EventChunk]:
    """Yield the events of one EDM4hep file in chunks of at most ``chunk_size`` events."""
    path = Path(path)
    file, tree = open_events_tree(path)
    with file:
        naming = detect_naming(tree, path)
        cov_leaf = _covariance_leaf(tree, naming, path)
        leaves = _leaf_names(tree)
        names = naming.needed() + ([cov_leaf] if cov_leaf else []) + ([naming.event_number] if naming.event_number in leaves else [])
        entry_start = 0
        try:
            chunks = tree.iterate(filter_name=names, step_size=chunk_size, library="ak")
            for arrays in chunks:
                yield _chunk(arrays, naming, cov_leaf, path, entry_start)
                entry_start += len(arrays)
        except TaufmError:
            raise
        except Exception as err:
            raise TaufmError(f"{path}: cannot read events from entry {entry_start} ({type(err).__name__}: {err})") from err


def _chunk(arrays: ak.Array, naming: PodioNaming, cov_leaf: str | None, path: Path, entry_start: int) -> EventChunk:
    mc, r = naming.mc, naming.reco
    n = len(arrays)
    if naming.event_number in ak.fields(arrays):
        event_number = ak.to_numpy(ak.flatten(arrays[naming.event_number])).astype(np.int64)
        if len(event_number) != n:
            raise TaufmError(f"{path}: {naming.event_number} must hold one value per event")
    else:
        event_number = np.arange(entry_start, entry_start + n, dtype=np.int64)

    px, py, pz = (ak.values_astype(arrays[f"{mc}.momentum.{c}"], np.float64) for c in "xyz")
    mass = ak.values_astype(arrays[f"{mc}.mass"], np.float64)
    gen = ak.zip(
        {
            "PDG": arrays[f"{mc}.PDG"],
            "generatorStatus": arrays[f"{mc}.generatorStatus"],
            "charge": arrays[f"{mc}.charge"],
            "mass": mass,
            "px": px,
            "py": py,
            "pz": pz,
            "energy": np.sqrt(px**2 + py**2 + pz**2 + mass**2),
        }
    )
    daughters = relation_lists(arrays[f"{mc}.daughters_begin"], arrays[f"{mc}.daughters_end"], arrays[naming.mc_daughters_index])
    n_gen = ak.num(gen)
    if ak.any(ak.num(daughters) != n_gen) or ak.any(ak.max(ak.flatten(daughters, axis=2), axis=1, mask_identity=False) >= n_gen):
        raise TaufmError(f"{path}: {naming.mc_daughters_index} points outside {mc}")

    track = _track_parameters(arrays, naming, cov_leaf, path)
    reco = ak.zip(
        {
            "type": arrays[f"{r}.{naming.reco_type}"],
            "charge": arrays[f"{r}.charge"],
            "mass": ak.values_astype(arrays[f"{r}.mass"], np.float64),
            "px": ak.values_astype(arrays[f"{r}.momentum.x"], np.float64),
            "py": ak.values_astype(arrays[f"{r}.momentum.y"], np.float64),
            "pz": ak.values_astype(arrays[f"{r}.momentum.z"], np.float64),
            "energy": ak.values_astype(arrays[f"{r}.energy"], np.float64),
            **track,
        }
    )
    return EventChunk(file=path, entry_start=entry_start, event_number=event_number, gen=gen, gen_daughters=daughters, reco=reco)
