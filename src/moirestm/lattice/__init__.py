"""Commensurate twisted bilayer graphene geometry and the pressure -> distance relation."""

from .pressure import distance_for_pressure, pressure_for_distance
from .tbg import TBGLattice, atom_count, check_distance, index_for_angle, twist_angle_deg

__all__ = [
    "TBGLattice",
    "atom_count",
    "check_distance",
    "distance_for_pressure",
    "index_for_angle",
    "pressure_for_distance",
    "twist_angle_deg",
]
from .structures import PeriodicStructure, bernal_bilayer, monolayer_graphene  # noqa: E402

__all__ += ["PeriodicStructure", "bernal_bilayer", "monolayer_graphene"]
