"""Periodic neighbour search and the sparse Bloch Hamiltonian H(k).

H(k) = sum_R exp(i k.R) H_R in the lattice gauge, where H_R holds the hoppings from
sites of the home cell to sites of the cell shifted by R = n1 L1 + n2 L2. The
neighbour list is built once with a KD-tree over the periodic images, vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ..errors import MoireSTMError
from .slater_koster import SlaterKoster


def _image_range(superlattice_nm: np.ndarray, cutoff_nm: float) -> int:
    """Number of image shells needed so that every neighbour within the cutoff is found."""
    l1, l2 = superlattice_nm
    area = abs(l1[0] * l2[1] - l1[1] * l2[0])
    height = area / max(np.linalg.norm(l1), np.linalg.norm(l2))  # smallest width of the cell
    return int(math.ceil(cutoff_nm / height)) + 1


def neighbour_list(positions_nm: np.ndarray, superlattice_nm: np.ndarray, cutoff_nm: float):
    """All site pairs (i, j, n1, n2) with |r_j + n1 L1 + n2 L2 - r_i| <= cutoff, i != j or R != 0.

    Returns
    -------
    i, j : (P,) int arrays of site indices.
    shifts : (P, 2) int array of cell shifts (n1, n2).
    displacement_nm : (P, 3) vectors r_j + R - r_i.
    """
    n_atoms = len(positions_nm)
    reach = _image_range(superlattice_nm, cutoff_nm)
    grid = np.arange(-reach, reach + 1)
    shifts = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    offsets = np.zeros((len(shifts), 3))
    offsets[:, :2] = shifts @ superlattice_nm
    images = (positions_nm[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
    home = cKDTree(positions_nm)
    pairs = home.sparse_distance_matrix(cKDTree(images), cutoff_nm, output_type="ndarray")
    keep = pairs["v"] > 1e-9
    i = pairs["i"][keep].astype(np.int64)
    image = pairs["j"][keep].astype(np.int64)
    j = image % n_atoms
    shift = shifts[image // n_atoms]
    displacement = images[image] - positions_nm[i]
    order = np.lexsort((j, i))
    return i[order], j[order], shift[order], displacement[order]


@dataclass(frozen=True)
class TightBinding:
    """Slater-Koster tight-binding model of a periodic p_z structure.

    Parameters
    ----------
    structure : object with ``positions_nm`` (N, 3) and ``superlattice_nm`` (2, 2),
        e.g. :class:`moirestm.lattice.TBGLattice`.
    params : hopping model.
    """

    structure: object
    params: SlaterKoster = field(default_factory=SlaterKoster)
    _blocks: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        positions = np.asarray(self.structure.positions_nm, dtype=float)
        superlattice = np.asarray(self.structure.superlattice_nm, dtype=float)
        i, j, shifts, disp = neighbour_list(positions, superlattice, self.params.cutoff_nm)
        hop = self.params.hopping(disp)
        n = len(positions)
        keys = shifts[:, 0] * 100003 + shifts[:, 1]
        blocks = {}
        for key in np.unique(keys):
            sel = keys == key
            shift = tuple(int(s) for s in shifts[sel][0])
            blocks[shift] = sp.csr_matrix((hop[sel], (i[sel], j[sel])), shape=(n, n))
        object.__setattr__(self, "_blocks", blocks)

    @property
    def n_sites(self) -> int:
        return len(self.structure.positions_nm)

    @property
    def n_hoppings(self) -> int:
        """Number of directed hoppings (each bond counted in both directions)."""
        return sum(b.nnz for b in self._blocks.values())

    @property
    def shifts(self) -> list[tuple[int, int]]:
        """Cell shifts (n1, n2) with non-zero hopping blocks."""
        return sorted(self._blocks)

    def block(self, shift: tuple[int, int]) -> sp.csr_matrix:
        """Hopping block H_R for the cell shift R = (n1, n2) (zero matrix if none)."""
        n = self.n_sites
        return self._blocks.get(tuple(shift), sp.csr_matrix((n, n)))

    def _check_k(self, k_nm: np.ndarray) -> np.ndarray:
        k = np.asarray(k_nm, dtype=float)
        if k.shape != (2,) or not np.all(np.isfinite(k)):
            raise MoireSTMError(f"wave vector must be two finite numbers in nm^-1, got {k_nm!r}")
        return k

    def hamiltonian(self, k_nm=(0.0, 0.0), onsite_ev: np.ndarray | None = None, dense: bool = False):
        """Bloch Hamiltonian H(k) in eV.

        Parameters
        ----------
        k_nm : wave vector (kx, ky) in nm^-1.
        onsite_ev : optional (N,) on-site energies added to the diagonal.
        dense : return a numpy array instead of a scipy.sparse CSR matrix.

        Returns
        -------
        Real matrix at k = 0 (time reversal), complex otherwise.
        """
        k = self._check_k(k_nm)
        superlattice = np.asarray(self.structure.superlattice_nm)
        at_gamma = not np.any(k)
        total = None
        for shift, block in self._blocks.items():
            if at_gamma:
                term = block
            else:
                phase = np.exp(1j * k @ (np.asarray(shift) @ superlattice))
                term = block * phase
            total = term if total is None else total + term
        if total is None:
            total = sp.csr_matrix((self.n_sites, self.n_sites))
        if onsite_ev is not None:
            onsite = np.asarray(onsite_ev, dtype=float)
            if onsite.shape != (self.n_sites,):
                raise MoireSTMError(f"onsite energies must have shape ({self.n_sites},), got {onsite.shape}")
            total = total + sp.diags(onsite)
        return total.toarray() if dense else total.tocsr()
