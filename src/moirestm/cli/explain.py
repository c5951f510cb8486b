"""Explanation commands: explain (attribution), analyze (dataset), report (HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, emit_json, friendly, option, result_console


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
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default RUN/explain)"),
    attribution_method: list[str] = option("attribution_method", "--method",
                                           default=["gradcam", "guided_backprop", "integrated_gradients"],
                                           help="Attribution method(s); repeat for several"),
    max_samples: int = option("max_samples", help="At most this many samples, evenly spaced in U"),
    n_steps: int = option("n_steps"),
    threads: Optional[int] = option("threads"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Grad-CAM, guided backprop and integrated gradients; shares by peak region vs U; PNG overlays."""
    from ..explain.attribution import explain

    if threads:
        import torch

        torch.set_num_threads(threads)
    res = explain(run, data, samples=_samples(samples), out=out, methods=attribution_method, max_samples=max_samples,
                  n_steps=n_steps)
    if json_out:
        emit_json(res.summary())
        return
    for m, t in res.trends.items():
        rho = "–" if t["rho"] is None else f"{t['rho']:+.2f} (p = {t['p_value']:.2g})"
        result_console.print(f"{m}: n = {t['n']}, ρ(U, Bragg fraction) = {rho}: {t['finding']}", highlight=False)
    result_console.print(f"written to {res.out_dir}", highlight=False)


@app.command("analyze")
@friendly
def analyze_cmd(
    data: Path = typer.Argument(..., help="dataset store (.h5)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="output directory (default DATA stem + '-analysis')"),
    crossover_method: str = option("crossover_method", "--method",
                                   help="Headline U_c: derivative (max dm/dU), tanh (fit) or onset (10 % of the "
                                        "change)"),
    order_parameter: str = option("order_parameter"),
    max_samples: int = option("max_samples", default=600, help="Samples in the similarity matrix and PCA"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Image similarity, PCA, peak intensities and order parameters vs U with a crossover estimate U_c."""
    from ..explain.analysis import analyze

    out = out or data.with_name(data.stem + "-analysis")
    res = analyze(data, out, max_samples=max_samples, crossover_method=crossover_method,
                  order_parameter=order_parameter)
    if json_out:
        emit_json(res.summary())
        return
    s = res.similarity_stats
    say = result_console.print
    say(f"{len(res.keys)} samples; cosine similarity min {s['min']:.6f}, mean {s['mean']:.6f}", highlight=False)
    say("PCA explained variance: " + ", ".join(f"{v:.3f}" for v in res.pca_explained[:4]), highlight=False)
    say(f"U_c ({res.u_c_parameter}, {res.u_c_method}) = {res.u_c:.3f} eV" if res.u_c == res.u_c
        else "no crossover estimate", highlight=False)
    for note in res.notes:
        console.print(f"note: {note}", highlight=False)
    say(f"written to {out}", highlight=False)


@app.command("report")
@friendly
def report_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, help="store (default: the run's training store)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN/report.html)"),
    samples: Optional[str] = typer.Option(None, help="samples to attribute (default test)"),
    max_samples: int = option("max_samples", help="At most this many attributed samples"),
    n_steps: int = option("n_steps"),
    baselines: bool = typer.Option(True, help="fit the classical baselines for comparison"),
    threads: Optional[int] = option("threads"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT even if it holds another kind of file"),
    json_out: bool = typer.Option(False, "--json", help="print the report path as JSON"),
) -> None:
    """Write one self-contained HTML report (figures embedded) and print its path."""
    from ..explain.report import build_report

    if threads:
        import torch

        torch.set_num_threads(threads)
    path = build_report(run, data, out, samples=_samples(samples), max_samples=max_samples, n_steps=n_steps,
                        baselines=baselines, progress=lambda m: console.print(f"[dim]{m}[/]"),
                        overwrite=overwrite)
    console.print(f"report written to {path}")
    if json_out:
        emit_json({"report": str(path), "data": str(path.with_suffix(".json"))})
        return
    typer.echo(str(path))
