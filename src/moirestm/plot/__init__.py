"""Figures for moirestm results, apart from the physics (kwant ``plotter`` / scikit-learn ``Display`` style).

Every function takes a result and an optional matplotlib ``Axes`` and returns the ``Axes``
it drew on, so figures compose in notebooks; :func:`save_figure` writes a figure through the
one output path (:mod:`moirestm.io`: atomic, refuses to replace a file of another kind) with a
marker that lets a rerun recognise its own figure. No other module imports matplotlib.
"""

from __future__ import annotations

import os

import numpy as np

from .. import __version__
from ..io import FIGURE, atomic_output


def figure(ncols: int = 1, nrows: int = 1, figsize=(4.5, 4.5), dpi: int = 120, squeeze: bool = True):
    """A new figure (no pyplot state, Agg canvas) and its axes (``squeeze=False``: a 2-D array)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes


def _axes(ax, **kw):
    if ax is not None:
        return ax
    return figure(**kw)[1]


def save_figure(fig, path: str | os.PathLike, overwrite: bool = False, dpi: int | None = None):
    """Atomically save ``fig`` (format from the suffix) with the moirestm marker; returns the path."""
    import matplotlib

    suffix = os.fspath(path).rsplit(".", 1)[-1].lower() if "." in os.fspath(path) else "png"
    metadata = {"Creator": f"moirestm {__version__} (matplotlib {matplotlib.__version__})"}
    if suffix == "png":
        metadata = {"Software": metadata["Creator"]}
    elif suffix not in ("pdf", "svg"):
        metadata = None
    with atomic_output(path, FIGURE, overwrite) as tmp:
        fig.savefig(tmp, format=suffix, dpi=dpi or "figure", metadata=metadata)
    return path


def check_colormap(name: str) -> str:
    """``name`` if matplotlib knows the colour map; MoireSTMError otherwise."""
    import matplotlib

    from ..errors import MoireSTMError

    if name not in matplotlib.colormaps:
        raise MoireSTMError(f"unknown colour map {name!r}")
    return name


def save_colormapped(path: str | os.PathLike, image: np.ndarray, cmap: str) -> None:
    """Write ``image`` as a colour-mapped PNG for viewing (one pixel per value, no axes)."""
    import matplotlib.pyplot as plt

    plt.imsave(path, image, cmap=cmap)


def bands(result, ax=None, window_ev: float | None = 0.3, title: str | None = None):
    """Band structure (``BandStructure``) relative to the Fermi level, in meV."""
    ax = _axes(ax)
    ax.plot(result.distance_nm, (result.energies_ev - result.fermi_ev) * 1e3, color="k", lw=0.9)
    for t in result.ticks_nm:
        ax.axvline(t, color="0.7", lw=0.6)
    ax.axhline(0.0, color="tab:red", lw=0.6, ls="--")
    ax.set_xticks(result.ticks_nm, [r"$\Gamma$" if lab == "G" else lab for lab in result.labels])
    ax.set_xlim(result.distance_nm[0], result.distance_nm[-1])
    if window_ev is not None:
        ax.set_ylim(-window_ev * 1e3, window_ev * 1e3)
    ax.set_ylabel(r"$E - E_F$ (meV)")
    ax.set_title(title or result.params.get("structure", {}).get("name", "bands"), fontsize=9)
    ax.figure.tight_layout()
    return ax


def dos(result, ax=None):
    """Density of states (``DensityOfStates``) against E - E_F in meV."""
    ax = _axes(ax, figsize=(4.5, 3.2))
    ax.plot((result.energies_ev - result.fermi_ev) * 1e3, result.dos_per_ev, color="k", lw=0.9)
    ax.set_xlabel(r"$E - E_F$ (meV)")
    ax.set_ylabel("DOS (states/eV/cell/spin)")
    ax.figure.tight_layout()
    return ax


def stm_map(result, ax=None, title: str | None = None, cmap: str = "inferno"):
    """Real-space STM map (``STMMap``) with nm axes and a colour bar."""
    ax = _axes(ax, figsize=(5, 4.6))
    x, y = result.x_nm, result.y_nm
    dx = x[1] - x[0] if len(x) > 1 else 1.0
    dy = y[1] - y[0] if len(y) > 1 else 1.0
    extent = (x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2)
    im = ax.imshow(result.image, origin="lower", extent=extent, cmap=cmap, aspect="equal")
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="LDOS (states/eV/nm$^2$)")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    p = result.params
    ax.set_title(title or f"STM map, bias {1e3 * p.get('bias_ev', float('nan')):.0f} meV, "
                          f"U = {p.get('hubbard_u_ev', float('nan')):g} eV", fontsize=9)
    ax.figure.tight_layout()
    return ax


def ft_image(result, ax=None, cmap: str = "inferno"):
    """An ``FTImage`` with k axes in nm^-1 (colour map for viewing only)."""
    ax = _axes(ax, figsize=(4.6, 4.2))
    extent = (result.kx_nm[0], result.kx_nm[-1], result.ky_nm[0], result.ky_nm[-1])
    ax.imshow(result.image, origin="lower", extent=extent, cmap=cmap, aspect="equal")
    ax.set_xlabel("$k_x$ (nm$^{-1}$)")
    ax.set_ylabel("$k_y$ (nm$^{-1}$)")
    return ax


def u_sweep(result, ax=None, title: str = ""):
    """Order parameters of a ``USweep`` against U (best branch), not-converged points marked."""
    ax = _axes(ax, figsize=(4.8, 3.4))
    for key, label, style in (("staggered_magnetization", "staggered $m_s$", "o-"),
                              ("max_local_moment", r"max $|m_i|$", "s--"),
                              ("ferromagnetic_moment", "FM moment", "^:")):
        ax.plot(result.u_ev, [s.orders()[key] for s in result.best], style, ms=3, lw=1, label=label)
    bad = [u for u, s in zip(result.u_ev, result.best) if not s.converged]
    if bad:
        ax.plot(bad, np.zeros(len(bad)), "rx", label="not converged")
    ax.set_xlabel("U (eV)")
    ax.set_ylabel(r"moment ($\mu_B$/site)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax


def _metrics(y, pred) -> tuple[float, float]:
    err = np.asarray(pred) - np.asarray(y)
    ss = float(np.sum((np.asarray(y) - np.mean(y)) ** 2))
    return float(np.mean(np.abs(err))), (1.0 - float(np.sum(err ** 2)) / ss) if ss > 0 else float("nan")


def _per_target(names, axes, height: float, title: str, draw):
    """One panel per target, drawn by ``draw(ax, j, name)``, with the true value on the x axis."""
    n = len(names)
    if axes is None:
        axes = figure(n, 1, figsize=(4.2 * n, height), dpi=110)[1]
    axes = np.atleast_1d(axes)
    for j, name in enumerate(names):
        draw(axes[j], j, name)
        axes[j].set_xlabel(f"true {name}")
    axes[0].figure.suptitle(title, fontsize=10)
    axes[0].figure.tight_layout()
    return axes


def parity(y, pred, sigma, names, axes=None, title: str = ""):
    """Predicted against true value (with 1-sigma bars), one panel per target; returns the axes."""
    def draw(ax, j, name):
        lo, hi = float(min(y[:, j].min(), pred[:, j].min())), float(max(y[:, j].max(), pred[:, j].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.errorbar(y[:, j], pred[:, j], yerr=sigma[:, j], fmt="o", ms=3, alpha=0.7, elinewidth=0.8)
        mae, r2 = _metrics(y[:, j], pred[:, j])
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(f"MAE {mae:.3g}, R² {r2:.4f}", fontsize=9)

    return _per_target(names, axes, 4.0, title, draw)


def residuals(y, pred, sigma, names, axes=None, title: str = ""):
    """Residual against true value (with 1-sigma bars), one panel per target; returns the axes."""
    def draw(ax, j, name):
        ax.axhline(0, color="k", lw=1)
        ax.errorbar(y[:, j], pred[:, j] - y[:, j], yerr=sigma[:, j], fmt="o", ms=3, alpha=0.7, elinewidth=0.8)
        ax.set_ylabel("residual")

    return _per_target(names, axes, 3.4, title, draw)


def history(records, axes=None):
    """Training loss (log) and validation MAE per epoch from a run's history; returns the two axes."""
    if axes is None:
        axes = figure(2, 1, figsize=(9, 3.2), dpi=100)[1]
    ep = [h["epoch"] for h in records]
    axes[0].plot(ep, [h["train_loss"] for h in records], "o-", ms=3)
    axes[0].set_ylabel("training loss (standardised MSE)")
    axes[0].set_yscale("log")
    mae = np.array([h["val_mae"] for h in records], float).reshape(len(records), -1)
    axes[1].plot(ep, mae, "o-", ms=3)
    axes[1].set_ylabel("validation MAE")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].figure.tight_layout()
    return axes


