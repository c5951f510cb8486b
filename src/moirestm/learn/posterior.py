"""Amortised posterior over U and the drawn nuisance parameters: neural posterior estimation with sbi.

:func:`infer` trains, on a ``draw`` split of a store with priors (issue 16: samples carry
``draw_id``, the sweep metadata holds ``priors``), a conditional normalizing flow
``q(theta | image)`` (sbi's neural spline flow by default), an equal-weight ensemble of such flows,
conditioned either on summary statistics shared by the flows (``embedding="kernel"``, the default:
a pixel kernel ridge's estimate of every parameter, cross-fitted over training draws, see
:func:`fit_summariser`) or on a network embedding per flow (the project's
:class:`~moirestm.learn.models.CompactCNN`, ``embedding="cnn"``) trained end to end with it.  Flows
are trained by maximum likelihood (plain PyTorch loop, early stopping on the held-out validation
*draws*).  ``theta`` is U plus every numeric drawn parameter of the store's priors (``choice``
priors, e.g. a twist index, are not inferred and are marginalised).

The prior handed to sbi is a uniform box over the prior ranges (U: the range of the store's
U values), in standardised coordinates ``z = (theta - centre) / half_width`` in ``[-1, 1]`` (of
``log theta`` for a log-uniform prior, so that the box is the prior there);
the training pairs themselves follow the store's actual priors (e.g. log-uniform or truncated
normal), so the learned posterior is the posterior under those priors, and the box only
bounds the support (samples outside it are rejected).

A :class:`PosteriorRun` directory holds ``posterior.pt`` (estimator weights and build config,
image normalisation, theta box, the store's prior, split, out-of-family statistics, package
version), ``posterior.json`` (readable summary and validation calibration), ``split.json`` and,
by default, ``point/``: the point-estimate baseline (network + kernel blend,
:func:`moirestm.learn.train.train`) on the same split, with a split-conformal interval.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..errors import MoireSTMError
from ..io import output_dir, write_json
from ..parameters import default_of, validate
from .data import DEFAULT_TARGET, Normalizer, Split, batch_inputs, make_split, open_store, store_path
from .models import DEFAULT_INPUT_SIZE, build_model, count_parameters
from .run import _atomic_save, _load_checkpoint, load_strict
from .stacked_flows import StackedSplineFlows

#: nflows' LU layers call a deprecated torch solver on every pass; the warning says nothing to a user
warnings.filterwarnings("ignore", message=r".*triangular_solve is deprecated.*", category=UserWarning)

POSTERIOR_FORMAT = "moirestm-posterior-run"
#: 2: the out-of-family score's second half is the posterior consistency check (was an unconditional PCA distance);
#: 3: a third part, the prior-box reading (:func:`_box_excess`);
#: 4: an ensemble of flows (``state_dicts``, one per member; a version-3 file is read as an ensemble of one);
#: 5: an optional shared summariser in front of the flows (``summariser``: the kernel of ``embedding="kernel"``)
POSTERIOR_VERSION = 5
#: format versions :meth:`PosteriorRun.load` reads
READABLE_VERSIONS = (3, 4, 5)
POSTERIOR_FILE = "posterior.pt"
POINT_DIR = "point"
#: central-interval levels of the coverage checks
COVERAGE_LEVELS = (0.5, 0.68, 0.9, 0.95)
#: reported quantiles (68 % and 95 % central intervals)
QUANTILES = {"q025": 0.025, "q16": 0.16, "q84": 0.84, "q975": 0.975}
#: 90 % coverage outside this band marks a run as miscalibrated
CALIBRATED_90 = (0.85, 0.95)
#: posterior samples per image for prediction and calibration
N_SAMPLES = 1000
#: prior sd / posterior sd above which a parameter counts as identified (the posterior is at
#: most half as wide as the prior)
IDENTIFIED_CONTRACTION = 2.0
FLOWS = ("nsf", "maf")
#: input side of the kernel summaries (the pixel kernel's resolution in the network + kernel blend)
KERNEL_INPUT_SIZE = DEFAULT_INPUT_SIZE["cnn"]
#: folds of whole draws for the cross-fitted kernel summaries
SUMMARY_FOLDS = 5
#: expected fraction of the ensemble's proposals inside the prior box before any is drawn (median 0.83-0.89 per
#: member over demo-sbi's test images; 2x oversampling instead took 1.1x the prediction time, docs/benchmarks.md)
FIRST_ACCEPTANCE = 0.8


@dataclass
class PosteriorConfig:
    """Hyper-parameters of :func:`infer` (all saved with the run)."""

    flow: str = default_of("flow")
    #: ``kernel``: cross-fitted pixel-kernel-ridge summaries shared by the flows; ``cnn``/``mlp``/``resnet18``:
    #: a network embedding per flow, trained end to end
    embedding: str = default_of("embedding")
    embedding_dim: int = 32
    width: int = 16
    dropout: float = 0.0
    hidden_features: int = 64
    num_transforms: int = 4
    epochs: int = default_of("epochs", "infer")
    batch_size: int = default_of("batch_size", "infer")
    lr: float = default_of("lr", "infer")
    weight_decay: float = default_of("weight_decay", "infer")
    patience: int = default_of("patience", "infer")
    seed: int = default_of("seed")
    input_size: int | None = default_of("input_size")
    val_fraction: float = default_of("val_fraction")
    test_fraction: float = default_of("test_fraction")
    max_minutes: float | None = default_of("max_minutes")
    n_samples: int = N_SAMPLES
    ood_false_alarm: float = 0.05
    point: bool = default_of("point")
    point_max_minutes: float | None = default_of("point_max_minutes")
    augment: str = default_of("augment")
    #: weight of the balancing penalty of balanced NPE (0: plain maximum likelihood; see :func:`_balance_penalty`)
    balance: float = default_of("balance")
    #: flows trained from different initialisations; the posterior is their equal-weight mixture
    ensemble: int = default_of("ensemble")
    #: the flows model ``flow_scale`` x the box coordinates (a fixed first layer; 1: none)
    flow_scale: float = default_of("flow_scale")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- theta and prior
@dataclass
class Theta:
    """The inferred parameters: names, prior box, which are inferred in log space, and the store's prior record.

    The flow works in box coordinates ``z`` in ``[-1, 1]``: linear in the parameter, or in its
    logarithm for a log-uniform prior (``log``), so that such a prior is uniform in ``z`` too.
    """

    names: list[str]
    low: np.ndarray
    high: np.ndarray
    priors: dict = field(default_factory=dict)
    log: np.ndarray | None = None

    def __post_init__(self):
        self.log = np.zeros(len(self.names), bool) if self.log is None else np.asarray(self.log, bool)

    def _scaled(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        return np.where(self.log, np.log(np.where(self.log, theta, 1.0)), theta)

    @property
    def centre(self) -> np.ndarray:
        """Box centre in the flow's (linear or log) coordinates."""
        return (self._scaled(self.low) + self._scaled(self.high)) / 2

    @property
    def half_width(self) -> np.ndarray:
        """Box half-width in the flow's (linear or log) coordinates."""
        return (self._scaled(self.high) - self._scaled(self.low)) / 2

    def encode(self, theta: np.ndarray) -> np.ndarray:
        return ((self._scaled(theta) - self.centre) / self.half_width).astype(np.float32)

    def decode(self, z) -> np.ndarray:
        t = np.asarray(z, dtype=np.float64) * self.half_width + self.centre
        return np.where(self.log, np.exp(t), t)

    def box(self):
        """The sbi prior: a uniform box ``[-1, 1]^d`` in standardised coordinates."""
        from sbi.utils import BoxUniform

        d = len(self.names)
        return BoxUniform(-torch.ones(d), torch.ones(d))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "low": self.low.tolist(), "high": self.high.tolist(),
                "log": self.log.tolist(), "priors": self.priors}

    @classmethod
    def from_dict(cls, d: dict) -> "Theta":
        return cls(list(d["names"]), np.asarray(d["low"], float), np.asarray(d["high"], float), dict(d["priors"]),
                   d.get("log"))


