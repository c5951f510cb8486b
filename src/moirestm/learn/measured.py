"""Prediction for measured STM files: calibration to the simulation frame, U ± sigma, and
out-of-distribution checks (embedding distance from the training set, twist-angle mismatch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MoireSTMError
from ..lattice import twist_angle_deg
from ..measured import ood_score, prepare_measured, twist_mismatch
from ..measured.ood import OODResult, TwistCheck
from .data import batch_inputs, open_store
from .predict import Prediction, predict

#: Training images used for the reference embedding cloud (kept small so prediction stays fast).
MAX_REFERENCE_IMAGES = 256


@torch.no_grad()
def embed(run, images) -> np.ndarray:
    """Embeddings (n, d): the model trunk's features, or the normalised pixels for models without one."""
    x = batch_inputs(run.normalizer, images)
    model = run.model.eval()
    feats = model.trunk(x) if callable(getattr(model, "trunk", None)) else x
    return feats.reshape(len(x), -1).numpy()


def training_reference(run) -> tuple[np.ndarray, np.ndarray]:
    """Training-split embeddings and twist angles, cached as ``reference_embeddings.npz`` in the run."""
    cache = Path(run.path) / "reference_embeddings.npz" if run.path is not None else None
    if cache is not None and cache.is_file():
        data = np.load(cache)
        return data["embeddings"], data["angles_deg"]
    if run.store is None or not Path(run.store).exists():  # a file (HDF5) or a directory (Zarr)
        raise MoireSTMError(f"the run's training store {run.store!r} is not available: cannot build the "
                            "reference set for the out-of-distribution check")
    store = open_store(run.store)
    keys = list(run.split.train)
    if len(keys) > MAX_REFERENCE_IMAGES:
        keys = [keys[i] for i in np.linspace(0, len(keys) - 1, MAX_REFERENCE_IMAGES).astype(int)]
    embeddings = embed(run, [store.image(k) for k in keys])
    angles = np.array([_angle_of(store.params(k)) for k in keys])
    if cache is not None:
        np.savez(cache, embeddings=embeddings, angles_deg=angles)
    return embeddings, angles


def _angle_of(params: dict) -> float:
    if "twist_angle_deg" in params:
        return float(params["twist_angle_deg"])
    if "index" in params:
        return twist_angle_deg(int(params["index"]))
    return float("nan")


@dataclass
class MeasuredPrediction:
    """U ± sigma for a measured map, with its calibration and the out-of-distribution verdicts."""

    prediction: Prediction
    calibration: object
    ood: OODResult
    twist: TwistCheck | None

    @property
    def warnings(self) -> list[str]:
        notes = list(getattr(self.calibration, "warnings", []))
        if self.ood.is_ood:
            notes.append(self.ood.message)
        if self.twist is not None and self.twist.mismatch:
            notes.append(self.twist.message)
        return notes

    def to_dict(self) -> dict:
        return {"prediction": self.prediction.to_dict(), "calibration": self.calibration.to_dict(),
                "ood": self.ood.__dict__, "twist": None if self.twist is None else self.twist.to_dict(),
                "warnings": self.warnings}

    def __str__(self) -> str:
        lines = [str(self.prediction),
                 f"measured twist angle {self.calibration.twist_angle_deg:.3f} ± "
                 f"{self.calibration.twist_uncertainty_deg:.3f}°",
                 f"out-of-distribution score {self.ood.score:.2f} (threshold {self.ood.threshold:.2f})"]
        lines += [f"WARNING: {w}" if not w.startswith("WARNING") else w for w in self.warnings]
        return "\n".join(lines)


def predict_measured(run, path, channel: str | None = None, *, pixel_nm=None, drift_correction: bool = True,
                     direction: str = "forward") -> MeasuredPrediction:
    """Read and calibrate an STM file (``.sxm``, ``.3ds``, ``.gwy``, ``.npy``/``.txt`` with ``pixel_nm``)
    and predict its parameters with the run's model.

    The calibrated FT lands in the simulated window at the run's image size and intensity scale.
    """
    from .run import Run

    if not isinstance(run, Run):
        run = Run.load(run)
    size = int(run.normalizer.image_shape[0])
    image, report = prepare_measured(path, channel, direction=direction, pixel_nm=pixel_nm,
                                     drift_correction=drift_correction, size=size,
                                     intensity_scale=run.normalizer.scale)
    prediction = predict(run, image)
    prediction.source = str(path)
    reference, angles = training_reference(run)
    ood = ood_score(reference, embed(run, [image])[0])
    finite = angles[np.isfinite(angles)]
    twist = (twist_mismatch(report.twist_angle_deg, report.twist_uncertainty_deg, finite)
             if finite.size and np.isfinite(report.twist_angle_deg) else None)
    return MeasuredPrediction(prediction, report, ood, twist)


def _family_angles(run) -> np.ndarray:
    """Twist angles (deg) of a posterior run's training family: its fixed index or a drawn list of them."""
    family = run.family or {}
    prior = (family.get("priors") or {}).get("index")
    indices = prior.get("values", []) if isinstance(prior, dict) else []
    if family.get("index") is not None:
        indices = [family["index"]]
    return np.array([twist_angle_deg(int(i)) for i in indices], dtype=float)


def predict_measured_posterior(run, path, channel: str | None = None, *, pixel_nm=None,
                               drift_correction: bool = True, direction: str = "forward",
                               n_samples: int | None = None, seed: int = 0) -> dict:
    """Posterior summary of a measured STM map: calibrated to the simulation frame at the run's image size
    and intensity scale, then ``{name: {median, mean, q025, q16, q84, q975}, "ood_score", "ood"}`` as for a
    simulated image, plus ``"calibration"``, ``"twist"`` (the measured angle against the training family's)
    and ``"warnings"`` (calibration notes, an out-of-family image, a twist mismatch)."""
    from .posterior import PosteriorRun, summarise

    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    image, report = prepare_measured(path, channel, direction=direction, pixel_nm=pixel_nm,
                                     drift_correction=drift_correction, size=int(run.normalizer.image_shape[0]),
                                     intensity_scale=run.normalizer.scale)
    samples, scores = run.samples([image], n_samples, seed)
    result = {"source": str(path), **summarise(samples[0], run.names, float(scores[0]), run.ood["threshold"])}
    warnings = list(getattr(report, "warnings", []))
    if result["ood"]:
        warnings.append(f"out of family: score {result['ood_score']:.2f} above the threshold "
                        f"{run.ood['threshold']:.2f} (5 % false alarms on validation draws); the posterior is "
                        "not to be trusted for this map")
    angles = _family_angles(run)
    twist = None
    if angles.size and np.isfinite(report.twist_angle_deg):
        twist = twist_mismatch(report.twist_angle_deg, report.twist_uncertainty_deg, angles)
        if twist.mismatch:
            warnings.append(twist.message)
    return {**result, "calibration": report.to_dict(), "twist": None if twist is None else twist.to_dict(),
            "warnings": warnings}
