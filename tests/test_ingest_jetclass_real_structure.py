"""JetClass ingestion of files in the structure of the public JetClass files.

The fixtures in ``tests/fixtures/jetclass/`` (made by ``tests/fixtures/make_jetclass_fixture.py``
with ROOT) hold the same simulated jets twice: ``<process>_000.root`` with the branches, C++
types, tree name and compression of the public files (``std::vector`` branches without a counter,
labels of mixed types, float ``jet_nparticles``, ``aux_*`` truth branches), and
``<process>_000.flat.root`` as our writer stores them (counted arrays with one counter ``npart``,
bool labels). Both must ingest to the same shard, and the first must keep the public structure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from taufm import paths
from taufm.cli import main
from taufm.ingest.jetclass import ingest_jetclass_file
from taufm.sim.jetclass import LABELS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "jetclass"
PROCESS_LABEL = {"TTBar": "label_Tbqq", "ZJetsToNuNu": "label_QCD"}
N_JETS = 20

# The public files' tree, as uproot shows it (``tree.show()`` of JetClass_example_100k.root in
# notebooks/JetClass101.ipynb of github.com/jet-universe/particle_transformer): branch order,
# uproot typename and the numpy dtype it reads. Written out here, not imported from the fixture
# script, so that a change of the script that breaks the structure fails this test.
_VF, _VI = ("std::vector<float>", ">f4"), ("std::vector<int32_t>", ">i4")
_F, _B, _I = ("float", ">f4"), ("bool", "bool"), ("int32_t", ">i4")
PUBLIC_TREE = {
    "part_px": _VF,
    "part_py": _VF,
    "part_pz": _VF,
    "part_energy": _VF,
    "part_deta": _VF,
    "part_dphi": _VF,
    "part_d0val": _VF,
    "part_d0err": _VF,
    "part_dzval": _VF,
    "part_dzerr": _VF,
    "part_charge": _VF,
    "part_isChargedHadron": _VI,
    "part_isNeutralHadron": _VI,
    "part_isPhoton": _VI,
    "part_isElectron": _VI,
    "part_isMuon": _VI,
    "label_QCD": _F,
    "label_Hbb": _B,
    "label_Hcc": _B,
    "label_Hgg": _B,
    "label_H4q": _B,
    "label_Hqql": _B,
    "label_Zqq": _I,
    "label_Wqq": _I,
    "label_Tbqq": _I,
    "label_Tbl": _I,
    "jet_pt": _F,
    "jet_eta": _F,
    "jet_phi": _F,
    "jet_energy": _F,
    "jet_nparticles": _F,
    "jet_sdmass": _F,
    "jet_tau1": _F,
    "jet_tau2": _F,
    "jet_tau3": _F,
    "jet_tau4": _F,
    "aux_genpart_eta": _F,
    "aux_genpart_phi": _F,
    "aux_genpart_pid": _F,
    "aux_genpart_pt": _F,
    "aux_truth_match": _F,
}
# JetClass was written with LZ4, level 4 (postprocessing/rename.py of jet-universe/jetclass_generation).
PUBLIC_COMPRESSION = (uproot.LZ4, 4)


def real(process: str) -> Path:
    return FIXTURES / f"{process}_000.root"


def flat(process: str) -> Path:
    return FIXTURES / f"{process}_000.flat.root"


def read(shard) -> dict:
    """The shard as numpy arrays (fixed-size lists as 2-D arrays)."""
    table = pq.read_table(shard)
    out = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if hasattr(column.type, "list_size"):
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Each fixture and its flat twin ingested; the twin under the fixture's own name.

    The split and the ``file`` column depend on the file's base name, so the twin is copied to
    ``<process>_000.root`` in its own directory before ingestion.
    """
    out = tmp_path_factory.mktemp("real_structure")
    result = {}
    for process in PROCESS_LABEL:
        twin = out / "flat" / process / real(process).name
        twin.parent.mkdir(parents=True)
        shutil.copyfile(flat(process), twin)
        result[process] = {}
        for kind, path in (("real", real(process)), ("flat", twin)):
            shard = out / kind / f"{process}_000.parquet"
            manifest = ingest_jetclass_file(path, shard, sample=process, max_candidates=64)
            result[process][kind] = {"shard": shard, "manifest": manifest}
    return result


# --- The fixture keeps the public structure ----------------------------------------------------


