"""Measured STM maps: readers (.sxm, .3ds, .gwy, .npy, .txt), calibration round trip, OOD checks, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("nanonispy2")
pytest.importorskip("gwyfile")

from moirestm.errors import MoireSTMError  # noqa: E402
from moirestm.measured import (  # noqa: E402
    calibrate,
    level_lines,
    level_plane,
    lawler_fujita,
    ood_score,
    prepare_measured,
    read_stm,
    twist_mismatch,
)
from moirestm.measured.calibrate import BRAGG_NM, _constellation, _Spectrum  # noqa: E402
from moirestm.measured.synthetic import (  # noqa: E402
    graphene_reciprocal_nm,
    synthetic_stm_map,
    write_3ds,
    write_gwy,
    write_sxm,
)

PIXEL_NM = 0.065
N_PX = 320


def _rot(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s], [s, c]])


# --------------------------------------------------------------------------- readers
@pytest.fixture(scope="module")
def small_map():
    return synthetic_stm_map(3.0, n_px=64, pixel_nm=0.1, noise=0.1, seed=3)


def test_sxm_roundtrip_directions_and_metadata(tmp_path, small_map):
    z = small_map * 1e-11
    back = z + 1e-13  # distinguishable backward image
    path = write_sxm(tmp_path / "scan.sxm", {"Z": (z, back), "LI Demod 1 X": (small_map * 1e-12, None)},
                     (6.4, 6.4), units={"LI Demod 1 X": "A"}, bias_v=-0.25, setpoint="2.000E-10 A",
                     scan_angle_deg=12.5)
    lix = read_stm(path)  # default channel: the lock-in (dI/dV)
    assert lix.channel == "LI Demod 1 X" and lix.unit == "A"
    np.testing.assert_allclose(lix.data, small_map * 1e-12, rtol=1e-6)
    zf = read_stm(path, "z")
    np.testing.assert_allclose(zf.data, z, rtol=1e-6)
    zb = read_stm(path, "Z", direction="backward")
    np.testing.assert_allclose(zb.data, back, rtol=1e-6)
    assert zf.pixel_nm == pytest.approx((0.1, 0.1))
    assert zf.scan_size_nm == pytest.approx((6.4, 6.4))
    assert zf.bias_v == pytest.approx(-0.25)
    assert zf.setpoint == "2.000E-10 A"
    assert zf.scan_angle_deg == pytest.approx(12.5)
    with pytest.raises(MoireSTMError, match="no backward"):
        read_stm(path, "LI Demod", direction="backward")
    with pytest.raises(MoireSTMError, match="available channels"):
        read_stm(path, "Current")


def test_sxm_scan_down_is_flipped_to_the_same_orientation(tmp_path, small_map):
    up = write_sxm(tmp_path / "up.sxm", {"Z": (small_map, small_map)}, (6.4, 6.4), scan_dir="up")
    down = write_sxm(tmp_path / "down.sxm", {"Z": (small_map, small_map)}, (6.4, 6.4), scan_dir="down")
    raw_up, raw_down = up.read_bytes(), down.read_bytes()
    assert raw_up[-4 * 64 * 64:] != raw_down[-4 * 64 * 64:]  # stored line order differs
    np.testing.assert_allclose(read_stm(down).data, read_stm(up).data)


def test_sxm_damaged_files_fail_clearly(tmp_path, small_map):
    path = write_sxm(tmp_path / "scan.sxm", {"Z": (small_map, small_map)}, (6.4, 6.4))
    truncated = tmp_path / "truncated.sxm"
    truncated.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MoireSTMError, match="truncated"):
        read_stm(truncated)
    garbage = tmp_path / "garbage.sxm"
    garbage.write_bytes(b"not a nanonis file\n" * 10)
    with pytest.raises(MoireSTMError, match="damaged or unsupported"):
        read_stm(garbage)


def test_3ds_grid_bias_selection_and_topography(tmp_path, small_map):
    bias = np.array([-0.2, 0.0, 0.2])
    cube = np.stack([small_map * f for f in (1.0, 2.0, 3.0)], axis=-1)
    path = write_3ds(tmp_path / "grid.3ds", {"LI Demod 1 X (A)": cube}, (6.4, 3.2), bias,
                     topo_m=small_map * 1e-10, angle_deg=30.0)
    m = read_stm(path, bias_v=0.15)
    assert m.bias_v == pytest.approx(0.2)
    np.testing.assert_allclose(m.data, small_map * 3.0, rtol=1e-5)
    assert m.unit == "A" and m.pixel_nm == pytest.approx((0.1, 0.05))
    assert m.scan_angle_deg == pytest.approx(30.0)
    assert m.setpoint is not None
    assert read_stm(path).bias_v == pytest.approx(0.0)  # default: nearest 0 V
    np.testing.assert_allclose(read_stm(path, "topo").data, small_map * 1e-10, rtol=1e-5)
    truncated = tmp_path / "cut.3ds"
    truncated.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(MoireSTMError, match="truncated"):
        read_stm(truncated)


def test_gwy_roundtrip_with_metadata(tmp_path, small_map):
    path = write_gwy(tmp_path / "map.gwy", {"Topography": small_map, "dI/dV": 2 * small_map}, (6.4, 6.4),
                     meta={"Bias": "0.300 V", "Setpoint": "50 pA"})
    m = read_stm(path)
    assert m.channel == "dI/dV"
    np.testing.assert_allclose(m.data, 2 * small_map)
    t = read_stm(path, "Topography")
    np.testing.assert_allclose(t.data, small_map)
    assert t.pixel_nm == pytest.approx((0.1, 0.1))
    assert t.bias_v == pytest.approx(0.3) and t.setpoint == "50 pA"
    bad = tmp_path / "bad.gwy"
    bad.write_bytes(b"GWYPxx" + path.read_bytes()[6:40])
    with pytest.raises(MoireSTMError, match="Gwyddion"):
        read_stm(bad)


def test_plain_arrays_need_pixel_size(tmp_path, small_map):
    np.save(tmp_path / "m.npy", small_map)
    np.savetxt(tmp_path / "m.txt", small_map)
    with pytest.raises(MoireSTMError, match="pixel size"):
        read_stm(tmp_path / "m.npy")
    a = read_stm(tmp_path / "m.npy", pixel_nm=0.1)
    b = read_stm(tmp_path / "m.txt", pixel_nm=(0.1, 0.12))
    np.testing.assert_allclose(a.data, small_map)
    np.testing.assert_allclose(b.data, small_map)
    assert b.pixel_nm == (0.1, 0.12)
    (tmp_path / "m.tif").write_bytes(b"II*\x00")
    with pytest.raises(MoireSTMError, match="unsupported file type"):
        read_stm(tmp_path / "m.tif")
    with pytest.raises(MoireSTMError, match="not found"):
        read_stm(tmp_path / "absent.sxm")


# --------------------------------------------------------------------------- levelling, drift
def test_levelling_removes_plane_and_line_offsets():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:50, 0:60]
    pattern = np.sin(x * 1.3) * np.cos(y * 0.9)
    plane = 3.0 + 0.2 * x - 0.1 * y
    flat = level_plane(pattern + plane)
    np.testing.assert_allclose(flat - flat.mean(), pattern - pattern.mean(), atol=0.02)
    offsets = rng.normal(size=50)[:, None]
    lines = level_lines(pattern + offsets, order=0)
    resid = lines - (pattern - np.median(pattern, axis=1, keepdims=True))
    assert np.abs(resid).max() < 1e-12


def test_lawler_fujita_recovers_nonlinear_drift():
    n, drift = 320, 2.0
    img = synthetic_stm_map(3.2, n_px=n, pixel_nm=PIXEL_NM, drift_nm=drift)
    spec = _Spectrum(level_plane(img), (PIXEL_NM, PIXEL_NM))
    start = _constellation(spec, 0.75 * BRAGG_NM, 1.25 * BRAGG_NM, tolerance_deg=10.0, radial_tolerance=0.1)
    bragg = np.array([spec.refine(b)[0] for b in start])
    _, u = lawler_fujita(level_plane(img), (PIXEL_NM, PIXEL_NM), bragg, sigma_nm=1.5)
    iy, ix = np.mgrid[0:n, 0:n]
    t = (iy + ix / n) / n
    design = np.column_stack([np.ones(n * n), iy.ravel(), ix.ravel()])
    for comp, weight in ((0, 0.8), (1, 0.6)):
        truth = weight * drift * t.ravel() ** 1.5
        found = u[..., comp].ravel()
        truth_nl = truth - design @ np.linalg.lstsq(design, truth, rcond=None)[0]
        found_nl = found - design @ np.linalg.lstsq(design, found, rcond=None)[0]
        assert np.corrcoef(truth_nl, found_nl)[0, 1] > 0.8
        assert 0.6 < found_nl.std() / truth_nl.std() < 1.4


# --------------------------------------------------------------------------- calibration round trip
def _peak_pixel(image, kx, ky, k):
    """Brightest pixel within 3 pixels of wave vector k, as the k of that pixel."""
    ix, iy = np.argmin(np.abs(kx - k[0])), np.argmin(np.abs(ky - k[1]))
    sub = image[iy - 3: iy + 4, ix - 3: ix + 4]
    jy, jx = np.unravel_index(np.argmax(sub), sub.shape)
    return np.array([kx[ix - 3 + jx], ky[iy - 3 + jy]]), sub.max()


@pytest.mark.parametrize("mirror", [False, True])
def test_roundtrip_degraded_sxm_recovers_twist_and_peak_positions(tmp_path, mirror):
    twist, rotation, scale = 2.9, 17.0, 1.04
    img = synthetic_stm_map(twist, n_px=N_PX, pixel_nm=PIXEL_NM, rotation_deg=rotation, scale_error=scale,
                            drift_nm=1.5, noise=1.5, line_noise=0.5, tilt=8.0, seed=11)
    if mirror:
        img = img[:, ::-1]
    path = write_sxm(tmp_path / "tbg.sxm", {"Z": (img * 1e-11, img * 1e-11)}, (N_PX * PIXEL_NM,) * 2)
    image, report = prepare_measured(path, "Z")
    assert image.shape == (256, 256) and image.dtype == np.float32
    err = abs(report.twist_angle_deg - twist)
    assert err <= 2 * report.twist_uncertainty_deg, (err, report.twist_uncertainty_deg)
    assert report.twist_uncertainty_deg < 0.03
    assert report.atoms_resolved and report.layer_determined and report.mirrored == mirror
    assert report.pixel_scale == pytest.approx(scale, rel=0.03)  # drift adds ~1% linear stretch
    assert report.drift_corrected and report.ft_coverage == 1.0
    # the FT peaks land where the simulation puts them: top-layer Bragg peaks at +theta/2, moiré at 0° mod 60°
    kx, ky = np.asarray(report.kx_nm), np.asarray(report.ky_nm)
    dkx, dky = kx[1] - kx[0], ky[1] - ky[0]
    top = graphene_reciprocal_nm() @ _rot(twist / 2).T
    moire = top - graphene_reciprocal_nm() @ _rot(-twist / 2).T
    background = float(np.median(image))
    for k in list(top) + list(-top) + list(moire) + list(-moire):
        found, value = _peak_pixel(image, kx, ky, k)
        assert abs(found[0] - k[0]) <= 1.01 * dkx and abs(found[1] - k[1]) <= 1.01 * dky, (k, found)
        assert value > 20 * background


def test_calibration_without_atomic_resolution_uses_file_scale(tmp_path):
    twist = 1.6
    img = synthetic_stm_map(twist, n_px=200, pixel_nm=0.3, rotation_deg=-8.0, top_weight=0.0,
                            bottom_weight=0.0, noise=0.3, seed=5)
    result = calibrate(img, 0.3)
    rep = result.report
    assert not rep.atoms_resolved and not rep.drift_corrected
    assert abs(rep.twist_angle_deg - twist) <= 2 * rep.twist_uncertainty_deg
    assert rep.twist_uncertainty_deg >= 0.03 * twist * 0.99  # piezo calibration uncertainty included
    assert rep.ft_coverage < 1.0 and any("Nyquist" in w or "not resolved" in w for w in rep.warnings)
    assert abs(rep.sample_rotation_deg + 8.0) < 1.0


def test_non_moire_image_fails_clearly():
    rng = np.random.default_rng(1)
    with pytest.raises(MoireSTMError, match="moiré"):
        calibrate(rng.normal(size=(128, 128)), 0.1)
    with pytest.raises(MoireSTMError, match="pixel size"):
        calibrate(rng.normal(size=(128, 128)))


def test_bragg_constant_matches_graphene():
    assert BRAGG_NM == pytest.approx(4 * math.pi / (math.sqrt(3) * 0.246))
    period = 0.246 / (2 * math.sin(math.radians(3.0) / 2))
    assert period == pytest.approx(4.69879, rel=1e-5)


# --------------------------------------------------------------------------- out of distribution
def test_ood_score_flags_outliers_only():
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.2, 12)
    train = rng.normal(size=(300, 12)) * scales
    inside = [ood_score(train, rng.normal(size=12) * scales).is_ood for _ in range(200)]
    assert np.mean(inside) < 0.05
    far = ood_score(train, 5.0 * scales)
    assert far.is_ood and far.score > far.threshold and "WARNING" in far.message
    new_direction = rng.normal(size=12) * scales
    new_direction[-1] += 20 * scales[-1]
    assert ood_score(train, new_direction).is_ood
    with pytest.raises(MoireSTMError):
        ood_score(train[:3], train[0])
    with pytest.raises(MoireSTMError):
        ood_score(train, np.zeros(5))


def test_twist_mismatch():
    ok = twist_mismatch(3.47, 0.01, [3.481, 1.05])
    assert not ok.mismatch and ok.nearest_training_deg == pytest.approx(3.481)
    bad = twist_mismatch(2.9, 0.01, [3.481])
    assert bad.mismatch and "WARNING" in bad.message and bad.difference_deg == pytest.approx(-0.581)


# --------------------------------------------------------------------------- CLI
def test_cli_calibrate_and_info(tmp_path):
    from typer.testing import CliRunner

    from moirestm.cli import app

    img = synthetic_stm_map(3.1, n_px=256, pixel_nm=PIXEL_NM, rotation_deg=5.0, noise=0.5, seed=2)
    path = write_gwy(tmp_path / "scan.gwy", {"Topography": img}, (256 * PIXEL_NM,) * 2, meta={"Bias": "0.1 V"})
    sim = tmp_path / "sim.npy"
    np.save(sim, np.ones((256, 256), np.float32))
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", str(path), "--out", str(tmp_path / "out"), "--simulated", str(sim)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "scan_report.json").read_text())
    assert abs(report["twist_angle_deg"] - 3.1) <= 2 * report["twist_uncertainty_deg"]
    for name in ("scan_ft.npy", "scan_ft.png", "scan_calibrated.h5"):
        assert (tmp_path / "out" / name).is_file()
    assert np.load(tmp_path / "out" / "scan_ft.npy").shape == (256, 256)
    info = runner.invoke(app, ["stm-info", str(path)])
    assert info.exit_code == 0 and json.loads(info.stdout)["bias_v"] == pytest.approx(0.1)
    bad = tmp_path / "bad.sxm"
    bad.write_bytes(b"\x00" * 100)
    res = runner.invoke(app, ["calibrate", str(bad)])
    assert res.exit_code == 2 and "error" in res.output
