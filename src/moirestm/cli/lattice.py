"""Commands for geometry and tight binding: lattice, bands, dos, magic-distance."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, emit_json, friendly, result_console


def _lattice(index: Optional[int], angle: Optional[float], distance: Optional[float], pressure: Optional[float]):
    from ..constants import INTERLAYER_DISTANCE_NM
    from ..errors import MoireSTMError
    from ..lattice import TBGLattice, distance_for_pressure, index_for_angle, twist_angle_deg

    if (index is None) == (angle is None):
        raise MoireSTMError("give exactly one of --index or --angle")
    if distance is not None and pressure is not None:
        raise MoireSTMError("give at most one of --distance and --pressure")
    if index is None:
        index = index_for_angle(angle)
        console.print(f"angle {angle}° -> nearest commensurate index i = {index} ({twist_angle_deg(index):.4f}°)")
    if pressure is not None:
        distance = distance_for_pressure(pressure)
    return TBGLattice(index, INTERLAYER_DISTANCE_NM if distance is None else distance)


IndexOpt = typer.Option(None, "--index", "-i", help="Commensurate index i of the (i, i+1) family.")
AngleOpt = typer.Option(None, "--angle", help="Twist angle in degrees (nearest commensurate index is used).")
DistanceOpt = typer.Option(None, "--distance", "-d", help="Interlayer distance in nm (default 0.335).")
PressureOpt = typer.Option(None, "--pressure", help="Pressure in GPa (graphite c-axis equation of state).")


@app.command()
@friendly
def lattice(index: Optional[int] = IndexOpt, angle: Optional[float] = AngleOpt,
            distance: Optional[float] = DistanceOpt, pressure: Optional[float] = PressureOpt,
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Print the twist angle, atom count and moiré period of a commensurate TBG cell."""
    from ..lattice import pressure_for_distance

    lat = _lattice(index, angle, distance, pressure)
    info = lat.summary()
    info["pressure_gpa"] = pressure_for_distance(lat.distance_nm)
    if as_json:
        emit_json(info)
        return
    result_console.print(f"index i = {lat.index}: theta = {lat.twist_angle_deg:.4f}°, {lat.n_atoms} atoms, "
                  f"moiré period {lat.moire_period_nm:.4f} nm, interlayer distance {lat.distance_nm:.4f} nm "
                  f"(~{info['pressure_gpa']:.2f} GPa)", highlight=False)


@app.command()
@friendly
def bands(index: Optional[int] = IndexOpt, angle: Optional[float] = AngleOpt,
          distance: Optional[float] = DistanceOpt, pressure: Optional[float] = PressureOpt,
          n_points: int = typer.Option(60, help="k-points along Γ-K-M-Γ."),
          window: float = typer.Option(0.3, help="Energy window of the plot around E_F, eV."),
          out: Path = typer.Option(Path("bands.png"), help="PNG plot; the data go beside it as .h5.")):
    """Band structure along Γ-K-M-Γ of the moiré Brillouin zone (PNG plot + HDF5 data)."""
    from ..hamiltonian import TightBinding, band_structure

    lat = _lattice(index, angle, distance, pressure)
    bs = band_structure(TightBinding(lat), n_points=n_points)
    bs.plot(out, window_ev=window, title=f"TBG i={lat.index}, θ={lat.twist_angle_deg:.3f}°, d={lat.distance_nm:.4f} nm")
    data = out.with_suffix(".h5")
    bs.save(data)
    result_console.print(f"central four bands width {bs.central_width_ev() * 1e3:.2f} meV; plot {out}, data {data}")


@app.command()
@friendly
def dos(index: Optional[int] = IndexOpt, angle: Optional[float] = AngleOpt,
        distance: Optional[float] = DistanceOpt, pressure: Optional[float] = PressureOpt,
        kgrid: int = typer.Option(6, help="Monkhorst-Pack grid size n (n x n)."),
        broadening: float = typer.Option(0.005, help="Gaussian broadening, eV."),
        out: Path = typer.Option(Path("dos.png"), help="PNG plot; the data go beside it as .h5.")):
    """Density of states from a k-grid with Gaussian broadening (PNG plot + HDF5 data)."""
    from ..hamiltonian import TightBinding, density_of_states

    lat = _lattice(index, angle, distance, pressure)
    result = density_of_states(TightBinding(lat), kgrid=kgrid, broadening_ev=broadening)
    result.plot(out)
    result.save(out.with_suffix(".h5"))
    console.print(f"DOS written to {out} and {out.with_suffix('.h5')}")


@app.command("magic-distance")
@friendly
def magic_distance_cmd(index: int = typer.Option(9, "--index", "-i", help="Commensurate index."),
                       lower: float = typer.Option(0.25, help="Smallest distance searched, nm."),
                       upper: float = typer.Option(0.335, help="Largest distance searched, nm."),
                       out: Optional[Path] = typer.Option(None, help="Optional HDF5 file for the result."),
                       as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Interlayer distance that minimises the width of the four central bands."""
    from ..hamiltonian.magic import magic_distance

    with console.status(f"searching the magic distance for i = {index} ..."):
        result = magic_distance(index, (lower, upper))
    if out is not None:
        result.save(out)
    if as_json:
        emit_json(result.summary())
        return
    result_console.print(f"i = {index} (θ = {result.twist_angle_deg:.4f}°): magic distance {result.distance_nm:.4f} nm, "
                  f"central bandwidth {result.bandwidth_ev * 1e3:.2f} meV, ~{result.pressure_gpa:.1f} GPa "
                  "(graphite c-axis EOS)", highlight=False)
