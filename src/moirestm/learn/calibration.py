"""Calibration and identifiability of a :class:`~moirestm.learn.posterior.PosteriorRun` on held-out draws.

:func:`calibration_metrics` draws ``n_samples`` posterior samples per image and reports, per
parameter, the posterior-median MAE and RMSE, the empirical coverage of the central
50/68/90/95 % intervals, simulation-based calibration (ranks as sbi's ``run_sbc`` makes them, checked by sbi's
KS test; ``sbc_ks_p``: the solve-aware test of :func:`sbc_ks_p_by_solve`; ``sbc_ks_p_pooled_images`` and
``sbc_c2st_pooled_images``: sbi's ``check_sbc`` on every image as if independent), the contraction ``prior sd / posterior sd`` and the
posterior correlations of U with every other parameter, binned by the true U.

U counts as *identifiable* in a U bin when the median contraction of U over the held-out images
in that bin is at least ``IDENTIFIED_CONTRACTION`` (2: the posterior is at most half as wide as
the prior); the identifiable range is the longest contiguous run of such bins.
:func:`evaluate_posterior` adds the point baseline (network + kernel blend, split-conformal
intervals) on the same images, the out-of-family check of the evaluated store and plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import MoireSTMError
from .data import DEFAULT_TARGET, batch_inputs, open_store
from .posterior import (CALIBRATED_90, COVERAGE_LEVELS, IDENTIFIED_CONTRACTION, POINT_DIR, PosteriorRun,
                        _theta_values, coverage_warnings, store_priors)

#: U bins of the identifiability analysis
N_U_BINS = 6
#: Fewer independent samples than this make sbi warn that SBC checks are weak (sbi.diagnostics.check_sbc).
SBC_MIN_SAMPLES = 100
#: Fewest solves in one of the one-image-per-solve subsets of :func:`sbc_ks_p_by_solve` (fewer solves in all: all).
SBC_MIN_SOLVES = 10
#: Largest p-value a subset test enters the Cauchy combination with (a p-value of 1 would be tan(-pi/2)).
CAUCHY_P_MAX = 0.999


def interval_coverage(samples: np.ndarray, truth: np.ndarray, groups: np.ndarray | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per level, the fraction of images whose truth lies in the central interval, per parameter, and its
    standard error.

    With ``groups`` (the solve of every image, :func:`solve_groups`) the error is cluster-robust: images of
    one solve count as one correlated block, ``se^2 = G / (G - 1) * sum_g (sum_{i in g} (c_i - c))^2 / n^2``
    (Liang & Zeger, Biometrika 73, 13 (1986)); without (every image its own group), ``sqrt(c (1 - c) / (n - 1))``.
    With fewer than ``SBC_MIN_SOLVES`` groups the error cannot be estimated: NaN (two solves whose images are
    all covered would otherwise give 1.00 +- 0.00).
    """
    groups = np.unique(np.arange(len(truth)) if groups is None else np.asarray(groups), return_inverse=True)[1]
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    cover, se = {}, {}
    for level in COVERAGE_LEVELS:
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
        inside = ((truth >= lo) & (truth <= hi)).astype(float)
        cover[str(level)] = inside.mean(axis=0)
        sums = np.zeros((n_groups, inside.shape[1]))
        np.add.at(sums, groups, inside - cover[str(level)])
        se[str(level)] = (np.sqrt((sums ** 2).sum(axis=0) * n_groups / (n_groups - 1)) / len(truth)
                          if n_groups >= SBC_MIN_SOLVES else np.full(inside.shape[1], np.nan))
    return cover, se


def sbc(z_samples: np.ndarray, z_truth: np.ndarray) -> dict:
    """Simulation-based calibration (Talts et al. 2018) checked by sbi's ``check_sbc``.

    The ranks are those of sbi's ``run_sbc`` (``reduce_fns="marginals"``: the number of posterior
    samples below the truth, per parameter), computed from the samples already drawn (``run_sbc``
    would draw them again through sbi's unbounded rejection sampler, which stalls on images whose
    flow mass lies mostly outside the prior box).  Ranks are invariant under the box's affine map.
    """
    import warnings

    from sbi.diagnostics import check_sbc

    z_samples = torch.from_numpy(np.asarray(z_samples, dtype=np.float32))
    thetas = torch.from_numpy(np.asarray(z_truth, dtype=np.float32))
    ranks = (z_samples < thetas[:, None, :]).sum(dim=1).float()
    with warnings.catch_warnings():  # sbi's "fewer than 100 SBC samples": said once, in the metrics' warnings
        warnings.filterwarnings("ignore", message=".*less than 100 samples.*")
        checks = check_sbc(ranks, thetas, z_samples[:, 0, :], num_posterior_samples=z_samples.shape[1])
    return {"ranks": ranks.numpy(), "ks_p": checks["ks_pvals"].numpy(), "c2st_ranks": checks["c2st_ranks"].numpy()}


