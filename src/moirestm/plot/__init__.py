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


def figure(ncols: int = 1, nrows: int = 1, figsize=(4.5, 4.5), dpi: int = 120):
    """A new figure (no pyplot state, Agg canvas) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    axes = fig.subplots(nrows, ncols)
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


def save(draw, result, path, overwrite: bool = False, dpi: int | None = None, **kwargs):
    """Draw ``result`` with the plot function ``draw`` on a new figure and save it to ``path``."""
    ax = draw(result, **kwargs)
    return save_figure(ax.figure, path, overwrite=overwrite, dpi=dpi)


__all__ = ["bands", "dos", "figure", "save", "save_figure", "stm_map", "u_sweep"]
