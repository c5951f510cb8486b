"""Self-consistent spin-collinear mean field: Hubbard U + long-range Coulomb (Hartree, optional Fock).

Contract (docs/architecture.md)::

    Interaction(hubbard_u_ev=0.0, dielectric=10.0, coulomb="ewald" | "gated" | "none", ...)
    solve(tb, interaction, filling=0.0 | None, mu_ev=None, kgrid=1, temperature_k=10.0,
          start="afm" | "pm" | "fm" | "layer_afm" | "random" | MeanFieldSolution, seed=0) -> MeanFieldSolution
    sweep_u(tb, interaction, u_values_ev, ...) -> USweep   (U continuation up and down, lowest F kept)
"""

from .interaction import Interaction, coulomb_matrix, default_alpha_per_nm
from .orders import order_parameters
from .scf import (STARTS, Pulay, Setup, USweep, extrapolated_start, fermi, initial_densities, prepare, solve,
                  solve_mu, sweep_u)
from .solution import MeanFieldSolution

__all__ = [
    "Interaction",
    "MeanFieldSolution",
    "Pulay",
    "STARTS",
    "Setup",
    "USweep",
    "coulomb_matrix",
    "extrapolated_start",
    "default_alpha_per_nm",
    "fermi",
    "initial_densities",
    "order_parameters",
    "prepare",
    "solve",
    "solve_mu",
    "sweep_u",
]
