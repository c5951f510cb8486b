"""Priors over the unknowns of a measurement, drawn by scrambled Sobol sequences.

A sweep's ``[priors]`` table (see docs/datasets.md) gives each drawn parameter, by its registry
name, one of::

    dielectric    = { dist = "uniform", low = 4.0, high = 10.0 }
    broadening_ev = { dist = "loguniform", low = 0.002, high = 0.03 }
    filling       = { dist = "normal", mean = 0.0, sd = 0.1, low = -0.3, high = 0.3 }   # truncated
    index         = [5, 6]                              # or { dist = "choice", values = [5, 6] }
    distance_nm   = { around = "magic", rel = 0.01 }    # uniform within +-1 % of the magic distance
    pressure_gpa  = { dist = "uniform", low = 0.0, high = 0.4, d0_nm = "magic" }   # -> distance_nm

``n_draws`` draws are the first points of a scrambled Sobol sequence (``scipy.stats.qmc.Sobol``,
seed ``prior_seed``), one dimension per prior (plus one for the U jitter), mapped through each
prior's inverse CDF.  A pressure is turned into ``distance_nm`` by the graphite c-axis equation
of state (:mod:`moirestm.lattice.pressure`) from ``d0_nm`` (the ambient 0.335 nm by default, or
the magic distance of the drawn index).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import MoireSTMError
from ..parameters import parameter

DISTRIBUTIONS = ("uniform", "loguniform", "normal", "choice")
#: Parameters a prior may draw beyond the sweep axes (they go into ``[interaction]`` / distance).
EXTRA_DRAWABLE = ("pressure_gpa", "gate_distance_nm")
#: Drawn floats are rounded to this many significant digits (stable sample keys).
DRAW_DIGITS = 9
_KEYS = {"uniform": {"low", "high"}, "loguniform": {"low", "high"},
         "normal": {"mean", "sd", "low", "high"}, "choice": {"values"}}


def _number(name: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MoireSTMError(f"prior {name}: {key} must be a finite number, got {value!r}")
    return float(value)


def _round(value: float) -> float:
    return float(f"{value:.{DRAW_DIGITS}g}")


@dataclass(frozen=True)
class Prior:
    """One parameter's prior: ``dist`` with its bounds (``around="magic"``: ``low``/``high`` relative)."""

    name: str
    dist: str
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    sd: float | None = None
    values: tuple = ()
    around: str = ""
    d0_nm: float | str | None = None
    spec: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, spec) -> "Prior":
        """Validate one ``[priors]`` entry through the parameter registry (one-line errors naming ``name``)."""
        where = f"prior {name}"
        param = parameter(name)
        if isinstance(spec, list):
            spec = {"dist": "choice", "values": spec}
        if not isinstance(spec, dict):
            raise MoireSTMError(f"{where}: give a table such as {{ dist = \"uniform\", low = .., high = .. }} "
                                f"or a list of choices, got {spec!r}")
        spec = dict(spec)
        if "around" in spec:
            if name != "distance_nm" or spec["around"] != "magic":
                raise MoireSTMError(f"{where}: only distance_nm may be drawn around = \"magic\"")
            unknown = set(spec) - {"around", "rel", "dist"}
            if unknown or spec.get("dist", "uniform") != "uniform" or "rel" not in spec:
                raise MoireSTMError(f"{where}: around = \"magic\" takes rel (uniform within +-rel), got {spec}")
            rel = _number(name, "rel", spec["rel"])
            if not 0 < rel < 0.5:
                raise MoireSTMError(f"{where}: rel must lie in (0, 0.5), got {rel!r}")
            return cls(name, "uniform", low=-rel, high=rel, around="magic", spec=spec)
        dist = spec.get("dist")
        if dist not in DISTRIBUTIONS:
            raise MoireSTMError(f"{where}: unknown distribution {dist!r}; choose one of {', '.join(DISTRIBUTIONS)}")
        allowed = _KEYS[dist] | {"dist"} | ({"d0_nm"} if name == "pressure_gpa" else set())
        given = set(spec) - {"dist"}
        if given - allowed or not (_KEYS[dist] <= given):
            raise MoireSTMError(f"{where}: a {dist} prior takes {', '.join(sorted(_KEYS[dist]))}, got {sorted(given)}")
        d0 = spec.get("d0_nm")
        if d0 is not None and d0 != "magic":
            parameter("distance_nm").validate(d0, f"{where} d0_nm")
        if dist == "choice":
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise MoireSTMError(f"{where}: choice needs a non-empty list of values")
            values = tuple(param.validate(v, where) for v in values)
            if len(set(values)) != len(values):
                raise MoireSTMError(f"{where}: choice values repeat: {list(values)}")
            return cls(name, dist, values=values, d0_nm=d0, spec=spec)
        if param.kind != "float":
            raise MoireSTMError(f"{where}: {name} is a {param.kind} parameter; draw it from a choice list")
        low, high = _number(name, "low", spec["low"]), _number(name, "high", spec["high"])
        if not low < high:
            raise MoireSTMError(f"{where}: low must be below high, got low {low:g} >= high {high:g}")
        param.check_range(low, high, where)
        mean = sd = None
        if dist == "loguniform" and low <= 0:
            raise MoireSTMError(f"{where}: a loguniform prior needs low > 0, got {low:g}")
        if dist == "normal":
            mean, sd = _number(name, "mean", spec["mean"]), _number(name, "sd", spec["sd"])
            if not sd > 0:
                raise MoireSTMError(f"{where}: sd must be positive, got {sd:g}")
            if not low <= mean <= high:
                raise MoireSTMError(f"{where}: mean {mean:g} lies outside [low, high] = [{low:g}, {high:g}]")
        return cls(name, dist, low=low, high=high, mean=mean, sd=sd, d0_nm=d0, spec=spec)

    def transform(self, u: np.ndarray) -> list:
        """Values at unit-cube points ``u`` (inverse CDF; a choice takes the ``floor(u n)``-th value)."""
        u = np.clip(np.asarray(u, dtype=float), 0.0, np.nextafter(1.0, 0.0))
        if self.dist == "choice":
            return [self.values[int(i)] for i in np.floor(u * len(self.values))]
        if self.dist == "uniform":
            x = self.low + u * (self.high - self.low)
        elif self.dist == "loguniform":
            x = np.exp(np.log(self.low) + u * (np.log(self.high) - np.log(self.low)))
        else:
            from scipy.stats import truncnorm

            a, b = (self.low - self.mean) / self.sd, (self.high - self.mean) / self.sd
            x = truncnorm.ppf(u, a, b, loc=self.mean, scale=self.sd)
        return [_round(v) for v in np.clip(x, self.low, self.high)]

    def record(self, magic_nm: list | None = None) -> dict:
        """Plain-data description stored in the store's metadata (``sweep_params["priors"]``).

        ``magic_nm``: the magic distances of the sweep's indices, which turn a relative distance
        prior into absolute ``low``/``high`` in nm (``rel`` keeps the relative width).
        """
        out = {"dist": self.dist}
        if self.dist == "choice":
            out["values"] = list(self.values)
        else:
            out.update(low=self.low, high=self.high)
            if self.dist == "normal":
                out.update(mean=self.mean, sd=self.sd)
        if self.around:
            out.update(around=self.around, rel=self.high, low=_round(min(magic_nm) * (1 - self.high)),
                       high=_round(max(magic_nm) * (1 + self.high)))
        if self.d0_nm is not None:
            out["d0_nm"] = self.d0_nm
        return out