def cauchy_combination(p_values: np.ndarray) -> np.ndarray:
    """Combined p-value of dependent tests along axis 0 (Liu & Xie, JASA 115, 393 (2020)): the mean of
    ``tan((0.5 - p) pi)`` has a standard Cauchy tail whatever the tests' correlation, so its tail
    probability is a valid p-value at small levels without modelling the dependence."""
    p = np.clip(np.asarray(p_values, dtype=float), 1e-300, CAUCHY_P_MAX)
    t = np.mean(np.tan((0.5 - p) * np.pi), axis=0)
    return 0.5 - np.arctan(t) / np.pi


def sbc_ks_p_by_solve(ranks: np.ndarray, groups: np.ndarray, n_posterior_samples: int) -> np.ndarray:
    """Per-parameter KS p-value for uniform SBC ranks when images come in solves.

    Images of one mean-field solve share U and the draw, so their ranks are correlated and a KS test on
    all of them at once rejects a calibrated posterior far more often than its level says.  The k-th
    image of every solve forms an independent sample (k = 0, 1, ...; subsets with at least
    ``SBC_MIN_SOLVES`` solves, or all subsets when there are fewer solves); each is tested with sbi's
    KS test, and the subsets' p-values, dependent on each other, are joined by :func:`cauchy_combination`.
    """
    from sbi.diagnostics.sbc import check_uniformity_frequentist

    groups = np.asarray(groups)
    position = np.empty(len(groups), dtype=int)
    for g in np.unique(groups):
        position[groups == g] = np.arange(np.count_nonzero(groups == g))
    counts = np.bincount(position)
    enough = min(SBC_MIN_SOLVES, counts[0])
    p_values = [check_uniformity_frequentist(torch.from_numpy(np.asarray(ranks)[position == k]),
                                             n_posterior_samples).numpy()
                for k in range(len(counts)) if counts[k] >= enough]
    return cauchy_combination(np.array(p_values))


def _bins(u: np.ndarray, low: float, high: float) -> list[np.ndarray]:
    edges = np.linspace(low, high, N_U_BINS + 1)
    idx = np.clip(np.digitize(u, edges) - 1, 0, N_U_BINS - 1)
    return [idx == b for b in range(N_U_BINS)], edges


def identifiability(run: PosteriorRun, samples: np.ndarray, truth: np.ndarray, prior_sd: np.ndarray) -> dict:
    """Contraction and U correlations per U bin, and the identifiable U range (see the module docstring)."""
    names = run.names
    iu = names.index(DEFAULT_TARGET)
    post_sd = samples.std(axis=1)
    contraction = prior_sd / np.maximum(post_sd, 1e-12)
    centred = samples - samples.mean(axis=1, keepdims=True)
    cov = np.einsum("nsi,nsj->nij", centred, centred) / samples.shape[1]
    corr = cov / np.maximum(np.einsum("ni,nj->nij", post_sd, post_sd), 1e-24)
    masks, edges = _bins(truth[:, iu], run.theta.low[iu], run.theta.high[iu])
    median = np.median(samples, axis=1)
    rows = []
    for b, m in enumerate(masks):
        row = {"u_low": float(edges[b]), "u_high": float(edges[b + 1]), "n": int(m.sum())}
        if m.any():
            row["contraction"] = {n: float(np.median(contraction[m, j])) for j, n in enumerate(names)}
            row["corr_u"] = {n: float(np.mean(corr[m, iu, j])) for j, n in enumerate(names) if j != iu}
            row["u_mae"] = float(np.mean(np.abs(median[m, iu] - truth[m, iu])))
        rows.append(row)
    good = [r.get("contraction", {}).get(DEFAULT_TARGET, 0.0) >= IDENTIFIED_CONTRACTION for r in rows]
    best, cur = (0, -1), None
    for b, ok in enumerate(good + [False]):
        if ok and cur is None:
            cur = b
        elif not ok and cur is not None:
            if b - cur > best[1] - best[0] + 1:
                best = (cur, b - 1)
            cur = None
    result = {"definition": f"U bins (of {N_U_BINS} over the prior range) whose median U contraction "
                            f"(prior sd / posterior sd) is >= {IDENTIFIED_CONTRACTION}; longest contiguous run",
              "bins": rows, "prior_sd": {n: float(s) for n, s in zip(names, prior_sd)},
              "contraction": {n: float(np.median(contraction[:, j])) for j, n in enumerate(names)},
              "corr_u": {n: float(np.mean(corr[:, iu, j])) for j, n in enumerate(names) if j != iu},
              "identifiable_u": None}
    if best[1] >= best[0]:
        lo, hi = rows[best[0]]["u_low"], rows[best[1]]["u_high"]
        inside = (truth[:, iu] >= lo) & (truth[:, iu] <= hi)
        result["identifiable_u"] = {"low": lo, "high": hi, "n": int(inside.sum()),
                                    "u_mae": float(np.mean(np.abs(median[inside, iu] - truth[inside, iu])))}
    return result


