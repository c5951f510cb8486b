"""Tight binding against analytic graphene results, bilayer physics and the continuum model."""

import numpy as np
import pytest

from moirestm.errors import MoireSTMError
from moirestm.hamiltonian import (
    BandStructure,
    DensityOfStates,
    SlaterKoster,
    TightBinding,
    band_structure,
    density_of_states,
    dirac_energy,
    eigenvalues,
    k_path,
    monkhorst_pack,
)
from moirestm.hamiltonian.continuum import (
    analytic_monolayer_velocity_ev_nm,
    bm_interlayer_coupling_ev,
    bm_velocity_ratio,
    dirac_velocity_ev_nm,
)
from moirestm.lattice import TBGLattice, bernal_bilayer, monolayer_graphene


@pytest.fixture(scope="module")
def tb9():
    return TightBinding(TBGLattice(9))


def test_moon_koshino_hoppings():
    sk = SlaterKoster()
    a0 = 0.246 / np.sqrt(3)
    t = sk.hopping(np.array([[a0, 0, 0], [0, 0, 0.335]]))
    np.testing.assert_allclose(t, [-2.7, 0.48], rtol=1e-12)
    # decay length 0.184 a: hopping at 2 a0 is -2.7 exp(-a0 / 0.045264)
    assert sk.hopping(np.array([2 * a0, 0, 0])) == pytest.approx(-2.7 * np.exp(-a0 / (0.184 * 0.246)))


@pytest.mark.parametrize("cutoff", [0.2, 0.3])
def test_monolayer_dirac_velocity_first_and_third_shell(cutoff):
    """hbar v = 3 a0 |t1 - 2 t3| / 2; the second shell (same sublattice) does not enter."""
    mono = monolayer_graphene()
    tb = TightBinding(mono, SlaterKoster(cutoff_nm=cutoff))
    numeric = dirac_velocity_ev_nm(tb, mono.high_symmetry_points()["K"])
    analytic = analytic_monolayer_velocity_ev_nm(tb.params)
    assert numeric == pytest.approx(analytic, rel=0.01)
    if cutoff == 0.2:  # nearest neighbours only: textbook 3 a0 t / 2 = 0.5752 eV nm
        assert analytic == pytest.approx(1.5 * 0.246 / np.sqrt(3) * 2.7, rel=1e-12)


def test_monolayer_dirac_point_energy_is_second_shell_shift():
    mono = monolayer_graphene()
    sk = SlaterKoster(cutoff_nm=0.3)
    e = eigenvalues(TightBinding(mono, sk), mono.high_symmetry_points()["K"])
    t2 = sk.hopping(np.array([0.246, 0, 0]))
    # six second neighbours with cos(K.R) = -1/2 each: E_D = -3 t2
    np.testing.assert_allclose(e, [-3 * t2, -3 * t2], atol=1e-12)
    assert dirac_energy(sk) == pytest.approx(-3 * t2, abs=1e-12)


def test_bernal_bilayer_band_features():
    sk = SlaterKoster()
    bilayer = bernal_bilayer()
    tb = TightBinding(bilayer, sk)
    k_point = bilayer.high_symmetry_points()["K"]
    e = eigenvalues(tb, k_point) - dirac_energy(sk)
    # two low-energy bands touch at K; split-off bands at +-gamma1
    assert abs(e[1]) < 1e-9 and abs(e[2]) < 1e-9
    gamma1 = 0.5 * (e[3] - e[0])
    assert e[3] == pytest.approx(-e[0], abs=1e-9)
    # measured gamma1 = 0.38 eV (Kuzmenko et al., PRB 80, 165406 (2009)); this model gives ~0.34
    assert 0.30 < gamma1 < 0.42
    # quadratic dispersion E = (hbar v q)^2 / gamma1 away from the trigonal-warping regime
    v = dirac_velocity_ev_nm(TightBinding(monolayer_graphene(), sk), k_point)
    q = 0.08
    angles = np.arange(6) * np.pi / 3 + 0.1
    spread = [eigenvalues(tb, k_point + q * np.array([np.cos(a), np.sin(a)])) for a in angles]
    low = np.mean([0.5 * (s[2] - s[1]) for s in spread])
    assert low == pytest.approx((v * q) ** 2 / gamma1, rel=0.08)


def test_index_zero_is_bernal_bilayer():
    sk = SlaterKoster()
    lat, bl = TBGLattice(0), bernal_bilayer()
    e0 = eigenvalues(TightBinding(lat, sk), lat.high_symmetry_points()["K"])
    e1 = eigenvalues(TightBinding(bl, sk), bl.high_symmetry_points()["K"])
    np.testing.assert_allclose(e0, e1, atol=1e-10)