@pytest.mark.parametrize("process", list(PROCESS_LABEL))
def test_fixture_has_the_public_branches_and_types(process):
    with uproot.open(real(process)) as file:
        assert file.keys(cycle=False) == ["tree"]
        assert (file.file.compression.__class__, file.file.compression.level) == PUBLIC_COMPRESSION
        tree = file["tree"]
        assert isinstance(tree, uproot.TTree)
        assert tree.num_entries == N_JETS
        assert tree.keys() == list(PUBLIC_TREE), "branch names or order differ from the public files"
        for name, (typename, dtype) in PUBLIC_TREE.items():
            branch = tree[name]
            assert branch.typename == typename, name
            interpretation = branch.interpretation
            if typename.startswith("std::vector"):
                # A std::vector branch: its own per-entry length, no counter branch.
                assert isinstance(interpretation, uproot.AsJagged), name
                assert interpretation.content.from_dtype == np.dtype(dtype), name
                assert branch.count_branch is None, name
            else:
                assert isinstance(interpretation, uproot.AsDtype), name
                assert interpretation.from_dtype == np.dtype(dtype), name


@pytest.mark.parametrize("process", list(PROCESS_LABEL))
def test_flat_twin_holds_the_same_jets(process):
    """The two fixture files agree value for value; only the storage differs."""
    with uproot.open(real(process)) as r, uproot.open(flat(process)) as f:
        ours, twin = r["tree"], f["tree"]
        assert "npart" in twin.keys() and "npart" not in ours.keys()
        assert twin["part_px"].count_branch is not None
        a, b = ours.arrays(), twin.arrays()
    assert len(a) == len(b) == N_JETS
    for name in PUBLIC_TREE:
        if name.startswith("aux_"):
            assert name not in b.fields  # our writer has no truth branches; the fixture made them up
            continue
        left, right = a[name], b[name]
        if name.startswith("part_"):
            np.testing.assert_array_equal(ak.num(left), ak.num(right), err_msg=name)
            left, right = ak.flatten(left), ak.flatten(right)
        np.testing.assert_array_equal(np.asarray(left).astype(np.float64), np.asarray(right).astype(np.float64), err_msg=name)
    label = PROCESS_LABEL[process]
    assert np.all(np.asarray(a[label]) == 1) and all(np.all(np.asarray(a[k]) == 0) for k in LABELS if k != label)
    np.testing.assert_array_equal(np.asarray(a.jet_nparticles), np.asarray(b.npart))


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.root")), ids=lambda p: p.name)
def test_fixture_files_stay_small(path):
    assert path.stat().st_size < 100_000


# --- Ingestion: both layouts give the same shard ------------------------------------------------


@pytest.mark.parametrize("process", list(PROCESS_LABEL))
def test_real_structure_and_flat_twin_ingest_to_equal_shards(shards, process):
    info = shards[process]
    left, right = pq.read_table(info["real"]["shard"]), pq.read_table(info["flat"]["shard"])
    assert left.schema == right.schema
    for name in left.column_names:
        assert left[name].equals(right[name]), f"column {name} differs"
    assert left.equals(right)
    strip = lambda m: {k: v for k, v in m.items() if k != "input"}  # noqa: E731 - the paths differ
    assert strip(info["real"]["manifest"]) == strip(info["flat"]["manifest"])


@pytest.mark.parametrize("process", list(PROCESS_LABEL))
def test_real_structure_rows_labels_and_counts(shards, process):
    info = shards[process]["real"]
    manifest, columns = info["manifest"], read(info["shard"])
    assert manifest["entries"] == manifest["jets"] == N_JETS
    assert manifest["label_branches"] == list(LABELS)  # float, bool and int labels all found
    assert manifest["labels"] == {k: (N_JETS if k == PROCESS_LABEL[process] else 0) for k in LABELS}
    np.testing.assert_array_equal(columns["label"], LABELS.index(PROCESS_LABEL[process]))
    assert set(columns["file"]) == {real(process).name}
    with uproot.open(real(process)) as file:
        arrays = file["tree"].arrays(["jet_nparticles", "jet_pt", "part_px", "part_py"])
    np.testing.assert_array_equal(columns["n_cand"], np.asarray(arrays.jet_nparticles).astype(np.int32))
    np.testing.assert_array_equal(columns["jet_pt"], np.asarray(arrays.jet_pt))
    leading = np.hypot(np.asarray(arrays.part_px[:, 0]), np.asarray(arrays.part_py[:, 0]))
    np.testing.assert_allclose(columns["cand_pt"][:, 0], leading, rtol=1e-6)


def test_cli_ingests_the_real_structure(tmp_path):
    output = tmp_path / "TTBar_000.parquet"
    assert main(["ingest-jetclass", str(real("TTBar")), "--sample", "TTBar", "--output", str(output)]) == 0
    assert pq.read_table(output).num_rows == N_JETS
    assert paths.manifest(output).exists()
