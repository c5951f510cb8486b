"""Figures of a posterior run's calibration: coverage curve, SBC rank histograms, posterior median vs
truth with intervals, and contraction vs the true U (axes-in / axes-out, like :mod:`moirestm.plot`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _axes, figure, save_figure

U_NAME = "hubbard_u_ev"


def coverage_curve(samples: np.ndarray, truth: np.ndarray, names, ax=None):
    """Empirical coverage of central intervals vs their nominal level, one line per parameter."""
    ax = _axes(ax)
    levels = np.linspace(0.05, 0.95, 19)
    for j, name in enumerate(names):
        lo, hi = np.quantile(samples[:, :, j], [(1 - levels) / 2, (1 + levels) / 2], axis=1)
        cover = np.mean((truth[None, :, j] >= lo) & (truth[None, :, j] <= hi), axis=1)
        ax.plot(levels, cover, marker=".", label=name)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8)
    ax.set_xlabel("nominal central-interval level")
    ax.set_ylabel("empirical coverage (held-out draws)")
    ax.legend(fontsize=7)
    return ax


def rank_histograms(ranks: np.ndarray, names, n_samples: int, axes=None, bins: int = 10,
                    n_independent: int | None = None):
    """SBC rank histograms (uniform for a calibrated posterior; the band is +-2 binomial sd of a bin's count).

    ``n_independent``: how many independent samples the ranks hold (the solves, when each solve's images
    share U and the draw); the band is then that of ``n_independent`` samples scaled to the count, as wide
    as it is when a solve's ranks coincide.
    """
    if axes is None:
        _, axes = figure(ncols=len(names), figsize=(2.6 * len(names), 2.6), squeeze=False)
        axes = axes[0]
    n = len(ranks)
    independent = n if n_independent is None else max(min(int(n_independent), n), 1)
    expected, sd = n / bins, n * np.sqrt((1 / bins) * (1 - 1 / bins) / independent)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.hist(ranks[:, j], bins=bins, range=(0, n_samples), color="tab:blue", alpha=0.7)
        ax.axhspan(expected - 2 * sd, expected + 2 * sd, color="0.8", alpha=0.5)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("rank")
    return axes


def median_vs_truth(samples: np.ndarray, truth: np.ndarray, names, axes=None, point=None):
    """Posterior median with 68 % (thick) and 95 % (thin) intervals vs the true value; ``point``
    (predictions of U) overlays the point model."""
    if axes is None:
        _, axes = figure(ncols=len(names), figsize=(2.9 * len(names), 2.9), squeeze=False)
        axes = axes[0]
    q = np.quantile(samples, [0.025, 0.16, 0.5, 0.84, 0.975], axis=1)
    for j, (ax, name) in enumerate(zip(axes, names)):
        t = truth[:, j]
        ax.errorbar(t, q[2, :, j], yerr=[q[2, :, j] - q[0, :, j], q[4, :, j] - q[2, :, j]], fmt="none",
                    ecolor="0.7", lw=0.5)
        ax.errorbar(t, q[2, :, j], yerr=[q[2, :, j] - q[1, :, j], q[3, :, j] - q[2, :, j]], fmt=".",
                    color="tab:blue", ms=3, lw=1.2, label="posterior")
        if point is not None and name == U_NAME:
            ax.plot(t, point, "x", color="tab:red", ms=3, label="point blend")
            ax.legend(fontsize=6)
        lim = [min(t.min(), q[0, :, j].min()), max(t.max(), q[4, :, j].max())]
        ax.plot(lim, lim, color="k", lw=0.6)
        ax.set_xlabel(f"true {name}", fontsize=8)
        ax.set_ylabel("posterior median", fontsize=8)
    return axes


def contraction_vs_u(identifiability: dict, ax=None):
    """Median contraction (prior sd / posterior sd) of each parameter per bin of the true U."""
    ax = _axes(ax)
    rows = [r for r in identifiability["bins"] if "contraction" in r]
    centres = [(r["u_low"] + r["u_high"]) / 2 for r in rows]
    for name in rows[0]["contraction"] if rows else []:
        ax.plot(centres, [r["contraction"][name] for r in rows], marker="o", label=name)
    ax.axhline(identifiability.get("threshold", 2.0), color="0.5", ls="--", lw=0.8)
    ax.set_xlabel("true U (eV)")
    ax.set_ylabel("contraction (prior sd / posterior sd)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return ax


def save_calibration_figures(arrays: dict, names, directory: Path, identifiability: dict, point=None) -> dict:
    """Write coverage.png, sbc_ranks.png, median_vs_truth.png and contraction.png; returns their paths."""
    directory = Path(directory)
    out = {}
    fig, ax = figure()
    coverage_curve(arrays["samples"], arrays["truth"], names, ax)
    out["coverage"] = str(save_figure(fig, directory / "coverage.png", overwrite=True))
    if "ranks" in arrays:
        fig, axes = figure(ncols=len(names), figsize=(2.6 * len(names), 2.6), squeeze=False)
        rank_histograms(arrays["ranks"], names, arrays["samples"].shape[1], axes[0],
                        n_independent=arrays.get("n_solves"))
        fig.tight_layout()
        out["sbc_ranks"] = str(save_figure(fig, directory / "sbc_ranks.png", overwrite=True))
    fig, axes = figure(ncols=len(names), figsize=(2.9 * len(names), 2.9), squeeze=False)
    median_vs_truth(arrays["samples"], arrays["truth"], names, axes[0], point)
    fig.tight_layout()
    out["median_vs_truth"] = str(save_figure(fig, directory / "median_vs_truth.png", overwrite=True))
    fig, ax = figure()
    contraction_vs_u(identifiability, ax)
    out["contraction"] = str(save_figure(fig, directory / "contraction.png", overwrite=True))
    return out
