"""Synthetic FT-LDOS-like stores for testing and benchmarking the learning pipeline.

Not physics: a toy real-space map (triangular "atomic" lattice, a moiré superlattice and
Bragg satellites at ``G + q``) whose moiré and satellite amplitudes depend smoothly on U
and the filling, plus white noise.  The FT image is the numpy FT of the map
(:func:`moirestm.learn.augment.numpy_ft`), so the real-space augmentation is exact on it.
Samples are written through :class:`moirestm.dataset.store.Store`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .augment import numpy_ft

#: toy lattice constants (nm): "atomic" lattice and moiré period
TOY_LATTICE_NM = 0.6
TOY_MOIRE_NM = 2.0


def _triangular(period_nm: float, angle: float = 0.0) -> np.ndarray:
    g = 4 * math.pi / (math.sqrt(3) * period_nm)
    return np.array([[g * math.cos(angle + j * math.pi / 3), g * math.sin(angle + j * math.pi / 3)]
                     for j in range(3)])


def toy_map(u_ev: float, filling: float = 0.0, size: int = 64, dx_nm: float = 0.08, noise: float = 0.05,
            rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Toy STM map ``(ny, nx)`` and its x, y axes (nm)."""
    rng = rng or np.random.default_rng(0)
    x = (np.arange(size) - size / 2) * dx_nm
    xx, yy = np.meshgrid(x, x)
    gs, qs = _triangular(TOY_LATTICE_NM), _triangular(TOY_MOIRE_NM, angle=math.pi / 6)
    a_moire = (0.3 + 0.15 * u_ev) * (1 + 0.2 * filling)
    a_sat = 0.25 * math.tanh(u_ev / 2)
    m = np.ones_like(xx)
    shift = rng.uniform(0, 2 * math.pi, 2)  # random lateral position: leaves |FT| unchanged
    for g, q in zip(gs, qs):
        m += np.cos(g[0] * xx + g[1] * yy + shift[0])
        m += a_moire * np.cos(q[0] * xx + q[1] * yy + shift[1])
        m += a_sat * np.cos((g[0] + q[0]) * xx + (g[1] + q[1]) * yy + shift[0] + shift[1])
    m += rng.normal(0, noise, m.shape)
    return m, x, x.copy()


def toy_k_axes(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """FT window of the toy images: ``|k| <= 1.1 G`` in both directions (nm^-1)."""
    kmax = 1.1 * 4 * math.pi / (math.sqrt(3) * TOY_LATTICE_NM)
    k = np.linspace(-kmax, kmax, image_size)
    return k, k.copy()


def make_synthetic_store(path: str | Path, u_values: Sequence[float] = tuple(np.round(np.arange(0, 3.01, 0.25), 3)),
                         fillings: Sequence[float] = (-0.5, 0.5), replicas: int = 2, image_size: int = 32,
                         map_size: int = 64, noise: float = 0.05, seed: int = 0, overwrite: bool = True):
    """Create a store of toy samples (one per U x filling x replica) and return it, opened read-only."""
    from ..dataset.store import Store, sample_key

    sweep = {"name": "synthetic-learning-test", "hubbard_u_ev": list(map(float, u_values)),
             "filling": list(map(float, fillings)), "replicas": replicas, "image_size": image_size}
    kx, ky = toy_k_axes(image_size)
    rng = np.random.default_rng(seed)
    with Store.create(path, sweep, overwrite=overwrite) as store:
        for u in u_values:
            for nu in fillings:
                for rep in range(replicas):
                    params = {"hubbard_u_ev": float(u), "filling": float(nu), "replica": rep, "synthetic": True}
                    stm, x, y = toy_map(u, nu, map_size, noise=noise, rng=rng)
                    dx = float(x[1] - x[0])
                    ft = numpy_ft(stm, dx, dx, kx, ky).astype(np.float32)
                    store.write_sample(sample_key(params), params,
                                       {"ft_image": ft, "kx_nm": kx, "ky_nm": ky, "stm_map": stm,
                                        "stm_x_nm": x, "stm_y_nm": y})
    return Store.open(path)
