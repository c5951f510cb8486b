"""Mean field: Coulomb sums, conservation laws, honeycomb Hubbard benchmarks, TBG invariants, I/O, CLI."""

import math
from dataclasses import replace

import h5py
import numpy as np
import pytest
from scipy.special import k0

from moirestm.constants import BOLTZMANN_EV_PER_K, HONEYCOMB_MEANFIELD_UC_OVER_T
from moirestm.errors import MoireSTMError
from moirestm.hamiltonian import SlaterKoster, TightBinding, eigenvalues, monkhorst_pack
from moirestm.lattice import PeriodicStructure, TBGLattice, bernal_bilayer, monolayer_graphene
from moirestm.meanfield import (
    Interaction,
    MeanFieldSolution,
    coulomb_matrix,
    order_parameters,
    prepare,
    solve,
    sweep_u,
)

T_EV = 2.7  # nearest-neighbour hopping |V_pp_pi| of the honeycomb tests


@pytest.fixture(scope="module")
def honeycomb():
    """Nearest-neighbour-only graphene (cutoff below the second shell at 0.246 nm)."""
    return TightBinding(monolayer_graphene(), SlaterKoster(cutoff_nm=0.2))


@pytest.fixture(scope="module")
def tbg1():
    return TightBinding(TBGLattice(1))


def supercell(structure, m: int) -> PeriodicStructure:
    """m x m supercell of a periodic structure."""
    lat = np.asarray(structure.superlattice_nm)
    shifts = np.array([(a, b) for a in range(m) for b in range(m)]) @ lat
    pos = np.concatenate([structure.positions_nm + np.array([s[0], s[1], 0.0]) for s in shifts])
    tile = lambda x: np.tile(np.asarray(x), m * m)  # noqa: E731
    return PeriodicStructure(pos, m * lat, tile(structure.layer), tile(structure.sublattice), "supercell")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    ({"hubbard_u_ev": -1.0}, "non-negative"),
    ({"dielectric": 0.0}, "dielectric"),
    ({"dielectric": -3.0}, "dielectric"),
    ({"coulomb": "yukawa"}, "coulomb"),
    ({"gate_distance_nm": 0.0}, "gate_distance_nm"),
    ({"hubbard_u_ev": float("nan")}, "finite"),
])
def test_interaction_rejects_bad_parameters(kwargs, message):
    with pytest.raises(MoireSTMError, match=message):
        Interaction(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"kgrid": 0}, "kgrid must be >= 1"),
    ({"kgrid": 2.5}, "kgrid must be an integer"),
    ({"filling": 28.0}, "filling must be <= 8"),
    ({"filling": -30.0}, "filling must be >= -8"),
    ({"filling": 0.0, "mu_ev": 0.1}, "exactly one"),
    ({"filling": None}, "exactly one"),
    ({"temperature_k": 0.0}, "temperature"),
    ({"start": "spiral"}, "start"),
])
def test_solve_rejects_bad_input(tbg1, kwargs, message):
    with pytest.raises(MoireSTMError, match=message):
        solve(tbg1, Interaction(hubbard_u_ev=1.0, coulomb="none"), **kwargs)


# ----------------------------------------------------------------------------- Coulomb kernel
@pytest.mark.parametrize("structure", [bernal_bilayer(), TBGLattice(1)], ids=["AB", "tbg1"])
@pytest.mark.parametrize("coulomb", ["ewald", "gated"])
def test_ewald_independent_of_splitting_parameter(structure, coulomb):
    inter = Interaction(coulomb=coulomb, gate_distance_nm=2.0)
    a = coulomb_matrix(structure, inter, alpha_per_nm=1.5)
    b = coulomb_matrix(structure, inter, alpha_per_nm=4.0)
    assert np.max(np.abs(a - b)) < 1e-8
    assert np.allclose(a, a.T, atol=1e-12)


