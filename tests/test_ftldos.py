"""FT-LDOS: NUFFT against the direct sum, FFT route against the direct DTFT, symmetries, options."""

from types import SimpleNamespace

import numpy as np
import pytest

from moirestm.constants import GRAPHENE_LATTICE_NM
from moirestm.errors import MoireSTMError
from moirestm.lattice import TBGLattice
from moirestm.observables.ftldos import (FTImage, default_window_nm, direct_amplitude, ft_ldos,
                                         ft_points, k_axes, point_amplitude)


def _site_ldos(index=2, seed=0, nb=2, uniform=False):
    lat = TBGLattice(index)
    rng = np.random.default_rng(seed)
    n = lat.n_atoms
    up = np.ones((nb, n)) if uniform else rng.random((nb, n))
    down = np.ones((nb, n)) if uniform else rng.random((nb, n))
    return SimpleNamespace(bias_ev=np.linspace(-0.1, 0.1, nb), ldos_up=up, ldos_down=down,
                           positions_nm=lat.positions_nm, layer=lat.layer,
                           superlattice_nm=lat.superlattice_nm), lat


def _tiled(lat, tiling):
    m = np.array([[i, j] for i in range(tiling) for j in range(tiling)]) @ lat.superlattice_nm
    return (lat.positions_nm[None, :, :2] + m[:, None, :]).reshape(-1, 2)


def test_nufft_equals_direct_sum():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-3, 3, size=(300, 2))
    w = rng.normal(size=300)
    kx, ky = k_axes((21, 30), default_window_nm())
    fast = point_amplitude(xy, w, kx, ky)
    exact = direct_amplitude(xy, w, kx, ky)
    assert np.linalg.norm(fast - exact) / np.linalg.norm(exact) <= 1e-8
    assert np.max(np.abs(fast - exact)) / np.max(np.abs(exact)) <= 1e-8


def test_ft_site_ldos_matches_direct_sum_with_options():
    sl, lat = _site_ldos()
    ft = ft_ldos(sl, size=(31, 24), tiling=2, apodisation="hann", remove_q0=True, bias_index=1)
    xy = _tiled(lat, 2)
    w = np.tile(sl.ldos_up[1] + sl.ldos_down[1], 4)
    frac = np.clip(xy @ np.linalg.inv(2 * lat.superlattice_nm), 0, 1)
    a = np.sin(np.pi * frac[:, 0]) ** 2 * np.sin(np.pi * frac[:, 1]) ** 2
    w = w - np.sum(a * w) / a.sum()
    exact = np.abs(direct_amplitude(xy, a * w / a.sum(), ft.kx_nm, ft.ky_nm))
    assert ft.image.dtype == np.float32 and ft.image.shape == (31, 24)
    # float32 output: agreement to single precision
    assert np.max(np.abs(ft.image - exact)) / exact.max() < 1e-6
    assert ft.params["tiling"] == 2 and ft.params["remove_q0"] and ft.params["bias_ev"] == pytest.approx(0.1)


def test_default_window_and_grid():
    kx, ky = k_axes(256)
    a = GRAPHENE_LATTICE_NM
    assert kx[-1] == pytest.approx(1.1 * 2 * np.pi / a) and ky[-1] == pytest.approx(1.1 * 4 * np.pi / (np.sqrt(3) * a))
    np.testing.assert_allclose(kx, -kx[::-1], atol=1e-12)


def test_inversion_symmetry_and_q0_removal():
    sl, _ = _site_ldos(index=1)
    ft = ft_ldos(sl, size=33, tiling=3, remove_q0=True)
    # real weights: |F(-q)| = |F(q)| on the symmetric grid
    np.testing.assert_allclose(ft.image, ft.image[::-1, ::-1], rtol=1e-5, atol=1e-6 * ft.image.max())
    assert ft.image[16, 16] < 1e-6 * ft.image.max()  # q = 0 at the centre of an odd grid
    raw = ft_ldos(sl, size=33, tiling=3, remove_q0=False)
    assert raw.image[16, 16] == pytest.approx(np.mean(sl.ldos_up[0] + sl.ldos_down[0]), rel=1e-5)


def test_bragg_peaks_of_uniform_ldos():
    """Uniform LDOS: the brightest non-central peaks sit at the rotated graphene Bragg vectors."""
    sl, lat = _site_ldos(index=3, uniform=True)
    ft = ft_ldos(sl, size=221, tiling=3)
    theta = np.radians(lat.twist_angle_deg)
    b = 4 * np.pi / (np.sqrt(3) * GRAPHENE_LATTICE_NM)
    kxg, kyg = np.meshgrid(ft.kx_nm, ft.ky_nm)
    outer = np.where(np.hypot(kxg, kyg) > 0.5 * b, ft.image, 0.0)  # skip the q = 0 peak
    iy, ix = np.unravel_index(np.argmax(outer), ft.image.shape)
    peak = np.array([ft.kx_nm[ix], ft.ky_nm[iy]])
    candidates = [b * np.array([np.cos(phi), np.sin(phi)])
                  for s in (-1, 1) for phi in np.radians(30 + 60 * np.arange(6)) + s * theta / 2]
    dk = ft.kx_nm[1] - ft.kx_nm[0]
    assert min(np.linalg.norm(peak - c) for c in candidates) < 1.5 * dk
    # coherent sum: per-point normalisation makes the Bragg peak independent of tiling
    ft2 = ft_ldos(sl, size=221, tiling=2)
    assert np.max(np.where(np.hypot(kxg, kyg) > 0.5 * b, ft2.image, 0.0)) == pytest.approx(outer.max(), rel=0.05)
    # weight 2 per atom, one of two layers coherent, sublattice factor |1 + exp(2 pi i/3)|/2 = 1/2
    assert outer.max() == pytest.approx(0.5, rel=0.03)


