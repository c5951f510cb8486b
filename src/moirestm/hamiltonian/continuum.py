"""Low-energy observables of the tight-binding model and their continuum (Bistritzer-MacDonald) estimates."""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import quad
from scipy.special import j0

from ..constants import GRAPHENE_LATTICE_NM
from .magic import central_band_energies
from .slater_koster import SlaterKoster
from .tightbinding import TightBinding


def dirac_velocity_ev_nm(tb: TightBinding, k_point_nm, n_central: int = 2, dk_nm: float = 1e-3,
                         n_directions: int = 6) -> float:
    """Dirac velocity hbar*v in eV nm from the splitting of the central bands around ``k_point_nm``.

    Averages (mean of upper half - mean of lower half) / (2 dk) over ``n_directions`` directions,
    which removes cone tilt and trigonal warping at first order.
    """
    angles = np.arange(n_directions) * 2 * np.pi / n_directions + 0.1
    k = np.asarray(k_point_nm) + dk_nm * np.column_stack([np.cos(angles), np.sin(angles)])
    e = central_band_energies(tb, k, n_central)
    half = n_central // 2
    return float(np.mean((e[:, half:].mean(axis=1) - e[:, :half].mean(axis=1)) / (2 * dk_nm)))


def analytic_monolayer_velocity_ev_nm(params: SlaterKoster) -> float:
    """hbar*v = (3 a0 / 2) |t1 - 2 t3| from the first and third hopping shells (second shell is diagonal)."""
    a0 = params.bond_nm
    t1, t3 = params.hopping(np.array([[a0, 0.0, 0.0], [2 * a0, 0.0, 0.0]]))
    if 2 * a0 > params.cutoff_nm:
        t3 = 0.0
    return float(1.5 * a0 * abs(t1 - 2 * t3))


def bm_interlayer_coupling_ev(params: SlaterKoster, distance_nm: float,
                              lattice_constant_nm: float = GRAPHENE_LATTICE_NM) -> float:
    """Bistritzer-MacDonald coupling w = t_perp(q = K) / A_cell of the same Slater-Koster model.

    w = (2 pi / A_c) int_0^rmax r t(sqrt(r^2 + d^2)) J0(K r) dr, A_c = sqrt(3) a^2 / 2, K = 4 pi / (3a),
    with the in-plane range limited by the hopping cutoff.
    """
    a = lattice_constant_nm
    k_mag = 4 * math.pi / (3 * a)
    area = math.sqrt(3) * a * a / 2
    if params.cutoff_nm <= distance_nm:
        return 0.0
    r_max = math.sqrt(params.cutoff_nm**2 - distance_nm**2)

    def integrand(r):
        return r * params.hopping(np.array([r, 0.0, distance_nm])) * j0(k_mag * r)

    value, _ = quad(integrand, 0.0, r_max, limit=200)
    return float(2 * math.pi * value / area)


def bm_velocity_ratio(twist_angle_deg: float, coupling_ev: float, hbar_v_ev_nm: float,
                      lattice_constant_nm: float = GRAPHENE_LATTICE_NM) -> float:
    """Renormalised Dirac velocity v*/v = (1 - 3 alpha^2) / (1 + 6 alpha^2), alpha = w / (hbar v k_theta).

    Bistritzer & MacDonald, PNAS 108, 12233 (2011); k_theta = 2 |K| sin(theta / 2).
    """
    k_theta = 2 * (4 * math.pi / (3 * lattice_constant_nm)) * math.sin(math.radians(twist_angle_deg) / 2)
    alpha = coupling_ev / (hbar_v_ev_nm * k_theta)
    return (1 - 3 * alpha**2) / (1 + 6 * alpha**2)
