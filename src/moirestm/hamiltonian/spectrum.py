"""Band structures and densities of states as saveable data objects with plots."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from ..errors import MoireSTMError, positive_number
from ..io import Result
from .kgrid import k_path, monkhorst_pack
from .tightbinding import TightBinding

#: Above this many sites, band structures near E_F use sparse shift-invert by default.
DENSE_LIMIT = 4000


def dirac_energy(params) -> float:
    """Energy in eV of the Dirac point of monolayer graphene for a Slater-Koster model.

    At K the A-B sums vanish by symmetry, so E_D = sum_{R != 0, |R| <= cutoff} t(R) cos(K.R)
    over same-sublattice in-plane lattice vectors.
    """
    from ..lattice import monolayer_graphene

    mono = monolayer_graphene()
    prim = mono.superlattice_nm
    reach = int(np.ceil(params.cutoff_nm / np.linalg.norm(prim[0]))) + 1
    grid = np.arange(-reach, reach + 1)
    n = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    r = n @ prim
    dist = np.linalg.norm(r, axis=1)
    sel = (dist > 0) & (dist <= params.cutoff_nm)
    disp = np.column_stack([r[sel], np.zeros(sel.sum())])
    k_point = mono.high_symmetry_points()["K"]
    return float(np.sum(params.hopping(disp) * np.cos(r[sel] @ k_point)))


def eigenvalues(tb: TightBinding, k_nm, n_bands: int | None = None, sigma_ev: float | None = None,
                onsite_ev: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues in eV of H(k), ascending.

    Full spectrum by ``scipy.linalg.eigh(driver="evd")`` (real at Gamma) when ``n_bands`` is
    None; otherwise the ``n_bands`` eigenvalues nearest ``sigma_ev`` by sparse shift-invert.
    """
    if n_bands is None:
        h = tb.hamiltonian(k_nm, onsite_ev=onsite_ev, dense=True)
        return sla.eigh(h, eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False)
    n_bands = int(n_bands)
    if not 0 < n_bands < tb.n_sites - 1:
        raise MoireSTMError(f"n_bands must lie in 1..{tb.n_sites - 2}, got {n_bands}")
    if sigma_ev is None:
        sigma_ev = dirac_energy(tb.params)
    h = tb.hamiltonian(k_nm, onsite_ev=onsite_ev)
    if not np.iscomplexobj(h.data):
        h = h.astype(float)
    vals = spla.eigsh(h, k=n_bands, sigma=sigma_ev, which="LM", return_eigenvectors=False)
    return np.sort(vals)


def _params_of(tb: TightBinding) -> dict:
    s = tb.structure
    info = s.summary() if hasattr(s, "summary") else {"name": getattr(s, "name", "structure")}
    return {"structure": info, "slater_koster": tb.params.to_dict()}


