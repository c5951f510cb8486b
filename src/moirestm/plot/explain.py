"""Figures of the explanation stage: attribution overlays and shares, dataset analysis panels.

Axes-in / axes-out like :mod:`moirestm.plot`, and like it importing no computing module: names and
labels (regions, methods, order parameters) come in as arguments. The explanation modules save the
figures through :func:`moirestm.plot.save_figure`.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import MoireSTMError
from . import figure


def overlays(attributions, methods, labels: dict | None = None, max_rows: int = 6, axes=None):
    """Per sample (row) the FT image and each attribution map of ``methods`` over it (titles from
    ``labels``), with the peak positions; returns the (rows, 1 + methods) axes."""
    atts = list(attributions)[:max_rows]
    if not atts:
        raise MoireSTMError("no attributions to plot")
    labels = labels or {}
    methods = [m for m in methods if m in atts[0].maps]
    ncol = 1 + len(methods)
    if axes is None:
        axes = figure(ncol, len(atts), figsize=(2.7 * ncol, 2.6 * len(atts)), dpi=100, squeeze=False)[1]
    for r, a in enumerate(atts):
        reg = a.regions
        ext = (reg.kx_nm[0], reg.kx_nm[-1], reg.ky_nm[0], reg.ky_nm[-1])
        for c in range(ncol):
            ax = axes[r, c]
            ax.imshow(a.image, origin="lower", extent=ext, cmap="gray", aspect="auto")
            if c == 0:
                ax.set_title(f"U = {a.u_true:.2f} eV (pred {a.u_pred:.2f})", fontsize=8)
            else:
                name = methods[c - 1]
                m = np.abs(a.maps[name])
                m = m / m.max() if m.max() > 0 else m
                ax.imshow(m, origin="lower", extent=ext, cmap="magma", alpha=0.65, aspect="auto", vmin=0, vmax=1)
                sh = a.shares[name]
                ax.set_title(f"{labels.get(name, name)}\nmoiré {sh['moire']:.2f} Bragg {sh['bragg']:.2f}",
                             fontsize=7)
            for kind, colour in (("moire", "cyan"), ("bragg", "lime"), ("satellite", "yellow")):
                p = reg.peaks[kind]
                ax.scatter(p[:, 0], p[:, 1], s=14 if kind != "satellite" else 5, facecolors="none",
                           edgecolors=colour, linewidths=0.6)
            ax.set_xlim(ext[0], ext[1])
            ax.set_ylim(ext[2], ext[3])
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].figure.tight_layout()
    return axes


def shares(tables: dict, regions: dict, labels: dict | None = None, u_c: float | None = None, axes=None):
    """Region shares vs U (mean ± std over samples), one panel per method of ``tables`` (``{method:
    shares_by_value table}``), one curve per region of ``regions`` (``{region: label}``); U_c marked if
    given; returns the (1, methods) axes."""
    if not tables:
        raise MoireSTMError("no attributions to plot")
    labels = labels or {}
    if axes is None:
        axes = figure(len(tables), 1, figsize=(4.2 * len(tables), 3.3), dpi=100, squeeze=False)[1]
    for ax, (method, t) in zip(axes[0], tables.items()):
        for region, colour in zip(regions, ("tab:cyan", "tab:green", "tab:gray")):
            mean, std = np.array(t[region]["mean"]), np.array(t[region]["std"])
            ax.plot(t["u"], mean, "o-", ms=3, color=colour, label=regions[region])
            ax.fill_between(t["u"], mean - std, mean + std, color=colour, alpha=0.2)
        if u_c is not None and np.isfinite(u_c):
            ax.axvline(u_c, color="k", ls="--", lw=1, label=f"$U_c$ = {u_c:.2f} eV")
        ax.set_xlabel("U (eV)")
        ax.set_ylabel("share of |attribution|")
        ax.set_ylim(0, 1)
        ax.set_title(labels.get(method, method), fontsize=9)
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].figure.tight_layout()
    return axes


def similarity(res, sel, axes=None):
    """Cosine-similarity matrix of the selected samples (blocks by curve) and its off-diagonal histogram;
    returns the two axes."""
    u_sel = res.u[sel]
    if axes is None:
        axes = figure(2, 1, figsize=(9.5, 4), dpi=100)[1]
    fig = axes[0].figure
    n = len(u_sel)
    ext = (-0.5, n - 0.5, n - 0.5, -0.5)
    for ax, mat, title in ((axes[0], res.similarity, "cosine similarity (raw images)"),
                           (axes[1], None, "histogram of off-diagonal similarity")):
        if mat is not None:
            im = ax.imshow(mat, cmap="viridis", extent=ext)
            fig.colorbar(im, ax=ax, fraction=0.046)
            groups = [res.groups[i] for i in sel]
            for b in [i for i in range(1, n) if groups[i] != groups[i - 1]]:
                ax.axhline(b - 0.5, color="w", lw=0.6)
                ax.axvline(b - 0.5, color="w", lw=0.6)
            ticks = np.unique(np.linspace(0, n - 1, min(n, 7)).astype(int))
            ax.set_xticks(ticks, [f"{u_sel[t]:.1f}" for t in ticks], fontsize=7)
            ax.set_yticks(ticks, [f"{u_sel[t]:.1f}" for t in ticks], fontsize=7)
            ax.set_xlabel("U (eV); blocks: " + (", ".join(res.group_by) or "all") + ", U within a block")
        else:
            off = res.similarity[~np.eye(n, dtype=bool)]
            ax.hist(off, bins=40, color="tab:blue")
            ax.set_xlabel("cosine similarity")
            ax.set_ylabel("pairs")
        ax.set_title(title, fontsize=9)
    s = res.similarity_stats
    fig.suptitle(f"min {s['min']:.5f}, mean {s['mean']:.5f} (n = {n})", fontsize=9)
    fig.tight_layout()
    return axes


def pca(res, sel, axes=None):
    """PC1 against PC2 coloured by U, and PC1 against U; returns the two axes."""
    u_sel = res.u[sel]
    if axes is None:
        axes = figure(2, 1, figsize=(9.5, 3.8), dpi=100)[1]
    fig = axes[0].figure
    c = res.pca_coords
    pc2 = c[:, 1] if c.shape[1] > 1 else np.zeros(len(c))
    sc = axes[0].scatter(c[:, 0], pc2, c=u_sel, cmap="plasma", s=14)
    fig.colorbar(sc, ax=axes[0], label="U (eV)")
    ev = res.pca_explained
    axes[0].set_xlabel(f"PC1 ({100 * ev[0]:.1f} %)")
    axes[0].set_ylabel(f"PC2 ({100 * ev[1]:.1f} %)" if len(ev) > 1 else "PC2")
    axes[1].scatter(u_sel, c[:, 0], s=10, c="tab:purple")
    axes[1].set_xlabel("U (eV)")
    axes[1].set_ylabel("PC1")
    axes[1].set_title("|Spearman ρ(PC, U)|: " + ", ".join(f"{r:.2f}" for r in res.pca_u_spearman[:3]), fontsize=8)
    fig.tight_layout()
    return axes


def intensities(res, regions: dict, axes=None):
    """Mean FT-LDOS in each peak region of ``regions`` (``{region: label}``) against U, one curve per
    group; returns the (1, regions) axes."""
    if axes is None:
        axes = figure(len(regions), 1, figsize=(4 * len(regions), 3.3), dpi=100, squeeze=False)[1]
    for ax, region in zip(axes[0], regions):
        _curves(ax, res.u, res.intensities[region], res.groups)
        ax.set_title(regions[region], fontsize=9)
        ax.set_xlabel("U (eV)")
        ax.set_ylabel("mean FT-LDOS in region")
    _legend(axes[0, 0], len(set(res.groups)))
    axes[0, 0].figure.tight_layout()
    return axes


def order_parameters(res, names, observable_only=(), axes=None):
    """Order parameters ``names`` against U with the crossover estimates marked, curves grouped by the
    varying parameters except ``observable_only`` ones; returns the (1, names) axes."""
    if axes is None:
        axes = figure(len(names), 1, figsize=(3.6 * len(names), 3.3), dpi=100, squeeze=False)[1]
    op_groups = [n for n in res.group_by if n not in observable_only]
    labels = list(res.groups)
    if len(op_groups) != len(res.group_by):
        labels = [", ".join(p for p in lab.split(", ") if p.split("=")[0] in op_groups) or "all"
                  for lab in res.groups]
    for ax, name in zip(axes[0], names):
        _curves(ax, res.u, res.order_parameters[name], labels)
        for g, d in res.crossovers.items():
            cx = d.get(name)
            if cx is not None and math.isfinite(cx.u_c):
                ax.axvline(cx.u_c, color="k", lw=0.6, ls=":")
        if name == res.u_c_parameter and math.isfinite(res.u_c):
            ax.axvline(res.u_c, color="k", lw=1.2, ls="--", label=f"$U_c$ = {res.u_c:.2f} eV")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("U (eV)")
    axes[0, 0].set_ylabel("μ_B per site")
    _legend(axes[0, 0], len(set(labels)))
    axes[0, 0].figure.tight_layout()
    return axes


#: More curves than this are drawn without labels (a store drawn from priors has one group per draw).
MAX_LEGEND_ENTRIES = 8


def _legend(ax, n_curves: int) -> None:
    """A small legend, or a note of the number of curves (``n_curves`` groups) when they are too many to name."""
    if n_curves <= MAX_LEGEND_ENTRIES:
        ax.legend(fontsize=6)
    else:
        ax.text(0.02, 0.98, f"{n_curves} curves (one per group)", transform=ax.transAxes, va="top", fontsize=6)


def _curves(ax, u: np.ndarray, y: np.ndarray, labels: list[str]) -> None:
    for g in sorted(set(labels)):
        idx = np.array([lab == g for lab in labels])
        uu = np.unique(u[idx])
        mean = [np.nanmean(y[idx][u[idx] == v]) for v in uu]
        ax.plot(uu, mean, ".-", ms=3, lw=1, label=g)


__all__ = ["intensities", "order_parameters", "overlays", "pca", "shares", "similarity"]
