"""The Typer application shared by all command modules: options from the registry, one-line errors.

Every option that carries a parameter is made by :func:`option` from its
:mod:`moirestm.parameters` entry (flag, default, help, range) and named after it, so the
:func:`friendly` wrapper validates each value by the registry before the command runs; any
bad input (a registry range, a click type error, a :class:`MoireSTMError`) ends as one line
on standard error with exit code 2. Results go to standard output, progress to standard error.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

from ..errors import MoireSTMError
from ..parameters import REGISTRY, default_of, parameter

#: Commands in pipeline order (lattice -> tight binding -> mean field -> observables -> datasets ->
#: learning -> explanation -> measured maps); commands not listed follow in registration order.
PIPELINE = ("lattice", "bands", "dos", "magic-distance", "scf", "sweep-u", "ldos", "sweep", "dataset",
            "train", "evaluate", "predict", "baselines", "infer", "explain", "analyze", "report",
            "stm-info", "calibrate", "demo")
#: Suffixes of options that give one end or the step of a range of a registered parameter.
RANGE_SUFFIXES = ("_min", "_max")


class OneLineGroup(TyperGroup):
    """Top-level group: commands in pipeline order; usage errors printed as one line."""

    def list_commands(self, ctx) -> list[str]:
        names = list(self.commands)
        rank = {n: i for i, n in enumerate(PIPELINE)}
        return sorted(names, key=lambda n: (rank.get(n, len(PIPELINE)), names.index(n)))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.Abort:
            if not standalone_mode:
                raise
            sys.stderr.write("aborted\n")
            sys.exit(1)
        except TyperException as exc:  # click's usage errors (typer vendors click)
            if not standalone_mode or not hasattr(exc, "format_message"):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                sys.stderr.write(f"error: {' '.join(exc.format_message().split())}\n")
            sys.exit(exc.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="moirestm",
    cls=OneLineGroup,
    help="STM of twisted bilayer graphene: tight binding, mean field, FT-LDOS datasets, learning U.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)
#: Results for the user go to standard output; progress and errors to standard error.
result_console = Console()

_UNSET = object()


def option(name: str, *decls: str, default=_UNSET, flag: str | None = None, help: str | None = None,
           command: str | None = None, **kwargs):
    """A typer Option for the registered parameter ``name``: its flag, default, help and range.

    ``decls`` are extra (legacy or short) flags; ``command`` takes that command's own default from
    :data:`~moirestm.parameters.COMMAND_DEFAULTS`; ``default`` overrides the registry default for one
    command. The function parameter must be called ``name`` (or ``name`` + ``_min``/``_max``) so
    that :func:`friendly` validates it.
    """
    p = parameter(name)
    rng = "" if p.kind == "bool" else f" Valid: {p.range_text()}."
    text = (help or p.help[:1].upper() + p.help[1:]) + "." + rng
    value = default_of(name, command) if default is _UNSET else default
    flag = flag or p.flag
    decls = tuple(d for d in dict.fromkeys(decls) if d != flag)
    if p.kind == "bool":
        return typer.Option(value, f"{flag}/--no-{flag[2:]}", *decls, help=text, **kwargs)
    return typer.Option(value, flag, *decls, help=text, **kwargs)


def registry_name(param: str) -> str | None:
    """The registered parameter a command argument named ``param`` carries (None: not a parameter)."""
    if param in REGISTRY:
        return param
    for suffix in RANGE_SUFFIXES:
        if param.endswith(suffix) and param[: -len(suffix)] in REGISTRY:
            return param[: -len(suffix)]
    return None


def _validated(func, kwargs: dict) -> dict:
    params = inspect.signature(func).parameters
    out = {}
    for key, value in kwargs.items():
        name = registry_name(key)
        if name is None or key not in params:
            out[key] = value
            continue
        p = REGISTRY[name]
        where = "--" + key.replace("_", "-") if p.name != key else p.flag
        if isinstance(value, (list, tuple)):
            out[key] = [p.validate(v, where) for v in value]
        elif value is None and not p.optional:
            out[key] = None  # an option left unset: the command picks the default
        else:
            out[key] = p.validate(value, where)
    return out


def friendly(func):
    """Validate registered parameters; turn MoireSTMError into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **_validated(func, kwargs))
        except MoireSTMError as exc:
            sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
            raise typer.Exit(code=2) from None

    return wrapper


def emit_json(data) -> None:
    """Print ``data`` as JSON on standard output."""
    from ..io import _jsonable

    sys.stdout.write(json.dumps(_jsonable(data), indent=2, default=str) + "\n")


def check_targets(names) -> list[str]:
    """Learning targets must be registered numeric parameters."""
    out = []
    for name in names:
        p = parameter(name)
        if p.kind not in ("float", "int"):
            raise MoireSTMError(f"target {name!r} is not a numeric parameter")
        out.append(p.name)
    return out
