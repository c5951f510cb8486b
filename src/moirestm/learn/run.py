"""The trained-run artefact: :class:`Run` (network, normalisation, split, kernel blend, calibration),
its checkpoint format, its metadata (:class:`RunInfo`) and how it predicts (MC dropout + blend).

A run directory holds ``checkpoint.pt`` (best weights + everything needed to use them: model
config, normalisation, split, training config, the kernel half of a network + kernel blend,
calibration, package version), ``last.pt`` (optimiser state for ``resume``), ``run.json``
(:class:`RunInfo`: a readable summary and the training history) and ``split.json``.
:mod:`moirestm.learn.train` makes runs, :mod:`moirestm.learn.predict` reads inputs for them; this
module imports neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import MoireSTMError
from ..io import Result
from ..parameters import default_of
from .data import Normalizer, Split
from .kernel import KernelBlend
from .models import build_model

CHECKPOINT_FORMAT = "moirestm-learn-run"
CHECKPOINT_VERSION = 1
CHECKPOINT = "checkpoint.pt"
LAST = "last.pt"

#: Number of dropout masks used for the predictive spread.
MC_SAMPLES = default_of("mc_samples")


def _enable_dropout(model: torch.nn.Module) -> None:
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.train()


@torch.no_grad()
def mc_dropout(model: torch.nn.Module, x: torch.Tensor, n_samples: int = MC_SAMPLES, seed: int = 0,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Point prediction (dropout off) and MC-dropout std, both in the model's (standardised) units.

    The masks of all ``n_samples`` passes run as one batch per chunk of images.  Results
    are reproducible (the dropout RNG is seeded with ``seed`` in a forked RNG state).
    """
    model.eval()
    split = callable(getattr(model, "trunk", None)) and isinstance(getattr(model, "head", None), torch.nn.Module)
    points, stds = [], []
    per = max(1, batch_size // max(n_samples, 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(x), per):
            chunk = x[i:i + per]
            model.eval()
            if split:  # dropout lives in the head: the trunk runs once per image
                feats = model.trunk(chunk)
                points.append(model.head(feats).numpy())
            else:
                points.append(model(chunk).numpy())
            if n_samples < 2:
                stds.append(np.zeros_like(points[-1]))
                continue
            _enable_dropout(model)
            try:
                if split:
                    out = model.head(feats.repeat_interleave(n_samples, dim=0))
                else:
                    out = model(chunk.repeat_interleave(n_samples, dim=0))
            finally:
                model.eval()
            stds.append(out.reshape(len(chunk), n_samples, -1).std(dim=1).numpy())
    return np.concatenate(points), np.concatenate(stds)


def calibrated_sigma(sigma_mc: np.ndarray, calibration: dict | None, disagreement: np.ndarray | None = None
                     ) -> np.ndarray:
    """Apply a calibration from :func:`fit_calibration` (identity if None)."""
    if not calibration:
        return sigma_mc
    a, b = np.asarray(calibration["a"]), np.asarray(calibration["b"])
    var = (a * sigma_mc) ** 2 + b ** 2
    if "c" in calibration:
        if disagreement is None:
            raise MoireSTMError("this calibration needs the network-kernel disagreement")
        var = var + (np.asarray(calibration["c"]) * disagreement) ** 2
    return np.sqrt(var)


def predict_images(run, images: Sequence[np.ndarray], mc_samples: int = MC_SAMPLES, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Predict raw images: means and calibrated sigmas ``(n, n_targets)`` in physical units.

    A run with a kernel blend (``run.kernel``) returns ``w * network + (1 - w) * kernel``; its
    sigma also grows with the disagreement of the two.
    """
    mean, sigma, _, _ = predict_parts(run, images, mc_samples, seed)
    return mean, sigma


def predict_parts(run, images: Sequence[np.ndarray], mc_samples: int = MC_SAMPLES, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Means and calibrated sigmas as :func:`predict_images`, plus the network's and the kernel's own
    predictions (the kernel's None without a blend)."""
    network, spread, kernel = blend_parts(run, images, mc_samples, seed)
    mean, disagreement = blend_mean(run, network, kernel)
    return mean, calibrated_sigma(spread, run.calibration, disagreement), network, kernel


def blend_mean(run, network: np.ndarray, kernel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``w * network + (1 - w) * kernel`` and the disagreement ``|network - kernel|`` (network and None
    without a kernel)."""
    if kernel is None:
        return network, None
    w = run.kernel.weight
    return w * network + (1 - w) * kernel, np.abs(network - kernel)


def blend_parts(run, images: Sequence[np.ndarray], mc_samples: int = MC_SAMPLES, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The network's predictions and MC-dropout std, and the kernel's predictions (None without a blend)."""
    from .data import batch_inputs

    norm = run.normalizer
    point, sd = mc_dropout(run.model, batch_inputs(norm, images), n_samples=mc_samples, seed=seed)
    kernel = None if run.kernel is None else run.kernel.kernel_predict(images)
    return norm.decode_targets(point), sd * norm.target_std, kernel


class Run:
    """A trained model with its normalisation, split, calibration and history.

    Use :meth:`load` to open a run directory; :meth:`predict` for raw images.
    """

    def __init__(self, path: Path | None, model: torch.nn.Module, model_config: dict, normalizer: Normalizer,
                 split: Split, config: dict, history: list[dict], calibration: dict | None, store: str | None,
                 version: str, best: dict, kernel: KernelBlend | None = None):
        self.path = path
        self.model = model.eval()
        self.model_config = model_config
        self.normalizer = normalizer
        self.split = split
        self.config = config
        self.history = history
        self.calibration = calibration
        self.store = store
        self.version = version
        self.best = best
        self.kernel = kernel

    def __repr__(self) -> str:
        return (f"Run(model={self.name!r}, targets={self.normalizer.target_names}, "
                f"split={self.split.kind!r}, best_epoch={self.best.get('epoch')}, path={str(self.path)!r})")

    @property
    def targets(self) -> list[str]:
        return list(self.normalizer.target_names)

    @property
    def name(self) -> str:
        """The model's name, ``+kernel`` for a network + kernel blend (e.g. ``cnn+kernel``)."""
        return self.model_config["name"] + ("+kernel" if self.kernel is not None else "")

    @property
    def mc_samples(self) -> int:
        """Dropout masks per prediction (the training config's, by default ``MC_SAMPLES``)."""
        return self.config.get("mc_samples", MC_SAMPLES)

    def describe_uncertainty(self) -> str:
        """How the predictive sigma is made."""
        extra = " and network-kernel disagreement" if self.kernel is not None else ""
        return f"MC dropout{extra}, validation-recalibrated"

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "moirestm_version": self.version, "model_config": self.model_config,
                "state_dict": self.model.state_dict(), "normalizer": self.normalizer.state(),
                "split": self.split.to_dict(), "config": self.config, "history": self.history,
                "calibration": self.calibration, "store": self.store, "best": self.best,
                "kernel": None if self.kernel is None else self.kernel.state()}

    def save(self, path: str | Path | None = None) -> Path:
        """Write ``checkpoint.pt`` (atomically) into the run directory."""
        directory = Path(path or self.path)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.state(), directory / CHECKPOINT)
        self.path = directory
        return directory / CHECKPOINT

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        """Open a run directory (or its ``checkpoint.pt``), strictly.

        Raises
        ------
        MoireSTMError : missing file, not a moirestm checkpoint, unknown format version, or
            weights that do not match the recorded model config (names or shapes).
        """
        path = Path(path)
        file = path / CHECKPOINT if path.is_dir() else path
        if not file.is_file():
            raise MoireSTMError(f"no checkpoint at {file}")
        state = _load_checkpoint(file)
        check_run_dir(file, state)
        return cls.from_state(state, file.parent)

    @classmethod
    def from_state(cls, state: dict, path: Path | None = None) -> "Run":
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise MoireSTMError(f"{path} does not hold a moirestm learning checkpoint")
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise MoireSTMError(f"checkpoint format version {state.get('format_version')} is not supported "
                                f"(this moirestm reads version {CHECKPOINT_VERSION})")
        missing = [k for k in ("model_config", "state_dict", "normalizer", "split", "config") if k not in state]
        if missing:
            raise MoireSTMError(f"checkpoint {path} lacks {', '.join(missing)}")
        model = build_model(state["model_config"])
        load_strict(model, state["state_dict"], where=str(path))
        return cls(path, model, state["model_config"], Normalizer.from_state(state["normalizer"]),
                   Split.from_dict(state["split"]), state["config"], state.get("history", []),
                   state.get("calibration"), state.get("store"), state.get("moirestm_version", "?"),
                   state.get("best", {}),
                   None if state.get("kernel") is None else KernelBlend.from_state(state["kernel"]))

    # ------------------------------------------------------------------ inference
    def predict(self, images: Sequence[np.ndarray], mc_samples: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Means and calibrated 1-sigma ``(n, n_targets)`` in physical units for raw images."""
        return predict_images(self, images, self.mc_samples if mc_samples is None else mc_samples)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_run_dir(file: Path, state: dict) -> None:
    """Refuse a checkpoint whose model or training config differs from the ``run.json`` beside it
    (a checkpoint copied in from another run)."""
    summary_file = file.parent / "run.json"
    if not isinstance(state, dict) or not summary_file.is_file():
        return
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MoireSTMError(f"{summary_file} is damaged ({exc})") from None
    for name, recorded, found in (("model", summary.get("model"), state.get("model_config")),
                                  ("config", summary.get("config"), state.get("config"))):
        if recorded is None or found is None:
            continue
        recorded, found = _plain(recorded), _plain(found)
        if recorded != found:
            keys = sorted(k for k in set(recorded) | set(found) if recorded.get(k) != found.get(k))
            detail = ", ".join(f"{k} {recorded.get(k)!r} vs {found.get(k)!r}" for k in keys[:4])
            raise MoireSTMError(f"{file} comes from another model configuration than {summary_file} "
                                f"({name}: {detail})")


def load_strict(model: torch.nn.Module, state_dict: dict, where: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a message naming the mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        raise MoireSTMError(f"{where}: weights do not match the model config: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def _load_checkpoint(file: Path) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise MoireSTMError(f"{file} is not a readable moirestm checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _atomic_save(obj: Any, file: Path) -> None:
    tmp = file.with_name(f".{file.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(file)


@dataclass
class RunInfo(Result):
    """A run's metadata (what ``run.json`` holds): version, model and training config, store, split
    sizes, best epoch, calibration and history."""

    moirestm_version: str
    model: dict
    config: dict
    store: str | None
    split: dict
    best: dict
    calibration: dict | None
    history: list

    @classmethod
    def of(cls, run: Run) -> "RunInfo":
        split = {"kind": run.split.kind, "seed": run.split.seed, "n_train": len(run.split.train),
                 "n_val": len(run.split.val), "n_test": len(run.split.test), "held_out": run.split.held_out}
        return cls(run.version, run.model_config, run.config, run.store, split, run.best, run.calibration,
                   run.history)


__all__ = ["CHECKPOINT", "LAST", "MC_SAMPLES", "Run", "RunInfo", "blend_mean", "blend_parts", "calibrated_sigma",
           "check_run_dir", "load_strict", "mc_dropout", "predict_images", "predict_parts"]
