"""Summaries, integrity checks and PNG export of a Store.

One-file HDF5 export of a Zarr store is a merge: ``merge_stores("data.h5", ["data.zarr"])``
(``moirestm dataset merge data.h5 data.zarr``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import MoireSTMError
from .store import Store

PNG_MAX = 65535


def _flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, name + "."))
        elif isinstance(v, list):
            flat[name] = json.dumps(v)
        else:
            flat[name] = v
    return flat


def info(path) -> dict:
    """Summary: provenance, sample counts, parameter ranges, image shape, file size."""
    store = Store.open(path, "r")
    attrs = store.attrs
    ok, failed = store.keys("ok"), store.keys("failed")
    ranges: dict[str, set] = {}
    for row in store.table(None):
        for name, value in _flatten({k: v for k, v in row.items() if k not in ("key", "status")}).items():
            ranges.setdefault(name, set()).add(value if not isinstance(value, float) else round(value, 9))
    varying = {}
    for name, values in sorted(ranges.items()):
        if len(values) > 1:
            nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            varying[name] = ({"n": len(values), "min": min(nums), "max": max(nums)}
                             if len(nums) == len(values) else {"n": len(values)})
    shape = list(store.image(ok[0]).shape) if ok else None
    sweep = json.loads(attrs.get("parameters_json", "{}"))
    return {"path": str(path), "kind": attrs.get("moirestm_kind"), "version": attrs.get("moirestm_version"),
            "created_utc": attrs.get("created_utc"), "modified_utc": attrs.get("modified_utc"),
            "sweep": sweep.get("sweep"), "n_ok": len(ok), "n_failed": len(failed),
            "n_pending_journal": len(store.pending), "image_shape": shape, "varying": varying,
            "solves": solve_summary(store), "file_mb": round(_size_bytes(Path(path)) / 2**20, 3)}


def solve_summary(store: Store) -> dict | None:
    """The mean-field solves behind the samples (the images of one solve counted once): how many, how many
    converged, iterations, solve wall times and how many needed rungs beyond Pulay; None without records."""
    from .sweep import solve_key

    solves = {}
    for row in store.table(None):
        solves.setdefault(solve_key(row), row["key"])
    records = [r for r in (store.results(key) for key in solves.values()) if "iterations" in r]
    if not records:
        return None
    its = np.array([r["iterations"] for r in records])
    wall = np.array([r.get("solve_wall_time_s", np.nan) for r in records], dtype=float)
    return {"n": len(records), "converged": int(sum(bool(r.get("converged")) for r in records)),
            "iterations": {"median": float(np.median(its)), "max": int(its.max())},
            "solve_wall_time_s": {"sum": float(np.nansum(wall)), "median": float(np.nanmedian(wall)),
                                  "max": float(np.nanmax(wall))},
            "beyond_pulay": int(sum(len(r.get("ladder", [])) > 1 for r in records))}


def _size_bytes(path: Path) -> int:
    """Bytes of a store file, or of every file of a store directory (Zarr)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def check(path) -> list[str]:
    """Integrity problems of the store at ``path`` (empty list: sound)."""
    return Store.open(path, "r").check()


def to_uint16(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Linear map of ``image`` onto 0..65535; returns (pixels, min, max) for exact inversion."""
    lo, hi = float(np.min(image)), float(np.max(image))
    scale = (hi - lo) if hi > lo else 1.0
    return np.rint((image - lo) / scale * PNG_MAX).astype(np.uint16), lo, hi


def export_png(path, outdir, status: str = "ok", colormap: str | None = None,
               overwrite: bool = False) -> int:
    """Write every image as a grayscale 16-bit PNG plus ``index.csv`` (parameters, scaling).

    Rows are flipped so k_y increases upwards; ``value = min + pixel / 65535 (max - min)``
    recovers the float image to 1/65535 of its range. ``colormap`` additionally writes
    8-bit colour PNGs for viewing to ``outdir/view``. Returns the number of images.
    """
    from PIL import Image

    store = Store.open(path, "r")
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise MoireSTMError(f"export folder {outdir} is not empty; choose another or pass overwrite")
    if colormap:
        from ..plot import check_colormap, save_colormapped

        check_colormap(colormap)
    try:
        (outdir / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoireSTMError(f"cannot create export folder {outdir} ({exc})") from None
    if colormap:
        (outdir / "view").mkdir(exist_ok=True)
    rows = []
    for key in store.keys(status):
        image = store.image(key)[::-1]  # ky up
        pixels, lo, hi = to_uint16(image)
        name = f"images/{key}.png"
        Image.fromarray(pixels).save(outdir / name)
        if colormap:
            save_colormapped(outdir / "view" / f"{key}.png", image, colormap)
        rows.append({"key": key, "file": name, "png_min": lo, "png_max": hi,
                     **_flatten(store.params(key))})
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with open(outdir / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (outdir / "README.txt").write_text(
        f"FT-LDOS images exported from {Path(path).name} by moirestm.\n"
        "images/<key>.png: 16-bit grayscale, row 0 = largest k_y (k_y up), column 0 = smallest k_x.\n"
        "value = png_min + pixel / 65535 * (png_max - png_min)  (columns of index.csv).\n"
        "view/: colour-mapped 8-bit copies for viewing only.\n")
    return len(rows)
