"""Issue 14: k-grid symmetry reduction, the convergence ladder, mixed precision, warm starts, branches, LDOS grids."""

import numpy as np
import pytest

from moirestm.dataset.compute import meanfield_engine
from moirestm.dataset.sweep import Sweep, resolve_magic_distance
from moirestm.hamiltonian import SlaterKoster, TightBinding
from moirestm.lattice import TBGLattice, monolayer_graphene
from moirestm.meanfield import Interaction, extrapolated_start, solve
from moirestm.meanfield.symmetry import c3_permutation, kgrid
from moirestm.observables import site_ldos


@pytest.fixture(scope="module")
def tbg2():
    return TightBinding(TBGLattice(2))


@pytest.fixture(scope="module")
def demo_tb():
    distance_nm, _ = resolve_magic_distance(5)
    return TightBinding(TBGLattice(5, distance_nm))


def test_c3_permutation_maps_layers_and_sublattice_structure(tbg2):
    s = tbg2.structure
    p = c3_permutation(s)
    assert p is not None and sorted(p) == list(range(len(p)))
    assert np.array_equal(s.layer[p], s.layer)          # C3z keeps each layer
    assert np.array_equal(p[p[p]], np.arange(len(p)))   # a threefold rotation


@pytest.mark.parametrize("n, full, reduced", [(3, 5, 3), (6, 20, 8), (12, 74, 26)])
def test_kgrid_reduction_counts_and_weights(tbg2, n, full, reduced):
    g_full = kgrid(tbg2.structure, n, use_symmetry=False)
    g = kgrid(tbg2.structure, n)
    assert (len(g_full.kpoints), len(g.kpoints), g.symmetry) == (full, reduced, "TR+C3")
    assert g.kweights.sum() == pytest.approx(1.0, abs=1e-14)


def test_c3_reduced_solve_equals_full_grid(tbg2):
    inter = Interaction(hubbard_u_ev=4.0)
    a = solve(tbg2, inter, filling=-1.0, kgrid=3, start="afm", density_tol=1e-9, energy_tol_ev=1e-11)
    b = solve(tbg2, inter, filling=-1.0, kgrid=3, start="afm", density_tol=1e-9, energy_tol_ev=1e-11,
              use_symmetry=False)
    assert a.params["kpoint_symmetry"] == "TR+C3" and b.params["kpoint_symmetry"] == "TR"
    assert len(a.kpoints) < len(b.kpoints)
    np.testing.assert_allclose(a.n_up, b.n_up, atol=1e-8)
    assert a.free_energy_ev == pytest.approx(b.free_energy_ev, abs=1e-9)


def test_random_start_falls_back_to_time_reversal_grid(tbg2):
    sol = solve(tbg2, Interaction(hubbard_u_ev=2.0), kgrid=3, start="random", seed=1, max_iterations=4)
    assert sol.params["kpoint_symmetry"] == "TR" and len(sol.kpoints) == 5


def test_mixed_precision_reaches_the_float64_fixed_point(tbg2):
    """Where the fixed point is unique (here below the ordering U), float32 steps do not move it."""
    kw = dict(filling=1.0, kgrid=2, start="afm", density_tol=1e-10, energy_tol_ev=1e-12)
    inter = Interaction(hubbard_u_ev=2.0)
    mixed = solve(tbg2, inter, mixed_precision=True, **kw)
    double = solve(tbg2, inter, mixed_precision=False, **kw)
    assert mixed.converged and double.converged
    np.testing.assert_allclose(mixed.n_up, double.n_up, atol=1e-8)
    np.testing.assert_allclose(mixed.n_down, double.n_down, atol=1e-8)
    assert abs(mixed.electrons - (tbg2.n_sites + 1.0)) < 1e-9


@pytest.mark.parametrize("filling, u_prev, u", [
    pytest.param(-2.0, 5.5, 5.4, marks=pytest.mark.validate),  # ~600 iterations through the ladder, 40 s
    (-2.0, 3.1, 3.0), (-1.0, 2.7, 2.6), (1.0, 4.0, 3.9)])
def test_demo_points_that_failed_now_converge(demo_tb, filling, u_prev, u):
    """Points of the Gamma-only demo chain (i = 5, magic distance, eps = 10) that ended unconverged
    after 300 iterations before the ladder; here warm-started from the neighbouring U as in the chain."""
    before = solve(demo_tb, Interaction(hubbard_u_ev=u_prev), filling=filling, start="afm")
    sol = solve(demo_tb, Interaction(hubbard_u_ev=u), filling=filling, start=before)
    assert before.converged and sol.converged
    assert sol.residuals[-1] <= 1e-6
    assert abs(sol.electrons - (demo_tb.n_sites + filling)) < 1e-8
    assert sol.params["ladder"][0]["rung"] == "pulay"


