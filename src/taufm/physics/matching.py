"""One-to-one angular matching of two flat collections, event by event, without Python loops.

Each pair closer than ``max_dr`` is a candidate. Pairs are accepted in rounds: a pair is taken
when each side is the other's nearest remaining partner; both are then removed. The globally
closest pair is always mutual, so every round accepts at least one pair, and the result equals
greedy matching in increasing Delta R (ties broken by index).
"""

from __future__ import annotations

import numpy as np

from taufm.arrays import expand_ranges


def delta_r(eta1, phi1, eta2, phi2) -> np.ndarray:
    dphi = (phi1 - phi2 + np.pi) % (2.0 * np.pi) - np.pi
    return np.hypot(eta1 - eta2, dphi)


def _starts(event: np.ndarray, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(event, minlength=n_events)
    return np.cumsum(counts) - counts, counts


def match_one_to_one(
    a_event: np.ndarray,
    a_eta: np.ndarray,
    a_phi: np.ndarray,
    b_event: np.ndarray,
    b_eta: np.ndarray,
    b_phi: np.ndarray,
    max_dr: float,
) -> np.ndarray:
    """For each element of A, the index of its matched element of B, or -1.

    Both collections are flat and sorted by event number (``*_event``).
    """
    a_event = np.asarray(a_event, dtype=np.int64)
    b_event = np.asarray(b_event, dtype=np.int64)
    match = np.full(len(a_event), -1, dtype=np.int64)
    if len(a_event) == 0 or len(b_event) == 0:
        return match
    if np.any(np.diff(a_event) < 0) or np.any(np.diff(b_event) < 0):
        raise ValueError("collections must be sorted by event")
    n_events = int(max(a_event.max(), b_event.max())) + 1
    b_start, b_count = _starts(b_event, n_events)
    ia, ib = expand_ranges(b_start[a_event], b_start[a_event] + b_count[a_event])
    dr = delta_r(a_eta[ia], a_phi[ia], b_eta[ib], b_phi[ib])
    keep = dr < max_dr
    ia, ib, dr = ia[keep], ib[keep], dr[keep]
    while len(ia):
        by_a = np.lexsort((ib, dr, ia))
        first_a = np.concatenate([[True], ia[by_a][1:] != ia[by_a][:-1]])
        best_b = np.full(len(a_event), -1, dtype=np.int64)
        best_b[ia[by_a][first_a]] = ib[by_a][first_a]
        by_b = np.lexsort((ia, dr, ib))
        first_b = np.concatenate([[True], ib[by_b][1:] != ib[by_b][:-1]])
        best_a = np.full(len(b_event), -1, dtype=np.int64)
        best_a[ib[by_b][first_b]] = ia[by_b][first_b]
        mutual = (best_b[ia] == ib) & (best_a[ib] == ia)
        match[ia[mutual]] = ib[mutual]
        taken_b = np.zeros(len(b_event), dtype=bool)
        taken_b[ib[mutual]] = True
        remaining = (match[ia] < 0) & ~taken_b[ib]
        ia, ib, dr = ia[remaining], ib[remaining], dr[remaining]
    return match


def any_within(
    a_event: np.ndarray, a_eta: np.ndarray, a_phi: np.ndarray, b_event: np.ndarray, b_eta: np.ndarray, b_phi: np.ndarray, max_dr: float
) -> np.ndarray:
    """For each element of A: is any element of B (same event) closer than ``max_dr``?"""
    a_event = np.asarray(a_event, dtype=np.int64)
    b_event = np.asarray(b_event, dtype=np.int64)
    near = np.zeros(len(a_event), dtype=bool)
    if len(a_event) == 0 or len(b_event) == 0:
        return near
    n_events = int(max(a_event.max(), b_event.max())) + 1
    b_start, b_count = _starts(b_event, n_events)
    ia, ib = expand_ranges(b_start[a_event], b_start[a_event] + b_count[a_event])
    close = delta_r(a_eta[ia], a_phi[ia], b_eta[ib], b_phi[ib]) < max_dr
    near[ia[close]] = True
    return near
