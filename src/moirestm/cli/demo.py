"""The `demo` command: the whole pipeline on the built-in small case."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, emit_json, friendly, option, result_console


@app.command()
@friendly
def demo(out: Path = typer.Option(Path("demo-output"), help="Output folder (rerunning reuses finished work)."),
         workers: Optional[int] = option("workers", default=None),
         as_json: bool = typer.Option(False, "--json", help="Print the timings and the report path as JSON.")):
    """Run lattice -> bands -> dataset -> training -> evaluation -> attribution -> HTML report (i = 5)."""
    from ..demo import run_demo

    result = run_demo(out, workers=workers, console=console)
    if as_json:
        emit_json({"timings_s": result.timings_s, "report": str(result.report.resolve())})
        return
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings_s.items())
    result_console.print(f"Demo finished ({timing}). Report: {result.report.resolve()}", highlight=False)
