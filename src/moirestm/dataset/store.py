"""Self-describing, crash-safe HDF5 store of FT-LDOS samples (the hand-over to ``moirestm.learn``).

Layout (see docs/architecture.md, "Store contract"): root attributes ``moirestm_kind =
"FTLDOSStore"``, ``moirestm_version``, ``created_utc``, ``parameters_json``; one group
``/samples/<key>`` per sample with attributes ``parameters_json``, ``status``, ``error``,
``results_json`` and datasets ``ft_image`` (float32 H x W), ``kx_nm``, ``ky_nm``, ``ldos``,
``n_up``, ``n_down``, ``stm_map``, ``residuals`` ...

Crash safety. HDF5 cannot survive a kill in the middle of an in-place update, so the main
file is never modified in place:

1. ``write_sample`` writes the sample to its own small HDF5 file in the journal directory
   ``<path>.journal/`` (temporary name, fsync, atomic rename: the rename is the commit);
2. ``commit`` copies the main file, merges the journal into the copy, fsyncs it and
   atomically renames it over the main file, then deletes the merged journal entries.

A SIGKILL at any moment therefore leaves a valid main file plus committed journal entries;
readers see both, and the next writer merges them. Keys are group names, so a sample
cannot be duplicated. One writer at a time is enforced by an advisory lock ``<path>.lock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import MoireSTMError
from ..io import KIND_ATTR, PARAMS_ATTR, default_file_mode, stamp, to_json

STORE_KIND = "FTLDOSStore"
SAMPLE_KIND = "FTLDOSSample"
STATUSES = ("ok", "failed")
#: Float parameters are rounded to this many significant digits before hashing.
KEY_DIGITS = 10
#: Key length in hex characters (64 bits).
KEY_LENGTH = 16
#: Datasets compressed with gzip (level 4, shuffle) when at least this many elements.
COMPRESS_MIN = 4096


def _canonical(value):
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_canonical(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return repr(v)
        if v == int(v) and abs(v) < 1e15:
            return int(v)  # 2.0 and 2 hash alike
        return float(f"{v:.{KEY_DIGITS}g}")
    return value


def sample_key(params: dict) -> str:
    """Stable hash of a sample's parameters (order-, int/float- and rounding-insensitive)."""
    text = json.dumps(_canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _check_writable(path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise MoireSTMError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise MoireSTMError(f"cannot write {path}: directory {directory} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise MoireSTMError(f"cannot write {path}: file is read-only")


def _store_kind(path: Path) -> str | None:
    """Kind attribute of an HDF5 file or Zarr store, or raise naming why it is not a moirestm store."""
    from .zarrstore import is_zarr, zarr_kind

    if is_zarr(path):
        return zarr_kind(path)
    if not h5py.is_hdf5(path):
        raise MoireSTMError(f"{path} is not an HDF5 file (not a moirestm dataset store)")
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get(KIND_ATTR)
    except OSError as exc:
        raise MoireSTMError(f"{path} is not a readable HDF5 file ({exc})") from None
    if kind is None:
        raise MoireSTMError(f"{path} was written by another tool (no '{KIND_ATTR}' attribute); "
                            "refusing to use it as a moirestm dataset store")
    return str(kind)


def _write_arrays(group: h5py.Group, arrays: dict) -> None:
    for name, value in arrays.items():
        if value is None:
            continue
        data = np.asarray(value)
        if data.dtype.kind in "US":
            group.attrs[name] = str(data)
            continue
        if data.dtype == object:
            raise MoireSTMError(f"array {name!r} has object dtype; store numbers only")
        kwargs = {}
        if data.size >= COMPRESS_MIN:
            kwargs = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        group.create_dataset(name, data=data, **kwargs)


class Store:
    """FT-LDOS dataset store: one HDF5 file, or a Zarr v3 directory (a ``.zarr`` path, see
    :mod:`moirestm.dataset.zarrstore`) with the same API. Use :meth:`create` or :meth:`open`."""

    def __init__(self, path, mode: str, _internal: bool = False):
        if not _internal:
            raise MoireSTMError("use Store.create(path, sweep_params) or Store.open(path)")
        self.path = Path(path)
        self.mode = mode
        self.journal = self.path.with_name(self.path.name + ".journal")
        self._lock_fh = None
        self._index: dict[str, dict] | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path, sweep_params: dict, overwrite: bool = False) -> "Store":
        """Create an empty store recording ``sweep_params``.

        Refuses to overwrite a file written by another tool; an existing moirestm store is
        replaced only with ``overwrite=True``.
        """
        path = Path(path)
        if cls is Store and _zarr_path(path):
            from .zarrstore import ZarrStore

            return ZarrStore.create(path, sweep_params, overwrite)
        _check_writable(path)
        if path.exists():
            kind = _store_kind(path)
            if kind != STORE_KIND:
                raise MoireSTMError(f"{path} holds a moirestm {kind}, not a dataset store; refusing to overwrite")
            if not overwrite:
                raise MoireSTMError(f"{path} already holds a dataset store; open it or pass overwrite=True")
        store = cls(path, "a", _internal=True)
        store._acquire_lock()
        try:
            if store.journal.exists():
                shutil.rmtree(store.journal)
            tmp = store._tmp_name()
            try:
                with h5py.File(tmp, "w") as f:
                    stamp(f, STORE_KIND, sweep_params)
                    f.attrs["history_json"] = json.dumps([{"utc": _now(), "event": "create",
                                                           "version": __version__}])
                    f.create_group("samples")
                os.chmod(tmp, default_file_mode())
                _fsync_file(tmp)
                os.replace(tmp, path)
                _fsync_dir(path.parent)
            finally:
                if tmp.exists():
                    tmp.unlink()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path, mode: str = "r") -> "Store":
        """Open an existing store; ``mode`` "r" (read) or "a" (append, merges a pending journal)."""
        if mode not in ("r", "a"):
            raise MoireSTMError(f"store mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if cls is Store and _zarr_path(path):
            from .zarrstore import ZarrStore

            return ZarrStore.open(path, mode)
        if not path.is_file():
            raise MoireSTMError(f"dataset store not found: {path}")
        kind = _store_kind(path)
        if kind != STORE_KIND:
            raise MoireSTMError(f"{path} holds a moirestm {kind}, not a dataset store ({STORE_KIND})")
        store = cls(path, mode, _internal=True)
        if mode == "a":
            _check_writable(path)
            store._acquire_lock()
            try:
                store.commit()
            except BaseException:
                store.close()
                raise
        return store

    def _acquire_lock(self) -> None:
        lock = self.path.with_name(self.path.name + ".lock")
        fh = open(lock, "a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise MoireSTMError(f"{self.path} is being written by another process (lock {lock})") from None
        self._lock_fh = fh
        # we are the only writer: temporary files left by a killed writer are garbage
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        if self.journal.is_dir():
            for stale in self.journal.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Merge pending samples (append mode) and release the writer lock."""
        if self._lock_fh is not None:
            try:
                self.commit()
            finally:
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
                self._lock_fh.close()
                self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict:
        """Root attributes (kind, version, created, parameters_json, history_json)."""
        with h5py.File(self.path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

    @property
    def sweep_params(self) -> dict:
        """The sweep definition the store was created with."""
        return json.loads(self.attrs[PARAMS_ATTR])

    def add_history(self, event: str, **info) -> None:
        """Record an event (e.g. a sweep run) in the root ``history_json`` at the next commit."""
        self._require_write()
        self._pending_history = getattr(self, "_pending_history", [])
        self._pending_history.append({"utc": _now(), "event": event, "version": __version__, **info})

    # ------------------------------------------------------------------ index
    def _journal_files(self) -> dict[str, Path]:
        if not self.journal.is_dir():
            return {}
        return {p.stem: p for p in self.journal.glob("*.h5") if not p.name.startswith(".")}

    def _build_index(self) -> dict[str, dict]:
        index: dict[str, dict] = {}
        with h5py.File(self.path, "r") as f:
            samples = f.get("samples")
            if samples is None:
                raise MoireSTMError(f"{self.path}: damaged store (no /samples group)")
            for key, group in samples.items():
                index[key] = {"status": str(group.attrs.get("status", "")), "where": None,
                              "params_json": group.attrs.get(PARAMS_ATTR, "{}")}
        for key, path in self._journal_files().items():
            try:
                with h5py.File(path, "r") as f:
                    index[key] = {"status": str(f.attrs.get("status", "")), "where": path,
                                  "params_json": f.attrs.get(PARAMS_ATTR, "{}")}
            except OSError:
                continue  # a foreign or damaged file in the journal is reported by check()
        return index

    @property
    def _idx(self) -> dict[str, dict]:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def refresh(self) -> None:
        """Re-read the sample index (after another process wrote to the store)."""
        self._index = None

    def _entry(self, key: str) -> dict:
        try:
            return self._idx[key]
        except KeyError:
            raise MoireSTMError(f"no sample {key!r} in {self.path}") from None

    def __len__(self) -> int:
        return len(self._idx)

    def __contains__(self, key: str) -> bool:
        return key in self._idx

    # ------------------------------------------------------------------ contract: reading
    def keys(self, status: str | None = "ok") -> list[str]:
        """Sorted sample keys with ``status`` ("ok", "failed" or None for all)."""
        if status is not None and status not in STATUSES:
            raise MoireSTMError(f"status must be one of {STATUSES} or None, got {status!r}")
        return sorted(k for k, e in self._idx.items() if status is None or e["status"] == status)

    def params(self, key: str) -> dict:
        """Every parameter of sample ``key``."""
        return json.loads(self._entry(key)["params_json"])

    def status(self, key: str) -> str:
        """"ok" or "failed"."""
        return self._entry(key)["status"]

    def _read(self, key: str, fn):
        entry = self._entry(key)
        if entry["where"] is not None:
            with h5py.File(entry["where"], "r") as f:
                return fn(f)
        with h5py.File(self.path, "r") as f:
            return fn(f["samples"][key])

    def arrays(self, key: str, names=None) -> dict[str, np.ndarray]:
        """Datasets of sample ``key`` (all, or those in ``names``)."""
        def read(group):
            wanted = list(group.keys()) if names is None else list(names)
            missing = [n for n in wanted if n not in group]
            if missing:
                raise MoireSTMError(f"sample {key} has no dataset(s) {missing}")
            return {n: group[n][()] for n in wanted}
        return self._read(key, read)

    def image(self, key: str) -> np.ndarray:
        """FT-LDOS magnitude image (float32, H x W) of sample ``key``."""
        if self.status(key) != "ok":
            raise MoireSTMError(f"sample {key} failed ({self.error(key)}); it has no image")
        return np.asarray(self.arrays(key, ["ft_image"])["ft_image"], dtype=np.float32)

    def error(self, key: str) -> str:
        """Error text of a failed sample ("" for ok samples)."""
        return self._read(key, lambda g: str(g.attrs.get("error", "")))

    def results(self, key: str) -> dict:
        """Computed scalars of a sample (mu, free energy, convergence, timing, ...)."""
        return self._read(key, lambda g: json.loads(g.attrs.get("results_json", "{}")))

    def table(self, status: str | None = "ok") -> list[dict]:
        """Parameters of all samples with ``status``, each with its ``key`` (and status if mixed)."""
        rows = []
        for key in self.keys(status):
            row = {"key": key, **self.params(key)}
            if status != "ok":
                row["status"] = self._idx[key]["status"]
            rows.append(row)
        return rows

    @property
    def pending(self) -> list[str]:
        """Keys written to the journal but not yet merged into the main file."""
        return sorted(self._journal_files())

    # ------------------------------------------------------------------ contract: writing
    def _require_write(self) -> None:
        if self._lock_fh is None:
            raise MoireSTMError(f"{self.path} is open read-only; use Store.open(path, 'a')")

    def _tmp_name(self, directory: Path | None = None, prefix: str | None = None) -> Path:
        directory = directory or self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{prefix or self.path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        return Path(tmp)

    def write_sample(self, key: str, params: dict, arrays: dict, status: str = "ok", error: str = "",
                     results: dict | None = None) -> None:
        """Write one sample atomically (journal entry; merged into the file at :meth:`commit`).

        A sample already present under ``key`` is replaced.
        """
        self._require_write()
        if status not in STATUSES:
            raise MoireSTMError(f"sample status must be one of {STATUSES}, got {status!r}")
        if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
            raise MoireSTMError(f"invalid sample key {key!r}")
        arrays = self._checked_arrays(key, arrays, status)
        self.journal.mkdir(exist_ok=True)
        tmp = self._tmp_name(self.journal, key)
        try:
            with h5py.File(tmp, "w") as f:
                stamp(f, SAMPLE_KIND, params)
                f.attrs["status"] = status
                f.attrs["error"] = str(error)
                f.attrs["results_json"] = to_json(results or {})
                _write_arrays(f, arrays)
            _fsync_file(tmp)
            final = self.journal / f"{key}.h5"
            os.replace(tmp, final)
            _fsync_dir(self.journal)
        finally:
            if tmp.exists():
                tmp.unlink()
        if self._index is not None:
            self._index[key] = {"status": status, "where": final, "params_json": to_json(params)}

    @staticmethod
    def _checked_arrays(key: str, arrays: dict, status: str) -> dict:
        """``arrays`` with a float32 ``ft_image``; an ok sample needs a finite 2-D one."""
        if status != "ok":
            return arrays
        if "ft_image" not in arrays:
            raise MoireSTMError(f"sample {key}: an ok sample needs an 'ft_image' array")
        img = np.asarray(arrays["ft_image"])
        if img.ndim != 2 or not np.all(np.isfinite(img)):
            raise MoireSTMError(f"sample {key}: ft_image must be a finite 2-D array, got shape {img.shape}")
        return {**arrays, "ft_image": img.astype(np.float32)}

    def commit(self) -> int:
        """Merge journal entries into the main file atomically; returns how many were merged."""
        self._require_write()
        entries = self._journal_files()
        history = getattr(self, "_pending_history", [])
        if not entries and not history:
            return 0
        tmp = self._tmp_name()
        merged = []
        try:
            shutil.copyfile(self.path, tmp)
            shutil.copymode(self.path, tmp)
            with h5py.File(tmp, "r+") as dest:
                samples = dest.require_group("samples")
                for key, src_path in sorted(entries.items()):
                    try:
                        src = h5py.File(src_path, "r")
                    except OSError:
                        bad = src_path.with_name(src_path.name + ".damaged")
                        os.replace(src_path, bad)  # keep it for inspection, never merge it
                        continue
                    with src:
                        if src.attrs.get(KIND_ATTR) != SAMPLE_KIND:
                            continue
                        if key in samples:
                            del samples[key]
                        group = samples.create_group(key)
                        for name, value in src.attrs.items():
                            if name != KIND_ATTR:
                                group.attrs[name] = value
                        for name in src.keys():
                            src.copy(src[name], group, name=name)
                    merged.append(src_path)
                if history:
                    old = json.loads(dest.attrs.get("history_json", "[]"))
                    dest.attrs["history_json"] = json.dumps(old + history)
                dest.attrs["modified_utc"] = _now()
            _fsync_file(tmp)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._pending_history = []
        for src_path in merged:
            src_path.unlink(missing_ok=True)
        if self.journal.is_dir() and not any(self.journal.iterdir()):
            try:
                self.journal.rmdir()
            except OSError:
                pass
        self._index = None
        return len(merged)

    # ------------------------------------------------------------------ integrity
    def check(self) -> list[str]:
        """Integrity problems (empty list when the store is sound)."""
        problems = []
        for key in self.keys(None):
            try:
                params = self.params(key)
            except json.JSONDecodeError as exc:
                problems.append(f"{key}: damaged parameter record ({exc})")
                continue
            if sample_key(params) != key:
                problems.append(f"{key}: key does not match the hash of its parameters")
            status = self.status(key)
            if status not in STATUSES:
                problems.append(f"{key}: unknown status {status!r}")
                continue
            if status == "failed":
                if not self.error(key):
                    problems.append(f"{key}: failed sample without an error message")
                continue
            try:
                arr = self.arrays(key, ["ft_image", "kx_nm", "ky_nm"])
            except (MoireSTMError, OSError) as exc:
                problems.append(f"{key}: {exc}")
                continue
            img = arr["ft_image"]
            if img.dtype != np.float32 or img.ndim != 2:
                problems.append(f"{key}: ft_image is {img.dtype} {img.shape}, expected float32 2-D")
            elif not np.all(np.isfinite(img)):
                problems.append(f"{key}: ft_image holds non-finite values")
            elif img.shape != (len(arr["ky_nm"]), len(arr["kx_nm"])):
                problems.append(f"{key}: ft_image shape {img.shape} does not match its k axes")
        if self.journal.is_dir():
            for p in self.journal.iterdir():
                if p.suffix == ".damaged":
                    problems.append(f"damaged journal entry {p.name} (left for inspection)")
        return problems


def _zarr_path(path: Path) -> bool:
    from .zarrstore import is_zarr

    return is_zarr(path)


def merge_stores(out, sources, replace: bool = False) -> dict:
    """Copy the samples of ``sources`` (store paths, in order) into the store ``out``.

    ``out`` is created when missing (recording the sources); sources and ``out`` may be HDF5 files or
    Zarr stores in any mix (``merge_stores("one.h5", ["data.zarr"])`` exports a Zarr store to one file). A key already in ``out`` is kept,
    unless ``replace``: then later sources win (e.g. chains recomputed with a newer solver replace
    the old ones). Sources are only read; ``out`` is written through its journal and merged
    atomically once, so an interrupted merge leaves it as it was or complete.

    Returns
    -------
    dict : ``{"copied": n, "skipped": n, "sources": [...]}``.
    """
    sources = [Path(s) for s in sources]
    if not sources:
        raise MoireSTMError("merge needs at least one source store")
    out = Path(out)
    for src in sources:
        if not src.exists():
            raise MoireSTMError(f"source store not found: {src}")
        if src.resolve() == out.resolve():
            raise MoireSTMError(f"{src} is the output store; give it only as OUT")
        kind = _store_kind(src)
        if kind != STORE_KIND:
            raise MoireSTMError(f"{src} is not a dataset store ({kind or 'not a moirestm file'})")
    if out.exists():
        dest = Store.open(out, "a")
    else:
        first = Store.open(sources[0])
        params = dict(first.sweep_params)
        first.close()
        dest = Store.create(out, {**params, "merged_from": [str(s) for s in sources]})
    copied = skipped = 0
    try:
        present = set(dest.keys(None))
        for src_path in sources:
            with Store.open(src_path) as src:
                for key in src.keys(None):
                    if key in present and not replace:
                        skipped += 1
                        continue
                    status = src.status(key)
                    dest.write_sample(key, src.params(key), src.arrays(key), status=status,
                                      error=src.error(key), results=src.results(key))
                    present.add(key)
                    copied += 1
        dest.add_history("merge", sources=[str(s) for s in sources], replace=bool(replace), copied=copied,
                         skipped=skipped)
        dest.commit()
    finally:
        dest.close()
    return {"copied": copied, "skipped": skipped, "sources": [str(s) for s in sources]}