def test_stm_map_route_equals_direct_dtft():
    rng = np.random.default_rng(3)
    x = np.linspace(-2.0, 3.0, 90)
    y = np.linspace(0.5, 4.0, 70)
    img = rng.random((70, 90))
    smap = SimpleNamespace(x_nm=x, y_nm=y, image=img)
    window = (-25.0, 20.0, -18.0, 22.0)
    ft = ft_ldos(smap, size=(40, 50), window=window)
    xx, yy = np.meshgrid(x - 0.5 * (x[0] + x[-1]), y - 0.5 * (y[0] + y[-1]))
    exact = np.abs(direct_amplitude(np.column_stack([xx.ravel(), yy.ravel()]), img.ravel() / img.size,
                                    ft.kx_nm, ft.ky_nm))
    assert np.max(np.abs(ft.image - exact)) / exact.max() < 1e-6
    assert ft.params["route"] == "chirp_z_fft"


def test_stm_map_plane_wave_peak_and_nyquist_error():
    x = np.arange(0, 20, 0.05)
    q0 = np.array([12.0, -7.0])
    xx, yy = np.meshgrid(x, x)
    smap = SimpleNamespace(x_nm=x, y_nm=x, image=1.0 + np.cos(q0[0] * xx + q0[1] * yy))
    ft = ft_ldos(smap, size=101, remove_q0=True, apodisation="hann")
    iy, ix = np.unravel_index(np.argmax(ft.image), ft.image.shape)
    dk = ft.kx_nm[1] - ft.kx_nm[0]
    assert min(np.linalg.norm([ft.kx_nm[ix], ft.ky_nm[iy]] - s * q0) for s in (1, -1)) < 1.5 * dk
    coarse = SimpleNamespace(x_nm=np.arange(0, 10, 0.2), y_nm=np.arange(0, 10, 0.2), image=np.ones((50, 50)))
    with pytest.raises(MoireSTMError, match="Nyquist"):
        ft_ldos(coarse)


def test_log_scale_recorded_and_save_load(tmp_path):
    sl, _ = _site_ldos(index=1)
    ft = ft_ldos(sl, size=16, log_scale=True)
    lin = ft_ldos(sl, size=16)
    np.testing.assert_allclose(ft.image, np.log10(lin.image + 1e-6 * lin.image.max()), rtol=1e-5)
    assert ft.params["log_scale"] is True
    ft.save(tmp_path / "ft.h5")
    back = FTImage.load(tmp_path / "ft.h5")
    np.testing.assert_array_equal(back.image, ft.image)
    assert back.params["log_scale"] is True and back.image.dtype == np.float32
    from moirestm.io import write_h5

    write_h5(tmp_path / "other.h5", "SiteLDOS", {}, {"x": np.zeros(2)})
    with pytest.raises(MoireSTMError, match="SiteLDOS"):
        FTImage.load(tmp_path / "other.h5")


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 1}, "size"),
    ({"size": 10.5}, "size"),
    ({"window": (1.0, -1.0, 0.0, 1.0)}, "window"),
    ({"apodisation": "kaiser"}, "apodisation"),
    ({"tiling": 0}, "tiling"),
    ({"bias_index": 5}, "bias_index"),
    ({"spin": "sideways"}, "spin"),
    ({"layer": 3}, "layer"),
])
def test_bad_options(kwargs, match):
    sl, _ = _site_ldos(index=1)
    with pytest.raises(MoireSTMError, match=match):
        ft_ldos(sl, **kwargs)


def test_bad_sources():
    with pytest.raises(MoireSTMError, match="SiteLDOS or an STMMap"):
        ft_ldos(np.zeros((4, 4)))
    with pytest.raises(MoireSTMError, match="finite"):
        ft_points(np.zeros((3, 2)) + [[0, 0], [1, 0], [0, 1]], np.array([1.0, np.nan, 0.0]))


def test_layer_and_spin_channels():
    sl, lat = _site_ldos(index=1)
    top = ft_ldos(sl, size=12, layer=1, spin="spin", tiling=1)
    sel = lat.layer == 1
    w = (sl.ldos_up[0] - sl.ldos_down[0])[sel]
    exact = np.abs(direct_amplitude(lat.positions_nm[sel, :2], w / sel.sum(), top.kx_nm, top.ky_nm))
    assert np.max(np.abs(top.image - exact)) / exact.max() < 1e-6
