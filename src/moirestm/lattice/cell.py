"""Reciprocal-space helpers shared by every hexagonal 2D cell (lattice vectors at 60°)."""

from __future__ import annotations

import numpy as np


class HexagonalCell:
    """Mixin for objects with ``superlattice_nm`` (2, 2): rows L1, L2 at 60° in nm."""

    superlattice_nm: np.ndarray

    @property
    def reciprocal_nm(self) -> np.ndarray:
        """(2, 2) rows are the reciprocal vectors G1, G2 in nm^-1 (G_i . L_j = 2 pi delta_ij)."""
        return 2.0 * np.pi * np.linalg.inv(self.superlattice_nm).T

    def high_symmetry_points(self) -> dict[str, np.ndarray]:
        """Gamma ('G'), K and M points of the Brillouin zone in nm^-1."""
        g1, g2 = self.reciprocal_nm
        return {"G": np.zeros(2), "K": (2.0 * g1 + g2) / 3.0, "M": g1 / 2.0}
