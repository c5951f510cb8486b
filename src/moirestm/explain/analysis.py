"""Dataset analysis: image similarity, PCA, peak intensities and mean-field order parameters vs U.

* cosine similarity of the raw FT-LDOS images ordered by U (and by the other varying
  parameters), and of the mean-subtracted images (where the samples actually differ);
* PCA of ``log1p(image / scale)`` (scale: median image mean, as in :mod:`moirestm.learn`),
  coloured by U;
* mean intensity in the peak regions of :mod:`moirestm.explain.regions` vs U;
* order parameters (:func:`moirestm.meanfield.orders.order_parameters`) from the stored spin
  densities ``n_up``/``n_down`` of each sample and the sublattice/layer of its
  :class:`~moirestm.lattice.TBGLattice`, vs U, with a crossover estimate U_c per curve
  (:mod:`moirestm.explain.crossover`; default: maximum of the smoothed dm/dU).

Pure numpy/scipy/scikit-learn (no torch).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MoireSTMError
from ..io import Result, output_dir, write_json
from .crossover import Crossover, estimate_crossover
from .regions import REGION_LABELS, REGIONS, regions_for_sample, sample_lattice

TARGET = "hubbard_u_ev"
#: Order parameters given a crossover estimate; the first is the headline U_c.
CROSSOVER_PARAMETERS = ("mean_abs_moment", "staggered_magnetization", "layer_staggered_magnetization",
                        "abs_ferromagnetic_moment")
#: Parameters that never define a curve of their own.
NOT_GROUPS = {TARGET, "replica", "seed"}
#: Parameters that the mean-field state does not depend on (merged for order parameters).
OBSERVABLE_ONLY = {"bias_ev", "broadening_ev"}


@dataclass
class AnalysisResult(Result):
    """Everything :func:`analyze` computed (arrays ordered by U, then by group).

    Attributes
    ----------
    keys, u : sample keys and U values (eV), ordered curve by curve (``groups``), by U within a curve.
    group_by : varying parameters (besides U) that define the curves; ``groups`` each sample's label.
    similarity : (n, n) cosine similarity of the raw images; ``similarity_stats`` its summary, and that
        of the mean-subtracted images.
    pca_coords : (n, k) PCA scores; ``pca_explained`` variance ratios; ``pca_u_spearman`` |ρ(PC_i, U)|.
    intensities : ``{region: (n,)}`` mean image value per peak region (NaN without lattice info).
    order_parameters : ``{name: (n,)}`` (empty if the store has no spin densities).
    crossovers : ``{group label: {order parameter: Crossover}}``.
    u_c, u_c_parameter, u_c_method : headline crossover (median over curves whose steepest change is
        inside the sampled U range; over all curves, with a note, if none is) and how it was obtained.
    figures : ``{name: png path}``; notes : what was skipped and why.
    """

    keys: list
    u: np.ndarray
    group_by: list
    groups: list
    similarity: np.ndarray
    similarity_stats: dict
    pca_coords: np.ndarray
    pca_explained: np.ndarray
    pca_u_spearman: list
    intensities: dict
    order_parameters: dict
    crossovers: dict
    u_c: float
    u_c_parameter: str
    u_c_method: str
    store: str | None = None
    figures: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    out_dir: Path | None = None

    def summary(self) -> dict:
        """JSON-able summary (no per-sample arrays except the order-parameter curves)."""
        def num(v):
            return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

        return {"store": self.store, "n_samples": len(self.keys),
                "u_range": [float(self.u.min()), float(self.u.max())] if len(self.u) else None,
                "group_by": self.group_by, "similarity": self.similarity_stats,
                "pca": {"explained_variance_ratio": self.pca_explained.tolist(),
                        "abs_spearman_with_u": self.pca_u_spearman},
                "u_c": num(self.u_c), "u_c_parameter": self.u_c_parameter, "u_c_method": self.u_c_method,
                "crossovers": {g: {p: c.to_dict() for p, c in d.items()} for g, d in self.crossovers.items()},
                "figures": {k: str(v) for k, v in self.figures.items()}, "notes": self.notes}


# --------------------------------------------------------------------------- helpers
def _scalar(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def varying_parameters(table: list[dict], exclude=NOT_GROUPS) -> list[str]:
    """Scalar parameters (besides ``exclude``) taking more than one value in ``table``."""
    names = sorted({k for row in table for k, v in row.items() if k != "key" and _scalar(v)} - set(exclude))
    return [n for n in names if len({json.dumps(row.get(n)) for row in table}) > 1]


def _sortable(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, json.dumps(v))


def _label(row: dict, names: list[str]) -> str:
    return ", ".join(f"{n}={row.get(n)}" for n in names) if names else "all"


def similarity_matrix(images: np.ndarray) -> np.ndarray:
    """Cosine similarity (n, n) between flattened images (rows)."""
    x = np.asarray(images, float).reshape(len(images), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    s = x @ x.T
    return np.clip(s, -1.0, 1.0)


def similarity_stats(s: np.ndarray) -> dict:
    """Min, mean and median of the off-diagonal similarities, and the most similar U neighbours' mean."""
    n = len(s)
    if n < 2:
        return {"min": None, "mean": None, "median": None, "adjacent_mean": None}
    off = s[~np.eye(n, dtype=bool)]
    return {"min": float(off.min()), "mean": float(off.mean()), "median": float(np.median(off)),
            "adjacent_mean": float(np.mean(np.diag(s, 1)))}


