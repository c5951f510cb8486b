"""Commands for the mean field and its observables: scf, ldos, sweep-u."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._app import app, console, emit_json, friendly

IndexOpt = typer.Option(9, "--index", "-i", help="Commensurate index i of the (i, i+1) family.")
KgridOpt = typer.Option(1, "--kgrid", "-k", help="n of the n x n Monkhorst-Pack grid (1 = Gamma only).")
EpsOpt = typer.Option(10.0, "--eps", help="Dielectric constant of the long-range Coulomb term.")
CoulombOpt = typer.Option("ewald", "--coulomb", help="Long-range kernel: ewald, gated or none.")
GateOpt = typer.Option(None, "--gate-distance", help="Gate distance in nm for --coulomb gated.")
FillingOpt = typer.Option(0.0, "--filling", "-n", help="Electrons per moiré cell relative to neutrality.")
TempOpt = typer.Option(10.0, "--temperature", "-T", help="Temperature in K.")
StartOpt = typer.Option("afm", "--start", help="Starting state: pm, fm, afm, layer_afm, random.")


def _interaction(u: float, eps: float, coulomb: str, gate: Optional[float], fock: bool = False):
    from ..meanfield import Interaction

    kwargs = {"hubbard_u_ev": u, "dielectric": eps, "coulomb": coulomb, "fock": fock}
    if gate is not None:
        kwargs["gate_distance_nm"] = gate
    return Interaction(**kwargs)


def _tb(index: int, distance: Optional[float]):
    from ..constants import INTERLAYER_DISTANCE_NM
    from ..hamiltonian import TightBinding
    from ..lattice import TBGLattice

    return TightBinding(TBGLattice(index, INTERLAYER_DISTANCE_NM if distance is None else distance))


@app.command()
@friendly
def scf(index: int = IndexOpt,
        hubbard_u: float = typer.Option(3.0, "--U", "-U", help="Hubbard U in eV."),
        filling: Optional[float] = FillingOpt,
        mu: Optional[float] = typer.Option(None, "--mu", help="Fixed chemical potential in eV (instead of filling)."),
        kgrid: int = KgridOpt, eps: float = EpsOpt, coulomb: str = CoulombOpt, gate: Optional[float] = GateOpt,
        fock: bool = typer.Option(False, "--fock", help="Add the Fock term of the long-range interaction."),
        temperature: float = TempOpt, start: str = StartOpt,
        start_from: Optional[Path] = typer.Option(None, "--from", help="Start from a saved solution (.h5)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random start."),
        max_iter: int = typer.Option(300, "--max-iter", help="Maximum SCF iterations."),
        distance: Optional[float] = typer.Option(None, "--distance", "-d", help="Interlayer distance in nm."),
        out: Path = typer.Option(..., "--out", "-o", help="Output solution file (.h5)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")):
    """Self-consistent Hubbard + Coulomb mean field of TBG; writes a MeanFieldSolution."""
    from ..meanfield import MeanFieldSolution, solve

    interaction = _interaction(hubbard_u, eps, coulomb, gate, fock)
    tb = _tb(index, distance)
    first = MeanFieldSolution.load(start_from) if start_from is not None else start
    if mu is not None:
        filling = None
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=True) as bar:
        task = bar.add_task(f"SCF i={index} U={hubbard_u} eV", total=max_iter, info="")

        def report(it, res, f):
            bar.update(task, completed=it, info=f"it {it}  max|dn| {res:.2e}  F {f:.6f} eV")

        sol = solve(tb, interaction, filling=filling, mu_ev=mu, kgrid=kgrid, temperature_k=temperature,
                    start=first, seed=seed, max_iterations=max_iter, callback=report)
    sol.save(out)
    info = sol.summary()
    info["out"] = str(out)
    if as_json:
        emit_json(info)
        return
    state = "[green]converged[/]" if sol.converged else "[bold red]NOT converged[/]"
    console.print(f"{state} in {sol.iterations} iterations ({sol.wall_time_s:.1f} s), final max|dn| "
                  f"{info['final_residual']:.1e}; mu = {sol.mu_ev:.5f} eV, F = {sol.free_energy_ev:.7f} eV/cell")
    console.print(f"staggered moment {info['staggered_magnetization']:.4f}, max local moment "
                  f"{info['max_local_moment']:.4f}, FM moment {info['ferromagnetic_moment']:.4f} mu_B/site, "
                  f"charge modulation {info['charge_modulation']:.4f} e -> {out}")


@app.command()
@friendly
def ldos(solution: Path = typer.Argument(..., help="MeanFieldSolution file written by `moirestm scf`."),
         bias: List[float] = typer.Option([0.0], "--bias", "-b", help="Bias relative to E_F in eV (repeatable)."),
         broadening: float = typer.Option(0.01, "--broadening", help="LDOS broadening eta in eV."),
         kind: str = typer.Option("lorentzian", "--kind", help="lorentzian or gaussian."),
         cells: int = typer.Option(3, "--cells", help="Map size in moiré cells per side."),
         pixels_per_nm: float = typer.Option(20.0, "--ppn", help="Map resolution, pixels per nm."),
         spin: str = typer.Option("total", "--spin", help="total, up, down or polarisation."),
         out: Path = typer.Option(..., "--out", "-o", help="PNG of the STM map (first bias)."),
         save_ldos: Optional[Path] = typer.Option(None, "--save-ldos", help="Also write the SiteLDOS (.h5)."),
         save_map: Optional[Path] = typer.Option(None, "--save-map", help="Also write the STMMap (.h5).")):
    """Site LDOS and STM map of a saved mean-field solution."""
    from ..meanfield import MeanFieldSolution
    from ..observables import site_ldos, stm_map

    sol = MeanFieldSolution.load(solution)
    if not sol.converged:
        console.print(f"[yellow]warning:[/] {solution} holds a NOT converged solution "
                      f"(final max|dn| {sol.residuals[-1]:.1e})")
    ld = site_ldos(sol, bias, broadening, kind)
    for b in range(len(ld.bias_ev)):
        image = stm_map(ld, bias_index=b, n_cells=cells, pixels_per_nm=pixels_per_nm, spin=spin)
        path = out if b == 0 else out.with_name(f"{out.stem}_{b}{out.suffix}")
        image.plot(path)
        if b == 0 and save_map is not None:
            image.save(save_map)
        console.print(f"bias {ld.bias_ev[b] * 1e3:+.1f} meV: map {image.image.shape[1]}x{image.image.shape[0]} "
                      f"px -> {path}")
    if save_ldos is not None:
        ld.save(save_ldos)
        console.print(f"site LDOS -> {save_ldos}")


@app.command("sweep-u")
@friendly
def sweep_u_cmd(index: int = IndexOpt,
                u_min: float = typer.Option(0.0, "--u-min", help="Smallest U in eV."),
                u_max: float = typer.Option(6.0, "--u-max", help="Largest U in eV."),
                u_step: float = typer.Option(0.5, "--u-step", help="U step in eV."),
                filling: float = FillingOpt, kgrid: int = KgridOpt, eps: float = EpsOpt,
                coulomb: str = CoulombOpt, gate: Optional[float] = GateOpt, temperature: float = TempOpt,
                start: str = StartOpt,
                directions: str = typer.Option("both", "--directions", help="up, down or both."),
                out: Path = typer.Option(Path("magnetization_vs_u.png"), "--out", "-o", help="Plot (PNG)."),
                table: Optional[Path] = typer.Option(None, "--table", help="Also write the table as JSON."),
                as_json: bool = typer.Option(False, "--json", help="Print the table as JSON.")):
    """Magnetization vs U with continuation (up and down, lowest free energy kept) and a plot."""
    import json

    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..errors import MoireSTMError
    from ..meanfield import sweep_u

    if not (np.isfinite(u_step) and u_step > 0):
        raise MoireSTMError(f"--u-step must be positive, got {u_step}")
    if u_max < u_min:
        raise MoireSTMError(f"--u-max ({u_max}) is below --u-min ({u_min})")
    dirs = {"both": ("up", "down"), "up": ("up",), "down": ("down",)}.get(directions)
    if dirs is None:
        raise MoireSTMError(f"--directions must be up, down or both, got {directions!r}")
    u = np.round(np.arange(u_min, u_max + 0.5 * u_step, u_step), 10)
    tb = _tb(index, None)
    interaction = _interaction(0.0, eps, coulomb, gate)
    with Progress(TextColumn("U sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("sweep", total=len(u) * len(dirs), info="")

        def report(done, total, sol):
            o = sol.orders()
            bar.update(task, completed=done, info=f"{sol.params['sweep_pass']} U={sol.hubbard_u_ev:.2f} eV "
                                                  f"m_s={o['staggered_magnetization']:.3f} it={sol.iterations}")

        res = sweep_u(tb, interaction, u, directions=dirs, start=start, progress=report, filling=filling,
                      kgrid=kgrid, temperature_k=temperature)
    rows = res.table()
    _plot_sweep(res, out, f"i = {index}, {kgrid}x{kgrid} k, eps = {eps:g}, {coulomb}")
    if table is not None:
        table.write_text(json.dumps(rows, indent=1))
    if as_json:
        emit_json(rows)
        return
    n_bad = sum(not r["converged"] for r in rows)
    console.print(f"{len(rows)} U values, mean {res.mean_iterations:.1f} iterations per solve"
                  + (f", [bold red]{n_bad} not converged[/]" if n_bad else "") + f"; plot -> {out}")


def _plot_sweep(res, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4), dpi=120)
    for key, label, style in (("staggered_magnetization", "staggered $m_s$", "o-"),
                              ("max_local_moment", r"max $|m_i|$", "s--"),
                              ("ferromagnetic_moment", "FM moment", "^:")):
        ax.plot(res.u_ev, [s.orders()[key] for s in res.best], style, ms=3, lw=1, label=label)
    bad = [u for u, s in zip(res.u_ev, res.best) if not s.converged]
    if bad:
        ax.plot(bad, [0.0] * len(bad), "rx", label="not converged")
    ax.set_xlabel("U (eV)")
    ax.set_ylabel(r"moment ($\mu_B$/site)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
