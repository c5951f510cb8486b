"""Commensurate twisted bilayer graphene (TBG) supercells of the (i, i+1) family.

The bottom layer (layer 0) is rotated by -theta/2 and the top layer (layer 1) by
+theta/2 about a common atom, so the structure is AA stacked at the origin.
Moiré superlattice vectors are L1 = i a1 + (i+1) a2 in the bottom layer and
L1 = (i+1) a1 + i a2 in the top layer, L2 = R(60°) L1, with
cos(theta) = (3i^2 + 3i + 1/2) / (3i^2 + 3i + 1) (Lopes dos Santos, Peres &
Castro Neto, PRB 86, 155449 (2012)). The cell holds 4(3i^2 + 3i + 1) atoms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..constants import GRAPHENE_LATTICE_NM, INTERLAYER_DISTANCE_NM
from ..errors import MoireSTMError
from ..parameters import MAX_INDEX, validate
from .cell import HexagonalCell


def twist_angle_deg(index: int) -> float:
    """Twist angle in degrees of the commensurate cell with index ``index``."""
    index = _check_index(index)
    n = 3 * index * index + 3 * index + 1
    return math.degrees(math.acos((n - 0.5) / n))


def atom_count(index: int) -> int:
    """Number of carbon atoms 4(3i^2 + 3i + 1) in the commensurate cell."""
    index = _check_index(index)
    return 4 * (3 * index * index + 3 * index + 1)


def index_for_angle(angle_deg: float) -> int:
    """Commensurate index whose twist angle is closest to ``angle_deg``."""
    if not np.isfinite(angle_deg) or not 0.0 < angle_deg <= 60.0:
        raise MoireSTMError(f"twist angle must lie in (0, 60] degrees, got {angle_deg}")
    # theta ~ 1/(sqrt(3) i) at small angle; search around the estimate.
    estimate = max(int(round(1.0 / (math.sqrt(3.0) * math.radians(angle_deg)))), 0)
    candidates = [i for i in range(max(estimate - 3, 0), estimate + 4) if i <= MAX_INDEX]
    if not candidates:
        raise MoireSTMError(f"twist angle {angle_deg}° needs an index above {MAX_INDEX}")
    return min(candidates, key=lambda i: abs(twist_angle_deg(i) - angle_deg))


def _check_index(index) -> int:
    return validate("index", index)


def check_distance(distance_nm: float) -> float:
    """Validate an interlayer distance in nm (registry range; d0 = 0.335 nm at zero pressure)."""
    return validate("distance_nm", distance_nm)


def _rotation(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def _layer_sites(supercell_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer lattice points (n1, n2) inside a supercell given by integer rows, and the sublattice.

    Uses exact integer arithmetic: a point n is inside when n adj(M) lies in [0, det)^2.
    """
    m = supercell_int
    det = int(round(np.linalg.det(m)))
    adj = np.array([[m[1, 1], -m[0, 1]], [-m[1, 0], m[0, 0]]])
    corners = np.array([[0, 0], m[0], m[1], m[0] + m[1]])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    points = np.stack([n1.ravel(), n2.ravel()], axis=1)
    frac_times_det = points @ adj
    inside = np.all((frac_times_det >= 0) & (frac_times_det < det), axis=1)
    cells = points[inside]
    assert len(cells) == det, "commensurate cell enumeration failed"
    return cells, det


@dataclass(frozen=True)
class TBGLattice(HexagonalCell):
    """Commensurate twisted bilayer graphene supercell.

    Parameters
    ----------
    index : commensurate index i >= 0 of the (i, i+1) family (i = 9: 3.481°, 1084 atoms).
    distance_nm : interlayer distance in nm (pressure enters through it).
    lattice_constant_nm : graphene lattice constant a in nm.

    Attributes
    ----------
    positions_nm : (N, 3) Cartesian positions in nm; z = 0 (bottom) or ``distance_nm`` (top).
    layer : (N,) 0 for the bottom, 1 for the top layer.
    sublattice : (N,) 0 for A, 1 for B.
    superlattice_nm : (2, 2) rows are the moiré vectors L1, L2 in nm.
    """

    index: int
    distance_nm: float = INTERLAYER_DISTANCE_NM
    lattice_constant_nm: float = GRAPHENE_LATTICE_NM
    positions_nm: np.ndarray = field(init=False, repr=False, compare=False)
    layer: np.ndarray = field(init=False, repr=False, compare=False)
    sublattice: np.ndarray = field(init=False, repr=False, compare=False)
    superlattice_nm: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        index = _check_index(self.index)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "distance_nm", check_distance(self.distance_nm))
        a = float(self.lattice_constant_nm)
        if not np.isfinite(a) or not 0.1 < a < 0.5:
            raise MoireSTMError(f"graphene lattice constant must lie in (0.1, 0.5) nm, got {a}")
        theta = math.radians(twist_angle_deg(index))
        prim = a * np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
        basis = np.array([[0.0, 0.0], (prim[0] + prim[1]) / 3.0])
        layer_cells = {
            0: (np.array([[index, index + 1], [-(index + 1), 2 * index + 1]]), -theta / 2.0),
            1: (np.array([[index + 1, index], [-index, 2 * index + 1]]), +theta / 2.0),
        }
        positions, layers, sublattices = [], [], []
        for layer_id, (cell, angle) in layer_cells.items():
            rot = _rotation(angle)
            sites, _ = _layer_sites(cell)
            for sub in (0, 1):
                xy = (sites @ prim + basis[sub]) @ rot.T
                positions.append(np.column_stack([xy, np.full(len(xy), layer_id * self.distance_nm)]))
                layers.append(np.full(len(xy), layer_id, dtype=np.int8))
                sublattices.append(np.full(len(xy), sub, dtype=np.int8))
            if layer_id == 0:
                superlattice = (cell @ prim) @ rot.T
        positions = np.concatenate(positions)
        # fold into the cell [0,1)^2 in fractional coordinates (exact up to rounding)
        frac = positions[:, :2] @ np.linalg.inv(superlattice)
        frac -= np.floor(frac + 1e-9)
        positions[:, :2] = frac @ superlattice
        for name, value in (
            ("positions_nm", positions),
            ("layer", np.concatenate(layers)),
            ("sublattice", np.concatenate(sublattices)),
            ("superlattice_nm", superlattice),
        ):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def from_angle(cls, angle_deg: float, **kwargs) -> "TBGLattice":
        """Lattice with the commensurate index whose angle is nearest ``angle_deg``."""
        return cls(index_for_angle(angle_deg), **kwargs)

    @property
    def twist_angle_deg(self) -> float:
        """Twist angle theta in degrees."""
        return twist_angle_deg(self.index)

    @property
    def n_atoms(self) -> int:
        """Number of atoms in the supercell."""
        return len(self.positions_nm)

    @property
    def moire_period_nm(self) -> float:
        """Moiré period |L1| = a sqrt(3i^2 + 3i + 1) in nm."""
        return float(np.linalg.norm(self.superlattice_nm[0]))


    def summary(self) -> dict:
        """Plain-data description (angle, atom count, period, vectors)."""
        return {
            "index": self.index,
            "twist_angle_deg": self.twist_angle_deg,
            "n_atoms": self.n_atoms,
            "moire_period_nm": self.moire_period_nm,
            "distance_nm": self.distance_nm,
            "lattice_constant_nm": self.lattice_constant_nm,
            "superlattice_nm": self.superlattice_nm.tolist(),
        }
