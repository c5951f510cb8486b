"""Commands for measured STM files: ``moirestm stm-info`` and ``moirestm calibrate``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import MoireSTMError
from ._app import app, console, emit_json, friendly, option


def _pixel(pixel_spec: Optional[str]):
    """``--pixel-nm`` as one value or a (dx, dy) pair, each checked by the registry's ``pixel_nm``."""
    from ..parameters import validate

    if pixel_spec is None:
        return None
    try:
        values = [float(v) for v in pixel_spec.replace(",", " ").split()]
    except ValueError:
        raise MoireSTMError(f"--pixel-nm must be one or two numbers, got {pixel_spec!r}") from None
    if len(values) not in (1, 2):
        raise MoireSTMError(f"--pixel-nm must be one or two numbers, got {pixel_spec!r}")
    values = [validate("pixel_nm", v, "--pixel-nm") for v in values]
    return values[0] if len(values) == 1 else tuple(values)


def _simulated_image(spec: str, measured: np.ndarray, twist_deg: float) -> tuple[np.ndarray, str]:
    """A simulated FT from a .npy file, or the nearest sample of a store (twist angle, then similarity)."""
    from ..measured import nearest_simulated

    path = Path(spec)
    if not path.is_file():
        raise MoireSTMError(f"simulated image not found: {path}")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False), path.name
    from ..dataset.store import Store

    with Store.open(path) as store:
        keys = store.keys()
        if not keys:
            raise MoireSTMError(f"{path}: the store holds no finished sample")
        angles = {}
        for key in keys:
            p = store.params(key)
            angle = p.get("twist_angle_deg")
            if angle is None and "index" in p:
                from ..lattice.tbg import twist_angle_deg

                angle = twist_angle_deg(int(p["index"]))
            angles[key] = float(angle) if angle is not None else float("nan")
        finite = [k for k in keys if np.isfinite(angles[k])]
        if finite:
            best = min(abs(angles[k] - twist_deg) for k in finite)
            keys = [k for k in finite if abs(angles[k] - twist_deg) <= best + 1e-6]
        candidates = {k: store.image(k) for k in keys[:200]}
        key = nearest_simulated(candidates, measured)
        return candidates[key], f"{path.name}:{key}"


@app.command("stm-info")
@friendly
def stm_info(
    path: Path = typer.Argument(..., help="STM file (.sxm, .3ds, .gwy, .npy, .txt)."),
    channel: Optional[str] = typer.Option(None, help="Channel name or unique fragment."),
    pixel_spec: Optional[str] = typer.Option(None, "--pixel-nm", help="Pixel size in nm (plain arrays)."),
):
    """Print the channels and metadata (scan size, angle, bias, set point) of an STM file."""
    from ..measured import read_stm

    emit_json(read_stm(path, channel, pixel_nm=_pixel(pixel_spec)).summary())


@app.command("calibrate")
@friendly
def calibrate_cmd(
    path: Path = typer.Argument(..., help="STM file (.sxm, .3ds, .gwy, .npy, .txt)."),
    channel: Optional[str] = typer.Option(None, help="Channel name or unique fragment (default: dI/dV, else Z)."),
    direction: str = option("direction"),
    pixel_spec: Optional[str] = typer.Option(None, "--pixel-nm", help="Pixel size in nm: one value or 'dx,dy'."),
    bias_v: Optional[float] = option("bias_v"),
    line_order: int = option("line_order"),
    drift: bool = option("drift"),
    simulated: Optional[str] = typer.Option(None, help="Simulated FT (.npy) or FT-LDOS store (.h5) to compare."),
    out: Path = typer.Option(Path("calibrated"), "--out", "-o", help="Output directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace output files that hold another kind."),
):
    """Calibrate a measured TBG map to the simulation frame: twist angle, model-ready FT image, figure."""
    from ..io import FIGURE, NPY, check_output, output_dir, write_json, write_npy
    from ..measured import CALIBRATED_KIND, calibrate, comparison_figure, read_stm, save_calibrated

    stem = path.stem
    files = {"h5": (out / f"{stem}_calibrated.h5", CALIBRATED_KIND), "npy": (out / f"{stem}_ft.npy", NPY),
             "json": (out / f"{stem}_report.json", "CalibrationReport"), "png": (out / f"{stem}_ft.png", FIGURE)}
    if out.is_dir():
        for file, kind in files.values():
            check_output(file, kind, overwrite)
    stm = read_stm(path, channel, direction=direction, pixel_nm=_pixel(pixel_spec), bias_v=bias_v)
    result = calibrate(stm, line_order=line_order, drift_correction=drift)
    sim, sim_name = (None, "")
    if simulated is not None:
        sim, sim_name = _simulated_image(simulated, result.image, result.report.twist_angle_deg)
    output_dir(out)
    save_calibrated(files["h5"][0], result, overwrite=overwrite)
    write_npy(files["npy"][0], result.image, overwrite=overwrite)
    report = result.report.to_dict()
    write_json(files["json"][0], report, "CalibrationReport", overwrite=overwrite, indent=2)
    comparison_figure(files["png"][0], result.image, result.kx_nm, result.ky_nm, sim,
                      title_measured=f"{path.name} (θ = {result.report.twist_angle_deg:.3f}°)",
                      title_simulated=f"simulated {sim_name}", overwrite=overwrite)
    for warning in result.report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"{path.name}: {result.report}", highlight=False)
    emit_json({k: report[k] for k in ("twist_angle_deg", "twist_uncertainty_deg", "moire_period_nm",
                                      "pixel_scale", "sample_rotation_deg", "mirrored", "drift_rms_nm",
                                      "ft_coverage")} | {"out": str(out)})