def store_priors(store) -> dict:
    """The store's prior record (``sweep_params["priors"]``); MoireSTMError if it has none."""
    sweep = getattr(store, "sweep_params", None)
    sweep = sweep() if callable(sweep) else sweep
    priors = (sweep or {}).get("priors")
    if not priors:
        raise MoireSTMError(f"{store_path(store) or store} has no priors in its sweep metadata: posterior "
                            "inference needs a store drawn from priors (a [priors] table in the sweep)")
    return dict(priors)


def theta_of(store, keys: Sequence[str], priors: dict) -> Theta:
    """U plus every numeric, non-``choice`` prior parameter that varies, with its box.

    The box is the prior's ``[low, high]`` where it states one, else the range of the samples; a
    log-uniform prior is inferred in log space.
    """
    params = [store.params(k) for k in keys]
    names = [DEFAULT_TARGET] + sorted(n for n, p in priors.items()
                                      if n != DEFAULT_TARGET and p.get("dist") != "choice")
    low, high, kept, log = [], [], [], []
    for name in names:
        values = [p.get(name) for p in params]
        if any(v is None for v in values):
            raise MoireSTMError(f"samples of the store lack the drawn parameter {name!r}")
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            continue  # a non-numeric draw (e.g. a named preset) is marginalised, not inferred
        spec = priors.get(name, {})
        lo = spec.get("low") if isinstance(spec.get("low"), (int, float)) else values.min()
        hi = spec.get("high") if isinstance(spec.get("high"), (int, float)) else values.max()
        lo, hi = min(float(lo), values.min()), max(float(hi), values.max())
        if hi <= lo:
            if name == DEFAULT_TARGET:
                raise MoireSTMError("every sample has the same U: nothing to infer")
            continue
        kept.append(name)
        low.append(lo)
        high.append(hi)
        log.append(spec.get("dist") == "loguniform" and lo > 0)
    return Theta(kept, np.array(low), np.array(high), priors, np.array(log, bool))


def _draw_ids(store, keys: Sequence[str], why: str) -> list[int]:
    """The ``draw_id`` of every sample; a sample without one is a one-line error saying ``why`` it is needed
    (a draw split; the kernel summaries, cross-fitted over whole draws so that no fold leaks a draw's nuisances)."""
    ids = []
    for k in keys:
        p = store.params(k)
        if "draw_id" not in p:
            raise MoireSTMError(f"sample {k} has no draw_id: {why}")
        ids.append(int(p["draw_id"]))
    return ids


