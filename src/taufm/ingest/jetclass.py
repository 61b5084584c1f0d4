"""JetClass ROOT files -> one Parquet shard of jets with padded candidate features.

A JetClass file (H. Qu et al., arXiv:2202.03772; ours from :mod:`taufm.sim.jetclass`) already
holds one jet per entry of tree ``tree``; ingestion only turns its branches into the shared shard
layout of :mod:`taufm.ingest.shards` (SPEC §2, §4): jet scalars, the one-hot label as an index
into :data:`taufm.sim.jetclass.LABELS`, a hash-based split, and per-candidate features sorted by
decreasing pT, truncated to ``max_candidates`` and zero padded with a mask.

Both storages of the per-candidate ``part_*`` branches are read alike: the ``std::vector<float>``
and ``std::vector<int>`` branches of the public files (no counter branch; LZ4 compressed), and
the counted arrays our writer makes with uproot (one counter branch ``npart``, not read). Label
branches may be ``bool``, ``int`` or ``float`` (the public files mix the three) and
``jet_nparticles`` is a float there; other branches (the public files' ``aux_*`` truth) are not
read. ``tests/fixtures/jetclass/`` holds one set of jets in both storages.

The file is read in chunks of ``chunk_size`` entries and every step works on whole chunks (no
Python loop per jet). Jets that cannot be used (non-finite inputs, no candidates) are skipped and
counted in the manifest's cutflow; anything that makes the file itself untrustworthy (missing
tree or branch, unreadable bytes, labels that are not one-hot, inconsistent candidate counts) is
a :class:`~taufm.errors.TaufmError` naming the file, raised before anything is written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from taufm import remote
from taufm.config import config_hash
from taufm.errors import TaufmError
from taufm.ingest.shards import (
    CANDIDATE_COLUMNS,
    CANDIDATE_FEATURES,
    LIFETIME_FEATURES,
    MASK_COLUMN,
    SCHEMA_VERSION,
    SPLITS,
    assign_split,
    ShardWriter,
    pad_candidates,
)
from taufm.progress import Progress
from taufm.sim.jetclass import LABELS

log = logging.getLogger(__name__)

TREE_NAME = "tree"
# SPEC §2: the branches ingestion reads (labels are found by their ``label_`` prefix).
MOMENTUM_BRANCHES = ("part_px", "part_py", "part_pz", "part_energy")
# Candidate flag features (shards.CANDIDATE_FEATURES names) and the branches they come from.
FLAG_BRANCHES = {
    "isElectron": "part_isElectron",
    "isMuon": "part_isMuon",
    "isPhoton": "part_isPhoton",
    "isChargedHadron": "part_isChargedHadron",
    "isNeutralHadron": "part_isNeutralHadron",
}
# Lifetime features (shards.LIFETIME_FEATURES names) and their branches.
LIFETIME_BRANCHES = {"d0": "part_d0val", "d0err": "part_d0err", "dz": "part_dzval", "dzerr": "part_dzerr"}
PARTICLE_BRANCHES = (
    *MOMENTUM_BRANCHES,
    "part_deta",
    "part_dphi",
    "part_charge",
    *FLAG_BRANCHES.values(),
    *LIFETIME_BRANCHES.values(),
)
# Jet scalars copied to the shard as they are (jet_mass is computed from the four-momentum).
JET_BRANCHES = (
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_energy",
    "jet_sdmass",
    "jet_tau1",
    "jet_tau2",
    "jet_tau3",
    "jet_tau4",
)
JET_COLUMNS = (*JET_BRANCHES[:4], "jet_mass", *JET_BRANCHES[4:])
NPARTICLES_BRANCH = "jet_nparticles"
REQUIRED_BRANCHES = (*PARTICLE_BRANCHES, *JET_BRANCHES, NPARTICLES_BRANCH)
LABEL_PREFIX = "label_"

# Cutflow steps, in order; each step's jets_in is the previous step's jets_out.
CUTS = ("read", "finite_momenta", "finite_features", "has_candidates", "written")

DEFAULT_SPLIT_RATIOS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


def _check_settings(sample, max_candidates, lifetime_sentinel, split_ratios, chunk_size) -> dict[str, float]:
    """Validate the arguments; return the split ratios as a plain dict in SPLITS order."""
    if not isinstance(sample, str) or not sample:
        raise TaufmError(f"the sample name must be a non-empty string, got {sample!r}")
    for name, value in (("max_candidates", max_candidates), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise TaufmError(f"{name} must be a positive integer, got {value!r}")
    is_number = isinstance(lifetime_sentinel, (int, float, np.number)) and not isinstance(lifetime_sentinel, bool)
    if not (is_number and math.isfinite(lifetime_sentinel)):
        raise TaufmError(f"lifetime_sentinel must be a finite number, got {lifetime_sentinel!r}")
    unknown = set(split_ratios) - set(SPLITS)
    missing = set(SPLITS) - set(split_ratios)
    if unknown or missing:
        raise TaufmError(f"split ratios need exactly the keys {list(SPLITS)}, got {sorted(split_ratios)}")
    ratios = {s: float(split_ratios[s]) for s in SPLITS}
    assign_split(sample, "", np.zeros(0, dtype=np.int64), ratios)  # validates the values
    return ratios


def _open_tree(path: Path | str):
    """Open ``path`` (or a root:// URL) and return (file, tree), with every failure as a
    TaufmError naming the file."""
    if not remote.is_remote(path):
        if not path.exists():
            raise TaufmError(f"JetClass file {path} does not exist")
        if not path.is_file():
            raise TaufmError(f"JetClass input {path} is not a file")
    try:
        file = remote.open_root(path)
    except TaufmError:
        raise
    except Exception as err:  # uproot raises many types for bad bytes; all mean "not a readable ROOT file"
        raise TaufmError(f"cannot read JetClass file {path} as ROOT: {type(err).__name__}: {err}") from err
    try:
        try:
            tree = file[TREE_NAME]
        except KeyError as err:
            keys = ", ".join(file.keys()) or "none"
            raise TaufmError(f"JetClass file {path} has no tree {TREE_NAME!r} (keys: {keys})") from err
        except Exception as err:
            raise TaufmError(f"cannot read tree {TREE_NAME!r} of JetClass file {path}: {type(err).__name__}: {err}") from err
        if not isinstance(tree, uproot.TTree):
            raise TaufmError(f"{TREE_NAME!r} in JetClass file {path} is a {type(tree).__name__}, not a TTree")
    except BaseException:
        file.close()
        raise
    return file, tree


def _label_branches(path: Path, branches: set[str]) -> list[str]:
    """The file's ``label_*`` branches in LABELS order; unknown label names are an error."""
    present = sorted(b for b in branches if b.startswith(LABEL_PREFIX))
    unknown = [b for b in present if b not in LABELS]
    if unknown:
        raise TaufmError(f"JetClass file {path}: unknown label branch(es) {', '.join(unknown)}; known: {', '.join(LABELS)}")
    if not present:
        known = ", ".join(LABELS)
        raise TaufmError(f"JetClass file {path}: tree {TREE_NAME!r} has no label_* branch (expected some of {known})")
    return [label for label in LABELS if label in present]


def _check_branches(path: Path, tree) -> list[str]:
    """Fail on missing SPEC branches; return the label branches to read."""
    branches = set(tree.keys())
    missing = [b for b in REQUIRED_BRANCHES if b not in branches]
    if missing:
        hint = ""
        if set(missing) & set(LIFETIME_BRANCHES.values()):
            hint = " (a JetClass file written before the lifetime variables were added?)"
        raise TaufmError(f"JetClass file {path}: tree {TREE_NAME!r} lacks branch(es) {', '.join(missing)}{hint}")
    return _label_branches(path, branches)


def _chunks(path: Path | str, file, tree, branches: list[str], chunk_size: int, identity: remote.RemoteFile | None = None) -> Iterator[tuple[int, ak.Array]]:
    """(first entry, arrays) per chunk; read failures become TaufmErrors naming the file.

    A root:// URL is streamed; a transient failure reopens it and resumes at the chunk that
    failed (:func:`taufm.remote.iterate_resuming`).
    """

    def reopen():
        return _open_tree(path)

    def iterate(tree, entry_start: int):
        return tree.iterate(branches, step_size=chunk_size, entry_start=entry_start, library="ak")

    iterator = remote.iterate_resuming(path, file, tree, reopen, iterate, identity=identity)
    while True:
        try:
            first_entry, arrays = next(iterator)
        except StopIteration:
            return
        except TaufmError:
            raise
        except Exception as err:  # corrupt or truncated baskets surface as many exception types
            raise TaufmError(f"cannot read tree {TREE_NAME!r} of JetClass file {path}: {type(err).__name__}: {err}") from err
        yield first_entry, arrays


def _flat(path: Path, arrays: ak.Array, name: str, counts: np.ndarray, first_entry: int) -> np.ndarray:
    """One jagged ``part_*`` branch as a flat float64 array, checked against the jets' counts."""
    column = arrays[name]
    if column.ndim != 2:
        raise TaufmError(f"JetClass file {path}: branch {name} is not a per-candidate (jagged) branch")
    n = ak.to_numpy(ak.num(column, axis=1))
    if not np.array_equal(n, counts):
        bad = int(np.flatnonzero(n != counts)[0])
        raise TaufmError(
            f"JetClass file {path}: branch {name} has {n[bad]} values at entry {first_entry + bad}, "
            f"{MOMENTUM_BRANCHES[0]} has {counts[bad]}"
        )
    return ak.to_numpy(ak.flatten(column)).astype(np.float64)


def _scalar(path: Path, arrays: ak.Array, name: str) -> np.ndarray:
    column = arrays[name]
    if column.ndim != 1:
        raise TaufmError(f"JetClass file {path}: branch {name} is not a per-jet (scalar) branch")
    return ak.to_numpy(column).astype(np.float64)


def _labels(path: Path, arrays: ak.Array, label_branches: list[str], first_entry: int) -> np.ndarray:
    """Index into LABELS of each jet's one-hot label; anything not exactly one-hot is an error."""
    values = np.stack([_scalar(path, arrays, b) for b in label_branches], axis=1)
    one_hot = np.all((values == 0) | (values == 1), axis=1) & (values.sum(axis=1) == 1)
    if not one_hot.all():
        bad = int(np.flatnonzero(~one_hot)[0])
        shown = ", ".join(f"{b}={v:g}" for b, v in zip(label_branches, values[bad]) if v != 0) or "all zero"
        raise TaufmError(f"JetClass file {path}: labels of entry {first_entry + bad} are not one-hot ({shown})")
    index = np.array([LABELS.index(b) for b in label_branches], dtype=np.int8)
    return index[np.argmax(values, axis=1)]


def jet_eta_sign(jet_eta: np.ndarray) -> np.ndarray:
    """+1 for jets with eta > 0, else -1: JetClass's part_deta is (eta - eta_jet) times this."""
    return np.where(np.asarray(jet_eta) > 0, 1.0, -1.0)


def _process_chunk(
    path: Path, arrays: ak.Array, first_entry: int, label_branches: list[str], settings: Mapping, basename: str
) -> tuple[dict, dict]:
    """Columns of the jets kept from one chunk, and the chunk's cutflow counts."""
    n_jets = len(arrays)
    entry = first_entry + np.arange(n_jets, dtype=np.int64)
    counts = ak.to_numpy(ak.num(arrays[MOMENTUM_BRANCHES[0]], axis=1)).astype(np.int64)
    part = {b: _flat(path, arrays, b, counts, first_entry) for b in PARTICLE_BRANCHES}
    jet = {b: _scalar(path, arrays, b) for b in JET_BRANCHES}
    labels = _labels(path, arrays, label_branches, first_entry)

    nparticles = _scalar(path, arrays, NPARTICLES_BRANCH)
    if not np.array_equal(nparticles, counts):
        bad = int(np.flatnonzero(nparticles != counts)[0])
        raise TaufmError(
            f"JetClass file {path}: entry {first_entry + bad} has {NPARTICLES_BRANCH} = {nparticles[bad]:g} "
            f"but {counts[bad]} candidates"
        )

    # Candidate features, flat over the chunk (float64 for the arithmetic, float32 on output).
    px, py, pz, energy = (part[b] for b in MOMENTUM_BRANCHES)
    pt = np.hypot(px, py)
    with np.errstate(invalid="ignore", over="ignore"):
        mass = np.sqrt(np.maximum(energy**2 - (px**2 + py**2 + pz**2), 0.0))
    charge = part["part_charge"]
    charged = charge != 0
    # JetClass stores part_deta signed along the jet's eta direction, (eta - eta_jet) times the
    # sign of eta_jet (its makeNtuples.C); the shards hold eta - eta_jet, as the e+e- shards do.
    deta = part["part_deta"] * jet_eta_sign(jet["jet_eta"])[np.repeat(np.arange(n_jets), counts)]
    dphi = part["part_dphi"]
    if not settings["signed_angles"]:
        deta, dphi = np.abs(deta), np.abs(dphi)
    features = {"pt": pt, "mass": mass, "deta": deta, "dphi": dphi, "charge": charge}
    features |= {f: (part[b] != 0).astype(np.float64) for f, b in FLAG_BRANCHES.items()}
    features |= {f: np.where(charged, part[b], settings["lifetime_sentinel"]) for f, b in LIFETIME_BRANCHES.items()}

    # Jet four-momentum mass: |p| = pT cosh(eta).
    with np.errstate(invalid="ignore", over="ignore"):
        p_jet = jet["jet_pt"] * np.cosh(jet["jet_eta"])
        jet_mass = np.sqrt(np.maximum(jet["jet_energy"] ** 2 - p_jet**2, 0.0))

    # Cuts, each on whole arrays; a jet is flagged by any bad candidate it holds.
    jet_of = np.repeat(np.arange(n_jets), counts)
    momenta_finite = np.isfinite(px) & np.isfinite(py) & np.isfinite(pz) & np.isfinite(energy)
    bad_momenta = np.zeros(n_jets, dtype=bool)
    bad_momenta[jet_of[~momenta_finite]] = True
    features_finite = np.logical_and.reduce([np.isfinite(v) for v in features.values()])
    bad_features = np.zeros(n_jets, dtype=bool)
    bad_features[jet_of[~features_finite]] = True
    bad_features |= ~np.logical_and.reduce([np.isfinite(v) for v in (*jet.values(), jet_mass)])

    cut_masks = {
        "finite_momenta": ~bad_momenta,
        "finite_features": ~bad_features,
        "has_candidates": counts > 0,
    }
    cutflow = {"read": n_jets}
    keep = np.ones(n_jets, dtype=bool)
    for cut, passed in cut_masks.items():
        keep &= passed
        cutflow[cut] = int(keep.sum())

    # Candidates of kept jets -> sorted, truncated, padded columns.
    kept_counts = counts[keep]
    per_candidate = ak.unflatten(
        ak.zip({f: values[keep[jet_of]] for f, values in features.items()}, depth_limit=1),
        kept_counts,
    )
    max_candidates = settings["max_candidates"]
    if len(kept_counts):
        padded, mask, n_cand = pad_candidates(per_candidate, max_candidates, sort_by="pt")
    else:
        padded = {f: np.zeros((0, max_candidates), dtype=np.float32) for f in features}
        mask = np.zeros((0, max_candidates), dtype=bool)
        n_cand = np.zeros(0, dtype=np.int32)

    n_kept = int(keep.sum())
    columns: dict[str, np.ndarray] = {
        "sample": np.full(n_kept, settings["sample"]),
        "file": np.full(n_kept, basename),
        "entry": entry[keep],
        "split": assign_split(settings["sample"], basename, entry[keep], settings["split_ratios"]),
    }
    jet_values = jet | {"jet_mass": jet_mass}
    columns |= {c: jet_values[c][keep].astype(np.float32) for c in JET_COLUMNS}
    columns["label"] = labels[keep]
    columns["n_cand"] = n_cand.astype(np.int32)
    for feature, column in zip((*CANDIDATE_FEATURES, *LIFETIME_FEATURES), CANDIDATE_COLUMNS):
        columns[column] = padded[feature].astype(np.float32)
    columns[MASK_COLUMN] = mask
    return columns, cutflow


def ingest_jetclass_file(
    path: str | Path,
    output: str | Path,
    *,
    sample: str,
    max_candidates: int = 128,
    signed_angles: bool = True,
    lifetime_sentinel: float = 0.0,
    split_ratios: Mapping[str, float] = DEFAULT_SPLIT_RATIOS,
    chunk_size: int = 20000,
    config: Mapping | None = None,
) -> dict:
    """Ingest one JetClass ROOT file into one Parquet shard at ``output``; return its manifest.

    One row per jet that passes the cutflow (finite inputs, at least one candidate). The split
    depends only on (``sample``, file base name, entry), so a jet keeps its split however the
    files are grouped. ``signed_angles=False`` stores |Δη|, |Δφ| as the reference code does.
    ``lifetime_sentinel`` replaces d0, dz and their errors for neutral (charge 0) candidates.
    ``chunk_size`` bounds the entries held in memory while reading; it does not change the output.
    """
    path = remote.as_source(path)
    ratios = _check_settings(sample, max_candidates, lifetime_sentinel, split_ratios, chunk_size)
    settings = {
        "sample": sample,
        "tree": TREE_NAME,
        "max_candidates": int(max_candidates),
        "signed_angles": bool(signed_angles),
        "lifetime_sentinel": float(lifetime_sentinel),
        "split_ratios": ratios,
    }
    basename = remote.file_name(path)
    remote_file = remote.stat(path, checksum=True) if remote.is_remote(path) else None

    file, tree = _open_tree(path)
    with file:
        label_branches = _check_branches(path, tree)
        n_entries = int(tree.num_entries)
        if n_entries == 0:
            raise TaufmError(f"JetClass file {path}: tree {TREE_NAME!r} has no entries")
        totals = dict.fromkeys(CUTS[:-1], 0)
        split_counts = np.zeros(len(SPLITS), dtype=np.int64)
        label_counts = np.zeros(len(LABELS), dtype=np.int64)
        truncated = 0
        branches = [*REQUIRED_BRANCHES, *label_branches]
        # Each chunk is processed and written before the next is read: memory stays bounded.
        with ShardWriter(output) as writer, Progress(f"ingest {basename}", n_entries, unit="jet") as progress:
            for first_entry, arrays in _chunks(path, file, tree, branches, int(chunk_size), remote_file):
                columns, chunk_cutflow = _process_chunk(path, arrays, first_entry, label_branches, settings, basename)
                writer.write(columns)
                progress.update(len(arrays))
                for cut, n in chunk_cutflow.items():
                    totals[cut] += n
                split_counts += np.bincount(columns["split"], minlength=len(SPLITS))
                label_counts += np.bincount(columns["label"], minlength=len(LABELS))
                truncated += int(np.count_nonzero(columns["n_cand"] > max_candidates))
                log.info("%s: entries %d-%d, %d jets kept", path, first_entry, first_entry + len(arrays), len(columns["entry"]))
            if totals["read"] != n_entries:
                raise TaufmError(f"JetClass file {path}: read {totals['read']} entries, the tree declares {n_entries}")
            totals["written"] = writer.rows
            cutflow = []
            jets_in = n_entries
            for cut in CUTS:
                cutflow.append({"objects": "jets", "cut": cut, "in": jets_in, "out": totals[cut]})
                jets_in = totals[cut]
            if writer.rows == 0:
                log.warning("%s: no jet passed the cuts: the shard is empty", path)
            writer.manifest = {
                "stage": "ingest_jetclass",
                "schema_version": SCHEMA_VERSION,
                "input": str(path),
                # a root:// input: what was read (a local input is tracked by Snakemake's mtime)
                **({"remote_input": remote_file.describe()} if remote_file else {}),
                "file": basename,
                "sample": sample,
                "tree": TREE_NAME,
                "entries": n_entries,
                "jets": writer.rows,
                **({"warnings": ["no jet passed the cuts: the shard is empty (see the cutflow)"]} if writer.rows == 0 else {}),
                "cutflow": cutflow,
                "jets_per_split": {s: int(split_counts[i]) for i, s in enumerate(SPLITS)},
                "label_branches": label_branches,
                "label_order": list(LABELS),  # the shard's label column indexes this list
                "labels": {label: int(label_counts[LABELS.index(label)]) for label in label_branches},
                "max_candidates": int(max_candidates),
                "truncated_jets": truncated,
                "chunk_size": int(chunk_size),
                "settings": settings,
                "settings_hash": config_hash(settings),
                **({"config": dict(config)} if config is not None else {}),
            }
    log.info("%s -> %s: %d of %d jets written", path, output, writer.rows, n_entries)
    return dict(writer.manifest)
