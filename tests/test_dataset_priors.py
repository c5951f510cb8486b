"""Sweep priors: Sobol draws crossed with U chains, draw ids, stored prior metadata, bad priors."""

import numpy as np
import pytest

from moirestm.dataset import Sweep
from moirestm.dataset.priors import Prior, draw, sobol_points
from moirestm.errors import MoireSTMError
from moirestm.lattice.pressure import distance_for_pressure

PRIORS = {"dielectric": {"dist": "uniform", "low": 4.0, "high": 10.0},
          "broadening_ev": {"dist": "loguniform", "low": 0.002, "high": 0.03},
          "filling": {"dist": "normal", "mean": 0.0, "sd": 0.1, "low": -0.25, "high": 0.3},
          "temperature_k": [1.0, 4.0, 10.0],
          "bias_ev": {"dist": "uniform", "low": -0.01, "high": 0.01},
          "gate_distance_nm": {"dist": "uniform", "low": 10.0, "high": 40.0},
          "pressure_gpa": {"dist": "uniform", "low": 0.0, "high": 0.4}}


def _spec(**extra):
    spec = {"name": "p", "fixed": {"index": 1}, "axes": {"hubbard_u_ev": {"start": 0.0, "stop": 2.0, "step": 0.5}},
            "n_draws": 16, "prior_seed": 5, "u_jitter": True, "priors": dict(PRIORS)}
    spec.update(extra)
    return spec


def test_draws_reproducible_inside_priors_and_crossed_with_u():
    sweep = Sweep.from_dict(_spec())
    tasks = sweep.tasks()
    assert sweep.n_samples == 16 * 5 and len(tasks) == 16  # one draw = one U chain = one task
    again = Sweep.from_dict(_spec()).tasks()
    assert [s["key"] for t in tasks for s in t["samples"]] == [s["key"] for t in again for s in t["samples"]]
    other = Sweep.from_dict(_spec(prior_seed=6)).tasks()
    assert tasks[0]["base"]["dielectric"] != other[0]["base"]["dielectric"]
    ids = set()
    for task in tasks:
        params = [s["params"] for s in task["samples"]]
        draw_ids = {p["draw_id"] for p in params}
        assert len(draw_ids) == 1  # every U of a chain shares its draw
        ids |= draw_ids
        p = params[0]
        assert 4.0 <= p["dielectric"] <= 10.0 and 0.002 <= p["broadening_ev"] <= 0.03
        assert -0.25 <= p["filling"] <= 0.3 and p["temperature_k"] in (1.0, 4.0, 10.0)
        assert -0.01 <= p["bias_ev"] <= 0.01 and 10.0 <= p["gate_distance_nm"] <= 40.0
        assert p["interaction"]["gate_distance_nm"] == p["gate_distance_nm"]
        assert 0.0 <= p["pressure_gpa"] <= 0.4
        assert p["distance_nm"] == pytest.approx(distance_for_pressure(p["pressure_gpa"]), rel=1e-8)
        assert task["bias_ev"] == [p["bias_ev"]] and task["broadening_ev"] == [p["broadening_ev"]]
        u = task["u_values"]
        assert u == sorted(u, reverse=True) and len(set(u)) == 5  # descending chain, warm starts kept
        assert all(0.0 <= x <= 2.25 for x in u)
    assert ids == set(range(16))
    keys = [s["key"] for t in tasks for s in t["samples"]]
    assert len(set(keys)) == len(keys)
    # jitter: the draws do not share U values
    firsts = [t["u_values"][0] for t in tasks]
    assert len(set(firsts)) == len(firsts)
    records = sweep.prior_records()
    assert records["n_draws"] == 16 and records["prior_seed"] == 5 and records["u_jitter"] is True
    assert records["priors"]["dielectric"] == {"dist": "uniform", "low": 4.0, "high": 10.0}
    assert records["priors"]["temperature_k"] == {"dist": "choice", "values": [1.0, 4.0, 10.0]}


