"""Dataset store contract, sweeps, resume, SIGKILL safety, import and export."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from moirestm.dataset import Store, Sweep, run_sweep, sample_key
from moirestm.dataset.export import export_png, info, to_uint16
from moirestm.dataset.importer import hubbard_u_from_name, import_ldos_files
from moirestm.errors import MoireSTMError
from moirestm.io import write_h5
from moirestm.lattice import TBGLattice

ENGINE = textwrap.dedent('''
    import time
    import numpy as np

    def engine(task):
        """Synthetic engine: image = U * pattern + bias; U = 1 at filling 1 fails."""
        out = []
        for s in task["samples"]:
            p = s["params"]
            time.sleep(float(p.get("seed", 0)) * 1e-3)
            if p["hubbard_u_ev"] == 1.0 and p.get("filling") == 1.0:
                out.append({"key": s["key"], "params": p, "status": "failed", "error": "synthetic failure"})
                continue
            k = np.linspace(-1, 1, 8)
            img = (p["hubbard_u_ev"] * np.outer(k, k) + p["bias_ev"]).astype(np.float32)
            out.append({"key": s["key"], "params": p, "status": "ok", "error": "",
                        "arrays": {"ft_image": img, "kx_nm": k, "ky_nm": k}, "results": {"u": p["hubbard_u_ev"]}})
        return out
''')

SWEEP = textwrap.dedent('''
    name = "synthetic"
    engine = "synengine:engine"
    [fixed]
    index = 1
    seed = {seed}
    [axes]
    hubbard_u_ev = {{ start = 0.0, stop = {stop}, step = 0.5 }}
    filling = [0.0, 1.0]
    bias_ev = [0.0, 0.1]
''')


@pytest.fixture
def engine_dir(tmp_path, monkeypatch):
    d = tmp_path / "engine"
    d.mkdir()
    (d / "synengine.py").write_text(ENGINE)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]))
    return d


def _sweep_file(tmp_path, seed=0, stop=2.0):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(seed=seed, stop=stop))
    return path


# --------------------------------------------------------------------------- store contract
def test_store_contract_roundtrip(tmp_path):
    path = tmp_path / "d.h5"
    store = Store.create(path, {"sweep": "manual"})
    params = {"hubbard_u_ev": 2.5, "filling": 0.0}
    key = sample_key(params)
    img = np.arange(12, dtype=np.float64).reshape(3, 4)
    store.write_sample(key, params, {"ft_image": img, "kx_nm": np.arange(4.0), "ky_nm": np.arange(3.0),
                                     "n_up": np.ones(5)})
    bad = {"hubbard_u_ev": 9.0, "filling": 0.0}
    store.write_sample(sample_key(bad), bad, {}, status="failed", error="did not converge")
    assert store.pending  # journal entries visible before the merge
    assert store.keys() == [key] and store.keys("failed") == [sample_key(bad)]
    store.close()
    assert not (tmp_path / "d.h5.journal").exists()
    reader = Store.open(path)
    assert reader.keys() == [key]
    assert reader.params(key) == params
    image = reader.image(key)
    assert image.dtype == np.float32 and image.shape == (3, 4)
    np.testing.assert_array_equal(image, img.astype(np.float32))
    assert reader.table() == [{"key": key, **params}]
    assert {r["status"] for r in reader.table(None)} == {"ok", "failed"}
    assert reader.error(sample_key(bad)) == "did not converge"
    with pytest.raises(MoireSTMError, match="failed"):
        reader.image(sample_key(bad))
    with pytest.raises(MoireSTMError, match="read-only"):
        reader.write_sample(key, params, {"ft_image": img})
    assert reader.check() == []
    with h5py.File(path, "r") as f:  # the documented layout
        assert f.attrs["moirestm_kind"] == "FTLDOSStore" and "moirestm_version" in f.attrs
        assert json.loads(f.attrs["parameters_json"]) == {"sweep": "manual"}
        g = f["samples"][key]
        assert g.attrs["status"] == "ok" and g["ft_image"].dtype == np.float32


def test_sample_key_is_stable():
    assert sample_key({"a": 1, "b": 0.1 + 0.2}) == sample_key({"b": 0.3, "a": 1.0})
    assert sample_key({"a": 1}) != sample_key({"a": 2})


def test_store_refuses_foreign_files(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(MoireSTMError, match="not an HDF5 file"):
        Store.create(text, {})
    assert text.read_text() == "hello"  # nothing lost
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    for call in (lambda: Store.open(foreign), lambda: Store.create(foreign, {})):
        with pytest.raises(MoireSTMError, match="another tool"):
            call()
    with h5py.File(foreign, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(3))
    other = tmp_path / "ldos.h5"
    write_h5(other, "SiteLDOS", {}, {"x": np.zeros(1)})
    with pytest.raises(MoireSTMError, match="SiteLDOS"):
        Store.open(other)
    Store.create(tmp_path / "s.h5", {}).close()
    with pytest.raises(MoireSTMError, match="already holds"):
        Store.create(tmp_path / "s.h5", {})
    with pytest.raises(MoireSTMError, match="not found"):
        Store.open(tmp_path / "missing.h5")


def test_single_writer_lock(tmp_path):
    with Store.create(tmp_path / "s.h5", {}):
        with pytest.raises(MoireSTMError, match="another process"):
            Store.open(tmp_path / "s.h5", "a")


def test_damaged_journal_entry_is_quarantined(tmp_path):
    path = tmp_path / "s.h5"
    Store.create(path, {}).close()
    (tmp_path / "s.h5.journal").mkdir()
    (tmp_path / "s.h5.journal" / "deadbeef.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    store = Store.open(path, "a")
    store.close()
    assert Store.open(path).keys(None) == []
    assert any("damaged" in p for p in Store.open(path).check())


# --------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("spec, match", [
    ({"axes": {"hubbard_ev": [1.0]}}, "unknown axes name"),
    ({"axes": {"hubbard_u_ev": []}}, "empty list"),
    ({"axes": {"hubbard_u_ev": {"start": 2.0, "stop": 1.0, "step": 0.1}}}, "empty range"),
    ({"axes": {"hubbard_u_ev": {"start": 0.0, "stop": 1.0, "step": 0.0}}}, "step must be positive"),
    ({"axes": {"filling": [0.0], "mu_ev": [0.1]}}, "either filling or mu_ev"),
    ({"axes": {"kgrid": [1.5]}}, "integers"),
    ({"axes": {"hubbard_u_ev": ["x"]}}, "numbers"),
    ({"fixed": {"index": 2}}, "at least one axis"),
    ({"axes": {"bias_ev": [0.0]}, "colour": 1}, "unknown sweep entry"),
    ({"axes": {"bias_ev": [0.0]}, "continuation": "sideways"}, "continuation"),
])
def test_sweep_rejects_bad_definitions(spec, match):
    with pytest.raises(MoireSTMError, match=match):
        Sweep.from_dict(spec)


def test_builtin_sweeps_and_tasks():
    demo = Sweep.load("demo")
    n_u = len(demo.values["hubbard_u_ev"])
    n_fill, n_bias = len(demo.values["filling"]), len(demo.values["bias_ev"])
    blocks = -(-n_u // demo.chain_length)
    assert demo.n_samples == n_u * n_fill * n_bias and len(demo.tasks()) == n_fill * blocks  # U chain blocks
    chains = [u for t in demo.tasks()[:blocks] for u in t["u_values"]]
    assert chains[0] == 6.0 and chains[-1] == 0.0 and len(chains) == n_u  # descending continuation
    keys = [s["key"] for t in demo.tasks() for s in t["samples"]]
    assert len(set(keys)) == len(keys)
    with pytest.raises(MoireSTMError, match="not found"):
        Sweep.load("no-such-sweep.toml")


def test_chain_length_splits_u_chains(tmp_path):
    spec = {"name": "blocks", "fixed": {"index": 1, "distance_nm": 0.335},
            "axes": {"hubbard_u_ev": {"start": 0.0, "stop": 2.0, "step": 0.25}, "filling": [0.0, 1.0]}}
    whole = Sweep.from_dict(spec)
    blocks = Sweep.from_dict({**spec, "chain_length": 4})
    assert [len(t["u_values"]) for t in whole.tasks()] == [9, 9]
    assert [len(t["u_values"]) for t in blocks.tasks()] == [4, 4, 1, 4, 4, 1]
    assert blocks.tasks()[0]["u_values"] == [2.0, 1.75, 1.5, 1.25]  # still descending within a block
    keys = [s["key"] for t in blocks.tasks() for s in t["samples"]]
    assert len(set(keys)) == len(keys) == whole.n_samples
    # the default leaves sample parameters (and so keys of existing stores) unchanged
    assert "chain_length" not in whole.tasks()[0]["samples"][0]["params"]
    assert blocks.tasks()[0]["samples"][0]["params"]["chain_length"] == 4
    for bad in (0, -2, 1.5, True):
        with pytest.raises(MoireSTMError, match="chain_length"):
            Sweep.from_dict({**spec, "chain_length": bad})


def test_sweep_toml_roundtrip(tmp_path):
    path = _sweep_file(tmp_path)
    sweep = Sweep.load(path)
    assert sweep.n_samples == 5 * 2 * 2
    again = tmp_path / "again.toml"
    again.write_text(sweep.to_toml())
    assert [s["key"] for t in Sweep.load(again).tasks() for s in t["samples"]] == \
        [s["key"] for t in sweep.tasks() for s in t["samples"]]


def test_run_resume_and_failed_samples(tmp_path, engine_dir):
    spec, out = _sweep_file(tmp_path), tmp_path / "data.h5"
    limited = run_sweep(spec, tmp_path / "limited.h5", scheduler="synchronous", progress=False, limit_tasks=0)
    assert (limited.skipped, limited.tasks) == (0, 0)  # samples cut by the limit are not "already present"
    first = run_sweep(spec, out, scheduler="synchronous", progress=False)
    assert (first.written_ok, first.written_failed) == (18, 2)
    store = Store.open(out)
    assert len(store.keys()) == 18 and all("synthetic failure" in store.error(k) for k in store.keys("failed"))
    key = store.keys()[0]
    p = store.params(key)
    np.testing.assert_allclose(store.image(key)[0, 0], p["hubbard_u_ev"] + p["bias_ev"], rtol=1e-6)
    assert set(p) >= {"hubbard_u_ev", "filling", "bias_ev", "index", "distance_nm", "dielectric",
                      "scf_kgrid", "ldos_kgrid", "temperature_k", "broadening_ev", "ft"}
    second = run_sweep(spec, out, scheduler="synchronous", progress=False)  # retries only failures
    assert (second.skipped, second.written_ok, second.written_failed) == (18, 0, 2)
    third = run_sweep(spec, out, scheduler="synchronous", progress=False, retry_failed=False)
    assert third.tasks == 0 and third.skipped == 20
    assert len(Store.open(out).keys(None)) == 20 and Store.open(out).check() == []


def test_run_on_local_dask_cluster(tmp_path, engine_dir):
    out = tmp_path / "data.h5"
    summary = run_sweep(_sweep_file(tmp_path, stop=1.0), out, workers=1, progress=False)
    assert summary.workers == 1 and summary.written_ok + summary.written_failed == 12
    assert len(Store.open(out).keys(None)) == 12


def test_bad_outputs_lose_nothing(tmp_path, engine_dir):
    spec = _sweep_file(tmp_path)
    with pytest.raises(MoireSTMError, match="does not exist"):
        run_sweep(spec, tmp_path / "nope" / "d.h5", scheduler="synchronous", progress=False)
    with pytest.raises(MoireSTMError, match="directory"):
        run_sweep(spec, tmp_path, scheduler="synchronous", progress=False)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["keep"] = np.arange(5)
    before = foreign.read_bytes()
    with pytest.raises(MoireSTMError, match="another tool"):
        run_sweep(spec, foreign, scheduler="synchronous", progress=False)
    assert foreign.read_bytes() == before
    with pytest.raises(MoireSTMError, match="engine"):
        Sweep.from_dict({"axes": {"bias_ev": [0.0]}, "engine": "nonsense"})


def _cli(args, env):
    code = "import sys; from moirestm.cli import app; sys.argv = ['moirestm'] + sys.argv[1:]; app()"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_and_rerun_gives_complete_dataset(tmp_path, engine_dir):
    """Kill the whole run (client and workers) with SIGKILL at random moments, then rerun."""
    spec = _sweep_file(tmp_path, seed=40, stop=4.0)  # 40 samples, 40 ms each, 2 chains
    out = tmp_path / "data.h5"
    env = dict(os.environ)
    expected = {s["key"] for t in Sweep.load(spec).tasks() for s in t["samples"]}
    rng = random.Random(7)
    runs = [["--scheduler", "synchronous"]] * 3 + [["--workers", "1"]]
    for extra in runs:
        proc = _cli(["sweep", "run", str(spec), "--out", str(out), "--commit-interval-s", "0.05", *extra], env)
        time.sleep(rng.uniform(0.8, 2.5) if extra[0] == "--scheduler" else rng.uniform(3.0, 6.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():  # every intermediate state opens and is consistent
            assert Store.open(out).check() == []
    final = _cli(["sweep", "run", str(spec), "--out", str(out), "--scheduler", "synchronous",
                  "--no-retry-failed"], env)
    assert final.wait(timeout=60) == 0, final.stderr.read().decode()
    store = Store.open(out)
    assert set(store.keys(None)) == expected  # complete, no extra samples
    assert len(store.keys(None)) == len(expected)
    assert store.check() == [] and store.pending == []
    with h5py.File(out, "r") as f:
        assert len(f["samples"]) == len(expected)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def _manual_store(path, samples):
    """A store with samples {U: value written into a 2x2 image, or None for a failed sample}."""
    store = Store.create(path, {"sweep": path.stem})
    for u, value in samples.items():
        params = {"hubbard_u_ev": u}
        if value is None:
            store.write_sample(sample_key(params), params, {}, status="failed", error="no convergence")
        else:
            arrays = {"ft_image": np.full((2, 2), value), "kx_nm": np.arange(2.0), "ky_nm": np.arange(2.0)}
            store.write_sample(sample_key(params), params, arrays, results={"source": path.stem})
    store.commit()
    store.close()
    return path


def test_merge_stores_keeps_or_replaces(tmp_path):
    from moirestm.dataset.store import merge_stores

    a = _manual_store(tmp_path / "a.h5", {1.0: 1.0, 2.0: None, 3.0: 3.0})
    b = _manual_store(tmp_path / "b.h5", {2.0: 20.0, 3.0: 30.0, 4.0: 40.0})
    before = {p.name: p.read_bytes() for p in (a, b)}
    kept = merge_stores(tmp_path / "kept.h5", [a, b])
    assert (kept["copied"], kept["skipped"]) == (4, 2)
    replaced = merge_stores(tmp_path / "new.h5", [a, b], replace=True)
    assert (replaced["copied"], replaced["skipped"]) == (6, 0)
    key = {u: sample_key({"hubbard_u_ev": u}) for u in (1.0, 2.0, 3.0, 4.0)}
    with Store.open(tmp_path / "kept.h5") as s:
        assert s.status(key[2.0]) == "failed" and s.image(key[3.0])[0, 0] == 3.0 and s.check() == []
        assert "merged_from" in s.sweep_params
    with Store.open(tmp_path / "new.h5") as s:
        assert s.image(key[2.0])[0, 0] == 20.0 and s.image(key[3.0])[0, 0] == 30.0
        assert s.image(key[1.0])[0, 0] == 1.0 and s.results(key[4.0]) == {"source": "b"} and s.check() == []
    assert {p.name: p.read_bytes() for p in (a, b)} == before  # sources untouched
    with pytest.raises(MoireSTMError, match="source store not found"):
        merge_stores(tmp_path / "x.h5", [tmp_path / "missing.h5"])
    with pytest.raises(MoireSTMError, match="is the output store"):
        merge_stores(a, [a])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(MoireSTMError, match="not a.*dataset store"):
        merge_stores(tmp_path / "y.h5", [tmp_path / "junk.h5"])


# --------------------------------------------------------------------------- real pipeline
def test_meanfield_engine_small_sweep(tmp_path):
    pytest.importorskip("moirestm.meanfield")
    spec = {"name": "tiny", "fixed": {"index": 1, "kgrid": 2, "bias_ev": 0.0},
            "axes": {"hubbard_u_ev": [0.0, 4.0], "filling": [0.0]},
            "ft": {"size": 32, "tiling": 2}, "stm": {"enabled": False}}
    summary = run_sweep(Sweep.from_dict(spec), tmp_path / "d.h5", scheduler="synchronous", progress=False)
    assert summary.written_ok == 2, summary.errors
    store = Store.open(tmp_path / "d.h5")
    for key in store.keys():
        arrays = store.arrays(key)
        assert store.image(key).shape == (32, 32)
        assert {"ft_image", "kx_nm", "ky_nm", "ldos", "n_up", "n_down", "residuals"} <= set(arrays)
        assert arrays["n_up"].shape == (TBGLattice(1).n_atoms,)
        assert store.results(key)["converged"] is True
    assert store.check() == []
    # FT of the STM map (FFT route) with the map stored alongside
    spec = {**spec, "axes": {"hubbard_u_ev": [0.0], "filling": [0.0]},
            "stm": {"enabled": True, "n_cells": 1, "pixels_per_nm": 12.0},
            "ft": {"size": 16, "source": "stm_map"}}
    summary = run_sweep(Sweep.from_dict(spec), tmp_path / "m.h5", scheduler="synchronous", progress=False)
    assert summary.written_ok == 1, summary.errors
    store = Store.open(tmp_path / "m.h5")
    arrays = store.arrays(store.keys()[0])
    assert arrays["stm_map"].ndim == 2 and arrays["ft_image"].shape == (16, 16)
    assert store.results(store.keys()[0])["ft_params"]["route"] == "chirp_z_fft"


def test_chain_warm_starts_past_a_failed_u(tmp_path, monkeypatch):
    """A U that does not converge is recorded as failed; the next U starts from the last converged solution."""
    import moirestm.meanfield as mf

    real_solve, starts = mf.solve, []

    def flaky_solve(tb, interaction, **kw):
        starts.append((interaction.hubbard_u_ev, kw["start"]))
        sol = real_solve(tb, interaction, **kw)
        if interaction.hubbard_u_ev == 2.0:
            sol.converged = False
        return sol

    monkeypatch.setattr(mf, "solve", flaky_solve)
    spec = {"name": "chain", "continuation": "descending", "fixed": {"index": 1, "kgrid": 2, "bias_ev": 0.0},
            "axes": {"hubbard_u_ev": [1.0, 2.0, 3.0], "filling": [0.0]},
            "ft": {"size": 16, "tiling": 1}, "stm": {"enabled": False}}
    summary = run_sweep(Sweep.from_dict(spec), tmp_path / "c.h5", scheduler="synchronous", progress=False)
    assert (summary.written_ok, summary.written_failed) == (2, 1)
    assert [u for u, _ in starts] == [3.0, 2.0, 1.0] and starts[0][1] == "afm"
    after_failure = starts[2][1]
    assert not isinstance(after_failure, str)
    assert after_failure.params["interaction"]["hubbard_u_ev"] == 3.0  # the U = 2 iterate is skipped


# --------------------------------------------------------------------------- import / export
def _ldos_file(path, scale=10.0):
    lat = TBGLattice(1)
    rng = np.random.default_rng(0)
    data = np.column_stack([lat.positions_nm[:, :2] * scale, rng.random(lat.n_atoms)])
    np.savetxt(path, data, header="x y LDOS")
    return data


def test_import_ldos_text_files(tmp_path):
    a = tmp_path / "ldos-i1-U2.5-nu0.dat"
    b = tmp_path / "ldos_i1_U0.dat"
    _ldos_file(a, scale=10.0)  # Angstrom
    _ldos_file(b, scale=1.0)  # nm
    out = tmp_path / "imp.h5"
    assert import_ldos_files([a, b], out, ft={"size": 16}) == {"imported": 2, "skipped": 0}
    store = Store.open(out)
    us = sorted(store.params(k)["hubbard_u_ev"] for k in store.keys())
    assert us == [0.0, 2.5]
    units = {store.params(k)["file"]: store.params(k)["length_unit"] for k in store.keys()}
    assert units == {a.name: "angstrom", b.name: "nm"}
    assert import_ldos_files([a], out, ft={"size": 16}) == {"imported": 0, "skipped": 1}
    assert store.check() == []


@pytest.mark.parametrize("name, body, match", [
    ("ldos-nou.dat", "0 0 1\n0.142 0 1\n0 0.3 1\n", "no Hubbard U"),
    ("ldos-U1.dat", "0 0\n1 1\n2 2\n", "expected 3 columns"),
    ("ldos-U1.dat", "0 0 1\n0.142 0 x\n0 0.3 1\n", "non-numeric"),
    ("ldos-U1.dat", "0 0 1\n", "at least 3 atoms"),
    ("ldos-U1.dat", "0 0 1\n7 0 1\n0 7.5 1\n", "length unit"),
])
def test_import_rejects_malformed_files(tmp_path, name, body, match):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(MoireSTMError, match=match):
        import_ldos_files([path], tmp_path / "imp.h5")
    assert not (tmp_path / "imp.h5").exists()  # validated before anything is written


def test_u_from_name():
    assert hubbard_u_from_name("run-U2.5-x.txt") == 2.5
    assert hubbard_u_from_name("a_U3.dat") == 3.0
    with pytest.raises(MoireSTMError, match="several"):
        hubbard_u_from_name("a-U1-b-U2.dat")


def test_export_png_is_grayscale_faithful(tmp_path, engine_dir):
    from PIL import Image

    out = tmp_path / "data.h5"
    run_sweep(_sweep_file(tmp_path, stop=1.0), out, scheduler="synchronous", progress=False)
    n = export_png(out, tmp_path / "png", colormap="viridis")
    store = Store.open(out)
    assert n == len(store.keys())
    import csv

    rows = list(csv.DictReader(open(tmp_path / "png" / "index.csv")))
    for row in rows:
        pixels = np.array(Image.open(tmp_path / "png" / row["file"]))
        assert pixels.dtype == np.uint16
        lo, hi = float(row["png_min"]), float(row["png_max"])
        restored = lo + pixels[::-1].astype(float) / 65535 * (hi - lo)
        np.testing.assert_allclose(restored, store.image(row["key"]), atol=(hi - lo) / 65535 + 1e-7)
    with pytest.raises(MoireSTMError, match="not empty"):
        export_png(out, tmp_path / "png")
    summary = info(out)
    assert summary["n_ok"] == 10 and summary["n_failed"] == 2 and summary["image_shape"] == [8, 8]
    assert summary["varying"]["hubbard_u_ev"]["max"] == 1.0
    pixels, lo, hi = to_uint16(np.array([[0.0, 1.0], [2.0, 4.0]]))
    assert pixels.max() == 65535 and pixels.min() == 0


def test_cli_dataset_commands(tmp_path, engine_dir):
    from typer.testing import CliRunner

    from moirestm.cli import app

    runner = CliRunner()
    out = tmp_path / "data.h5"
    res = runner.invoke(app, ["sweep", "run", str(_sweep_file(tmp_path, stop=0.5)), "--out", str(out),
                              "--scheduler", "synchronous"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["dataset", "info", str(out)])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_ok"] == 8
    assert runner.invoke(app, ["dataset", "check", str(out)]).exit_code == 0
    assert runner.invoke(app, ["dataset", "export", str(out), str(tmp_path / "png")]).exit_code == 0
    res = runner.invoke(app, ["sweep", "show", "demo"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_samples"] == Sweep.load("demo").n_samples
    bad = tmp_path / "bad.toml"
    bad.write_text("[axes]\nhubbard_u_ev = { start = 3.0, stop = 1.0, step = 0.5 }\n")
    res = runner.invoke(app, ["sweep", "run", str(bad), "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "empty range" in " ".join(res.output.split())
    res = runner.invoke(app, ["dataset", "info", str(bad)])
    assert res.exit_code == 2 and "not an HDF5 file" in " ".join(res.output.split())


@pytest.mark.validate
@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_sigkill_stress_many_random_kills(tmp_path, engine_dir, suffix):
    """25 SIGKILLs at random moments (during sample writes and journal merges), then a clean rerun.

    One task per U value and 20 ms per sample make a full run last ~3.5 s, so kills land mid-run on an
    idle machine too; the merge interval alternates between every task and every 0.3 s so that some
    kills hit merges and others leave journal entries pending.
    """
    spec = _sweep_file(tmp_path, seed=20, stop=20.0)  # 164 samples, 20 ms each
    spec.write_text('continuation = "none"\n' + spec.read_text())
    out = tmp_path / f"data{suffix}"
    expected = {s["key"] for t in Sweep.load(spec).tasks() for s in t["samples"]}
    rng = random.Random(11)
    seen = []
    for attempt in range(25):
        interval = "0" if attempt % 2 else "0.3"
        proc = _cli(["sweep", "run", str(spec), "--out", str(out), "--scheduler", "synchronous",
                     "--commit-interval-s", interval], dict(os.environ))
        time.sleep(rng.uniform(0.5, 2.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            store = Store.open(out)
            assert store.check() == []
            seen.append((len(store.keys(None)), len(store.pending)))
    final = _cli(["sweep", "run", str(spec), "--out", str(out), "--scheduler", "synchronous",
                  "--no-retry-failed"], dict(os.environ))
    assert final.wait(timeout=120) == 0
    store = Store.open(out)
    assert set(store.keys(None)) == expected and store.check() == [] and store.pending == []
    if suffix == ".h5":  # a Zarr store has no journal: every sample is committed as written
        assert any(p for _, p in seen), f"no kill left pending journal entries: {seen}"
    else:
        assert not [p.name for p in (out / "samples").iterdir() if p.name.startswith(".")]


def test_magic_distance_is_cached_on_disk(tmp_path, monkeypatch):
    from moirestm.dataset import sweep as sweep_module

    cache = tmp_path / "magic.json"
    monkeypatch.setenv("MOIRESTM_CACHE", str(cache))
    sweep_module.resolve_magic_distance.cache_clear()
    calls = []

    def fake_search(index):  # stands in for the minute-long band-width minimisation
        calls.append(index)
        return type("Result", (), {"distance_nm": 0.2944123456})()

    monkeypatch.setattr("moirestm.hamiltonian.magic.magic_distance", fake_search)
    assert sweep_module.resolve_magic_distance(9) == (0.294412, "magic_distance")
    sweep_module.resolve_magic_distance.cache_clear()
    assert sweep_module.resolve_magic_distance(9) == (0.294412, "magic_distance")
    assert calls == [9]  # second call read the file
    cache.write_text("{not json")
    sweep_module.resolve_magic_distance.cache_clear()
    assert sweep_module.resolve_magic_distance(9)[0] == 0.294412
    assert calls == [9, 9]
    # another index is added beside the cached one, which stays
    sweep_module.resolve_magic_distance.cache_clear()
    sweep_module.resolve_magic_distance(5)
    assert calls == [9, 9, 5]
    assert len(json.loads(cache.read_text())) == 2
    sweep_module.resolve_magic_distance.cache_clear()
