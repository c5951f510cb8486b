"""Brillouin-zone sampling: high-symmetry paths and Monkhorst-Pack grids reduced by time reversal."""

from __future__ import annotations

import numpy as np

from ..errors import MoireSTMError


def k_path(structure, labels=("G", "K", "M", "G"), n_points: int = 60):
    """Piecewise-linear path through high-symmetry points.

    Parameters
    ----------
    structure : object with ``high_symmetry_points()`` (Gamma 'G', 'K', 'M' in nm^-1).
    labels : sequence of at least two point labels.
    n_points : total number of k-points (>= number of labels).

    Returns
    -------
    k_nm : (n, 2) wave vectors; distance_nm : (n,) path length; ticks : (len(labels),) tick positions.
    """
    points = structure.high_symmetry_points()
    labels = list(labels)
    if len(labels) < 2:
        raise MoireSTMError(f"a k-path needs at least two points, got {labels}")
    unknown = [lab for lab in labels if lab not in points]
    if unknown:
        raise MoireSTMError(f"unknown k-point label(s) {unknown}; known: {sorted(points)}")
    n_points = int(n_points)
    if n_points < len(labels):
        raise MoireSTMError(f"n_points = {n_points} is fewer than the {len(labels)} path corners")
    corners = np.array([points[lab] for lab in labels])
    seg = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    if np.any(seg == 0):
        raise MoireSTMError(f"k-path {labels} has a zero-length segment")
    ticks = np.concatenate([[0.0], np.cumsum(seg)])
    distance = np.linspace(0.0, ticks[-1], n_points)
    distance[np.searchsorted(distance, ticks[1:-1])] = ticks[1:-1]  # hit every corner exactly
    k = np.column_stack([np.interp(distance, ticks, corners[:, c]) for c in range(2)])
    return k, distance, ticks


def monkhorst_pack(reciprocal_nm: np.ndarray, n: int, time_reversal: bool = True):
    """n x n Monkhorst-Pack grid containing Gamma, optionally reduced by k -> -k.

    Returns
    -------
    k_nm : (m, 2) wave vectors; weights : (m,) summing to 1.
    """
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise MoireSTMError(f"k-grid size must be a positive integer, got {n!r}")
    n = int(n)
    frac = np.arange(n) / n
    f1, f2 = np.meshgrid(frac, frac, indexing="ij")
    f = np.column_stack([f1.ravel(), f2.ravel()])
    if not time_reversal:
        return f @ reciprocal_nm, np.full(len(f), 1.0 / len(f))
    # integer labels of k and -k on the grid; keep one of each pair
    idx = np.rint(f * n).astype(int)
    minus = (-idx) % n
    key, key_minus = idx[:, 0] * n + idx[:, 1], minus[:, 0] * n + minus[:, 1]
    keep = key <= key_minus
    weights = np.where(key[keep] == key_minus[keep], 1.0, 2.0) / len(f)
    # map to the symmetric zone (-1/2, 1/2] so Gamma is exactly zero
    fk = f[keep] - (f[keep] > 0.5 + 1e-12)
    return fk @ reciprocal_nm, weights
