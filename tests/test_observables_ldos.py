"""Site LDOS and STM maps: sum rules against the tight-binding DOS, spin symmetry, geometry, I/O."""

import h5py
import numpy as np
import pytest

from moirestm.errors import MoireSTMError
from moirestm.hamiltonian import SlaterKoster, TightBinding, broaden, eigenvalues
from moirestm.lattice import TBGLattice, bernal_bilayer, monolayer_graphene
from moirestm.meanfield import Interaction, solve
from moirestm.observables import SiteLDOS, STMMap, site_ldos, stm_map

T_EV = 2.7


@pytest.fixture(scope="module")
def tbg1_u0():
    tb = TightBinding(TBGLattice(1))
    return tb, solve(tb, Interaction(hubbard_u_ev=0.0, coulomb="none"), kgrid=3, start="pm")


@pytest.fixture(scope="module")
def honeycomb_afm():
    tb = TightBinding(monolayer_graphene(), SlaterKoster(cutoff_nm=0.2))
    # float64 throughout: the exact spin-sublattice symmetry below is checked to 1e-8 (float32 steps seed
    # ~1e-10 asymmetries in the densities that the 1e-6 tolerance does not remove)
    return solve(tb, Interaction(hubbard_u_ev=3.0 * T_EV, coulomb="none"), kgrid=10, start="afm",
                 mixed_precision=False)


@pytest.mark.parametrize("kind", ["lorentzian", "gaussian"])
def test_site_sum_equals_tight_binding_dos(tbg1_u0, kind):
    """sum_i LDOS_i(E) per spin equals the k-weighted broadened TB spectrum at U = 0."""
    tb, sol = tbg1_u0
    bias = np.array([-0.4, -0.05, 0.0, 0.03, 0.5])
    ld = site_ldos(sol, bias, broadening_ev=0.02, kind=kind)
    spectra = np.array([eigenvalues(tb, k) for k in sol.kpoints])
    dos = broaden(spectra, sol.kweights[:, None], sol.mu_ev + bias, 0.02, kind)
    np.testing.assert_allclose(ld.ldos_up.sum(axis=1), dos, rtol=1e-10)
    np.testing.assert_allclose(ld.ldos_down, ld.ldos_up, atol=1e-12)
    np.testing.assert_allclose(ld.total, 2 * ld.ldos_up, atol=1e-12)
    assert ld.ldos_up.shape == (5, tb.n_sites)


@pytest.mark.parametrize("ldos_kgrid", [None, 6])
def test_per_bias_broadenings_equal_separate_calls(tbg1_u0, ldos_kgrid):
    """One call with a broadening per bias gives, row by row, the single-broadening LDOS.

    On the solution's own grid exactly; on a denser one the shared window is wider than a single call's,
    so states a single call takes as coarse-grid (3x3) tails come from the dense grid (0.4 % here)."""
    sol = tbg1_u0[1]
    bias, widths = [0.0, 0.02, -0.05, 0.0], [0.005, 0.02, 0.04, 0.04]
    both = site_ldos(sol, bias, broadening_ev=widths, ldos_kgrid=ldos_kgrid, single=False)
    assert both.params["broadening_ev"] == widths
    for row, (b, w) in enumerate(zip(bias, widths)):
        one = site_ldos(sol, [b], broadening_ev=w, ldos_kgrid=ldos_kgrid, single=False)
        np.testing.assert_allclose(both.ldos_up[row], one.ldos_up[0], rtol=1e-9 if ldos_kgrid is None else 1e-2,
                                   atol=1e-12)


def test_ldos_integrates_to_occupation(honeycomb_afm):
    """int_{-inf}^{E_F} LDOS_{i sigma} dE = n_{i sigma} (Gaussian broadening well inside the Neel gap)."""
    sol = honeycomb_afm
    bias = np.linspace(-9.0, 0.0, 9001)
    ld = site_ldos(sol, bias, broadening_ev=0.02, kind="gaussian")
    occ_up = np.trapezoid(ld.ldos_up, bias, axis=0)
    occ_down = np.trapezoid(ld.ldos_down, bias, axis=0)
    np.testing.assert_allclose(occ_up, sol.n_up, atol=2e-4)
    np.testing.assert_allclose(occ_down, sol.n_down, atol=2e-4)


def test_afm_ldos_spin_sublattice_symmetry(honeycomb_afm):
    """Neel state: spin up on A mirrors spin down on B; no states at E_F inside the gap."""
    ld = site_ldos(honeycomb_afm, [-3.0, -2.6, 0.0, 2.8], broadening_ev=0.05, kind="gaussian")  # gap |E| < 2.07 eV
    np.testing.assert_allclose(ld.ldos_up[:, 0], ld.ldos_down[:, 1], rtol=1e-8)
    assert not np.allclose(ld.ldos_up[:, 0], ld.ldos_down[:, 0], rtol=1e-3)
    assert ld.total[2].max() < 1e-12 * ld.total[0].max()


