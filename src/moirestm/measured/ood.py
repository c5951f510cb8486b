"""Out-of-distribution checks for measured inputs: embedding distance and twist-angle mismatch.

Model-agnostic (numpy only): the learning code passes the embeddings of its training
images and of the measured image; measured/ never imports torch or moirestm.learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import MoireSTMError

#: Quantile of the training distances above which an input is flagged out of distribution.
OOD_QUANTILE = 0.99
#: Fraction of training variance kept by the PCA before the Mahalanobis distance.
OOD_VARIANCE_KEPT = 0.95
#: Twist-angle tolerance (degrees) added to 2 sigma before a mismatch is flagged.
TWIST_TOLERANCE_DEG = 0.05


@dataclass
class OODResult:
    """Mahalanobis distance of an embedding in the training PCA space.

    ``percentile``: fraction of training samples closer than the input; ``is_ood`` when
    ``score > threshold`` (the training ``quantile`` of distances, leave-one-out).
    """

    score: float
    threshold: float
    percentile: float
    n_components: int
    is_ood: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def ood_score(
    train_embeddings: np.ndarray,
    embedding: np.ndarray,
    *,
    quantile: float = OOD_QUANTILE,
    variance_kept: float = OOD_VARIANCE_KEPT,
) -> OODResult:
    """Mahalanobis distance of ``embedding`` from the training embeddings, in PCA space.

    Parameters
    ----------
    train_embeddings : (n, d) embeddings (or flattened images) of the training set, n >= 5.
    embedding : (d,) embedding of the input.
    quantile : training-distance quantile used as the threshold.
    variance_kept : PCA components kept to explain this fraction of variance (at most n - 2).

    The training distances are leave-one-out (each sample scored against the others' mean
    and covariance via the Sherman–Morrison-corrected statistic), so the threshold is not
    biased low by the samples having shaped the covariance.
    """
    train = np.asarray(train_embeddings, dtype=np.float64)
    x = np.asarray(embedding, dtype=np.float64).ravel()
    if train.ndim != 2 or train.shape[0] < 5:
        raise MoireSTMError(f"need at least 5 training embeddings as an (n, d) array, got shape {train.shape}")
    if x.size != train.shape[1]:
        raise MoireSTMError(f"embedding has {x.size} features, training embeddings have {train.shape[1]}")
    if not (np.all(np.isfinite(train)) and np.all(np.isfinite(x))):
        raise MoireSTMError("embeddings must be finite")
    if not 0 < quantile < 1 or not 0 < variance_kept <= 1:
        raise MoireSTMError("quantile and variance_kept must lie in (0, 1)")
    n = train.shape[0]
    mean = train.mean(axis=0)
    centred = train - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    var = sv**2 / (n - 1)
    total = var.sum()
    if total <= 0:
        raise MoireSTMError("training embeddings are all identical; no spread to compare with")
    keep = int(np.searchsorted(np.cumsum(var) / total, variance_kept) + 1)
    keep = max(1, min(keep, n - 2, int(np.sum(var > 1e-12 * var[0]))))
    comps, lam = vt[:keep], var[:keep]
    z_train = centred @ comps.T / np.sqrt(lam)
    d2 = np.sum(z_train**2, axis=1)
    # leave-one-out: x_i against the mean and covariance of the other n - 1 samples (Sherman-Morrison)
    loo = (n / (n - 1)) ** 2 * (n - 2) * (d2 / (n - 1)) / np.maximum(1.0 - n * d2 / (n - 1) ** 2, 1e-9)
    # squared residual outside the kept subspace, in units of its mean training value (new directions)
    resid_train = np.sum((centred - z_train * np.sqrt(lam) @ comps) ** 2, axis=1)
    # per-direction variance of the discarded subspace, so the residual counts like the kept z^2 terms
    n_dropped = max(min(n - 1, train.shape[1]) - keep, 1)
    resid_scale = float(np.mean(resid_train)) / n_dropped
    z = (x - mean) @ comps.T / np.sqrt(lam)
    resid = float(np.sum(((x - mean) - (z * np.sqrt(lam)) @ comps) ** 2))
    if resid_scale > 1e-12 * total:
        loo = loo + resid_train / resid_scale
        score2 = float(np.sum(z**2)) + resid / resid_scale
    else:
        score2 = float(np.sum(z**2)) + resid / float(lam[-1])
    train_dist = np.sqrt(loo)
    score = float(np.sqrt(score2))
    threshold = float(np.quantile(train_dist, quantile))
    percentile = float(np.mean(train_dist < score))
    is_ood = score > threshold
    if is_ood:
        msg = (f"WARNING: input lies outside the training distribution (distance {score:.2f} > "
               f"{threshold:.2f}, the {100 * quantile:.0f}% quantile of training distances); "
               "the prediction is an extrapolation")
    else:
        msg = f"input within the training distribution (distance {score:.2f} <= {threshold:.2f})"
    return OODResult(score, threshold, percentile, keep, bool(is_ood), msg)


@dataclass
class TwistCheck:
    """Comparison of the measured twist angle with the training data's angles."""

    measured_deg: float
    uncertainty_deg: float
    nearest_training_deg: float
    training_range_deg: tuple
    difference_deg: float
    mismatch: bool
    message: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["training_range_deg"] = list(self.training_range_deg)
        return d


def twist_mismatch(
    measured_deg: float,
    uncertainty_deg: float,
    training_angles_deg,
    tolerance_deg: float = TWIST_TOLERANCE_DEG,
) -> TwistCheck:
    """Flag a measured twist angle farther than ``2 sigma + tolerance_deg`` from every training angle."""
    angles = np.unique(np.asarray(training_angles_deg, dtype=float).ravel())
    if angles.size == 0 or not np.all(np.isfinite(angles)):
        raise MoireSTMError("training twist angles must be a non-empty list of finite numbers")
    if not np.isfinite(measured_deg) or not np.isfinite(uncertainty_deg) or uncertainty_deg < 0:
        raise MoireSTMError(f"invalid measured twist angle {measured_deg} ± {uncertainty_deg}")
    nearest = float(angles[np.argmin(np.abs(angles - measured_deg))])
    diff = float(measured_deg - nearest)
    limit = 2.0 * float(uncertainty_deg) + float(tolerance_deg)
    mismatch = abs(diff) > limit
    span = (float(angles.min()), float(angles.max()))
    if mismatch:
        msg = (f"WARNING: measured twist angle {measured_deg:.3f} ± {uncertainty_deg:.3f}° differs from the "
               f"nearest training angle {nearest:.3f}° by {abs(diff):.3f}° (> {limit:.3f}°); "
               "the model was not trained at this angle")
    else:
        msg = f"twist angle {measured_deg:.3f} ± {uncertainty_deg:.3f}° matches training angle {nearest:.3f}°"
    return TwistCheck(float(measured_deg), float(uncertainty_deg), nearest, span, diff, bool(mismatch), msg)
