"""Out-of-family detection rates of a :class:`~moirestm.learn.posterior.PosteriorRun`.

The score and its threshold (5 % false alarms on the validation draws) are fitted by
:func:`moirestm.learn.posterior.fit_ood`.  :func:`ood_detection` measures the false-alarm rate
on the run's test draws and the detection rate on sets that lie outside the training family:
blank images (all zero), saturated images (every pixel at the image maximum, a pegged
detector), the held-out images with each artefact preset never trained on (default ``noisy``
and ``symb``, FT space; with the rms change each artefact draw made to the normalised input, for
the flagged and the unflagged images apart: a preset's weakest draws barely alter an image), and
every sample of any other store given (e.g. a distance beyond the prior, another twist index).  Where such a store records U, the U posterior of the images *not* flagged is
checked too (90 % central-interval coverage and median error): a miss that still gets U right is
harmless, one that does not is a confident wrong answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import MoireSTMError
from .augment import Augmenter
from .data import DEFAULT_TARGET, ImageDataset, batch_inputs, open_store
from .posterior import PosteriorRun


def _flag_summary(run: PosteriorRun, scores: np.ndarray) -> dict:
    return {"n": len(scores), "flagged": float(np.mean(scores > run.ood["threshold"])),
            "median_score": float(np.median(scores))}


def _rate(run: PosteriorRun, x: torch.Tensor) -> dict:
    """Flag rate of normalised inputs ``x``."""
    return _flag_summary(run, run.ood_scores(x))


def _rate_with_u(run: PosteriorRun, x: torch.Tensor, u_true: np.ndarray, seed: int,
                 change: np.ndarray | None = None) -> dict:
    """:func:`_rate` plus the U posterior's 90 % coverage and median error on the unflagged images (and, given
    each image's ``change`` from its clean original, the median change of the flagged and unflagged ones)."""
    z, scores = run.sample_and_score(x, seed=seed)
    samples = run.theta.decode(z)
    missed = scores <= run.ood["threshold"]
    out = {**_flag_summary(run, scores), "unflagged_u_coverage_90": None, "unflagged_u_mae_ev": None}
    if change is not None:
        out["change_flagged_median"] = float(np.median(change[~missed])) if (~missed).any() else None
        out["change_unflagged_median"] = float(np.median(change[missed])) if missed.any() else None
    if missed.any():
        u = samples[missed, :, run.names.index(DEFAULT_TARGET)]
        lo, hi = np.quantile(u, [0.05, 0.95], axis=1)
        truth = u_true[missed]
        out["unflagged_u_coverage_90"] = float(np.mean((lo <= truth) & (truth <= hi)))
        out["unflagged_u_mae_ev"] = float(np.mean(np.abs(np.median(u, axis=1) - truth)))
    return out


def ood_detection(run: PosteriorRun | str | Path, store: Any = None,
                  artefacts: Sequence[str] = ("noisy", "symb"), others: dict[str, Any] | None = None, seed: int = 0) -> dict:
    """False alarms on the test draws and detection rates on out-of-family sets (see the module docstring).

    Parameters
    ----------
    store : the training store (default: the one the run records).
    artefacts : augmentation presets applied to the test images, one set each (empty: no such sets).
    others : ``{name: store}`` of stores outside the training family; every ok sample is scored
        (with the run's own artefact preset, if it was trained with one, as the false alarms are).
    """
    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    source = store if store is not None else run.store
    if source is None:
        raise MoireSTMError("the run records no store path; pass the training store")
    st = open_store(source)
    keys = run.split.test
    images = [run.normalizer.check(im) for im in run.held_out_images(st, keys)]
    clean = batch_inputs(run.normalizer, images)
    result = {"threshold": run.ood["threshold"], "false_alarm_test": _rate(run, clean), "sets": {}}
    sets = result["sets"]
    sets["blank"] = _rate(run, batch_inputs(run.normalizer, [np.zeros_like(im) for im in images]))
    sets["saturated"] = _rate(run, batch_inputs(run.normalizer, [np.full_like(im, im.max()) for im in images]))
    u_test = np.array([float(st.params(k).get(DEFAULT_TARGET, np.nan)) for k in keys])
    for artefact in (a for a in artefacts if a != run.config.get("augment", "clean")):
        ds = ImageDataset(st, keys, run.normalizer, Augmenter(artefact), seed=seed)
        altered = batch_inputs(run.normalizer, ds.augmented(range(len(keys))))
        change = (altered - clean).reshape(len(keys), -1).pow(2).mean(dim=1).sqrt().numpy()
        sets[f"artefact:{artefact}"] = (_rate_with_u(run, altered, u_test, seed, change)
                                        if DEFAULT_TARGET in run.names and np.isfinite(u_test).all()
                                        else _rate(run, altered))
    for name, other in (others or {}).items():
        ost = open_store(other)
        okeys = ost.keys(status="ok")
        if not okeys:
            raise MoireSTMError(f"out-of-family store {name!r} has no usable samples")
        x = batch_inputs(run.normalizer, run.held_out_images(ost, okeys))
        u_true = [ost.params(k).get(DEFAULT_TARGET) for k in okeys]
        sets[name] = (_rate_with_u(run, x, np.asarray(u_true, float), seed)
                      if DEFAULT_TARGET in run.names and None not in u_true else _rate(run, x))
    result["detection_min"] = min(s["flagged"] for s in sets.values())
    return result


__all__ = ["ood_detection"]