def draw_split(store, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Split:
    """Whole draws (``draw_id``) held out for validation and test: no held-out image shares its
    nuisance values with a training image.  Uses ``make_split(kind="draw")`` where the data module has it."""
    from . import data

    if "draw" in data.SPLITS:
        return make_split(store, "draw", seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    keys = sorted(store.keys(status="ok"))
    ids = _draw_ids(store, keys, "a draw split needs a store drawn from priors")
    draws = np.unique(ids)
    n_test = max(1, int(round(len(draws) * test_fraction)))
    n_val = max(1, int(round(len(draws) * val_fraction)))
    if len(draws) - n_val - n_test < 1:
        raise MoireSTMError(f"only {len(draws)} draws: too few for a train/val/test split by draw")
    perm = draws[np.random.default_rng(seed).permutation(len(draws))]
    test_d, val_d = set(perm[:n_test].tolist()), set(perm[n_test:n_test + n_val].tolist())
    parts = {"train": [], "val": [], "test": []}
    for k, d in zip(keys, ids):
        parts["test" if d in test_d else "val" if d in val_d else "train"].append(k)
    return Split("draw", seed, parts["train"], parts["val"], parts["test"], group_by="draw_id",
                 held_out={"by": "draw_id", "val": sorted(val_d), "test": sorted(test_d)})


# --------------------------------------------------------------------------- the estimator
def member_config(config: dict, member: int) -> dict:
    """The build config of ensemble member ``member``: the run's, with the initialisation seed ``seed + member``."""
    return {**config, "seed": int(config.get("seed", 0)) + member}


def build_estimator(config: dict):
    """The sbi flow with its embedding, rebuilt from ``config`` (shapes + hyper-parameters).

    With ``embedding="kernel"`` the flow takes the run's shared summaries (``embedding_dim`` of them) as
    its context directly (identity embedding); otherwise it embeds the image with its own network.
    With ``flow_scale`` s != 1 (absent in runs saved before session 14: 1) the flow's first layer multiplies
    the box coordinates by s.
    """
    from sbi.neural_nets import posterior_nn

    shape = config["input_shape"]  # (C, h, w)
    name = config.get("embedding", "cnn")
    gen = torch.Generator().manual_seed(0)
    if name == "kernel":
        embedding, x0 = torch.nn.Identity(), torch.randn(8, config["embedding_dim"], generator=gen)
    else:
        options = {"width": config["width"]} if name != "mlp" else {}
        embedding = build_model({"name": name, "in_shape": shape[1:], "n_targets": config["embedding_dim"],
                                 "dropout": config.get("dropout", 0.0), **options,
                                 **({"in_channels": shape[0]} if shape[0] > 1 else {})})
        x0 = torch.randn(8, *shape, generator=gen)
    builder = posterior_nn(model=config["flow"], z_score_theta="none", z_score_x="none",
                           hidden_features=config["hidden_features"], num_transforms=config["num_transforms"],
                           embedding_net=embedding)
    theta0 = torch.rand(8, config["n_theta"], generator=gen) * 2 - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.get("seed", 0))
        estimator = builder(theta0, x0)
    scale = float(config.get("flow_scale", 1.0))
    if scale != 1.0:  # the data-side layer sbi's z-scoring would add, with a fixed scale
        from nflows.transforms import CompositeTransform, PointwiseAffineTransform

        flow = estimator.net
        flow._transform = CompositeTransform([PointwiseAffineTransform(0.0, scale), *flow._transform._transforms])
    return estimator


# --------------------------------------------------------------------------- the run
class PosteriorRun:
    """A trained posterior (an ensemble of one or more flows) with its prior box, normalisation, split and
    OOD statistics.

    With several members the posterior is their equal-weight mixture (a deep ensemble of neural
    posterior estimators; Hermans et al., TMLR 2022, arXiv:2110.06581, found such ensembles less
    over-confident than a single flow), restricted to the prior box: a member contributes to an image's
    samples in proportion to its mass inside the box.  ``summariser`` (``embedding="kernel"``: a
    :class:`~moirestm.learn.kernel.KernelSummary`) maps the normalised image to the flows' shared context.
    """

    kind = "posterior"

    def __init__(self, path: Path | None, estimators: Sequence, estimator_config: dict, normalizer: Normalizer,
                 theta: Theta, split: Split, config: dict, ood: dict, store: str | None, version: str,
                 history: list, summary: dict, family: dict, summariser: torch.nn.Module | None = None):
        self.estimators = [e.eval() for e in estimators]
        self.summariser = summariser
        self.path, self.estimator_config = path, estimator_config
        self.normalizer, self.theta, self.split, self.config = normalizer, theta, split, config
        self.ood, self.store, self.version, self.history = ood, store, version, history
        self.summary, self.family = summary, family

    def __repr__(self) -> str:
        return f"PosteriorRun(theta={self.theta.names}, split={self.split.kind!r}, path={str(self.path)!r})"

    @property
    def names(self) -> list[str]:
        return list(self.theta.names)

    @property
    def n_members(self) -> int:
        return len(self.estimators)

    def state(self) -> dict:
        return {"format": POSTERIOR_FORMAT, "format_version": POSTERIOR_VERSION, "moirestm_version": self.version,
                "estimator_config": self.estimator_config,
                "state_dicts": [e.state_dict() for e in self.estimators],
                "summariser": None if self.summariser is None else self.summariser.kernel.state(),
                "normalizer": self.normalizer.state(), "theta": self.theta.to_dict(), "split": self.split.to_dict(),
                "config": self.config, "ood": {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray)
                                                   else v) for k, v in self.ood.items()},
                "store": self.store, "history": self.history, "summary": self.summary, "family": self.family}

    def save(self, path: str | Path | None = None) -> Path:
        """Write ``posterior.pt`` (atomically) and ``posterior.json``."""
        directory = Path(path or self.path)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.state(), directory / POSTERIOR_FILE)
        write_json(directory / "posterior.json", self.info(), "PosteriorRunSummary", overwrite=True)
        self.path = directory
        return directory / POSTERIOR_FILE

    def info(self) -> dict:
        """Readable summary (what ``posterior.json`` holds)."""
        return {"kind": self.kind, "moirestm_version": self.version, "theta": self.theta.to_dict(),
                "family": self.family, "config": self.config, "estimator": self.estimator_config,
                "store": self.store, "split": {"kind": self.split.kind, "seed": self.split.seed,
                                               "n_train": len(self.split.train), "n_val": len(self.split.val),
                                               "n_test": len(self.split.test)},
                "ood": {"threshold": self.ood["threshold"], "false_alarm": self.ood["false_alarm"]},
                "summary": self.summary, "history": self.history}

    @classmethod
    def load(cls, path: str | Path) -> "PosteriorRun":
        """Open a posterior run directory (or its ``posterior.pt``) strictly."""
        path = Path(path)
        file = path / POSTERIOR_FILE if path.is_dir() else path
        if not file.is_file():
            raise MoireSTMError(f"no posterior run at {path} ({POSTERIOR_FILE} not found)")
        state = _load_checkpoint(file)
        if not isinstance(state, dict) or state.get("format") != POSTERIOR_FORMAT:
            raise MoireSTMError(f"{file} does not hold a moirestm posterior run")
        if state.get("format_version") not in READABLE_VERSIONS:
            raise MoireSTMError(f"posterior run format version {state.get('format_version')} is not supported "
                                f"(this moirestm reads versions {', '.join(map(str, READABLE_VERSIONS))}); "
                                "retrain it with moirestm infer")
        if "state_dict" in state:  # version 3: one flow
            state["state_dicts"] = [state.pop("state_dict")]
        missing = [k for k in ("estimator_config", "state_dicts", "normalizer", "theta", "split", "ood")
                   if k not in state]
        if missing:
            raise MoireSTMError(f"posterior run {file} lacks {', '.join(missing)}")
        if state["estimator_config"].get("n_theta") != len(state["theta"]["names"]):
            raise MoireSTMError(f"{file}: the estimator infers {state['estimator_config'].get('n_theta')} "
                                f"parameters but the run records {len(state['theta']['names'])}")
        if not isinstance(state["state_dicts"], list) or not state["state_dicts"]:
            raise MoireSTMError(f"posterior run {file} holds no flow weights")
        summariser = None
        if state["estimator_config"].get("embedding") == "kernel":
            from .kernel import KernelSummary, PixelKernelRidge

            if not state.get("summariser"):
                raise MoireSTMError(f"posterior run {file} has kernel summaries but holds no kernel")
            kernel = PixelKernelRidge.from_state(state["summariser"])
            config = state["estimator_config"]
            if (kernel.x_train.shape[1] != int(np.prod(config["input_shape"]))
                    or np.shape(kernel.coef)[1] != config["embedding_dim"]):
                raise MoireSTMError(f"posterior run {file}: its kernel maps {kernel.x_train.shape[1]} input values to "
                                    f"{np.shape(kernel.coef)[1]} summaries, the flows expect "
                                    f"{int(np.prod(config['input_shape']))} and {config['embedding_dim']}")
            summariser = KernelSummary(kernel)
        estimators = []
        for member, weights in enumerate(state["state_dicts"]):
            estimators.append(build_estimator(member_config(state["estimator_config"], member)))
            load_strict(estimators[-1], weights, where=f"{file} (ensemble member {member})")
        ood = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in state["ood"].items()}
        return cls(file.parent, estimators, state["estimator_config"], Normalizer.from_state(state["normalizer"]),
                   Theta.from_dict(state["theta"]), Split.from_dict(state["split"]), state.get("config", {}), ood,
                   state.get("store"), state.get("moirestm_version", "?"), state.get("history", []),
                   state.get("summary", {}), state.get("family", {}), summariser)

    def held_out_images(self, store, keys: Sequence[str]) -> list[np.ndarray]:
        """Images of ``keys`` as the run's family makes them (with its artefact preset, if any)."""
        return family_images(store, keys, self.normalizer, self.config.get("augment"), self.config.get("seed", 0))

    # ------------------------------------------------------------------ inference
    def sample_and_score(self, x: torch.Tensor, n_samples: int | None = None, seed: int = 0,
                         ood: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior samples in box coordinates ``(n, n_samples, d)`` and out-of-family scores ``(n,)`` of
        normalised inputs, from one embedding pass per member (see :func:`fit_ood`; ``ood``: statistics to
        use instead of the run's own)."""
        z, embedded = self.sample_z(x, n_samples or self.config.get("n_samples", N_SAMPLES), seed, embeddings=True)
        return z, ood_score(ood or self.ood, embedded, x.reshape(len(x), -1).numpy(), np.median(z, axis=1))

    def ood_scores(self, x: torch.Tensor) -> np.ndarray:
        """Out-of-family scores ``(n,)`` of normalised inputs."""
        return self.sample_and_score(x)[1]

    @torch.inference_mode()
    def sample_z(self, x: torch.Tensor, n_samples: int, seed: int = 0, chunk: int = 32,
                 embeddings: bool = False, summaries: torch.Tensor | None = None
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``(n_images, n_samples, d)`` posterior samples in box coordinates: the members' equal-weight
        mixture truncated to the box (with ``embeddings``, also the embedding of ``x`` computed on the way:
        the shared summaries, or every member's network embedding side by side, ``(n_images, n_members *
        embedding_dim)``).

        Images are sampled ``chunk`` at a time: one embedding pass per member, then rejection rounds of one
        pass of all members each (:func:`_sample_in_box`).  ``summaries``: the summariser's outputs for ``x``
        when they are given (the cross-fitted ones of training images).
        """
        out = np.empty((len(x), n_samples, len(self.names)), dtype=np.float32)
        embedded = []
        flows = [_flow(estimator) for estimator in self.estimators]
        inverse = ensemble_inverse(flows)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for first in range(0, len(x), chunk):
                rows = slice(first, first + chunk)
                inputs = x[rows]
                if self.summariser is not None:
                    inputs = summaries[rows] if summaries is not None else self.summariser(inputs)
                contexts = torch.stack([flow._embedding_net(inputs) for flow in flows])
                out[rows] = _sample_in_box(inverse, contexts, n_samples, flows[0]._distribution._shape[0])
                embedded.append((inputs if self.summariser is not None else
                                 contexts.transpose(0, 1).reshape(len(inputs), -1)).numpy())
        if not embeddings:
            return out
        return out, np.concatenate(embedded) if embedded else np.empty((0, 0), np.float32)

    def samples(self, images: Sequence[np.ndarray], n_samples: int | None = None, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
        """Physical posterior samples ``(n, n_samples, d)`` and OOD scores ``(n,)`` of raw images."""
        z, scores = self.sample_and_score(batch_inputs(self.normalizer, images), n_samples, seed)
        return self.theta.decode(z), scores


def _flow(estimator):
    """The nflows flow inside an sbi estimator (``nsf``/``maf``: a standard-normal base, an embedding net, a transform)."""
    from nflows.distributions import StandardNormal

    flow = getattr(estimator, "net", None)
    if not all(hasattr(flow, a) for a in ("_embedding_net", "_transform", "_distribution")) or not isinstance(
            flow._distribution, StandardNormal):
        raise MoireSTMError("this posterior run's estimator is not an nflows flow with a standard-normal base")
    return flow.eval() if flow.training else flow  # eval() walks every submodule: ~1 ms a call


def ensemble_inverse(flows: Sequence):
    """The sampling pass ``(noise (M, N, d), context (M, N, c)) -> (M, N, d)`` of the ensemble's flows: one
    batched pass for neural spline flows (:class:`~moirestm.learn.stacked_flows.StackedSplineFlows`), else
    each flow's own."""
    stacked = StackedSplineFlows.from_flows(flows)
    if stacked is not None:
        return stacked.inverse
    return lambda noise, context: torch.stack([f._transform.inverse(n, context=c)[0]
                                               for f, n, c in zip(flows, noise, context)])


@torch.inference_mode()
def _sample_in_box(inverse, contexts: torch.Tensor, n_samples: int, d: int) -> np.ndarray:
    """``(n_images, n_samples, d)`` samples of the members' equal-weight mixture at embedded ``contexts``
    (``(M, n_images, c)``; ``inverse``: :func:`ensemble_inverse`), truncated to the box ``[-1, 1]^d``.

    Every round draws the same number of proposals per image from every member (a stratified draw of the
    mixture) in one pass and keeps those inside the box, so that a member contributes in proportion to its
    mass inside: the mixture density restricted to the prior's support, as sbi's ``DirectPosterior``
    restricts one flow.  A round's draw is what an image still needs over the acceptance so far
    (``FIRST_ACCEPTANCE`` before the first round) with a 25 % margin, at most ``4 n_samples / M`` per
    member, so that an image whose flows leave the box, e.g. a blank one, costs a bounded effort; what is
    still missing after five rounds is clamped into the box.  A pass costs about linearly in its samples
    (7 us per sample and flow on 2 cores).
    """
    n_members, n_images = contexts.shape[:2]
    kept = [[] for _ in range(n_images)]
    need = np.full(n_images, n_samples)
    accept = np.full(n_images, FIRST_ACCEPTANCE)
    cap = 4 * -(-n_samples // n_members)
    for round_ in range(6):
        todo = np.flatnonzero(need > 0)
        if not len(todo):
            break
        counts = np.minimum(need[todo] / n_members / accept[todo] * 1.25, cap).astype(int) + 8
        noise = torch.randn(n_members, int(counts.sum()), d)
        s = inverse(noise, contexts[:, todo].repeat_interleave(torch.from_numpy(counts), dim=1))
        inside = (s.abs() <= 1).all(dim=-1)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for j, i in enumerate(todo):
            si, ii = s[:, bounds[j]:bounds[j + 1]].reshape(-1, d), inside[:, bounds[j]:bounds[j + 1]].reshape(-1)
            accept[i] = max(float(ii.float().mean()), 0.02)
            si = si.clamp(-1, 1) if round_ == 5 else si[ii]
            kept[i].append(si[torch.randperm(len(si))[:need[i]]])  # a random subset keeps the members' proportions
            need[i] -= len(kept[i][-1])
    return np.stack([torch.cat(parts).numpy() for parts in kept])


def summarise(samples: np.ndarray, names: Sequence[str], score: float, threshold: float) -> dict:
    """Per-parameter median, mean, q025, q16, q84, q975 of ``(n_samples, d)`` samples, plus the OOD score/flag."""
    qs = np.quantile(samples, [0.5, *QUANTILES.values()], axis=0)
    out = {}
    for j, name in enumerate(names):
        out[name] = {"median": float(qs[0, j]), "mean": float(samples[:, j].mean()),
                     **{q: float(qs[1 + i, j]) for i, q in enumerate(QUANTILES)}}
    out["ood_score"], out["ood"] = float(score), bool(score > threshold)
    return out


def predict_posterior(run: PosteriorRun | str | Path, image, n_samples: int | None = None, seed: int = 0) -> dict:
    """Posterior summary of one raw image: ``{name: {median, mean, q025, q16, q84, q975}, "ood_score", "ood"}``.

    Bad input (wrong shape or channel count, NaN/inf, negative FT magnitudes) is a MoireSTMError.
    """
    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    samples, score = run.samples([image], n_samples, seed)
    return summarise(samples[0], run.names, float(score[0]), run.ood["threshold"])


# --------------------------------------------------------------------------- training
def infer(store: Any, out: str | Path = "runs/posterior", *, split: Split | None = None, overwrite: bool = False,
          progress: bool = True, **options) -> PosteriorRun:
    """Train the amortised posterior on a ``draw`` split of a store with priors.

    Parameters
    ----------
    store : store path or open store whose sweep metadata holds ``priors``.
    out : run directory (created; refused if it holds a run, unless ``overwrite``).
    split : a :class:`Split` to use instead of a fresh ``draw`` split.
    **options : :class:`PosteriorConfig` fields (``flow``, ``epochs``, ``max_minutes``, ``point``, ...).

    Returns
    -------
    PosteriorRun : saved in ``out``; its ``summary`` holds the validation calibration and, with
        ``point=True``, the point baseline (``out/point``) and its conformal intervals on the test draws.
    """
    unknown = set(options) - set(PosteriorConfig.__dataclass_fields__)
    if unknown:
        raise MoireSTMError(f"unknown posterior options: {', '.join(sorted(unknown))}")
    cfg = PosteriorConfig(**options)
    _check_config(cfg)
    st = open_store(store)
    priors = store_priors(st)
    out = Path(out)
    if (out / POSTERIOR_FILE).exists() and not overwrite:
        raise MoireSTMError(f"{out} already holds a posterior run; pass overwrite")
    created = not out.exists()
    output_dir(out)
    try:
        return _fit(cfg, st, priors, split, out, progress)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _check_config(cfg: PosteriorConfig) -> None:
    validate("embedding", cfg.embedding, "infer")
    if not 0 <= cfg.dropout < 1:
        raise MoireSTMError(f"infer: dropout must lie in [0, 1), got {cfg.dropout}")
    if cfg.flow not in FLOWS:
        raise MoireSTMError(f"unknown flow {cfg.flow!r}; choose one of {', '.join(FLOWS)}")
    for name in ("embedding_dim", "width", "hidden_features", "num_transforms", "epochs", "batch_size",
                 "patience", "n_samples"):
        if int(getattr(cfg, name)) < 1:
            raise MoireSTMError(f"infer: {name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.ood_false_alarm < 0.5:
        raise MoireSTMError(f"infer: ood_false_alarm must lie in (0, 0.5), got {cfg.ood_false_alarm}")
    if cfg.lr <= 0:
        raise MoireSTMError(f"infer: lr must be > 0, got {cfg.lr}")
    validate("balance", cfg.balance, "infer")
    validate("ensemble", cfg.ensemble, "infer")
    validate("flow_scale", cfg.flow_scale, "infer")
    family_augmenter(cfg.augment)  # an unknown preset is a one-line error before any work


def family_augmenter(preset: str | None):
    """The FT-space :class:`~moirestm.learn.augment.Augmenter` of a run's artefact preset (None for ``clean``)."""
    from .augment import Augmenter

    augmenter = Augmenter(preset or "clean", "ft")
    return None if augmenter.is_identity else augmenter


def family_images(store, keys: Sequence[str], normalizer: Normalizer, preset: str | None, seed: int
                  ) -> list[np.ndarray]:
    """Held-out images as a run's family makes them: raw, or with its artefact preset (one draw per
    image from ``seed + 1``, the same on every call)."""
    from .data import ImageDataset

    augmenter = family_augmenter(preset)
    if augmenter is None:
        return [store.image(k) for k in keys]
    return ImageDataset(store, keys, normalizer, augmenter, seed=seed + 1).augmented(range(len(keys)))


def _family(st, priors: dict) -> dict:
    sweep = st.sweep_params if not callable(getattr(st, "sweep_params", None)) else st.sweep_params()
    return {"name": sweep.get("name"), "index": sweep.get("index"), "priors": priors,
            "prior_seed": sweep.get("prior_seed"), "n_draws": sweep.get("n_draws")}


def _fit(cfg: PosteriorConfig, st, priors: dict, split: Split | None, out: Path, progress: bool) -> PosteriorRun:
    from .data import ImageDataset

    torch.manual_seed(cfg.seed)
    split = split or draw_split(st, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    if not split.train or not split.val:
        raise MoireSTMError("the draw split has an empty training or validation part")
    write_json(out / "split.json", split.to_dict(), "Split", overwrite=True)
    theta = theta_of(st, split.train + split.val + split.test, priors)
    train_images = [st.image(k) for k in split.train]
    first = np.asarray(train_images[0])
    size = cfg.input_size or min(DEFAULT_INPUT_SIZE.get(cfg.embedding, KERNEL_INPUT_SIZE), *first.shape[-2:])
    y_train = _theta_values(st, split.train, theta)
    normalizer = Normalizer.fit(train_images, y_train, theta.names,
                                None if size == first.shape[-1] == first.shape[-2] else size)
    augmenter = family_augmenter(cfg.augment)
    train_ds = ImageDataset(st, split.train, normalizer, augmenter, cfg.seed, images=train_images)
    del train_images  # the dataset keeps the checked copies

    def train_inputs(epoch: int) -> torch.Tensor:  # a fresh artefact draw every epoch
        train_ds.epoch = epoch
        return batch_inputs(normalizer, train_ds.augmented(range(len(train_ds))))

    x_train = train_inputs(0)
    x_val = batch_inputs(normalizer, family_images(st, split.val, normalizer, cfg.augment, cfg.seed))
    z_train = torch.from_numpy(theta.encode(y_train))
    z_val = torch.from_numpy(theta.encode(_theta_values(st, split.val, theta)))
    est_config = {"flow": cfg.flow, "embedding": cfg.embedding, "dropout": cfg.dropout, "embedding_dim": cfg.embedding_dim, "width": cfg.width,
                  "hidden_features": cfg.hidden_features, "num_transforms": cfg.num_transforms,
                  "flow_scale": cfg.flow_scale, "n_theta": len(theta.names), "input_shape": [normalizer.n_channels, *normalizer.input_shape],
                  "seed": cfg.seed}
    summariser, summaries, summary = None, None, {}
    flow_train, flow_val = (x_train if augmenter is None else train_inputs), x_val
    if cfg.embedding == "kernel":
        groups = _draw_ids(st, split.train, "embedding 'kernel' cross-fits over draws; use a store drawn from priors")
        summariser, summaries, summary["summariser"] = fit_summariser(x_train, z_train, x_val, z_val, groups, progress)
        est_config["embedding_dim"] = summaries.shape[1]
        with torch.inference_mode():
            flow_train, flow_val = summaries, summariser(x_val)
    estimators, history, bests = [], [], []
    member_minutes = None if cfg.max_minutes is None else cfg.max_minutes / cfg.ensemble
    for member in range(cfg.ensemble):
        estimators.append(build_estimator(member_config(est_config, member)))
        member_cfg = replace(cfg, seed=cfg.seed + member, max_minutes=member_minutes)
        label = f"member {member + 1}/{cfg.ensemble} " if cfg.ensemble > 1 else ""
        h, best, t_fit = _train_flow(estimators[-1], member_cfg, flow_train, z_train, flow_val, z_val, progress, label)
        history += [{"member": member, **row} for row in h]
        bests.append({**best, "fit_s": t_fit})
    best = {"epoch": [b["epoch"] for b in bests], "stopped": sorted({b["stopped"] for b in bests}),
            "val_nll": float(np.mean([b["val_nll"] for b in bests])), "fit_s": sum(b["fit_s"] for b in bests),
            "members": bests, "n_parameters": sum(count_parameters(e) for e in estimators)}
    run = PosteriorRun(out, estimators, est_config, normalizer, theta, split, cfg.to_dict(), {},
                       str(Path(store_path(st)).resolve()) if store_path(st) else None, __version__, history,
                       {"best": best, **summary}, _family(st, priors), summariser)
    run.summary["prior_sd"] = {n: float(s) for n, s in zip(theta.names, y_train.std(axis=0))}
    run.ood = fit_ood(run, x_train, z_train.numpy(), x_val, cfg.ood_false_alarm, cfg.n_samples, cfg.seed, summaries)
    from .calibration import calibration_metrics

    val = calibration_metrics(run, st, split.val, n_samples=cfg.n_samples, seed=cfg.seed)
    run.summary["val"] = val
    run.summary["warnings"] = coverage_warnings(val)
    if cfg.point:
        run.summary["point"] = point_baseline(st, split, out / POINT_DIR, cfg, progress)
    run.save(out)
    return run


def fit_summariser(x_train: torch.Tensor, z_train: torch.Tensor, x_val: torch.Tensor, z_val: torch.Tensor,
                   groups: Sequence, progress: bool = False, n_folds: int = SUMMARY_FOLDS):
    """The shared summary statistics of ``embedding="kernel"``: a pixel kernel ridge from the normalised
    image to every box coordinate (``gamma``, ``alpha`` chosen by validation MAE), and the training
    images' *cross-fitted* summaries (folds of whole draws, ``groups``).

    The posterior mean is the summary statistic of semi-automatic ABC (Fearnhead & Prangle, J. R. Stat.
    Soc. B 74, 419 (2012)); the kernel ridge is its regression estimate.  The flows learn ``p(theta |
    summary)`` from out-of-fold summaries, whose errors are those of the kernel on draws it has not
    seen, so the flows do not learn the kernel's near-exact fit of its own training images.

    Returns the :class:`~moirestm.learn.kernel.KernelSummary` module, the cross-fitted training
    summaries ``(n_train, d)`` and a record (hyper-parameters, MAEs in box units, time).
    """
    from .kernel import KERNEL_MAX_TRAIN, KernelSummary, PixelKernelRidge

    if len(x_train) > KERNEL_MAX_TRAIN:
        raise MoireSTMError(f"embedding 'kernel' fits an n x n kernel: {len(x_train)} training images exceed "
                            f"KERNEL_MAX_TRAIN = {KERNEL_MAX_TRAIN}; use embedding 'cnn' for a store this large")
    if len(set(groups)) < 2:
        raise MoireSTMError("embedding 'kernel' cross-fits its summaries over draws: the training part needs at "
                            "least 2 draws")
    t0 = time.perf_counter()
    flat = x_train.reshape(len(x_train), -1).numpy()
    kernel = PixelKernelRidge.fit(flat, z_train.numpy(), x_val.reshape(len(x_val), -1).numpy(), z_val.numpy())
    cross = kernel.cross_fitted(z_train.numpy(), groups, n_folds)
    record = {"gamma": kernel.gamma, "alpha": kernel.alpha, "val_mae_box": kernel.val_mae,
              "cross_fitted_mae_box": float(np.mean(np.abs(cross - z_train.numpy()))),
              "folds": min(n_folds, len(set(groups))), "fit_s": time.perf_counter() - t0}
    if progress:
        print(f"kernel summaries: gamma {kernel.gamma:.3g}, alpha {kernel.alpha:.1e}, MAE in prior-box units "
              f"{record['val_mae_box']:.3f} (validation draws) / {record['cross_fitted_mae_box']:.3f} (training "
              f"draws, cross-fitted over {record['folds']} folds), {record['fit_s']:.0f} s", flush=True)
    return KernelSummary(kernel), torch.from_numpy(cross.astype(np.float32)), record


def _theta_values(st, keys: Sequence[str], theta: Theta) -> np.ndarray:
    out = np.empty((len(keys), len(theta.names)))
    for i, k in enumerate(keys):
        p = st.params(k)
        for j, n in enumerate(theta.names):
            if n not in p:
                raise MoireSTMError(f"sample {k} has no parameter {n!r}: the store does not match the run's prior")
            out[i, j] = float(p[n])
    return out


def _train_flow(estimator, cfg: PosteriorConfig, x_train, z_train, x_val, z_val, progress: bool, label: str = ""):
    """Maximum-likelihood training (plus the balanced-NPE penalty when ``cfg.balance`` > 0) with early
    stopping on the validation draws' mean NLL; with
    ``max_minutes`` the cosine learning-rate schedule is re-fitted each epoch to the time left.
    ``x_train``: the training inputs, or a function of the epoch that returns them (fresh artefacts)."""
    from .train import cosine_lr

    opt = torch.optim.AdamW(estimator.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    t0 = time.perf_counter()
    history, best, bad = [], {"epoch": -1, "val_nll": float("inf")}, 0
    best_state = copy.deepcopy(estimator.state_dict())
    stopped, schedule, epoch_times = "epochs", cfg.epochs, []
    for epoch in range(cfg.epochs):
        t_epoch = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(cfg.lr, epoch, schedule)
        estimator.train()
        inputs = x_train(epoch) if callable(x_train) else x_train
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(inputs)))
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            z, x = z_train[idx], inputs[idx]
            if cfg.balance > 0:
                marginal = z[torch.roll(torch.arange(len(z)), 1)]  # (theta_j, x_i): pairs from the marginals
                log_q = -estimator.loss(torch.cat([z, marginal]), condition=torch.cat([x, x]))
                nll = -log_q[:len(z)].mean()
                loss = nll + cfg.balance * _balance_penalty(log_q[:len(z)], log_q[len(z):], z.shape[1])
            else:
                nll = loss = estimator.loss(z, condition=x).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), 5.0)
            opt.step()
            losses.append(float(nll.detach()))
        estimator.eval()
        with torch.no_grad():
            val = float(torch.cat([estimator.loss(z_val[i:i + 256], condition=x_val[i:i + 256])
                                   for i in range(0, len(x_val), 256)]).mean())
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_nll": float(np.mean(losses)), "val_nll": val, "time_s": elapsed,
                        "lr": opt.param_groups[0]["lr"]})
        if progress:
            print(f"{label}epoch {epoch}: train NLL {history[-1]['train_nll']:.3f}  val NLL {val:.3f}  ({elapsed:.0f} s)",
                  flush=True)
        if val < best["val_nll"]:
            best, bad = {"epoch": epoch, "val_nll": val, "time_s": elapsed}, 0
            best_state = copy.deepcopy(estimator.state_dict())
        else:
            bad += 1
        if bad >= cfg.patience:
            stopped = "early stopping"
            break
        if budget is not None and elapsed > budget:
            stopped = "time budget"
            break
        if budget is not None:  # fit the cosine into the time left at the median epoch cost
            epoch_times.append(time.perf_counter() - t_epoch)
            cost = float(np.median(epoch_times[-10:]))
            schedule = min(cfg.epochs, epoch + 1 + int(0.95 * (budget - elapsed) / cost))
            if epoch + 1 >= schedule:
                stopped = "schedule fitted to the time budget"
                break
    estimator.load_state_dict(best_state)
    estimator.eval()
    return history, {**best, "stopped": stopped}, time.perf_counter() - t0