def calibration_metrics(run: PosteriorRun, store: Any, keys: Sequence[str], n_samples: int | None = None,
                        seed: int = 0, with_sbc: bool = True, keep: bool = False) -> dict:
    """Posterior-median MAE/RMSE, interval coverage, SBC and identifiability on ``keys`` of ``store``.

    ``keep`` adds the raw arrays (``samples``, ``truth``, ``ood_scores``, ``ranks``) for plotting.
    """
    st = open_store(store)
    keys = list(keys)
    if not keys:
        raise MoireSTMError("no samples to evaluate")
    n_samples = n_samples or run.config.get("n_samples", 1000)
    images = run.held_out_images(st, keys)
    truth = _theta_values(st, keys, run.theta)
    x = batch_inputs(run.normalizer, images)
    z, scores = run.sample_and_score(x, n_samples, seed)
    samples = run.theta.decode(z)
    groups = solve_groups(st, keys)
    cover, cover_se = interval_coverage(samples, truth, groups)
    median = np.median(samples, axis=1)
    checks = sbc(z, run.theta.encode(truth)) if with_sbc else None
    by_solve = sbc_ks_p_by_solve(checks["ranks"], groups, n_samples) if with_sbc else None
    out = {"n": len(keys), "n_solves": int(groups.max()) + 1, "n_samples": n_samples, "parameters": {}}
    for j, name in enumerate(run.names):
        err = median[:, j] - truth[:, j]
        out["parameters"][name] = {
            "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))),
            "mean_interval_68": float(np.mean(np.diff(np.quantile(samples[:, :, j], [0.16, 0.84], axis=1), axis=0))),
            "coverage": {level: float(c[j]) for level, c in cover.items()},
            "coverage_se": {level: float(c[j]) if np.isfinite(c[j]) else None for level, c in cover_se.items()},
            **({"sbc_ks_p": float(by_solve[j]), "sbc_ks_p_pooled_images": float(checks["ks_p"][j]),
                "sbc_c2st_pooled_images": float(checks["c2st_ranks"][j])} if checks else {})}
    prior_sd = np.asarray([run.summary.get("prior_sd", {}).get(n, np.nan) for n in run.names])
    if np.any(~np.isfinite(prior_sd)):
        prior_sd = (run.theta.high - run.theta.low) / np.sqrt(12)
    out["identifiability"] = identifiability(run, samples, truth, prior_sd)
    out["ood"] = {"threshold": run.ood["threshold"], "flagged": float(np.mean(scores > run.ood["threshold"]))}
    if keep:
        out["_arrays"] = {"samples": samples, "truth": truth, "ood_scores": scores, "n_solves": out["n_solves"],
                          **({"ranks": checks["ranks"]} if checks else {})}
    return out


def solve_groups(st, keys: Sequence[str]) -> np.ndarray:
    """The mean-field solve of every key, numbered in order of first appearance (images of one solve share U
    and the draw, differing only in the per-image parameters, so rank tests treat them as one sample)."""
    from ..dataset.sweep import solve_key

    numbers: dict = {}
    return np.fromiter((numbers.setdefault(solve_key(st.params(k)), len(numbers)) for k in keys), dtype=int,
                       count=len(keys))


