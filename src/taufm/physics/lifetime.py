"""Lifetime information of jet candidates: impact parameters signed with respect to the jet axis.

A track from the decay of a particle that flew some distance along the jet passes the beam line
on the jet's side of the primary vertex; a prompt track passes it on either side by resolution
alone. The *lifetime sign* makes that visible: positive when the track's point of closest approach
lies downstream along the jet, negative otherwise.

Conventions (EDM4hep/LCIO track states, and :mod:`taufm.sim.detector`, which writes them): the
transverse point of closest approach of a track of azimuth φ is d0·(−sin φ, cos φ), and z0 is its
z. For a track from a point displaced by L > 0 along a jet of azimuth φ_j and pseudorapidity η_j:

- d0 = L_T sin(φ_j − φ) = −L_T sin Δφ with Δφ = φ − φ_j (the shards' signed ``cand_dphi``), so
  the transverse lifetime sign is sign(−d0 · sin Δφ);
- z0 = L_T (sinh η_j − cos Δφ · sinh η), with η = η_j + Δη (Δη the
  shards' signed ``cand_deta``), so the longitudinal sign is sign(z0 · (sinh η_j − cos Δφ sinh η))
  (to first order in the track-jet angle that is sign(−z0 · Δη)).

The signed value keeps the magnitude: |d0| · sign(−d0 · sin Δφ), |dz| · sign(dz · (sinh η_j −
cos Δφ sinh η)). A track exactly along the jet axis gets sign +1. Significances are the signed
values over their errors. Candidates without a track (error <= 0, e.g. the ingestion's sentinel
0) get 0 for all four. The angles must be the signed ones (``ingest.future.signed_angles: true``):
with |Δη|, |Δφ| the sign is not the lifetime sign.

Delphes (JetClass) writes d0 = (x p_y − y p_x)/p_T, the opposite sign of LCIO's; these functions
take LCIO's convention, as the Fuτure shards hold it.
"""

from __future__ import annotations

import numpy as np

LIFETIME_QUANTITIES = ("signed_d0", "signed_dz", "signed_d0_significance", "signed_dz_significance")


def _lifetime_sign(value: np.ndarray, downstream: np.ndarray) -> np.ndarray:
    """+1 where ``value`` points downstream (value · downstream >= 0), else -1."""
    return np.where(value * downstream >= 0, 1.0, -1.0)


def signed_impact_parameters(d0, d0err, dz, dzerr, deta, dphi, jet_eta) -> dict[str, np.ndarray]:
    """The four :data:`LIFETIME_QUANTITIES` of candidates (mm and radians; arrays that
    broadcast, e.g. (jets, candidates) and ``jet_eta`` as (jets, 1)), in float64; zero where a
    candidate has no track (its d0 or dz error is not > 0, or d0 or dz is not finite)."""
    d0, d0err, dz, dzerr, deta, dphi, jet_eta = (np.asarray(a, dtype=np.float64) for a in (d0, d0err, dz, dzerr, deta, dphi, jet_eta))
    has_track = (d0err > 0) & (dzerr > 0) & np.isfinite(d0) & np.isfinite(dz)
    signed_d0 = np.abs(d0) * _lifetime_sign(-d0, np.sin(dphi))
    signed_dz = np.abs(dz) * _lifetime_sign(dz, np.sinh(jet_eta) - np.cos(dphi) * np.sinh(jet_eta + deta))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "signed_d0": signed_d0,
            "signed_dz": signed_dz,
            "signed_d0_significance": signed_d0 / d0err,
            "signed_dz_significance": signed_dz / dzerr,
        }
    return {name: np.where(has_track, values, 0.0) for name, values in out.items()}
