"""Self-describing HDF5 files: every file records what it holds, its parameters and the version.

Writes are atomic (temporary file + rename), so an interrupted save never corrupts
an existing file.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
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


# ============================================================================ the output path
#: Kinds of non-HDF5 outputs (HDF5 outputs are named by their ``moirestm_kind``).
FIGURE = "moirestm figure"
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
HTML = "moirestm HTML report"
NPY = "NumPy array"
#: Marker written into every figure and HTML file so that a rerun recognises its own output.
MARKER = b"moirestm"
#: Paths the user allowed to be replaced whatever they hold (``--overwrite``); see :func:`overwriting`.
_ALLOWED: set = set()


def file_kind(path: str | os.PathLike) -> str | None:
    """What an existing file holds, in words (``None`` when ``path`` does not exist).

    moirestm outputs answer their kind: the ``moirestm_kind`` of an HDF5 file or a JSON object,
    :data:`FIGURE` for a figure and :data:`HTML` for a report carrying the moirestm marker,
    :data:`NPY` for a NumPy array; anything else is described ("text file", "PNG image", ...).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        try:  # a Zarr v3 store (moirestm dataset stores ending in .zarr) answers its kind
            return str(json.loads((path / "zarr.json").read_text())["attributes"][KIND_ATTR])
        except (OSError, ValueError, KeyError, TypeError):
            return "folder"
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        return f"unreadable file ({exc.strerror})"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        try:
            with h5py.File(path, "r") as f:
                found = f.attrs.get(KIND_ATTR)
        except OSError:
            return "damaged HDF5 file"
        return str(found) if found is not None else "HDF5 file not written by moirestm"
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if head.startswith(b"\x89PNG") or head.startswith(b"%PDF") or b"<svg" in head[:4096]:
        return FIGURE if MARKER in head else "image not written by moirestm"
    lowered = head[:4096].lstrip().lower()
    if lowered.startswith(b"<!doctype html") or lowered.startswith(b"<html"):
        return HTML if b'name="generator" content="moirestm' in head else "HTML file not written by moirestm"
    if lowered[:1] in (b"{", b"["):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return "text file"
        if isinstance(data, dict) and isinstance(data.get(KIND_ATTR), str):
            return data[KIND_ATTR]
        return "JSON file not written by moirestm"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary file"
    return "text file" if head else "empty file"


@contextmanager
def overwriting(*paths):
    """Within this block, :func:`check_output` lets ``paths`` be replaced whatever they hold."""
    keys = {Path(p).resolve() for p in paths if p is not None}
    new = keys - _ALLOWED
    _ALLOWED.update(new)
    try:
        yield
    finally:
        _ALLOWED.difference_update(new)