def test_sobol_balance_of_first_two_moments():
    """256 scrambled-Sobol draws: mean and variance of each uniform dimension within 1 % of 1/2 and 1/12."""
    u = sobol_points(256, 4, seed=0)
    np.testing.assert_allclose(u.mean(axis=0), 0.5, atol=0.005)
    np.testing.assert_allclose(u.var(axis=0), 1 / 12, rtol=0.01)
    corr = np.corrcoef(u.T)[np.triu_indices(4, 1)]
    assert np.all(np.abs(corr) < 0.05)
    # the truncated normal through its inverse CDF keeps its moments
    prior = Prior.parse("filling", {"dist": "normal", "mean": 0.0, "sd": 0.1, "low": -1.0, "high": 1.0})
    x = np.array(prior.transform(sobol_points(1024, 1, seed=1)[:, 0]))
    assert abs(x.mean()) < 0.002 and x.std() == pytest.approx(0.1, rel=0.02)
    # the choice of three values is balanced
    draws = draw({"index": Prior.parse("index", [4, 5, 6])}, 300, seed=2)
    assert np.bincount([d["index"] - 4 for d in draws]).min() >= 99


def test_distance_around_magic(monkeypatch):
    from moirestm.dataset import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "resolve_magic_distance", lambda i: (0.27 + 0.001 * i, "magic_distance"))
    spec = _spec(priors={"distance_nm": {"around": "magic", "rel": 0.02}, "index": [5, 9]}, fixed={})
    sweep = Sweep.from_dict(spec)
    for task in sweep.tasks():
        p = task["samples"][0]["params"]
        magic = 0.27 + 0.001 * p["index"]
        assert abs(p["distance_nm"] / magic - 1) <= 0.02 + 1e-9
        assert p["distance_rel"] == pytest.approx(p["distance_nm"] / magic - 1, abs=1e-8)
    record = sweep.prior_records()["priors"]["distance_nm"]
    assert record["around"] == "magic" and record["rel"] == 0.02
    assert record["low"] == pytest.approx(0.275 * 0.98) and record["high"] == pytest.approx(0.279 * 1.02)


