"""moirestm: STM of twisted bilayer graphene, from tight binding to learned interactions.

Pipeline (imports flow one way)::

    lattice -> hamiltonian -> meanfield -> observables -> dataset -> learn -> explain

Energies are in eV, lengths in nm, temperatures in K and wave vectors in nm^-1.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moirestm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
