"""Measured STM maps: file readers, calibration to the simulation frame, out-of-distribution checks.

Sits after ``observables``/``dataset`` and before ``learn`` in the import order: it never
imports torch or :mod:`moirestm.learn`. The learning code calls :func:`prepare_measured`
to turn an STM file into a model-ready FT image, and :func:`ood_score` /
:func:`twist_mismatch` to qualify the prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..constants import FT_IMAGE_SIZE
from ..errors import MoireSTMError
from .calibrate import CalibrationReport, Calibrated, calibrate, lawler_fujita, level_lines, level_plane
from .ood import OODResult, TwistCheck, ood_score, twist_mismatch
from .readers import STMImage, list_channels, read_stm

#: HDF5 kind of a saved calibration (``moirestm.io``).
CALIBRATED_KIND = "MeasuredFTImage"


def prepare_measured(
    path: str | os.PathLike,
    channel: str | None = None,
    *,
    direction: str = "forward",
    pixel_nm: float | tuple[float, float] | None = None,
    bias_v: float | None = None,
    drift_correction: bool = True,
    line_order: int = 1,
    size: int = FT_IMAGE_SIZE,
    intensity_scale: float | None = None,
) -> tuple[np.ndarray, CalibrationReport]:
    """Read an STM file and return the model-ready FT image with its calibration report.

    Parameters
    ----------
    path : ``.sxm``, ``.3ds``, ``.gwy``, ``.npy`` or ``.txt`` file.
    channel, direction, pixel_nm, bias_v : see :func:`read_stm`.
    drift_correction, line_order, size, intensity_scale : see :func:`calibrate`.

    Returns
    -------
    image : (size, size) float32 |F| on the simulated FT-LDOS window, simulation orientation.
    report : :class:`CalibrationReport` (twist angle ± uncertainty, scale, rotation, warnings).
    """
    stm = read_stm(path, channel, direction=direction, pixel_nm=pixel_nm, bias_v=bias_v)
    result = calibrate(stm, line_order=line_order, drift_correction=drift_correction, size=size,
                       intensity_scale=intensity_scale)
    return result.image, result.report


def save_calibrated(path: str | os.PathLike, result: Calibrated, overwrite: bool = False) -> Path:
    """Write a calibration (FT image, axes, levelled map, report) to a self-describing HDF5 file."""
    from ..io import write_h5

    return write_h5(path, CALIBRATED_KIND, result.report.to_dict(),
                    {"image": result.image, "kx_nm": result.kx_nm, "ky_nm": result.ky_nm,
                     "levelled": result.levelled.astype(np.float32)}, overwrite=overwrite)


def comparison_figure(
    path: str | os.PathLike,
    measured: np.ndarray,
    kx_nm: np.ndarray,
    ky_nm: np.ndarray,
    simulated: np.ndarray | None = None,
    *,
    title_measured: str = "measured",
    title_simulated: str = "simulated",
    log: bool = True,
    overwrite: bool = False,
) -> Path:
    """Save measured FT (and, if given, a simulated FT on the same window) side by side
    (:func:`moirestm.plot.ft_comparison`)."""
    from .. import plot

    if simulated is not None and np.shape(simulated) != np.shape(measured):
        raise MoireSTMError(f"simulated image shape {np.shape(simulated)} differs from the measured "
                            f"{np.shape(measured)}")
    axes = plot.ft_comparison(measured, kx_nm, ky_nm, simulated, title_measured=title_measured,
                              title_simulated=title_simulated, log=log)
    return Path(plot.save_figure(axes[0].figure, path, overwrite=overwrite, dpi=110))


def nearest_simulated(candidates: dict[str, np.ndarray], image: np.ndarray) -> str:
    """Key of the candidate FT image closest to ``image`` (cosine similarity of log images)."""
    if not candidates:
        raise MoireSTMError("no simulated images to compare with")

    def feat(a):
        a = np.log1p(np.abs(np.asarray(a, dtype=float)) / (np.mean(np.abs(a)) or 1.0)).ravel()
        a = a - a.mean()
        return a / (np.linalg.norm(a) or 1.0)

    target = feat(image)
    scores = {}
    for key, cand in candidates.items():
        if np.shape(cand) != np.shape(image):
            continue
        scores[key] = float(feat(cand) @ target)
    if not scores:
        raise MoireSTMError(f"no simulated image has the measured shape {np.shape(image)}")
    return max(scores, key=scores.get)


__all__ = [
    "STMImage", "read_stm", "list_channels",
    "calibrate", "Calibrated", "CalibrationReport", "level_plane", "level_lines", "lawler_fujita",
    "prepare_measured", "save_calibrated", "comparison_figure", "nearest_simulated",
    "ood_score", "OODResult", "twist_mismatch", "TwistCheck", "CALIBRATED_KIND",
]
