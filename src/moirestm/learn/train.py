"""Training: the stages that turn a store into a :class:`~moirestm.learn.run.Run` directory.

:func:`train` checks the configuration (:func:`check_config`), then :func:`_fit` runs the stages:
data preparation (:func:`_prepare_data`: split, normalisation, model configuration), model
construction (:func:`_build_model`), the epoch loop (:func:`_run_epochs`, with :func:`_select` keeping
the best epoch and :func:`_checkpoint` writing ``last.pt`` after each, for ``resume``) and result
assembly (:func:`_assemble`: kernel blend :func:`fit_kernel_blend`, calibration :func:`calibrate`,
the saved run; the layout is described in :mod:`moirestm.learn.run`).
"""

from __future__ import annotations

import copy
import functools
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..errors import MoireSTMError
from ..io import output_dir, write_json
from ..parameters import REGISTRY, default_of, parameter
from .augment import Augmenter
from .data import (DEFAULT_TARGET, ImageDataset, Normalizer, Split, batch_inputs, check_standardise, make_split,
                   open_store, store_path, targets_of)
from .kernel import KERNEL_MAX_TRAIN, KernelBlend
from .models import DEFAULT_INPUT_SIZE, MODELS, build_model, count_parameters
from .predict import fit_calibration
from .run import (CHECKPOINT, LAST, Run, RunInfo, _atomic_save, _load_checkpoint, blend_mean,
                  blend_parts, calibrated_sigma, load_strict, mc_dropout)

