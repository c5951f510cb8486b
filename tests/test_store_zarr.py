"""Zarr v3 dataset store: the Store contract, zarr-python compatibility, HDF5 export, O(1) appends, SIGKILL."""

import os
import random
import signal
import time

import numpy as np
import pytest

from moirestm.dataset import Store, Sweep, run_sweep, sample_key
from moirestm.dataset.export import info
from moirestm.dataset.store import merge_stores
from moirestm.dataset.zarrstore import ZarrStore
from moirestm.errors import MoireSTMError
from test_dataset import _cli, _sweep_file, engine_dir  # noqa: F401 - fixture


def _payload(value: float, n: int = 16) -> dict:
    k = np.linspace(-1.0, 1.0, n)
    return {"ft_image": np.full((n, n), value), "kx_nm": k, "ky_nm": k, "n_up": np.arange(5.0),
            "counts": np.arange(3, dtype=np.int64), "mask": np.array([True, False]), "label": np.array("afm")}


def test_zarr_store_contract_and_zarr_python_reads_it(tmp_path):
    import zarr

    path = tmp_path / "d.zarr"
    store = Store.create(path, {"sweep": "manual"})
    assert isinstance(store, ZarrStore)
    params = {"hubbard_u_ev": 2.5, "filling": 0.0}
    key = sample_key(params)
    store.write_sample(key, params, _payload(2.5), results={"mu_ev": 0.1})
    bad = {"hubbard_u_ev": 9.0}
    store.write_sample(sample_key(bad), bad, {}, status="failed", error="did not converge")
    assert store.keys() == [key] and store.keys("failed") == [sample_key(bad)] and store.pending == []
    store.add_history("run", note="x")
    store.close()
    reader = Store.open(path)
    assert isinstance(reader, ZarrStore) and reader.params(key) == params
    assert reader.image(key).dtype == np.float32 and reader.image(key)[0, 0] == 2.5
    arrays = reader.arrays(key)
    assert arrays["counts"].dtype == np.int64 and arrays["mask"].tolist() == [True, False]
    assert reader.results(key) == {"mu_ev": 0.1} and reader.error(sample_key(bad)) == "did not converge"
    assert reader.table() == [{"key": key, **params}] and reader.check() == []
    assert reader.sweep_params == {"sweep": "manual"} and '"run"' in reader.attrs["history_json"]
    with pytest.raises(MoireSTMError, match="failed"):
        reader.image(sample_key(bad))
    with pytest.raises(MoireSTMError, match="read-only"):
        reader.write_sample(key, params, _payload(1.0))
    with pytest.raises(MoireSTMError, match="another process"):
        with Store.open(path, "a"):
            Store.open(path, "a")
    group = zarr.open_group(str(path), mode="r")  # a plain Zarr v3 hierarchy
    assert group.attrs["moirestm_kind"] == "FTLDOSStore"
    np.testing.assert_array_equal(group[f"samples/{key}/ft_image"][...], reader.image(key))
    assert group[f"samples/{key}"].attrs["status"] == "ok"
    # replacing a sample keeps one copy
    with Store.open(path, "a") as s:
        s.write_sample(key, params, _payload(7.0))
    again = Store.open(path)
    assert again.image(key)[0, 0] == 7.0 and len(again.keys(None)) == 2
    assert info(path)["n_ok"] == 1 and info(path)["file_mb"] > 0


def test_zarr_hdf5_merge_and_export_both_ways(tmp_path):
    h5 = Store.create(tmp_path / "a.h5", {"sweep": "a"})
    for u in (1.0, 2.0):
        h5.write_sample(sample_key({"u": u}), {"u": u}, _payload(u))
    h5.close()
    assert merge_stores(tmp_path / "b.zarr", [tmp_path / "a.h5"])["copied"] == 2  # HDF5 -> Zarr
    assert merge_stores(tmp_path / "one.h5", [tmp_path / "b.zarr"])["copied"] == 2  # Zarr -> one file
    for name in ("b.zarr", "one.h5"):
        s = Store.open(tmp_path / name)
        assert s.check() == [] and s.image(sample_key({"u": 2.0}))[0, 0] == 2.0
        assert s.sweep_params["sweep"] == "a"