@dataclass
class BandStructure(Result):
    """Bands along a k-path.

    Attributes
    ----------
    k_nm : (nk, 2) wave vectors; distance_nm : (nk,) path coordinate; ticks_nm, labels : corners.
    energies_ev : (nk, nb) eigenvalues; fermi_ev : neutrality Fermi level.
    full_spectrum : True when every band was computed (then band n_sites/2 - 1 is the top valence band);
        False for shift-invert windows near the Fermi level.
    params : parameters of the model that produced them.
    """

    k_nm: np.ndarray
    distance_nm: np.ndarray
    ticks_nm: np.ndarray
    labels: list
    energies_ev: np.ndarray
    fermi_ev: float
    full_spectrum: bool = True
    params: dict = field(default_factory=dict)

    def central_energies_ev(self, n_central: int = 4) -> np.ndarray:
        """The ``n_central`` bands around neutrality, shape (nk, n_central).

        Selected by band index for full spectra, else as the eigenvalues nearest E_F at each k.
        """
        if self.full_spectrum:
            half = self.energies_ev.shape[1] // 2
            return self.energies_ev[:, half - n_central // 2: half + n_central - n_central // 2]
        nearest = np.argsort(np.abs(self.energies_ev - self.fermi_ev), axis=1)[:, :n_central]
        return np.sort(np.take_along_axis(self.energies_ev, nearest, axis=1), axis=1)

    def central_width_ev(self, n_central: int = 4) -> float:
        """Width (max - min over the path) of the ``n_central`` bands around neutrality."""
        sel = self.central_energies_ev(n_central)
        return float(sel.max() - sel.min())

    def plot(self, path=None, window_ev: float | None = 0.3, title: str | None = None, overwrite: bool = False):
        """Bands relative to the Fermi level (:func:`moirestm.plot.bands`); saved to ``path`` if given."""
        from .. import plot

        ax = plot.bands(self, window_ev=window_ev, title=title)
        if path is not None:
            plot.save_figure(ax.figure, path, overwrite)
        return ax.figure


def neutrality_fermi_level(energies_ev: np.ndarray, n_sites: int) -> float:
    """Fermi level at charge neutrality (half filling) from full spectra (nk, n_sites)."""
    e = np.sort(np.asarray(energies_ev).ravel())
    half = e.size // 2
    return float(0.5 * (e[half - 1] + e[half]))


def band_structure(tb: TightBinding, labels=("G", "K", "M", "G"), n_points: int = 60,
                   n_bands: int | None = None, sigma_ev: float | None = None) -> BandStructure:
    """Bands along a high-symmetry path.

    With ``n_bands`` (or automatically above 4000 sites) only the ``n_bands`` eigenvalues
    nearest ``sigma_ev`` are found by sparse shift-invert. The default ``sigma_ev`` is the
    neutrality point of TBG: the four-fold Dirac point at the moiré K point, located from the
    monolayer Dirac energy.
    """
    k, distance, ticks = k_path(tb.structure, labels, n_points)
    if n_bands is None and tb.n_sites > DENSE_LIMIT:
        n_bands = 8
    if n_bands is None:
        energies = np.array([eigenvalues(tb, kk) for kk in k])
        fermi = neutrality_fermi_level(energies, tb.n_sites)
    else:
        if sigma_ev is None:
            at_k = eigenvalues(tb, tb.structure.high_symmetry_points()["K"], n_bands, dirac_energy(tb.params))
            sigma_ev = float(np.median(at_k[np.argsort(np.abs(at_k - dirac_energy(tb.params)))[:4]]))
        energies = np.array([eigenvalues(tb, kk, n_bands, sigma_ev) for kk in k])
        fermi = float(sigma_ev)
    return BandStructure(k, distance, ticks, list(labels), energies, fermi, n_bands is None, _params_of(tb))


@dataclass
class DensityOfStates(Result):
    """Density of states per moiré cell per spin, in states/eV.

    Attributes
    ----------
    energies_ev, dos_per_ev : sampled energies and DOS; fermi_ev : neutrality Fermi level;
    broadening_ev, kind : Gaussian/Lorentzian width and type; kgrid : grid size.
    """

    energies_ev: np.ndarray
    dos_per_ev: np.ndarray
    fermi_ev: float
    broadening_ev: float
    kind: str
    kgrid: int
    params: dict = field(default_factory=dict)

    def plot(self, path=None, overwrite: bool = False):
        """DOS against E - E_F (:func:`moirestm.plot.dos`); saved to ``path`` if given."""
        from .. import plot

        ax = plot.dos(self)
        if path is not None:
            plot.save_figure(ax.figure, path, overwrite)
        return ax.figure


def broaden(centres_ev: np.ndarray, weights: np.ndarray, energies_ev: np.ndarray,
            width_ev: float, kind: str = "gaussian") -> np.ndarray:
    """Sum of weighted normalised Gaussian or Lorentzian peaks evaluated at ``energies_ev``.

    ``centres_ev`` (..., m) and ``weights`` broadcastable to it; returns shape (len(energies_ev),).
    Uses a sorted cumulative window so the cost is O(m log m + n_E * peaks within reach).
    """
    width_ev = positive_number("broadening_ev", width_ev)
    centres = np.asarray(centres_ev).ravel()
    w = np.broadcast_to(weights, np.shape(centres_ev)).ravel()
    x = np.asarray(energies_ev)[:, None] - centres[None, :]
    if kind == "gaussian":
        kernel = np.exp(-0.5 * (x / width_ev) ** 2) / (np.sqrt(2 * np.pi) * width_ev)
    elif kind == "lorentzian":
        kernel = (width_ev / np.pi) / (x**2 + width_ev**2)
    else:
        raise MoireSTMError(f"broadening kind must be 'gaussian' or 'lorentzian', got {kind!r}")
    return kernel @ w


def density_of_states(tb: TightBinding, kgrid: int = 6, energies_ev=None, broadening_ev: float = 0.005,
                      kind: str = "gaussian") -> DensityOfStates:
    """DOS from a Monkhorst-Pack grid (reduced by time reversal) with Gaussian/Lorentzian broadening.

    Default energies: 801 points within 0.3 eV of the neutrality Fermi level.
    """
    k, weights = monkhorst_pack(tb.structure.reciprocal_nm, kgrid)
    spectra = np.array([eigenvalues(tb, kk) for kk in k])
    # weighted median level: half of all states (with multiplicity) below
    order = np.argsort(spectra, axis=None)
    cum = np.cumsum(np.broadcast_to(weights[:, None], spectra.shape).ravel()[order])
    half = np.searchsorted(cum, 0.5 * tb.n_sites - 1e-9)
    flat = spectra.ravel()[order]
    fermi = float(0.5 * (flat[half] + flat[min(half + 1, flat.size - 1)]))
    if energies_ev is None:
        energies_ev = fermi + np.linspace(-0.3, 0.3, 801)
    energies_ev = np.asarray(energies_ev, dtype=float)
    dos = broaden(spectra, weights[:, None], energies_ev, broadening_ev, kind)
    return DensityOfStates(energies_ev, dos, fermi, broadening_ev, kind, int(kgrid), _params_of(tb))
