"""Toy stores with priors (draws of nuisance parameters crossed with U), for testing the posterior.

Not physics: an FT-like image of Gaussian peaks (six Bragg peaks, six moiré peaks, six
satellites) whose moiré and satellite amplitudes depend on an effective coupling
``U * TOY_EPS_REF / dielectric`` (so U and the screening trade off, as in the real problem),
whose moiré period scales with ``distance_nm / TOY_DISTANCE_NM`` and whose peak width grows
with ``broadening_ev``; plus non-negative noise.  Samples carry ``draw_id`` and the drawn
values under their registry names, and the store's sweep metadata holds ``priors``,
``n_draws`` and ``prior_seed``, as the sweep priors contract (issue 16) specifies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..dataset.priors import sobol_points

#: reference screening and interlayer distance of the toy (not physical constants)
TOY_EPS_REF = 10.0
TOY_DISTANCE_NM = 0.335

#: default toy priors, in the store metadata format
TOY_PRIORS = {"distance_nm": {"dist": "uniform", "low": 0.330, "high": 0.340},
              "dielectric": {"dist": "uniform", "low": 6.0, "high": 14.0},
              "broadening_ev": {"dist": "loguniform", "low": 0.005, "high": 0.03}}


def toy_ft_image(u_ev: float, distance_nm: float, dielectric: float, broadening_ev: float, size: int = 32,
                 noise: float = 0.02, rng: np.random.Generator | None = None) -> np.ndarray:
    """Toy FT magnitude image ``(size, size)`` (float32, non-negative)."""
    rng = rng or np.random.default_rng(0)
    k = np.linspace(-1.2, 1.2, size)
    kx, ky = np.meshgrid(k, k)
    u_eff = u_ev * TOY_EPS_REF / dielectric
    q = 0.45 * TOY_DISTANCE_NM / distance_nm
    width = 0.04 + 2.0 * broadening_ev
    peaks = []
    for j in range(6):
        a = j * math.pi / 3
        g = np.array([math.cos(a), math.sin(a)])
        qv = q * np.array([math.cos(a + math.pi / 6), math.sin(a + math.pi / 6)])
        peaks += [(g, 1.0), (qv, 0.3 + 0.15 * u_eff), (g * 0.55 + qv, 0.25 * math.tanh(u_eff / 2))]
    image = np.zeros_like(kx)
    for (px, py), amp in peaks:
        image += amp * np.exp(-((kx - px) ** 2 + (ky - py) ** 2) / (2 * width**2))
    image += np.abs(rng.normal(0, noise, image.shape))
    return image.astype(np.float32)


def _draws(priors: dict, n_draws: int, seed: int) -> dict[str, np.ndarray]:
    """Scrambled-Sobol draws of uniform / loguniform priors."""
    names = sorted(priors)
    unit = sobol_points(n_draws, len(names), seed)
    out = {}
    for j, name in enumerate(names):
        p = priors[name]
        lo, hi = float(p["low"]), float(p["high"])
        if p["dist"] == "loguniform":
            out[name] = np.exp(np.log(lo) + unit[:, j] * (np.log(hi) - np.log(lo)))
        else:
            out[name] = lo + unit[:, j] * (hi - lo)
    return out


def make_toy_prior_store(path: str | Path, n_draws: int = 64, u_values=(0.0, 1.0, 2.0, 3.0, 4.0),
                         priors: dict | None = None, size: int = 32, noise: float = 0.02, jitter_ev: float = 0.5,
                         seed: int = 0, index: int = 5, overwrite: bool = True):
    """Write a toy store of ``n_draws`` draws x ``len(u_values)`` U values (jittered per draw) and open it read-only."""
    from ..dataset.store import Store, sample_key

    priors = dict(TOY_PRIORS if priors is None else priors)
    draws = _draws(priors, n_draws, seed)
    rng = np.random.default_rng(seed + 1)
    u_values = [float(u) for u in u_values]
    sweep = {"name": "toy-sbi", "index": index, "hubbard_u_ev": u_values, "image_size": size,
             "priors": priors, "n_draws": n_draws, "prior_seed": seed, "u_jitter_ev": jitter_ev}
    with Store.create(path, sweep, overwrite=overwrite) as store:
        for d in range(n_draws):
            drawn = {name: float(v[d]) for name, v in draws.items()}
            shift = rng.uniform(-jitter_ev / 2, jitter_ev / 2)
            for u in u_values:
                params = {"draw_id": d, "index": index, "hubbard_u_ev": float(np.clip(u + shift, min(u_values),
                                                                                      max(u_values))), **drawn}
                image = toy_ft_image(params["hubbard_u_ev"], drawn["distance_nm"], drawn["dielectric"],
                                     drawn["broadening_ev"], size, noise, rng)
                store.write_sample(sample_key(params), params, {"ft_image": image})
    return Store.open(path)
