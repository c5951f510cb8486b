"""Spin-resolved site LDOS of a mean-field solution at biases relative to the Fermi level.

LDOS_{i sigma}(E) = sum_k w_k sum_n |psi_{nk sigma}(i)|^2 delta_eta(E - eps_{nk sigma}), E = mu + bias,
with a normalised Lorentzian (eta = half width) or Gaussian (eta = standard deviation) delta_eta, in
states per eV per site per spin, on the solution's k grid or on a denser one (non-self-consistent),
reduced by time reversal (|psi_{-k}|^2 = |psi_k|^2) and by C3z where the state keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from ..constants import LDOS_BROADENING_EV, LDOS_MIN_WINDOW_EV, LDOS_WINDOW_BROADENINGS
from ..errors import MoireSTMError, positive_number
from ..io import Result
from ..meanfield.symmetry import kgrid as reduced_kgrid

_KINDS = ("lorentzian", "gaussian")


@dataclass
class SiteLDOS(Result):
    """Site-resolved LDOS at a set of bias energies (saved and loaded through :class:`moirestm.io.Result`).

    Attributes
    ----------
    bias_ev : (nb,) biases relative to E_F (= mu) in eV.
    ldos_up, ldos_down : (nb, N) LDOS per spin in states/eV/site.
    positions_nm : (N, 3) site positions; layer : (N,) 0 bottom / 1 top; superlattice_nm : (2, 2) moiré vectors.
    params : broadening, kind, mu_ev and the mean-field parameters of the source solution.
    """

    bias_ev: np.ndarray
    ldos_up: np.ndarray
    ldos_down: np.ndarray
    positions_nm: np.ndarray
    layer: np.ndarray
    superlattice_nm: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def total(self) -> np.ndarray:
        """(nb, N) spin-summed LDOS."""
        return self.ldos_up + self.ldos_down

    @classmethod
    def load(cls, path) -> "SiteLDOS":
        """Read an LDOS written by :meth:`save` (or before the result base); MoireSTMError when damaged."""
        ldos = super().load(path)
        nb, n = len(ldos.bias_ev), len(ldos.layer)
        if np.shape(ldos.ldos_up) != (nb, n) or np.shape(ldos.ldos_down) != (nb, n) \
                or np.shape(ldos.positions_nm) != (n, 3):
            raise MoireSTMError(f"{path}: damaged SiteLDOS, inconsistent array shapes")
        return ldos


def delta_kernel(x_ev: np.ndarray, width_ev: float, kind: str) -> np.ndarray:
    """Normalised broadened delta function of energy differences ``x_ev`` (eV^-1)."""
    if kind == "lorentzian":
        return (width_ev / np.pi) / (x_ev * x_ev + width_ev * width_ev)
    return np.exp(-0.5 * (x_ev / width_ev) ** 2) / (np.sqrt(2.0 * np.pi) * width_ev)


def ldos_window_ev(energies_ev: np.ndarray, broadening_ev) -> tuple[float, float]:
    """Energy window (lo, hi) in eV whose states enter the LDOS at ``energies_ev`` (see constants).

    ``broadening_ev`` is one value or one per energy."""
    energies = np.ravel(energies_ev)
    half = np.maximum(LDOS_WINDOW_BROADENINGS * np.broadcast_to(np.ravel(broadening_ev), energies.shape),
                      LDOS_MIN_WINDOW_EV)
    return float(np.min(energies - half)), float(np.max(energies + half))


def _solution_grid(solution, n: int, use_symmetry: bool):
    """The n x n grid of a solution's state (C3-reduced when its potentials keep C3 and there is no Fock)."""
    potentials = np.stack([solution.potential_up_ev, solution.potential_down_ev])
    return reduced_kgrid(solution.structure, n, potentials, use_symmetry=use_symmetry and solution.fock is None)


def _add_states(out_spin, weight_k, energies_ev, e, vec, eta_ev, kind) -> None:
    """Add w_k sum_n |psi_n(i)|^2 delta(E - e_n) of the given states to ``out_spin`` (nb, N)."""
    weight = weight_k * delta_kernel(energies_ev[:, None] - e[None, :], eta_ev, kind)  # (nb, n_states)
    prob = vec.real**2 + vec.imag**2 if np.iscomplexobj(vec) else vec * vec
    out_spin += weight @ prob.T


def _lorentzian_tails(solution, energies_ev, eta_ev, lo, hi, degenerate, use_symmetry) -> np.ndarray:
    """(2, nb, N) Lorentzian LDOS of the states outside (lo, hi), summed on the solution's own k grid.

    Far from the LDOS energies the Lorentzian is smooth in k, so the coarse self-consistency grid
    samples these tails well; on the solution's own grid the window and the tails add up to the full sum.
    """
    grid = _solution_grid(solution, _scf_grid(solution), use_symmetry)
    out = np.zeros((2, len(energies_ev), solution.n_sites))
    for k, w in zip(grid.kpoints, grid.kweights):
        hams = solution.hamiltonians(k)
        for s in range(1 if degenerate else 2):
            e, vec = sla.eigh(hams[s], driver="evd", overwrite_a=True, check_finite=False)
            outside = (e <= lo) | (e > hi)
            _add_states(out[s], w, energies_ev, e[outside], vec[:, outside], eta_ev, "lorentzian")
    return grid.symmetrise(out)


