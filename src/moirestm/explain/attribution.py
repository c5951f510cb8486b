"""Attribution of a trained run's U prediction to FT-LDOS pixels (captum).

Methods (all for the regression output of the target, default ``hubbard_u_ev``):

``gradcam``
    Grad-CAM (Selvaraju et al., ICCV 2017) on the output of the last convolutional block
    (CNN: the ReLU after the last convolution; ResNet-18: the last residual stage), ReLU'd and
    bilinearly up-sampled to the model input; not defined for the MLP (skipped).
``guided_backprop``
    guided backpropagation (Springenberg et al., ICLR 2015 workshop) through the network's ReLUs.
``integrated_gradients``
    integrated gradients (Sundararajan et al., ICML 2017) from a *blurred* copy of the input
    (Gaussian, σ = ``blur_px`` pixels, default max(2, side/16); Sturmfels, Lundberg & Lee, Distill
    2020): the attributions sum to U(x) - U(blurred x) (standardised units), i.e. they share out
    what the sharp peak structure contributes. ``baseline="zero"`` uses the all-zero normalised
    input (the training-mean image) instead; with bias-free convolutions followed by GroupNorm
    the network is nearly scale-invariant, so the straight path from zero passes a singular
    point near 0 and the Riemann sum converges slowly: prefer the blur baseline.

Attributions live on the model-input grid (the area-down-sampled image); the peak regions of
:mod:`moirestm.explain.regions` are evaluated on the same grid (pooled k axes). Shares are
fractions of the total absolute attribution.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MoireSTMError
from ..io import Result, output_dir, write_json
from .regions import REGION_LABELS, REGIONS, PeakRegions, regions_for_sample

METHODS = ("gradcam", "guided_backprop", "integrated_gradients")
METHOD_LABELS = {"gradcam": "Grad-CAM", "guided_backprop": "guided backprop",
                 "integrated_gradients": "integrated gradients"}
DEFAULT_TARGET = "hubbard_u_ev"


@dataclass
class Attribution(Result):
    """Attribution maps of one sample.

    Attributes
    ----------
    key, params : the sample.
    u_true, u_pred : target value and deterministic prediction (physical units).
    image : model-grid image ``log1p(downsampled / scale)`` used for display (h, w).
    maps : ``{method: (h, w) float}`` attribution on the model input grid.
    regions : :class:`PeakRegions` on the same grid.
    shares : ``{method: {region: share}}``.
    """

    key: str
    params: dict
    u_true: float
    u_pred: float
    image: np.ndarray
    maps: dict
    regions: PeakRegions
    shares: dict = field(default_factory=dict)

    def row(self) -> dict:
        """Plain-data summary (no arrays)."""
        return {"key": self.key, "u_true": self.u_true, "u_pred": self.u_pred,
                "filling": self.params.get("filling"), "shares": self.shares}


def _plain_relus(model: nn.Module) -> nn.Module:
    """Copy of ``model`` in eval mode with non-in-place ReLUs (captum hooks need them)."""
    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def gradcam_layer(model: nn.Module) -> nn.Module | None:
    """Output module of the last convolutional block, or None for networks without convolutions."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return stages[-1]
    modules = list(model.modules())
    last_conv = max((i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)), default=None)
    if last_conv is None:
        return None
    for m in modules[last_conv + 1:]:
        if isinstance(m, nn.ReLU):
            return m
    return modules[last_conv]


def ig_baseline(x: torch.Tensor, baseline: str = "blur", blur_px: float | None = None) -> torch.Tensor:
    """Integrated-gradients baseline for inputs ``x`` (B, C, h, w): ``"blur"`` or ``"zero"``."""
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline != "blur":
        raise MoireSTMError(f"unknown integrated-gradients baseline {baseline!r}; use 'blur' or 'zero'")
    from scipy.ndimage import gaussian_filter

    sigma = float(blur_px) if blur_px else max(2.0, min(x.shape[-2:]) / 16.0)
    arr = x.detach().numpy()
    return torch.from_numpy(gaussian_filter(arr, sigma=(0, 0, sigma, sigma), mode="reflect").astype(np.float32))


