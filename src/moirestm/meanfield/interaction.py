"""Interaction model and the periodic Coulomb kernel (2D Ewald sum, optional double-gate screening).

Long-range kernel (regularised Ohno form, one electron per site reference):

    V(r) = e^2 / (eps sqrt(r^2 + r0^2)),

with r0 = ``short_distance_nm`` (default: the bond length a0, so V(0) = e^2/(eps a0);
Ohno, Theor. Chim. Acta 2, 219 (1964)). Since the 2D Fourier transform of
1/sqrt(rho^2 + c^2) is (2 pi / q) exp(-q c), a pair of sites with in-plane separation rho
and vertical separation z is exactly a bare Coulomb pair at effective height
c = sqrt(z^2 + r0^2). The lattice sum over moiré cells is done with the 2D (slab) Ewald
decomposition (Parry, Surf. Sci. 49, 433 (1975)):

    sum_R V(rho + R, c) = sum_R erfc(a s)/s                                    (real space, s = |rho + R, c|)
        + (pi/A) sum_{G != 0} cos(G.rho)/G [e^{Gc} erfc(G/2a + a c) + e^{-Gc} erfc(G/2a - a c)]
        - (2 pi/A) [c erf(a c) + exp(-a^2 c^2)/(a sqrt(pi))]                   (G = 0, neutralising background)

The divergent G = 0 part is removed (uniform neutralising background); it only shifts
the chemical potential. The on-site term (i = j, R = 0) is excluded: on-site is U.

Double-gate screening (gates at distance D above and below the bilayer mid-plane) adds the image
charges of the gates, sum_{n != 0} (-1)^n / sqrt(rho^2 + (2 n D)^2) (the bilayer is treated as a sheet at
the mid-plane for the images, d << D), i.e. the 2D kernel 2 pi / q becomes 2 pi tanh(q D) / q. It is added
as the rapidly convergent reciprocal correction (2 pi / A G)(tanh(G D) - 1) cos(G.rho) with the G = 0 limit
2 pi D / A; the interaction of a site with its own images (-ln 2 / D) is excluded since on-site is U.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import erf, erfc, erfcx

from ..constants import (
    COULOMB_EV_NM,
    COULOMB_SHORT_DISTANCE_NM,
    DIELECTRIC_CONSTANT,
    FOCK_CUTOFF_NM,
    GATE_DISTANCE_NM,
)
from ..errors import MoireSTMError, finite_number

#: Relative precision target of the Ewald sum (terms below exp(-EWALD_X^2) are dropped).
EWALD_X = 6.2
_COULOMB_KINDS = ("ewald", "gated", "none")


@dataclass(frozen=True)
class Interaction:
    """Interaction parameters of the spin-collinear mean field.

    Parameters
    ----------
    hubbard_u_ev : on-site Hubbard U in eV (>= 0).
    dielectric : relative dielectric constant eps of the long-range term (> 0).
    coulomb : "ewald" (bare 1/(eps r) summed with 2D Ewald), "gated" (double-gate screened) or "none".
    gate_distance_nm : distance D from the bilayer to each of the two metallic gates, nm ("gated").
    short_distance_nm : Ohno regularisation length r0 in nm: V(r) = e^2 / (eps sqrt(r^2 + r0^2)).
    fock : add the exchange (Fock) term of the long-range kernel for pairs within ``fock_cutoff_nm``.
    fock_cutoff_nm : cutoff radius of the Fock term in nm.
    ewald_alpha_per_nm : Ewald splitting parameter in nm^-1 (None: chosen from the cell size).
    """

    hubbard_u_ev: float = 0.0
    dielectric: float = DIELECTRIC_CONSTANT
    coulomb: str = "ewald"
    gate_distance_nm: float = GATE_DISTANCE_NM
    short_distance_nm: float = COULOMB_SHORT_DISTANCE_NM
    fock: bool = False
    fock_cutoff_nm: float = FOCK_CUTOFF_NM
    ewald_alpha_per_nm: float | None = None

    def __post_init__(self):
        u = finite_number("hubbard_u_ev", self.hubbard_u_ev)
        if u < 0:
            raise MoireSTMError(f"Hubbard U must be non-negative, got {u} eV")
        eps = finite_number("dielectric", self.dielectric)
        if eps <= 0:
            raise MoireSTMError(f"dielectric constant must be positive, got {eps}")
        if self.coulomb not in _COULOMB_KINDS:
            raise MoireSTMError(f"coulomb must be one of {_COULOMB_KINDS}, got {self.coulomb!r}")
        for name in ("gate_distance_nm", "short_distance_nm", "fock_cutoff_nm"):
            value = finite_number(name, getattr(self, name))
            if value <= 0:
                raise MoireSTMError(f"{name} must be positive, got {value}")
        if self.ewald_alpha_per_nm is not None and finite_number("ewald_alpha_per_nm", self.ewald_alpha_per_nm) <= 0:
            raise MoireSTMError(f"ewald_alpha_per_nm must be positive, got {self.ewald_alpha_per_nm}")
        from ..parameters import validate  # the registry's ranges (e.g. U <= 20 eV, eps >= 1)

        for name in ("hubbard_u_ev", "dielectric", "gate_distance_nm", "short_distance_nm", "fock_cutoff_nm",
                     "ewald_alpha_per_nm"):
            validate(name, getattr(self, name), "Interaction")
        object.__setattr__(self, "fock", bool(self.fock))

    @property
    def long_range(self) -> bool:
        """Whether a long-range (Hartree) term is present."""
        return self.coulomb != "none"

    @property
    def coupling_ev_nm(self) -> float:
        """e^2 / (4 pi eps0 eps) in eV nm."""
        return COULOMB_EV_NM / self.dielectric

    def kernel_ev(self, distance_nm: np.ndarray) -> np.ndarray:
        """Bare regularised kernel e^2 / (eps sqrt(r^2 + r0^2)) in eV at 3D distances ``distance_nm``."""
        r = np.asarray(distance_nm, dtype=float)
        return self.coupling_ev_nm / np.sqrt(r * r + self.short_distance_nm**2)

    def to_dict(self) -> dict:
        return asdict(self)


def default_alpha_per_nm(superlattice_nm: np.ndarray) -> float:
    """Ewald splitting parameter balancing the real-space pair count and the reciprocal matrix products."""
    area = abs(np.linalg.det(superlattice_nm))
    # real space costs ~ (N^2/A) pi (X/a)^2 erfc evaluations, reciprocal ~ N^2 a^2 X^2 A/pi BLAS
    # multiply-adds; the minimum is at a = sqrt(pi/A) (c_real/c_blas)^(1/4), ratio ~ 300 measured.
    alpha = 4.0 * math.sqrt(math.pi / area)
    return float(np.clip(alpha, 0.3, 6.0))


def _levels(z_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct heights (rounded to 1e-9 nm) and each site's level index."""
    levels, index = np.unique(np.round(z_nm, 9), return_inverse=True)
    return levels, index


