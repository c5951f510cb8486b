"""Automatic crossover estimate U_c of an order parameter m(U).

Two estimators, both reported:

``derivative`` (the default)
    local-linear regression of m on U with a Gaussian kernel of bandwidth h (default
    ``max(2 median ΔU, 4 % of the U range)``) evaluated on a fine grid; its slope is a
    smoothed dm/dU. U_c is the U of the largest slope in the direction of the overall change,
    refined by a parabola through the three grid points around the maximum. It makes no
    assumption on the shape of m(U) (tanh-like crossover or mean-field onset m ~ √(U - U_c)).
``tanh``
    least-squares fit of m(U) = a + b tanh((U - U_c) / w) (scipy ``curve_fit``, started from
    the derivative estimate); gives U_c ± σ and the crossover width w.
``onset``
    the smallest U at which the smoothed curve has moved by ``ONSET_FRACTION`` (10 %) of its total
    change from its value at the lowest U, linearly interpolated: where an order parameter
    develops, even when it keeps steepening beyond the sampled range (then ``derivative`` sits
    at the edge).

A curve whose total change is below ``min_change`` (absolute) has no crossover: U_c is NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import MoireSTMError
from ..io import Result

METHODS = ("derivative", "tanh", "onset")
#: Fraction of the total change that marks the onset.
ONSET_FRACTION = 0.1


@dataclass
class Crossover(Result):
    """Crossover estimate of one curve.

    Attributes
    ----------
    u_c : the estimate of ``method`` (NaN if none).
    method : ``"derivative"``, ``"tanh"`` or ``"onset"``.
    u_c_derivative, u_c_tanh, u_c_onset : the three estimates; ``u_c_tanh_sigma`` its 1σ fit error; ``width``
        the tanh width w.
    bandwidth : smoothing bandwidth of the derivative method.
    at_edge : the maximum slope lies at the first or last sampled U (U_c may lie outside).
    note : why an estimate is missing or doubtful.
    """

    u_c: float
    method: str
    u_c_derivative: float = float("nan")
    u_c_tanh: float = float("nan")
    u_c_onset: float = float("nan")
    u_c_tanh_sigma: float = float("nan")
    width: float = float("nan")
    bandwidth: float = float("nan")
    change: float = float("nan")
    at_edge: bool = False
    note: str = ""
    fit: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _clean(u, m) -> tuple[np.ndarray, np.ndarray]:
    u, m = np.asarray(u, float).ravel(), np.asarray(m, float).ravel()
    if u.shape != m.shape:
        raise MoireSTMError(f"U and m must have the same length, got {u.size} and {m.size}")
    ok = np.isfinite(u) & np.isfinite(m)
    u, m = u[ok], m[ok]
    order = np.argsort(u, kind="stable")
    return u[order], m[order]


def default_bandwidth(u: np.ndarray) -> float:
    """``max(2 median ΔU, 0.04 (U_max - U_min))`` over distinct U values."""
    uu = np.unique(u)
    step = float(np.median(np.diff(uu))) if len(uu) > 1 else 1.0
    return max(2.0 * step, 0.04 * float(uu[-1] - uu[0]))


def local_linear(u: np.ndarray, m: np.ndarray, grid: np.ndarray, bandwidth: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-kernel local-linear fit: smoothed m and dm/dU at ``grid``."""
    d = grid[:, None] - u[None, :]
    w = np.exp(-0.5 * (d / bandwidth) ** 2)
    s0, s1, s2 = w.sum(1), (w * -d).sum(1), (w * d ** 2).sum(1)
    t0, t1 = (w * m).sum(1), (w * -d * m).sum(1)
    det = s0 * s2 - s1 ** 2
    det = np.where(np.abs(det) > 1e-300, det, np.nan)
    value = (s2 * t0 - s1 * t1) / det
    slope = (s0 * t1 - s1 * t0) / det
    return value, slope


def crossover_derivative(u, m, bandwidth: float | None = None, n_grid: int = 801) -> tuple[float, dict]:
    """U of the largest smoothed slope (in the direction of the overall change); returns (U_c, info)."""
    u, m = _clean(u, m)
    if len(np.unique(u)) < 4:
        raise MoireSTMError("a crossover estimate needs at least 4 distinct U values")
    h = float(bandwidth) if bandwidth else default_bandwidth(u)
    grid = np.linspace(u[0], u[-1], n_grid)
    value, slope = local_linear(u, m, grid, h)
    sign = 1.0 if value[-1] >= value[0] else -1.0
    s = sign * slope
    i = int(np.nanargmax(s))
    u_c = float(grid[i])
    if 0 < i < n_grid - 1:
        y0, y1, y2 = s[i - 1], s[i], s[i + 1]
        denom = y0 - 2 * y1 + y2
        if denom < 0:
            u_c += float(0.5 * (y0 - y2) / denom) * float(grid[1] - grid[0])
    at_edge = i == 0 or i == n_grid - 1 or u_c - u[0] < 0.5 * h or u[-1] - u_c < 0.5 * h
    return u_c, {"bandwidth": h, "grid": grid, "smoothed": value, "slope": slope, "at_edge": bool(at_edge)}


