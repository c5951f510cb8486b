"""Prediction of U (and other targets) with an uncertainty, from a store sample, a .npy array or a PNG.

Uncertainty: Monte-Carlo dropout (Gal & Ghahramani, ICML 2016), recalibrated on the
validation split.  Chosen over a deep ensemble because it needs one training run (an
ensemble of M networks costs M times the 10-minute training budget on 2 CPU cores) and
one batched forward pass at prediction time (the M dropout masks run as one batch, well
under the 20 ms budget).  Raw MC-dropout spreads are known to be mis-scaled, so the
predictive std is ``sigma^2 = (a * sigma_mc)^2 + b^2`` with ``a, b`` fitted per target by
Gaussian negative log-likelihood of the validation residuals (an affine variance
recalibration in the spirit of Kuleshov et al., ICML 2018); ``b`` absorbs the error floor
that dropout cannot see.  A run blended with a pixel kernel ridge (:mod:`moirestm.learn.kernel`)
adds ``(c * |network - kernel|)^2``: the two models disagree most where the training images are
sparse.  Calibration is then checked on the *test* split by
:func:`moirestm.learn.evaluate.evaluate` (fraction of errors within 1 and 2 sigma).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from ..errors import MoireSTMError
from .run import MC_SAMPLES, Run, predict_images
from .run import blend_mean, blend_parts, calibrated_sigma, mc_dropout, predict_parts  # noqa: F401  (re-exported)
from ..io import Result

def fit_calibration(residual: np.ndarray, sigma_mc: np.ndarray, disagreement: np.ndarray | None = None) -> dict:
    """Fit ``sigma^2 = (a sigma_mc)^2 + b^2`` per target by Gaussian NLL of validation residuals.

    With ``disagreement`` (``|network - kernel|`` of a blended run), a third term ``(c d)^2`` is fitted too.

    Parameters
    ----------
    residual, sigma_mc, disagreement : arrays ``(n, n_targets)`` in physical units.

    Returns
    -------
    ``{"a": [...], "b": [...], "n": n}`` (and ``"c": [...]`` with a disagreement).
    """
    residual = np.atleast_2d(np.asarray(residual, float))
    sigma_mc = np.atleast_2d(np.asarray(sigma_mc, float))
    spreads = [sigma_mc] if disagreement is None else [sigma_mc, np.atleast_2d(np.asarray(disagreement, float))]
    fitted = [[] for _ in range(len(spreads) + 1)]  # a, (c,) b
    for t in range(residual.shape[1]):
        r2 = residual[:, t] ** 2
        s2 = [s[:, t] ** 2 for s in spreads]
        scale = math.sqrt(float(np.mean(r2))) or 1e-6

        def nll(p):
            var = sum(math.exp(2 * q) * v for q, v in zip(p[:-1], s2)) + math.exp(2 * p[-1]) + 1e-12 * scale ** 2
            return float(np.mean(np.log(var) + r2 / var))

        ratios = [math.log(scale / (math.sqrt(float(np.mean(v))) or 1e-6)) for v in s2]
        starts = ([*ratios, math.log(scale * 0.1)], [*(r + math.log(0.1) for r in ratios), math.log(scale)])
        best = None
        for start in starts:
            res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-8})
            if best is None or res.fun < best.fun:
                best = res
        for column, q in zip(fitted, best.x):
            column.append(math.exp(q))
    cal = {"a": fitted[0], "b": fitted[-1], "n": int(residual.shape[0])}
    if disagreement is not None:
        cal["c"] = fitted[1]
    return cal


# --------------------------------------------------------------------------- inputs
def load_image(source: Any) -> tuple[np.ndarray, str]:
    """Load an FT-LDOS image from an array, a ``.npy`` file or a PNG/TIFF image.

    Returns
    -------
    image, kind : float array (H, W) and one of ``"array"``, ``"npy"``, ``"png"``.
    """
    if isinstance(source, np.ndarray) or torch.is_tensor(source):
        return np.asarray(source), "array"
    if not isinstance(source, (str, os.PathLike)):
        raise MoireSTMError(f"cannot read an image from a {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise MoireSTMError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise MoireSTMError(f"{path} is not a readable .npy array ({exc})") from None
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        return arr, "npy"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64)
    except (UnidentifiedImageError, OSError) as exc:
        raise MoireSTMError(f"{path} is not an image file ({exc})") from None
    return arr, "png"


@dataclass
class Prediction(Result):
    """Predicted targets (physical units) with 1-sigma uncertainties."""

    values: dict[str, float]
    sigma: dict[str, float]
    source: str
    note: str = ""

    def to_dict(self) -> dict:
        d = {"source": self.source}
        for name in self.values:
            d[name] = self.values[name]
            d[f"{name}_sigma"] = self.sigma[name]
        if self.note:
            d["note"] = self.note
        return d

    def __str__(self) -> str:
        parts = [f"{n} = {v:.3f} ± {self.sigma[n]:.3f}" for n, v in self.values.items()]
        return f"{self.source}: " + ", ".join(parts) + (f"  ({self.note})" if self.note else "")


def predict(run, source: Any, key: str | None = None, mc_samples: int = MC_SAMPLES) -> Prediction | list[Prediction]:
    """Predict from a store sample, an array, a ``.npy`` file or a PNG.

    Parameters
    ----------
    run : a :class:`moirestm.learn.train.Run` or a run directory.
    source : image array, ``.npy`` / ``.png`` path, an open store, or a store path (``.h5``).
    key : store sample key; with a store and no key every ``ok`` sample is predicted (a list).
    """
    from .data import open_store

    if not isinstance(run, Run):
        run = Run.load(run)
    norm = run.normalizer
    is_store_path = isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in (".h5", ".hdf5")
    if is_store_path or (not isinstance(source, (str, os.PathLike, np.ndarray)) and hasattr(source, "image")):
        store = open_store(source, norm.channels)
        if key is not None and norm.channels is not None:
            key = store.stacked_key(key)  # a member key names its stack
        keys = [key] if key is not None else store.keys(status="ok")
        if key is not None and key not in store.keys(status="ok"):
            raise MoireSTMError(f"sample {key!r} is not an ok sample of the store")
        images = [store.image(k) for k in keys]
        mean, sigma = predict_images(run, images, mc_samples)
        preds = [_prediction(norm, mean[i], sigma[i], k) for i, k in enumerate(keys)]
        return preds[0] if key is not None else preds
    image, kind = load_image(source)
    note = ""
    image = np.asarray(image)
    if image.ndim != len(norm.image_shape):
        raise MoireSTMError(f"expected {norm.describe_input()}, got shape {image.shape}")
    if kind == "png":
        # 8/16-bit images carry relative intensities only: match the training intensity scale
        norm.check(image)
        m = float(np.mean(image))
        if m <= 0:
            raise MoireSTMError(f"{source} is a blank image")
        image = image * (norm.scale / m)
        note = "PNG intensities rescaled to the training mean"
    mean, sigma = predict_images(run, [image], mc_samples)
    name = str(source) if kind != "array" else "array"
    return _prediction(norm, mean[0], sigma[0], name, note)


def _prediction(norm, mean, sigma, source, note="") -> Prediction:
    names = norm.target_names
    return Prediction({n: float(mean[j]) for j, n in enumerate(names)},
                      {n: float(sigma[j]) for j, n in enumerate(names)}, source, note)