def _reciprocal_vectors(reciprocal_nm: np.ndarray, g_max: float) -> np.ndarray:
    """All G = m1 G1 + m2 G2 with 0 < |G| <= g_max."""
    g1, g2 = reciprocal_nm
    area_bz = abs(g1[0] * g2[1] - g1[1] * g2[0])
    height = area_bz / max(np.linalg.norm(g1), np.linalg.norm(g2))
    m = int(math.ceil(g_max / height)) + 1
    grid = np.arange(-m, m + 1)
    mm = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    g = mm @ reciprocal_nm
    norm = np.linalg.norm(g, axis=1)
    return g[(norm > 0) & (norm <= g_max)]


def _cos_sin_sum(xy: np.ndarray, g: np.ndarray, f: np.ndarray, rows: slice, mask_cols: np.ndarray,
                 mask_rows: np.ndarray) -> np.ndarray:
    """sum_G f(G) cos(G.(r_j - r_i)) for rows i in ``rows`` restricted to the masks (dense block)."""
    phase_i = xy[rows][mask_rows] @ g.T
    phase_j = xy[mask_cols] @ g.T
    ci, si = np.cos(phase_i) * f, np.sin(phase_i) * f
    return ci @ np.cos(phase_j).T + si @ np.sin(phase_j).T