def point_metrics(run: PosteriorRun, st, keys: Sequence[str]) -> dict | None:
    """The point baseline's MAE/RMSE and its conformal-interval coverage on ``keys`` (None without one)."""
    point = (run.summary or {}).get("point")
    if not point or run.path is None or not (Path(run.path) / POINT_DIR).is_dir():
        return None
    from .run import Run

    prun = Run.load(Path(run.path) / POINT_DIR)
    mu, sd = prun.predict(run.held_out_images(st, keys))
    y = np.array([float(st.params(k)[DEFAULT_TARGET]) for k in keys])
    err = mu[:, 0] - y
    cover = {level: float(np.mean(np.abs(err) <= q * sd[:, 0])) for level, q in point["conformal"].items()}
    return {"model": point["model"], "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))),
            "conformal_coverage": cover, "prediction": mu[:, 0].tolist(), "sigma": sd[:, 0].tolist()}


def check_family(run: PosteriorRun, st) -> list[str]:
    """Warnings when ``st`` was drawn from other priors or another twist index than the run's training store.

    A store whose samples lack a parameter the run infers, or whose images have another shape,
    raises MoireSTMError (it cannot be evaluated at all).
    """
    keys = st.keys(status="ok")
    if not keys:
        raise MoireSTMError("the store has no usable samples")
    missing = [n for n in run.names if n not in st.params(keys[0])]
    if missing:
        raise MoireSTMError(f"the store's samples lack {', '.join(missing)}: it is not of the run's family "
                            f"(the run infers {', '.join(run.names)})")
    shape = tuple(np.shape(st.image(keys[0])))
    if shape != tuple(run.normalizer.image_shape):
        raise MoireSTMError(f"the store's images have shape {shape}, the run's {tuple(run.normalizer.image_shape)}")
    warnings = []
    try:
        priors = store_priors(st)
    except MoireSTMError:
        priors = None
    if priors != run.family.get("priors"):
        warnings.append("the store was not drawn from the run's priors: calibration figures are not "
                        "those of the training family")
    sweep = st.sweep_params if not callable(getattr(st, "sweep_params", None)) else st.sweep_params()
    if sweep.get("index") != run.family.get("index"):
        warnings.append(f"the store's twist index {sweep.get('index')} differs from the run's "
                        f"{run.family.get('index')}")
    return warnings


def evaluate_posterior(run: PosteriorRun | str | Path, store: Any = None, part: str = "test", out=None,
                       n_samples: int | None = None, seed: int = 0) -> dict:
    """Calibration on the run's held-out draws (``part``) or on every sample of another ``store``,
    beside the point baseline; with ``out``, ``metrics.json`` and plots are written there."""
    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    other = store is not None
    source = store if other else run.store
    if source is None:
        raise MoireSTMError("the run records no store path; pass --data STORE")
    st = open_store(source)
    warnings = check_family(run, st) if other else []
    keys = st.keys(status="ok") if other else run.split.keys(part)
    metrics = calibration_metrics(run, st, keys, n_samples, seed, keep=out is not None)
    arrays = metrics.pop("_arrays", None)
    metrics["point"] = point_metrics(run, st, keys)
    if metrics["point"] is not None:
        metrics["point"].pop("prediction")
        metrics["point"].pop("sigma")
    metrics["warnings"] = warnings + coverage_warnings(metrics)
    if metrics["n_solves"] < SBC_MIN_SAMPLES:
        metrics["warnings"].append(f"only {metrics['n']} held-out images from {metrics['n_solves']} solves: "
                                   f"coverage and the SBC KS p-values are rough (sbi recommends at least "
                                   f"{SBC_MIN_SAMPLES} independent samples)")
    if metrics["ood"]["flagged"] > 0.25:
        metrics["warnings"].append(f"{metrics['ood']['flagged']:.0%} of the images are flagged out of family")
    result = {"kind": "posterior", "part": "all" if other else part, "store": str(source), **metrics,
              "calibrated_90_band": list(CALIBRATED_90)}
    if out is not None:
        from ..io import output_dir, write_json
        from ..plot.posterior import save_calibration_figures

        directory = output_dir(out)
        result["plots"] = save_calibration_figures(arrays, run.names, directory,
                                                   result["identifiability"])
        result["out"] = str(directory)
        write_json(directory / "metrics.json", result, "PosteriorEvaluation", overwrite=True)
    return result


__all__ = ["calibration_metrics", "cauchy_combination", "evaluate_posterior", "identifiability", "interval_coverage",
           "sbc", "sbc_ks_p_by_solve", "solve_groups",
           "point_metrics", "check_family", "N_U_BINS"]