def attribution_maps(model: nn.Module, x: torch.Tensor, target: int = 0, methods: Sequence[str] = METHODS,
                     n_steps: int = 32, baseline: str = "blur") -> dict[str, np.ndarray]:
    """Attribution maps ``{method: (B, h, w)}`` of output ``target`` for inputs ``x`` (B, C, h, w).

    Pixel attributions of stacked channels are summed.

    Methods that do not apply to the network (Grad-CAM without convolutions) are left out.
    ``baseline`` is the integrated-gradients baseline (:func:`ig_baseline`).
    """
    import warnings

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise MoireSTMError(f"unknown attribution methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    net = _plain_relus(model)
    x = x.detach().clone().float().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(backward hooks|require gradients).*")
        out = _maps(net, x, target, methods, n_steps, ig_baseline(x, baseline))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _maps(net, x, target, methods, n_steps, base) -> dict:
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam

    out = {}
    if "gradcam" in methods:
        layer = gradcam_layer(net)
        if layer is not None:
            cam = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
            out["gradcam"] = cam[:, 0].detach().numpy().astype(np.float64)
    if "guided_backprop" in methods:
        out["guided_backprop"] = GuidedBackprop(net).attribute(x, target=target).sum(1).detach().numpy()
    if "integrated_gradients" in methods:
        ig = IntegratedGradients(net).attribute(x, baselines=base, target=target, n_steps=n_steps,
                                                internal_batch_size=max(1, min(64, n_steps * len(x))))
        out["integrated_gradients"] = ig.sum(1).detach().numpy()  # summed over stacked channels
    return out


def _load_run(run: Any):
    from ..learn import Run

    return run if isinstance(run, Run) else Run.load(run)


def select_samples(run, store, samples: str | Sequence[str] | None = "test", max_samples: int | None = None,
                   target: str = DEFAULT_TARGET) -> list[str]:
    """Sample keys: a split part (``test``, ``val``, ``train``), ``all``, or explicit keys.

    With ``max_samples``, keys evenly spaced in the target value are kept (sorted by it).
    """
    if samples is None:
        samples = "test"
    if isinstance(samples, str) and samples in ("test", "val", "train"):
        keys = run.split.keys(samples)
    elif isinstance(samples, str) and samples == "all":
        keys = store.keys(status="ok")
    else:
        keys = [samples] if isinstance(samples, str) else list(samples)
        available = set(store.keys(status="ok"))
        missing = [k for k in keys if k not in available]
        if missing:
            raise MoireSTMError(f"no usable sample(s) {', '.join(missing[:5])} in the store "
                                "(give keys, or one of test, val, train, all)")
    if not keys:
        raise MoireSTMError(f"no samples selected ({samples!r})")
    values = np.array([float(store.params(k).get(target, np.nan)) for k in keys])
    order = np.argsort(values, kind="stable")
    keys = [keys[i] for i in order]
    if max_samples is not None and len(keys) > max_samples:
        pick = np.unique(np.round(np.linspace(0, len(keys) - 1, max_samples)).astype(int))
        keys = [keys[i] for i in pick]
    return keys


def attribute(run: Any, store: Any = None, samples: str | Sequence[str] | None = "test",
              methods: Sequence[str] = METHODS, max_samples: int | None = 24, n_steps: int = 32,
              target: str | None = None, batch_size: int = 8, region_options: dict | None = None,
              baseline: str = "blur") -> list[Attribution]:
    """Attribution maps and region shares of selected samples.

    Parameters
    ----------
    run : :class:`moirestm.learn.Run` or its directory.
    store : the store (path or open); default the run's training store.
    samples : split part (``test``, ``val``, ``train``), ``all``, or sample keys.
    methods : subset of :data:`METHODS`.
    max_samples : at most this many samples, evenly spaced in U.
    n_steps : integrated-gradients steps.
    target : regression output to explain (default ``hubbard_u_ev``, else the run's first).
    region_options : keyword arguments of :func:`moirestm.explain.regions.peak_regions`.
    baseline : integrated-gradients baseline, ``"blur"`` (default) or ``"zero"``.
    """
    from ..learn import open_store
    from ..learn.data import batch_inputs

    run = _load_run(run)
    if store is None:
        if run.store is None:
            raise MoireSTMError("the run records no store; pass the store to explain")
        store = run.store
    st = open_store(store, run.normalizer.channels)
    names = run.targets
    target = target or (DEFAULT_TARGET if DEFAULT_TARGET in names else names[0])
    if target not in names:
        raise MoireSTMError(f"the run does not predict {target!r} (it predicts {', '.join(names)})")
    j = names.index(target)
    keys = select_samples(run, st, samples, max_samples, target)
    norm = run.normalizer
    results: list[Attribution] = []
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        raw = [st.image(k) for k in chunk]
        x = batch_inputs(norm, raw)
        with torch.no_grad():
            pred = norm.decode_targets(run.model.eval()(x).numpy())[:, j]
        maps = attribution_maps(run.model, x, target=j, methods=methods, n_steps=n_steps, baseline=baseline)
        for i, key in enumerate(chunk):
            params = st.params(key)
            regions = regions_for_sample(st, key, shape=tuple(x.shape[-2:]), **(region_options or {}))
            m = {name: arr[i] for name, arr in maps.items()}
            display = norm.features(norm.check(raw[i]))
            att = Attribution(key, params, float(params.get(target, np.nan)), float(pred[i]), display, m, regions)
            att.shares = {name: regions.shares(a) for name, a in m.items()}
            results.append(att)
    return results


def shares_by_value(attributions: Sequence[Attribution], method: str) -> dict:
    """Mean and std of each region's share per distinct U: ``{"u": [...], region: {"mean", "std"}, "n"}``."""
    rows = [(a.u_true, a.shares[method]) for a in attributions if method in a.shares]
    if not rows:
        return {"u": [], "n": [], **{r: {"mean": [], "std": []} for r in REGIONS}}
    u = np.round(np.array([r[0] for r in rows]), 9)
    values = np.unique(u)
    out: dict = {"u": values.tolist(), "n": [int(np.sum(u == v)) for v in values]}
    for region in REGIONS:
        s = np.array([r[1][region] for r in rows])
        out[region] = {"mean": [float(np.mean(s[u == v])) for v in values],
                       "std": [float(np.std(s[u == v])) for v in values]}
    return out


def share_trend(attributions: Sequence[Attribution], method: str) -> dict:
    """Spearman correlation of U with the Bragg fraction of the peak attention, per sample.

    The Bragg fraction is ``bragg / (bragg + moire)`` of the shares (independent of how much
    attribution falls elsewhere). ``finding`` says whether attention moves from the central moiré
    peaks to the Bragg peaks and satellites as U grows (ρ > 0, p < 0.05), the opposite
    (ρ < 0, p < 0.05), or neither.
    """
    from scipy.stats import spearmanr

    rows = [(a.u_true, a.shares[method]) for a in attributions if method in a.shares]
    u = np.array([r[0] for r in rows], float)
    diff = np.array([r[1]["bragg"] / (r[1]["bragg"] + r[1]["moire"]) if r[1]["bragg"] + r[1]["moire"] > 0
                     else np.nan for r in rows], float)
    ok = np.isfinite(u) & np.isfinite(diff)
    if ok.sum() < 4 or np.ptp(u[ok]) == 0:
        return {"method": method, "n": int(ok.sum()), "rho": None, "p_value": None,
                "statistic": "spearman(U, bragg/(bragg+moire))", "finding": "too few samples for a trend"}
    res = spearmanr(u[ok], diff[ok])
    rho, p = float(res.statistic), float(res.pvalue)
    if not np.isfinite(rho):
        finding = "no trend (constant shares)"
    elif p < 0.05 and rho > 0:
        finding = "attention moves from the central moiré peaks to the Bragg peaks/satellites as U grows"
    elif p < 0.05 and rho < 0:
        finding = "attention moves from the Bragg peaks/satellites to the central moiré peaks as U grows"
    else:
        finding = "no significant shift between central moiré and Bragg/satellite peaks with U"
    first = {r: float(np.mean([s[r] for uu, s in rows if uu == u.min()])) for r in REGIONS}
    last = {r: float(np.mean([s[r] for uu, s in rows if uu == u.max()])) for r in REGIONS}
    return {"method": method, "n": int(ok.sum()), "rho": rho, "p_value": p,
            "statistic": "spearman(U, bragg/(bragg+moire))", "finding": finding,
            "shares_at_min_u": first, "shares_at_max_u": last}


# --------------------------------------------------------------------------- figures
def plot_overlays(attributions: Sequence[Attribution], path: str | Path, methods: Sequence[str] | None = None,
                  max_rows: int = 6) -> Path:
    """Save :func:`moirestm.plot.explain.overlays` to ``path``."""
    from ..plot import save_figure
    from ..plot.explain import overlays

    axes = overlays(attributions, methods or METHODS, METHOD_LABELS, max_rows)
    return Path(save_figure(axes[0, 0].figure, path, overwrite=True, dpi=100))


def plot_shares(attributions: Sequence[Attribution], path: str | Path, u_c: float | None = None,
                methods: Sequence[str] | None = None) -> Path:
    """Save :func:`moirestm.plot.explain.shares` to ``path``."""
    from ..plot import save_figure
    from ..plot.explain import shares

    present = [m for m in (methods or METHODS) if any(m in a.shares for a in attributions)]
    axes = shares({m: shares_by_value(attributions, m) for m in present}, {r: REGION_LABELS[r] for r in REGIONS},
                  METHOD_LABELS, u_c)
    return Path(save_figure(axes[0, 0].figure, path, overwrite=True, dpi=100))


@dataclass
class ExplainResult(Result):
    """Output of :func:`explain`: attributions, share tables, trend per method and the files written."""

    attributions: list
    shares: dict
    trends: dict
    area_fractions: dict
    files: dict
    out_dir: Path | None

    def summary(self) -> dict:
        return {"n_samples": len(self.attributions), "shares_by_u": self.shares, "trends": self.trends,
                "area_fractions": self.area_fractions, "files": {k: str(v) for k, v in self.files.items()},
                "samples": [a.row() for a in self.attributions]}


def explain(run: Any, store: Any = None, samples: str | Sequence[str] | None = "test",
            out: str | Path | None = None, methods: Sequence[str] = METHODS, max_samples: int | None = 24,
            n_steps: int = 32, u_c: float | None = None, plots: bool = True) -> ExplainResult:
    """Attribute, quantify shares by peak region vs U, and write overlays, share plot and ``explain.json``.

    ``run`` is a point run or a posterior run; of a posterior run the reported quantity, the posterior
    mean of U, is explained (:func:`~moirestm.explain.posterior_attribution.attribute_posterior`).
    ``out`` defaults to ``<run>/explain``; PNGs ``overlays.png`` and ``shares.png``.
    """
    from ..learn.posterior import PosteriorRun, is_posterior_run

    if isinstance(run, PosteriorRun) or (isinstance(run, (str, Path)) and is_posterior_run(run)):
        from .posterior_attribution import attribute_posterior

        run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
        atts = attribute_posterior(run, store, samples, methods=methods, max_samples=max_samples, n_steps=n_steps)
    else:
        run = _load_run(run)
        atts = attribute(run, store, samples, methods=methods, max_samples=max_samples, n_steps=n_steps)
    present = [m for m in methods if any(m in a.shares for a in atts)]
    shares = {m: shares_by_value(atts, m) for m in present}
    trends = {m: share_trend(atts, m) for m in present}
    areas = atts[0].regions.area_fractions() if atts else {}
    files: dict = {}
    out_dir = Path(out) if out is not None else (Path(run.path) / "explain" if run.path is not None else None)
    if out_dir is not None:
        output_dir(out_dir)
        if plots:
            files["overlays"] = plot_overlays(atts, out_dir / "overlays.png", present)
            files["shares"] = plot_shares(atts, out_dir / "shares.png", u_c, present)
        files["json"] = out_dir / "explain.json"
    result = ExplainResult(atts, shares, trends, areas, files, out_dir)
    if out_dir is not None:
        write_json(files["json"], result.summary(), "ExplainSummary", overwrite=True)
    return result


__all__ = ["METHODS", "Attribution", "ExplainResult", "attribute", "attribution_maps", "explain", "gradcam_layer",
           "plot_overlays", "plot_shares", "select_samples", "share_trend", "shares_by_value"]