def _tanh(u, a, b, uc, w):
    return a + b * np.tanh((u - uc) / w)


def crossover_tanh(u, m, u_c0: float | None = None) -> tuple[float, float, float, dict]:
    """Fit m = a + b tanh((U - U_c)/w); returns (U_c, σ(U_c), w, params)."""
    from scipy.optimize import curve_fit

    u, m = _clean(u, m)
    span = float(u[-1] - u[0])
    if span <= 0:
        raise MoireSTMError("U values span no range")
    uc0 = float(u_c0) if u_c0 is not None and math.isfinite(u_c0) else float(u[len(u) // 2])
    b0 = 0.5 * (float(np.mean(m[-max(1, len(m) // 8):])) - float(np.mean(m[:max(1, len(m) // 8)])))
    a0 = 0.5 * (float(m.max()) + float(m.min()))
    step = float(np.median(np.diff(np.unique(u)))) if len(np.unique(u)) > 1 else span
    p0 = [a0, b0 if b0 != 0 else 0.5 * float(np.ptp(m)), uc0, max(0.1 * span, step)]
    bounds = ([-np.inf, -np.inf, u[0] - 0.5 * span, 0.1 * step], [np.inf, np.inf, u[-1] + 0.5 * span, 2 * span])
    popt, pcov = curve_fit(_tanh, u, m, p0=p0, bounds=bounds, maxfev=20000)
    sigma = float(np.sqrt(pcov[2, 2])) if np.all(np.isfinite(pcov)) else float("nan")
    return float(popt[2]), sigma, float(abs(popt[3])), {"a": float(popt[0]), "b": float(popt[1]),
                                                        "u_c": float(popt[2]), "w": float(abs(popt[3]))}


def crossover_onset(grid: np.ndarray, smoothed: np.ndarray, fraction: float = ONSET_FRACTION) -> float:
    """First U where the smoothed curve has moved by ``fraction`` of its total change (interpolated)."""
    ok = np.isfinite(smoothed)
    grid, smoothed = grid[ok], smoothed[ok]
    if smoothed.size < 2:
        return float("nan")
    moved = np.abs(smoothed - smoothed[0])
    target = fraction * moved.max()
    if not target > 0:
        return float("nan")
    j = int(np.argmax(moved >= target))
    if j == 0:
        return float(grid[0])
    return float(np.interp(target, moved[j - 1:j + 1], grid[j - 1:j + 1]))


def estimate_crossover(u, m, method: str = "derivative", bandwidth: float | None = None,
                       min_change: float = 1e-3) -> Crossover:
    """Crossover U_c of m(U) by ``method`` (both estimators are computed and kept).

    Parameters
    ----------
    u, m : samples of the curve (any order; repeated U values allowed).
    method : ``"derivative"``, ``"tanh"`` or ``"onset"``: which estimate is reported as ``u_c``.
    bandwidth : smoothing bandwidth for the derivative method (default :func:`default_bandwidth`).
    min_change : below this total change (max - min of the smoothed curve) there is no crossover.
    """
    if method not in METHODS:
        raise MoireSTMError(f"unknown crossover method {method!r}; choose one of {', '.join(METHODS)}")
    u, m = _clean(u, m)
    u_d, info = crossover_derivative(u, m, bandwidth)
    change = float(np.nanmax(info["smoothed"]) - np.nanmin(info["smoothed"]))
    out = Crossover(u_c=float("nan"), method=method, bandwidth=info["bandwidth"], change=change,
                    at_edge=info["at_edge"])
    if not change > min_change:
        out.note = f"no crossover: the order parameter changes by {change:.3g} < {min_change:g}"
        return out
    out.u_c_derivative = u_d
    out.u_c_onset = crossover_onset(info["grid"], info["smoothed"])
    try:
        uc, sig, w, params = crossover_tanh(u, m, u_d)
        out.u_c_tanh, out.u_c_tanh_sigma, out.width, out.fit = uc, sig, w, params
        if not u[0] <= uc <= u[-1]:
            out.note = "tanh fit places U_c outside the sampled range"
    except (RuntimeError, ValueError) as exc:
        out.note = f"tanh fit failed ({exc})"
    out.u_c = {"derivative": out.u_c_derivative, "tanh": out.u_c_tanh, "onset": out.u_c_onset}[method]
    if out.at_edge:
        out.note = (out.note + "; " if out.note else "") + "steepest change at the edge of the sampled U range"
    return out


__all__ = ["Crossover", "estimate_crossover", "crossover_derivative", "crossover_onset", "crossover_tanh", "local_linear",
           "default_bandwidth", "METHODS"]
