"""Round trip for measured maps: a degraded STM map written to a Nanonis file, read back and
calibrated, predicts the same U as the clean map within the model's stated uncertainty.

The map family is the toy TBG pattern of ``moirestm.measured.synthetic`` whose moiré contrast is
tied to a label ("U"); the test checks the measurement pipeline (files, calibration, OOD), not physics.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moirestm.dataset.store import Store, sample_key  # noqa: E402
from moirestm.learn import evaluate, predict, train  # noqa: E402
from moirestm.learn.measured import predict_measured  # noqa: E402
from moirestm.lattice import twist_angle_deg  # noqa: E402
from moirestm.measured import prepare_measured  # noqa: E402
from moirestm.measured.synthetic import synthetic_stm_map, write_sxm  # noqa: E402

THETA = twist_angle_deg(9)
PIXEL_NM = 0.065
N_PX = 256
SIZE = 64


def toy_map(u, seed, **degrade):
    return synthetic_stm_map(THETA, n_px=N_PX, pixel_nm=degrade.pop("pixel_nm", PIXEL_NM), seed=seed,
                             moire_amplitude=0.5 + 0.5 * u, noise=degrade.pop("noise", 0.05), **degrade)


def calibrated(tmp_path, name, image, pixel_nm=PIXEL_NM):
    path = tmp_path / f"{name}.npy"
    np.save(path, image)
    return prepare_measured(path, pixel_nm=pixel_nm, size=SIZE)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("measured_roundtrip")
    u_values = np.round(np.arange(0.0, 6.01, 0.25), 2)
    rng = np.random.default_rng(0)
    with Store.create(tmp / "toy.h5", {"name": "toy-measured-roundtrip"}) as store:
        for u in u_values:
            for seed in range(1, 7):
                params = {"hubbard_u_ev": float(u), "index": 9, "filling": 0.0, "seed": seed}
                # physically faithful augmentation: STM artefacts applied to the real-space map,
                # then calibrated like a measurement
                pixel_nm = rng.uniform(0.06, 0.075)
                degraded = toy_map(u, seed, pixel_nm=pixel_nm, rotation_deg=rng.uniform(-30, 30),
                                   scale_error=rng.uniform(0.97, 1.03), drift_nm=rng.uniform(0, 1),
                                   noise=rng.uniform(0.02, 0.35), line_noise=rng.uniform(0, 0.2),
                                   tilt=rng.uniform(-3, 3))
                image = calibrated(tmp, f"u{u}-{seed}", degraded, pixel_nm)
                store.write_sample(sample_key(params), params, {"ft_image": image})
        store.commit()
    run = train(tmp / "toy.h5", model="cnn", split="random", out=tmp / "run", progress=False, seed=0, input_size=32,
                epochs=80, batch_size=8, patience=25, min_epochs=25, val_fraction=0.2, test_fraction=0.15)
    return tmp, run


def test_degraded_file_predicts_clean_value(trained):
    tmp, run = trained
    u_true = 3.25  # between training values
    scores = evaluate(run, plots=False)["targets"]["hubbard_u_ev"]
    assert scores["r2"] > 0.8  # the model learned the label at all (held-out maps)
    clean = predict(run, calibrated(tmp, "clean", toy_map(u_true, 7)))
    u_clean = clean.values["hubbard_u_ev"]
    assert abs(u_clean - u_true) <= 3 * clean.sigma["hubbard_u_ev"]
    # drift, 11° scan rotation, 3 % piezo error, a different pixel size, white and scan-line noise
    degraded = toy_map(u_true, 8, pixel_nm=0.07, rotation_deg=11.0, scale_error=1.03, drift_nm=0.6,
                       noise=0.25, line_noise=0.15, tilt=2.0)
    path = write_sxm(tmp / "degraded.sxm", {"Z": (degraded * 1e-10, None)}, (N_PX * 0.07, N_PX * 0.07))
    result = predict_measured(run, path, channel="Z")
    u_deg = result.prediction.values["hubbard_u_ev"]
    sigma = result.prediction.sigma["hubbard_u_ev"]
    assert abs(u_deg - u_clean) <= sigma, (u_clean, u_deg, sigma)
    assert abs(result.calibration.twist_angle_deg - THETA) <= 2 * result.calibration.twist_uncertainty_deg + 0.01
    assert not result.twist.mismatch
    assert not result.ood.is_ood, result.ood


def test_other_twist_angle_is_flagged(trained):
    tmp, run = trained
    other = synthetic_stm_map(2.0, n_px=384, pixel_nm=0.065, seed=3, noise=0.05)
    np.save(tmp / "other.npy", other)
    result = predict_measured(run, tmp / "other.npy", pixel_nm=0.065)
    assert result.twist.mismatch
    assert any("twist" in w.lower() for w in result.warnings)