@pytest.mark.parametrize("structure", [monolayer_graphene(), bernal_bilayer()], ids=["mono", "AB"])
def test_gated_sum_matches_direct_real_space_sum(structure):
    """Double-gate kernel against the image-charge Bessel series summed directly over lattice vectors.

    sum_n (-1)^n / sqrt(rho^2 + (2 n D)^2) = (2/D) sum_k K0((2k+1) pi rho / (2D)) (gates at +-D); the
    regularised pair kernel is 1/sqrt(rho^2 + c^2) - 1/rho + that series, c^2 = dz^2 + r0^2, with the
    rho -> 0 limit 1/c - ln(2)/D (own images excluded on site). The slowly decaying part
    h = 1/sqrt(rho^2 + c^2) - 1/rho ~ -c^2/(2 rho^3) is split by a smooth window w: sum_R h w is done on the
    lattice and the smooth remainder h (1 - w) as an integral (its lattice sum equals the integral / A up
    to exponentially small Poisson terms). Checks real-space, reciprocal and G = 0 parts of the Ewald sum.
    """
    from scipy.integrate import quad
    from scipy.special import erfc

    d, r0, r_win, s_win = 0.3, 0.142, 8.0, 1.5
    inter = Interaction(coulomb="gated", gate_distance_nm=d, short_distance_nm=r0, dielectric=1.0)
    ewald = coulomb_matrix(structure, inter) / inter.coupling_ev_nm
    lat, pos = structure.superlattice_nm, structure.positions_nm
    area = abs(np.linalg.det(lat))
    g = np.arange(-90, 91)
    r = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) @ lat
    n = len(pos)
    direct = np.zeros((n, n))
    kk = np.arange(30)[:, None]
    window = lambda x: 0.5 * erfc((x - r_win) / s_win)  # noqa: E731
    for i in range(n):
        for j in range(n):
            c = math.hypot(pos[j, 2] - pos[i, 2], r0)
            rho = np.linalg.norm(pos[j, :2] + r - pos[i, :2], axis=1)
            if i != j and np.any(rho < 1e-12):
                direct[i, j] += 1.0 / c - math.log(2.0) / d
            rho = rho[(rho > 1e-12) & (rho < r_win + 7 * s_win)]
            series = (2.0 / d) * k0((2 * kk + 1) * np.pi * rho[None, :] / (2 * d)).sum(axis=0)
            h = 1.0 / np.sqrt(rho**2 + c**2) - 1.0 / rho
            tail = quad(lambda x: 2 * np.pi * (x / math.sqrt(x * x + c * c) - 1.0) * (1 - window(x)), 0, np.inf,
                        epsabs=1e-13, limit=200)[0] / area
            direct[i, j] += np.sum(h * window(rho) + series) + tail
    np.testing.assert_allclose(ewald, direct, atol=1e-8)


def test_bare_ewald_approaches_gated_for_distant_gates():
    """For a charge-neutral density change the gated potential tends to the bare one as D grows."""
    ab = bernal_bilayer()
    dq = np.array([0.3, -0.1, 0.2, -0.4])
    bare = coulomb_matrix(ab, Interaction()) @ dq
    far = coulomb_matrix(ab, Interaction(coulomb="gated", gate_distance_nm=500.0)) @ dq
    near = coulomb_matrix(ab, Interaction(coulomb="gated", gate_distance_nm=0.5)) @ dq
    assert np.max(np.abs(far - bare)) < 1e-2 * np.max(np.abs(bare))
    assert np.max(np.abs(near - bare)) > 5e-2 * np.max(np.abs(bare))


# ----------------------------------------------------------------------------- conservation and U = 0
def test_u_zero_reproduces_tight_binding_bands(tbg1):
    sol = solve(tbg1, Interaction(hubbard_u_ev=0.0, coulomb="none"), kgrid=3, start="afm")
    assert sol.converged
    for k, up, down in zip(sol.kpoints, sol.bands_up, sol.bands_down):
        ref = eigenvalues(tbg1, k)
        np.testing.assert_allclose(up, ref, atol=1e-10)
        np.testing.assert_allclose(down, ref, atol=1e-10)
    assert order_parameters(sol)["max_local_moment"] < 1e-8


@pytest.mark.parametrize("filling, coulomb", [(0.0, "ewald"), (0.7, "ewald"), (-1.3, "gated"), (2.0, "none")])
def test_electron_count_conserved(tbg1, filling, coulomb):
    sol = solve(tbg1, Interaction(hubbard_u_ev=5.0, coulomb=coulomb, gate_distance_nm=3.0), filling=filling,
                kgrid=2, start="random", seed=3)
    assert sol.converged
    assert abs(sol.electrons - (tbg1.n_sites + filling)) < 1e-8
    assert sol.filling == pytest.approx(filling, abs=1e-8)


