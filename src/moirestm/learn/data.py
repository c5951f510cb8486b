"""Data access for learning: store opening, honest splits, train-only normalisation, a lazy Dataset.

The hand-over from the physics side is the :class:`moirestm.dataset.store.Store`
(see docs/architecture.md).  Any object with the same ``keys`` / ``params`` /
``image`` methods is accepted too, so notebooks can feed in-memory data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import MoireSTMError

DEFAULT_TARGET = "hubbard_u_ev"
SPLITS = ("random", "group", "interpolate", "extrapolate", "filling", "draw", "draw_group")


# --------------------------------------------------------------------------- store access
def open_store(source: Any, channels: str | dict | None = None):
    """Return a store: open ``source`` if it is a path, else check it quacks like a Store.

    ``channels`` (a parameter name, or a Normalizer's ``channels`` record ``{name: values}``) returns
    the :class:`StackedStore` whose samples stack that parameter's values as image channels; a
    ``StackedStore`` given as ``source`` is returned as it is if it stacks the same way.
    """
    name, values = next(iter(channels.items())) if isinstance(channels, dict) else (channels, None)
    if isinstance(source, StackedStore):
        if name is None or (name == source.along and (values is None or source.values == _channel_values(values))):
            return source
        raise MoireSTMError(f"the store view stacks {source.channels}, not {channels}")
    if name is not None:
        return StackedStore(open_store(source), name, values)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise MoireSTMError(f"dataset not found: {path}")
        try:
            from ..dataset.store import Store
        except ImportError as exc:  # pragma: no cover - only before the dataset module exists
            raise MoireSTMError(f"cannot open {path}: moirestm.dataset.store is unavailable ({exc})") from None
        return Store.open(path)
    for method in ("keys", "params", "image"):
        if not callable(getattr(source, method, None)):
            raise MoireSTMError(f"{type(source).__name__} is not a store (no {method}() method)")
    return source


def _channel_values(values: Sequence[float]) -> list[float]:
    """Channel values as :class:`StackedStore` keeps them (rounded to 1e-9, so float noise does not split groups)."""
    return [round(float(v), 9) for v in values]


class StackedStore:
    """Store view whose samples are the stored images at every value of one parameter, as channels.

    An STM experiment records maps at several bias energies of the same sample; stacking them
    (``along="bias_ev"``) gives each input ``(C, H, W)``, one channel per value in ascending order.
    Samples that share every other parameter form one stacked sample, keyed by its member keys joined
    with ``+``; groups missing a value are left out.  Its ``params`` are the first member's with
    ``along`` replaced by the list of values.

    Parameters
    ----------
    store : the underlying store.
    along : parameter stacked into channels (e.g. ``"bias_ev"``).
    values : channel values to require (default: every value in the store's ok samples).
    """

    SEPARATOR = "+"

    def __init__(self, store, along: str, values: Sequence[float] | None = None):
        self.store, self.along = store, along
        groups: dict[str, dict[float, str]] = {}
        for key in store.keys(status="ok"):
            params = store.params(key)
            if along not in params:
                raise MoireSTMError(f"cannot stack channels along {along!r}: sample {key} has no such parameter "
                                    f"(has: {', '.join(sorted(params))})")
            try:
                value = round(float(params[along]), 9)
            except (TypeError, ValueError):
                raise MoireSTMError(f"cannot stack channels along {along!r}: its values must be numbers, "
                                    f"sample {key} has {params[along]!r}") from None
            rest = json.dumps({k: v for k, v in params.items() if k != along}, sort_keys=True, default=str)
            groups.setdefault(rest, {})[value] = key
        found = sorted({v for g in groups.values() for v in g})
        self.values = _channel_values(values) if values is not None else found
        if len(self.values) < 2:
            raise MoireSTMError(f"cannot stack channels along {along!r}: the store has "
                                f"{len(found)} value(s) ({found}); at least 2 are needed")
        self._members = {self.SEPARATOR.join(g[v] for v in self.values): [g[v] for v in self.values]
                         for g in groups.values() if all(v in g for v in self.values)}
        if not self._members:
            raise MoireSTMError(f"no sample of the store has all {along} = {self.values}")
        self._of_member = {m: key for key, members in self._members.items() for m in members}
        self.path = store_path(store)

    def __repr__(self) -> str:
        return f"StackedStore({self.path or self.store!r}, along={self.along!r}, values={self.values})"

    @property
    def channels(self) -> dict:
        """``{along: values}``, as recorded by the Normalizer of a run trained on this view."""
        return {self.along: list(self.values)}

    def keys(self, status: str | None = "ok") -> list[str]:
        return sorted(self._members) if status in ("ok", None) else []

    def members(self, key: str) -> list[str]:
        """Underlying sample keys of a stacked sample, one per channel."""
        if key not in self._members:
            raise MoireSTMError(f"{key!r} is not a stacked sample of this store")
        return list(self._members[key])

    def stacked_key(self, key: str) -> str:
        """The stacked sample of a stacked key or of one of its member keys."""
        if key in self._members:
            return key
        if key in self._of_member:
            return self._of_member[key]
        raise MoireSTMError(f"sample {key!r} is not part of a stacked sample with all {self.along} = {self.values}")

    def params(self, key: str) -> dict:
        return {**self.store.params(self.members(key)[0]), self.along: list(self.values)}

    def image(self, key: str) -> np.ndarray:
        return np.stack([np.asarray(self.store.image(m)) for m in self.members(key)])

    def arrays(self, key: str, names=None) -> dict:
        """Arrays of the first member (the k axes are shared; per-channel maps are not stacked)."""
        first = self.members(key)[0]
        if callable(getattr(self.store, "arrays", None)):
            return self.store.arrays(first, names)
        found = {n: read_array(self.store, first, n) for n in (names or [])}
        missing = [n for n, v in found.items() if v is None]
        if missing:
            raise MoireSTMError(f"sample {first} has no dataset(s) {missing}")
        return found


def store_path(store) -> str | None:
    """File path of a store, if it has one."""
    path = getattr(store, "path", None)
    return str(path) if path is not None else None


def read_array(store, key: str, name: str) -> np.ndarray | None:
    """Read the dataset ``name`` of sample ``key`` (e.g. ``stm_map``, ``kx_nm``); None if absent."""
    fn = getattr(store, "arrays", None)
    if callable(fn):
        try:
            return np.asarray(fn(key, [name])[name])
        except (KeyError, MoireSTMError):
            return None
    path = store_path(store)
    if path is None:
        return None
    import h5py

    with h5py.File(path, "r") as f:
        node = f.get(f"samples/{key}/{name}")
        return None if node is None else np.asarray(node[()])


def targets_of(store, keys: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """Array ``(n, n_targets)`` of target parameters, with a clear error if one is missing."""
    out = np.empty((len(keys), len(targets)), dtype=np.float64)
    for i, key in enumerate(keys):
        params = store.params(key)
        for j, name in enumerate(targets):
            if name not in params:
                raise MoireSTMError(f"sample {key} has no parameter {name!r} (has: {', '.join(sorted(params))})")
            out[i, j] = float(params[name])
    return out


# --------------------------------------------------------------------------- splits
@dataclass
class Split:
    """Train / validation / test keys of one store, with how they were drawn."""

    kind: str
    seed: int
    train: list[str]
    val: list[str]
    test: list[str]
    group_by: str | None = None
    held_out: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "train": list(self.train), "val": list(self.val),
                "test": list(self.test), "group_by": self.group_by, "held_out": self.held_out}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(kind=d["kind"], seed=int(d["seed"]), train=list(d["train"]), val=list(d["val"]),
                   test=list(d["test"]), group_by=d.get("group_by"), held_out=dict(d.get("held_out", {})))

    def keys(self, part: str) -> list[str]:
        if part not in ("train", "val", "test"):
            raise MoireSTMError(f"unknown split part {part!r}; use train, val or test")
        return list(getattr(self, part))


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_test - n_val < 1:
        raise MoireSTMError(f"only {n} groups/samples: too few for a train/val/test split")
    return n_val, n_test


def make_split(store, kind: str = "group", seed: int = 0, target: str = DEFAULT_TARGET,
               val_fraction: float = 0.15, test_fraction: float = 0.15) -> Split:
    """Split the store's ``ok`` samples.

    Parameters
    ----------
    kind : ``random`` (samples), ``group`` (whole values of ``target``, drawn at random, held
        out, so no test value is ever seen in training; the lowest and highest values stay in
        training, so the test is not an extrapolation, unless too few values are left to draw
        from: ``held_out["ends"]`` says which), ``interpolate`` (held-out *intermediate* values; the
        two ends stay in training), ``extrapolate`` (held-out ends: test = lowest and highest
        values, validation the next ones inward), ``filling`` (whole fillings held out), ``draw``
        (whole prior draws, ``draw_id``, held out: no held-out image shares its nuisance values with a
        training image), ``draw_group`` (held-out draws *and* held-out values of ``target`` as in
        ``group``: val/test keep the samples of their draws at their values, training those of the
        training draws at the other values; samples in neither are left out, counted in
        ``held_out["unused"]``).
    seed : fixes the draw.
    target : parameter whose values define the groups (``filling`` for ``kind="filling"``).
    """
    if kind not in SPLITS:
        raise MoireSTMError(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}")
    keys = sorted(store.keys(status="ok"))
    if len(keys) < 3:
        raise MoireSTMError(f"the store has {len(keys)} usable samples; at least 3 are needed")
    rng = np.random.default_rng(seed)
    if kind in ("draw", "draw_group"):
        return _draw_split(store, keys, kind, seed, rng, target, val_fraction, test_fraction)
    if kind == "random":
        perm = [keys[i] for i in rng.permutation(len(keys))]
        n_val, n_test = _counts(len(keys), val_fraction, test_fraction)
        return Split(kind, seed, train=sorted(perm[n_val + n_test:]), val=sorted(perm[:n_val]),
                     test=sorted(perm[n_val:n_val + n_test]))

    group_by = "filling" if kind == "filling" else target
    values = targets_of(store, keys, [group_by])[:, 0]
    rounded = np.round(values, 9)
    groups = np.unique(rounded)
    if len(groups) < 3:
        raise MoireSTMError(f"split {kind!r} needs at least 3 distinct values of {group_by}, found {len(groups)}")
    n_val, n_test = _counts(len(groups), val_fraction, test_fraction)
    ends = None
    if kind in ("group", "filling"):
        pool = groups
        if kind == "group":  # held-out ends would test extrapolation (the ``extrapolate`` split's job)
            ends = "train" if len(groups) - 2 >= n_val + n_test else "drawn"
            pool = groups[1:-1] if ends == "train" else groups
        perm = pool[rng.permutation(len(pool))]
        test_g, val_g = perm[:n_test], perm[n_test:n_test + n_val]
    elif kind == "interpolate":
        interior = groups[1:-1]
        if len(interior) < n_val + n_test:
            raise MoireSTMError(f"too few intermediate values of {group_by} for an interpolation split")
        # spread the held-out values over the range: every k-th interior value, random offset
        step = len(interior) / (n_val + n_test)
        offset = rng.uniform(0, step)
        picks = np.unique(np.minimum((offset + step * np.arange(n_val + n_test)).astype(int), len(interior) - 1))
        chosen = interior[picks]
        order = rng.permutation(len(chosen))
        test_g, val_g = chosen[order[:n_test]], chosen[order[n_test:]]
    else:  # extrapolate
        low, high = (n_test + 1) // 2, n_test // 2
        test_g = np.concatenate([groups[:low], groups[len(groups) - high:] if high else groups[:0]])
        inner = groups[low:len(groups) - high]
        vlow, vhigh = (n_val + 1) // 2, n_val // 2
        val_g = np.concatenate([inner[:vlow], inner[len(inner) - vhigh:] if vhigh else inner[:0]])
    test_set, val_set = set(test_g.tolist()), set(val_g.tolist())
    train, val, test = [], [], []
    for key, v in zip(keys, rounded):
        (test if v in test_set else val if v in val_set else train).append(key)
    held = {"by": group_by, "val": sorted(val_set), "test": sorted(test_set), **({"ends": ends} if ends else {})}
    return Split(kind, seed, train=train, val=val, test=test, group_by=group_by, held_out=held)


def _draw_split(store, keys, kind, seed, rng, target, val_fraction, test_fraction) -> Split:
    """Whole draws held out (``draw``), crossed with held-out ``target`` values (``draw_group``)."""
    ids = []
    for key in keys:
        params = store.params(key)
        if "draw_id" not in params:
            raise MoireSTMError(f"split {kind!r}: sample {key} has no draw_id; a draw split needs a store "
                                "drawn from priors (a [priors] table in the sweep)")
        ids.append(int(params["draw_id"]))
    ids = np.asarray(ids)
    draws = np.unique(ids)
    try:
        n_val, n_test = _counts(len(draws), val_fraction, test_fraction)
    except MoireSTMError:
        raise MoireSTMError(f"split {kind!r}: only {len(draws)} draws, too few for a train/val/test split") from None
    perm = draws[rng.permutation(len(draws))]
    test_d, val_d = set(perm[:n_test].tolist()), set(perm[n_test:n_test + n_val].tolist())
    part_of_draw = np.array(["test" if d in test_d else "val" if d in val_d else "train" for d in ids])
    held = {"by": "draw_id", "val": sorted(val_d), "test": sorted(test_d)}
    if kind == "draw_group":
        inner = make_split(store, "group", seed=seed, target=target, val_fraction=val_fraction,
                           test_fraction=test_fraction)
        part_of_value = {k: part for part in ("train", "val", "test") for k in inner.keys(part)}
        part_of_draw = np.array([p if part_of_value[k] == p else "unused" for k, p in zip(keys, part_of_draw)])
        held.update(values={"by": target, "val": inner.held_out["val"], "test": inner.held_out["test"]},
                    unused=int(np.sum(part_of_draw == "unused")))
    parts = {p: [k for k, q in zip(keys, part_of_draw) if q == p] for p in ("train", "val", "test")}
    if not all(parts.values()):
        raise MoireSTMError(f"split {kind!r}: a part is empty ({ {p: len(v) for p, v in parts.items()} }); "
                            "more draws or values are needed")
    return Split(kind, seed, train=parts["train"], val=parts["val"], test=parts["test"], group_by="draw_id",
                 held_out=held)


# --------------------------------------------------------------------------- normalisation
#: ``Normalizer`` image standardisations: one global std, or per pixel.
STANDARDISE = ("global", "pixel")
#: Floor of the per-pixel std, as a fraction of the global std.
PIXEL_STD_FLOOR = 0.1


def check_standardise(value: str) -> str:
    """Validate a ``Normalizer`` standardisation name (see ``STANDARDISE``)."""
    if value not in STANDARDISE:
        raise MoireSTMError(f"standardise must be one of {', '.join(STANDARDISE)}, got {value!r}")
    return value


@dataclass
class Normalizer:
    """Image and target normalisation, fitted on the training split only.

    Images: area down-sampling to ``input_size``, ``log1p(image / scale)`` (FT peaks span
    decades; ``scale`` is the median training-image mean), then subtraction of the training
    mean image and division by one global std (``standardise="global"``) or by each pixel's
    training std (``"pixel"``, floored at ``PIXEL_STD_FLOOR`` x the global std so empty pixels
    are not amplified): weak but informative intensity changes then weigh as much as the bright
    peaks.  Images stored already log-scaled (they have negative pixels,
    ``FTImage.params["log_scale"]``) skip the ``log1p`` (``log_input``).
    Targets: standardised per target with training mean and std.
    """

    image_shape: tuple[int, int]
    input_size: int | None
    scale: float
    pixel_mean: np.ndarray
    pixel_std: float | np.ndarray
    target_names: list[str]
    target_mean: np.ndarray
    target_std: np.ndarray
    log_input: bool = False
    channels: dict | None = None

    @classmethod
    def fit(cls, images: Sequence[np.ndarray], targets: np.ndarray, target_names: Sequence[str],
            input_size: int | None, standardise: str = "global", channels: dict | None = None) -> "Normalizer":
        """Fit on training images ``(H, W)``, or ``(C, H, W)`` with ``channels = {parameter: values}``."""
        check_standardise(standardise)
        images = list(images)
        if not images:
            raise MoireSTMError("cannot fit a normalisation on an empty training split")
        shape = tuple(images[0].shape)
        if len(shape) != (2 if channels is None else 3) or (channels and shape[0] != len(next(iter(channels.values())))):
            raise MoireSTMError(f"training images of shape {shape} do not match the channels {channels}")
        log_input = any(float(np.min(im)) < 0 for im in images)
        if log_input:
            scale = 1.0
        else:
            scale = float(np.median([float(np.mean(im)) for im in images]))
            if not np.isfinite(scale) or scale <= 0:
                raise MoireSTMError("training images have a non-positive mean intensity; cannot normalise")
        probe = cls(shape, input_size, scale, np.zeros(1, np.float32), 1.0, [], np.zeros(1), np.ones(1), log_input)
        logs = in_chunks(probe._features, images).numpy()
        logs = logs[:, 0] if channels is None else logs
        mean = logs.mean(axis=0)
        std = float((logs - mean).std()) or 1.0
        if standardise == "pixel":
            std = np.maximum(logs.std(axis=0), PIXEL_STD_FLOOR * std).astype(np.float32)
        targets = np.asarray(targets, dtype=np.float64)
        tstd = targets.std(axis=0)
        tstd = np.where(tstd > 0, tstd, 1.0)
        return cls(shape, input_size, scale, mean.astype(np.float32), std,
                   list(target_names), targets.mean(axis=0), tstd, log_input,
                   None if channels is None else {k: list(v) for k, v in channels.items()})

    @property
    def standardise(self) -> str:
        """``"pixel"`` (a per-pixel std) or ``"global"`` (one std)."""
        return "pixel" if isinstance(self.pixel_std, np.ndarray) else "global"

    @property
    def n_channels(self) -> int:
        """Input channels: 1, or one per stacked parameter value."""
        return 1 if self.channels is None else int(self.image_shape[0])

    def describe_input(self) -> str:
        """What one raw input is, e.g. ``a 2-D FT-LDOS image`` or ``3 stacked images (bias_ev = ...)``."""
        if self.channels is None:
            return "a 2-D FT-LDOS image"
        (name, values), = self.channels.items()
        return f"{len(values)} stacked FT-LDOS images, shape (C, H, W), one per {name} = {values}"

    def check(self, image: np.ndarray) -> np.ndarray:
        """Validate one raw input (shape, finiteness, sign) and return it as float32."""
        arr = np.asarray(image)
        if arr.ndim != len(self.image_shape):
            raise MoireSTMError(f"expected {self.describe_input()}, got an array of shape {arr.shape}")
        if tuple(arr.shape) != tuple(self.image_shape):
            raise MoireSTMError(f"image shape {arr.shape} does not match the model's "
                                f"{tuple(self.image_shape)}")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise MoireSTMError(f"image must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise MoireSTMError(f"image contains {int(np.sum(~np.isfinite(arr)))} NaN or infinite pixels")
        if not self.log_input and arr.min() < 0:
            raise MoireSTMError(f"FT-LDOS magnitudes are non-negative, image minimum is {arr.min():.3g}")
        return arr

    def transform(self, image: np.ndarray) -> np.ndarray:
        """Raw input (H, W) or (C, H, W) -> normalised model input (C, h, w) float32."""
        return self.transform_batch(torch.from_numpy(np.asarray(image, dtype=np.float32))[None])[0].numpy()

    def transform_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw inputs (a sequence of ``(H, W)`` or ``(C, H, W)`` arrays) -> ``(B, C, h, w)``, in chunks."""
        return in_chunks(self.transform_batch, images)

    def transform_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Raw inputs ``(B, H, W)`` or ``(B, C, H, W)`` -> normalised model inputs ``(B, C, h, w)`` float32."""
        mean = torch.from_numpy(np.asarray(self.pixel_mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(self.pixel_std, dtype=np.float32))
        return (self._features(images) - mean) / std

    def features(self, image: np.ndarray) -> np.ndarray:
        """Down-sampled, log-scaled image ``(h, w)`` before standardisation (for display; the first channel)."""
        return self._features(torch.from_numpy(np.asarray(image, dtype=np.float32))[None])[0, 0].numpy()

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        x = x[:, None] if x.ndim == 3 else x
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.adaptive_avg_pool2d(x, self.input_size)
        return x if self.log_input else torch.log1p(x / self.scale)

    @property
    def input_shape(self) -> tuple[int, int]:
        """Model-grid image shape ``(h, w)`` (each channel)."""
        return tuple(self.pixel_mean.shape[-2:])

    def encode_targets(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y) - self.target_mean) / self.target_std).astype(np.float32)

    def decode_targets(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.target_std + self.target_mean

    def state(self) -> dict:
        """Checkpoint-safe state (tensors and plain types only)."""
        return {"image_shape": list(self.image_shape), "input_size": self.input_size, "scale": self.scale,
                "pixel_mean": torch.from_numpy(self.pixel_mean.copy()),
                "pixel_std": (torch.from_numpy(self.pixel_std.copy()) if isinstance(self.pixel_std, np.ndarray)
                              else self.pixel_std),
                "target_names": list(self.target_names),
                "target_mean": torch.from_numpy(np.asarray(self.target_mean, dtype=np.float64)),
                "target_std": torch.from_numpy(np.asarray(self.target_std, dtype=np.float64)),
                "log_input": self.log_input, "channels": self.channels}

    @classmethod
    def from_state(cls, s: dict) -> "Normalizer":
        std = s["pixel_std"]
        std = std.numpy() if torch.is_tensor(std) else float(std)
        return cls(tuple(s["image_shape"]), s["input_size"], float(s["scale"]), s["pixel_mean"].numpy(),
                   std, list(s["target_names"]), s["target_mean"].numpy(),
                   s["target_std"].numpy(), bool(s.get("log_input", False)), s.get("channels"))


# --------------------------------------------------------------------------- dataset
class ImageDataset(Dataset):
    """Lazy dataset over store samples: reads an image on first access, then keeps it.

    Parameters
    ----------
    store : an open Store (or store-like object).
    keys : sample keys.
    normalizer : fitted :class:`Normalizer`.
    augment : optional callable ``augment(image, rng, sample)`` returning an image (see
        :mod:`moirestm.learn.augment`); ``sample`` gives lazy access to the stored arrays.
    seed : augmentation seed; draws depend on (seed, epoch, index) only, so runs are reproducible.
    cache : keep raw images in memory after the first read.
    images : the raw images of ``keys`` when already read (e.g. to fit the normaliser), so the
        store is not read twice; they are kept in the cache.

    Targets are read from the store on first use only, so a dataset used for its images alone
    (held-out or artefact sets) needs no target parameters.
    """

    def __init__(self, store, keys: Sequence[str], normalizer: Normalizer, augment: Callable | None = None,
                 seed: int = 0, cache: bool = True, images: Sequence[np.ndarray] | None = None):
        self.store = store
        self.keys = list(keys)
        self.normalizer = normalizer
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self._images: dict[int, np.ndarray] = {}
        if images is not None:
            if len(images) != len(self.keys):
                raise MoireSTMError(f"ImageDataset: {len(images)} images for {len(self.keys)} keys")
            self._images = {i: normalizer.check(im) for i, im in enumerate(images)}
        self._inputs: torch.Tensor | None = None
        self._targets: np.ndarray | None = None

    @property
    def targets(self) -> np.ndarray:
        """Normalised targets ``(n, n_targets)``, read from the store on first use."""
        if self._targets is None:
            self._targets = self.normalizer.encode_targets(targets_of(self.store, self.keys,
                                                                      self.normalizer.target_names))
        return self._targets

    def __len__(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def raw(self, i: int) -> np.ndarray:
        if i in self._images:
            return self._images[i]
        image = self.normalizer.check(self.store.image(self.keys[i]))
        if self.cache:
            self._images[i] = image
        return image

    def __getitem__(self, i: int):
        image = self.augmented([i])[0]
        return torch.from_numpy(self.normalizer.transform(image)), torch.from_numpy(self.targets[i])

    def augmented(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Raw inputs of ``indices`` with this epoch's augmentation draws, before normalisation.

        Draws depend on (seed, epoch, index) only.  An augmenter with a batched path (``batched``,
        e.g. FT-space presets) runs once per group of images on the same k grid.
        """
        idx = [int(i) for i in indices]
        if self.augment is None:
            return [self.raw(i) for i in idx]

        def rng(i):
            return np.random.default_rng([self.seed, self.epoch, i])

        if not getattr(self.augment, "batched", False):
            return [self.augment(self.raw(i), rng(i), SampleArrays(self.store, self.keys[i])) for i in idx]
        from .augment import sample_k_axes

        out: list = [None] * len(idx)
        groups: dict = {}
        for pos, i in enumerate(idx):
            kx, ky = sample_k_axes(SampleArrays(self.store, self.keys[i]), self.raw(i).shape[-2:])
            groups.setdefault((len(kx), len(ky), kx[0], kx[-1], ky[0], ky[-1]), (kx, ky, []))[2].append(pos)
        for kx, ky, members in groups.values():
            raws = torch.from_numpy(np.stack([self.raw(idx[p]) for p in members]))
            for p, image in zip(members, self.augment.batch(raws, [rng(idx[p]) for p in members], kx, ky)):
                out[p] = image.numpy()
        return out

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, C, h, w)`` and targets ``(B, n_targets)`` of ``indices``, equal to stacking ``self[i]``.

        Without augmentation the normalised inputs are computed once and kept (with ``cache``).
        """
        idx = [int(i) for i in indices]
        y = torch.from_numpy(self.targets[idx])
        if self.augment is None and self.cache:
            if self._inputs is None:
                self._inputs = self.normalizer.transform_images([self.raw(i) for i in range(len(self))])
            return self._inputs[idx], y
        return self.normalizer.transform_images(self.augmented(idx)), y


class SampleArrays:
    """Lazy, memoised access to the stored arrays of one sample (``kx_nm``, ``stm_map``, ...)."""

    _cache: dict = {}

    def __init__(self, store, key: str):
        self.store, self.key = store, key

    def get(self, name: str) -> np.ndarray | None:
        ck = (id(self.store), self.key, name)
        if ck not in SampleArrays._cache:
            if len(SampleArrays._cache) > 4096:
                SampleArrays._cache.clear()
            SampleArrays._cache[ck] = read_array(self.store, self.key, name)
        return SampleArrays._cache[ck]


def batch_inputs(normalizer: Normalizer, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Validate and normalise raw inputs into a model batch ``(B, C, h, w)``."""
    return normalizer.transform_images([normalizer.check(im) for im in images])


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], images: Sequence[np.ndarray], size: int = 256
              ) -> torch.Tensor:
    """``fn`` over a stack of float32 images, ``size`` images at a time (bounds peak memory)."""
    images = list(images)
    return torch.cat([fn(torch.from_numpy(np.stack(images[i:i + size]).astype(np.float32, copy=False)))
                      for i in range(0, len(images), size)])


__all__ = ["open_store", "StackedStore", "read_array", "targets_of", "Split", "make_split", "Normalizer", "ImageDataset",
           "SampleArrays", "batch_inputs", "DEFAULT_TARGET", "SPLITS"]
