"""Pixel RBF kernel ridge: a classical baseline, and the kernel half of the network + kernel blend.

On clean simulations an RBF kernel ridge over every pixel of the normalised log FT-LDOS is the
most accurate single model we measured; on STM-like corrupted inputs the network degrades less
(docs/benchmarks.md, "The ``standard`` study, session 5").  :class:`KernelBlend`
predicts ``w * network + (1 - w) * kernel`` with ``w`` in [0, 1] chosen by the least validation
squared error (stacked regression, Breiman, Machine Learning 24, 49 (1996)), so a kernel that
does not help gets ``w = 1``; squared rather than absolute errors, so that a half with rare large
errors (a kernel far from its training images) is not preferred for a slightly lower typical error.

Hyper-parameters (``gamma``, ``alpha``, the image standardisation) are chosen by validation MAE;
the kernel is fitted on the training split only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MoireSTMError
from .data import STANDARDISE, Normalizer

#: Grids of the pixel kernel ridge: gamma in units of 1 / (number of input values), and the ridge alpha.
KRR_GAMMAS = np.logspace(-3, 1, 13)
KRR_ALPHAS = np.logspace(-7, -1, 7)
#: Network weights ``w`` tried for the blend ``w * network + (1 - w) * kernel``.
BLEND_WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)
#: Largest kernel training set (the training kernel is n x n; one eigendecomposition per gamma).
KERNEL_MAX_TRAIN = 4000


def squared_distances(a, b, b_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``(len(a), len(b))`` between the rows of ``a`` and ``b``, in float64
    (differentiable in tensor inputs that require a gradient).

    ``a``, ``b`` are arrays or tensors; ``b_norms`` the squared row norms of ``b`` when they are cached.
    In float64: with a small ridge ``alpha`` the dual coefficients are large and of both signs, so
    float32 distances shift kernel predictions by up to ~0.03 target units.  In torch: no hand-over
    between numpy's and torch's thread pools after a network forward pass (~8 ms per call on 2 cores).
    """
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    b_norms = (b ** 2).sum(dim=1) if b_norms is None else b_norms
    return ((a ** 2).sum(dim=1)[:, None] + b_norms - 2 * a @ b.T).clamp_min(0)


