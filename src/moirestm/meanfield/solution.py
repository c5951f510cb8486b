"""The saveable result of a self-consistent mean-field calculation."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace

import numpy as np

from ..errors import MoireSTMError
from ..io import Result

#: Keys of the Fock pair record (datasets ``fock_<key>`` in files written before the result base).
_FOCK_KEYS = ("i", "j", "shift", "up_ev", "down_ev")


@dataclass
class MeanFieldSolution(Result):
    """Self-consistent spin-collinear mean-field state of a periodic p_z structure.

    Attributes
    ----------
    n_up, n_down : (N,) site occupations per spin (0..1).
    mu_ev : chemical potential in eV.
    free_energy_ev : Helmholtz free energy per moiré cell in eV (double counting subtracted,
        comparable between states of equal filling).
    grand_potential_ev : free_energy_ev - mu_ev * electrons (compare states at fixed mu).
    converged : whether both tolerances were met; iterations : SCF iterations performed.
    residuals : (iterations,) max |n_out - n_in| per iteration; energies_ev : (iterations,) free energy.
    wall_time_s : time spent in the solver.
    params : every parameter (interaction, filling, kgrid, temperature, start, seed, tolerances,
        structure summary, Slater-Koster model).
    kpoints, kweights : (m, 2) k-points in nm^-1 and weights summing to 1 (reduced by time reversal).
    bands_up, bands_down : (m, N) mean-field eigenvalues in eV.
    potential_up_ev, potential_down_ev : (N,) diagonal mean-field potentials of the final Hamiltonians.
    positions_nm, layer, sublattice, superlattice_nm : the structure's geometry.
    fock : None or dict with pair arrays ``i``, ``j``, ``shift`` (P, 2) and ``up_ev``, ``down_ev`` (P,)
        real-space exchange hoppings.

    Saved and loaded through :class:`moirestm.io.Result` (the model ``_tb`` is rebuilt on first use).
    """

    TRANSIENT = ("_tb",)

    n_up: np.ndarray
    n_down: np.ndarray
    mu_ev: float
    free_energy_ev: float
    grand_potential_ev: float
    converged: bool
    iterations: int
    residuals: np.ndarray
    energies_ev: np.ndarray
    wall_time_s: float
    params: dict
    kpoints: np.ndarray
    kweights: np.ndarray
    bands_up: np.ndarray
    bands_down: np.ndarray
    potential_up_ev: np.ndarray
    potential_down_ev: np.ndarray
    positions_nm: np.ndarray
    layer: np.ndarray
    sublattice: np.ndarray
    superlattice_nm: np.ndarray
    fock: dict | None = None
    _tb: object = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_sites(self) -> int:
        return len(self.n_up)

    @property
    def magnetization(self) -> np.ndarray:
        """(N,) local moment n_up - n_down in Bohr magnetons."""
        return self.n_up - self.n_down

    @property
    def density(self) -> np.ndarray:
        """(N,) total occupation n_up + n_down."""
        return self.n_up + self.n_down

    @property
    def electrons(self) -> float:
        """Electrons per moiré cell."""
        return float(self.density.sum())

    @property
    def filling(self) -> float:
        """Electrons per moiré cell relative to neutrality (one electron per site)."""
        return self.electrons - self.n_sites

    @property
    def hubbard_u_ev(self) -> float:
        return float(self.params["interaction"]["hubbard_u_ev"])

    def orders(self) -> dict:
        """Order parameters (staggered and ferromagnetic moments, charge modulation); see ``orders``."""
        from .orders import order_parameters

        return order_parameters(self)

    @property
    def structure(self):
        """The structure (rebuilt TBGLattice when the parameters name one, else a PeriodicStructure)."""
        return self.tb.structure

    @property
    def tb(self):
        """The tight-binding model the mean field was built on (rebuilt on first use after loading)."""
        if self._tb is None:
            self._tb = _rebuild_tb(self)
        return self._tb

    def hamiltonians(self, k_nm=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """Dense mean-field Bloch Hamiltonians (H_up, H_down) in eV at ``k_nm`` (real at Gamma without Fock)."""
        h0 = self.tb.hamiltonian(k_nm, dense=True)
        out = []
        for spin, v in (("up", self.potential_up_ev), ("down", self.potential_down_ev)):
            h = h0.copy()
            h[np.diag_indices_from(h)] += v
            if self.fock is not None:
                h = h + fock_matrix(self.fock["i"], self.fock["j"], self.fock["shift"] @ self.superlattice_nm,
                                    self.fock[f"{spin}_ev"], np.asarray(k_nm, float), self.n_sites)
            out.append(h)
        return out[0], out[1]

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path) -> "MeanFieldSolution":
        """Read a solution written by :meth:`save` (or by moirestm before the result base); damaged or
        foreign files raise MoireSTMError."""
        sol = super().load(path)
        problem = sol._damage()
        if problem:
            raise MoireSTMError(f"{path}: damaged MeanFieldSolution, {problem}")
        return sol

    @classmethod
    def _from_flat(cls, params: dict, arrays: dict) -> "MeanFieldSolution":
        """A file of the flat layout (scalars among the parameters, Fock pairs as ``fock_*`` datasets)."""
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in arrays and name not in params and name != "params"]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        fock = None
        if all(f"fock_{key}" in arrays for key in _FOCK_KEYS):
            fock = {key: arrays[f"fock_{key}"] for key in _FOCK_KEYS}
        return replace(super()._from_flat(params, arrays), fock=fock)

    def _damage(self) -> str:
        """What makes a loaded solution unusable ("" when nothing)."""
        missing = [name for name in ("interaction", "structure") if name not in self.params]
        if missing:
            return f"missing {', '.join(missing)}"
        n, m = len(self.n_up), len(self.kweights)
        shapes = {"n_down": (n,), "potential_up_ev": (n,), "potential_down_ev": (n,), "layer": (n,),
                  "sublattice": (n,), "bands_up": (m, n), "bands_down": (m, n), "positions_nm": (n, 3),
                  "superlattice_nm": (2, 2)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                return f"{name} has shape {np.shape(getattr(self, name))}, expected {shape}"
        if not (np.all(np.isfinite(self.n_up)) and np.all(np.isfinite(self.n_down))):
            return "non-finite densities"
        return ""

    def summary(self) -> dict:
        """Plain-data summary (energies, convergence, orders)."""
        out = {
            "hubbard_u_ev": self.hubbard_u_ev, "filling": self.filling, "mu_ev": self.mu_ev,
            "free_energy_ev": self.free_energy_ev, "converged": bool(self.converged),
            "iterations": int(self.iterations), "wall_time_s": float(self.wall_time_s),
            "final_residual": float(self.residuals[-1]) if len(self.residuals) else float("nan"),
        }
        out.update(self.orders())
        return out


def fock_matrix(i: np.ndarray, j: np.ndarray, lattice_r_nm: np.ndarray, values_ev: np.ndarray,
                k_nm: np.ndarray, n: int) -> np.ndarray:
    """Dense Bloch matrix sum_R exp(i k.R) h(i, j, R) of real-space exchange hoppings (real at Gamma)."""
    if not np.any(k_nm):
        out = np.zeros(n * n)
        np.add.at(out, i * n + j, values_ev)
        return out.reshape(n, n)
    out = np.zeros(n * n, complex)
    np.add.at(out, i * n + j, values_ev * np.exp(1j * (lattice_r_nm @ k_nm)))
    return out.reshape(n, n)


def _rebuild_tb(sol: MeanFieldSolution):
    from ..hamiltonian import SlaterKoster, TightBinding
    from ..lattice import PeriodicStructure, TBGLattice

    info = sol.params.get("structure", {})
    try:
        sk = SlaterKoster(**sol.params.get("slater_koster", {}))
    except TypeError as exc:
        raise MoireSTMError(f"cannot rebuild the Slater-Koster model from the solution ({exc})") from None
    if "index" in info:
        structure = TBGLattice(info["index"], info["distance_nm"], info["lattice_constant_nm"])
        if structure.n_atoms != sol.n_sites or not np.allclose(structure.positions_nm, sol.positions_nm, atol=1e-9):
            raise MoireSTMError("the stored geometry does not match the rebuilt TBG lattice")
    else:
        structure = PeriodicStructure(np.asarray(sol.positions_nm), np.asarray(sol.superlattice_nm),
                                      np.asarray(sol.layer), np.asarray(sol.sublattice), info.get("name", "structure"))
    return TightBinding(structure, sk)
