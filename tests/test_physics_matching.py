"""One-to-one Delta R matching: nearest partners, exclusivity, event boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from taufm.physics.matching import any_within, delta_r, match_one_to_one


def test_delta_r_wraps_phi():
    assert delta_r(0.0, 3.1, 0.0, -3.1) == pytest.approx(2 * np.pi - 6.2)


def test_two_candidates_competing_for_one_partner():
    # A0 and A1 both nearest to B0; A1 is closer, so A0 falls back to B1 if within reach.
    a_event = np.array([0, 0])
    a_eta, a_phi = np.array([0.0, 0.05]), np.array([0.0, 0.0])
    b_event = np.array([0, 0])
    b_eta, b_phi = np.array([0.06, 0.0]), np.array([0.0, 0.3])
    assert match_one_to_one(a_event, a_eta, a_phi, b_event, b_eta, b_phi, 0.4).tolist() == [1, 0]
    # Without B1 in reach, A0 stays unmatched: never two A on one B.
    assert match_one_to_one(a_event, a_eta, a_phi, b_event, b_eta, b_phi, 0.2).tolist() == [-1, 0]


def test_matching_respects_events_and_max_dr():
    a_event = np.array([0, 1, 2])
    b_event = np.array([1, 2, 2])
    eta = np.zeros(3)
    b_eta = np.array([0.0, 0.5, 0.1])
    matched = match_one_to_one(a_event, eta, np.zeros(3), b_event, b_eta, np.zeros(3), 0.4)
    assert matched.tolist() == [-1, 0, 2]


def test_greedy_equivalence_on_random_events():
    rng = np.random.default_rng(1)
    for _ in range(20):
        na, nb = rng.integers(0, 6, size=2)
        a = rng.uniform(-1, 1, size=(na, 2))
        b = rng.uniform(-1, 1, size=(nb, 2))
        got = match_one_to_one(np.zeros(na, int), a[:, 0], a[:, 1], np.zeros(nb, int), b[:, 0], b[:, 1], 0.8)
        # Reference: greedy in increasing Delta R over all pairs.
        pairs = sorted((delta_r(a[i, 0], a[i, 1], b[j, 0], b[j, 1]), i, j) for i in range(na) for j in range(nb))
        want, used = [-1] * na, set()
        for dr, i, j in pairs:
            if dr < 0.8 and want[i] < 0 and j not in used:
                want[i] = j
                used.add(j)
        assert got.tolist() == want


def test_any_within():
    near = any_within(np.array([0, 0, 1]), np.array([0.0, 1.0, 0.0]), np.zeros(3), np.array([0, 1]), np.array([0.1, 2.0]), np.zeros(2), 0.4)
    assert near.tolist() == [True, False, False]