@dataclass
class PixelKernelRidge:
    """RBF kernel ridge ``y = K(x, X_train) coef`` on flattened inputs (targets standardised).

    Attributes
    ----------
    x_train : fitted inputs ``(n, d)``.
    coef : dual coefficients ``(n, n_targets)`` of the standardised targets.
    gamma : RBF width per input value: ``K = exp(-gamma |x - x'|^2 / d)``.
    alpha : ridge regularisation.
    y_mean, y_std : target standardisation (kernel ridge has no intercept).
    val_mae : validation MAE of the chosen (gamma, alpha), in target units.
    """

    x_train: np.ndarray
    coef: np.ndarray
    gamma: float
    alpha: float
    y_mean: np.ndarray
    y_std: np.ndarray
    val_mae: float
    _train64: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            gammas: Sequence[float] = KRR_GAMMAS, alphas: Sequence[float] = KRR_ALPHAS) -> "PixelKernelRidge":
        """Fit on ``(x_train, y_train)``; choose ``(gamma, alpha)`` by MAE on ``(x_val, y_val)``.

        One eigendecomposition of the training kernel per gamma serves every alpha.
        """
        x_train = np.asarray(x_train, np.float32)
        d = x_train.shape[1]
        y_train, y_val = np.asarray(y_train, float), np.asarray(y_val, float)
        ymu, ysd = y_train.mean(0), y_train.std(0) + 1e-12
        yt = (y_train - ymu) / ysd
        dist_train = squared_distances(x_train, x_train).numpy()
        dist_val = squared_distances(x_val, x_train).numpy()
        best = (np.inf, None, None, None)
        for g in gammas:
            lam, vec = np.linalg.eigh(np.exp(-g / d * dist_train))
            proj = vec.T @ yt
            k_val = np.exp(-g / d * dist_val)
            for a in alphas:
                coef = vec @ (proj / (np.maximum(lam, 0.0) + a)[:, None])
                mae = float(np.mean(np.abs((k_val @ coef) * ysd + ymu - y_val)))
                if mae < best[0]:
                    best = (mae, g, a, coef)
        mae, g, a, coef = best
        return cls(x_train, coef, float(g), float(a), ymu, ysd, mae)

    def cross_fitted(self, y_train: np.ndarray, groups: Sequence, n_folds: int = 5) -> np.ndarray:
        """Out-of-fold predictions ``(n, n_targets)`` of the training inputs (targets ``y_train``), with this
        kernel's ``gamma`` and ``alpha`` refitted on ``n_folds`` folds of whole groups (e.g. draws): no
        prediction sees an input of its own group, so their errors are those of the kernel on a new group.
        """
        from scipy.linalg import solve

        groups = np.asarray(groups)
        unique = np.unique(groups)
        if len(unique) < 2:
            raise MoireSTMError(f"cross-fitting needs at least 2 groups of training inputs, got {len(unique)}")
        d = self.x_train.shape[1]
        gram = np.exp(-self.gamma / d * squared_distances(self.x_train, self.x_train).numpy())
        y = np.asarray(y_train, np.float64).reshape(len(gram), -1)
        out = np.empty_like(y)
        for fold in np.array_split(np.random.default_rng(0).permutation(unique), min(n_folds, len(unique))):
            held = np.isin(groups, fold)
            mean, std = y[~held].mean(0), y[~held].std(0) + 1e-12
            coef = solve(gram[np.ix_(~held, ~held)] + self.alpha * np.eye(int((~held).sum())), (y[~held] - mean) / std,
                         assume_a="pos")
            out[held] = gram[np.ix_(held, ~held)] @ coef * std + mean
        return out

    @torch.no_grad()
    def predict(self, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Predictions ``(n, n_targets)`` in target units for flattened inputs ``x``.

        The float64 copy of the training inputs and their norms is made on the first call and kept.
        """
        if self._train64 is None:
            train64 = torch.from_numpy(self.x_train).double()
            self._train64 = (train64, (train64 ** 2).sum(dim=1))
        xt, norms = self._train64
        coef = torch.from_numpy(np.asarray(self.coef, np.float64))
        d = xt.shape[1]
        out = [torch.exp(-self.gamma / d * squared_distances(x[i:i + chunk], xt, norms)) @ coef
               for i in range(0, len(x), chunk)]
        return torch.cat(out).numpy() * self.y_std + self.y_mean

    def state(self) -> dict:
        return {"x_train": torch.from_numpy(np.ascontiguousarray(self.x_train, np.float32)),
                "coef": torch.from_numpy(np.asarray(self.coef, np.float64)), "gamma": self.gamma,
                "alpha": self.alpha, "y_mean": np.asarray(self.y_mean).tolist(),
                "y_std": np.asarray(self.y_std).tolist(), "val_mae": self.val_mae}

    @classmethod
    def from_state(cls, s: dict) -> "PixelKernelRidge":
        return cls(s["x_train"].numpy(), s["coef"].numpy(), float(s["gamma"]), float(s["alpha"]),
                   np.asarray(s["y_mean"], float), np.asarray(s["y_std"], float), float(s["val_mae"]))


class KernelSummary(nn.Module):
    """A fitted :class:`PixelKernelRidge` as a differentiable torch module: ``x (B, C, h, w) -> (B, n_targets)``.

    The summary statistics of a posterior run's flows (``embedding="kernel"``): the kernel's
    prediction of every inferred parameter.  Distances in float64 (see :func:`squared_distances`);
    the float64 copy of the training inputs is built here, not saved (``kernel.state()`` is).
    """

    def __init__(self, kernel: PixelKernelRidge):
        super().__init__()
        self.kernel = kernel
        train = torch.from_numpy(np.ascontiguousarray(kernel.x_train)).double()
        self.register_buffer("x_train", train, persistent=False)
        self.register_buffer("norms", (train ** 2).sum(dim=1), persistent=False)
        self.register_buffer("coef", torch.from_numpy(np.asarray(kernel.coef, np.float64)), persistent=False)
        self.register_buffer("y_mean", torch.as_tensor(np.asarray(kernel.y_mean, np.float64)), persistent=False)
        self.register_buffer("y_std", torch.as_tensor(np.asarray(kernel.y_std, np.float64)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).double()
        if flat.shape[1] != self.x_train.shape[1]:
            raise MoireSTMError(f"the kernel summary takes {self.x_train.shape[1]} input values per image, "
                                f"got {flat.shape[1]}")
        gram = torch.exp(-self.kernel.gamma / flat.shape[1] * squared_distances(flat, self.x_train, self.norms))
        return (gram @ self.coef * self.y_std + self.y_mean).float()


def flat_inputs(normalizer: Normalizer, images: Sequence[np.ndarray]) -> np.ndarray:
    """Normalised inputs of raw images, flattened to ``(n, C * h * w)``."""
    return normalizer.transform_images(list(images)).reshape(len(images), -1).numpy()


def fit_pixel_kernel(train_images: Sequence[np.ndarray], y_train: np.ndarray, val_images: Sequence[np.ndarray],
                     y_val: np.ndarray, template: Normalizer) -> tuple[PixelKernelRidge, Normalizer]:
    """Pixel kernel ridge with the image standardisation (``STANDARDISE``) also chosen on validation.

    ``template`` gives the input size, channels and targets; each standardisation is fitted on
    ``train_images``.  Returns the kernel and the normaliser of its inputs.
    """
    best = None
    for standardise in STANDARDISE:
        norm = Normalizer.fit(train_images, y_train, template.target_names, template.input_size,
                              standardise=standardise, channels=template.channels)
        kernel = PixelKernelRidge.fit(flat_inputs(norm, train_images), y_train, flat_inputs(norm, val_images), y_val)
        if best is None or kernel.val_mae < best[0].val_mae:
            best = (kernel, norm)
    return best


@dataclass
class KernelBlend:
    """The kernel half of a network + kernel run: ``prediction = w * network + (1 - w) * kernel``.

    Attributes
    ----------
    kernel : the fitted :class:`PixelKernelRidge`.
    normalizer : normalisation of the kernel's inputs (its standardisation may differ from the network's).
    weight : network weight ``w`` in [0, 1], chosen by validation mean squared error.
    val_mae : validation MAE (first target units) of ``network``, ``kernel`` and ``blend``.
    """

    kernel: PixelKernelRidge
    normalizer: Normalizer
    weight: float
    val_mae: dict

    @classmethod
    def fit(cls, train_images: Sequence[np.ndarray], y_train: np.ndarray, val_images: Sequence[np.ndarray],
            y_val: np.ndarray, network_val: np.ndarray, template: Normalizer) -> "KernelBlend":
        """Fit the kernel on the training images and the weight on the network's validation predictions.

        Parameters
        ----------
        train_images, y_train : raw training inputs and targets (physical units).
        val_images, y_val : raw validation inputs and targets.
        network_val : the network's validation predictions ``(n_val, n_targets)``.
        template : the network's normaliser (input size, channels, target names).
        """
        kernel, norm = fit_pixel_kernel(train_images, y_train, val_images, y_val, template)
        kernel_val = kernel.predict(flat_inputs(norm, val_images))
        y_val, network_val = np.asarray(y_val, float), np.asarray(network_val, float)
        scale = np.asarray(template.target_std, float)  # several targets: errors in units of each target's std
        mses = [float(np.mean(((w * network_val + (1 - w) * kernel_val - y_val) / scale) ** 2)) for w in BLEND_WEIGHTS]
        weight = float(BLEND_WEIGHTS[int(np.argmin(mses))])

        def first(pred):
            return float(np.mean(np.abs(pred[:, 0] - y_val[:, 0])))

        return cls(kernel, norm, weight, {"network": first(network_val), "kernel": first(kernel_val),
                                          "blend": first(weight * network_val + (1 - weight) * kernel_val)})

    def kernel_predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The kernel's predictions ``(n, n_targets)`` for raw inputs."""
        return self.kernel.predict(flat_inputs(self.normalizer, images))

    def describe(self) -> str:
        return (f"network x {self.weight:.2f} + pixel kernel ridge x {1 - self.weight:.2f} "
                f"(weight chosen on validation)")

    def state(self) -> dict:
        return {"kernel": self.kernel.state(), "normalizer": self.normalizer.state(), "weight": self.weight,
                "val_mae": self.val_mae}

    @classmethod
    def from_state(cls, s: dict) -> "KernelBlend":
        return cls(PixelKernelRidge.from_state(s["kernel"]), Normalizer.from_state(s["normalizer"]),
                   float(s["weight"]), dict(s["val_mae"]))


__all__ = ["PixelKernelRidge", "KernelSummary", "KernelBlend", "fit_pixel_kernel", "squared_distances", "KRR_GAMMAS",
           "KRR_ALPHAS", "BLEND_WEIGHTS", "KERNEL_MAX_TRAIN"]