def test_fixed_mu_reproduces_fixed_filling(tbg1):
    inter = Interaction(hubbard_u_ev=2.0)
    a = solve(tbg1, inter, filling=0.9, kgrid=2, start="pm")
    b = solve(tbg1, inter, filling=None, mu_ev=a.mu_ev, kgrid=2, start="pm")
    assert a.converged and b.converged
    np.testing.assert_allclose(b.n_up, a.n_up, atol=1e-6)
    assert b.grand_potential_ev == pytest.approx(a.grand_potential_ev, abs=1e-6)


def test_free_energy_is_band_energy_minus_double_counting(tbg1):
    inter = Interaction(hubbard_u_ev=6.0)
    sol = solve(tbg1, inter, filling=1.0, kgrid=2, start="afm", temperature_k=300.0)
    assert sol.converged
    kt = BOLTZMANN_EV_PER_K * 300.0
    e = np.stack([sol.bands_up, sol.bands_down])
    w = sol.kweights[None, :, None]
    x = (e - sol.mu_ev) / kt
    f = 1.0 / (np.exp(x) + 1.0)
    s = -(f * np.log(f + 1e-300) + (1 - f) * np.log(1 - f + 1e-300))
    v = coulomb_matrix(tbg1.structure, inter)
    q = sol.n_up + sol.n_down - 1.0
    background = v.sum(axis=1).mean()  # compensating-background convention of the bare kernel
    vh = v @ q - background * q.mean()
    e_hartree = 0.5 * q @ v @ q - 0.5 * background * len(q) * q.mean() ** 2
    dc = 6.0 * np.sum(sol.n_up * sol.n_down - 0.25) + np.sum((sol.n_up + sol.n_down) * vh) - e_hartree
    expected = np.sum(w * f * e) - kt * np.sum(w * s) - dc
    assert sol.free_energy_ev == pytest.approx(expected, abs=1e-6)
    # the stored potentials are U (n_-s - 1/2) + V_H
    np.testing.assert_allclose(sol.potential_up_ev, 6.0 * (sol.n_down - 0.5) + vh, atol=1e-5)


def test_solution_independent_of_tiling():
    """AB bilayer doped and interacting: primitive cell on 6x6 k equals the 2x2 supercell on 3x3 k."""
    ab = bernal_bilayer()
    inter = Interaction(hubbard_u_ev=2.0, dielectric=4.0)
    tight = {"density_tol": 1e-11, "energy_tol_ev": 1e-12, "start": "pm"}
    prim = solve(TightBinding(ab), inter, filling=0.05, kgrid=6, **tight)
    sup = solve(TightBinding(supercell(ab, 2)), inter, filling=0.2, kgrid=3, **tight)
    assert prim.converged and sup.converged
    np.testing.assert_allclose(sup.n_up, np.tile(prim.n_up, 4), atol=1e-8)
    assert sup.free_energy_ev == pytest.approx(4 * prim.free_energy_ev, abs=1e-7)
    assert order_parameters(prim)["charge_modulation"] > 1e-4  # the test is not trivially uniform


# ----------------------------------------------------------------------------- honeycomb Hubbard
def honeycomb_dispersion(k_frac: np.ndarray) -> np.ndarray:
    """|f_k| of nearest-neighbour graphene at fractional k (units of the reciprocal vectors)."""
    phase = 2 * np.pi * k_frac
    return np.abs(1.0 + np.exp(-1j * phase[:, 0]) + np.exp(-1j * phase[:, 1]))


def gap_equation_moment(u_over_t: float, eps_k: np.ndarray) -> float:
    """T = 0 mean-field staggered moment m from 1 = (U/2) <1/sqrt(eps^2 + (U m/2)^2)>_k (eps in units of t)."""
    from scipy.optimize import brentq

    def gap(delta):
        return 0.5 * u_over_t * np.mean(1.0 / np.sqrt(eps_k**2 + delta**2)) - 1.0

    if gap(1e-12) <= 0:
        return 0.0
    delta = brentq(gap, 1e-12, 10 * u_over_t, xtol=1e-15)
    return 2.0 * delta / u_over_t


def test_continuum_meanfield_critical_u_is_literature_value():
    """Gap-equation U_c/t = 2 / <1/|f_k|> on a fine k grid is the literature 2.23 (same U convention)."""
    n = 1200
    f = (np.arange(n) + 0.5) / n
    grid = np.stack(np.meshgrid(f, f, indexing="ij"), -1).reshape(-1, 2)
    uc = 2.0 / np.mean(1.0 / honeycomb_dispersion(grid))
    assert uc == pytest.approx(HONEYCOMB_MEANFIELD_UC_OVER_T, abs=0.01)