def _balance_penalty(log_q_joint: torch.Tensor, log_q_marginal: torch.Tensor, n_theta: int) -> torch.Tensor:
    """Balancing penalty of balanced NPE (Delaunoy et al., NeurIPS 2022, arXiv:2208.13624; Delaunoy et al. 2023,
    arXiv:2304.10978): ``(E_joint[d] + E_marginal[d] - 1)^2`` with ``d = sigmoid(log q(theta|x) - log p(theta))``.

    With the uniform box prior ``p = 2^-n_theta`` on ``[-1, 1]^n_theta``, ``d`` is the classifier between
    joint pairs and pairs drawn from the marginals that ``q`` implies; a balanced classifier cannot be
    over-confident on average, which pushes the intervals towards over- rather than under-coverage.
    """
    log_prior = -n_theta * math.log(2.0)
    return (torch.sigmoid(log_q_joint - log_prior).mean() + torch.sigmoid(log_q_marginal - log_prior).mean() - 1) ** 2


# --------------------------------------------------------------------------- out-of-family score
#: principal components of the normalised input images in the consistency half of the OOD score
OOD_PCA_COMPONENTS = 32
#: ridge penalty of the quadratic emulator from the posterior median to those components
OOD_EMULATOR_RIDGE = 1.0
#: ridge penalty of the linear reader from the standardised components to the true box coordinates
OOD_READER_RIDGE = 1.0


