"""moirestm: STM of twisted bilayer graphene, from tight binding to learned interactions.

Pipeline (imports flow one way)::

    lattice -> hamiltonian -> meanfield -> observables -> dataset -> measured -> learn -> explain -> plot

The main entry points are available from the package root (imported on first use, so
``import moirestm`` stays light and never imports torch)::

    import moirestm as ms
    tb = ms.TightBinding(ms.TBGLattice(5))
    sol = ms.solve(tb, ms.Interaction(hubbard_u_ev=2.0), filling=0.0)

Energies are in eV, lengths in nm, temperatures in K and wave vectors in nm^-1.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moirestm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: Entry point -> module defining it, in pipeline order.
ENTRY_POINTS = {
    "parameter": "moirestm.parameters", "REGISTRY": "moirestm.parameters",
    "TBGLattice": "moirestm.lattice", "TightBinding": "moirestm.hamiltonian",
    "band_structure": "moirestm.hamiltonian", "density_of_states": "moirestm.hamiltonian",
    "magic_distance": "moirestm.hamiltonian.magic",
    "Interaction": "moirestm.meanfield", "solve": "moirestm.meanfield", "sweep_u": "moirestm.meanfield",
    "MeanFieldSolution": "moirestm.meanfield",
    "site_ldos": "moirestm.observables", "stm_map": "moirestm.observables", "ft_ldos": "moirestm.observables",
    "Sweep": "moirestm.dataset", "Store": "moirestm.dataset", "run_sweep": "moirestm.dataset",
    "read_stm": "moirestm.measured", "calibrate": "moirestm.measured",
    "train": "moirestm.learn", "Run": "moirestm.learn", "evaluate": "moirestm.learn", "predict": "moirestm.learn",
    "infer": "moirestm.learn", "PosteriorRun": "moirestm.learn", "predict_posterior": "moirestm.learn",
    "evaluate_posterior": "moirestm.learn",
    "analyze": "moirestm.explain", "build_report": "moirestm.explain",
}


def __getattr__(name: str):
    if name in ENTRY_POINTS:
        value = getattr(import_module(ENTRY_POINTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moirestm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(ENTRY_POINTS))


__all__ = ["__version__", *ENTRY_POINTS]