@pytest.mark.parametrize("u_over_t", [1.8, 2.6, 3.2])
def test_honeycomb_scf_matches_gap_equation(honeycomb, u_over_t):
    """SCF staggered moment equals the gap-equation solution on the same 20x20 grid (no Dirac point on it)."""
    n = 20
    k, w = monkhorst_pack(honeycomb.structure.reciprocal_nm, n, time_reversal=False)
    eps = honeycomb_dispersion(k @ np.linalg.inv(honeycomb.structure.reciprocal_nm))
    expected = gap_equation_moment(u_over_t, eps)
    sol = solve(honeycomb, Interaction(hubbard_u_ev=u_over_t * T_EV, coulomb="none"), kgrid=n, start="afm",
                temperature_k=1.0)
    assert sol.converged
    m = sol.magnetization
    assert m[0] == pytest.approx(-m[1], abs=1e-10)
    assert abs(m[0]) == pytest.approx(expected, abs=2e-5)
    if u_over_t > 2.3:
        assert abs(m[0]) > 0.1


def test_afm_beats_paramagnet_and_spin_flip_symmetry(honeycomb):
    inter = Interaction(hubbard_u_ev=3.0 * T_EV, coulomb="none")
    afm = solve(honeycomb, inter, kgrid=10, start="afm")
    pm = solve(honeycomb, inter, kgrid=10, start="pm")
    assert afm.converged and pm.converged
    assert order_parameters(pm)["staggered_magnetization"] < 1e-10
    assert afm.free_energy_ev < pm.free_energy_ev - 1e-3
    flipped = replace(afm, n_up=afm.n_down, n_down=afm.n_up)
    rev = solve(honeycomb, inter, kgrid=10, start=flipped)
    np.testing.assert_allclose(rev.n_up, afm.n_down, atol=2e-6)  # both converged to max|dn| <= 1e-6
    assert rev.free_energy_ev == pytest.approx(afm.free_energy_ev, abs=1e-7)


# ----------------------------------------------------------------------------- TBG invariants
def test_tbg_afm_invariants(tbg1):
    """i=1 TBG, Hubbard + Ewald at neutrality: layers equivalent (C2 symmetry), no net moment, F below PM."""
    inter = Interaction(hubbard_u_ev=8.0)
    afm = solve(tbg1, inter, kgrid=2, start="afm")
    pm = solve(tbg1, inter, kgrid=2, start="pm")
    assert afm.converged and pm.converged
    o = order_parameters(afm)
    assert o["staggered_magnetization"] > 0.2
    assert abs(o["ferromagnetic_moment"]) < 1e-8
    lay = afm.layer
    q = afm.density
    assert q[lay == 0].sum() == pytest.approx(q[lay == 1].sum(), abs=1e-8)
    m = afm.magnetization
    np.testing.assert_allclose(np.sort(np.abs(m[lay == 0])), np.sort(np.abs(m[lay == 1])), atol=1e-6)
    assert afm.free_energy_ev < pm.free_energy_ev


def test_same_seed_identical_results(tbg1):
    inter = Interaction(hubbard_u_ev=7.0)
    a = solve(tbg1, inter, kgrid=1, start="random", seed=11, max_iterations=8)
    b = solve(tbg1, inter, kgrid=1, start="random", seed=11, max_iterations=8)
    c = solve(tbg1, inter, kgrid=1, start="random", seed=12, max_iterations=8)
    assert np.array_equal(a.n_up, b.n_up) and np.array_equal(a.residuals, b.residuals)
    assert a.free_energy_ev == b.free_energy_ev
    assert not np.array_equal(a.residuals, c.residuals)


def test_non_convergence_is_reported_not_raised(tbg1):
    sol = solve(tbg1, Interaction(hubbard_u_ev=7.0), kgrid=1, start="random", max_iterations=3)
    assert not sol.converged
    assert sol.iterations == 3 and len(sol.residuals) == 3 and sol.residuals[-1] > 1e-6
    assert abs(sol.electrons - tbg1.n_sites) < 1e-8


