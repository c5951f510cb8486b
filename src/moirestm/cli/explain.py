"""Explanation commands: explain (attribution), analyze (dataset), report (HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, emit_json, friendly


def _samples(samples: Optional[str]):
    if samples is None:
        return "test"
    if samples in ("test", "val", "train", "all"):
        return samples
    return [s.strip() for s in samples.split(",") if s.strip()]


@app.command("explain")
@friendly
def explain_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    samples: Optional[str] = typer.Option(None, help="test | val | train | all, or comma-separated sample keys "
                                                     "(default test)"),
    data: Optional[Path] = typer.Option(None, help="store (default: the run's training store)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default RUN/explain)"),
    method: list[str] = typer.Option(["gradcam", "guided_backprop", "integrated_gradients"],
                                     help="attribution method(s); repeat for several"),
    max_samples: int = typer.Option(24, help="at most this many samples, evenly spaced in U"),
    n_steps: int = typer.Option(32, help="integrated-gradients steps"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Grad-CAM, guided backprop and integrated gradients; shares by peak region vs U; PNG overlays."""
    from ..explain.attribution import explain

    if threads:
        import torch

        torch.set_num_threads(threads)
    res = explain(run, data, samples=_samples(samples), out=out, methods=method, max_samples=max_samples,
                  n_steps=n_steps)
    if json_out:
        emit_json(res.summary())
        return
    for m, t in res.trends.items():
        rho = "–" if t["rho"] is None else f"{t['rho']:+.2f} (p = {t['p_value']:.2g})"
        console.print(f"{m}: n = {t['n']}, ρ(U, Bragg fraction) = {rho}: {t['finding']}")
    console.print(f"written to {res.out_dir}")


@app.command("analyze")
@friendly
def analyze_cmd(
    data: Path = typer.Argument(..., help="dataset store (.h5)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default DATA stem + '-analysis')"),
    method: str = typer.Option("derivative", help="headline U_c: derivative (max dm/dU) | tanh (fit) | onset (10 % of the change)"),
    order_parameter: str = typer.Option("mean_abs_moment", help="order parameter of the headline U_c"),
    max_samples: int = typer.Option(600, help="samples in the similarity matrix and PCA"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Image similarity, PCA, peak intensities and order parameters vs U with a crossover estimate U_c."""
    from ..explain.analysis import analyze

    out = out or data.with_name(data.stem + "-analysis")
    res = analyze(data, out, max_samples=max_samples, crossover_method=method, order_parameter=order_parameter)
    if json_out:
        emit_json(res.summary())
        return
    s = res.similarity_stats
    console.print(f"{len(res.keys)} samples; cosine similarity min {s['min']:.6f}, mean {s['mean']:.6f}")
    console.print("PCA explained variance: " + ", ".join(f"{v:.3f}" for v in res.pca_explained[:4]))
    console.print(f"U_c ({res.u_c_parameter}, {res.u_c_method}) = {res.u_c:.3f} eV" if res.u_c == res.u_c
                  else "no crossover estimate")
    for note in res.notes:
        console.print(f"note: {note}")
    console.print(f"written to {out}")


@app.command("report")
@friendly
def report_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, help="store (default: the run's training store)"),
    out: Optional[Path] = typer.Option(None, help="HTML file (default RUN/report.html)"),
    samples: Optional[str] = typer.Option(None, help="samples to attribute (default test)"),
    max_samples: int = typer.Option(24, help="at most this many attributed samples"),
    n_steps: int = typer.Option(32, help="integrated-gradients steps"),
    baselines: bool = typer.Option(True, help="fit the classical baselines for comparison"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
) -> None:
    """Write one self-contained HTML report (figures embedded) and print its path."""
    from ..explain.report import build_report

    if threads:
        import torch

        torch.set_num_threads(threads)
    path = build_report(run, data, out, samples=_samples(samples), max_samples=max_samples, n_steps=n_steps,
                        baselines=baselines, progress=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(f"report written to {path}")
    typer.echo(str(path))
