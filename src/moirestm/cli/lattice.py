"""Commands for geometry and tight binding: lattice, bands, dos, magic-distance."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, emit_json, friendly, option, result_console

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on standard output.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace output files even if they hold another kind.")
ForceOpt = typer.Option(False, "--force", help="Run even if the memory estimate exceeds the available memory.")


def _lattice(index: Optional[int], angle: Optional[float], distance: Optional[float], pressure: Optional[float]):
    from ..constants import INTERLAYER_DISTANCE_NM
    from ..errors import MoireSTMError
    from ..lattice import TBGLattice, distance_for_pressure, index_for_angle, twist_angle_deg

    if (index is None) == (angle is None):
        raise MoireSTMError("give exactly one of --index or --angle")
    if distance is not None and pressure is not None:
        raise MoireSTMError("give at most one of --distance-nm and --pressure-gpa")
    if index is None:
        index = index_for_angle(angle)
        console.print(f"angle {angle}° -> nearest commensurate index i = {index} ({twist_angle_deg(index):.4f}°)")
    if pressure is not None:
        distance = distance_for_pressure(pressure)
    return TBGLattice(index, INTERLAYER_DISTANCE_NM if distance is None else distance)


def guard_cost(index: int, what: str, force: bool, n_k: int = 1, stored_k: int = 0,
               dense: bool | None = None) -> dict:
    """State the cost of diagonalising cell ``index`` on stderr when large; refuse what cannot fit."""
    from ..hamiltonian.cost import check_fits, estimate
    from ..hamiltonian.spectrum import DENSE_LIMIT
    from ..parameters import atoms_for_index

    n = atoms_for_index(index)
    cost = estimate(n, n_k=n_k, dense=n <= DENSE_LIMIT if dense is None else dense, stored_k=stored_k)
    check_fits(cost, f"{what} i = {index}", force)
    if n > 2000 or cost["time_class"] != "seconds":
        console.print(f"{what} i = {index}: {n} atoms, ~{cost['memory_gib']:.3g} GiB ({cost['method']}), "
                      f"time class: {cost['time_class']}", highlight=False)
    return cost


def _index_of(index: Optional[int], angle: Optional[float]) -> int | None:
    if index is not None or angle is None:
        return index
    from ..lattice import index_for_angle

    return index_for_angle(angle)


def _check_outputs(overwrite: bool, *pairs) -> None:
    from ..io import check_output

    for path, kind in pairs:
        check_output(path, kind, overwrite)


@app.command()
@friendly
def lattice(index: Optional[int] = option("index", "-i", default=None),
            twist_angle_deg: Optional[float] = option("twist_angle_deg"),
            distance_nm: Optional[float] = option("distance_nm", "--distance", "-d", default=None),
            pressure_gpa: Optional[float] = option("pressure_gpa", "--pressure", default=None),
            as_json: bool = JsonOpt):
    """Print the twist angle, atom count and moiré period of a commensurate TBG cell."""
    from ..lattice import pressure_for_distance

    lat = _lattice(index, twist_angle_deg, distance_nm, pressure_gpa)
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
def bands(index: Optional[int] = option("index", "-i", default=None),
          twist_angle_deg: Optional[float] = option("twist_angle_deg"),
          distance_nm: Optional[float] = option("distance_nm", "--distance", "-d", default=None),
          pressure_gpa: Optional[float] = option("pressure_gpa", "--pressure", default=None),
          n_points: int = option("n_points", "--n-points"),
          window_ev: float = option("window_ev", "--window-ev"),
          out: Path = typer.Option(Path("bands.png"), "--out", "-o",
                                   help="PNG plot; the data go beside it as .h5."),
          overwrite: bool = OverwriteOpt, force: bool = ForceOpt, as_json: bool = JsonOpt):
    """Band structure along Γ-K-M-Γ of the moiré Brillouin zone (PNG plot + HDF5 data)."""
    from ..hamiltonian import TightBinding, band_structure
    from ..io import FIGURE
    from ..plot import bands as draw, save_figure

    data = out.with_suffix(".h5")
    _check_outputs(overwrite, (out, FIGURE), (data, "BandStructure"))
    i = _index_of(index, twist_angle_deg)
    if i is not None:
        guard_cost(i, "bands", force, n_k=n_points)
    lat = _lattice(i, None, distance_nm, pressure_gpa)
    bs = band_structure(TightBinding(lat), n_points=n_points)
    ax = draw(bs, window_ev=window_ev,
              title=f"TBG i={lat.index}, θ={lat.twist_angle_deg:.3f}°, d={lat.distance_nm:.4f} nm")
    bs.save(data, overwrite=overwrite)
    save_figure(ax.figure, out, overwrite=overwrite)
    info = {"central_width_ev": bs.central_width_ev(), "plot": str(out), "data": str(data)}
    if as_json:
        emit_json(info)
        return
    result_console.print(f"central four bands width {bs.central_width_ev() * 1e3:.2f} meV; plot {out}, data {data}",
                         highlight=False)


@app.command()
@friendly
def dos(index: Optional[int] = option("index", "-i", default=None),
        twist_angle_deg: Optional[float] = option("twist_angle_deg"),
        distance_nm: Optional[float] = option("distance_nm", "--distance", "-d", default=None),
        pressure_gpa: Optional[float] = option("pressure_gpa", "--pressure", default=None),
        dos_kgrid: int = option("dos_kgrid", "--dos-kgrid"),
        dos_broadening_ev: float = option("dos_broadening_ev", "--dos-broadening-ev"),
        out: Path = typer.Option(Path("dos.png"), "--out", "-o", help="PNG plot; the data go beside it as .h5."),
        overwrite: bool = OverwriteOpt, force: bool = ForceOpt, as_json: bool = JsonOpt):
    """Density of states from a k-grid with Gaussian broadening (PNG plot + HDF5 data)."""
    from ..hamiltonian import TightBinding, density_of_states
    from ..io import FIGURE
    from ..plot import dos as draw, save_figure

    data = out.with_suffix(".h5")
    _check_outputs(overwrite, (out, FIGURE), (data, "DensityOfStates"))
    i = _index_of(index, twist_angle_deg)
    if i is not None:
        guard_cost(i, "dos", force, n_k=dos_kgrid ** 2, dense=True)
    lat = _lattice(i, None, distance_nm, pressure_gpa)
    result = density_of_states(TightBinding(lat), kgrid=dos_kgrid, broadening_ev=dos_broadening_ev)
    result.save(data, overwrite=overwrite)
    save_figure(draw(result).figure, out, overwrite=overwrite)
    if as_json:
        emit_json({"plot": str(out), "data": str(data)})
        return
    console.print(f"DOS written to {out} and {data}")


@app.command("magic-distance")
@friendly
def magic_distance_cmd(index: int = option("index", "-i"),
                       distance_nm_min: float = option("distance_nm", "--lower", default=0.25,
                                                       flag="--distance-nm-min",
                                                       help="Smallest distance searched"),
                       distance_nm_max: float = option("distance_nm", "--upper", default=0.335,
                                                       flag="--distance-nm-max",
                                                       help="Largest distance searched"),
                       out: Optional[Path] = typer.Option(None, "--out", "-o",
                                                          help="Optional HDF5 file for the result."),
                       overwrite: bool = OverwriteOpt, force: bool = ForceOpt, as_json: bool = JsonOpt):
    """Interlayer distance that minimises the width of the four central bands."""
    from ..hamiltonian.magic import magic_distance
    from ..parameters import parameter

    parameter("distance_nm").check_range(distance_nm_min, distance_nm_max, "--distance-nm-min/max")
    if out is not None:
        _check_outputs(overwrite, (out, "MagicDistance"))
    guard_cost(index, "magic-distance", force, n_k=24 * 20, dense=True)
    with console.status(f"searching the magic distance for i = {index} ..."):
        result = magic_distance(index, (distance_nm_min, distance_nm_max))
    if out is not None:
        result.save(out, overwrite=overwrite)
    if as_json:
        emit_json(result.summary())
        return
    result_console.print(f"i = {index} (θ = {result.twist_angle_deg:.4f}°): magic distance {result.distance_nm:.4f} nm, "
                         f"central bandwidth {result.bandwidth_ev * 1e3:.2f} meV, ~{result.pressure_gpa:.1f} GPa "
                         "(graphite c-axis EOS)", highlight=False)
