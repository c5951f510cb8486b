"""Magic interlayer distance: the distance that makes the four central bands flattest."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from scipy.optimize import minimize_scalar

from ..errors import MoireSTMError
from ..io import Result
from ..lattice import TBGLattice, pressure_for_distance
from .kgrid import k_path
from .slater_koster import SlaterKoster
from .tightbinding import TightBinding


def central_band_energies(tb: TightBinding, k_nm: np.ndarray, n_central: int = 4) -> np.ndarray:
    """The ``n_central`` eigenvalues around charge neutrality at each k, shape (nk, n_central), eV."""
    half = tb.n_sites // 2
    lo = half - n_central // 2
    out = np.empty((len(k_nm), n_central))
    for row, k in enumerate(k_nm):
        h = tb.hamiltonian(k, dense=True)
        out[row] = sla.eigh(h, eigvals_only=True, subset_by_index=[lo, lo + n_central - 1],
                            driver="evr", overwrite_a=True, check_finite=False)
    return out


def central_bandwidth_ev(index: int, distance_nm: float, params: SlaterKoster | None = None,
                         n_points: int = 24) -> float:
    """Width (max - min along Γ-K-M-Γ) of the four central bands of TBG, in eV."""
    lattice = TBGLattice(index, distance_nm)
    tb = TightBinding(lattice, params or SlaterKoster())
    k, _, _ = k_path(lattice, n_points=n_points)
    e = central_band_energies(tb, k)
    return float(e.max() - e.min())


@dataclass
class MagicDistance(Result):
    """Result of the magic-distance search.

    Attributes
    ----------
    index, twist_angle_deg : the commensurate cell.
    distance_nm, bandwidth_ev, pressure_gpa : optimum and the graphite-EOS pressure it needs.
    scan_distance_nm, scan_bandwidth_ev : the coarse scan that bracketed the optimum.
    """

    index: int
    twist_angle_deg: float
    distance_nm: float
    bandwidth_ev: float
    pressure_gpa: float
    scan_distance_nm: np.ndarray
    scan_bandwidth_ev: np.ndarray
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in ("index", "twist_angle_deg", "distance_nm", "bandwidth_ev", "pressure_gpa")}


def magic_distance(index: int, bounds_nm=(0.25, 0.335), params: SlaterKoster | None = None,
                   n_scan: int = 16, n_points: int = 24, tol_nm: float = 2e-4) -> MagicDistance:
    """Interlayer distance minimising the width of the four central bands.

    A coarse scan over ``bounds_nm`` brackets the minimum, then a bounded Brent search refines it.
    """
    lo, hi = (float(b) for b in bounds_nm)
    if not 0.15 <= lo < hi <= 1.0:
        raise MoireSTMError(f"distance bounds must satisfy 0.15 <= lo < hi <= 1.0 nm, got {bounds_nm}")
    params = params or SlaterKoster()
    scan = np.linspace(lo, hi, int(n_scan))
    widths = np.array([central_bandwidth_ev(index, d, params, n_points) for d in scan])
    best = int(np.argmin(widths))
    a, b = scan[max(best - 1, 0)], scan[min(best + 1, len(scan) - 1)]
    res = minimize_scalar(lambda d: central_bandwidth_ev(index, d, params, n_points), bounds=(a, b),
                          method="bounded", options={"xatol": tol_nm})
    d_opt, w_opt = (float(res.x), float(res.fun)) if res.fun < widths[best] else (float(scan[best]), float(widths[best]))
    lattice = TBGLattice(index, d_opt)
    return MagicDistance(index, lattice.twist_angle_deg, d_opt, w_opt, float(pressure_for_distance(d_opt)),
                         scan, widths, {"slater_koster": params.to_dict(), "n_points": n_points, "bounds_nm": [lo, hi]})