#: Final learning rate of the cosine schedule, as a fraction of the initial one.
LR_FLOOR = 0.01
#: Fraction of the time left that a schedule fitted to ``max_minutes`` plans to use (re-estimated each epoch).
BUDGET_MARGIN = 0.95
#: Epochs whose median duration is the epoch cost of that estimate (robust to a few slow epochs).
EPOCH_COST_WINDOW = 10
#: Augmented copies of each training image (kernel of a blend) and validation image (blend weight, calibration)
#: added to the clean ones in runs with augmentation.
AUGMENTED_COPIES = 1
#: Training losses on standardised targets: "l1" optimises the reported MAE directly, "huber" (delta =
#: 0.1 target std) is quadratic for small and linear for large errors, "mse" weights outliers most.
LOSSES = {"mse": torch.nn.functional.mse_loss, "l1": torch.nn.functional.l1_loss,
          "huber": lambda pred, y: torch.nn.functional.huber_loss(pred, y, delta=0.1)}


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all saved with the run)."""

    model: str = default_of("model")
    split: str = default_of("split")
    targets: list[str] = field(default_factory=lambda: [DEFAULT_TARGET])
    epochs: int = default_of("epochs")
    batch_size: int = default_of("batch_size")
    lr: float = default_of("lr")
    weight_decay: float = default_of("weight_decay")
    patience: int = default_of("patience")
    min_epochs: int = default_of("min_epochs")
    seed: int = default_of("seed")
    augment: str = default_of("augment")
    augment_space: str = default_of("augment_space")
    symmetry: bool = default_of("symmetry")
    input_size: int | None = default_of("input_size")
    val_fraction: float = default_of("val_fraction")
    test_fraction: float = default_of("test_fraction")
    max_minutes: float | None = default_of("max_minutes")
    mc_samples: int = default_of("mc_samples")
    model_options: dict = field(default_factory=dict)
    device: str = default_of("device")
    loss: str = default_of("loss")
    standardise: str = default_of("standardise")
    channels: str | None = default_of("channels")
    kernel: bool = default_of("kernel")

    #: fields that may differ when resuming
    RESUMABLE = ("epochs", "max_minutes", "patience", "min_epochs", "device")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- evaluation helper
@torch.no_grad()
def predict_standardised(model: torch.nn.Module, dataset: ImageDataset, batch_size: int = 64,
                         device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Deterministic predictions and targets (standardised) over a dataset."""
    model.eval()
    xs, ys = [], []
    for first in range(0, len(dataset), batch_size):
        x, y = dataset.batch(range(first, min(first + batch_size, len(dataset))))
        xs.append(model(x.to(device)).cpu().numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def training_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available) as a torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise MoireSTMError(f"device must be 'cpu', 'cuda' or 'auto', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise MoireSTMError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


# --------------------------------------------------------------------------- training
def train(store: Any, model: str = "cnn", split: str | Split = "group", out: str | Path = "runs/run", *,
          resume: bool = False, overwrite: bool = False, progress: bool = True, **options) -> Run:
    """Train a network to regress ``targets`` from FT-LDOS images.

    Parameters
    ----------
    store : store path or open store.
    model : ``"mlp"``, ``"cnn"`` (default) or ``"resnet18"``.
    split : split kind (see :func:`moirestm.learn.data.make_split`) or a :class:`Split`.
    out : run directory (created).
    resume : continue from ``out/last.pt`` (same config; ``epochs``/``max_minutes`` may change).
        Early stopping (``patience`` epochs without a better validation MAE) starts after
        ``min_epochs`` (epochs before it do not count), so the noisy first epochs at high learning rate cannot end a run.
    overwrite : allow replacing an existing run in ``out``.
    progress : show a progress bar.
    **options : :class:`TrainConfig` fields (``epochs``, ``seed``, ``augment``, ``max_minutes``,
        ``targets``, ``input_size``, ``model_options``, ...).  ``channels="bias_ev"`` stacks the
        images of every bias of one (U, filling, ...) point as input channels (see
        :class:`moirestm.learn.data.StackedStore`); evaluation and prediction then take stacks too.

    Returns
    -------
    Run : the best checkpoint (lowest validation MAE), with MC-dropout calibration.
    """
    if model not in MODELS:
        raise MoireSTMError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    unknown = set(options) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise MoireSTMError(f"unknown training options: {', '.join(sorted(unknown))}")
    if "targets" in options:
        options["targets"] = [options["targets"]] if isinstance(options["targets"], str) else list(options["targets"])
    cfg = TrainConfig(model=model, split=split.kind if isinstance(split, Split) else split, **options)
    check_config(cfg)
    if cfg.loss not in LOSSES:
        raise MoireSTMError(f"unknown loss {cfg.loss!r}; choose one of {', '.join(LOSSES)}")
    check_standardise(cfg.standardise)  # before anything is written to ``out``
    augment = Augmenter(cfg.augment, cfg.augment_space, cfg.symmetry)  # validate early
    if cfg.channels is not None and not (augment.is_identity or augment.batched):
        raise MoireSTMError("stacked channels need FT-space augmentation (augment_space='ft')")
    if cfg.channels is not None and cfg.channels in cfg.targets:
        raise MoireSTMError(f"cannot stack the target {cfg.channels!r} into input channels")
    device = training_device(cfg.device)
    st = open_store(store, cfg.channels)
    out = Path(out)
    if (out / CHECKPOINT).exists() and not (resume or overwrite):
        raise MoireSTMError(f"{out} already holds a run; pass resume or overwrite")
    created = not out.exists()
    output_dir(out)
    try:
        return _fit(cfg, st, store, split, out, model, augment, device, resume, progress)
    except BaseException:
        if created and not (out / LAST).exists():  # nothing resumable was written: leave no half-made run
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_config(cfg: TrainConfig) -> None:
    """Every registered numeric or boolean hyper-parameter within its range (the named choices are
    checked by the stages that use them); targets are registered numeric parameters."""
    for name, value in cfg.to_dict().items():
        if name in REGISTRY and REGISTRY[name].kind != "str":
            REGISTRY[name].validate(value, "train")
    if not cfg.targets:
        raise MoireSTMError("train: give at least one target")
    for name in cfg.targets:
        if parameter(name).kind not in ("float", "int"):
            raise MoireSTMError(f"train: target {name!r} is not a numeric parameter")


def _fit(cfg: TrainConfig, st, store, split, out: Path, model: str, augment: Augmenter, device, resume: bool,
         progress: bool) -> Run:
    """The training stages: data, model, epochs (checkpointed, best epoch kept), blend, calibration, save."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    resume_state = _resume_state(cfg, out, resume)
    split_obj, normalizer, model_config, train_images = _prepare_data(cfg, st, split, model, resume_state)
    write_json(out / "split.json", split_obj.to_dict(), "Split", overwrite=True)
    train_ds = ImageDataset(st, split_obj.train, normalizer, None if augment.is_identity else augment, cfg.seed,
                            images=train_images)
    del train_images  # the dataset keeps the checked copies
    val_ds = ImageDataset(st, split_obj.val, normalizer)
    net, opt, loop = _build_model(cfg, model_config, device, resume_state, out)
    checkpoint = functools.partial(_checkpoint, out / LAST, cfg, split_obj, normalizer, model_config)
    _run_epochs(cfg, net, opt, loop, train_ds, val_ds, device, progress, checkpoint)
    return _assemble(cfg, st, store, out, net, model_config, normalizer, split_obj, loop, train_ds, val_ds)


def _resume_state(cfg: TrainConfig, out: Path, resume: bool) -> dict | None:
    """The saved ``last.pt`` of a run to resume (its config must match ``cfg``); None for a new run."""
    if not resume:
        return None
    if not (out / LAST).exists():
        raise MoireSTMError(f"cannot resume: {out / LAST} not found")
    state = _load_checkpoint(out / LAST)
    saved = dict(state["config"])
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # runs saved before a field existed used its default
    diff = [k for k in now if k not in TrainConfig.RESUMABLE and saved.get(k, defaults[k]) != now[k]]
    if diff:
        raise MoireSTMError("cannot resume: config differs from the saved run in "
                            + ", ".join(f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in diff))
    return state


def _prepare_data(cfg: TrainConfig, st, split, model: str, resume_state: dict | None
                  ) -> tuple[Split, Normalizer, dict, list | None]:
    """Data preparation: the split, the normalisation fitted on the training part, the model
    configuration (input shape, targets, channels) and the training images read for the fit; a
    resumed run's own (no images read)."""
    if resume_state is not None:
        return (Split.from_dict(resume_state["split"]), Normalizer.from_state(resume_state["normalizer"]),
                resume_state["model_config"], None)
    split_obj = split if isinstance(split, Split) else make_split(
        st, cfg.split, seed=cfg.seed, target=cfg.targets[0], val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction)
    if not split_obj.train or not split_obj.val:
        raise MoireSTMError("the split has an empty training or validation part")
    train_images = [st.image(k) for k in split_obj.train]
    first = np.asarray(train_images[0])
    size = cfg.input_size or min(DEFAULT_INPUT_SIZE[model], *first.shape[-2:])
    normalizer = Normalizer.fit([_checked(im, first.shape) for im in train_images],
                                targets_of(st, split_obj.train, cfg.targets), cfg.targets,
                                None if size == first.shape[-1] == first.shape[-2] else size,
                                standardise=cfg.standardise, channels=getattr(st, "channels", None))
    model_config = {"name": model, "in_shape": list(normalizer.input_shape), "n_targets": len(cfg.targets),
                    **({"in_channels": normalizer.n_channels} if normalizer.channels else {}),
                    **cfg.model_options}
    return split_obj, normalizer, model_config, train_images


@dataclass
class _Loop:
    """What the epoch loop carries from epoch to epoch (and ``last.pt`` keeps for ``resume``)."""

    best_state: dict
    schedule_epochs: int
    start_epoch: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": float("inf"), "epoch": -1})
    bad_epochs: int = 0
    elapsed_before: float = 0.0
    epoch_times: list = field(default_factory=list)
    stopped: str = "epochs"
    t0: float = 0.0

    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.t0


def _build_model(cfg: TrainConfig, model_config: dict, device, resume_state: dict | None, out: Path
                 ) -> tuple[torch.nn.Module, torch.optim.Optimizer, _Loop]:
    """Model construction: the network, its AdamW optimiser and the loop state (a resumed run's own)."""
    net = build_model(model_config).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loop = _Loop(best_state=copy.deepcopy(net.state_dict()), schedule_epochs=cfg.epochs)
    if resume_state is not None:
        load_strict(net, resume_state["state_dict"], where=str(out / LAST))
        opt.load_state_dict(resume_state["optimizer"])
        if resume_state["config"]["epochs"] == cfg.epochs:  # else: continue on the cosine of the new length
            loop.schedule_epochs = resume_state.get("schedule_epochs", cfg.epochs)
        loop.start_epoch = resume_state["epoch"] + 1
        loop.history, loop.best = resume_state["history"], resume_state["best"]
        loop.bad_epochs, loop.best_state = resume_state["bad_epochs"], resume_state["best_state"]
        loop.elapsed_before = resume_state.get("elapsed_s", 0.0)
    return net, opt, loop


def _run_epochs(cfg: TrainConfig, net, opt, loop: _Loop, train_ds: ImageDataset, val_ds: ImageDataset, device,
                progress: bool, checkpoint) -> None:
    """The epoch loop: train, validate, keep the best epoch, refit the schedule to the time budget and
    ``checkpoint(net, opt, epoch, loop)`` after every epoch; ``loop.stopped`` says why it ended."""
    loop.t0 = time.perf_counter()
    budget = None if cfg.max_minutes is None else cfg.max_minutes * 60.0 - loop.elapsed_before
    has_batchnorm = any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with _progress(progress) as bar:
        task = bar.add_task("training", total=cfg.epochs, completed=loop.start_epoch, info="")
        for epoch in range(loop.start_epoch, cfg.epochs):
            if loop.bad_epochs >= cfg.patience:
                loop.stopped = "early stopping"
                break
            t_epoch = time.perf_counter()
            losses, timed_out = _train_epoch(cfg, net, opt, train_ds, epoch, loop, has_batchnorm, device, budget)
            pred, true = predict_standardised(net, val_ds, device=device)
            mae = np.mean(np.abs(pred - true), axis=0)  # per target, in units of the target std
            mae_phys = (mae * val_ds.normalizer.target_std).tolist()
            loop.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                 "val_mae": mae_phys, "lr": float(opt.param_groups[0]["lr"]),
                                 "time_s": loop.elapsed()})
            _select(loop, net, epoch, float(np.mean(mae)), mae_phys, cfg.min_epochs)
            if budget is not None and epoch > loop.start_epoch and not timed_out:
                _refit_schedule(loop, cfg.epochs, epoch, budget, time.perf_counter() - t_epoch)
            checkpoint(net, opt, epoch, loop)
            bar.update(task, advance=1, info=f"val MAE {mae_phys[0]:.4g} (best {loop.best['val_mae'][0]:.4g} "
                                             f"@ {loop.best['epoch']})")
            if timed_out:
                loop.stopped = "time budget"
                break
            if epoch + 1 >= loop.schedule_epochs < cfg.epochs:
                loop.stopped = "schedule fitted to the time budget"
                break
        else:
            if loop.bad_epochs >= cfg.patience:
                loop.stopped = "early stopping"