def test_zarr_refuses_foreign_directories(tmp_path):
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "notes.txt").write_text("keep")
    with pytest.raises(MoireSTMError, match="not a Zarr store"):
        Store.open(tmp_path / "other.zarr")
    with pytest.raises(MoireSTMError, match="not a Zarr store"):
        Store.create(tmp_path / "other.zarr", {})
    assert (tmp_path / "other.zarr" / "notes.txt").read_text() == "keep"
    with pytest.raises(MoireSTMError, match="not found"):
        Store.open(tmp_path / "missing.zarr")
    Store.create(tmp_path / "s.zarr", {}).close()
    with pytest.raises(MoireSTMError, match="already holds"):
        Store.create(tmp_path / "s.zarr", {})


def test_zarr_append_cost_does_not_grow_with_the_store(tmp_path, monkeypatch):
    """Scale test on synthetic payloads: an append touches only its own sample (no file of the others
    changes) and its time at 600 samples is within 2x of that at 50 (medians of 40 appends; without
    fsync, whose cost is the disk's, not the store's)."""
    from moirestm.dataset import zarrstore

    monkeypatch.setattr(zarrstore, "FSYNC", False)
    store = Store.create(tmp_path / "s.zarr", {})
    payload = _payload(1.0, n=64)

    def append(start, n):
        times = []
        for i in range(start, start + n):
            t = time.perf_counter()
            store.write_sample(sample_key({"i": i}), {"i": i}, payload)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    early = append(0, 50)
    append(50, 510)
    samples = tmp_path / "s.zarr" / "samples"
    before = {p: p.stat().st_mtime_ns for p in samples.rglob("*") if p.is_file()}
    late = append(560, 40)
    after = {p: p.stat().st_mtime_ns for p in samples.rglob("*") if p.is_file()}
    assert all(after[p] == t for p, t in before.items())  # nothing already written was rewritten
    assert len(after) - len(before) == 40 * (len(before) // 560)
    assert late < 2.0 * early + 2e-3, (early, late)
    assert len(store.keys()) == 600
    store.close()


def test_zarr_interrupted_replace_is_restored(tmp_path):
    path = tmp_path / "s.zarr"
    with Store.create(path, {}) as s:
        s.write_sample("k1", {"u": 1}, _payload(1.0))
    # a writer killed between moving the old sample away and renaming the new one into place
    os.replace(path / "samples" / "k1", path / "samples" / ".k1.old")
    (path / "samples" / ".k1.abc.tmp").mkdir()
    with Store.open(path, "a") as s:
        assert s.keys() == ["k1"] and s.image("k1")[0, 0] == 1.0
    assert sorted(p.name for p in (path / "samples").iterdir()) == ["k1", "zarr.json"]


def test_zarr_sweep_sigkill_and_rerun(tmp_path, engine_dir):
    """Kill sweeps into a Zarr store with SIGKILL at random moments; the rerun completes it exactly."""
    spec = _sweep_file(tmp_path, seed=30, stop=4.0)
    spec.write_text('continuation = "none"\n' + spec.read_text())
    out = tmp_path / "data.zarr"
    expected = {s["key"] for t in Sweep.load(spec).tasks() for s in t["samples"]}
    rng = random.Random(3)
    for _ in range(4):
        proc = _cli(["sweep", "run", str(spec), "--out", str(out), "--scheduler", "synchronous"], dict(os.environ))
        time.sleep(rng.uniform(0.8, 2.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            assert Store.open(out).check() == []
    summary = run_sweep(spec, out, scheduler="synchronous", progress=False, retry_failed=False)
    store = Store.open(out)
    assert set(store.keys(None)) == expected and store.check() == []
    assert summary.skipped + summary.written_ok + summary.written_failed == len(expected)
    names = [p.name for p in (out / "samples").iterdir()]
    assert len(names) == len(expected) + 1 and not [n for n in names if n.startswith(".")]