def test_stm_map_integral_and_resolution():
    """Monolayer (L1 along x): the map rectangle tiles the plane, so its integral is n^2 sum_i w_i."""
    mono = monolayer_graphene()
    ld = SiteLDOS(np.array([0.0]), np.array([[0.3, 0.1]]), np.array([[0.2, 0.1]]), mono.positions_nm,
                  mono.layer, mono.superlattice_nm, {})
    for n in (3, 8):
        m = stm_map(ld, n_cells=n, pixels_per_nm=40.0)
        dx, dy = m.x_nm[1] - m.x_nm[0], m.y_nm[1] - m.y_nm[0]
        assert m.image.shape == (len(m.y_nm), len(m.x_nm))
        assert m.image.sum() * dx * dy == pytest.approx(n * n * 0.7, rel=1e-6)
        assert len(m.x_nm) == round(n * 0.246 * 40)
    # pixel values are sums of Gaussians over all periodic images (A weight 0.5, B weight 0.2)
    m = stm_map(ld, n_cells=2, pixels_per_nm=50.0, orbital_width_nm=0.06)
    g = np.arange(-6, 7)
    r = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) @ mono.superlattice_nm
    for iy, ix in ((0, 0), (5, 7), (11, 20)):
        point = np.array([m.x_nm[ix], m.y_nm[iy]])
        d2 = ((mono.positions_nm[None, :, :2] + r[:, None, :] - point) ** 2).sum(-1)
        expected = (np.exp(-0.5 * d2 / 0.06**2) * np.array([0.5, 0.2])).sum() / (2 * np.pi * 0.06**2)
        assert m.image[iy, ix] == pytest.approx(expected, rel=1e-7)  # Gaussians cut at 6 sigma


def test_stm_bottom_layer_attenuation():
    ab = bernal_bilayer()
    weights = np.where(ab.layer == 0, 1.0, 0.0)[None, :]
    ld = SiteLDOS(np.array([0.1]), weights, np.zeros_like(weights), ab.positions_nm, ab.layer,
                  ab.superlattice_nm, {})
    plain = stm_map(ld, decay_per_nm=0.0, n_cells=3)
    kappa = 10.0
    damped = stm_map(ld, decay_per_nm=kappa, n_cells=3)
    ratio = damped.image.sum() / plain.image.sum()
    assert ratio == pytest.approx(np.exp(-2 * kappa * 0.335), rel=1e-12)


def test_stm_spin_channels(honeycomb_afm):
    ld = site_ldos(honeycomb_afm, [-1.0], broadening_ev=0.05)
    total = stm_map(ld, spin="total", n_cells=2)
    up = stm_map(ld, spin="up", n_cells=2)
    down = stm_map(ld, spin="down", n_cells=2)
    pol = stm_map(ld, spin="polarisation", n_cells=2)
    np.testing.assert_allclose(total.image, up.image + down.image, rtol=1e-12)
    np.testing.assert_allclose(pol.image, up.image - down.image, atol=1e-12)
    assert np.abs(pol.image).max() > 0.1 * total.image.max()


def test_observables_save_load(tbg1_u0, tmp_path):
    _, sol = tbg1_u0
    ld = site_ldos(sol, [0.0, 0.1])
    ld.save(tmp_path / "ldos.h5")
    back = SiteLDOS.load(tmp_path / "ldos.h5")
    np.testing.assert_array_equal(back.total, ld.total)
    np.testing.assert_array_equal(back.superlattice_nm, ld.superlattice_nm)
    assert back.params["broadening_ev"] == 0.01 and back.params["kind"] == "lorentzian"
    m = stm_map(ld, bias_index=1, n_cells=2)
    m.save(tmp_path / "map.h5")
    m2 = STMMap.load(tmp_path / "map.h5")
    np.testing.assert_array_equal(m2.image, m.image)
    assert m2.params["bias_ev"] == 0.1
    m.plot(tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 1000
    with h5py.File(tmp_path / "map.h5", "a") as f:
        del f["x_nm"]
    with pytest.raises(MoireSTMError, match="damaged STMMap"):
        STMMap.load(tmp_path / "map.h5")
    with pytest.raises(MoireSTMError, match="expected a SiteLDOS"):
        SiteLDOS.load(tmp_path / "map.h5")


@pytest.mark.parametrize("kwargs, message", [
    ({"broadening_ev": 0.0}, "broadening"),
    ({"broadening_ev": -1.0}, "broadening"),
    ({"kind": "voigt"}, "kind"),
    ({"bias_ev": []}, "bias"),
    ({"bias_ev": [np.nan]}, "bias"),
    ({"bias_ev": [0.0, 0.1], "broadening_ev": [0.01, 0.02, 0.03]}, "one per bias"),
    ({"bias_ev": [0.0, 0.1], "broadening_ev": [0.01, np.nan]}, "broadening"),
])
def test_site_ldos_rejects_bad_input(tbg1_u0, kwargs, message):
    with pytest.raises(MoireSTMError, match=message):
        site_ldos(tbg1_u0[1], **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"bias_index": 5}, "bias_index"),
    ({"n_cells": 0}, "n_cells"),
    ({"pixels_per_nm": -2}, "pixels_per_nm"),
    ({"orbital_width_nm": 0}, "orbital_width_nm"),
    ({"decay_per_nm": -1}, "decay_per_nm"),
    ({"spin": "sideways"}, "spin"),
])
def test_stm_map_rejects_bad_input(tbg1_u0, kwargs, message):
    ld = site_ldos(tbg1_u0[1], [0.0])
    with pytest.raises(MoireSTMError, match=message):
        stm_map(ld, **kwargs)


def test_inconsistent_solution_is_detected(tbg1_u0):
    from dataclasses import replace

    _, sol = tbg1_u0
    broken = replace(sol, potential_up_ev=sol.potential_up_ev + 0.3)
    with pytest.raises(MoireSTMError, match="does not reproduce"):
        site_ldos(broken, [0.0])