def check_output(path: str | os.PathLike, kind: str, overwrite: bool = False,
                 hint: str = "use --overwrite to replace it") -> Path:
    """Check that ``kind`` may be written to ``path``, before any work is done.

    The folder must exist and be writable; an existing file may be replaced only by a file of the
    same kind (a rerun), unless ``overwrite`` (or :func:`overwriting`) allows it. MoireSTMError
    otherwise, naming the file and what it holds, and ending with ``hint``.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.exists():
        raise MoireSTMError(f"cannot write {path}: folder {directory} does not exist")
    if not directory.is_dir():
        raise MoireSTMError(f"cannot write {path}: {directory} is not a folder")
    if not writable(directory):
        raise MoireSTMError(f"cannot write {path}: folder {directory} is not writable")
    found = file_kind(path)
    if found == "folder":
        raise MoireSTMError(f"cannot write {path}: it is a folder")
    if found is not None and found != kind and not overwrite and path.resolve() not in _ALLOWED:
        raise MoireSTMError(f"refusing to overwrite {path}: it holds a {found}, not a {kind} ({hint})")
    if kind == FIGURE and path.suffix.lower() not in FIGURE_SUFFIXES:
        raise MoireSTMError(f"cannot write a figure to {path}: give a name ending in "
                            f"{', '.join(FIGURE_SUFFIXES)}")
    return path


def current_umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Permission bits of a new file under the current umask (``tempfile`` would give 0600)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_output(path: str | os.PathLike, kind: str, overwrite: bool = False):
    """Yield a temporary path beside ``path``; on success it atomically replaces ``path``.

    The output is checked first (:func:`check_output`); on any error the temporary file is
    removed, so an existing file is untouched and no half-made output is left.
    """
    path = check_output(path, kind, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, (path.stat().st_mode & 0o7777) if path.is_file() else default_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise MoireSTMError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str, kind: str, overwrite: bool = False) -> Path:
    """Atomically write ``text`` (a file of ``kind``) to ``path``."""
    with atomic_output(path, kind, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data, kind: str, overwrite: bool = False, indent: int = 1) -> Path:
    """Atomically write ``data`` as JSON; a dict records ``kind`` under ``moirestm_kind``."""
    if isinstance(data, dict):
        data = {KIND_ATTR: kind, **data}
    else:
        data = {KIND_ATTR: kind, "rows": data}
    return write_text(path, json.dumps(_jsonable(data), indent=indent, default=str) + "\n", kind, overwrite)


def write_npy(path: str | os.PathLike, array, overwrite: bool = False) -> Path:
    """Atomically write a NumPy ``.npy`` array."""
    with atomic_output(path, NPY, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)


def output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create the output folder ``path`` (and its parents); MoireSTMError if it cannot be a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MoireSTMError(f"cannot use {path} as output folder: it is a {file_kind(path)}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MoireSTMError(f"cannot create folder {path}: {existing} is not a folder")
    if not writable(existing):
        raise MoireSTMError(f"cannot write into folder {existing}: it is not writable")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoireSTMError(f"cannot create folder {path}: {exc.strerror or exc}") from None
    return path


def writable(directory: str | os.PathLike) -> bool:
    """Whether files may be created in ``directory``: access rights and, even for root, a write bit."""
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK) and bool(mode & 0o222)


def write_h5(path: str | os.PathLike, kind: str, params: dict, arrays: dict[str, np.ndarray],
             overwrite: bool = False) -> Path:
    """Atomically write ``arrays`` with provenance to an HDF5 file.

    Parameters
    ----------
    path : target file; its folder must exist and be writable. An existing file is replaced only
        when it holds the same ``kind`` (or ``overwrite``; see :func:`check_output`).
    kind : object type stored (e.g. ``"BandStructure"``), checked on load.
    params : parameters that produced the object (JSON-serialisable).
    arrays : named numpy arrays.
    """
    with atomic_output(path, kind, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            stamp(f, kind, params)
            for name, value in arrays.items():
                f.create_dataset(name, data=np.asarray(value))
    return Path(path)


def read_h5(path: str | os.PathLike, kind: str, nested: bool = False) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Read a file written by :func:`write_h5`, checking that it holds ``kind``.

    ``nested`` also reads the datasets inside groups (named ``group/name``).

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
            if nested:
                arrays = {}
                f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                             if isinstance(obj, h5py.Dataset) else None)
            else:
                arrays = {name: f[name][()] for name in f.keys() if isinstance(f[name], h5py.Dataset)}
    except OSError as exc:
        raise MoireSTMError(f"{path} is not a readable HDF5 file ({exc})") from None
    try:
        params = json.loads(attrs[PARAMS_ATTR])
    except (KeyError, json.JSONDecodeError) as exc:
        raise MoireSTMError(f"{path}: damaged parameter record ({exc})") from None
    return params, arrays, attrs


# ============================================================================ the result base
#: Result classes by kind, for loading nested results.
RESULT_TYPES: dict[str, type] = {}
#: Attribute holding a result's format version.
FORMAT_ATTR = "result_format"


class Result:
    """Base of saveable stage results: fields declared once, saved with provenance, checked on load.

    A subclass is a dataclass; its fields are saved as they are: numpy arrays (also inside dicts,
    lists and nested results) as HDF5 datasets, everything else in the JSON parameter record.
    ``KIND`` names the type in the file (default: the class name) and ``FORMAT`` its layout
    version; :meth:`load` refuses another kind or a newer format with a message naming both.
    Fields listed in ``TRANSIENT`` are not saved (they come back as their defaults).
    """

    KIND: str = ""
    FORMAT: int = 1
    TRANSIENT: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("KIND"):
            cls.KIND = cls.__name__
        RESULT_TYPES[cls.KIND] = cls

    # ------------------------------------------------------------------ record
    def _record(self) -> dict:
        """The saved fields (name -> value); dataclass fields minus ``TRANSIENT`` by default."""
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name not in self.TRANSIENT}

    @classmethod
    def _from_record(cls, record: dict):
        return cls(**record)

    @classmethod
    def _from_flat(cls, params: dict, arrays: dict):
        """A file of the flat layout written before the result base: fields found among the datasets or
        the parameters; the other parameters go to a ``params`` field."""
        from dataclasses import fields

        names = [f.name for f in fields(cls) if f.init]
        rest, values = dict(params), {}
        for name in names:
            if name in arrays:
                values[name] = arrays[name]
            elif name in rest and name != "params":
                values[name] = rest.pop(name)
        if "params" in names:
            values["params"] = rest
        return cls(**values)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Atomically write the result (through :func:`atomic_output`); returns the path."""
        arrays: dict = {}
        record = _encode(self, arrays, "")
        with atomic_output(path, self.KIND, overwrite) as tmp:
            with h5py.File(tmp, "w") as f:
                stamp(f, self.KIND, record)
                f.attrs[FORMAT_ATTR] = self.FORMAT
                for name, value in arrays.items():
                    f.create_dataset(name, data=value)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a result saved by :meth:`save`; MoireSTMError naming a wrong kind, format or damage."""
        record, arrays, attrs = read_h5(path, cls.KIND, nested=True)
        found = int(attrs.get(FORMAT_ATTR, 0))
        if found > cls.FORMAT:
            raise MoireSTMError(f"{path} holds a {cls.KIND} of format {found}, newer than this moirestm "
                                f"reads (format {cls.FORMAT})")
        try:
            if not (isinstance(record, dict) and "__result__" in record):
                return cls._from_flat(record, arrays)
            return _decode(record, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise MoireSTMError(f"{path}: damaged {cls.KIND} record ({type(exc).__name__}: {exc})") from None


def _encode(value, arrays: dict, path: str):
    if isinstance(value, Result):
        return {"__result__": value.KIND,
                "fields": {k: _encode(v, arrays, f"{path}/{k}") for k, v in value._record().items()}}
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return {"__strarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.ndarray):
        name = path.strip("/") or "value"
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, dict):
        return {"__dict__": [[_jsonable(k), _encode(v, arrays, f"{path}/{i}")] for i, (k, v) in
                             enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return {"__path__": str(value)}
    return _jsonable(value)


def _decode(value, arrays: dict):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        if value["__array__"] not in arrays:
            raise KeyError(f"missing {value['__array__']}")
        return arrays[value["__array__"]]
    if "__strarray__" in value:
        return np.array(value["__strarray__"], dtype=value["dtype"] if value["dtype"][1] != "O" else object)
    if "__path__" in value:
        return Path(value["__path__"])
    if "__dict__" in value:
        return {(tuple(k) if isinstance(k, list) else k): _decode(v, arrays) for k, v in value["__dict__"]}
    if "__result__" in value:
        kind = value["__result__"]
        if kind not in RESULT_TYPES:
            raise MoireSTMError(f"unknown result kind {kind!r} in the record")
        return RESULT_TYPES[kind]._from_record({k: _decode(v, arrays) for k, v in value["fields"].items()})
    return {k: _decode(v, arrays) for k, v in value.items()}
