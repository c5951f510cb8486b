"""The `demo` command: the whole pipeline on the built-in small case."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, friendly, result_console


@app.command()
@friendly
def demo(out: Path = typer.Option(Path("demo-output"), help="Output folder (rerunning reuses finished work)."),
         workers: Optional[int] = typer.Option(None, help="Dask worker processes (default: all cores).")):
    """Run lattice -> bands -> dataset -> training -> evaluation -> attribution -> HTML report (i = 5)."""
    from ..demo import run_demo

    result = run_demo(out, workers=workers, console=console)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings_s.items())
    result_console.print(f"Demo finished ({timing}). Report: {result.report.resolve()}", highlight=False)
