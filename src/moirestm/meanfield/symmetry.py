"""Brillouin-zone reduction by the threefold rotation C3z on top of time reversal.

A commensurate TBG cell built by rotating both layers about a common atom (the AA site at the
origin) keeps C3z about that atom. For a collinear mean-field state whose diagonal potentials are
invariant under the site permutation P of C3z, the site densities of the Bloch states obey
``|psi_{R k}(P i)|^2 = |psi_k(i)|^2`` (lattice gauge: the wrapping phases are diagonal), so any
site-diagonal k sum (densities, LDOS) over the full Monkhorst-Pack grid equals the sum over the
orbit representatives, weighted by their orbit sizes, averaged over the three site permutations.
Time reversal (k -> -k) holds for every collinear state (each spin Hamiltonian is real in real
space). The group {R^a, -R^a} has six elements; an n x n grid shrinks by up to 6 (12 x 12: 144 -> 26).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..hamiltonian.kgrid import monkhorst_pack

#: Largest deviation (nm) of a rotated site from a lattice site that still counts as a match.
_SITE_TOL_NM = 1e-6
#: Largest |v(P i) - v(i)| (eV) for which a potential counts as C3 symmetric: above float32 noise and
#: the 1e-6 density tolerance times U, far below any LDOS broadening (the reduction projects the
#: state onto its C3-symmetric part, a change of this size).
SYMMETRY_TOL_EV = 1e-5


def _c3(vectors: np.ndarray) -> np.ndarray:
    c, s = -0.5, np.sqrt(3.0) / 2.0
    return vectors @ np.array([[c, s], [-s, c]])  # row vectors rotated by +120 degrees


def c3_permutation(structure) -> np.ndarray | None:
    """Site permutation p with ``R r_i = r_{p[i]}`` (mod lattice vectors), or None without C3z about the origin."""
    pos = np.asarray(structure.positions_nm, float)
    lat = np.asarray(structure.superlattice_nm, float)
    inv = np.linalg.inv(lat)
    scale = float(np.min(np.linalg.norm(lat, axis=1)))

    def torus(xy):  # fractional coordinates in [0, 1), z in units of the cell length
        f = np.mod(xy @ inv, 1.0)
        f[f >= 1.0] = 0.0
        return np.column_stack([f, pos[:, 2] / scale])

    tree = cKDTree(torus(pos[:, :2]), boxsize=[1.0, 1.0, 1e9])
    dist, idx = tree.query(torus(_c3(pos[:, :2])))
    if np.any(dist * scale > _SITE_TOL_NM) or len(np.unique(idx)) != len(pos):
        return None
    return idx.astype(np.int64)


@dataclass(frozen=True)
class KGrid:
    """A Monkhorst-Pack grid, possibly reduced by symmetry.

    Attributes
    ----------
    n : grid size (n x n); kpoints : (m, 2) nm^-1; kweights : (m,) summing to 1.
    permutations : (g, N) site permutations to average site-diagonal sums over (identity only when
        reduced by time reversal alone).
    symmetry : "TR" or "TR+C3".
    """

    n: int
    kpoints: np.ndarray
    kweights: np.ndarray
    permutations: np.ndarray
    symmetry: str

    def symmetrise(self, site_values: np.ndarray) -> np.ndarray:
        """Average site-diagonal k sums (..., N) over the site permutations of the reduction."""
        if len(self.permutations) == 1:
            return site_values
        return np.mean([site_values[..., p] for p in self.permutations], axis=0)

    def to_dict(self) -> dict:
        return {"n": self.n, "symmetry": self.symmetry, "n_kpoints": int(len(self.kpoints))}


def _orbit_reduce(reciprocal_nm: np.ndarray, n: int):
    """Representatives and orbit weights of the n x n grid under {R^a, -R^a}."""
    k_all, _ = monkhorst_pack(reciprocal_nm, n, time_reversal=False)
    inv = np.linalg.inv(reciprocal_nm)

    def label(k):
        f = np.rint((k @ inv) * n).astype(np.int64) % n
        return f[:, 0] * n + f[:, 1]

    base = label(k_all)
    images = [base]
    rotated = k_all
    for _ in range(2):
        rotated = _c3(rotated)
        images.append(label(rotated))
    images += [label(-k) for k in (k_all, _c3(k_all), _c3(_c3(k_all)))]
    orbit_min = np.min(np.stack(images), axis=0)
    keep = orbit_min == base
    counts = np.bincount(orbit_min, minlength=n * n)
    frac = np.rint((k_all[keep] @ inv) * n) / n
    frac -= frac > 0.5 + 1e-12
    return frac @ reciprocal_nm, counts[base[keep]] / float(n * n)


def _grid_is_c3_closed(reciprocal_nm: np.ndarray, n: int) -> bool:
    inv = np.linalg.inv(reciprocal_nm)
    k_all, _ = monkhorst_pack(reciprocal_nm, n, time_reversal=False)
    f = _c3(k_all) @ inv * n
    return bool(np.allclose(f, np.rint(f), atol=1e-6))


def kgrid(structure, n: int, potentials_ev=None, use_symmetry: bool = True) -> KGrid:
    """The n x n grid reduced by time reversal, and by C3z when the structure and potentials keep it.

    Parameters
    ----------
    structure : periodic structure (positions_nm, superlattice_nm, reciprocal_nm).
    n : grid size.
    potentials_ev : None or (..., N) diagonal potentials (both spins) that must be C3 invariant.
    use_symmetry : False forces the time-reversal-only grid.
    """
    k, w = monkhorst_pack(structure.reciprocal_nm, n)
    identity = np.arange(len(structure.positions_nm))[None, :]
    plain = KGrid(int(n), k, w, identity, "TR")
    if not use_symmetry or not _grid_is_c3_closed(structure.reciprocal_nm, n):
        return plain
    perm = c3_permutation(structure)
    if perm is None:
        return plain
    if potentials_ev is not None:
        v = np.asarray(potentials_ev, float)
        if np.max(np.abs(v[..., perm] - v)) > SYMMETRY_TOL_EV:
            return plain
    k, w = _orbit_reduce(structure.reciprocal_nm, n) if n > 1 else (k, w)
    return KGrid(int(n), k, w, np.stack([identity[0], perm, perm[perm]]), "TR+C3")
