"""Simple periodic carbon structures used for validation: monolayer and Bernal (AB) bilayer graphene."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..constants import GRAPHENE_LATTICE_NM, INTERLAYER_DISTANCE_NM
from .cell import HexagonalCell
from .tbg import check_distance


@dataclass(frozen=True)
class PeriodicStructure(HexagonalCell):
    """A 2D-periodic set of p_z sites.

    Attributes
    ----------
    positions_nm : (N, 3) Cartesian positions in nm.
    superlattice_nm : (2, 2) rows are the lattice vectors in nm.
    layer, sublattice : (N,) integer labels.
    name : short description.
    """

    positions_nm: np.ndarray
    superlattice_nm: np.ndarray
    layer: np.ndarray
    sublattice: np.ndarray
    name: str

    @property
    def n_atoms(self) -> int:
        return len(self.positions_nm)



def _graphene_vectors(a: float) -> np.ndarray:
    return a * np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def monolayer_graphene(lattice_constant_nm: float = GRAPHENE_LATTICE_NM) -> PeriodicStructure:
    """Two-atom unit cell of graphene (A at the origin, B at (a1 + a2)/3)."""
    prim = _graphene_vectors(lattice_constant_nm)
    b = (prim[0] + prim[1]) / 3.0
    positions = np.array([[0.0, 0.0, 0.0], [b[0], b[1], 0.0]])
    return PeriodicStructure(positions, prim, np.zeros(2, np.int8), np.array([0, 1], np.int8), "monolayer graphene")


def bernal_bilayer(
    distance_nm: float = INTERLAYER_DISTANCE_NM, lattice_constant_nm: float = GRAPHENE_LATTICE_NM
) -> PeriodicStructure:
    """Four-atom AB-stacked bilayer: top-layer A sits above bottom-layer B (the dimer pair)."""
    distance_nm = check_distance(distance_nm)
    prim = _graphene_vectors(lattice_constant_nm)
    b = (prim[0] + prim[1]) / 3.0
    positions = np.array(
        [
            [0.0, 0.0, 0.0],
            [b[0], b[1], 0.0],
            [b[0], b[1], distance_nm],
            [2 * b[0], 2 * b[1], distance_nm],
        ]
    )
    return PeriodicStructure(
        positions, prim, np.array([0, 0, 1, 1], np.int8), np.array([0, 1, 0, 1], np.int8), "AB bilayer graphene"
    )
