"""Command-line interface: a thin layer over the Python API.

Every module in this package registers its commands on the shared Typer ``app``;
they are discovered automatically, so adding a command group means adding a module.
"""

import importlib
import pkgutil

from ._app import app

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["app"]