def test_hermiticity_and_time_reversal(tb9):
    k = np.array([0.31, -0.17])
    h = tb9.hamiltonian(k, dense=True)
    scale = np.abs(h).max()
    assert np.abs(h - h.conj().T).max() < 1e-14 * scale * 10
    assert np.abs(tb9.hamiltonian(-k, dense=True) - h.conj()).max() == 0.0
    h0 = tb9.hamiltonian((0.0, 0.0))
    assert not np.iscomplexobj(h0.data)


def test_tbg_velocity_matches_bistritzer_macdonald(tb9):
    sk = tb9.params
    lat = tb9.structure
    mono = monolayer_graphene()
    v0 = dirac_velocity_ev_nm(TightBinding(mono, sk), mono.high_symmetry_points()["K"])
    v_tbg = dirac_velocity_ev_nm(tb9, lat.high_symmetry_points()["K"], n_central=4)
    w = bm_interlayer_coupling_ev(sk, lat.distance_nm)
    assert w == pytest.approx(0.11, abs=0.01)  # Moon & Koshino quote w ~ 0.11 eV
    ratio_bm = bm_velocity_ratio(lat.twist_angle_deg, w, v0)
    assert v_tbg / v0 < 0.8  # strongly renormalised
    assert v_tbg / v0 == pytest.approx(ratio_bm, rel=0.10)


def test_band_structure_roundtrip_and_plot(tmp_path):
    mono = monolayer_graphene()
    bs = band_structure(TightBinding(mono), n_points=30)
    assert bs.energies_ev.shape == (30, 2)
    # Dirac point at K: the K tick
    k_index = np.argmin(np.abs(bs.distance_nm - bs.ticks_nm[1]))
    assert bs.energies_ev[k_index, 1] - bs.energies_ev[k_index, 0] < 1e-9
    bs.save(tmp_path / "b.h5")
    loaded = BandStructure.load(tmp_path / "b.h5")
    np.testing.assert_array_equal(loaded.energies_ev, bs.energies_ev)
    assert loaded.labels == ["G", "K", "M", "G"]
    bs.plot(tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_dos_normalisation_and_roundtrip(tmp_path):
    mono = monolayer_graphene()
    result = density_of_states(TightBinding(mono), kgrid=12, energies_ev=np.linspace(-12, 12, 4001),
                               broadening_ev=0.05)
    # two bands per cell: integral of the DOS is 2 states
    assert np.trapezoid(result.dos_per_ev, result.energies_ev) == pytest.approx(2.0, rel=1e-3)
    result.save(tmp_path / "d.h5")
    assert DensityOfStates.load(tmp_path / "d.h5").kgrid == 12


def test_monkhorst_pack_weights_and_time_reversal():
    rec = TBGLattice(9).reciprocal_nm
    for n in (1, 2, 3, 4):
        k, w = monkhorst_pack(rec, n)
        assert w.sum() == pytest.approx(1.0)
        full, _ = monkhorst_pack(rec, n, time_reversal=False)
        assert len(full) == n * n
    k, w = monkhorst_pack(rec, 1)
    assert np.all(k == 0)


def test_sparse_shift_invert_matches_dense(tb9):
    k = tb9.structure.high_symmetry_points()["M"]
    full = eigenvalues(tb9, k)
    near = eigenvalues(tb9, k, n_bands=6, sigma_ev=0.787)
    closest = full[np.argsort(np.abs(full - 0.787))[:6]]
    np.testing.assert_allclose(near, np.sort(closest), atol=1e-9)


def test_bad_inputs(tb9):
    with pytest.raises(MoireSTMError, match="at least two"):
        k_path(tb9.structure, ["G"])
    with pytest.raises(MoireSTMError, match="unknown"):
        k_path(tb9.structure, ["G", "X"])
    with pytest.raises(MoireSTMError, match="wave vector"):
        tb9.hamiltonian([0.1, np.nan])
    with pytest.raises(MoireSTMError, match="k-grid"):
        monkhorst_pack(tb9.structure.reciprocal_nm, 0)
    with pytest.raises(MoireSTMError, match="cutoff"):
        SlaterKoster(cutoff_nm=0.1)
    with pytest.raises(MoireSTMError, match="broadening"):
        density_of_states(TightBinding(monolayer_graphene()), kgrid=2, broadening_ev=-1)