@functools.lru_cache(maxsize=16)
def _sublattice_layer(index: int, a: float) -> tuple[np.ndarray, np.ndarray]:
    from ..lattice import TBGLattice

    lat = TBGLattice(index, lattice_constant_nm=a)
    return np.array(lat.sublattice), np.array(lat.layer)


def sample_order_parameters(store, key: str) -> dict | None:
    """Order parameters of a stored sample from ``n_up``/``n_down``; None if they are not stored."""
    from ..meanfield.orders import order_parameters

    try:
        arr = store.arrays(key, ["n_up", "n_down"])
    except (KeyError, MoireSTMError):
        return None
    index, a = sample_lattice(store.params(key))
    sub, layer = _sublattice_layer(index, a)
    if len(arr["n_up"]) != len(sub):
        raise MoireSTMError(f"sample {key}: {len(arr['n_up'])} spin densities but the i = {index} cell has "
                            f"{len(sub)} atoms")
    op = order_parameters(n_up=arr["n_up"], n_down=arr["n_down"], sublattice=sub, layer=layer)
    op["abs_ferromagnetic_moment"] = abs(op["ferromagnetic_moment"])
    return op


# --------------------------------------------------------------------------- main entry
def analyze(store_path: Any, out_dir: str | Path | None = None, *, max_samples: int | None = 600,
            crossover_method: str = "derivative", order_parameter: str = CROSSOVER_PARAMETERS[0],
            n_components: int = 10, plots: bool = True) -> AnalysisResult:
    """Analyse a dataset store; write ``analysis.json`` and figures to ``out_dir`` if given.

    Parameters
    ----------
    store_path : store path (or open store).
    out_dir : directory for ``analysis.json``, ``similarity.png``, ``pca.png``, ``intensities.png``,
        ``order_parameters.png``; None computes only.
    max_samples : at most this many samples (evenly spaced in the U-ordered list) for the
        similarity matrix and PCA; intensities and order parameters use every sample.
    crossover_method : ``derivative`` (max of smoothed dm/dU) or ``tanh`` (tanh fit) as headline.
    order_parameter : order parameter of the headline U_c (one of :data:`CROSSOVER_PARAMETERS`).
    """
    if order_parameter not in CROSSOVER_PARAMETERS:
        raise MoireSTMError(f"unknown order parameter {order_parameter!r}; choose one of "
                            f"{', '.join(CROSSOVER_PARAMETERS)}")
    st = _open(store_path)
    table = st.table(status="ok")
    if len(table) < 2:
        raise MoireSTMError(f"the store has {len(table)} usable samples; the analysis needs at least 2")
    missing = [row["key"] for row in table if TARGET not in row]
    if missing:
        raise MoireSTMError(f"{len(missing)} samples lack {TARGET!r} (e.g. {missing[0]})")
    group_by = varying_parameters(table)
    # curves (groups) one after the other, each ordered by U: the similarity matrix shows blocks
    table.sort(key=lambda r: ([_sortable(r.get(n)) for n in group_by], float(r[TARGET]), r["key"]))
    keys = [r["key"] for r in table]
    u = np.array([float(r[TARGET]) for r in table])
    labels = [_label(r, group_by) for r in table]
    notes: list[str] = []

    # ---- similarity and PCA (subset evenly spaced in the U order)
    sel = np.arange(len(keys))
    if max_samples is not None and len(keys) > max_samples:
        sel = np.unique(np.round(np.linspace(0, len(keys) - 1, max_samples)).astype(int))
        notes.append(f"similarity and PCA use {len(sel)} of {len(keys)} samples (evenly spaced in U)")
    images = np.stack([np.asarray(st.image(keys[i]), float) for i in sel])
    sim = similarity_matrix(images)
    stats = similarity_stats(sim)
    stats["mean_subtracted"] = similarity_stats(similarity_matrix(images - images.mean(axis=0)))
    stats["n"] = int(len(sel))
    coords, explained = _pca(images, n_components)
    rho = _abs_spearman(coords, u[sel])

    # ---- peak intensities and order parameters (all samples)
    intensities = {r: np.full(len(keys), np.nan) for r in REGIONS}
    ops: dict[str, np.ndarray] = {}
    region_error = None
    for i, key in enumerate(keys):
        image = np.asarray(st.image(key), float) if i not in set(sel.tolist()) else images[np.searchsorted(sel, i)]
        try:
            vals = regions_for_sample(st, key, shape=image.shape).intensities(image)
            for r in REGIONS:
                intensities[r][i] = vals[r]
        except MoireSTMError as exc:
            region_error = str(exc)
        op = sample_order_parameters(st, key)
        if op is not None:
            for name, v in op.items():
                ops.setdefault(name, np.full(len(keys), np.nan))[i] = v
    if region_error:
        notes.append(f"peak intensities incomplete: {region_error}")
    crossovers: dict[str, dict[str, Crossover]] = {}
    u_c, headline = float("nan"), []
    if not ops:
        notes.append("no spin densities (n_up, n_down) in the store: no order parameters or U_c")
    else:
        op_groups = [n for n in group_by if n not in OBSERVABLE_ONLY]
        op_labels = [_label(r, op_groups) for r in table]
        for g in sorted(set(op_labels)):
            idx = np.array([lab == g for lab in op_labels])
            crossovers[g] = {}
            for name in CROSSOVER_PARAMETERS:
                if name in ops and len(np.unique(u[idx])) >= 4:
                    crossovers[g][name] = estimate_crossover(u[idx], ops[name][idx], method=crossover_method)
            c = crossovers[g].get(order_parameter)
            if c is not None and math.isfinite(c.u_c):
                headline.append((c.u_c, c.at_edge))
        inside = [v for v, edge in headline if not edge]
        if inside:
            u_c = float(np.median(inside))
            if len(inside) < len(headline):
                notes.append(f"U_c: {len(headline) - len(inside)} curve(s) with the steepest change at the edge "
                             "of the sampled U range left out of the median")
        elif headline:
            u_c = float(np.median([v for v, _ in headline]))
            notes.append(f"U_c = {u_c:.3g} eV lies at the edge of the sampled U range for every curve: the "
                         "crossover is at or beyond it (extend the U range)")
        else:
            notes.append(f"no crossover found in {order_parameter} (flat curves or too few U values)")
    result = AnalysisResult(keys, u, group_by, labels, sim, stats, coords, explained, rho, intensities, ops,
                            crossovers, u_c, order_parameter, crossover_method,
                            store=str(st.path) if getattr(st, "path", None) else None, notes=notes)
    if out_dir is not None:
        out = output_dir(out_dir)
        result.out_dir = out
        if plots:
            result.figures = plot_analysis(result, sel, out)
        write_json(out / "analysis.json", result.summary(), "AnalysisSummary", overwrite=True)
    return result