def _broadenings(broadening_ev, n_bias: int) -> np.ndarray:
    """(n_bias, 1) broadenings in eV: one value for every bias, or one per bias."""
    if np.ndim(broadening_ev) == 0:
        return np.full((n_bias, 1), positive_number("broadening_ev", broadening_ev))
    values = [positive_number("broadening_ev", b) for b in np.ravel(broadening_ev)]
    if np.ndim(broadening_ev) != 1 or len(values) != n_bias:
        raise MoireSTMError(f"broadening_ev: give one value or one per bias ({n_bias}), got {len(values)}")
    return np.asarray(values, dtype=float)[:, None]


def _scf_grid(solution) -> int:
    return int(solution.params.get("scf_kgrid", solution.params.get("kgrid", 1)))


def site_ldos(solution, bias_ev=(0.0,), broadening_ev=LDOS_BROADENING_EV,
              kind: str = "lorentzian", ldos_kgrid: int | None = None, use_symmetry: bool = True,
              single: bool = True) -> SiteLDOS:
    """Spin-resolved site LDOS of a :class:`~moirestm.meanfield.MeanFieldSolution`.

    The mean-field potential is diagonal in real space, so H_MF(k) = H0(k) + diag(v_sigma) is
    evaluated non-self-consistently on any k grid once v_sigma has converged (self-consistent then
    non-self-consistent, as electronic-structure codes do). Only the eigenstates within
    :func:`ldos_window_ev` of the requested energies are computed (``eigh(subset_by_value=...)``).

    Parameters
    ----------
    solution : mean-field solution (its potentials, chemical potential and structure are used).
    bias_ev : bias energies relative to the Fermi level mu in eV (scalar or sequence).
    broadening_ev : Lorentzian half width / Gaussian standard deviation eta in eV (> 0); one value, or
        one per bias (each bias, broadening pair is one row of the result; all come from one
        diagonalisation, so many images of one solution cost little more than one).
    kind : "lorentzian" or "gaussian".
    ldos_kgrid : n of the n x n Monkhorst-Pack LDOS grid; None uses the solution's own grid.
    use_symmetry : reduce the grid by C3z when the solution's potentials keep it (no Fock term).
    single : diagonalise the window in float32 / complex64 on a grid other than the solution's own
        (2.6x faster at i = 9; LDOS within 5e-5 relative of float64, test); the tails and the
        solution's own grid stay in float64.
    """
    bias = np.atleast_1d(np.asarray(bias_ev, dtype=float))
    if bias.ndim != 1 or bias.size == 0 or not np.all(np.isfinite(bias)):
        raise MoireSTMError(f"bias energies must be a non-empty list of finite numbers in eV, got {bias_ev!r}")
    eta = _broadenings(broadening_ev, len(bias))
    if kind not in _KINDS:
        raise MoireSTMError(f"broadening kind must be one of {_KINDS}, got {kind!r}")
    scf_grid = _scf_grid(solution)
    n_grid = scf_grid if ldos_kgrid is None else int(ldos_kgrid)
    if isinstance(ldos_kgrid, bool) or n_grid != (scf_grid if ldos_kgrid is None else ldos_kgrid) or n_grid < 1:
        raise MoireSTMError(f"LDOS k-grid size must be a positive integer, got {ldos_kgrid!r}")
    grid = _solution_grid(solution, n_grid, use_symmetry)
    own_grid = len(grid.kpoints) == len(solution.kpoints) and np.allclose(grid.kpoints, solution.kpoints)
    energies = solution.mu_ev + bias
    lo, hi = ldos_window_ev(energies, eta)
    degenerate = solution.fock is None and np.array_equal(solution.potential_up_ev, solution.potential_down_ev)
    n = solution.n_sites
    out = np.zeros((2, len(bias), n))
    for ik, (k, w) in enumerate(zip(grid.kpoints, grid.kweights)):
        hams = solution.hamiltonians(k)
        for s in range(1 if degenerate else 2):
            h = hams[s]
            if single and not own_grid:
                h = h.astype(np.complex64 if np.iscomplexobj(h) else np.float32)
            e, vec = sla.eigh(h, subset_by_value=(lo, hi), driver="evr", overwrite_a=True, check_finite=False)
            e = e.astype(float)
            if own_grid:
                stored = (solution.bands_up, solution.bands_down)[s][ik]
                stored = stored[(stored > lo + 1e-6) & (stored <= hi - 1e-6)]
                inside = e[(e > lo + 1e-6) & (e <= hi - 1e-6)]
                if len(stored) != len(inside) or not np.allclose(inside, stored, atol=1e-6):
                    raise MoireSTMError("the solution's Hamiltonian does not reproduce its stored bands "
                                        "(damaged or inconsistent solution)")
            _add_states(out[s], w, energies, e, vec, eta, kind)
    if kind == "lorentzian":  # tails of the states outside the window, on the self-consistency grid
        out += _lorentzian_tails(solution, energies, eta, lo, hi, degenerate, use_symmetry)
    if degenerate:
        out[1] = out[0]
    out = grid.symmetrise(out)
    widths = eta[:, 0].tolist()
    params = {
        "broadening_ev": widths[0] if len(set(widths)) == 1 else widths, "kind": kind, "mu_ev": float(solution.mu_ev),
        "energies_ev": energies.tolist(), "ldos_kgrid": n_grid, "scf_kgrid": scf_grid,
        "kpoint_symmetry": grid.symmetry, "n_kpoints": int(len(grid.kpoints)), "window_ev": [lo, hi],
        "single_precision_window": bool(single and not own_grid),
        "meanfield": solution.params,
    }
    return SiteLDOS(bias, out[0], out[1], np.asarray(solution.positions_nm), np.asarray(solution.layer),
                    np.asarray(solution.superlattice_nm), params)
