"""Network + pixel kernel ridge blend (moirestm.learn.kernel) and the group split's range ends."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from moirestm.errors import MoireSTMError  # noqa: E402
from moirestm.learn import KernelBlend, PixelKernelRidge, Run, attach_kernel, evaluate, make_split, train  # noqa: E402
from moirestm.learn.data import Normalizer, targets_of  # noqa: E402
from moirestm.learn.predict import calibrated_sigma, fit_calibration  # noqa: E402
from moirestm.learn.synthetic import make_synthetic_store  # noqa: E402

U_VALUES = tuple(np.round(np.arange(0.0, 3.01, 0.2), 3))  # 16 values
FAST = dict(epochs=12, batch_size=8, min_epochs=4, patience=8, val_fraction=0.25, test_fraction=0.2)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernel") / "synthetic.h5"
    make_synthetic_store(path, u_values=U_VALUES, fillings=(-0.5, 0.5), replicas=1, image_size=32, seed=2)
    return path


def _smooth_images(u: np.ndarray, size: int = 16) -> list[np.ndarray]:
    """Images whose two Gaussian peaks move and brighten smoothly with ``u``."""
    yy, xx = np.mgrid[:size, :size]
    return [1.0 + (1 + v) * np.exp(-((xx - 4 - 2 * v) ** 2 + (yy - 8) ** 2) / 4.0)
            + np.exp(-((xx - 12) ** 2 + (yy - 4 - 2 * v) ** 2) / 4.0) for v in u]


def test_pixel_kernel_ridge_interpolates_a_smooth_map():
    u_train, u_val, u_test = np.linspace(0, 3, 31), np.linspace(0.05, 2.95, 8), np.linspace(0.12, 2.88, 9)
    imgs = {p: _smooth_images(u) for p, u in (("train", u_train), ("val", u_val), ("test", u_test))}
    norm = Normalizer.fit(imgs["train"], u_train[:, None], ["u"], None)

    def flat(images):
        return norm.transform_images(images).reshape(len(images), -1).numpy()

    krr = PixelKernelRidge.fit(flat(imgs["train"]), u_train[:, None], flat(imgs["val"]), u_val[:, None])
    pred = krr.predict(flat(imgs["test"]))[:, 0]
    assert np.mean(np.abs(pred - u_test)) < 0.02 * np.std(u_train)  # the mean would score 0.87 std
    again = PixelKernelRidge.from_state(krr.state())
    np.testing.assert_allclose(again.predict(flat(imgs["test"])), krr.predict(flat(imgs["test"])))


def _fitted_smooth_kernel():
    u_train, u_val = np.linspace(0, 3, 31), np.linspace(0.05, 2.95, 8)
    norm = Normalizer.fit(_smooth_images(u_train), u_train[:, None], ["u"], None)
    x_train, x_val = (norm.transform_images(_smooth_images(u)) for u in (u_train, u_val))
    krr = PixelKernelRidge.fit(x_train.reshape(31, -1).numpy(), u_train[:, None], x_val.reshape(8, -1).numpy(),
                               u_val[:, None])
    return krr, u_train, x_train, x_val


def test_kernel_summary_module_is_the_kernel_and_differentiable():
    """The torch module gives the kernel's own predictions, with a gradient in the image."""
    from moirestm.learn.kernel import KernelSummary

    krr, _, _, x_val = _fitted_smooth_kernel()
    module = KernelSummary(krr)
    x = x_val.clone().requires_grad_(True)
    out = module(x)
    np.testing.assert_allclose(out.detach().numpy(), krr.predict(x_val.reshape(8, -1).numpy()), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert module.state_dict() == {}  # the float64 copies are rebuilt from the kernel's own state, not saved
    with pytest.raises(MoireSTMError, match="input values per image"):
        module(torch.zeros(1, 1, 8, 8))


def test_cross_fitted_predictions_never_see_their_own_group():
    """Out-of-fold: relabelling one group's targets leaves that group's predictions unchanged and moves
    the others'; on a smooth map the out-of-fold error is small but above the near-exact in-sample fit."""
    krr, u, x_train, _ = _fitted_smooth_kernel()
    groups = np.arange(31) // 4  # 8 groups of neighbouring u
    cross = krr.cross_fitted(u[:, None], groups, n_folds=4)
    relabelled = u.copy()
    relabelled[groups == 3] += 5.0
    moved = krr.cross_fitted(relabelled[:, None], groups, n_folds=4)
    np.testing.assert_allclose(moved[groups == 3], cross[groups == 3])
    assert np.abs(moved[groups != 3] - cross[groups != 3]).max() > 0.1
    in_sample = np.abs(krr.predict(x_train.reshape(31, -1).numpy())[:, 0] - u).mean()
    assert in_sample < np.abs(cross[:, 0] - u).mean() < 0.2 * np.std(u)
    with pytest.raises(MoireSTMError, match="at least 2 groups"):
        krr.cross_fitted(u[:, None], np.zeros(31))


def test_blend_weight_follows_the_better_half():
    u_train, u_val = np.linspace(0, 3, 31), np.linspace(0.05, 2.95, 12)
    train_imgs, val_imgs = _smooth_images(u_train), _smooth_images(u_val)
    template = Normalizer.fit(train_imgs, u_train[:, None], ["u"], None)
    y_val = u_val[:, None]
    exact = KernelBlend.fit(train_imgs, u_train[:, None], val_imgs, y_val, y_val.copy(), template)
    assert exact.weight == 1.0 and exact.val_mae["blend"] == 0.0  # a perfect network takes all the weight
    rng = np.random.default_rng(0)
    useless = KernelBlend.fit(train_imgs, u_train[:, None], val_imgs, y_val, rng.uniform(0, 3, y_val.shape), template)
    assert useless.weight <= 0.1 and useless.val_mae["blend"] <= useless.val_mae["kernel"] + 1e-12
    again = KernelBlend.from_state(useless.state())
    np.testing.assert_allclose(again.kernel_predict(val_imgs), useless.kernel_predict(val_imgs))


def test_disagreement_calibration():
    rng = np.random.default_rng(1)
    s, d = rng.uniform(0.0, 0.5, (4000, 1)), rng.uniform(0.0, 1.0, (4000, 1))
    residual = rng.normal(0.0, 1.0, d.shape) * np.sqrt(s ** 2 + (0.8 * d) ** 2 + 0.1 ** 2)
    cal = fit_calibration(residual, s, d)  # recovers the three terms of the variance it was drawn from
    assert cal["a"][0] == pytest.approx(1.0, rel=0.15) and cal["c"][0] == pytest.approx(0.8, rel=0.1)
    assert cal["b"][0] == pytest.approx(0.1, rel=0.4)
    with pytest.raises(MoireSTMError, match="disagreement"):
        calibrated_sigma(np.ones((2, 1)), cal)


def test_training_blends_and_reports_each_half(store_path, tmp_path):
    run = train(store_path, model="mlp", split="group", out=tmp_path / "blend", progress=False, **FAST)
    assert run.kernel is not None and run.name == "mlp+kernel" and 0.0 <= run.kernel.weight <= 1.0
    assert "c" in run.calibration and run.best["kernel"]["n_train"] == len(run.split.train)
    result = evaluate(run, plots=False)
    m = result["targets"]["hubbard_u_ev"]
    assert result["model"] == "mlp+kernel" and "disagreement" in result["uncertainty"]
    assert m["mae"] < 0.4 * float(np.std(U_VALUES))
    halves = m["components"]
    assert set(halves) == {"network", "kernel"}
    lo, hi = sorted((halves["network"]["mae"], halves["kernel"]["mae"]))
    assert m["mae"] <= hi + 1e-9  # a convex blend is never worse than its worse half (MAE is convex)
    loaded = Run.load(tmp_path / "blend")
    assert loaded.kernel.weight == run.kernel.weight
    store_keys = run.split.test[:3]
    from moirestm.dataset.store import Store

    st = Store.open(store_path)
    images = [st.image(k) for k in store_keys]
    np.testing.assert_allclose(loaded.predict(images)[0], run.predict(images)[0], rtol=1e-6)


def test_network_only_run_and_attach_kernel(store_path, tmp_path):
    run = train(store_path, model="mlp", split="group", out=tmp_path / "net", progress=False, kernel=False, **FAST)
    assert run.kernel is None and run.name == "mlp" and "c" not in run.calibration
    assert "components" not in evaluate(run, plots=False)["targets"]["hubbard_u_ev"]
    attached = attach_kernel(tmp_path / "net")
    assert attached.kernel is not None and Run.load(tmp_path / "net").name == "mlp+kernel"
    assert json.loads((tmp_path / "net" / "run.json").read_text())["best"]["kernel"]["weight"] == attached.kernel.weight


def test_kernel_skipped_over_its_size_limit(store_path, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["moirestm.learn.train"], "KERNEL_MAX_TRAIN", 5)
    run = train(store_path, model="mlp", split="group", out=tmp_path / "big", progress=False, epochs=2, min_epochs=1,
                batch_size=8)
    assert run.kernel is None and "KERNEL_MAX_TRAIN" in run.best["kernel"]["skipped"] and run.name == "mlp"


def test_group_split_keeps_the_range_ends_in_training(store_path):
    from moirestm.dataset.store import Store

    st = Store.open(store_path)
    for seed in range(6):
        sp = make_split(st, "group", seed=seed)
        u_train = set(np.round(targets_of(st, sp.train, ["hubbard_u_ev"])[:, 0], 9))
        assert min(U_VALUES) in u_train and max(U_VALUES) in u_train and sp.held_out["ends"] == "train"
    few = make_split(st, "group", seed=0, val_fraction=0.47, test_fraction=0.44)  # 8 + 7 of 16: ends drawn too
    assert few.held_out["ends"] == "drawn"
