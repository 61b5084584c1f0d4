"""The EDM4hep reader: collection names from the settings, leaf names that look like globs,
files without tracks, and the layout each file is resolved to."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from taufm.errors import TaufmError
from taufm.ingest.edm4hep import CollectionNames, read_layout
from taufm.ingest.ee import EEIngestSettings, ingest_ee_file
from taufm.ingest.shards import LIFETIME_FEATURES

from .edm4hep_events import KNOWN_EVENTS, rewrite_events, write_events
from .edm4hep_events import assert_same_rows as assert_same_columns

LIFETIME_COLUMNS = [f"cand_{name}" for name in LIFETIME_FEATURES]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The hand-built events as we write them, and their shard. (Files compared with it are
    named events.root too: the file name enters the shard and its train/val/test split.)"""
    d = tmp_path_factory.mktemp("reference")
    write_events(d / "events.root", [make() for make in KNOWN_EVENTS])
    ingest_ee_file(d / "events.root", d / "events.parquet", sample="test")
    return d, pq.read_table(d / "events.parquet").to_pydict()


@pytest.mark.parametrize("name", ["MC[x]Particles", "MCParticles*", "MC?Particles", "Gen[!a-z]*?"])
def test_collection_names_with_glob_characters_are_read_as_they_are(tmp_path, reference, name):
    # A digit in brackets is left out here: uproot's writer would make it an array dimension. The
    # real case, a split covMatrix[21] leaf, is read in test_ingest_podio_fixtures.py.
    d, expected = reference
    rewrite_events(d / "events.root", tmp_path / "events.root", rename={"MCParticles": name, "MergedRecoParticles": f"Reco{name}"})
    settings = EEIngestSettings(collections=CollectionNames(mc_particles=name, reco_particles=f"Reco{name}"))
    manifest = ingest_ee_file(tmp_path / "events.root", tmp_path / "events.parquet", sample="test", settings=settings)
    assert manifest["layout"]["mc_particles"] == name and manifest["layout"]["mc_daughters_index"] == f"{name}#1.index"
    assert_same_columns(pq.read_table(tmp_path / "events.parquet").to_pydict(), expected)


def test_collection_names_come_from_the_settings(tmp_path, reference):
    d, expected = reference
    rewrite_events(d / "events.root", tmp_path / "events.root", rename={"MergedRecoParticles": "TightSelectedPandoraPFOs", "SiTracks_Refitted": "MyTracks"})
    with pytest.raises(TaufmError, match="events.root: no particle-flow collection.*ingest.future.collections.reco_particles"):
        read_layout(tmp_path / "events.root")
    collections = CollectionNames(reco_particles="TightSelectedPandoraPFOs", tracks="MyTracks")
    layout = read_layout(tmp_path / "events.root", collections)
    assert (layout.reco_particles, layout.tracks, layout.track_states) == ("TightSelectedPandoraPFOs", "MyTracks", "MyTracks_1")
    ingest_ee_file(tmp_path / "events.root", tmp_path / "out.parquet", sample="test", settings=EEIngestSettings(collections=collections))
    assert_same_columns(pq.read_table(tmp_path / "out.parquet").to_pydict(), expected)


def test_a_named_collection_that_is_not_there_is_an_error(tmp_path, reference):
    d, _ = reference
    with pytest.raises(TaufmError, match=r"events.root: no collection 'SiTracks'.*collections.tracks"):
        read_layout(d / "events.root", CollectionNames(tracks="SiTracks"))
    with pytest.raises(TaufmError, match="unknown ingest.future.collections setting.*mc_particle"):
        EEIngestSettings.from_mapping({"collections": {"mc_particle": "MCParticles"}})
    with pytest.raises(TaufmError, match="only 'tracks' can be 'none'"):
        EEIngestSettings.from_mapping({"collections": {"reco_particles": "none"}})


@pytest.mark.parametrize("generation", ["podio-0.16", "podio-1.3"])
def test_a_file_without_tracks_gives_sentinel_lifetimes_and_says_so(tmp_path, reference, generation):
    _, expected = reference
    write_events(tmp_path / "events.root", [make() for make in KNOWN_EVENTS], generation=generation, with_tracks=False)
    settings = EEIngestSettings(lifetime_sentinel=-999.0)
    manifest = ingest_ee_file(tmp_path / "events.root", tmp_path / "no_tracks.parquet", sample="test", settings=settings)
    assert manifest["layout"]["has_tracks"] is False and manifest["layout"]["tracks"] is None
    table = pq.read_table(tmp_path / "no_tracks.parquet").to_pydict()
    assert_same_columns(table, expected, ignore=LIFETIME_COLUMNS)
    for column in LIFETIME_COLUMNS:
        values = np.asarray(table[column])
        mask = np.asarray(table["cand_mask"])
        assert np.all(values[mask] == -999.0), column


def test_tracks_none_reads_no_tracks_even_where_there_are(tmp_path, reference):
    d, expected = reference
    settings = EEIngestSettings(collections=CollectionNames(tracks="none"))
    manifest = ingest_ee_file(d / "events.root", tmp_path / "out.parquet", sample="test", settings=settings)
    assert manifest["layout"]["has_tracks"] is False
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert_same_columns(table, expected, ignore=LIFETIME_COLUMNS)
    assert not np.any(np.asarray(table["cand_d0"]))
