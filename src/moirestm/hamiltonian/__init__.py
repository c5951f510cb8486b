"""Slater-Koster tight binding: neighbour lists, Bloch Hamiltonians, bands, DOS, magic distance."""

from .kgrid import k_path, monkhorst_pack
from .slater_koster import SlaterKoster
from .spectrum import (
    BandStructure,
    DensityOfStates,
    band_structure,
    broaden,
    density_of_states,
    dirac_energy,
    eigenvalues,
)
from .tightbinding import TightBinding, neighbour_list

__all__ = [
    "BandStructure",
    "DensityOfStates",
    "SlaterKoster",
    "TightBinding",
    "band_structure",
    "broaden",
    "density_of_states",
    "dirac_energy",
    "eigenvalues",
    "k_path",
    "monkhorst_pack",
    "neighbour_list",
]