def test_impossible_convergence_is_a_result_with_its_record(tbg2):
    sol = solve(tbg2, Interaction(hubbard_u_ev=7.0), kgrid=1, start="random", max_iterations=25)
    assert not sol.converged and sol.iterations <= 25
    assert sum(r["iterations"] for r in sol.params["ladder"]) == sol.iterations
    assert [r["rung"] for r in sol.params["ladder"]][0] == "pulay"


def test_extrapolated_start_is_linear_in_u(tbg2):
    a = solve(tbg2, Interaction(hubbard_u_ev=4.0), kgrid=1, start="afm")
    b = solve(tbg2, Interaction(hubbard_u_ev=4.2), kgrid=1, start=a)
    guess = extrapolated_start([a, b], 4.4)
    np.testing.assert_allclose(guess.n_up, np.clip(2 * b.n_up - a.n_up, 0, 1), atol=1e-12)
    assert extrapolated_start([b], 4.4) is b
    sol = solve(tbg2, Interaction(hubbard_u_ev=4.4), kgrid=1, start=guess)
    plain = solve(tbg2, Interaction(hubbard_u_ev=4.4), kgrid=1, start=b)
    assert sol.converged and sol.iterations <= plain.iterations


def test_ldos_on_a_denser_grid_converges_to_the_graphene_dos():
    """Honeycomb (nearest neighbour, t = 2.7 eV): the LDOS of a Gamma-only solution evaluated on a dense
    LDOS grid equals the broadened DOS of eps(k) = +-t |1 + exp(2 pi i f1) + exp(2 pi i f2)| integrated
    independently on a 600 x 600 grid; Gamma alone is far off."""
    t, eta, energy = 2.7, 0.1, 0.5 * 2.7
    tb = TightBinding(monolayer_graphene(), SlaterKoster(cutoff_nm=0.2))
    sol = solve(tb, Interaction(hubbard_u_ev=0.0, coulomb="none"), kgrid=1, start="pm")
    f1, f2 = np.meshgrid(np.arange(600) / 600, np.arange(600) / 600)
    band = t * np.abs(1 + np.exp(2j * np.pi * f1) + np.exp(2j * np.pi * f2)).ravel()
    gauss = lambda x: np.exp(-0.5 * (x / eta) ** 2) / (np.sqrt(2 * np.pi) * eta)  # noqa: E731
    exact = 0.5 * np.mean(gauss(sol.mu_ev + energy - band) + gauss(sol.mu_ev + energy + band))  # per site, spin
    dense = site_ldos(sol, [energy], broadening_ev=eta, kind="gaussian", ldos_kgrid=96).ldos_up[0]
    gamma = site_ldos(sol, [energy], broadening_ev=eta, kind="gaussian").ldos_up[0]
    np.testing.assert_allclose(dense, exact, rtol=2e-3)
    assert abs(gamma[0] - exact) > 0.5 * exact


def test_engine_records_grids_branches_and_picks_lower_free_energy():
    sweep = Sweep.from_dict({"fixed": {"index": 1, "distance_nm": 0.335, "scf_kgrid": 2, "ldos_kgrid": 4,
                                       "start": "afm"},
                             "axes": {"hubbard_u_ev": [7.0, 7.5, 8.0]},
                             "solver": {"branch_check_every": 1}, "stm": {"enabled": False},
                             "ft": {"size": 16}})
    records = meanfield_engine(sweep.tasks()[0])
    assert all(r["status"] == "ok" for r in records)
    for r in records:
        res = r["results"]
        assert res["scf_kgrid"] == 2 and res["ldos_kgrid"] == 4
        assert r["params"]["scf_kgrid"] == 2 and r["params"]["ldos_kgrid"] == 4
        converged = [b for b in res["branches"] if b["converged"]]
        assert res["free_energy_ev"] == pytest.approx(min(b["free_energy_ev"] for b in converged), abs=1e-6)
    assert len(records[1]["results"]["branches"]) == 2   # warm start + fresh start


def test_single_precision_ldos_window_matches_double(tbg2):
    sol = solve(tbg2, Interaction(hubbard_u_ev=4.0), filling=-1.0, kgrid=2, start="afm")
    a = site_ldos(sol, [-0.05, 0.0], broadening_ev=0.02, ldos_kgrid=6, single=True)
    b = site_ldos(sol, [-0.05, 0.0], broadening_ev=0.02, ldos_kgrid=6, single=False)
    assert a.params["single_precision_window"] and not b.params["single_precision_window"]
    np.testing.assert_allclose(a.total, b.total, rtol=5e-5, atol=1e-8 * b.total.max())
