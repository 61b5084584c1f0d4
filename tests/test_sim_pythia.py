"""The generator record: Pythia's pointers turned into consistent parent/daughter relations."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from taufm.sim.ee import EE_SAMPLES, ee_beam_settings
from taufm.sim.pythia import STATUS_DECAYED, STATUS_FINAL, generate_record, make_pythia
from taufm.errors import TaufmError


@pytest.fixture(scope="module")
def qq_record():
    pythia = make_pythia(ee_beam_settings(380.0) + EE_SAMPLES["qq"], seed=3)
    return generate_record(pythia, 50)


def _pairs(lists: ak.Array) -> set[tuple[int, int, int]]:
    out = set()
    for event, per_particle in enumerate(ak.to_list(lists)):
        for i, related in enumerate(per_particle):
            out.update((event, i, j) for j in related)
    return out


def test_parent_and_daughter_relations_are_mirror_images(qq_record):
    daughters = _pairs(qq_record.daughters)
    parents_of = {(e, j, i) for (e, i, j) in _pairs(qq_record.parents)}  # (event, parent, child)
    assert daughters, "a q qbar event has a decay tree"
    assert daughters == parents_of


def test_every_final_particle_descends_from_the_beams(qq_record):
    """Walking parents up from any particle reaches a beam (generatorStatus 4): no broken link."""
    for event in range(5):
        parents = ak.to_list(qq_record.parents[event])
        status = ak.to_numpy(qq_record.particles.generatorStatus[event])
        for start in np.flatnonzero(status == STATUS_FINAL):
            seen, frontier = set(), [int(start)]
            while frontier:
                i = frontier.pop()
                if i in seen:
                    continue
                seen.add(i)
                frontier.extend(parents[i])
            assert any(status[i] == 4 for i in seen)


def test_energy_momentum_and_charge_are_conserved(qq_record):
    p = qq_record.particles
    final = p[p.generatorStatus == STATUS_FINAL]
    np.testing.assert_allclose(ak.to_numpy(ak.sum(final.energy, axis=1)), 380.0, rtol=1e-6)
    for component in ("px", "py", "pz"):
        np.testing.assert_allclose(ak.to_numpy(ak.sum(final[component], axis=1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(ak.sum(final.charge, axis=1)), 0.0, atol=1e-5)


def test_decayed_hadrons_end_where_their_daughters_start(qq_record):
    p = qq_record.particles
    for event in range(5):
        status = ak.to_numpy(p.generatorStatus[event])
        daughters = ak.to_list(qq_record.daughters[event])
        decayed = np.flatnonzero(status == STATUS_DECAYED)
        assert len(decayed) > 0
        for i in decayed:
            first = daughters[i][0]
            for axis in "xyz":
                assert p[f"e{axis}"][event][i] == pytest.approx(p[f"v{axis}"][event][first])


def test_pythia_rejects_a_bad_setting():
    with pytest.raises(TaufmError, match="NoSuchSetting"):
        make_pythia(["NoSuchSetting:foo = on"], seed=1)