def ft_comparison(measured, kx_nm, ky_nm, simulated=None, axes=None, *, title_measured: str = "measured",
                  title_simulated: str = "simulated", log: bool = True):
    """A measured FT image (and a simulated one on the same window) side by side; returns the axes."""
    panels = [(measured, title_measured)] + ([(simulated, title_simulated)] if simulated is not None else [])
    if axes is None:
        axes = figure(len(panels), 1, figsize=(5 * len(panels), 4.6), dpi=110)[1]
    axes = np.atleast_1d(axes)
    extent = (kx_nm[0], kx_nm[-1], ky_nm[0], ky_nm[-1])
    for ax, (img, title) in zip(axes, panels):
        img = np.asarray(img, dtype=float)
        shown = np.log10(img - img.min() + 1e-3 * (np.ptp(img) or 1.0)) if log else img
        ax.imshow(shown, origin="lower", extent=extent, cmap="inferno", aspect="equal")
        ax.set_title(title)
        ax.set_xlabel("$k_x$ (nm$^{-1}$)")
        ax.set_ylabel("$k_y$ (nm$^{-1}$)")
    axes[0].figure.tight_layout()
    return axes


__all__ = ["bands", "dos", "figure", "ft_comparison", "ft_image", "history", "parity", "residuals", "save_figure",
           "stm_map", "u_sweep"]