def _open(source):
    """Open a store path (``Store.open``) or accept an object with the Store reading methods."""
    import os

    if isinstance(source, (str, os.PathLike)):
        from ..dataset.store import Store

        return Store.open(source)
    for method in ("keys", "params", "image", "table", "arrays"):
        if not callable(getattr(source, method, None)):
            raise MoireSTMError(f"{type(source).__name__} is not a store (no {method}() method)")
    return source


def _abs_spearman(coords: np.ndarray, u: np.ndarray) -> list:
    from scipy.stats import spearmanr

    if len(u) < 3 or np.ptp(u) == 0:
        return []
    out = []
    for c in coords.T:
        r = spearmanr(c, u).statistic if np.ptp(c) > 0 else np.nan
        out.append(float(abs(r)) if np.isfinite(r) else float("nan"))
    return out


def _pca(images: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    x = images.reshape(len(images), -1)
    if np.min(x) >= 0:
        scale = float(np.median(x.mean(axis=1)))
        x = np.log1p(x / (scale if scale > 0 else 1.0))
    k = int(max(1, min(n_components, len(x) - 1, x.shape[1])))
    pca = PCA(k, random_state=0)
    coords = pca.fit_transform(x)
    return coords, pca.explained_variance_ratio_


# --------------------------------------------------------------------------- figures
def plot_analysis(res: AnalysisResult, sel: np.ndarray, out: Path) -> dict:
    """Write the analysis figures (:mod:`moirestm.plot.explain`; ``sel``: samples in the similarity
    matrix / PCA) into ``out``; returns ``{name: path}``."""
    from ..plot import explain as draw, save_figure

    panels = [("similarity", lambda: draw.similarity(res, sel)), ("pca", lambda: draw.pca(res, sel))]
    if any(np.isfinite(v).any() for v in res.intensities.values()):
        panels.append(("intensities", lambda: draw.intensities(res, {r: REGION_LABELS[r] for r in REGIONS})))
    names = [n for n in CROSSOVER_PARAMETERS + ("charge_rms",) if n in res.order_parameters]
    if names:
        panels.append(("order_parameters", lambda: draw.order_parameters(res, names, OBSERVABLE_ONLY)))
    figs = {}
    for name, make in panels:
        axes = np.asarray(make())
        figs[name] = Path(save_figure(axes.flat[0].figure, out / f"{name}.png", overwrite=True, dpi=100))
    return figs


__all__ = ["AnalysisResult", "analyze", "similarity_matrix", "similarity_stats", "sample_order_parameters",
           "varying_parameters", "plot_analysis", "CROSSOVER_PARAMETERS"]
