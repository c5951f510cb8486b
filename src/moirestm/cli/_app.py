"""The Typer application shared by all command modules, and the error handling wrapper."""

from __future__ import annotations

import functools
import json
import sys

import typer
from rich.console import Console

from ..errors import MoireSTMError

app = typer.Typer(
    name="moirestm",
    help="STM of twisted bilayer graphene: tight binding, mean field, FT-LDOS datasets, learning U.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
#: Results for the user go to standard output; progress and errors to standard error.
result_console = Console()


def friendly(func):
    """Turn MoireSTMError (bad input, unusable file) into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MoireSTMError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=2) from None

    return wrapper


def emit_json(data) -> None:
    """Print ``data`` as JSON on standard output."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