def parse_priors(table, n_draws, fixed_or_axes: set, drawable: set) -> dict[str, Prior]:
    """Validate a ``[priors]`` table against the sweep's other names; ``{name: Prior}`` in table order."""
    if not isinstance(table, dict) or not table:
        raise MoireSTMError("[priors] must be a table of parameter = prior entries")
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise MoireSTMError(f"n_draws must be a positive integer with [priors], got {n_draws!r}")
    priors = {}
    for name, spec in table.items():
        if name == "hubbard_u_ev":
            raise MoireSTMError("prior hubbard_u_ev: U is the axis of the continuation chains; "
                                "set u_jitter = true to vary it per draw")
        if name not in drawable:
            raise MoireSTMError(f"prior {name}: not a sweep parameter that can be drawn; "
                                f"drawable: {', '.join(sorted(drawable))}")
        if name in fixed_or_axes:
            raise MoireSTMError(f"prior {name}: {name} is also given in [fixed] or [axes]; give it once")
        priors[name] = Prior.parse(name, spec)
    if "pressure_gpa" in priors and ("distance_nm" in priors or "distance_nm" in fixed_or_axes):
        raise MoireSTMError("prior pressure_gpa sets distance_nm; do not give distance_nm as well")
    if "mu_ev" in priors and "filling" in priors | fixed_or_axes:
        raise MoireSTMError("prior mu_ev: give either filling or mu_ev, not both")
    return priors


def sobol_points(n: int, dims: int, seed: int) -> np.ndarray:
    """First ``n`` points of a scrambled Sobol sequence in ``dims`` dimensions (``(n, dims)``)."""
    from scipy.stats import qmc

    if dims == 0:
        return np.empty((n, 0))
    with warnings.catch_warnings():  # balance is best at powers of two; any n is still low-discrepancy
        warnings.simplefilter("ignore", UserWarning)
        return qmc.Sobol(d=dims, scramble=True, seed=seed).random(n)


def draw(priors: dict[str, Prior], n_draws: int, seed: int, jitter: bool = False) -> list[dict]:
    """``n_draws`` draws ``{name: value}`` (plus ``"u_jitter"`` in [-0.5, 0.5) when ``jitter``)."""
    points = sobol_points(n_draws, len(priors) + int(jitter), seed)
    columns = {name: prior.transform(points[:, i]) for i, (name, prior) in enumerate(priors.items())}
    draws = [{name: columns[name][j] for name in priors} for j in range(n_draws)]
    if jitter:
        for j, d in enumerate(draws):
            d["u_jitter"] = _round(points[j, -1] - 0.5)
    return draws


def resolve_distance(prior: Prior, value, index: int, magic) -> dict:
    """The base entries a drawn distance or pressure sets (``magic(index)`` gives the magic distance)."""
    from ..lattice.pressure import distance_for_pressure

    if prior.name == "distance_nm":
        if prior.around:
            d_magic = magic(index)
            return {"distance_nm": _round(d_magic * (1.0 + value)), "distance_rel": value,
                    "distance_source": "magic_distance"}
        return {"distance_nm": value, "distance_source": "prior"}
    d0 = magic(index) if prior.d0_nm == "magic" else prior.d0_nm
    kwargs = {} if d0 is None else {"d0_nm": float(d0)}
    return {"pressure_gpa": value, "distance_nm": _round(distance_for_pressure(value, **kwargs)),
            "distance_source": "pressure_eos" + ("_from_magic" if prior.d0_nm == "magic" else "")}
