"""Self-describing HDF5 files: every file records what it holds, its parameters and the version.

Writes are atomic (temporary file + rename), so an interrupted save never corrupts
an existing file.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import MoireSTMError

KIND_ATTR = "moirestm_kind"
VERSION_ATTR = "moirestm_version"
PARAMS_ATTR = "parameters_json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(params: dict) -> str:
    """Serialise parameters (numpy scalars and arrays included) to JSON text."""
    return json.dumps(_jsonable(params), sort_keys=True)


def stamp(group: h5py.Group, kind: str, params: dict) -> None:
    """Write the provenance attributes (kind, version, time, parameters) on ``group``."""
    group.attrs[KIND_ATTR] = kind
    group.attrs[VERSION_ATTR] = __version__
    group.attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    group.attrs[PARAMS_ATTR] = to_json(params)


def write_h5(path: str | os.PathLike, kind: str, params: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write ``arrays`` with provenance to an HDF5 file.

    Parameters
    ----------
    path : target file; its directory must exist and be writable.
    kind : object type stored (e.g. ``"BandStructure"``), checked on load.
    params : parameters that produced the object (JSON-serialisable).
    arrays : named numpy arrays.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise MoireSTMError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise MoireSTMError(f"cannot write {path}: directory {directory} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            stamp(f, kind, params)
            for name, value in arrays.items():
                f.create_dataset(name, data=np.asarray(value))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_h5(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Read a file written by :func:`write_h5`, checking that it holds ``kind``.

    Returns
    -------
    params, arrays, attrs : parameters, arrays and the raw provenance attributes.
    """
    path = Path(path)
    if not path.is_file():
        raise MoireSTMError(f"file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            found = attrs.get(KIND_ATTR)
            if found is None:
                raise MoireSTMError(f"{path} was not written by moirestm (no '{KIND_ATTR}' attribute)")
            if found != kind:
                raise MoireSTMError(f"{path} holds a {found}, expected a {kind}")
            arrays = {name: f[name][()] for name in f.keys() if isinstance(f[name], h5py.Dataset)}
    except OSError as exc:
        raise MoireSTMError(f"{path} is not a readable HDF5 file ({exc})") from None
    try:
        params = json.loads(attrs[PARAMS_ATTR])
    except (KeyError, json.JSONDecodeError) as exc:
        raise MoireSTMError(f"{path}: damaged parameter record ({exc})") from None
    return params, arrays, attrs
