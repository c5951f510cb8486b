"""Spin-resolved site LDOS of a mean-field solution at biases relative to the Fermi level.

LDOS_{i sigma}(E) = sum_k w_k sum_n |psi_{nk sigma}(i)|^2 delta_eta(E - eps_{nk sigma}), E = mu + bias,
with a normalised Lorentzian (eta = half width) or Gaussian (eta = standard deviation) delta_eta, in
states per eV per site per spin. The k-points and weights are those of the solution (time-reversal
reduced Monkhorst-Pack grid; |psi_{-k}|^2 = |psi_k|^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from ..constants import LDOS_BROADENING_EV
from ..errors import MoireSTMError, positive_number
from ..io import read_h5, write_h5

KIND = "SiteLDOS"
_KINDS = ("lorentzian", "gaussian")


@dataclass
class SiteLDOS:
    """Site-resolved LDOS at a set of bias energies.

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

    @property
    def spin_polarisation(self) -> np.ndarray:
        """(nb, N) LDOS_up - LDOS_down."""
        return self.ldos_up - self.ldos_down

    def save(self, path) -> None:
        write_h5(path, KIND, self.params, {
            "bias_ev": self.bias_ev, "ldos_up": self.ldos_up, "ldos_down": self.ldos_down,
            "positions_nm": self.positions_nm, "layer": self.layer, "superlattice_nm": self.superlattice_nm})

    @classmethod
    def load(cls, path) -> "SiteLDOS":
        params, arrays, _ = read_h5(path, KIND)
        need = ("bias_ev", "ldos_up", "ldos_down", "positions_nm", "layer", "superlattice_nm")
        missing = [k for k in need if k not in arrays]
        if missing:
            raise MoireSTMError(f"{path}: damaged SiteLDOS, missing {', '.join(missing)}")
        nb, n = len(arrays["bias_ev"]), len(arrays["layer"])
        if arrays["ldos_up"].shape != (nb, n) or arrays["ldos_down"].shape != (nb, n) \
                or arrays["positions_nm"].shape != (n, 3):
            raise MoireSTMError(f"{path}: damaged SiteLDOS, inconsistent array shapes")
        return cls(*(arrays[k] for k in need), params=params)


def delta_kernel(x_ev: np.ndarray, width_ev: float, kind: str) -> np.ndarray:
    """Normalised broadened delta function of energy differences ``x_ev`` (eV^-1)."""
    if kind == "lorentzian":
        return (width_ev / np.pi) / (x_ev * x_ev + width_ev * width_ev)
    return np.exp(-0.5 * (x_ev / width_ev) ** 2) / (np.sqrt(2.0 * np.pi) * width_ev)


def site_ldos(solution, bias_ev=(0.0,), broadening_ev: float = LDOS_BROADENING_EV,
              kind: str = "lorentzian") -> SiteLDOS:
    """Spin-resolved site LDOS of a :class:`~moirestm.meanfield.MeanFieldSolution`.

    Parameters
    ----------
    solution : mean-field solution (its k-grid, weights and mean-field Hamiltonians are used).
    bias_ev : bias energies relative to the Fermi level mu in eV (scalar or sequence).
    broadening_ev : Lorentzian half width / Gaussian standard deviation eta in eV (> 0).
    kind : "lorentzian" or "gaussian".
    """
    bias = np.atleast_1d(np.asarray(bias_ev, dtype=float))
    if bias.ndim != 1 or bias.size == 0 or not np.all(np.isfinite(bias)):
        raise MoireSTMError(f"bias energies must be a non-empty list of finite numbers in eV, got {bias_ev!r}")
    eta = positive_number("broadening_ev", broadening_ev)
    if kind not in _KINDS:
        raise MoireSTMError(f"broadening kind must be one of {_KINDS}, got {kind!r}")
    energies = solution.mu_ev + bias
    n = solution.n_sites
    out = np.zeros((2, len(bias), n))
    for ik, (k, w) in enumerate(zip(solution.kpoints, solution.kweights)):
        for s, h in enumerate(solution.hamiltonians(k)):
            e, vec = sla.eigh(h, driver="evd", overwrite_a=True, check_finite=False)
            stored = (solution.bands_up, solution.bands_down)[s][ik]
            if not np.allclose(e, stored, atol=1e-6):
                raise MoireSTMError("the solution's Hamiltonian does not reproduce its stored bands "
                                    "(damaged or inconsistent solution)")
            weight = w * delta_kernel(energies[:, None] - e[None, :], eta, kind)  # (nb, n_bands)
            prob = vec.real**2 + vec.imag**2 if np.iscomplexobj(vec) else vec * vec
            out[s] += weight @ prob.T
    params = {
        "broadening_ev": eta, "kind": kind, "mu_ev": float(solution.mu_ev),
        "energies_ev": energies.tolist(), "meanfield": solution.params,
    }
    return SiteLDOS(bias, out[0], out[1], np.asarray(solution.positions_nm), np.asarray(solution.layer),
                    np.asarray(solution.superlattice_nm), params)
