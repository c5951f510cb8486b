"""Constant-height STM maps from a site LDOS (Tersoff-Hamann spirit).

I(r) ~ sum_i LDOS_i(E_F + eV) exp(-2 kappa (z_top - z_i)) g(r - r_i), with g a normalised p_z-like
Gaussian of standard deviation ``orbital_width_nm`` and kappa the tunnelling decay constant
(Tersoff & Hamann, PRB 31, 805 (1985)). The tip scans above the top layer, so the bottom layer is
attenuated by exp(-2 kappa d). The map covers a rectangle of the area of n x n moiré cells:
x in [0, n |L1|), y in [0, n A / |L1|), sampled on a regular grid; units states/eV/nm^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..constants import STM_DECAY_PER_NM, STM_ORBITAL_WIDTH_NM, STM_PIXELS_PER_NM
from ..errors import MoireSTMError, positive_number
from ..io import Result

#: Gaussians are cut at this many standard deviations.
_REACH = 6.0


@dataclass
class STMMap(Result):
    """STM image on a regular real-space grid (saved and loaded through :class:`moirestm.io.Result`).

    Attributes
    ----------
    x_nm : (nx,) column coordinates; y_nm : (ny,) row coordinates (nm).
    image : (ny, nx) simulated signal (states/eV/nm^2, tunnelling-weighted).
    params : bias, spin, tiling, resolution, widths and the source LDOS parameters.
    """

    x_nm: np.ndarray
    y_nm: np.ndarray
    image: np.ndarray
    params: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path) -> "STMMap":
        """Read a map written by :meth:`save` (or before the result base); MoireSTMError when damaged."""
        return check_image_axes(super().load(path), path, "x_nm", "y_nm")

    def plot(self, path=None, title: str | None = None, cmap: str = "inferno", overwrite: bool = False):
        """The map with nm axes (:func:`moirestm.plot.stm_map`); saved to ``path`` if given."""
        from .. import plot

        ax = plot.stm_map(self, title=title, cmap=cmap)
        if path is not None:
            plot.save_figure(ax.figure, path, overwrite)
        return ax.figure


def stm_map(site_ldos, bias_index: int = 0, n_cells: int = 3, pixels_per_nm: float = STM_PIXELS_PER_NM,
            orbital_width_nm: float = STM_ORBITAL_WIDTH_NM, decay_per_nm: float = STM_DECAY_PER_NM,
            spin: str = "total", chunk: int = 8192) -> STMMap:
    """STM map from a :class:`~moirestm.observables.SiteLDOS`.

    Parameters
    ----------
    site_ldos : source LDOS (positions, layers and moiré vectors are taken from it).
    bias_index : which of its bias energies to image.
    n_cells : the map covers the area of n_cells x n_cells moiré cells (>= 1).
    pixels_per_nm : grid resolution.
    orbital_width_nm : standard deviation of each site's Gaussian.
    decay_per_nm : tunnelling decay constant kappa; sites a height dz below the topmost layer are
        weighted by exp(-2 kappa dz) (0 disables the attenuation).
    spin : "total", "up", "down" or "polarisation" (up - down).
    chunk : sites processed at a time (bounds memory).
    """
    bias = np.atleast_1d(np.asarray(site_ldos.bias_ev))
    if isinstance(bias_index, bool) or not float(bias_index).is_integer() \
            or not -len(bias) <= int(bias_index) < len(bias):
        raise MoireSTMError(f"bias_index must be an integer index into {len(bias)} bias energies, got {bias_index!r}")
    bias_index = int(bias_index)
    if isinstance(n_cells, bool) or not float(n_cells).is_integer() or int(n_cells) < 1:
        raise MoireSTMError(f"n_cells must be a positive integer, got {n_cells!r}")
    n_cells = int(n_cells)
    pixels_per_nm = positive_number("pixels_per_nm", pixels_per_nm)
    sigma = positive_number("orbital_width_nm", orbital_width_nm)
    kappa = float(decay_per_nm)
    if not np.isfinite(kappa) or kappa < 0:
        raise MoireSTMError(f"decay_per_nm must be a non-negative number, got {decay_per_nm}")
    spins = {"total": lambda: site_ldos.ldos_up + site_ldos.ldos_down, "up": lambda: site_ldos.ldos_up,
             "down": lambda: site_ldos.ldos_down, "polarisation": lambda: site_ldos.ldos_up - site_ldos.ldos_down}
    if spin not in spins:
        raise MoireSTMError(f"spin must be one of {tuple(spins)}, got {spin!r}")
    weights = np.asarray(spins[spin]()[bias_index], dtype=float)
    positions = np.asarray(site_ldos.positions_nm, dtype=float)
    lat = np.asarray(site_ldos.superlattice_nm, dtype=float)
    z = positions[:, 2]
    weights = weights * np.exp(-2.0 * kappa * (z.max() - z))

    l1 = float(np.linalg.norm(lat[0]))
    area = abs(float(np.linalg.det(lat)))
    width, height = n_cells * l1, n_cells * area / l1
    nx, ny = max(int(round(width * pixels_per_nm)), 2), max(int(round(height * pixels_per_nm)), 2)
    if nx * ny > 64_000_000:
        raise MoireSTMError(f"STM map of {nx} x {ny} pixels is too large; lower pixels_per_nm or n_cells")
    x = np.arange(nx) * (width / nx)
    y = np.arange(ny) * (height / ny)

    # periodic images of the sites that reach the rectangle
    margin = _REACH * sigma
    corners = np.array([[-margin, -margin], [width + margin, -margin], [-margin, height + margin],
                        [width + margin, height + margin]])
    frac = corners @ np.linalg.inv(lat)
    lo = np.floor(frac.min(axis=0)).astype(int) - 1
    hi = np.ceil(frac.max(axis=0)).astype(int) + 1
    n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    shifts = np.column_stack([n1.ravel(), n2.ravel()]) @ lat
    xy = (positions[None, :, :2] + shifts[:, None, :]).reshape(-1, 2)
    w_all = np.tile(weights, len(shifts))
    inside = (xy[:, 0] > -margin) & (xy[:, 0] < width + margin) & (xy[:, 1] > -margin) & (xy[:, 1] < height + margin)
    xy, w_all = xy[inside], w_all[inside]

    # separable Gaussians: image = sum_s w_s gy_s(y) gx_s(x)
    norm = 1.0 / (2.0 * math.pi * sigma * sigma)
    image = np.zeros((ny, nx))
    for start in range(0, len(xy), chunk):
        sl = slice(start, start + chunk)
        gx = np.exp(-0.5 * ((x[None, :] - xy[sl, 0:1]) / sigma) ** 2)
        gy = np.exp(-0.5 * ((y[None, :] - xy[sl, 1:2]) / sigma) ** 2)
        image += (gy * w_all[sl, None]).T @ gx
    image *= norm
    meanfield = site_ldos.params.get("meanfield", {}) if isinstance(site_ldos.params, dict) else {}
    params = {
        "bias_ev": float(bias[bias_index]), "bias_index": bias_index, "spin": spin, "n_cells": n_cells,
        "pixels_per_nm": pixels_per_nm, "orbital_width_nm": sigma, "decay_per_nm": kappa,
        "hubbard_u_ev": meanfield.get("interaction", {}).get("hubbard_u_ev"),
        "ldos": {k: v for k, v in site_ldos.params.items() if k != "energies_ev"},
    }
    return STMMap(x, y, image, params)


def check_image_axes(result, path, x: str, y: str):
    """``result`` (with ``image`` (ny, nx) and axes ``x`` (nx,), ``y`` (ny,)) as loaded from ``path``;
    MoireSTMError naming the file when the shapes disagree."""
    shape = (len(getattr(result, y)), len(getattr(result, x)))
    if np.shape(result.image) != shape:
        raise MoireSTMError(f"{path}: damaged {result.KIND}, image shape {np.shape(result.image)} does not match "
                            f"the axes {x}, {y} {shape}")
    return result
