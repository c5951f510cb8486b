"""Commands for measured STM files: ``moirestm stm-info`` and ``moirestm calibrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import MoireSTMError
from ._app import app, console, emit_json, friendly


def _pixel(pixel_nm: Optional[str]):
    if pixel_nm is None:
        return None
    try:
        values = [float(v) for v in pixel_nm.replace(",", " ").split()]
    except ValueError:
        raise MoireSTMError(f"--pixel-nm must be one or two numbers, got {pixel_nm!r}") from None
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
    pixel_nm: Optional[str] = typer.Option(None, "--pixel-nm", help="Pixel size in nm (plain arrays)."),
):
    """Print the channels and metadata (scan size, angle, bias, set point) of an STM file."""
    from ..measured import read_stm

    emit_json(read_stm(path, channel, pixel_nm=_pixel(pixel_nm)).summary())


@app.command("calibrate")
@friendly
def calibrate_cmd(
    path: Path = typer.Argument(..., help="STM file (.sxm, .3ds, .gwy, .npy, .txt)."),
    channel: Optional[str] = typer.Option(None, help="Channel name or unique fragment (default: dI/dV, else Z)."),
    direction: str = typer.Option("forward", help="forward or backward (.sxm)."),
    pixel_nm: Optional[str] = typer.Option(None, "--pixel-nm", help="Pixel size in nm: one value or 'dx,dy'."),
    bias_v: Optional[float] = typer.Option(None, "--bias-v", help="Sweep point of a .3ds grid (V)."),
    line_order: int = typer.Option(1, help="Line-levelling polynomial degree (-1 none, 0 offset)."),
    drift: bool = typer.Option(True, "--drift/--no-drift", help="Lawler-Fujita drift correction."),
    simulated: Optional[str] = typer.Option(None, help="Simulated FT (.npy) or FT-LDOS store (.h5) to compare."),
    out: Path = typer.Option(Path("calibrated"), help="Output directory."),
):
    """Calibrate a measured TBG map to the simulation frame: twist angle, model-ready FT image, figure."""
    from ..measured import calibrate, comparison_figure, read_stm, save_calibrated

    stm = read_stm(path, channel, direction=direction, pixel_nm=_pixel(pixel_nm), bias_v=bias_v)
    result = calibrate(stm, line_order=line_order, drift_correction=drift)
    out.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    save_calibrated(out / f"{stem}_calibrated.h5", result)
    np.save(out / f"{stem}_ft.npy", result.image)
    report = result.report.to_dict()
    (out / f"{stem}_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    sim, sim_name = (None, "")
    if simulated is not None:
        sim, sim_name = _simulated_image(simulated, result.image, result.report.twist_angle_deg)
    comparison_figure(out / f"{stem}_ft.png", result.image, result.kx_nm, result.ky_nm, sim,
                      title_measured=f"{path.name} (θ = {result.report.twist_angle_deg:.3f}°)",
                      title_simulated=f"simulated {sim_name}")
    for warning in result.report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"{path.name}: {result.report}")
    emit_json({k: report[k] for k in ("twist_angle_deg", "twist_uncertainty_deg", "moire_period_nm",
                                      "pixel_scale", "sample_rotation_deg", "mirrored", "drift_rms_nm",
                                      "ft_coverage")} | {"out": str(out)})