def test_u_continuation_keeps_lowest_free_energy(honeycomb):
    inter = Interaction(coulomb="none")
    u = np.array([1.5, 2.5, 3.5]) * T_EV
    res = sweep_u(honeycomb, inter, u, start="pm", kgrid=8)
    for idx, best in enumerate(res.best):
        cands = [p[idx].free_energy_ev for p in res.passes.values()]
        assert best.free_energy_ev == pytest.approx(min(cands), abs=1e-12)
    # a paramagnetic start stays on the symmetric branch in both passes; AFM continuation finds the order
    assert max(s.orders()["staggered_magnetization"] for s in res.best) < 1e-8
    res_afm = sweep_u(honeycomb, inter, u, start="afm", kgrid=8)
    ms = [s.orders()["staggered_magnetization"] for s in res_afm.best]
    assert ms[0] < 1e-4 < ms[1] < ms[2]
    assert all(res_afm.best[i].free_energy_ev <= res.best[i].free_energy_ev + 1e-9 for i in range(3))
    with pytest.raises(MoireSTMError):
        sweep_u(honeycomb, inter, [-1.0, 1.0])


def test_fock_vanishes_for_the_reference_state():
    """With the reference-subtracted Fock term, U = 0 neutral graphene keeps its tight-binding bands."""
    mono = monolayer_graphene()
    tb = TightBinding(mono, SlaterKoster(cutoff_nm=0.2))
    sol = solve(tb, Interaction(hubbard_u_ev=0.0, fock=True, fock_cutoff_nm=0.3), kgrid=6, start="pm")
    assert sol.converged and sol.fock is not None
    for k, up in zip(sol.kpoints, sol.bands_up):
        np.testing.assert_allclose(up, eigenvalues(tb, k) + sol.potential_up_ev[0], atol=1e-9)


def test_fock_with_hubbard_converges_and_enhances_gap():
    mono = monolayer_graphene()
    tb = TightBinding(mono, SlaterKoster(cutoff_nm=0.2))
    base = Interaction(hubbard_u_ev=3.0 * T_EV, dielectric=4.0)
    h = solve(tb, base, kgrid=8, start="afm")
    hf = solve(tb, replace(base, fock=True, fock_cutoff_nm=0.3), kgrid=8, start="afm")
    assert h.converged and hf.converged
    assert abs(hf.electrons - 2.0) < 1e-8
    gap = lambda s: np.min(s.bands_up[:, 1]) - np.max(s.bands_up[:, 0])  # noqa: E731
    assert gap(hf) > gap(h)  # exchange of the ordered state enhances the Neel gap


# ----------------------------------------------------------------------------- persistence
def test_save_load_roundtrip_and_hamiltonians(tbg1, tmp_path):
    sol = solve(tbg1, Interaction(hubbard_u_ev=8.0), kgrid=2, start="afm")
    path = tmp_path / "sol.h5"
    sol.save(path)
    back = MeanFieldSolution.load(path)
    for name in ("n_up", "n_down", "bands_up", "kpoints", "kweights", "residuals"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sol, name))
    assert back.free_energy_ev == sol.free_energy_ev and back.converged == sol.converged
    assert back.params["interaction"]["hubbard_u_ev"] == 8.0
    assert back.structure.index == 1
    for ik, k in enumerate(back.kpoints):
        h_up, h_down = back.hamiltonians(k)
        np.testing.assert_allclose(np.linalg.eigvalsh(h_up), sol.bands_up[ik], atol=1e-9)
        np.testing.assert_allclose(np.linalg.eigvalsh(h_down), sol.bands_down[ik], atol=1e-9)
    # warm start from a loaded solution converges at once
    again = solve(tbg1, Interaction(hubbard_u_ev=8.0), kgrid=2, start=back)
    assert again.iterations <= 3


