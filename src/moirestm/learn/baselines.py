"""Classical baselines on the same split as the networks.

* ``pca_ridge``: PCA of the normalised log images + ridge regression;
* ``pca_kernel_ridge``: PCA + RBF kernel ridge;
* ``kernel_ridge``: RBF kernel ridge on every pixel of the normalised log images (no PCA), with
  global or per-pixel standardisation chosen on validation — on clean simulations the strongest
  model of all (docs/benchmarks.md);
* ``peak_ridge``: physics features (integrated intensities at the moiré, Bragg and
  Bragg-satellite peaks, located as the strongest local maxima of the *training* mean
  image, DC excluded) + ridge.

Hyper-parameters (components, alpha, gamma) are chosen on the validation part; models are
fitted on the training part only (as the networks are) and scored on the test part.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import MoireSTMError
from .data import DEFAULT_TARGET, Normalizer, Split, make_split, open_store, read_array, targets_of
from .evaluate import regression_metrics
from .kernel import fit_pixel_kernel, flat_inputs

BASELINES = ("pca_ridge", "pca_kernel_ridge", "kernel_ridge", "peak_ridge")


def find_peaks(mean_image: np.ndarray, n_peaks: int = 36, exclude_radius: int = 2, size: int = 3
               ) -> np.ndarray:
    """Pixel positions ``(n, 2)`` (row, col) of the strongest local maxima (DC and border excluded)."""
    img = np.log1p(np.asarray(mean_image, float) / max(float(np.mean(mean_image)), 1e-300))
    ny, nx = img.shape
    peak = (img == ndimage.maximum_filter(img, size=size, mode="constant", cval=np.inf))
    peak[[0, -1], :] = False
    peak[:, [0, -1]] = False
    ii, jj = np.nonzero(peak)
    far = np.hypot(ii - (ny - 1) / 2, jj - (nx - 1) / 2) > exclude_radius
    ii, jj = ii[far], jj[far]
    order = np.argsort(img[ii, jj])[::-1][:n_peaks]
    return np.column_stack([ii[order], jj[order]])


def peak_shells(peaks: np.ndarray, kx: np.ndarray | None, ky: np.ndarray | None, shape,
                tolerance: float = 0.04) -> tuple[list[np.ndarray], list[float]]:
    """Group peaks into shells of equal |k| (symmetry-equivalent peaks: moiré, Bragg, satellites).

    Returns the peak indices of each shell and its mean |k| (nm^-1, or pixels without axes).
    """
    if kx is not None and ky is not None:
        kabs = np.hypot(np.asarray(kx)[peaks[:, 1]], np.asarray(ky)[peaks[:, 0]])
    else:
        kabs = np.hypot(peaks[:, 0] - (shape[0] - 1) / 2, peaks[:, 1] - (shape[1] - 1) / 2)
    order = np.argsort(kabs)
    shells, radii, current = [], [], [order[0]]
    tol = tolerance * float(kabs.max())
    for i in order[1:]:
        if kabs[i] - kabs[current[-1]] <= tol:
            current.append(i)
        else:
            shells.append(np.array(current))
            current = [i]
    shells.append(np.array(current))
    radii = [float(np.mean(kabs[s])) for s in shells]
    return shells, radii


def peak_features(images: list[np.ndarray], peaks: np.ndarray, scale: float, half: int = 1,
                  shells: list[np.ndarray] | None = None) -> np.ndarray:
    """log1p of the intensity integrated over a ``(2 half + 1)^2`` box at each peak.

    With ``shells``, the box intensities are first averaged over each shell of
    symmetry-equivalent peaks (one feature per shell: robust to noise and to the point group).
    """
    feats = np.empty((len(images), len(peaks)))
    for n, im in enumerate(images):
        im = np.asarray(im, float)
        for p, (i, j) in enumerate(peaks):
            feats[n, p] = im[max(i - half, 0):i + half + 1, max(j - half, 0):j + half + 1].sum()
    if shells is not None:
        feats = np.stack([feats[:, s].mean(axis=1) for s in shells], axis=1)
    return np.log1p(feats / scale)


def stacked_peak_features(images: list[np.ndarray], peaks: np.ndarray, scale: float,
                          shells: list[np.ndarray] | None = None) -> np.ndarray:
    """:func:`peak_features` of single images, or of every channel of stacked ``(C, H, W)`` inputs side by side."""
    if np.ndim(images[0]) == 2:
        return peak_features(images, peaks, scale, shells=shells)
    return np.hstack([peak_features([im[c] for im in images], peaks, scale, shells=shells)
                      for c in range(np.shape(images[0])[0])])


def _select(candidates, x_train, y_train, x_val, y_val):
    best, best_mae = None, np.inf
    for make in candidates:
        model = make().fit(x_train, y_train)
        mae = float(np.mean(np.abs(np.reshape(model.predict(x_val), y_val.shape) - y_val)))
        if mae < best_mae:
            best, best_mae = model, mae
    return best, best_mae


def run_baselines(store: Any, split: str | Split = "group", seed: int = 0, targets=(DEFAULT_TARGET,),
                  input_size: int | None = 64, which=BASELINES, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, channels: str | dict | None = None) -> dict:
    """Fit and score the classical baselines.

    Parameters
    ----------
    store : store or path.
    split : split kind or a :class:`Split` (pass ``run.split`` to compare with a network run).
    input_size : image side for the PCA baselines (area down-sampling; None keeps full size).
    channels : stack this parameter's values as channels (as ``train(channels=...)``; pass
        ``run.normalizer.channels`` with ``run.split``).

    Returns
    -------
    dict : ``{"split": ..., "results": {name: {target: metrics, "fit_s": ..., "val_mae": ...}}}``.
    """
    from sklearn.decomposition import PCA
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    unknown = set(which) - set(BASELINES)
    if unknown:
        raise MoireSTMError(f"unknown baselines {sorted(unknown)}; choose from {', '.join(BASELINES)}")
    targets = [targets] if isinstance(targets, str) else list(targets)
    st = open_store(store, channels)
    sp = split if isinstance(split, Split) else make_split(st, split, seed=seed, target=targets[0],
                                                           val_fraction=val_fraction, test_fraction=test_fraction)
    parts = {p: sp.keys(p) for p in ("train", "val", "test")}
    raw = {p: [np.asarray(st.image(k), dtype=np.float32) for k in keys] for p, keys in parts.items()}
    y = {p: targets_of(st, keys, targets) for p, keys in parts.items()}
    stacked = getattr(st, "channels", None)
    size = input_size if input_size and input_size < raw["train"][0].shape[-1] else None
    norm = Normalizer.fit(raw["train"], y["train"], targets, size, channels=stacked)

    x = {p: flat_inputs(norm, raw[p]) for p in parts}
    n_train = len(parts["train"])
    comps = sorted({c for c in (8, 16, 32) if c < n_train} or {max(1, n_train - 1)})
    alphas = np.logspace(-4, 3, 15)
    results: dict[str, dict] = {}

    def record(name, model, val_mae, xt, t0):
        pred = model.predict(xt).reshape(len(parts["test"]), len(targets))
        results[name] = {"fit_s": time.perf_counter() - t0, "val_mae": val_mae,
                         **{t: regression_metrics(y["test"][:, j], pred[:, j]) for j, t in enumerate(targets)}}

    if "pca_ridge" in which:
        t0 = time.perf_counter()
        cands = [lambda c=c: make_pipeline(PCA(c, random_state=seed), RidgeCV(alphas=alphas)) for c in comps]
        model, vm = _select(cands, x["train"], y["train"], x["val"], y["val"])
        record("pca_ridge", model, vm, x["test"], t0)
    if "pca_kernel_ridge" in which:
        t0 = time.perf_counter()
        ymu, ysd = y["train"].mean(0), y["train"].std(0) + 1e-12  # kernel ridge has no intercept
        best, best_vm = None, np.inf
        for c in comps:
            pre = make_pipeline(PCA(c, random_state=seed), StandardScaler()).fit(x["train"])
            zt, zv = pre.transform(x["train"]), pre.transform(x["val"])
            for a in (1e-3, 1e-2, 1e-1):
                for g in (0.03, 0.1, 0.3):
                    krr = KernelRidge(alpha=a, kernel="rbf", gamma=g / c).fit(zt, (y["train"] - ymu) / ysd)
                    vm = float(np.mean(np.abs(krr.predict(zv).reshape(y["val"].shape) * ysd + ymu - y["val"])))
                    if vm < best_vm:
                        best, best_vm = (pre, krr), vm
        pre, krr = best
        pred = krr.predict(pre.transform(x["test"])).reshape(len(parts["test"]), -1) * ysd + ymu
        results["pca_kernel_ridge"] = {"fit_s": time.perf_counter() - t0, "val_mae": best_vm,
                                       **{t: regression_metrics(y["test"][:, j], pred[:, j])
                                          for j, t in enumerate(targets)}}
    if "kernel_ridge" in which:
        t0 = time.perf_counter()
        kernel, knorm = fit_pixel_kernel(raw["train"], y["train"], raw["val"], y["val"], norm)
        pred = kernel.predict(flat_inputs(knorm, raw["test"]))
        chosen = {"gamma": kernel.gamma, "alpha": kernel.alpha,
                  "standardise": knorm.standardise}
        results["kernel_ridge"] = {"fit_s": time.perf_counter() - t0, "val_mae": kernel.val_mae, "chosen": chosen,
                                   **{t: regression_metrics(y["test"][:, j], pred[:, j])
                                      for j, t in enumerate(targets)}}
    if "peak_ridge" in which:
        t0 = time.perf_counter()
        from sklearn.preprocessing import PolynomialFeatures

        mean_image = np.mean(raw["train"], axis=0)
        mean_image = mean_image if mean_image.ndim == 2 else mean_image.mean(axis=0)  # peaks of all channels
        kx = read_array(st, parts["train"][0], "kx_nm")
        ky = read_array(st, parts["train"][0], "ky_nm")
        best, best_vm, best_info = None, np.inf, None
        for n in [n for n in (12, 24, 48) if n <= mean_image.size // 16] or [12]:
            peaks = find_peaks(mean_image, n_peaks=n)
            shells, radii = peak_shells(peaks, kx, ky, mean_image.shape)
            f = {p: stacked_peak_features(raw[p], peaks, norm.scale, shells=shells) for p in ("train", "val")}
            cands = [lambda a=a, d=d: make_pipeline(StandardScaler(), PolynomialFeatures(d), Ridge(alpha=a))
                     for a in alphas for d in (1, 2)]
            model, vm = _select(cands, f["train"], y["train"], f["val"], y["val"])
            if vm < best_vm:
                best, best_vm, best_info = model, vm, (peaks, shells, radii)
        peaks, shells, radii = best_info
        record("peak_ridge", best, best_vm, stacked_peak_features(raw["test"], peaks, norm.scale, shells=shells), t0)
        results["peak_ridge"]["peaks"] = {"n_peaks": int(len(peaks)), "n_shells": len(shells),
                                          "shell_k": [round(r, 4) for r in radii],
                                          "k_unit": "nm^-1" if kx is not None else "pixel"}
    return {"split": sp.kind, "seed": sp.seed, "n": {p: len(k) for p, k in parts.items()}, "targets": targets,
            "results": results}
