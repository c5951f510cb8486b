"""`moirestm sweep ...` and `moirestm dataset ...`: build, inspect, check, export and import datasets."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._app import app, console, emit_json, friendly

sweep_app = typer.Typer(help="Run parameter sweeps into FT-LDOS dataset stores.", no_args_is_help=True)
dataset_app = typer.Typer(help="Inspect, check, export and import FT-LDOS dataset stores.",
                          no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
app.add_typer(dataset_app, name="dataset")


@sweep_app.command("run")
@friendly
def sweep_run(
    spec: str = typer.Argument(..., help="sweep TOML file or built-in name (demo, standard)"),
    out: Path = typer.Option(..., "--out", "-o", help="dataset store (HDF5); resumed if it exists"),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, or 'synchronous'"),
    workers: Optional[int] = typer.Option(None, help="local-cluster worker processes (default: cores)"),
    retry_failed: bool = typer.Option(True, help="recompute samples stored as failed"),
    commit_interval_s: float = typer.Option(30.0, help="merge finished samples into the file this often"),
    limit_tasks: Optional[int] = typer.Option(None, help="stop after this many tasks (timing runs)"),
    json_out: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
):
    """Compute every missing sample of a sweep (resumable; kill and rerun at any time)."""
    from ..dataset import run_sweep

    summary = run_sweep(spec, out, scheduler=scheduler, workers=workers, retry_failed=retry_failed,
                        commit_interval_s=commit_interval_s, console=console, limit_tasks=limit_tasks)
    if json_out:
        emit_json(summary.as_dict())
        return
    console.print(f"{summary.written_ok} samples written, {summary.written_failed} failed, "
                  f"{summary.skipped} already present, {summary.tasks} tasks on {summary.workers} "
                  f"worker(s) in {summary.wall_time_s:.1f} s -> {out}")
    for line in summary.errors[:5]:
        console.print(f"  [yellow]failed[/] {line}")


@sweep_app.command("show")
@friendly
def sweep_show(spec: str = typer.Argument(..., help="sweep TOML file or built-in name"),
               toml: bool = typer.Option(False, help="print the definition as TOML")):
    """Validate a sweep and show its size and axes (or its TOML)."""
    from ..dataset import Sweep

    sweep = Sweep.load(spec)
    if toml:
        typer.echo(sweep.to_toml())
        return
    emit_json({**sweep.summary(), "tasks": len(sweep.tasks())})


@dataset_app.command("info")
@friendly
def dataset_info(path: Path = typer.Argument(..., help="dataset store")):
    """Summary of a store: provenance, counts, parameter ranges."""
    from ..dataset.export import info

    emit_json(info(path))


@dataset_app.command("check")
@friendly
def dataset_check(path: Path = typer.Argument(..., help="dataset store")):
    """Validate integrity (keys, statuses, images); exit code 1 on problems."""
    from ..dataset.export import check

    problems = check(path)
    for line in problems:
        console.print(f"[red]problem:[/] {line}")
    if problems:
        raise typer.Exit(code=1)
    console.print(f"{path}: ok")


@dataset_app.command("merge")
@friendly
def dataset_merge(
    out: Path = typer.Argument(..., help="store to merge into (created when missing)"),
    sources: list[Path] = typer.Argument(..., help="stores to copy samples from, in order"),
    replace: bool = typer.Option(False, help="later sources replace samples already present"),
):
    """Merge stores (e.g. sweeps run on several machines, or chains recomputed later) into one."""
    from ..dataset.store import merge_stores

    counts = merge_stores(out, sources, replace=replace)
    console.print(f"{counts['copied']} samples copied, {counts['skipped']} already present -> {out}")


@dataset_app.command("export")
@friendly
def dataset_export(
    path: Path = typer.Argument(..., help="dataset store"),
    outdir: Path = typer.Argument(..., help="output folder (images/ + index.csv)"),
    status: str = typer.Option("ok", help="which samples"),
    colormap: Optional[str] = typer.Option(None, help="also write colour PNGs (viewing only)"),
    overwrite: bool = typer.Option(False, help="allow a non-empty output folder"),
):
    """Export images as grayscale-faithful 16-bit PNGs with an index.csv of parameters."""
    from ..dataset.export import export_png

    n = export_png(path, outdir, status=status, colormap=colormap, overwrite=overwrite)
    console.print(f"{n} images -> {outdir}")


@dataset_app.command("import")
@friendly
def dataset_import(
    files: List[Path] = typer.Argument(..., help="LDOS text files (x y LDOS; U in the name: ...-U2.5...)"),
    out: Path = typer.Option(..., "--out", "-o", help="dataset store (created or extended)"),
    length_unit: str = typer.Option("auto", help="auto, nm, angstrom, bond or lattice"),
    size: int = typer.Option(256, help="FT image side in pixels"),
    apodisation: str = typer.Option("none", help="none, hann or blackman"),
    remove_q0: bool = typer.Option(True, help="remove the q = 0 peak"),
    log_scale: bool = typer.Option(False, help="store log10 magnitudes"),
):
    """Import LDOS text files of the reference code into a store."""
    from ..dataset.importer import import_ldos_files

    counts = import_ldos_files(files, out, length_unit=length_unit,
                               ft={"size": size, "apodisation": apodisation, "remove_q0": remove_q0,
                                   "log_scale": log_scale})
    console.print(f"{counts['imported']} imported, {counts['skipped']} already present -> {out}")