def test_corrupted_solution_files_are_rejected(tbg1, tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(MoireSTMError, match="not a readable"):
        MeanFieldSolution.load(bad)
    sol = solve(tbg1, Interaction(hubbard_u_ev=1.0, coulomb="none"), kgrid=1, start="pm")
    path = tmp_path / "sol.h5"
    sol.save(path)
    with h5py.File(path, "a") as f:
        del f["n_down"]
    with pytest.raises(MoireSTMError, match="missing n_down"):
        MeanFieldSolution.load(path)
    sol.save(path)
    with h5py.File(path, "a") as f:
        f.attrs["moirestm_kind"] = "SiteLDOS"
    with pytest.raises(MoireSTMError, match="expected a MeanFieldSolution"):
        MeanFieldSolution.load(path)


def test_prepare_reuse_gives_identical_results(tbg1):
    inter = Interaction(hubbard_u_ev=6.0)
    setup = prepare(tbg1, inter, 2)
    a = solve(tbg1, inter, kgrid=2, setup=setup)
    b = solve(tbg1, inter, kgrid=2)
    np.testing.assert_array_equal(a.n_up, b.n_up)


# ----------------------------------------------------------------------------- CLI
def test_cli_scf_ldos_sweep(tmp_path):
    from typer.testing import CliRunner

    from moirestm.cli import app

    runner = CliRunner()
    sol = tmp_path / "sol.h5"
    res = runner.invoke(app, ["scf", "--index", "1", "--U", "8", "--kgrid", "2", "--out", str(sol), "--json"])
    assert res.exit_code == 0, res.output
    assert MeanFieldSolution.load(sol).converged
    png = tmp_path / "map.png"
    res = runner.invoke(app, ["ldos", str(sol), "--bias", "0", "--out", str(png), "--cells", "2"])
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 1000
    res = runner.invoke(app, ["sweep-u", "--index", "1", "--u-max", "8", "--u-step", "4", "--out",
                              str(tmp_path / "sweep.png"), "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sweep.png").exists()
    res = runner.invoke(app, ["scf", "--index", "1", "--U", "-2", "--out", str(sol)])
    assert res.exit_code == 2 and "non-negative" in res.output
    (tmp_path / "bad.h5").write_text("x")
    res = runner.invoke(app, ["ldos", str(tmp_path / "bad.h5"), "--out", str(png)])
    assert res.exit_code == 2 and "error" in res.output


def test_pulay_stall_control_damps_and_restarts():
    """A residual that stops shrinking halves the mixing fraction (to its floor) and restarts the history."""
    from moirestm.meanfield.scf import Pulay

    mixer = Pulay(beta=0.4, history=8, stall_steps=5, min_beta=0.1)
    x = np.zeros(3)
    betas, history = [], []
    for step in range(40):
        r = np.array([1.0, -1.0, 0.5]) * (1.0 + 0.01 * (step % 3))  # oscillating, never halving
        x = mixer.next(x, r)
        betas.append(mixer.beta)
        history.append(len(mixer.xs))
    assert betas[3] == 0.4 and betas[5] == 0.2 and min(betas) == 0.1
    damped = [i for i in range(1, 40) if betas[i] < betas[i - 1]]
    assert damped and all(history[i] == 1 for i in damped)  # each damping restarts the history
    shrinking = Pulay(beta=0.4, stall_steps=5)
    for step in range(30):
        shrinking.next(np.zeros(2), np.full(2, 0.7 ** step))
    assert shrinking.beta == 0.4  # steady progress never damps


# ----------------------------------------------------------------------------- slow validation
@pytest.mark.validate
def test_hole_doped_flat_band_converges():
    """nu = -1 at the i = 9 magic distance, 10 K: near-degenerate Gamma levels at E_F used to stall DIIS at 1e-3."""
    tb = TightBinding(TBGLattice(9, 0.294407))
    sol = solve(tb, Interaction(hubbard_u_ev=3.0, dielectric=10.0), filling=-1.0, temperature_k=10.0, start="afm")
    assert sol.converged and sol.residuals[-1] <= 1e-6
    assert float(np.sum(sol.n_up + sol.n_down)) == pytest.approx(tb.n_sites - 1.0, abs=1e-8)

@pytest.mark.validate
def test_honeycomb_meanfield_onset_from_scf(honeycomb):
    """SCF onset of the Neel moment on a dense grid (no Dirac point) lies at the mean-field U_c/t = 2.23."""
    n = 100
    inter = Interaction(coulomb="none")
    below = solve(honeycomb, replace(inter, hubbard_u_ev=2.05 * T_EV), kgrid=n, start="afm", temperature_k=1.0)
    above = solve(honeycomb, replace(inter, hubbard_u_ev=2.45 * T_EV), kgrid=n, start="afm", temperature_k=1.0)
    m_below = abs(below.magnetization[0])
    m_above = abs(above.magnetization[0])
    assert m_below < 0.02 and m_above > 0.1
    # extrapolate the (linear in U - U_c) moment above the transition to zero
    mid = solve(honeycomb, replace(inter, hubbard_u_ev=2.35 * T_EV), kgrid=n, start="afm", temperature_k=1.0)
    m_mid = abs(mid.magnetization[0])
    uc = 2.35 - m_mid * (2.45 - 2.35) / (m_above - m_mid)
    assert uc == pytest.approx(HONEYCOMB_MEANFIELD_UC_OVER_T, abs=0.05)
