"""`moirestm sweep ...` and `moirestm dataset ...`: build, inspect, check, export and import datasets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._app import app, console, emit_json, friendly, option, result_console

#: A store is extended, never replaced: another name is the way out.
STORE_HINT = "give the name of a new or existing dataset store"

sweep_app = typer.Typer(help="Run parameter sweeps into FT-LDOS dataset stores.", no_args_is_help=True)
dataset_app = typer.Typer(help="Inspect, check, export and import FT-LDOS dataset stores.",
                          no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
app.add_typer(dataset_app, name="dataset")


def _checked_sweep(spec: str):
    """Load a sweep and validate every value and option table by the parameter registry."""
    from ..dataset import Sweep
    from ..parameters import validate_sweep

    sweep = Sweep.load(spec)
    validate_sweep(sweep.values, {"interaction": sweep.interaction, "solver": sweep.solver,
                                  "stm": {k: v for k, v in sweep.stm.items()},
                                  "ft": sweep.ft}, where=f"sweep {sweep.name!r}:")
    return sweep


def failure_reasons(errors: list[str]) -> list[tuple[int, str]]:
    """Distinct failure reasons (the text after ``key:``) with their counts, most frequent first."""
    from collections import Counter

    reasons = Counter(line.split(": ", 1)[-1].strip() or "no message" for line in errors)
    return [(n, text) for text, n in reasons.most_common()]


@sweep_app.command("run")
@friendly
def sweep_run(
    spec: str = typer.Argument(..., help="sweep TOML file or built-in name (demo, standard, demo-sbi, standard-sbi)"),
    out: Path = typer.Option(..., "--out", "-o", help="dataset store (.h5, or .zarr for large sweeps); resumed"),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, or 'synchronous'"),
    workers: Optional[int] = option("workers", default=None),
    retry_failed: bool = typer.Option(True, help="recompute samples stored as failed"),
    commit_interval_s: float = option("commit_interval_s"),
    limit_tasks: Optional[int] = option("limit_tasks", default=None),
    json_out: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
):
    """Compute every missing sample of a sweep (resumable; kill and rerun at any time).

    Exit code 1 when every sample computed in this run failed; a partial failure is reported
    with the number of failed samples and their reasons.
    """
    from ..dataset import run_sweep
    from ..io import check_output

    sweep = _checked_sweep(spec)
    check_output(out, "FTLDOSStore", hint=STORE_HINT)
    summary = run_sweep(sweep, out, scheduler=scheduler, workers=workers, retry_failed=retry_failed,
                        commit_interval_s=commit_interval_s, console=console, limit_tasks=limit_tasks)
    if json_out:
        emit_json(summary.as_dict())
    else:
        result_console.print(f"{summary.written_ok} samples written, {summary.written_failed} failed, "
                             f"{summary.skipped} already present, {summary.tasks} tasks on {summary.workers} "
                             f"worker(s) in {summary.wall_time_s:.1f} s -> {out}", highlight=False)
    if summary.written_failed:
        reasons = "; ".join(f"{n} x {text}" for n, text in failure_reasons(summary.errors)[:3])
        computed = summary.written_ok + summary.written_failed
        if summary.written_ok == 0:
            sys.stderr.write(f"error: all {computed} samples computed failed ({reasons})\n")
            raise typer.Exit(code=1)
        sys.stderr.write(f"warning: {summary.written_failed} of {computed} samples failed ({reasons})\n")


@sweep_app.command("show")
@friendly
def sweep_show(spec: str = typer.Argument(..., help="sweep TOML file or built-in name"),
               toml: bool = typer.Option(False, help="print the definition as TOML")):
    """Validate a sweep (every value by the parameter registry) and show its size and axes (or its TOML)."""
    sweep = _checked_sweep(spec)
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
def dataset_check(path: Path = typer.Argument(..., help="dataset store"),
                  json_out: bool = typer.Option(False, "--json", help="print the problems as JSON")):
    """Validate integrity (keys, statuses, images); exit code 1 on problems."""
    from ..dataset.export import check

    problems = check(path)
    if json_out:
        emit_json({"path": str(path), "ok": not problems, "problems": problems})
    else:
        for line in problems:
            console.print(f"problem: {line}", highlight=False)
        if not problems:
            result_console.print(f"{path}: ok", highlight=False)
    if problems:
        raise typer.Exit(code=1)


@dataset_app.command("merge")
@friendly
def dataset_merge(
    out: Path = typer.Argument(..., help="store to merge into (created when missing)"),
    sources: list[Path] = typer.Argument(..., help="stores to copy samples from, in order"),
    replace: bool = typer.Option(False, help="later sources replace samples already present"),
    json_out: bool = typer.Option(False, "--json", help="print the counts as JSON"),
):
    """Merge stores (e.g. sweeps run on several machines, or chains recomputed later) into one."""
    from ..dataset.store import merge_stores
    from ..io import check_output

    check_output(out, "FTLDOSStore", hint=STORE_HINT)
    counts = merge_stores(out, sources, replace=replace)
    if json_out:
        emit_json({**counts, "out": str(out)})
        return
    result_console.print(f"{counts['copied']} samples copied, {counts['skipped']} already present -> {out}",
                         highlight=False)


@dataset_app.command("export")
@friendly
def dataset_export(
    path: Path = typer.Argument(..., help="dataset store"),
    outdir: Path = typer.Argument(..., help="output folder (images/ + index.csv)"),
    status: str = typer.Option("ok", help="which samples"),
    colormap: Optional[str] = typer.Option(None, help="also write colour PNGs (viewing only)"),
    overwrite: bool = typer.Option(False, help="allow a non-empty output folder"),
    json_out: bool = typer.Option(False, "--json", help="print the count as JSON"),
):
    """Export images as grayscale-faithful 16-bit PNGs with an index.csv of parameters."""
    from ..dataset.export import export_png
    from ..errors import MoireSTMError
    from ..io import file_kind

    if outdir.exists() and not outdir.is_dir():
        raise MoireSTMError(f"cannot export into {outdir}: it is a {file_kind(outdir)}, not a folder")
    n = export_png(path, outdir, status=status, colormap=colormap, overwrite=overwrite)
    if json_out:
        emit_json({"images": n, "out": str(outdir)})
        return
    result_console.print(f"{n} images -> {outdir}", highlight=False)


@dataset_app.command("import")
@friendly
def dataset_import(
    files: List[Path] = typer.Argument(..., help="LDOS text files (x y LDOS; U in the name: ...-U2.5...)"),
    out: Path = typer.Option(..., "--out", "-o", help="dataset store (created or extended)"),
    length_unit: str = option("length_unit"),
    ft_size: int = option("ft_size", default=256),
    apodisation: str = option("apodisation"),
    remove_q0: bool = option("remove_q0", default=True),
    log_scale: bool = option("log_scale", default=False),
    json_out: bool = typer.Option(False, "--json", help="print the counts as JSON"),
):
    """Import LDOS text files of the reference code into a store."""
    from ..dataset.importer import import_ldos_files
    from ..io import check_output

    check_output(out, "FTLDOSStore", hint=STORE_HINT)
    counts = import_ldos_files(files, out, length_unit=length_unit,
                               ft={"size": ft_size, "apodisation": apodisation, "remove_q0": remove_q0,
                                   "log_scale": log_scale})
    if json_out:
        emit_json({**counts, "out": str(out)})
        return
    result_console.print(f"{counts['imported']} imported, {counts['skipped']} already present -> {out}",
                         highlight=False)