def test_stored_samples_carry_draws(tmp_path):
    from moirestm.dataset import Store, run_sweep

    engine = tmp_path / "drawengine.py"
    engine.write_text(
        "import numpy as np\n"
        "def engine(task):\n"
        "    k = np.linspace(-1, 1, 4)\n"
        "    return [{'key': s['key'], 'params': s['params'], 'status': 'ok', 'error': '',\n"
        "             'arrays': {'ft_image': np.full((4, 4), s['params']['dielectric'], np.float32),\n"
        "                        'kx_nm': k, 'ky_nm': k}} for s in task['samples']]\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        spec = _spec(engine="drawengine:engine", n_draws=4)
        run_sweep(Sweep.from_dict(spec), tmp_path / "d.h5", scheduler="synchronous", progress=False)
    finally:
        sys.path.remove(str(tmp_path))
    store = Store.open(tmp_path / "d.h5")
    assert store.sweep_params["n_draws"] == 4 and store.sweep_params["prior_seed"] == 5
    assert set(store.sweep_params["priors"]) == set(PRIORS)
    rows = store.table()
    assert len(rows) == 20 and {r["draw_id"] for r in rows} == {0, 1, 2, 3}
    for row in rows:
        assert store.image(row["key"])[0, 0] == pytest.approx(row["dielectric"])


def test_images_per_solve_share_the_solve_and_draw_the_ldos_parameters():
    """Images of one solve share every self-consistency parameter; bias and broadening are drawn per image."""
    sweep = Sweep.from_dict(_spec(images_per_solve=3))
    samples = [s["params"] for t in sweep.tasks() for s in t["samples"]]
    assert sweep.n_samples == len(samples) == 16 * 5 * 3
    assert len({sample_key_of(p) for p in samples}) == len(samples)
    solves = {}
    for p in samples:
        solves.setdefault((p["draw_id"], p["hubbard_u_ev"]), []).append(p)
    assert len(solves) == 16 * 5
    for images in solves.values():
        assert sorted(p["image_id"] for p in images) == [0, 1, 2]
        for name in ("dielectric", "filling", "distance_nm", "temperature_k", "gate_distance_nm"):
            values = {p[name] if name != "gate_distance_nm" else p["interaction"][name] for p in images}
            assert len(values) == 1, name
    bias = np.array([p["bias_ev"] for p in samples])
    width = np.array([p["broadening_ev"] for p in samples])
    assert bias.min() >= -0.01 and bias.max() <= 0.01 and width.min() >= 0.002 and width.max() <= 0.03
    assert len(np.unique(bias)) == len(samples)  # a fresh draw per image, not one per draw
    assert abs(bias.mean()) < 0.01 * 0.05  # Sobol balance of the image stream
    assert Sweep.from_dict(_spec(images_per_solve=3)).tasks()[3]["samples"][7]["params"] == \
        sweep.tasks()[3]["samples"][7]["params"]  # reproducible
    assert sweep.prior_records()["images_per_solve"] == 3


def sample_key_of(params):
    from moirestm.dataset.sweep import sample_key

    return sample_key(params)


def test_images_per_solve_engine_matches_one_image_per_solve(tmp_path):
    """The meanfield engine's images of one solve equal separately computed single images."""
    from moirestm.dataset.compute import execute_task
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.meanfield import Interaction, solve
    from moirestm.observables import site_ldos

    spec = {"name": "img", "fixed": {"index": 1, "distance_nm": 0.335, "scf_kgrid": 2, "ldos_kgrid": 3},
            "axes": {"hubbard_u_ev": [1.0]}, "n_draws": 2, "prior_seed": 1, "images_per_solve": 4,
            "priors": {"dielectric": {"dist": "uniform", "low": 5.0, "high": 10.0},
                       "bias_ev": {"dist": "uniform", "low": -0.05, "high": 0.05},
                       "broadening_ev": {"dist": "loguniform", "low": 0.01, "high": 0.05}},
            "ft": {"size": 32}, "stm": {"enabled": False}}
    task = Sweep.from_dict(spec).tasks()[0]
    records = execute_task(task)
    assert [r["status"] for r in records] == ["ok"] * 4
    assert len({r["results"]["iterations"] for r in records}) == 1  # one solve for the four images
    p = records[0]["params"]
    tb = TightBinding(TBGLattice(1, 0.335))
    sol = solve(tb, Interaction(hubbard_u_ev=1.0, dielectric=p["dielectric"]), filling=p["filling"], kgrid=2,
                temperature_k=p["temperature_k"], start="afm")
    for r in records:
        one = site_ldos(sol, [r["params"]["bias_ev"]], broadening_ev=r["params"]["broadening_ev"], ldos_kgrid=3)
        np.testing.assert_allclose(r["arrays"]["ldos"], one.total[0], rtol=2e-2)


def test_info_counts_each_solve_once(tmp_path):
    """dataset info summarises the solves behind the images: 2 draws x 1 U x 3 images = 6 images, 2 solves."""
    from moirestm.dataset import run_sweep
    from moirestm.dataset.export import info

    spec = {"name": "img", "fixed": {"index": 1, "distance_nm": 0.335, "scf_kgrid": 2, "ldos_kgrid": 2},
            "axes": {"hubbard_u_ev": [1.0]}, "n_draws": 2, "prior_seed": 3, "images_per_solve": 3,
            "priors": {"bias_ev": {"dist": "uniform", "low": -0.05, "high": 0.05}},
            "ft": {"size": 16}, "stm": {"enabled": False}}
    run_sweep(Sweep.from_dict(spec), tmp_path / "d.h5", scheduler="synchronous", progress=False)
    summary = info(tmp_path / "d.h5")
    assert summary["n_ok"] == 6
    solves = summary["solves"]
    assert solves["n"] == 2 and solves["converged"] == 2 and 1 <= solves["iterations"]["median"] <= 300


@pytest.mark.parametrize("priors, extra, match", [
    ({"dielectric": {"dist": "uniform", "low": 0.5, "high": 4.0}}, {}, "dielectric must be >= 1"),
    ({"broadening_ev": {"dist": "uniform", "low": 0.03, "high": 0.01}}, {}, "broadening_ev: low must be below"),
    ({"broadening_ev": {"dist": "uniform", "low": 0.01, "high": 0.01}}, {}, "broadening_ev: low must be below"),
    ({"filling": {"dist": "cauchy", "low": 0.0, "high": 1.0}}, {}, "filling: unknown distribution 'cauchy'"),
    ({"filling": {"dist": "normal", "mean": 0.0, "low": -1.0, "high": 1.0}}, {}, "filling: a normal prior"),
    ({"temperature_k": {"dist": "loguniform", "low": 0.0, "high": 4.0}}, {}, "temperature_k must be positive"),
    ({"dielectric": {"dist": "uniform", "low": 4.0, "high": 8.0}}, {"n_draws": 0}, "n_draws must be a positive"),
    ({"dielectric": {"dist": "uniform", "low": 4.0, "high": 8.0}}, {"n_draws": None}, "n_draws"),
    ({"hubbard_u_ev": {"dist": "uniform", "low": 0.0, "high": 4.0}}, {}, "hubbard_u_ev"),
    ({"colour": [1, 2]}, {}, "colour"),
    ({"index": {"dist": "uniform", "low": 4, "high": 6}}, {"fixed": {}}, "index is a int parameter"),
    ({"index": [5, 5]}, {"fixed": {}}, "index: choice values repeat"),
    ({"distance_nm": {"around": "magic", "rel": 0.9}}, {}, "distance_nm: rel"),
    ({"dielectric": {"around": "magic", "rel": 0.01}}, {}, "dielectric"),
    ({"pressure_gpa": {"dist": "uniform", "low": 0.0, "high": 30.0}}, {}, "pressure_gpa must be <="),
    ({"pressure_gpa": {"dist": "uniform", "low": 0.0, "high": 1.0}, "distance_nm": [0.33]}, {}, "pressure_gpa"),
    ({"dielectric": {"dist": "uniform", "low": 4.0, "high": 8.0}}, {"u_jitter": "yes"}, "u_jitter"),
    ({"bias_ev": {"dist": "uniform", "low": -0.01, "high": 0.01}}, {"images_per_solve": 0}, "images_per_solve"),
    ({"bias_ev": {"dist": "uniform", "low": -0.01, "high": 0.01}}, {"images_per_solve": 2.5}, "images_per_solve"),
    ({"dielectric": {"dist": "uniform", "low": 4.0, "high": 8.0}}, {"images_per_solve": 4},
     "images_per_solve = 4 needs a prior on bias_ev or broadening_ev"),
    ({"bias_ev": {"dist": "uniform", "low": -0.01, "high": 0.01}},
     {"images_per_solve": 4, "axes": {"hubbard_u_ev": [0.0, 1.0], "broadening_ev": [0.01, 0.02]}},
     "give broadening_ev one value or a prior"),
])
def test_bad_priors_are_one_line_errors_naming_the_parameter(priors, extra, match):
    with pytest.raises(MoireSTMError, match=match) as info:
        Sweep.from_dict(_spec(priors=priors, **extra))
    assert "\n" not in str(info.value)


def test_parameter_as_axis_and_prior_is_refused():
    spec = _spec(priors={"dielectric": {"dist": "uniform", "low": 4.0, "high": 8.0}})
    spec["axes"] = {**spec["axes"], "dielectric": [5.0, 6.0]}
    with pytest.raises(MoireSTMError, match="prior dielectric: dielectric is also given"):
        Sweep.from_dict(spec)
    with pytest.raises(MoireSTMError, match="n_draws needs a \\[priors\\] table"):
        Sweep.from_dict({"axes": {"hubbard_u_ev": [0.0, 1.0]}, "n_draws": 4})


class _DrawStore:
    """In-memory store: 20 draws x 6 U values (jittered per draw), one image each."""

    def __init__(self, n_draws=20, n_u=6, draw_ids=True):
        self._params = {}
        for d in range(n_draws):
            for j in range(n_u):
                p = {"hubbard_u_ev": round(0.5 * j + 0.01 * d, 9), "dielectric": 4.0 + 0.3 * d}
                if draw_ids:
                    p["draw_id"] = d
                self._params[f"k{d:02d}{j}"] = p

    def keys(self, status="ok"):
        return sorted(self._params)

    def params(self, key):
        return dict(self._params[key])

    def image(self, key):
        return np.zeros((4, 4), np.float32)


def test_draw_split_leaks_no_draw():
    from moirestm.learn.data import Split, make_split

    store = _DrawStore()
    split = make_split(store, "draw", seed=3)
    ids = {part: {store.params(k)["draw_id"] for k in split.keys(part)} for part in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert len(ids["test"]) == len(ids["val"]) == 3 and len(split.train) == 14 * 6
    assert split.held_out["test"] == sorted(ids["test"]) and split.group_by == "draw_id"
    nuisance = {part: {store.params(k)["dielectric"] for k in split.keys(part)} for part in ("train", "test")}
    assert not nuisance["train"] & nuisance["test"]  # no test image shares its nuisance values with training
    assert Split.from_dict(split.to_dict()) == split  # saved with the run as the other splits
    assert make_split(store, "draw", seed=3) == split and make_split(store, "draw", seed=4) != split
    # combined with the U grouping: held-out draws at held-out U values only
    both = make_split(store, "draw_group", seed=3)
    u = {part: {store.params(k)["hubbard_u_ev"] for k in both.keys(part)} for part in ("train", "val", "test")}
    d = {part: {store.params(k)["draw_id"] for k in both.keys(part)} for part in ("train", "val", "test")}
    assert not (u["train"] & u["test"] or d["train"] & d["test"] or d["train"] & d["val"])
    assert both.held_out["unused"] == 120 - sum(len(both.keys(p)) for p in ("train", "val", "test")) > 0
    with pytest.raises(MoireSTMError, match="draw_id"):
        make_split(_DrawStore(draw_ids=False), "draw")
    with pytest.raises(MoireSTMError, match="only 2 draws"):
        make_split(_DrawStore(n_draws=2), "draw")


@pytest.mark.parametrize("name, n_samples, n_tasks, n_draws, index", [("demo-sbi", 1920, 120, 40, 5),
                                                                       ("standard-sbi", 31744, 1024, 1024, 9)])
def test_builtin_sbi_designs(monkeypatch, name, n_samples, n_tasks, n_draws, index):
    """demo-sbi solves every U afresh (one task per solve); standard-sbi chains each draw's U values."""
    from moirestm.dataset import sweep as sweep_module
    from moirestm.parameters import validate_sweep

    monkeypatch.setattr(sweep_module, "resolve_magic_distance", lambda i: (0.2734, "magic_distance"))
    sweep = Sweep.load(name)
    validate_sweep(sweep.values, {"ft": sweep.ft})
    tasks = sweep.tasks()
    assert sweep.n_samples == n_samples and len(tasks) == n_tasks
    assert {t["base"]["index"] for t in tasks} == {index}
    assert len({t["base"]["draw_id"] for t in tasks}) == n_draws
    assert all(abs(t["base"]["distance_nm"] / 0.2734 - 1) <= 0.01 + 1e-9 for t in tasks)
    assert sweep.prior_records()["priors"]["broadening_ev"]["dist"] == "loguniform"
