"""Evaluation of a trained run: MAE, RMSE, R², error per U, uncertainty calibration, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MoireSTMError
from ..io import Result, output_dir, write_json
from .augment import Augmenter
from .data import SampleArrays, open_store, store_path, targets_of
from .run import Run, predict_parts

#: Kind recorded in ``metrics.json``.
EVALUATION_KIND = "Evaluation"


class Evaluation(dict, Result):
    """The metrics of :func:`evaluate`: a dict (targets, part, n, model, ...) that saves and loads."""

    def _record(self) -> dict:
        return {"metrics": dict(self)}

    @classmethod
    def _from_record(cls, record: dict) -> "Evaluation":
        return cls(record["metrics"])


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """MAE, RMSE, R² and max error of one target."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    err = y_pred - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))), "r2": r2,
            "max_abs_error": float(np.max(np.abs(err))), "bias": float(np.mean(err)), "n": int(len(err))}


def error_per_value(y_true: np.ndarray, y_pred: np.ndarray, sigma: np.ndarray | None = None,
                    train_values: np.ndarray | None = None) -> list[dict]:
    """MAE, bias and (optionally) mean sigma for each distinct true value (e.g. each U).

    With ``train_values`` (the values seen in training), each row also gives
    ``train_distance``: how far the value is from the nearest training value (the
    interpolation gap a held-out value sits in).
    """
    rows = []
    keys = np.round(np.asarray(y_true, float), 9)
    seen = None if train_values is None or not len(train_values) else np.unique(np.asarray(train_values, float))
    for v in np.unique(keys):
        sel = keys == v
        err = y_pred[sel] - y_true[sel]
        row = {"value": float(v), "n": int(sel.sum()), "mae": float(np.mean(np.abs(err))),
               "bias": float(np.mean(err))}
        if sigma is not None:
            row["mean_sigma"] = float(np.mean(sigma[sel]))
        if seen is not None:
            row["train_distance"] = float(np.min(np.abs(seen - v)))
        rows.append(row)
    return rows


def coverage(y_true: np.ndarray, y_pred: np.ndarray, sigma: np.ndarray) -> dict:
    """Fractions of errors within 1 and 2 sigma (Gaussian ideal: 0.683 and 0.954), and mean z²."""
    z = np.abs(y_pred - y_true) / np.maximum(sigma, 1e-300)
    return {"within_1sigma": float(np.mean(z <= 1)), "within_2sigma": float(np.mean(z <= 2)),
            "mean_z2": float(np.mean(z ** 2)), "mean_sigma": float(np.mean(sigma))}


def evaluate(run: Any, store: Any = None, part: str = "test", out: str | Path | None = None,
             plots: bool = True, mc_samples: int | None = None, corrupt: str | None = None,
             corrupt_space: str = "ft", seed: int = 0) -> dict:
    """Evaluate a run on its held-out split, or on all samples of another store.

    Parameters
    ----------
    run : :class:`moirestm.learn.train.Run` or its directory.
    store : None (the run's own store and split ``part``), or another store / path, whose
        ``ok`` samples are all evaluated (if it *is* the training store, ``part`` is used).
    part : ``"test"``, ``"val"`` or ``"train"`` for the run's own store.
    out : directory for ``metrics.json``, ``parity.png`` and ``residuals.png`` (default:
        ``<run>/eval-<part or store name>[-<corrupt>]``); None with ``plots=False`` writes nothing.
    corrupt : optional augmentation preset (e.g. ``"noisy"``) applied to the evaluated images, one
        seeded draw per image: accuracy on STM-like corrupted data rather than clean simulations.
    corrupt_space, seed : the preset's space (``"ft"`` or ``"real"``) and the draw seed.

    Returns
    -------
    Evaluation : a dict; per target: metrics, error per value, uncertainty coverage; plus data description.
    """
    if not isinstance(run, Run):
        run = Run.load(run)
    if store is None:
        if run.store is None:
            raise MoireSTMError("the run records no store path; pass the store to evaluate on")
        store = run.store
    st = open_store(store, run.normalizer.channels)
    path = store_path(st)
    own = run.store is not None and path is not None and Path(path).resolve() == Path(run.store).resolve()
    if own:
        keys = run.split.keys(part)
        label = part
    else:
        keys = st.keys(status="ok")
        label = Path(store_path(st) or "store").stem
    if not keys:
        raise MoireSTMError(f"nothing to evaluate: no samples in {label}")
    names = run.targets
    y = targets_of(st, keys, names)
    seen = targets_of(st, run.split.train, names) if own else None
    images = [st.image(k) for k in keys]
    if corrupt is not None:
        augment = Augmenter(corrupt, corrupt_space)
        images = [augment(im, np.random.default_rng([seed, i]), SampleArrays(st, k))
                  for i, (im, k) in enumerate(zip(images, keys))]
        label = f"{label}-{corrupt}"
    mean, sigma, network, kernel = predict_parts(run, images, run.mc_samples if mc_samples is None else mc_samples)
    result = {"data": str(store_path(st)), "part": label, "n": len(keys), "model": run.name,
              "split": run.split.kind, "uncertainty": run.describe_uncertainty(),
              "corrupt": None if corrupt is None else {"preset": corrupt, "space": corrupt_space, "seed": seed},
              "targets": {}}
    if run.kernel is not None:
        result["blend"] = run.kernel.describe()
    for j, name in enumerate(names):
        result["targets"][name] = {**regression_metrics(y[:, j], mean[:, j]),
                                   "per_value": error_per_value(y[:, j], mean[:, j], sigma[:, j],
                                                                None if seen is None else seen[:, j]),
                                   "coverage": coverage(y[:, j], mean[:, j], sigma[:, j])}
        if kernel is not None:  # each half alone, for comparison
            result["targets"][name]["components"] = {"network": regression_metrics(y[:, j], network[:, j]),
                                                     "kernel": regression_metrics(y[:, j], kernel[:, j])}
    if out is None and plots and run.path is not None:
        out = Path(run.path) / f"eval-{label}"
    if out is not None:
        out = output_dir(out)
        write_json(out / "metrics.json", result, EVALUATION_KIND, overwrite=True)
        write_json(out / "predictions.json",
                   [{"key": k, **{n: float(y[i, j]) for j, n in enumerate(names)},
                     **{f"{n}_pred": float(mean[i, j]) for j, n in enumerate(names)},
                     **{f"{n}_sigma": float(sigma[i, j]) for j, n in enumerate(names)}} for i, k in enumerate(keys)],
                   "EvaluationPredictions", overwrite=True)
        if plots:
            result["plots"] = plot_parity(y, mean, sigma, names, out, title=f"{run.name} "
                                          f"({run.split.kind} split, {label})")
        result["out"] = str(out)
    return Evaluation(result)


def plot_parity(y: np.ndarray, pred: np.ndarray, sigma: np.ndarray, names: list[str], out: Path,
                title: str = "") -> list[str]:
    """Write ``parity.png`` and ``residuals.png`` (:mod:`moirestm.plot`); returns their paths."""
    from .. import plot

    paths = [str(out / "parity.png"), str(out / "residuals.png")]
    for draw, path in zip((plot.parity, plot.residuals), paths):
        plot.save_figure(draw(y, pred, sigma, names, title=title)[0].figure, path, overwrite=True, dpi=110)
    return paths