def _train_epoch(cfg: TrainConfig, net, opt, train_ds: ImageDataset, epoch: int, loop: _Loop, has_batchnorm: bool,
                 device, budget: float | None) -> tuple[list[float], bool]:
    """One pass over the training part at the epoch's cosine learning rate; (batch losses, out of time)."""
    for group in opt.param_groups:
        group["lr"] = cosine_lr(cfg.lr, epoch, loop.schedule_epochs)
    train_ds.set_epoch(epoch)
    torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout masks: a function of (seed, epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_ds))
    net.train()
    losses = []
    for first in range(0, len(order), cfg.batch_size):
        batch = order[first:first + cfg.batch_size]
        if len(batch) < 2 and has_batchnorm:
            continue  # batch norm needs >1 sample
        x, y = train_ds.batch(batch)
        opt.zero_grad(set_to_none=True)
        loss = LOSSES[cfg.loss](net(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if budget is not None and time.perf_counter() - loop.t0 > budget:
            return losses, True
    return losses, False


def _select(loop: _Loop, net, epoch: int, score: float, mae_phys: list, min_epochs: int) -> None:
    """Keep the epoch with the lowest validation score (mean standardised MAE); count the epochs without a
    better one after ``min_epochs`` (early stopping)."""
    if score < loop.best["score"]:
        loop.best = {"score": score, "epoch": epoch, "val_mae": mae_phys, "time_s": loop.elapsed()}
        loop.best_state = copy.deepcopy(net.state_dict())
        loop.bad_epochs = 0
    elif epoch >= min_epochs:
        loop.bad_epochs += 1


def _refit_schedule(loop: _Loop, epochs: int, epoch: int, budget: float, epoch_s: float) -> None:
    """Fit the cosine into the time budget at the median cost of the recent epochs.

    The first epoch, which reads the data, is left out; re-fitted every epoch in both directions, so
    a slow spell early on (other jobs on the cores) does not shorten the run for good.
    """
    loop.epoch_times.append(epoch_s)
    left = budget - (time.perf_counter() - loop.t0)
    cost = float(np.median(loop.epoch_times[-EPOCH_COST_WINDOW:]))
    loop.schedule_epochs = min(epochs, epoch + 1 + int(BUDGET_MARGIN * left / cost))


def _checkpoint(path: Path, cfg: TrainConfig, split_obj: Split, normalizer: Normalizer, model_config: dict, net,
                opt, epoch: int, loop: _Loop) -> None:
    """Write ``last.pt``: everything :func:`train` needs to resume after ``epoch``."""
    _atomic_save({"config": cfg.to_dict(), "split": split_obj.to_dict(), "normalizer": normalizer.state(),
                  "model_config": model_config, "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                  "epoch": epoch, "schedule_epochs": loop.schedule_epochs, "history": loop.history,
                  "best": loop.best, "bad_epochs": loop.bad_epochs, "best_state": loop.best_state,
                  "elapsed_s": loop.elapsed()}, path)


def _assemble(cfg: TrainConfig, st, store, out: Path, net, model_config: dict, normalizer: Normalizer,
              split_obj: Split, loop: _Loop, train_ds: ImageDataset, val_ds: ImageDataset) -> Run:
    """Result assembly: the best epoch's network, the kernel blend and the calibration, saved as a run."""
    if loop.best["epoch"] < 0:
        raise MoireSTMError("training stopped before the first epoch finished (time budget too small?)")
    net.cpu()
    load_strict(net, loop.best_state, where="best state")
    best = {**loop.best, "stopped": loop.stopped, "schedule_epochs": loop.schedule_epochs,
            "n_parameters": count_parameters(net)}
    run = Run(out, net, model_config, normalizer, split_obj, cfg.to_dict(), loop.history, None,
              str(Path(store_path(st)).resolve()) if store_path(st) else None,
              __version__, best)
    val_images, y_val = validation_inputs(train_ds, val_ds)
    if cfg.kernel:
        run.kernel, run.best["kernel"] = fit_kernel_blend(run, train_ds, val_images, y_val)
    run.calibration = calibrate(run, val_images, y_val)
    run.save(out)
    _write_summary(run, out)
    return run


def cosine_lr(lr: float, epoch: int, length: int) -> float:
    """Cosine learning-rate schedule from ``lr`` (epoch 0) to ``LR_FLOOR * lr`` (epoch ``length``)."""
    progress = min(epoch, length) / max(length, 1)
    return lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def _with_augmented_copies(dataset: ImageDataset) -> tuple[list[np.ndarray], np.ndarray]:
    """Raw images and targets of a dataset, plus ``AUGMENTED_COPIES`` augmented copies with an augmenter."""
    idx = range(len(dataset))
    images = [dataset.raw(i) for i in idx]
    y = targets_of(dataset.store, dataset.keys, dataset.normalizer.target_names)
    if dataset.augment is None:
        return images, y
    for copy_ in range(AUGMENTED_COPIES):
        dataset.set_epoch(10**9 + copy_)  # draws apart from every training epoch's
        images += dataset.augmented(idx)
    return images, np.concatenate([y] * (AUGMENTED_COPIES + 1))


def validation_inputs(train_ds: ImageDataset, val_ds: ImageDataset) -> tuple[list[np.ndarray], np.ndarray]:
    """Validation images for the blend weight and the calibration: clean, plus augmented copies (the
    training augmenter, other draws) when the network was trained with augmentation."""
    return _with_augmented_copies(ImageDataset(val_ds.store, val_ds.keys, val_ds.normalizer, train_ds.augment,
                                               seed=train_ds.seed + 1))


def fit_kernel_blend(run: Run, train_ds: ImageDataset, val_images: Sequence[np.ndarray], y_val: np.ndarray
                     ) -> tuple[KernelBlend | None, dict]:
    """Fit the pixel kernel ridge and the blend weight of a trained network (see :mod:`moirestm.learn.kernel`).

    The kernel is fitted on the training images (clean, plus augmented copies with augmentation),
    the weight on ``val_images`` (from :func:`validation_inputs`).  Returns the blend (None when
    the training set is over ``KERNEL_MAX_TRAIN``) and a summary for ``run.best``.
    """
    t0 = time.perf_counter()
    n_inputs = len(train_ds) * (1 if train_ds.augment is None else 1 + AUGMENTED_COPIES)
    if n_inputs > KERNEL_MAX_TRAIN:
        return None, {"skipped": f"{n_inputs} kernel training inputs > KERNEL_MAX_TRAIN = {KERNEL_MAX_TRAIN}"}
    x_train, y_train = _with_augmented_copies(train_ds)
    net_val = run.normalizer.decode_targets(mc_dropout(run.model, batch_inputs(run.normalizer, val_images),
                                                       n_samples=1)[0])
    blend = KernelBlend.fit(x_train, y_train, val_images, y_val, net_val, run.normalizer)
    return blend, {"weight": blend.weight, "val_mae": blend.val_mae, "gamma": blend.kernel.gamma,
                   "alpha": blend.kernel.alpha, "standardise": blend.normalizer.standardise,
                   "n_train": len(x_train), "n_val": len(val_images), "fit_s": time.perf_counter() - t0}


def attach_kernel(run: Run | str | Path, store: Any = None, save: bool = True) -> Run:
    """Give a trained run (e.g. one trained with ``kernel=False``) the kernel half of a blend.

    Fits the kernel and the weight on the run's own split and augmentation, refits the
    calibration, and (with ``save``) rewrites the run's checkpoint.
    """
    if not isinstance(run, Run):
        run = Run.load(run)
    store = run.store if store is None else store
    if store is None:
        raise MoireSTMError("the run records no store path; pass the store it was trained on")
    st = open_store(store, run.normalizer.channels)
    cfg = {**TrainConfig().to_dict(), **run.config}
    augment = Augmenter(cfg["augment"], cfg["augment_space"], cfg["symmetry"])
    train_ds = ImageDataset(st, run.split.train, run.normalizer, None if augment.is_identity else augment, cfg["seed"])
    val_images, y_val = validation_inputs(train_ds, ImageDataset(st, run.split.val, run.normalizer))
    run.kernel, run.best["kernel"] = fit_kernel_blend(run, train_ds, val_images, y_val)
    run.calibration = calibrate(run, val_images, y_val)
    if save and run.path is not None:
        run.save()
        _write_summary(run, Path(run.path))
    return run


def calibrate(run: Run, val_images: Sequence[np.ndarray], y_val: np.ndarray) -> dict:
    """Fit the predictive-sigma calibration on validation images (from :func:`validation_inputs`)."""
    network, spread, kernel = blend_parts(run, val_images, run.mc_samples)
    mean, disagreement = blend_mean(run, network, kernel)
    cal = fit_calibration(mean - y_val, spread, disagreement)
    sig = calibrated_sigma(spread, cal, disagreement)
    cal["val_coverage_1sigma"] = float(np.mean(np.abs(mean - y_val) <= sig))
    return cal


def _checked(image: np.ndarray, shape) -> np.ndarray:
    arr = np.asarray(image)
    if arr.shape != tuple(shape):
        raise MoireSTMError(f"store images have differing shapes ({arr.shape} vs {tuple(shape)})")
    return arr


def _write_summary(run: Run, out: Path) -> None:
    write_json(out / "run.json", RunInfo.of(run)._record(), "RunSummary", overwrite=True)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True),
                    disable=not enabled, transient=False)


__all__ = ["Run", "RunInfo", "TrainConfig", "train", "attach_kernel", "load_strict", "calibrate", "batch_inputs"]
