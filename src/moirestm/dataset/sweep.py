"""Parameter sweeps: TOML definition, validation, and the plan of samples and tasks.

A sweep file (see docs/datasets.md)::

    name = "my-sweep"
    continuation = "descending"        # U-continuation order: "descending" | "ascending" | "none"
    chain_length = 10                  # optional: split each U chain into blocks of this many U values

    [fixed]                            # one value for every sample
    index = 5
    distance_nm = 0.335                # or "magic"
    [axes]                             # lists or {start, stop, step} (stop included) or {start, stop, num}
    hubbard_u_ev = { start = 0.0, stop = 6.0, step = 0.1 }
    filling = [-2.0, 0.0, 2.0]
    [interaction]                      # extra keyword arguments of meanfield.Interaction
    [solver]                           # extra keyword arguments of meanfield.solve
    [stm]                              # keyword arguments of observables.stm_map (enabled = false skips it)
    [ft]                               # keyword arguments of observables.ftldos.ft_ldos
    n_draws = 256                      # with [priors]: draws of the unknowns (scrambled Sobol, seed prior_seed)
    prior_seed = 0
    u_jitter = true                    # shift each draw's U values by its own fraction of the U step
    [priors]                           # parameter = prior (see moirestm.dataset.priors)
    dielectric = { dist = "uniform", low = 4.0, high = 10.0 }

Samples sharing everything but U, bias and broadening form one task: the U values are
solved in order, each warm-started from the previous solution, and every bias/broadening is
evaluated from each solution. ``chain_length`` splits long chains into blocks (each block starts
afresh at its first U), trading a few extra iterations for parallelism over many workers and for
finer-grained results when a run is interrupted; it is recorded in each sample's parameters.

With ``[priors]``, every draw is crossed with the U axis (and any other axis): one draw of one
combination is one task, so U-continuation chains keep their warm starts. Each sample records
``draw_id`` and the drawn values under their registry names; drawn bias/broadening replace those
lists for the draw's task, a drawn gate distance goes into the task's interaction.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import (DIELECTRIC_CONSTANT, FT_IMAGE_SIZE, INTERLAYER_DISTANCE_NM, LDOS_KGRID,
                         REFERENCE_INDEX, SCF_KGRID, TEMPERATURE_K)
from ..errors import MoireSTMError
from .priors import EXTRA_DRAWABLE, draw, parse_priors, resolve_distance
from .store import sample_key

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

#: Sweepable parameters and their defaults.
AXES = {
    "hubbard_u_ev": 0.0,
    "filling": 0.0,
    "mu_ev": None,
    "bias_ev": 0.0,
    "index": REFERENCE_INDEX,
    "distance_nm": INTERLAYER_DISTANCE_NM,
    "dielectric": DIELECTRIC_CONSTANT,
    "scf_kgrid": SCF_KGRID,
    "ldos_kgrid": LDOS_KGRID,
    "temperature_k": TEMPERATURE_K,
    "broadening_ev": 0.01,
}
INTEGER_AXES = ("index", "scf_kgrid", "ldos_kgrid")
#: Extra scalars accepted in [fixed].
FIXED_EXTRAS = {"start": "afm", "seed": 0}
CONTINUATIONS = ("descending", "ascending", "none")
TOP_LEVEL = {"name", "description", "continuation", "chain_length", "engine", "fixed", "axes",
             "interaction", "solver", "stm", "ft", "priors", "n_draws", "prior_seed", "u_jitter",
             "images_per_solve"}
#: Parameters that vary inside one task (not part of a chain's base).
PER_SAMPLE = ("hubbard_u_ev", "bias_ev", "broadening_ev")
#: Parameters of the LDOS alone (not of the self-consistency): with ``images_per_solve`` > 1 their priors
#: are drawn afresh for every image of a solve, from their own Sobol stream (seed ``prior_seed + 1``).
PER_IMAGE = ("bias_ev", "broadening_ev")


def solve_key(params: dict) -> str:
    """Key shared by the stored samples of one mean-field solve: their parameters without ``image_id`` and
    the per-image ones (``PER_IMAGE``), and without store bookkeeping (``key``, ``status``)."""
    return json.dumps({k: v for k, v in params.items() if k not in ("key", "status", "image_id", *PER_IMAGE)},
                      sort_keys=True, default=str)

#: Largest number of samples a sweep may define (guards against typos like step = 1e-6).
MAX_SAMPLES = 1_000_000

FT_DEFAULTS = {"size": FT_IMAGE_SIZE, "tiling": 3, "apodisation": "none", "remove_q0": True,
               "log_scale": False}
STM_DEFAULTS = {"enabled": True}

#: Priors shared by the built-in designs over the unknowns (ranges justified in docs/datasets.md).
SBI_PRIORS = {"distance_nm": {"around": "magic", "rel": 0.01},
              "dielectric": {"dist": "uniform", "low": 4.0, "high": 12.0},
              "temperature_k": {"dist": "loguniform", "low": 0.4, "high": 10.0}}

BUILTIN = {
    "demo": {
        "name": "demo",
        "description": "i = 5 (364 atoms, 6.01 deg) at its magic interlayer distance (flat central bands, "
                       "so U matters from ~2 eV), U = 0..6 eV in 1 eV steps at three fillings and three biases on "
                       "the converged k grids (SCF 6x6, LDOS 12x12: ~20 s per solve on 2 cores; the biases "
                       "of one solve come at once); laptop-sized run of the whole pipeline.",
        "continuation": "descending",
        "chain_length": 4,
        "fixed": {"index": 5, "distance_nm": "magic", "scf_kgrid": SCF_KGRID, "ldos_kgrid": LDOS_KGRID,
                  "broadening_ev": 0.02, "temperature_k": TEMPERATURE_K,
                  "dielectric": DIELECTRIC_CONSTANT, "start": "afm"},
        "axes": {"hubbard_u_ev": {"start": 0.0, "stop": 6.0, "step": 1.0},
                 "filling": [-2.0, 0.0, 1.0], "bias_ev": [-0.01, 0.0, 0.01]},
        "ft": {"size": 128},
        "stm": {"enabled": False},
    },
    "standard": {
        "name": "standard",
        "description": "i = 9 flat-band case (3.48 deg, 1084 atoms) at its magic interlayer distance; "
                       "U = 0..6 eV in 0.1 eV steps, several fillings and bias energies.",
        "continuation": "descending",
        "fixed": {"index": 9, "distance_nm": "magic", "scf_kgrid": SCF_KGRID, "ldos_kgrid": LDOS_KGRID,
                  "broadening_ev": 0.005,
                  "temperature_k": TEMPERATURE_K, "dielectric": DIELECTRIC_CONSTANT, "start": "afm"},
        "axes": {"hubbard_u_ev": {"start": 0.0, "stop": 6.0, "step": 0.1},
                 "filling": [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0],
                 "bias_ev": [-0.01, 0.0, 0.01]},
        "ft": {"size": 256},
        "stm": {"enabled": True},
    },
    "demo-sbi": {
        "name": "demo-sbi",
        "description": "i = 5 family over the unknowns of a measurement (priors justified in docs/datasets.md): "
                       "n_draws scrambled-Sobol draws of distance (+-1 % around the magic one), dielectric, "
                       "temperature and filling, each crossed with 3 jittered U values (0..6 eV) solved from "
                       "fresh starts (2 eV apart a warm start costs more than a fresh one); every solve gives "
                       "images_per_solve images at drawn broadening and bias (one LDOS diagonalisation); "
                       "40 draws x 3 U x 16 images = 1920 samples from 120 solves.",
        "continuation": "none",
        "fixed": {"index": 5, "scf_kgrid": SCF_KGRID, "ldos_kgrid": LDOS_KGRID, "start": "afm"},
        "axes": {"hubbard_u_ev": {"start": 1.0, "stop": 5.0, "step": 2.0}},
        "n_draws": 40, "prior_seed": 0, "u_jitter": True, "images_per_solve": 16,
        "priors": {**SBI_PRIORS,
                   "broadening_ev": {"dist": "loguniform", "low": 0.005, "high": 0.04},
                   "filling": {"dist": "uniform", "low": -2.2, "high": 1.2},
                   "bias_ev": {"dist": "uniform", "low": -0.02, "high": 0.02}},
        "ft": {"size": 128},
        "stm": {"enabled": False},
    },
    "standard-sbi": {
        "name": "standard-sbi",
        "description": "i = 9 flat-band family (1084 atoms) over the unknowns of a measurement, sized for a "
                       "cluster: 1024 draws x 31 jittered U values (0..6 eV) = 31 744 samples, 256 px images "
                       "with STM maps (cost in docs/datasets.md).",
        "continuation": "descending",
        "fixed": {"index": 9, "scf_kgrid": SCF_KGRID, "ldos_kgrid": LDOS_KGRID, "start": "afm"},
        "axes": {"hubbard_u_ev": {"start": 0.0, "stop": 6.0, "step": 0.2}},
        "n_draws": 1024, "prior_seed": 0, "u_jitter": True,
        "priors": {**SBI_PRIORS,
                   "broadening_ev": {"dist": "loguniform", "low": 0.002, "high": 0.02},
                   "filling": {"dist": "uniform", "low": -3.2, "high": 3.2},
                   "bias_ev": {"dist": "uniform", "low": -0.01, "high": 0.01}},
        "ft": {"size": 256},
        "stm": {"enabled": True},
    },
}


def _axis_values(name: str, spec) -> list:
    if isinstance(spec, dict):
        unknown = set(spec) - {"start", "stop", "step", "num"}
        if unknown or not {"start", "stop"} <= set(spec) or ("step" in spec) == ("num" in spec):
            raise MoireSTMError(
                f"axis {name!r}: a range needs start, stop and exactly one of step or num, got {spec}")
        try:
            start, stop = float(spec["start"]), float(spec["stop"])
            if "step" in spec:
                step = float(spec["step"])
                if not step > 0:
                    raise MoireSTMError(f"axis {name!r}: step must be positive, got {spec['step']}")
                count = math.floor((stop - start) / step + 1e-9) + 1
                if count > MAX_SAMPLES:
                    raise MoireSTMError(f"axis {name!r}: {count} values is too many")
                values = [start + i * step for i in range(max(count, 0))]
            else:
                num = spec["num"]
                if isinstance(num, bool) or not float(num).is_integer():
                    raise MoireSTMError(f"axis {name!r}: num must be an integer, got {num!r}")
                values = list(np.linspace(start, stop, int(num))) if stop >= start else []
        except (TypeError, ValueError) as exc:
            raise MoireSTMError(f"axis {name!r}: range bounds must be numbers ({exc})") from None
        values = [round(v, 10) for v in values]
        if not values:
            raise MoireSTMError(f"axis {name!r}: empty range {spec} (stop below start?)")
    elif isinstance(spec, list):
        values = list(spec)
        if not values:
            raise MoireSTMError(f"axis {name!r}: empty list of values")
    else:
        values = [spec]
    return [_check_value(name, v) for v in values]


def _check_value(name: str, value):
    if name == "distance_nm" and value == "magic":
        return value
    if name == "start":
        if not isinstance(value, str):
            raise MoireSTMError(f"start must be a string such as 'afm', got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MoireSTMError(f"{name}: values must be numbers, got {value!r}")
    if not math.isfinite(value):
        raise MoireSTMError(f"{name}: values must be finite, got {value!r}")
    if name in INTEGER_AXES or name == "seed":
        if not float(value).is_integer():
            raise MoireSTMError(f"{name}: values must be integers, got {value!r}")
        return int(value)
    return float(value)


@dataclass
class Sweep:
    """A validated sweep definition.

    Attributes
    ----------
    name, description : labels.
    values : every parameter name -> list of values (fixed ones have one value).
    continuation : U-continuation order inside a task.
    chain_length : U values per task (None: the whole chain in one task).
    engine : "meanfield" or "module:function" computing one task.
    interaction, solver, stm, ft : option tables passed to the pipeline stages.
    priors : drawn parameter -> :class:`~moirestm.dataset.priors.Prior` (empty: a plain grid).
    n_draws, prior_seed, u_jitter : the Sobol design over the priors.
    images_per_solve : images drawn per solve over the priors of ``PER_IMAGE`` (1: one per draw).
    """

    name: str
    values: dict
    description: str = ""
    continuation: str = "descending"
    chain_length: int | None = None
    engine: str = "meanfield"
    interaction: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)
    stm: dict = field(default_factory=dict)
    ft: dict = field(default_factory=dict)
    definition: dict = field(default_factory=dict)
    priors: dict = field(default_factory=dict)
    n_draws: int = 0
    prior_seed: int = 0
    u_jitter: bool = False
    images_per_solve: int = 1

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, spec: dict) -> "Sweep":
        """Validate a sweep given as a dictionary (the parsed TOML)."""
        if not isinstance(spec, dict):
            raise MoireSTMError("a sweep definition must be a TOML table")
        unknown = set(spec) - TOP_LEVEL
        if unknown:
            raise MoireSTMError(f"unknown sweep entr{'y' if len(unknown) == 1 else 'ies'} "
                                f"{sorted(unknown)}; known: {sorted(TOP_LEVEL)}")
        fixed, axes = dict(spec.get("fixed", {})), dict(spec.get("axes", {}))
        for table in (fixed, axes):  # legacy spelling: one grid for the self-consistency and the LDOS
            if "kgrid" in table:
                table["scf_kgrid"] = table.pop("kgrid")
                if "ldos_kgrid" not in fixed and "ldos_kgrid" not in axes:
                    if len(_axis_values("scf_kgrid", table["scf_kgrid"])) > 1:
                        raise MoireSTMError("a legacy kgrid axis needs ldos_kgrid given explicitly")
                    fixed["ldos_kgrid"] = table["scf_kgrid"]
        for table, names, allowed in (("axes", axes, set(AXES)),
                                      ("fixed", fixed, set(AXES) | set(FIXED_EXTRAS))):
            bad = set(names) - allowed
            if bad:
                raise MoireSTMError(f"unknown {table} name(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        both = set(fixed) & set(axes)
        if both:
            raise MoireSTMError(f"{sorted(both)} given both in [fixed] and [axes]")
        if not axes:
            raise MoireSTMError("a sweep needs at least one axis in [axes]")
        merged = {**fixed, **axes}
        if "mu_ev" in merged and "filling" in merged:
            raise MoireSTMError("give either filling or mu_ev, not both")
        priors, design = {}, {"n_draws": 0, "prior_seed": 0, "u_jitter": False}
        if "priors" in spec:
            priors = parse_priors(spec["priors"], spec.get("n_draws"), set(merged),
                                  (set(AXES) | set(EXTRA_DRAWABLE)) - {"hubbard_u_ev"})
            seed = spec.get("prior_seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise MoireSTMError(f"prior_seed must be a non-negative integer, got {seed!r}")
            jitter = spec.get("u_jitter", False)
            if not isinstance(jitter, bool):
                raise MoireSTMError(f"u_jitter must be true or false, got {jitter!r}")
            if "gate_distance_nm" in priors and "gate_distance_nm" in spec.get("interaction", {}):
                raise MoireSTMError("prior gate_distance_nm: also given in [interaction]; give it once")
            images = spec.get("images_per_solve", 1)
            if isinstance(images, bool) or not isinstance(images, int) or images < 1:
                raise MoireSTMError(f"images_per_solve must be a positive integer, got {images!r}")
            if images > 1 and not set(PER_IMAGE) & set(priors):
                raise MoireSTMError(f"images_per_solve = {images} needs a prior on {' or '.join(PER_IMAGE)}")
            design = {"n_draws": spec["n_draws"], "prior_seed": seed, "u_jitter": jitter,
                      "images_per_solve": images}
        else:
            for name in ("n_draws", "prior_seed", "u_jitter", "images_per_solve"):
                if name in spec:
                    raise MoireSTMError(f"{name} needs a [priors] table")
        drawn = set(priors) | ({"distance_nm"} if "pressure_gpa" in priors else set())
        if "mu_ev" in priors:
            drawn.add("filling")
        values = {}
        for name, default in {**AXES, **FIXED_EXTRAS}.items():
            if name in drawn:
                continue
            if name == "filling" and "mu_ev" in merged:
                continue
            if name == "mu_ev" and "mu_ev" not in merged:
                continue
            spec_value = merged.get(name, default)
            if name in fixed and isinstance(spec_value, (list, dict)):
                raise MoireSTMError(f"[fixed] {name} must be a single value; put lists in [axes]")
            values[name] = _axis_values(name, spec_value)
        continuation = spec.get("continuation", "descending")
        if continuation not in CONTINUATIONS:
            raise MoireSTMError(f"continuation must be one of {CONTINUATIONS}, got {continuation!r}")
        chain_length = spec.get("chain_length")
        if chain_length is not None and (isinstance(chain_length, bool) or not isinstance(chain_length, int)
                                         or chain_length < 1):
            raise MoireSTMError(f"chain_length must be a positive integer, got {chain_length!r}")
        engine = spec.get("engine", "meanfield")
        if not isinstance(engine, str) or (engine != "meanfield" and ":" not in engine):
            raise MoireSTMError(f"engine must be 'meanfield' or 'module:function', got {engine!r}")
        tables = {}
        for name in ("interaction", "solver", "stm", "ft"):
            table = spec.get(name, {})
            if not isinstance(table, dict):
                raise MoireSTMError(f"[{name}] must be a table of options")
            tables[name] = dict(table)
        for forbidden in ("hubbard_u_ev", "dielectric"):
            if forbidden in tables["interaction"]:
                raise MoireSTMError(f"set {forbidden} in [fixed] or [axes], not in [interaction]")
        several = [n for n in PER_IMAGE if len(values.get(n, [])) > 1]
        if design.get("images_per_solve", 1) > 1 and several:
            raise MoireSTMError(f"images_per_solve draws {', '.join(PER_IMAGE)} per image; give {several[0]} "
                                f"one value or a prior, not an axis")
        if design["u_jitter"] and len(values["hubbard_u_ev"]) < 2:
            raise MoireSTMError("u_jitter needs a hubbard_u_ev axis of at least two values")
        sweep = cls(name=str(spec.get("name", "sweep")), values=values, priors=priors, **design,
                    description=str(spec.get("description", "")), continuation=continuation,
                    chain_length=chain_length, engine=engine, interaction=tables["interaction"], solver=tables["solver"],
                    stm={**STM_DEFAULTS, **tables["stm"]}, ft={**FT_DEFAULTS, **tables["ft"]},
                    definition=copy.deepcopy(spec))
        if sweep.n_samples > MAX_SAMPLES:
            raise MoireSTMError(f"sweep defines {sweep.n_samples} samples (limit {MAX_SAMPLES})")
        return sweep

    @classmethod
    def load(cls, source) -> "Sweep":
        """Sweep from a TOML file path or a built-in name (``BUILTIN``: demo, standard, demo-sbi, standard-sbi)."""
        if isinstance(source, str) and source in BUILTIN:
            return cls.from_dict(copy.deepcopy(BUILTIN[source]))
        path = Path(source)
        if not path.is_file():
            raise MoireSTMError(f"sweep file not found: {source} (built-in sweeps: {sorted(BUILTIN)})")
        try:
            spec = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise MoireSTMError(f"{path}: not a valid TOML file ({exc})") from None
        return cls.from_dict(spec)

    def to_toml(self) -> str:
        """The definition as TOML text."""
        import tomli_w

        return tomli_w.dumps(self.definition)

    # ----------------------------------------------------------------- plan
    @property
    def n_samples(self) -> int:
        return int(np.prod([len(v) for v in self.values.values()])) * max(1, self.n_draws) * self.images_per_solve

    @property
    def axes(self) -> dict:
        """Parameters with more than one value."""
        return {k: v for k, v in self.values.items() if len(v) > 1}

    def draws(self) -> list[dict]:
        """The design's draws ``{name: value}`` (``"u_jitter"`` too when jittered); ``[{}]`` without priors."""
        if not self.priors:
            return [{}]
        return draw(self._solve_priors(), self.n_draws, self.prior_seed, self.u_jitter)

    def _solve_priors(self) -> dict:
        """The priors drawn once per draw (all of them unless images are drawn per solve)."""
        if self.images_per_solve == 1:
            return self.priors
        return {n: p for n, p in self.priors.items() if n not in PER_IMAGE}

    def image_draws(self) -> list[dict]:
        """With ``images_per_solve`` > 1: the ``PER_IMAGE`` values of every image, in task order
        (draw, U in chain order, image); ``[]`` otherwise."""
        if self.images_per_solve == 1:
            return []
        priors = {n: p for n, p in self.priors.items() if n in PER_IMAGE}
        n = self.n_draws * len(self.values["hubbard_u_ev"]) * self.images_per_solve
        return draw(priors, n, self.prior_seed + 1)

    def prior_records(self) -> dict:
        """The store metadata of the design: ``priors`` (name -> record), ``n_draws``, ``prior_seed``, ``u_jitter``."""
        if not self.priors:
            return {}
        magic = None
        if any(p.around for p in self.priors.values()):
            index = self.priors["index"].values if "index" in self.priors else self.values["index"]
            magic = [resolve_magic_distance(i)[0] for i in index]
        return {"priors": {n: p.record(magic) for n, p in self.priors.items()}, "n_draws": self.n_draws,
                "prior_seed": self.prior_seed, "u_jitter": self.u_jitter,
                "images_per_solve": self.images_per_solve}

    def _u_values(self, jitter: float | None) -> list[float]:
        """The U axis in chain order, shifted by ``jitter`` U steps (reflected into the valid range)."""
        from ..parameters import parameter

        u_values = sorted(self.values["hubbard_u_ev"])
        if jitter is not None:
            p, step = parameter("hubbard_u_ev"), float(np.min(np.diff(u_values)))
            shifted = [u + jitter * step for u in u_values]
            shifted = [2 * p.low - u if u < p.low else 2 * p.high - u if u > p.high else u for u in shifted]
            u_values = sorted(round(u, 9) for u in shifted)
        return u_values[::-1] if self.continuation == "descending" else u_values

    def _drawn_base(self, base: dict, drawn: dict) -> dict:
        """``base`` with the draw's chain-level values (distance or pressure resolved to distance_nm)."""
        base = dict(base)
        for name, value in drawn.items():
            if name not in PER_SAMPLE and name not in ("distance_nm", "pressure_gpa", "u_jitter"):
                base[name] = value
        for name in ("distance_nm", "pressure_gpa"):
            if name in drawn:
                base.update(resolve_distance(self.priors[name], drawn[name], base["index"],
                                             lambda i: resolve_magic_distance(i)[0]))
        return base

    def tasks(self) -> list[dict]:
        """Independent units of work; each lists its samples (params and key)."""
        chain_names = [n for n in self.values if n not in PER_SAMPLE]
        tasks = []
        images = iter(self.image_draws())
        for draw_id, drawn in enumerate(self.draws()):
            u_values = self._u_values(drawn.get("u_jitter"))
            biases = [drawn["bias_ev"]] if "bias_ev" in drawn else list(self.values.get("bias_ev", []))
            broadenings = ([drawn["broadening_ev"]] if "broadening_ev" in drawn
                           else list(self.values.get("broadening_ev", [])))
            interaction = dict(self.interaction)
            if "gate_distance_nm" in drawn:
                interaction["gate_distance_nm"] = drawn["gate_distance_nm"]
            for combo in itertools.product(*(self.values[n] for n in chain_names)):
                base = dict(zip(chain_names, combo))
                if self.priors:
                    base = {"draw_id": draw_id, **self._drawn_base(base, drawn)}
                    if "u_jitter" in drawn:
                        base["u_jitter"] = drawn["u_jitter"]
                if base.get("distance_nm") == "magic":
                    base["distance_nm"], base["distance_source"] = resolve_magic_distance(base["index"])
                block = 1 if self.continuation == "none" else (self.chain_length or len(u_values))
                for i in range(0, len(u_values), block):
                    chain = u_values[i:i + block]
                    samples = []
                    for u in chain:
                        if self.images_per_solve > 1:
                            for image_id in range(self.images_per_solve):
                                image = {"bias_ev": biases[:1], "broadening_ev": broadenings[:1],
                                         **{n: [v] for n, v in next(images).items()}}
                                params = self.sample_params(base, u, image["bias_ev"][0],
                                                            image["broadening_ev"][0], interaction)
                                params["image_id"] = image_id
                                samples.append({"key": sample_key(params), "params": params})
                            continue
                        for br in broadenings:
                            for bias in biases:
                                params = self.sample_params(base, u, bias, br, interaction)
                                samples.append({"key": sample_key(params), "params": params})
                    tasks.append({"base": base, "u_values": list(chain),
                                  "bias_ev": sorted({s["params"]["bias_ev"] for s in samples}),
                                  "broadening_ev": sorted({s["params"]["broadening_ev"] for s in samples}), "continuation": self.continuation,
                                  "engine": self.engine, "interaction": interaction, "solver": self.solver,
                                  "stm": self.stm, "ft": self.ft, "samples": samples})
        return tasks

    def sample_params(self, base: dict, u: float, bias: float, broadening: float,
                      interaction: dict | None = None) -> dict:
        """Every parameter of one sample (the hash of this dict is its key)."""
        params = {**base, "hubbard_u_ev": u, "bias_ev": bias, "broadening_ev": broadening,
                  "continuation": self.continuation, "engine": self.engine,
                  "interaction": self.interaction if interaction is None else interaction,
                  "solver": self.solver, "stm": self.stm, "ft": self.ft}
        if self.chain_length is not None and self.continuation != "none":
            params["chain_length"] = self.chain_length  # absent by default, so older stores keep their keys
        return params

    def summary(self) -> dict:
        """Name, sample count and axes."""
        return {"name": self.name, "description": self.description, "n_samples": self.n_samples,
                "axes": {k: [v[0], v[-1], len(v)] for k, v in self.axes.items()},
                "fixed": {k: v[0] for k, v in self.values.items() if len(v) == 1},
                "continuation": self.continuation, "chain_length": self.chain_length, "engine": self.engine,
                **({"priors": {n: dict(p.spec) for n, p in self.priors.items()}, "n_draws": self.n_draws,
                    "prior_seed": self.prior_seed, "u_jitter": self.u_jitter,
                    "images_per_solve": self.images_per_solve} if self.priors else {})}


def magic_cache_path() -> Path:
    """JSON cache of magic distances: ``$MOIRESTM_CACHE`` or ``$XDG_CACHE_HOME/moirestm/magic_distance.json``."""
    if os.environ.get("MOIRESTM_CACHE"):
        return Path(os.environ["MOIRESTM_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moirestm" / "magic_distance.json"


@functools.lru_cache(maxsize=None)
def resolve_magic_distance(index: int) -> tuple[float, str]:
    """Magic interlayer distance of ``index`` (nm, rounded to 1e-6 so sample keys are stable) and its source.

    The search (about a minute for i = 9) is cached on disk per index and package version, so resumed
    and repeated sweeps do not redo it; a damaged cache is ignored and rewritten.
    """
    from .. import __version__
    from ..hamiltonian.magic import magic_distance

    cache_file = magic_cache_path()
    key = f"{__version__}:{int(index)}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if isinstance(cache.get(key), (int, float)):
        return float(cache[key]), "magic_distance"
    distance = round(float(magic_distance(index).distance_nm), 6)
    cache[key] = distance
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # an unwritable cache only costs the search next time
    return distance, "magic_distance"