def _mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.asarray(features, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, precision, d), 0.0))


def _quadratic_features(z: np.ndarray) -> np.ndarray:
    """``[1, z_i, z_i z_j (i <= j)]`` of box coordinates ``(n, d)``."""
    z = np.asarray(z, dtype=np.float64)
    i, j = np.triu_indices(z.shape[1])
    return np.concatenate([np.ones((len(z), 1)), z, z[:, i] * z[:, j]], axis=1)


def _ridge(features: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge weights ``(n_features, n_targets)``; the first (constant) feature is not penalised."""
    reg = penalty * np.eye(features.shape[1])
    reg[0, 0] = 0.0
    return np.linalg.solve(features.T @ features + reg, features.T @ targets)


def _pca_coords(ood: dict, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leading principal components ``(n, k)`` of normalised flat images and the reconstruction residual ``(n,)``."""
    centred = np.asarray(pixels, dtype=np.float64) - ood["pix_mean"]
    coords = centred @ ood["pix_components"].T
    return coords, np.maximum(np.sum(centred**2, axis=1) - np.sum(coords**2, axis=1), 0.0)


def _consistency(ood: dict, coords: np.ndarray, residual: np.ndarray, z_median: np.ndarray) -> np.ndarray:
    """Distance of a normalised image from what the training images look like at its posterior median.

    The image's leading principal components minus their quadratic emulation from the posterior
    median (Mahalanobis in the training residuals' covariance, per component), added in quadrature
    to the PCA reconstruction residual in units of its training mean: about 1.4 for a training
    image, large for noise, blur or a pattern the family does not produce at the inferred parameters.
    """
    misfit = coords - _quadratic_features(z_median) @ ood["emulator"]
    maha = _mahalanobis(misfit, ood["misfit_mean"], ood["misfit_precision"])
    return np.sqrt(maha**2 / coords.shape[1] + residual / ood["residual_ms"])


def _reader_features(ood: dict, coords: np.ndarray) -> np.ndarray:
    """``[1, standardised principal components]`` ``(n, 1 + k)``, the box reader's inputs."""
    return np.concatenate([np.ones((len(coords), 1)), coords / ood["coord_sd"]], axis=1)


def _box_reading(ood: dict, coords: np.ndarray) -> np.ndarray:
    """Unbounded linear reading ``(n, d)`` of the box coordinates from the standardised principal components."""
    return _reader_features(ood, coords) @ ood["reader"]


def _box_excess(ood: dict, coords: np.ndarray) -> np.ndarray:
    """How far beyond the prior box ``[-1, 1]`` the image's linear parameter reading lies, in units of
    that reading's error on the training draws (largest over the parameters; 0 inside the box).

    The flow cannot say that a parameter lies beyond its prior: its samples live in the box, and it
    puts an image from beyond the edge at the edge.  A linear reader fitted to the true parameters
    of the training draws extrapolates instead (a distance 4 % beyond a ±1 % prior reads at about 2.4).
    """
    excess = np.maximum(np.abs(_box_reading(ood, coords)) - 1.0, 0.0) / ood["reader_sd"]
    return excess.max(axis=1)


def ood_score(ood: dict, embeddings: np.ndarray, pixels: np.ndarray, z_median: np.ndarray) -> np.ndarray:
    """The largest of three out-of-family distances, each about 1 on a typical training image: the
    embedding Mahalanobis distance and the consistency distance (:func:`_consistency`) in units of
    their training medians, and one plus the prior-box excess (:func:`_box_excess`)."""
    emb = _mahalanobis(embeddings, ood["emb_mean"], ood["emb_precision"]) / ood["emb_scale"]
    coords, residual = _pca_coords(ood, pixels)
    consistency = _consistency(ood, coords, residual, z_median) / ood["consistency_scale"]
    return np.maximum(np.maximum(emb, consistency), 1.0 + _box_excess(ood, coords))


def fit_ood(run: PosteriorRun, x_train: torch.Tensor, z_train: np.ndarray, x_val: torch.Tensor, false_alarm: float,
            n_samples: int = N_SAMPLES, seed: int = 0, summaries: torch.Tensor | None = None) -> dict:
    """Out-of-family statistics of the training draws (inputs ``x_train``, true box coordinates
    ``z_train``) and the threshold at ``false_alarm`` on the validation draws.

    Three distances (:func:`ood_score`): Mahalanobis of the flow's CNN embedding (Ledoit-Wolf
    covariance); the consistency of the image with its own posterior (:func:`_consistency`: a
    posterior predictive check against a quadratic emulator of the training images' leading
    principal components); and how far beyond the prior box a linear reading of the parameters lies
    (:func:`_box_excess`).  An embedding can map a far-off input (a blank image) near the training
    cloud; noise or blur that the embedding ignores leaves the image unlike any training image at
    the inferred parameters; an image from just beyond a prior's edge looks like one at the edge.
    ``summaries``: the training images' cross-fitted summaries (``embedding="kernel"``), so that the
    training statistics see the summaries' errors on new draws rather than the kernel's fit of its own images.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    z, emb = run.sample_z(x_train, n_samples, seed, embeddings=True, summaries=summaries)
    z_median = np.median(z, axis=1)
    pixels = x_train.reshape(len(x_train), -1).numpy().astype(np.float64)
    pca = PCA(n_components=min(OOD_PCA_COMPONENTS, len(pixels) - 1, pixels.shape[1]), random_state=0).fit(pixels)
    ood = {"pix_mean": pca.mean_, "pix_components": pca.components_}
    coords, residual = _pca_coords(ood, pixels)
    features = _quadratic_features(z_median)
    emulator = _ridge(features, coords, OOD_EMULATOR_RIDGE)
    lw_emb, lw_misfit = LedoitWolf().fit(emb), LedoitWolf().fit(coords - features @ emulator)
    ood.update({"emb_mean": lw_emb.location_, "emb_precision": lw_emb.precision_,
                "emb_scale": float(np.median(_mahalanobis(emb, lw_emb.location_, lw_emb.precision_))) or 1.0,
                "emulator": emulator, "misfit_mean": lw_misfit.location_, "misfit_precision": lw_misfit.precision_,
                "residual_ms": float(max(np.mean(residual), 1e-12)),
                "coord_sd": np.maximum(coords.std(axis=0), 1e-12), "threshold": float("inf"),
                "false_alarm": float(false_alarm)})
    z_train = np.asarray(z_train, dtype=np.float64)
    ood["reader"] = _ridge(_reader_features(ood, coords), z_train, OOD_READER_RIDGE)
    ood["reader_sd"] = np.maximum((_box_reading(ood, coords) - z_train).std(axis=0), 1e-6)
    ood["consistency_scale"] = float(np.median(_consistency(ood, coords, residual, z_median))) or 1.0
    _, val = run.sample_and_score(x_val, n_samples, seed, ood)
    ood["threshold"] = conformal_quantile(val, 1 - false_alarm, at_most_max=True)
    return ood


# --------------------------------------------------------------------------- baselines and checks
def coverage_warnings(metrics: dict) -> list[str]:
    """One line naming every parameter whose 90 % coverage lies outside ``CALIBRATED_90`` (none if all inside)."""
    lo, hi = CALIBRATED_90
    outside = {name: (m["coverage"]["0.9"], m.get("coverage_se", {}).get("0.9"))
               for name, m in metrics["parameters"].items() if not lo <= m["coverage"]["0.9"] <= hi}
    if not outside:
        return []
    parts = ", ".join(f"{name} {c:.3f}{'' if se is None else f' ± {se:.3f}'} ({'over' if c > hi else 'under'}-dispersed)"
                      for name, (c, se) in outside.items())
    return [f"90 % interval coverage on {metrics['n']} held-out images outside {lo}-{hi}: {parts}"]


def conformal_quantile(scores: np.ndarray, level: float, at_most_max: bool = False) -> float:
    """Split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score, so that a new score exchangeable
    with these exceeds it with probability at most ``1 - level`` (inf if n is too small for that; with
    ``at_most_max``, the largest score instead: an out-of-family threshold must still flag the extremes)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(math.ceil((len(scores) + 1) * level))
    if k > len(scores):
        return float(scores[-1]) if at_most_max else float("inf")
    return float(scores[k - 1])


def point_baseline(st, split: Split, out: Path, cfg: PosteriorConfig, progress: bool) -> dict:
    """Today's network + kernel blend on the same split and artefact preset, with a normalised
    split-conformal interval.

    Conformity score ``|y - mu| / sigma`` (sigma: the run's calibrated sigma) on the validation
    draws; the interval ``mu +- q sigma`` is checked on the test draws.  The validation draws
    also set the blend weight and sigma calibration, so exchangeability is approximate.
    """
    from .train import train

    t0 = time.perf_counter()
    point = train(st, "cnn", split=split, out=out, overwrite=True, progress=progress,
                  targets=[DEFAULT_TARGET], seed=cfg.seed, max_minutes=cfg.point_max_minutes, augment=cfg.augment)
    fit_s = time.perf_counter() - t0
    mu_val, sd_val = point.predict(family_images(st, split.val, point.normalizer, cfg.augment, cfg.seed))
    y_val = np.array([float(st.params(k)[DEFAULT_TARGET]) for k in split.val])
    scores = np.abs(y_val - mu_val[:, 0]) / np.maximum(sd_val[:, 0], 1e-12)
    return {"run": str(out), "model": point.name, "fit_s": fit_s,
            "conformal": {str(level): conformal_quantile(scores, level) for level in COVERAGE_LEVELS}}




def predict_source(run: PosteriorRun | str | Path, source: Any, key: str | None = None,
                   n_samples: int | None = None, seed: int = 0) -> list[dict]:
    """Posterior summaries of a store's samples (all ok ones, or ``key``), or of a ``.npy``/PNG image,
    each with ``"source"``."""
    import os

    from .predict import load_image

    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and (path.suffix.lower() in (".h5", ".hdf5", ".zarr") or path.is_dir()):
        st = open_store(path)
        keys = [key] if key is not None else st.keys(status="ok")
        if key is not None and key not in st.keys(status="ok"):
            raise MoireSTMError(f"sample {key!r} is not an ok sample of the store")
        images, names = [st.image(k) for k in keys], keys
    else:
        image, name = load_image(source)
        images, names = [image], [name]
    samples, scores = run.samples(images, n_samples, seed)
    return [{"source": n, **summarise(s, run.names, float(sc), run.ood["threshold"])}
            for n, s, sc in zip(names, samples, scores)]


def is_posterior_run(path: str | Path) -> bool:
    """Whether ``path`` is a posterior run directory (or its ``posterior.pt``)."""
    path = Path(path)
    return (path / POSTERIOR_FILE).is_file() or (path.is_file() and path.name == POSTERIOR_FILE)


__all__ = ["PosteriorConfig", "PosteriorRun", "Theta", "infer", "predict_posterior", "summarise", "draw_split",
           "store_priors", "theta_of", "build_estimator", "fit_ood", "coverage_warnings", "conformal_quantile",
           "point_baseline", "predict_source", "is_posterior_run", "COVERAGE_LEVELS", "QUANTILES", "N_SAMPLES",
           "CALIBRATED_90"]
