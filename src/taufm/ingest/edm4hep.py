"""Reading EDM4hep ROOT files of every podio generation (and ours) in bounded chunks.

One reader serves every structure the Fuτure files come in (see ``docs/data-format.md``):

- **podio 0.16** (EDM4hep 0.7, Fuτure v1): relations in ``<collection>#N`` branches, vector
  members in ``<collection>_N``, particle flow ``MergedRecoParticles`` with a ``type`` field;
- **podio 0.17-1.2** (EDM4hep 0.10): relations and vector members ``_<collection>_<name>``,
  particle flow ``PandoraPFOs``, still with ``type``;
- **podio >= 1.3** (EDM4hep 1.x, Fuτure v3): the same names, ``PDG`` on reconstructed
  particles, ``Vector3d`` momenta, the track-state covariance in ``covMatrix.values`` and the
  collection types in the ``podio_metadata`` tree.

Real files store each collection as one split branch of a C++ class; our generator writes flat
jagged branches with the same leaf names. Leaves are addressed by their exact names at any depth,
so both read alike, and a leaf name is never used as a pattern (``covMatrix[21]`` is a leaf name,
not a glob). :func:`resolve_layout` finds, for one file, the leaves to read: the generation from
the relation branches present, the collection names from the settings (``auto``: the metadata
tree's collection types where there is one, else the usual names), and whether the file has
tracks at all (without them the lifetime columns take the sentinel). Everything downstream sees
one shape: :class:`EventChunk`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from taufm import remote
from taufm.arrays import expand_ranges
from taufm.config import reject_unknown_keys
from taufm.errors import TaufmError

log = logging.getLogger(__name__)

TREE_NAME = "events"
METADATA_TREE = "podio_metadata"
TRACK_STATE_AT_IP = 1
COVARIANCE_SIZE = 21
AUTO, NONE = "auto", "none"

# Collection names tried, in order, when a setting is ``auto`` and no metadata tree names them.
USUAL_NAMES = {
    "mc_particles": ("MCParticles",),
    "reco_particles": ("PandoraPFOs", "MergedRecoParticles"),
    "tracks": ("SiTracks_Refitted",),
}
COLLECTION_TYPES = {
    "mc_particles": "edm4hep::MCParticleCollection",
    "reco_particles": "edm4hep::ReconstructedParticleCollection",
    "tracks": "edm4hep::TrackCollection",
}
# Relations and vector members by position in EDM4hep 0.x (podio 0.16 names them #N / _N).
RECO_TRACKS_RELATION = 1  # ReconstructedParticle: clusters, tracks, particles, particleIDs, ...
MC_DAUGHTERS_RELATION = 1  # MCParticle: parents, daughters

MC_FIELDS = ("PDG", "generatorStatus", "charge", "mass", "momentum.x", "momentum.y", "momentum.z", "daughters_begin", "daughters_end")
RECO_FIELDS = ("energy", "momentum.x", "momentum.y", "momentum.z", "charge", "mass")
STATE_FIELDS = ("location", "D0", "Z0")


@dataclass(frozen=True)
class CollectionNames:
    """``ingest.future.collections``: the collection names to read (``auto``: found per file).

    ``tracks`` may also be ``none``: read no tracks even where the file has them.
    """

    mc_particles: str = AUTO
    reco_particles: str = AUTO
    tracks: str = AUTO

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> CollectionNames:
        values = dict(values or {})
        reject_unknown_keys(values, cls.__dataclass_fields__, "ingest.future.collections")
        for key, value in values.items():
            if not isinstance(value, str) or not value:
                raise TaufmError(f"ingest.future.collections.{key} must be a collection name or 'auto', got {value!r}")
        if values.get("mc_particles") == NONE or values.get("reco_particles") == NONE:
            raise TaufmError("ingest.future.collections: only 'tracks' can be 'none'")
        return cls(**values)


@dataclass(frozen=True)
class FileLayout:
    """The leaves one file is read from, resolved by :func:`resolve_layout`."""

    generation: str  # podio-0.16 | podio-0.17 | podio-1.3
    mc_particles: str
    mc_daughters_index: str
    reco_particles: str
    reco_pdg: str  # leaf with the candidate's PDG code (``type`` before EDM4hep 0.99, then ``PDG``)
    event_number: str | None
    tracks: str | None = None  # None: no lifetime variables from this file
    reco_tracks_index: str | None = None
    track_states: str | None = None
    covariance: str | None = None

    @property
    def has_tracks(self) -> bool:
        return self.tracks is not None

    def leaves(self) -> list[str]:
        mc = [f"{self.mc_particles}.{f}" for f in MC_FIELDS]
        reco = [self.reco_pdg, *(f"{self.reco_particles}.{f}" for f in RECO_FIELDS)]
        names = [*mc, self.mc_daughters_index, *reco]
        if self.has_tracks:
            names += [f"{self.reco_particles}.tracks_begin", f"{self.reco_particles}.tracks_end", self.reco_tracks_index]
            names += [f"{self.tracks}.trackStates_begin", f"{self.tracks}.trackStates_end"]
            names += [f"{self.track_states}.{f}" for f in STATE_FIELDS]
            names += [self.covariance] if self.covariance else []
        return names + ([self.event_number] if self.event_number else [])

    def describe(self) -> dict:
        """For the manifest: the generation, the collections read, whether there were tracks."""
        return {**asdict(self), "has_tracks": self.has_tracks}


@dataclass(frozen=True)
class EventChunk:
    """A contiguous range of events of one file, in the shape ingestion works on.

    ``gen``: jagged per event: PDG, generatorStatus, charge, mass, px, py, pz, energy.
    ``gen_daughters``: jagged per event and particle: daughter indices.
    ``reco``: jagged per event: type (PDG code as written), charge, mass, px, py, pz, energy,
    and d0, d0err, dz, dzerr of the candidate's track at the IP (NaN without a track).
    """

    file: Path | str  # a str for a root:// URL
    entry_start: int
    event_number: np.ndarray
    gen: ak.Array
    gen_daughters: ak.Array
    reco: ak.Array

    def __len__(self) -> int:
        return len(self.event_number)


def open_events_tree(path: str | Path):
    """Open ``path`` (or a root:// URL) and return (file, tree); clear errors for missing,
    corrupt or wrong files, and for a server that cannot be reached (taufm.remote)."""
    path = remote.as_source(path)
    if not remote.is_remote(path) and not path.exists():
        raise TaufmError(f"{path}: no such file")
    try:
        file = remote.open_root(path)
    except TaufmError:
        raise
    except Exception as err:  # uproot raises many types for damaged files
        raise TaufmError(f"{path}: not a readable ROOT file ({type(err).__name__}: {err})") from err
    try:
        tree = file[TREE_NAME]
    except Exception as err:
        if remote.is_remote(path) and isinstance(err, OSError):  # the connection, not the file
            remote.close_quietly(file, path)
            raise remote.RemoteError(f"{path}: reading the tree '{TREE_NAME}' failed: {remote.describe_error(err)}") from err
        file.close()
        raise TaufmError(f"{path}: no tree '{TREE_NAME}' (an EDM4hep file has one; found: {', '.join(file.keys()) or 'nothing'})") from err
    return file, tree


def leaf_names(tree) -> set[str]:
    """Every leaf name of ``tree`` at any depth (split class branches hold theirs one level down)."""
    return {name.split("/")[-1] for name in tree.keys(recursive=True)}


def collection_types(file, path: str | Path) -> dict[str, str]:
    """Collection name -> EDM4hep collection type from the ``podio_metadata`` tree, if it says.

    podio >= 1.3 stores, per frame category, one ``CollectionWriteInfo`` per collection
    (``events___CollectionTypeInfo`` with leaves ``.name``, ``.dataType``, ...). podio 0.16-1.2
    stores (collection ID, type, is subset, schema version) tuples there, whose members ROOT names
    ``._0`` ... ``._3``, beside an ID table (``events___idTable`` with ``m_collectionIDs`` and
    ``m_names``). A file without the tree, or with one this reader cannot decode, gives an empty
    mapping: the collections are then found by their usual names.
    """
    try:
        meta = file[METADATA_TREE]
    except Exception:
        return {}
    info = f"{TREE_NAME}___CollectionTypeInfo"
    try:
        keys = set(meta.keys(recursive=True))
        if f"{info}/{info}.name" in keys:
            names = meta[f"{info}/{info}.name"].array(entry_stop=1)[0].tolist()
            types = meta[f"{info}/{info}.dataType"].array(entry_stop=1)[0].tolist()
            return dict(zip(names, types))
        id_table = f"{TREE_NAME}___idTable"
        if f"{id_table}/m_names" in keys and f"{info}/{info}._1" in keys:
            ids = meta[f"{id_table}/m_collectionIDs"].array(entry_stop=1)[0].tolist()
            names = meta[f"{id_table}/m_names"].array(entry_stop=1)[0].tolist()
            type_branch = meta[f"{info}/{info}._1"]
            # uproot has no rule for a string member of a tuple in a vector: say how to read it.
            strings = uproot.AsObjects(uproot.containers.AsArray(True, False, uproot.containers.AsString(False)), type_branch)
            types = type_branch.array(strings, entry_stop=1)[0].tolist()
            type_ids = meta[f"{info}/{info}._0"].array(entry_stop=1)[0].tolist()
            name_of = dict(zip(ids, names))
            return {name_of[i]: t for i, t in zip(type_ids, types) if i in name_of}
    except Exception as err:  # an unexpected metadata layout is not a reason to refuse the events
        log.warning("%s: could not read the collection types in %s (%s: %s); using the usual collection names", path, METADATA_TREE, type(err).__name__, err)
    return {}


def _pick_collection(role: str, setting: str, leaves: set[str], types: Mapping[str, str], path, signature: str) -> str | None:
    """The collection to read for ``role`` (mc_particles, reco_particles, tracks), or None."""
    def present(name: str) -> bool:
        return f"{name}.{signature}" in leaves

    if setting != AUTO:
        if not present(setting):
            raise TaufmError(f"{path}: no collection '{setting}' (ingest.future.collections.{role}; no leaf {setting}.{signature})")
        return setting
    typed = [name for name, kind in types.items() if kind == COLLECTION_TYPES[role] and present(name)]
    if len(typed) == 1:
        return typed[0]
    candidates = typed or list(USUAL_NAMES[role])
    for name in USUAL_NAMES[role]:
        if name in candidates and present(name):
            return name
    if len(typed) > 1:
        raise TaufmError(f"{path}: several {COLLECTION_TYPES[role]} collections ({', '.join(typed)}): choose one with ingest.future.collections.{role}")
    return None


def resolve_layout(tree, path: str | Path, collections: CollectionNames | None = None, types: Mapping[str, str] | None = None) -> FileLayout:
    """The generation and leaves of one file; a clear error naming what is missing."""
    collections = collections or CollectionNames()
    types = types or {}
    leaves = leaf_names(tree)
    mc = _pick_collection("mc_particles", collections.mc_particles, leaves, types, path, "PDG")
    if mc is None:
        raise TaufmError(f"{path}: not an EDM4hep event file: no generator particles (tried {', '.join(USUAL_NAMES['mc_particles'])}; set ingest.future.collections.mc_particles)")
    reco = _pick_collection("reco_particles", collections.reco_particles, leaves, types, path, "energy")
    if reco is None:
        raise TaufmError(
            f"{path}: no particle-flow collection (tried {', '.join(USUAL_NAMES['reco_particles'])}; set ingest.future.collections.reco_particles)"
        )
    underscore = f"_{mc}_daughters.index"
    hashed = f"{mc}#{MC_DAUGHTERS_RELATION}.index"
    if underscore in leaves:
        style, daughters = "underscore", underscore
    elif hashed in leaves:
        style, daughters = "hash", hashed
    else:
        raise TaufmError(f"{path}: missing branch(es) {hashed} or {underscore} (the daughters of {mc})")
    if f"{reco}.PDG" in leaves:
        pdg = f"{reco}.PDG"
    elif f"{reco}.type" in leaves:
        pdg = f"{reco}.type"
    else:
        raise TaufmError(f"{path}: missing branch(es) {reco}.PDG (EDM4hep >= 0.99) or {reco}.type (older)")
    generation = "podio-0.16" if style == "hash" else ("podio-1.3" if pdg.endswith(".PDG") else "podio-0.17")
    event_number = "EventHeader.eventNumber" if "EventHeader.eventNumber" in leaves else None
    layout = FileLayout(generation=generation, mc_particles=mc, mc_daughters_index=daughters, reco_particles=reco, reco_pdg=pdg, event_number=event_number)

    if collections.tracks != NONE:
        tracks = _pick_collection("tracks", collections.tracks, leaves, types, path, "trackStates_begin")
        if tracks is not None:
            layout = _with_tracks(layout, tracks, style, leaves, path, required=collections.tracks != AUTO)
    missing = [name for name in layout.leaves() if name not in leaves]
    if missing:
        raise TaufmError(f"{path}: missing branch(es) {', '.join(missing)} ({generation} layout)")
    return layout


def _with_tracks(layout: FileLayout, tracks: str, style: str, leaves: set[str], path, required: bool) -> FileLayout:
    reco = layout.reco_particles
    if style == "underscore":
        relation, states = f"_{reco}_tracks.index", f"_{tracks}_trackStates"
    else:
        relation = f"{reco}#{RECO_TRACKS_RELATION}.index"
        # podio 0.16 numbers vector members: the track states are the one holding D0.
        numbered = sorted(name.split(".")[0] for name in leaves if name.startswith(f"{tracks}_") and name.endswith(".D0"))
        states = numbered[0] if numbered else f"{tracks}_1"
    if relation not in leaves or f"{states}.D0" not in leaves:
        if required:
            raise TaufmError(f"{path}: tracks '{tracks}' requested but missing branch(es) {relation} / {states}.D0")
        log.warning("%s: track collection %s without %s or %s.D0: reading no tracks", path, tracks, relation, states)
        return layout
    covariance = sorted(name for name in leaves if name.startswith(f"{states}.covMatrix"))
    return FileLayout(
        **{**asdict(layout), "tracks": tracks, "reco_tracks_index": relation, "track_states": states, "covariance": covariance[0] if covariance else None}
    )


def relation_lists(
    begin: ak.Array, end: ak.Array, index: ak.Array, what: str = "relation", event_number: np.ndarray | None = None, n_targets: np.ndarray | None = None
) -> ak.Array:
    """Per event, per element: the related indices, from podio's begin/end and index vector.

    Ranges outside the index vector, negative indices and (with ``n_targets``, the size of the
    related collection per event) indices past its end are errors naming ``what`` and the event.
    """
    counts = ak.to_numpy(ak.num(begin))
    events = np.arange(len(counts)) if event_number is None else np.asarray(event_number)
    element_event = np.repeat(np.arange(len(counts)), counts)
    b = ak.to_numpy(ak.flatten(begin)).astype(np.int64)
    e = ak.to_numpy(ak.flatten(end)).astype(np.int64)
    idx_counts = ak.to_numpy(ak.num(index))
    idx_start = np.repeat(np.cumsum(idx_counts) - idx_counts, counts)
    flat_index = ak.to_numpy(ak.flatten(index)).astype(np.int64)
    bad_range = (b > e) | (e > np.repeat(idx_counts, counts))
    if bad_range.any():
        raise TaufmError(f"{what}: begin/end ranges point outside their index vector (event {events[element_event[np.argmax(bad_range)]]})")
    owner, position = expand_ranges(b + idx_start, e + idx_start)
    values = flat_index[position]
    value_event = element_event[owner]
    if len(values) and values.min() < 0:
        first = int(np.argmax(values < 0))
        raise TaufmError(f"{what}: negative index {values[first]} (event {events[value_event[first]]})")
    if n_targets is not None and len(values):
        beyond = values >= np.asarray(n_targets)[value_event]
        if beyond.any():
            first = int(np.argmax(beyond))
            raise TaufmError(f"{what}: index {values[first]} past the {n_targets[value_event[first]]} elements it points into (event {events[value_event[first]]})")
    lengths = np.bincount(owner, minlength=len(b))
    return ak.unflatten(ak.unflatten(values, lengths), counts)


def _track_parameters(arrays: ak.Array, layout: FileLayout, path) -> dict[str, ak.Array]:
    """d0, dz and their errors at the IP for each reco candidate (NaN where it has no track)."""
    r = layout.reco_particles
    n_cand = ak.to_numpy(ak.num(arrays[layout.reco_pdg]))
    out = {k: np.full(int(n_cand.sum()), np.nan) for k in ("d0", "d0err", "dz", "dzerr")}
    if not layout.has_tracks:
        return {k: ak.unflatten(v, n_cand) for k, v in out.items()}
    tb = ak.to_numpy(ak.flatten(arrays[f"{r}.tracks_begin"])).astype(np.int64)
    te = ak.to_numpy(ak.flatten(arrays[f"{r}.tracks_end"])).astype(np.int64)
    event = np.repeat(np.arange(len(n_cand)), n_cand)
    track_index = arrays[layout.reco_tracks_index]
    ti_counts = ak.to_numpy(ak.num(track_index))
    ti_flat = ak.to_numpy(ak.flatten(track_index)).astype(np.int64)
    ti_start = np.cumsum(ti_counts) - ti_counts
    has = te > tb
    if np.any(te[has] > ti_counts[event[has]]):
        raise TaufmError(f"{path}: {r}.tracks_end points outside {layout.reco_tracks_index}")
    # The candidate's first track, as an index within its event's track collection.
    track_local = np.full(len(tb), -1, dtype=np.int64)
    track_local[has] = ti_flat[ti_start[event[has]] + tb[has]]

    s_begin = arrays[f"{layout.tracks}.trackStates_begin"]
    n_tracks = ak.to_numpy(ak.num(s_begin))
    track_start = np.cumsum(n_tracks) - n_tracks
    sb = ak.to_numpy(ak.flatten(s_begin)).astype(np.int64)
    se = ak.to_numpy(ak.flatten(arrays[f"{layout.tracks}.trackStates_end"])).astype(np.int64)
    states = layout.track_states
    n_states = ak.to_numpy(ak.num(arrays[f"{states}.D0"]))
    state_start = np.cumsum(n_states) - n_states
    location = ak.to_numpy(ak.flatten(arrays[f"{states}.location"]))
    track_event = np.repeat(np.arange(len(n_tracks)), n_tracks)
    if np.any(se > n_states[track_event]) or np.any(sb > se):
        raise TaufmError(f"{path}: {layout.tracks}.trackStates_begin/end point outside {states}")
    # Per track: the state at the IP if there is one, else its first state.
    owner, state = expand_ranges(sb + state_start[track_event], se + state_start[track_event])
    chosen = np.full(len(sb), -1, dtype=np.int64)
    first = np.unique(owner, return_index=True)
    chosen[first[0]] = state[first[1]]
    at_ip = location[state] == TRACK_STATE_AT_IP
    ip_first = np.unique(owner[at_ip], return_index=True)
    chosen[ip_first[0]] = state[at_ip][ip_first[1]]

    if np.any(track_local[has] >= n_tracks[event[has]]) or np.any(track_local[has] < 0):
        raise TaufmError(f"{path}: {layout.reco_tracks_index} points outside {layout.tracks}")
    cand_state = np.full(len(tb), -1, dtype=np.int64)
    cand_state[has] = chosen[track_start[event[has]] + track_local[has]]
    has &= cand_state >= 0

    d0 = ak.to_numpy(ak.flatten(arrays[f"{states}.D0"])).astype(np.float64)
    z0 = ak.to_numpy(ak.flatten(arrays[f"{states}.Z0"])).astype(np.float64)
    out["d0"][has] = d0[cand_state[has]]
    out["dz"][has] = z0[cand_state[has]]
    if layout.covariance is not None:
        flat_cov = ak.to_numpy(ak.flatten(arrays[layout.covariance], axis=None)).astype(np.float64)
        if len(flat_cov) != COVARIANCE_SIZE * len(d0):
            raise TaufmError(f"{path}: {layout.covariance} does not hold {COVARIANCE_SIZE} values per track state")
        flat_cov = flat_cov.reshape(-1, COVARIANCE_SIZE)
        # Lower triangle of the (d0, phi, omega, z0, tanLambda, time) matrix: var(d0) at 0, var(z0) at 9.
        out["d0err"][has] = np.sqrt(np.maximum(flat_cov[cand_state[has], 0], 0.0))
        out["dzerr"][has] = np.sqrt(np.maximum(flat_cov[cand_state[has], 9], 0.0))
    return {k: ak.unflatten(v, n_cand) for k, v in out.items()}


def read_layout(path: str | Path, collections: CollectionNames | None = None) -> FileLayout:
    """The layout of one file, without reading its events."""
    file, tree = open_events_tree(path)
    with file:
        return resolve_layout(tree, path, collections, collection_types(file, path))


def iterate_events(
    path: str | Path, chunk_size: int = 10_000, collections: CollectionNames | None = None, *, identity: remote.RemoteFile | None = None
) -> Iterator[tuple[FileLayout, EventChunk]]:
    """Yield (layout, chunk) for the events of one EDM4hep file, ``chunk_size`` events at a time.

    A root:// URL is streamed; a transient failure reopens it and resumes at the chunk that
    failed (:func:`taufm.remote.iterate_resuming`; ``identity``: the file as it was when the
    reading began, to refuse a file replaced in between).
    """
    path = remote.as_source(path)
    file, tree = open_events_tree(path)
    try:
        layout = resolve_layout(tree, path, collections, collection_types(file, path))
    except BaseException:
        remote.close_quietly(file, path)
        raise
    wanted = set(layout.leaves())

    def reopen():
        return open_events_tree(path)

    def chunks(tree, entry_start: int):
        # An exact-name predicate, never a glob: leaf names such as covMatrix[21] hold glob characters.
        return tree.iterate(filter_name=lambda name: name in wanted, step_size=chunk_size, entry_start=entry_start, library="ak")

    entry_start = 0  # of the chunk being read
    try:
        for entry_start, arrays in remote.iterate_resuming(path, file, tree, reopen, chunks, identity=identity):
            yield layout, _chunk(arrays, layout, path, entry_start)
            entry_start += len(arrays)
    except TaufmError:
        raise
    except Exception as err:
        raise TaufmError(f"{path}: cannot read events from entry {entry_start} ({type(err).__name__}: {err})") from err


def _chunk(arrays: ak.Array, layout: FileLayout, path: Path, entry_start: int) -> EventChunk:
    mc, r = layout.mc_particles, layout.reco_particles
    n = len(arrays)
    if layout.event_number is not None:
        event_number = ak.to_numpy(ak.flatten(arrays[layout.event_number])).astype(np.int64)
        if len(event_number) != n:
            raise TaufmError(f"{path}: {layout.event_number} must hold one value per event")
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
    n_gen = ak.to_numpy(ak.num(gen))
    if np.any(ak.to_numpy(ak.num(arrays[f"{mc}.daughters_begin"])) != n_gen):
        raise TaufmError(f"{path}: {mc}.daughters_begin does not hold one value per particle")
    daughters = relation_lists(
        arrays[f"{mc}.daughters_begin"],
        arrays[f"{mc}.daughters_end"],
        arrays[layout.mc_daughters_index],
        f"{path}: {layout.mc_daughters_index}",
        event_number=event_number,
        n_targets=n_gen,
    )

    track = _track_parameters(arrays, layout, path)
    reco = ak.zip(
        {
            "type": arrays[layout.reco_pdg],
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
