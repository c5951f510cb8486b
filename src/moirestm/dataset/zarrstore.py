"""Zarr v3 dataset store: one directory per sample, so writing and reading cost O(1) in the store size.

Layout (a valid Zarr v3 hierarchy; ``zarr.open_group(path)`` reads it)::

    data.zarr/zarr.json                 group; attributes moirestm_kind = "FTLDOSStore", moirestm_version,
                                        created_utc, parameters_json, history_json
    data.zarr/samples/zarr.json         group
    data.zarr/samples/<key>/zarr.json   group; attributes moirestm_kind = "FTLDOSSample", parameters_json,
                                        status, error, results_json (and string arrays)
    data.zarr/samples/<key>/<name>/     one array per dataset (ft_image, kx_nm, ...), a single chunk
                                        each (bytes little-endian + zstd), zarr.json + c/0[/0]

Crash safety. A sample is written under a temporary name ``samples/.<key>.<random>.tmp/`` (every
file fsynced) and renamed to ``samples/<key>``: the directory rename is the commit, so a SIGKILL
leaves either the whole sample or an ignored temporary directory. Replacing a sample first renames
the old one to ``.<key>.old``; the next writer restores it if the kill came before the new one was
in place. Keys are directory names, so a sample cannot be duplicated; one writer at a time holds
``<path>.lock``. :meth:`commit` only records pending history (every sample is committed as written).

Arrays are written and read by a small codec path for the one layout above (numcodecs' zstd);
arrays of any other layout (e.g. written by zarr-python itself) are read through zarr-python.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import MoireSTMError
from ..io import KIND_ATTR, PARAMS_ATTR, current_umask, default_file_mode, to_json
from .store import SAMPLE_KIND, STORE_KIND, STATUSES, Store, _check_writable, _fsync_dir, _now

ZSTD_LEVEL = 3
#: fsync every file of a sample before its rename (durable against power loss, ~50 ms per sample of
#: nine arrays); ``MOIRESTM_STORE_FSYNC=0`` keeps only the SIGKILL safety of the rename (~6 ms).
FSYNC = os.environ.get("MOIRESTM_STORE_FSYNC", "1") != "0"
#: dtypes the direct codec path writes (others go through zarr-python).
_DIRECT_KINDS = "fiub"
_FILL = {"f": 0.0, "i": 0, "u": 0, "b": False}


def is_zarr(path) -> bool:
    """True for a ``.zarr`` path or a directory holding a Zarr v3 ``zarr.json``."""
    path = Path(path)
    return path.suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").is_file())


def _read_json(path: Path) -> dict:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def zarr_kind(path) -> str:
    """``moirestm_kind`` of a Zarr store, or MoireSTMError naming why it is not a moirestm store."""
    path = Path(path)
    try:
        meta = _read_json(path / "zarr.json")
    except (OSError, ValueError):
        raise MoireSTMError(f"{path} is not a Zarr store (no readable zarr.json; not a moirestm dataset store)") \
            from None
    kind = meta.get("attributes", {}).get(KIND_ATTR)
    if kind is None:
        raise MoireSTMError(f"{path} was written by another tool (no '{KIND_ATTR}' attribute); "
                            "refusing to use it as a moirestm dataset store")
    return str(kind)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        if FSYNC:
            fh.flush()
            os.fsync(fh.fileno())


def _group_json(attributes: dict) -> bytes:
    return json.dumps({"attributes": attributes, "zarr_format": 3, "node_type": "group"}).encode()


def _array_json(data: np.ndarray) -> bytes:
    meta = {"shape": list(data.shape), "data_type": "bool" if data.dtype.kind == "b" else data.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(data.shape)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": _FILL[data.dtype.kind],
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}],
            "attributes": {}, "zarr_format": 3, "node_type": "array", "storage_transformers": []}
    return json.dumps(meta).encode()


def _is_direct(meta: dict) -> bool:
    codecs = meta.get("codecs", [])
    return (len(codecs) == 2 and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and codecs[1].get("name") == "zstd"
            and meta["chunk_grid"]["configuration"]["chunk_shape"] == meta["shape"]
            and meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator") == "/")


def write_array(directory: Path, name: str, data: np.ndarray) -> None:
    """Write ``data`` as the single-chunk Zarr v3 array ``directory/name`` (fsynced)."""
    from numcodecs import Zstd

    data = np.ascontiguousarray(data)
    if data.dtype.kind not in _DIRECT_KINDS or data.ndim == 0 or data.size == 0:
        import zarr

        group = zarr.open_group(str(directory), mode="a", zarr_format=3)
        group.create_array(name, data=data)
        return
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    node = directory / name
    chunk_dir = node.joinpath("c", *["0"] * (data.ndim - 1))
    chunk_dir.mkdir(parents=True)
    _write_file(chunk_dir / "0", Zstd(level=ZSTD_LEVEL).encode(data.tobytes()))
    _write_file(node / "zarr.json", _array_json(data))


def read_array(node: Path) -> np.ndarray:
    """Read the Zarr v3 array at ``node`` (the direct codec path, or zarr-python for other layouts)."""
    from numcodecs import Zstd

    meta = _read_json(node / "zarr.json")
    if not _is_direct(meta) or not meta["shape"]:
        import zarr

        return zarr.open_array(str(node), mode="r")[...]
    dtype = np.dtype("bool" if meta["data_type"] == "bool" else meta["data_type"]).newbyteorder("<")
    chunk = node.joinpath("c", *["0"] * len(meta["shape"]))
    try:
        raw = chunk.read_bytes()
    except FileNotFoundError:  # zarr-python leaves out chunks holding only the fill value
        return np.full(meta["shape"], meta["fill_value"], dtype=dtype)
    return np.frombuffer(Zstd().decode(raw), dtype=dtype).reshape(meta["shape"]).astype(dtype.newbyteorder("="))


class ZarrStore(Store):
    """FT-LDOS dataset store as a Zarr v3 directory (same API as :class:`~moirestm.dataset.store.Store`)."""

    def __init__(self, path, mode: str, _internal: bool = False):
        super().__init__(path, mode, _internal)
        self.samples_dir = self.path / "samples"
        self._written = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path, sweep_params: dict, overwrite: bool = False) -> "ZarrStore":
        """Create an empty Zarr store; an existing one is replaced only with ``overwrite=True``."""
        path = Path(path)
        _check_writable(path)
        if path.exists():
            if path.is_file():
                raise MoireSTMError(f"{path} is a file, not a Zarr store directory; refusing to overwrite")
            kind = zarr_kind(path)
            if kind != STORE_KIND:
                raise MoireSTMError(f"{path} holds a moirestm {kind}, not a dataset store; refusing to overwrite")
            if not overwrite:
                raise MoireSTMError(f"{path} already holds a dataset store; open it or pass overwrite=True")
        store = cls(path, "a", _internal=True)
        store._acquire_lock()
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."))
            try:
                (tmp / "samples").mkdir()
                _write_file(tmp / "samples" / "zarr.json", _group_json({}))
                _write_file(tmp / "zarr.json", _group_json(
                    {KIND_ATTR: STORE_KIND, "moirestm_version": __version__, "created_utc": _now(),
                     PARAMS_ATTR: to_json(sweep_params),
                     "history_json": json.dumps([{"utc": _now(), "event": "create", "version": __version__}])}))
                os.chmod(tmp, 0o777 & ~current_umask())
                _rename_into_place(tmp, path, path.with_name(f".{path.name}.replaced.tmp"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path, mode: str = "r") -> "ZarrStore":
        """Open an existing Zarr store; ``mode`` "r" or "a" (append)."""
        if mode not in ("r", "a"):
            raise MoireSTMError(f"store mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.is_dir():
            raise MoireSTMError(f"dataset store not found: {path}")
        kind = zarr_kind(path)
        if kind != STORE_KIND:
            raise MoireSTMError(f"{path} holds a moirestm {kind}, not a dataset store ({STORE_KIND})")
        store = cls(path, mode, _internal=True)
        if mode == "a":
            if not os.access(path, os.W_OK):
                raise MoireSTMError(f"cannot write {path}: store is read-only")
            store._acquire_lock()
        return store

    def _acquire_lock(self) -> None:
        """Take the writer lock, then clear what a killed writer left (temporary and replaced samples)."""
        super()._acquire_lock()
        if not self.samples_dir.is_dir():
            return
        for entry in os.scandir(self.samples_dir):
            if not entry.name.startswith("."):
                continue
            if entry.name.endswith(".old"):
                key = entry.name[1:-4]
                if (self.samples_dir / key).exists():
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:  # killed between moving the old sample away and putting the new one in place
                    os.replace(entry.path, self.samples_dir / key)
            elif entry.name.endswith(".tmp"):
                shutil.rmtree(entry.path, ignore_errors=True)

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict:
        return dict(_read_json(self.path / "zarr.json")["attributes"])

    def _build_index(self) -> dict[str, dict]:
        index: dict[str, dict] = {}
        if not self.samples_dir.is_dir():
            raise MoireSTMError(f"{self.path}: damaged store (no samples group)")
        for entry in os.scandir(self.samples_dir):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                attrs = _read_json(Path(entry.path) / "zarr.json")["attributes"]
            except (OSError, ValueError, KeyError):
                index[entry.name] = {"status": "damaged", "where": entry.path, "params_json": "{}"}
                continue
            index[entry.name] = {"status": str(attrs.get("status", "")), "where": entry.path,
                                 "params_json": attrs.get(PARAMS_ATTR, "{}")}
        return index

    def _attrs(self, key: str) -> dict:
        return _read_json(Path(self._entry(key)["where"]) / "zarr.json")["attributes"]

    @property
    def pending(self) -> list[str]:
        """Always empty: every sample is committed when written."""
        return []

    # ------------------------------------------------------------------ reading
    def arrays(self, key: str, names=None) -> dict[str, np.ndarray]:
        """Datasets of sample ``key`` (all, or those in ``names``)."""
        directory = Path(self._entry(key)["where"])
        present = sorted(p.name for p in directory.iterdir() if p.is_dir())
        wanted = present if names is None else list(names)
        missing = [n for n in wanted if n not in present]
        if missing:
            raise MoireSTMError(f"sample {key} has no dataset(s) {missing}")
        return {n: read_array(directory / n) for n in wanted}

    def image(self, key: str) -> np.ndarray:
        """FT-LDOS magnitude image (float32, H x W) of sample ``key``."""
        entry = self._entry(key)
        if entry["status"] != "ok":
            raise MoireSTMError(f"sample {key} failed ({self.error(key)}); it has no image")
        return np.asarray(read_array(Path(entry["where"]) / "ft_image"), dtype=np.float32)

    def error(self, key: str) -> str:
        return str(self._attrs(key).get("error", ""))

    def results(self, key: str) -> dict:
        return json.loads(self._attrs(key).get("results_json", "{}"))

    # ------------------------------------------------------------------ writing
    def write_sample(self, key: str, params: dict, arrays: dict, status: str = "ok", error: str = "",
                     results: dict | None = None) -> None:
        """Write one sample atomically (temporary directory, then rename); a sample under ``key`` is replaced."""
        self._require_write()
        if status not in STATUSES:
            raise MoireSTMError(f"sample status must be one of {STATUSES}, got {status!r}")
        if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
            raise MoireSTMError(f"invalid sample key {key!r}")
        arrays = self._checked_arrays(key, arrays, status)
        params_json = to_json(params)
        attributes = {KIND_ATTR: SAMPLE_KIND, "moirestm_version": __version__, "created_utc": _now(),
                      PARAMS_ATTR: params_json, "status": status, "error": str(error),
                      "results_json": to_json(results or {})}
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=self.samples_dir))
        try:
            for name, value in arrays.items():
                if value is None:
                    continue
                data = np.asarray(value)
                if data.dtype.kind in "US":
                    attributes[name] = str(data)
                    continue
                if data.dtype == object:
                    raise MoireSTMError(f"array {name!r} has object dtype; store numbers only")
                write_array(tmp, name, data)
            _write_file(tmp / "zarr.json", _group_json(attributes))
            if FSYNC:
                _fsync_dir(tmp)
            final = self.samples_dir / key
            _rename_into_place(tmp, final, self.samples_dir / f".{key}.old")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._written += 1
        if self._index is not None:
            self._index[key] = {"status": status, "where": str(final), "params_json": params_json}

    def commit(self) -> int:
        """Record pending history (samples are committed as written); returns samples written since the last call."""
        self._require_write()
        history = getattr(self, "_pending_history", [])
        if history:
            meta = _read_json(self.path / "zarr.json")
            attrs = meta["attributes"]
            attrs["history_json"] = json.dumps(json.loads(attrs.get("history_json", "[]")) + history)
            attrs["modified_utc"] = _now()
            fd, tmp = tempfile.mkstemp(prefix=".zarr.json.", suffix=".tmp", dir=self.path)
            os.close(fd)
            try:
                _write_file(Path(tmp), json.dumps(meta).encode())
                os.chmod(tmp, default_file_mode())
                os.replace(tmp, self.path / "zarr.json")
            finally:
                Path(tmp).unlink(missing_ok=True)
            self._pending_history = []
        written, self._written = self._written, 0
        return written

    def check(self) -> list[str]:
        """Integrity problems (empty list when the store is sound)."""
        damaged = [f"{k}: damaged sample record (unreadable zarr.json)" for k, e in self._idx.items()
                   if e["status"] == "damaged"]
        return damaged + super().check()


def _rename_into_place(tmp: Path, final: Path, old: Path) -> None:
    """Rename directory ``tmp`` to ``final``; an existing ``final`` is moved to ``old`` first, removed after."""
    if final.exists():
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
