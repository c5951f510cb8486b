"""Commands for the mean field and its observables: scf, sweep-u, ldos."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Optional

import typer

from ._app import app, console, emit_json, friendly, option, result_console
from .lattice import ForceOpt, JsonOpt, OverwriteOpt, guard_cost


def _interaction(hubbard_u_ev: float, dielectric: float, coulomb: str, gate_distance_nm: Optional[float],
                 fock: bool = False):
    from ..meanfield import Interaction

    kwargs = {"hubbard_u_ev": hubbard_u_ev, "dielectric": dielectric, "coulomb": coulomb, "fock": fock}
    if gate_distance_nm is not None:
        kwargs["gate_distance_nm"] = gate_distance_nm
    return Interaction(**kwargs)


def _tb(index: int, distance_nm: Optional[float]):
    from ..constants import INTERLAYER_DISTANCE_NM
    from ..hamiltonian import TightBinding
    from ..lattice import TBGLattice

    return TightBinding(TBGLattice(index, INTERLAYER_DISTANCE_NM if distance_nm is None else distance_nm))


def _scf_cost(index: int, kgrid: int, force: bool) -> None:
    n_k = max(1, (kgrid * kgrid + 1) // 2)  # reduced by time reversal
    guard_cost(index, "scf", force, n_k=2 * n_k * 30, stored_k=2 * n_k, dense=True)


@app.command()
@friendly
def scf(index: int = option("index", "-i"),
        hubbard_u_ev: float = option("hubbard_u_ev", "-U", "--U", default=3.0),
        filling: float = option("filling", "-n"),
        mu_ev: Optional[float] = option("mu_ev", "--mu"),
        scf_kgrid: int = option("scf_kgrid", "--kgrid", "-k"),
        dielectric: float = option("dielectric", "--eps"),
        coulomb: str = option("coulomb"),
        gate_distance_nm: Optional[float] = option("gate_distance_nm", "--gate-distance", default=None),
        fock: bool = option("fock", default=False),
        temperature_k: float = option("temperature_k", "--temperature", "-T"),
        start: str = option("start"),
        start_from: Optional[Path] = typer.Option(None, "--from", help="Start from a saved solution (.h5)."),
        seed: int = option("seed"),
        max_iterations: int = option("max_iterations"),
        distance_nm: Optional[float] = option("distance_nm", "--distance", "-d", default=None),
        out: Path = typer.Option(..., "--out", "-o", help="Output solution file (.h5)."),
        overwrite: bool = OverwriteOpt, force: bool = ForceOpt, as_json: bool = JsonOpt):
    """Self-consistent Hubbard + Coulomb mean field of TBG; writes a MeanFieldSolution."""
    from rich.progress import BarColumn, Progress, TextColumn

    from ..io import check_output, overwriting
    from ..meanfield import MeanFieldSolution, solve

    check_output(out, "MeanFieldSolution", overwrite)
    interaction = _interaction(hubbard_u_ev, dielectric, coulomb, gate_distance_nm, fock)
    _scf_cost(index, scf_kgrid, force)
    tb = _tb(index, distance_nm)
    first = MeanFieldSolution.load(start_from) if start_from is not None else start
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=True) as bar:
        task = bar.add_task(f"SCF i={index} U={hubbard_u_ev} eV", total=max_iterations, info="")

        def report(it, res, f):
            bar.update(task, completed=it, info=f"it {it}  max|dn| {res:.2e}  F {f:.6f} eV")

        sol = solve(tb, interaction, filling=None if mu_ev is not None else filling, mu_ev=mu_ev,
                    kgrid=scf_kgrid, temperature_k=temperature_k, start=first, seed=seed,
                    max_iterations=max_iterations, callback=report)
    with overwriting(out if overwrite else None):
        sol.save(out)
    info = sol.summary()
    info["out"] = str(out)
    if as_json:
        emit_json(info)
        return
    state = "converged" if sol.converged else "NOT converged"
    result_console.print(f"{state} in {sol.iterations} iterations ({sol.wall_time_s:.1f} s), final max|dn| "
                         f"{info['final_residual']:.1e}; mu = {sol.mu_ev:.5f} eV, F = {sol.free_energy_ev:.7f} "
                         f"eV/cell", highlight=False)
    result_console.print(f"staggered moment {info['staggered_magnetization']:.4f}, max local moment "
                         f"{info['max_local_moment']:.4f}, FM moment {info['ferromagnetic_moment']:.4f} mu_B/site, "
                         f"charge modulation {info['charge_modulation']:.4f} e -> {out}", highlight=False)


@app.command("sweep-u")
@friendly
def sweep_u_cmd(index: int = option("index", "-i"),
                hubbard_u_ev_min: float = option("hubbard_u_ev", "--u-min", default=0.0,
                                                 flag="--hubbard-u-ev-min", help="Smallest U"),
                hubbard_u_ev_max: float = option("hubbard_u_ev", "--u-max", default=6.0,
                                                 flag="--hubbard-u-ev-max", help="Largest U"),
                hubbard_u_step_ev: float = option("hubbard_u_step_ev"),
                filling: float = option("filling", "-n"),
                scf_kgrid: int = option("scf_kgrid", "--kgrid", "-k"),
                dielectric: float = option("dielectric", "--eps"),
                coulomb: str = option("coulomb"),
                gate_distance_nm: Optional[float] = option("gate_distance_nm", "--gate-distance", default=None),
                temperature_k: float = option("temperature_k", "--temperature", "-T"),
                start: str = option("start"),
                directions: str = option("directions"),
                out: Path = typer.Option(Path("magnetization_vs_u.png"), "--out", "-o", help="Plot (PNG)."),
                table: Optional[Path] = typer.Option(None, "--table", help="Also write the table as JSON."),
                overwrite: bool = OverwriteOpt, force: bool = ForceOpt, as_json: bool = JsonOpt):
    """Magnetization vs U with continuation (up and down, lowest free energy kept) and a plot."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..io import FIGURE, check_output, write_json
    from ..meanfield import sweep_u
    from ..parameters import parameter
    from ..plot import save_figure, u_sweep

    parameter("hubbard_u_ev").check_range(hubbard_u_ev_min, hubbard_u_ev_max, "--u-min/--u-max")
    check_output(out, FIGURE, overwrite)
    if table is not None:
        check_output(table, "USweepTable", overwrite)
    dirs = {"both": ("up", "down"), "up": ("up",), "down": ("down",)}[directions]
    u = np.round(np.arange(hubbard_u_ev_min, hubbard_u_ev_max + 0.5 * hubbard_u_step_ev, hubbard_u_step_ev), 10)
    _scf_cost(index, scf_kgrid, force)
    tb = _tb(index, None)
    interaction = _interaction(0.0, dielectric, coulomb, gate_distance_nm)
    with Progress(TextColumn("U sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("sweep", total=len(u) * len(dirs), info="")

        def report(done, total, sol):
            o = sol.orders()
            bar.update(task, completed=done, info=f"{sol.params['sweep_pass']} U={sol.hubbard_u_ev:.2f} eV "
                                                  f"m_s={o['staggered_magnetization']:.3f} it={sol.iterations}")

        res = sweep_u(tb, interaction, u, directions=dirs, start=start, progress=report, filling=filling,
                      kgrid=scf_kgrid, temperature_k=temperature_k)
    rows = res.table()
    ax = u_sweep(res, title=f"i = {index}, {scf_kgrid}x{scf_kgrid} k, eps = {dielectric:g}, {coulomb}")
    save_figure(ax.figure, out, overwrite=overwrite)
    if table is not None:
        write_json(table, rows, "USweepTable", overwrite=overwrite)
    if as_json:
        emit_json(rows)
        return
    n_bad = sum(not r["converged"] for r in rows)
    result_console.print(f"{len(rows)} U values, mean {res.mean_iterations:.1f} iterations per solve"
                         + (f", {n_bad} not converged" if n_bad else "") + f"; plot -> {out}", highlight=False)


@app.command()
@friendly
def ldos(solution: Path = typer.Argument(..., help="MeanFieldSolution file written by `moirestm scf`."),
         bias_ev: List[float] = option("bias_ev", "--bias", "-b", default=[0.0],
                                       help="Bias relative to E_F (repeatable)"),
         broadening_ev: float = option("broadening_ev", "--broadening"),
         ldos_kind: str = option("ldos_kind"),
         ldos_kgrid: Optional[int] = option("ldos_kgrid", default=None,
                                            help="LDOS k grid (default: the solver's rule)"),
         n_cells: int = option("n_cells"),
         pixels_per_nm: float = option("pixels_per_nm"),
         spin: str = option("spin"),
         out: Path = typer.Option(..., "--out", "-o", help="PNG of the STM map (first bias)."),
         save_ldos: Optional[Path] = typer.Option(None, "--save-ldos", help="Also write the SiteLDOS (.h5)."),
         save_map: Optional[Path] = typer.Option(None, "--save-map", help="Also write the STMMap (.h5)."),
         overwrite: bool = OverwriteOpt, as_json: bool = JsonOpt):
    """Site LDOS and STM map of a saved mean-field solution."""
    from ..errors import MoireSTMError
    from ..io import FIGURE, check_output, overwriting
    from ..meanfield import MeanFieldSolution
    from ..observables import site_ldos, stm_map
    from ..plot import save_figure, stm_map as draw

    if not bias_ev:
        raise MoireSTMError("--bias: give at least one bias")
    pngs = [out if b == 0 else out.with_name(f"{out.stem}_{b}{out.suffix}") for b in range(len(bias_ev))]
    for path in pngs:
        check_output(path, FIGURE, overwrite)
    for path, kind in ((save_ldos, "SiteLDOS"), (save_map, "STMMap")):
        if path is not None:
            check_output(path, kind, overwrite)
    sol = MeanFieldSolution.load(solution)
    if not sol.converged:
        console.print(f"warning: {solution} holds a NOT converged solution "
                      f"(final max|dn| {sol.residuals[-1]:.1e})", highlight=False)
    extra = {}
    if ldos_kgrid is not None:
        if "ldos_kgrid" not in inspect.signature(site_ldos).parameters:
            raise MoireSTMError("--ldos-kgrid is not supported by this version of site_ldos")
        extra["ldos_kgrid"] = ldos_kgrid
    ld = site_ldos(sol, bias_ev, broadening_ev, ldos_kind, **extra)
    rows = []
    for b, path in enumerate(pngs):
        image = stm_map(ld, bias_index=b, n_cells=n_cells, pixels_per_nm=pixels_per_nm, spin=spin)
        save_figure(draw(image).figure, path, overwrite=overwrite)
        if b == 0 and save_map is not None:
            image.save(save_map, overwrite=overwrite)
        rows.append({"bias_ev": float(ld.bias_ev[b]), "pixels": list(image.image.shape), "plot": str(path)})
        if not as_json:
            result_console.print(f"bias {ld.bias_ev[b] * 1e3:+.1f} meV: map {image.image.shape[1]}x"
                                 f"{image.image.shape[0]} px -> {path}", highlight=False)
    if save_ldos is not None:
        with overwriting(save_ldos if overwrite else None):
            ld.save(save_ldos)
        if not as_json:
            result_console.print(f"site LDOS -> {save_ldos}", highlight=False)
    if as_json:
        emit_json({"maps": rows, "site_ldos": None if save_ldos is None else str(save_ldos),
                   "stm_map": None if save_map is None else str(save_map)})