def coulomb_matrix(structure, interaction: Interaction, alpha_per_nm: float | None = None,
                   chunk: int = 256) -> np.ndarray:
    """Periodic long-range Coulomb matrix V_ij = sum_R V(r_j + R - r_i) in eV, (N, N), on-site excluded.

    Parameters
    ----------
    structure : object with ``positions_nm`` (N, 3) and ``superlattice_nm`` (2, 2).
    interaction : kernel parameters (``coulomb`` "ewald" or "gated"; "none" returns zeros).
    alpha_per_nm : Ewald splitting parameter (overrides the interaction's; result is independent of it).
    chunk : rows processed at a time (bounds the temporary memory).

    Notes
    -----
    The matrix is defined up to the neutralising-background convention (G = 0 term), which leaves
    the potential of any charge-neutral density change unambiguous.
    """
    positions = np.asarray(structure.positions_nm, dtype=float)
    superlattice = np.asarray(structure.superlattice_nm, dtype=float)
    n = len(positions)
    v = np.zeros((n, n))
    if not interaction.long_range:
        return v
    alpha = alpha_per_nm or interaction.ewald_alpha_per_nm or default_alpha_per_nm(superlattice)
    alpha = float(alpha)
    r0 = interaction.short_distance_nm
    area = abs(np.linalg.det(superlattice))
    reciprocal = 2.0 * np.pi * np.linalg.inv(superlattice).T
    xy, z = positions[:, :2], positions[:, 2]
    levels, lev = _levels(z)

    # --- real space: pairs within r_cut = X / alpha (3D distance <= s) ------------------------
    r_cut = EWALD_X / alpha
    l1, l2 = superlattice
    height = area / max(np.linalg.norm(l1), np.linalg.norm(l2))
    reach = int(math.ceil((r_cut + np.ptp(z)) / height)) + 1
    grid = np.arange(-reach, reach + 1)
    shifts = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    offsets = np.zeros((len(shifts), 3))
    offsets[:, :2] = shifts @ superlattice
    images = (positions[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
    image_tree = cKDTree(images)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        pairs = cKDTree(positions[rows]).sparse_distance_matrix(image_tree, r_cut, output_type="ndarray")
        keep = pairs["v"] > 1e-12  # drops the on-site term (i = j, R = 0)
        i_loc, img = pairs["i"][keep], pairs["j"][keep]
        s = np.sqrt(pairs["v"][keep] ** 2 + r0 * r0)
        val = erfc(alpha * s) / s
        flat = i_loc.astype(np.int64) * n + (img % n)
        v[rows] += np.bincount(flat, weights=val, minlength=len(rows) * n).reshape(len(rows), n)

    # --- reciprocal space and G = 0, per pair of height levels --------------------------------
    g_max = 2.0 * alpha * EWALD_X
    g = _reciprocal_vectors(reciprocal, g_max)
    gn = np.linalg.norm(g, axis=1)
    for a in range(len(levels)):
        rows_a = np.flatnonzero(lev == a)
        for b in range(len(levels)):
            cols_b = np.flatnonzero(lev == b)
            c = math.sqrt((levels[a] - levels[b]) ** 2 + r0 * r0)
            damp = math.exp(-(alpha * c) ** 2)
            x1, x2 = gn / (2 * alpha) + alpha * c, gn / (2 * alpha) - alpha * c
            f = (np.pi / area) / gn * (erfcx(x1) + erfcx(x2)) * np.exp(-(gn / (2 * alpha)) ** 2) * damp
            g0 = -(2.0 * np.pi / area) * (c * erf(alpha * c) + damp / (alpha * math.sqrt(np.pi)))
            for start in range(0, len(rows_a), chunk):
                r_idx = rows_a[start:start + chunk]
                block = _cos_sin_sum(xy, g, f, r_idx, cols_b, slice(None)) if len(g) else 0.0
                v[np.ix_(r_idx, cols_b)] += block + g0
    # remove the R = 0 smooth (erf) part of the on-site term, which the reciprocal sum includes
    v[np.diag_indices(n)] -= erf(alpha * r0) / r0

    if interaction.coulomb == "gated":
        v += _gate_correction(xy, reciprocal, area, interaction.gate_distance_nm, chunk)
        # on-site is U: drop the interaction of a site with its own gate images,
        # sum_{n != 0} (-1)^n / (2 |n| D) = -ln(2) / D
        v[np.diag_indices(n)] += math.log(2.0) / interaction.gate_distance_nm
    return interaction.coupling_ev_nm * v


def _gate_correction(xy: np.ndarray, reciprocal: np.ndarray, area: float, gate_nm: float,
                     chunk: int) -> np.ndarray:
    """(1/A) sum_G (2 pi / G)(tanh(G D) - 1) cos(G.rho) + 2 pi D / A (sheet charges at the mid-plane)."""
    g = _reciprocal_vectors(reciprocal, (EWALD_X**2 / 2.0 + 1.0) / gate_nm)
    gn = np.linalg.norm(g, axis=1)
    f = (2.0 * np.pi / area) / gn * (np.tanh(gn * gate_nm) - 1.0)
    n = len(xy)
    out = np.full((n, n), 2.0 * np.pi * gate_nm / area)
    if len(g):
        for start in range(0, n, chunk):
            rows = np.arange(start, min(start + chunk, n))
            out[rows] += _cos_sin_sum(xy, g, f, rows, np.arange(n), slice(None))
    return out


def fock_pairs(structure, interaction: Interaction):
    """Site pairs (i, j, shift) within the Fock cutoff with the bare kernel V(r) in eV.

    Returns
    -------
    i, j : (P,) site indices; shifts : (P, 2) cell shifts; v_ev : (P,) kernel values; phase_r_nm : (P, 2)
    lattice vectors R of the shifts (for the Bloch phase exp(i k.R)).
    """
    from ..hamiltonian.tightbinding import neighbour_list

    positions = np.asarray(structure.positions_nm, dtype=float)
    superlattice = np.asarray(structure.superlattice_nm, dtype=float)
    i, j, shifts, disp = neighbour_list(positions, superlattice, interaction.fock_cutoff_nm)
    v = interaction.kernel_ev(np.linalg.norm(disp, axis=1))
    return i, j, shifts, v, shifts @ superlattice
