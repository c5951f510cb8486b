"""Every stage result saves and loads through the one result base, with kind and format checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from moirestm.errors import MoireSTMError  # noqa: E402
from moirestm.io import Result, write_h5  # noqa: E402


def same(a, b) -> bool:
    """Deep equality (arrays element-wise, NaN equal to NaN, results by their records)."""
    if isinstance(a, Result) and not isinstance(a, dict):
        return type(a) is type(b) and same(a._record(), b._record())
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.fixture(scope="module")
def run_and_store(tmp_path_factory):
    from test_explain import make_store  # the tiny store with peaks at the lattice's positions

    from moirestm.learn import train

    d = tmp_path_factory.mktemp("roundtrip")
    make_store(d / "data.h5", u_values=np.round(np.arange(0, 5.01, 0.5), 3), size=32)
    run = train(d / "data.h5", model="mlp", split="random", out=d / "run", progress=False, epochs=1,
                batch_size=8, kernel=False, min_epochs=0)
    return run, d / "data.h5"


def _roundtrip(result, path: Path):
    result.save(path)
    back = type(result).load(path)
    assert same(result, back)
    return back


def test_crossover(tmp_path):
    from moirestm.explain.crossover import Crossover

    _roundtrip(Crossover(u_c=2.1, method="tanh", u_c_tanh=2.1, at_edge=True, note="x", fit={"a": [1.0, 2.0]}),
               tmp_path / "c.h5")


def test_analysis_result(run_and_store, tmp_path):
    from moirestm.explain.analysis import analyze

    res = analyze(run_and_store[1], None, plots=False)
    back = _roundtrip(res, tmp_path / "a.h5")
    assert back.summary() == res.summary() or same(back.summary(), res.summary())


def test_explain_result(run_and_store, tmp_path):
    from moirestm.explain.attribution import explain

    run, store = run_and_store
    res = explain(run, store, samples="test", out=None, methods=("integrated_gradients",), max_samples=2,
                  n_steps=2, plots=False)
    back = _roundtrip(res, tmp_path / "e.h5")
    assert back.attributions[0].regions.masks.keys() == res.attributions[0].regions.masks.keys()


def test_prediction_evaluation_and_run_info(run_and_store, tmp_path):
    from moirestm.learn import evaluate, predict
    from moirestm.learn.evaluate import Evaluation
    from moirestm.learn.train import RunInfo

    run, store = run_and_store
    np.save(tmp_path / "img.npy", np.ones((32, 32), np.float32))
    _roundtrip(predict(run, tmp_path / "img.npy"), tmp_path / "p.h5")
    ev = evaluate(run, plots=False)
    assert isinstance(ev, Evaluation) and "targets" in ev
    _roundtrip(ev, tmp_path / "ev.h5")
    _roundtrip(RunInfo.of(run), tmp_path / "run.h5")


def test_calibrated(tmp_path):
    from moirestm.measured import calibrate
    from moirestm.measured.synthetic import synthetic_stm_map

    img = synthetic_stm_map(1.6, n_px=200, pixel_nm=0.3, top_weight=0.0, bottom_weight=0.0, noise=0.3, seed=5)
    res = calibrate(img, 0.3, size=64)
    _roundtrip(res, tmp_path / "cal.h5")


def test_load_checks_kind_format_and_damage(tmp_path):
    from moirestm.explain.crossover import Crossover
    from moirestm.learn.predict import Prediction

    Crossover(u_c=1.0, method="onset").save(tmp_path / "c.h5")
    with pytest.raises(MoireSTMError, match="holds a Crossover, expected a Prediction"):
        Prediction.load(tmp_path / "c.h5")
    with pytest.raises(MoireSTMError, match="refusing to overwrite .* holds a Crossover"):
        Prediction({"u": 1.0}, {"u": 0.1}, "x").save(tmp_path / "c.h5")
    import h5py

    with h5py.File(tmp_path / "c.h5", "a") as f:
        f.attrs["result_format"] = 99
    with pytest.raises(MoireSTMError, match="format 99, newer"):
        Crossover.load(tmp_path / "c.h5")
    write_h5(tmp_path / "d.h5", "Crossover", {"__result__": "Crossover", "fields": {"bogus": 1}}, {})
    with pytest.raises(MoireSTMError, match="damaged Crossover"):
        Crossover.load(tmp_path / "d.h5")


def test_band_structure_dos_and_magic_distance_with_the_flat_layout_of_older_files(tmp_path):
    from moirestm.hamiltonian import TightBinding, band_structure, density_of_states
    from moirestm.hamiltonian.magic import MagicDistance
    from moirestm.hamiltonian.spectrum import BandStructure
    from moirestm.lattice import TBGLattice

    tb = TightBinding(TBGLattice(1))
    bs = _roundtrip(band_structure(tb, n_points=5), tmp_path / "b.h5")
    _roundtrip(density_of_states(tb, kgrid=2), tmp_path / "d.h5")
    _roundtrip(MagicDistance(3, 9.43, 0.3, 0.01, 2.0, np.linspace(0.25, 0.33, 4), np.ones(4), {"n_scan": 4}),
               tmp_path / "m.h5")
    flat = dict(bs.params, labels=list(bs.labels), fermi_ev=bs.fermi_ev, full_spectrum=bs.full_spectrum)
    write_h5(tmp_path / "old.h5", "BandStructure", flat, {"k_nm": bs.k_nm, "distance_nm": bs.distance_nm,
                                                           "ticks_nm": bs.ticks_nm, "energies_ev": bs.energies_ev})
    assert same(BandStructure.load(tmp_path / "old.h5"), bs)


# ----------------------------------------------------------------------------- mean field
@pytest.fixture(scope="module")
def tbg1():
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice

    return TightBinding(TBGLattice(1))


def _flat_solution_file(sol, path: Path) -> None:
    """``sol`` in the layout MeanFieldSolution.save wrote before the result base (scalars among the parameters,
    arrays at the root, Fock pairs as ``fock_*``)."""
    scalars = ("mu_ev", "free_energy_ev", "grand_potential_ev", "converged", "iterations", "wall_time_s")
    arrays = {name: value for name, value in sol._record().items() if isinstance(value, np.ndarray)}
    arrays.update({f"fock_{key}": value for key, value in (sol.fock or {}).items()})
    write_h5(path, "MeanFieldSolution", dict(sol.params, **{name: getattr(sol, name) for name in scalars}), arrays)


@pytest.mark.parametrize("fock", [False, True])
def test_mean_field_solution_also_from_the_flat_layout(tbg1, tmp_path, fock):
    from moirestm.meanfield import Interaction, MeanFieldSolution, solve

    sol = solve(tbg1, Interaction(hubbard_u_ev=4.0, fock=fock), kgrid=1, max_iterations=40)
    assert (sol.fock is not None) == fock
    back = _roundtrip(sol, tmp_path / "sol.h5")
    np.testing.assert_allclose(back.hamiltonians((0.1, 0.2))[0], sol.hamiltonians((0.1, 0.2))[0], atol=1e-12)
    _flat_solution_file(sol, tmp_path / "old.h5")
    assert same(MeanFieldSolution.load(tmp_path / "old.h5"), sol)


def test_mean_field_solution_damage_is_named(tbg1, tmp_path):
    import h5py

    from moirestm.meanfield import Interaction, MeanFieldSolution, solve

    sol = solve(tbg1, Interaction(hubbard_u_ev=1.0, coulomb="none"), kgrid=1, start="pm")
    sol.save(tmp_path / "sol.h5")
    with h5py.File(tmp_path / "sol.h5", "a") as f:
        f["n_up"][0] = np.nan
    with pytest.raises(MoireSTMError, match="damaged MeanFieldSolution, non-finite densities"):
        MeanFieldSolution.load(tmp_path / "sol.h5")
    _flat_solution_file(sol, tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:
        del f["bands_down"]
    with pytest.raises(MoireSTMError, match="missing bands_down"):
        MeanFieldSolution.load(tmp_path / "old.h5")


def test_u_sweep_saves_each_solution_once(tbg1, tmp_path):
    import h5py

    from moirestm.meanfield import Interaction, USweep, sweep_u

    res = sweep_u(tbg1, Interaction(coulomb="none"), [0.0, 6.0], kgrid=1, max_iterations=60)
    assert isinstance(res, USweep)
    back = _roundtrip(res, tmp_path / "u.h5")
    for i, sol in enumerate(back.best):  # the best solutions are the passes' own entries again
        assert sol is back.passes[res.best[i].params["sweep_pass"]][i]
    assert same(back.table(), res.table()) and back.mean_iterations == res.mean_iterations
    with h5py.File(tmp_path / "u.h5") as f:
        names = []
        f.visit(names.append)
    assert sum(name.endswith("/n_up") for name in names) == 4  # two passes x two U values


# ----------------------------------------------------------------------------- observables
@pytest.fixture(scope="module")
def stm_and_ft(tbg1):
    from moirestm.meanfield import Interaction, solve
    from moirestm.observables import ft_ldos, site_ldos, stm_map

    sol = solve(tbg1, Interaction(hubbard_u_ev=2.0), kgrid=1, max_iterations=40)
    ldos = site_ldos(sol, [0.0, 0.05], ldos_kgrid=2)
    image = stm_map(ldos, bias_index=1, n_cells=1, pixels_per_nm=8.0)
    return image, ft_ldos(ldos, size=16)


def test_stm_map_and_ft_image_also_from_the_flat_layout(stm_and_ft, tmp_path):
    from moirestm.observables import FTImage, STMMap

    image, ft = stm_and_ft
    assert _roundtrip(image, tmp_path / "map.h5").params["bias_ev"] == 0.05
    assert _roundtrip(ft, tmp_path / "ft.h5").image.dtype == np.float32
    for result, axes, name in ((image, ("x_nm", "y_nm"), "old_map.h5"), (ft, ("kx_nm", "ky_nm"), "old_ft.h5")):
        arrays = {name_: getattr(result, name_) for name_ in ("image",) + axes}
        write_h5(tmp_path / name, result.KIND, result.params, arrays)  # the layout before the result base
        assert same(type(result).load(tmp_path / name), result)
    write_h5(tmp_path / "f64.h5", "FTImage", ft.params, {"image": ft.image.astype(float), "kx_nm": ft.kx_nm,
                                                          "ky_nm": ft.ky_nm})
    assert FTImage.load(tmp_path / "f64.h5").image.dtype == np.float32
    assert STMMap.load(tmp_path / "old_map.h5").image.shape == (len(image.y_nm), len(image.x_nm))


def test_stm_map_and_ft_image_damage_is_named(stm_and_ft, tmp_path):
    import h5py

    from moirestm.observables import FTImage, STMMap

    image, ft = stm_and_ft
    for result, axis in ((image, "x_nm"), (ft, "ky_nm")):
        path = tmp_path / f"{result.KIND}.h5"
        result.save(path)
        with h5py.File(path, "a") as f:
            data = f[axis][()]
            del f[axis]
            f[axis] = data[:-1]
        with pytest.raises(MoireSTMError, match=f"damaged {result.KIND}, image shape .* does not match the axes"):
            type(result).load(path)
        with h5py.File(path, "a") as f:
            del f[axis]
        with pytest.raises(MoireSTMError, match=f"damaged {result.KIND} record .*missing {axis}"):
            type(result).load(path)
    with pytest.raises(MoireSTMError, match="holds a STMMap, expected a FTImage"):
        FTImage.load(tmp_path / "STMMap.h5")
    with pytest.raises(MoireSTMError, match="refusing to overwrite .* holds a FTImage"):
        image.save(tmp_path / "FTImage.h5")
    assert STMMap.KIND == "STMMap"


def test_site_ldos_new_and_flat_layout_and_damage(tbg1, tmp_path):
    import h5py

    from moirestm.meanfield import Interaction, solve
    from moirestm.observables import SiteLDOS, site_ldos

    ldos = site_ldos(solve(tbg1, Interaction(hubbard_u_ev=2.0), kgrid=1, max_iterations=40), [0.0, 0.05])
    assert same(_roundtrip(ldos, tmp_path / "ldos.h5"), ldos)
    names = ("bias_ev", "ldos_up", "ldos_down", "positions_nm", "layer", "superlattice_nm")
    write_h5(tmp_path / "old.h5", "SiteLDOS", ldos.params, {n: getattr(ldos, n) for n in names})
    assert same(SiteLDOS.load(tmp_path / "old.h5"), ldos)
    with h5py.File(tmp_path / "ldos.h5", "a") as f:
        data = f["ldos_up"][()]
        del f["ldos_up"]
        f["ldos_up"] = data[:, :-1]
    with pytest.raises(MoireSTMError, match="damaged SiteLDOS, inconsistent array shapes"):
        SiteLDOS.load(tmp_path / "ldos.h5")
