"""Learning U from FT-LDOS images (issue 4): splits, normalisation, checkpoints, learning, prediction.

Small synthetic stores (32 x 32 images whose moiré/satellite peak intensities depend on U)
written through the Store contract; one thread; the whole file runs in well under 90 s.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from moirestm.errors import MoireSTMError  # noqa: E402
from moirestm.learn import Run, evaluate, make_split, predict, run_baselines, train  # noqa: E402
from moirestm.learn.augment import PRESETS, Augmenter, k_transform, symmetry_matrix  # noqa: E402
from moirestm.learn.data import ImageDataset, Normalizer, SampleArrays, targets_of  # noqa: E402
from moirestm.learn.models import build_model  # noqa: E402
from moirestm.learn.synthetic import make_synthetic_store  # noqa: E402

U_VALUES = tuple(np.round(np.arange(0.0, 3.01, 0.2), 3))  # 16 values
FAST = dict(epochs=45, batch_size=8, lr=2e-3, patience=15, min_epochs=15, val_fraction=0.25,
            test_fraction=0.2)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("learn") / "synthetic.h5"
    make_synthetic_store(path, u_values=U_VALUES, fillings=(-0.5, 0.5), replicas=2, image_size=32, seed=1)
    return path


@pytest.fixture(scope="module")
def store(store_path):
    from moirestm.dataset.store import Store

    return Store.open(store_path)


@pytest.fixture(scope="module")
def trained(store_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cnn"
    return train(store_path, model="cnn", split="group", out=out, progress=False, seed=0, **FAST)


# ------------------------------------------------------------------ splits
@pytest.mark.parametrize("kind", ["group", "interpolate", "extrapolate"])
def test_group_splits_hold_out_whole_u_values(store, kind):
    sp = make_split(store, kind, seed=3, val_fraction=0.2, test_fraction=0.2)
    u = {p: set(np.round(targets_of(store, sp.keys(p), ["hubbard_u_ev"])[:, 0], 9)) for p in ("train", "val", "test")}
    assert u["train"].isdisjoint(u["test"]) and u["train"].isdisjoint(u["val"]) and u["val"].isdisjoint(u["test"])
    assert sorted(sp.train + sp.val + sp.test) == sorted(store.keys())
    lo, hi = min(U_VALUES), max(U_VALUES)
    if kind == "interpolate":
        assert lo in u["train"] and hi in u["train"]
        assert min(u["test"]) > lo and max(u["test"]) < hi
    if kind == "extrapolate":
        assert lo in u["test"] and hi in u["test"]
        assert min(u["train"]) > min(u["test"]) and max(u["train"]) < max(u["test"])


def test_filling_and_random_splits(store):
    with pytest.raises(MoireSTMError, match="at least 3 distinct values of filling"):
        make_split(store, "filling")  # this store has two fillings only
    r1, r2 = make_split(store, "random", seed=5), make_split(store, "random", seed=5)
    assert r1.to_dict() == r2.to_dict()
    assert r1.to_dict() != make_split(store, "random", seed=6).to_dict()
    with pytest.raises(MoireSTMError, match="unknown split"):
        make_split(store, "bogus")


def test_filling_split_holds_out_fillings(tmp_path):
    st = make_synthetic_store(tmp_path / "f.h5", u_values=(0.0, 1.0), fillings=(-0.5, 0.0, 0.5, 1.0),
                              replicas=1, image_size=16, map_size=32)
    sp = make_split(st, "filling", seed=0, val_fraction=0.25, test_fraction=0.25)
    fill = {p: {st.params(k)["filling"] for k in sp.keys(p)} for p in ("train", "val", "test")}
    assert fill["train"].isdisjoint(fill["test"]) and fill["train"].isdisjoint(fill["val"])
    assert all(fill.values())


# ------------------------------------------------------------------ normalisation
def test_normalisation_uses_training_split_only(store):
    sp = make_split(store, "extrapolate", seed=0)
    train_imgs = [store.image(k) for k in sp.train]
    norm = Normalizer.fit(train_imgs, targets_of(store, sp.train, ["hubbard_u_ev"]), ["hubbard_u_ev"], None)
    u_train = targets_of(store, sp.train, ["hubbard_u_ev"])[:, 0]
    assert norm.target_mean[0] == pytest.approx(u_train.mean())
    assert norm.target_std[0] == pytest.approx(u_train.std())
    all_u = targets_of(store, store.keys(), ["hubbard_u_ev"])[:, 0]
    assert abs(norm.target_mean[0] - all_u.mean()) > 1e-6 or abs(norm.target_std[0] - all_u.std()) > 1e-3
    assert norm.scale == pytest.approx(np.median([im.mean() for im in train_imgs]))
    x = np.stack([norm.transform(im) for im in train_imgs])
    assert abs(x.mean()) < 1e-4 and x.std() == pytest.approx(1.0, rel=1e-3)


def test_per_pixel_standardisation(store):
    from moirestm.learn.data import PIXEL_STD_FLOOR

    sp = make_split(store, "group", seed=0)
    imgs = [store.image(k) for k in sp.train]
    y = targets_of(store, sp.train, ["hubbard_u_ev"])
    glob = Normalizer.fit(imgs, y, ["hubbard_u_ev"], None)
    pix = Normalizer.fit(imgs, y, ["hubbard_u_ev"], None, standardise="pixel")
    x = np.stack([pix.transform(im)[0] for im in imgs])
    unfloored = pix.pixel_std > PIXEL_STD_FLOOR * glob.pixel_std * (1 + 1e-6)
    assert unfloored.any() and np.allclose(x.std(axis=0)[unfloored], 1.0, rtol=1e-3)  # unit std per pixel
    assert np.all(pix.pixel_std >= PIXEL_STD_FLOOR * glob.pixel_std * (1 - 1e-6))
    again = Normalizer.from_state(pix.state())
    np.testing.assert_array_equal(again.transform(imgs[0]), pix.transform(imgs[0]))
    with pytest.raises(MoireSTMError, match="standardise must be one of"):
        Normalizer.fit(imgs, y, ["hubbard_u_ev"], None, standardise="minmax")


def test_bad_standardise_refused_before_writing(store_path, tmp_path):
    with pytest.raises(MoireSTMError, match="standardise must be one of"):
        train(store_path, out=tmp_path / "run", progress=False, standardise="minmax", epochs=1)
    assert not (tmp_path / "run").exists()


def test_run_saves_train_only_normalisation(trained, store):
    u_train = targets_of(store, trained.split.train, ["hubbard_u_ev"])[:, 0]
    assert trained.normalizer.target_mean[0] == pytest.approx(u_train.mean())
    saved = json.loads((trained.path / "split.json").read_text())
    assert saved["train"] == trained.split.train and saved["test"] == trained.split.test


# ------------------------------------------------------------------ learning and evaluation
def test_tiny_cnn_learns_u(trained, store, tmp_path):
    result = evaluate(trained, out=tmp_path / "eval")
    m = result["targets"]["hubbard_u_ev"]
    u_std = float(np.std(U_VALUES))
    assert m["mae"] < 0.4 * u_std, m  # predicting the mean scores about 0.8 u_std
    assert m["r2"] > 0.75
    assert (tmp_path / "eval" / "parity.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "residuals.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    per_u = metrics["targets"]["hubbard_u_ev"]["per_value"]
    assert {round(r["value"], 6) for r in per_u} == {round(v, 6) for v in trained.split.held_out["test"]}
    seen = np.array(sorted(set(targets_of(store, trained.split.train, ["hubbard_u_ev"])[:, 0])))
    for row in per_u:  # the interpolation gap of each held-out U (U values here are 0.2 eV apart)
        assert row["train_distance"] == pytest.approx(np.min(np.abs(seen - row["value"])))
        assert row["train_distance"] >= 0.2 - 1e-9


def test_uncertainty_is_calibrated_on_held_out_data(trained, store):
    keys = trained.split.test
    y = targets_of(store, keys, ["hubbard_u_ev"])[:, 0]
    mean, sigma = trained.predict([store.image(k) for k in keys])
    z = np.abs(mean[:, 0] - y) / sigma[:, 0]
    # the calibration was fitted on validation data only; check it on the test split
    assert 0.75 <= np.mean(z <= 2) <= 1.0
    assert np.mean(z <= 1) >= 0.35
    assert np.all(sigma > 0) and np.mean(sigma) < np.std(U_VALUES)


def test_determinism_with_seed(store_path, tmp_path):
    kw = dict(model="mlp", split="random", progress=False, seed=7, epochs=4, min_epochs=0, batch_size=8,
              augment="mild")
    a = train(store_path, out=tmp_path / "a", **kw)
    b = train(store_path, out=tmp_path / "b", **kw)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert [h["val_mae"] for h in a.history] == [h["val_mae"] for h in b.history]
    c = train(store_path, out=tmp_path / "c", **{**kw, "seed": 8})
    assert c.split.to_dict() != a.split.to_dict()


def test_resume_and_time_budget(store_path, tmp_path, monkeypatch):
    import sys

    train_module = sys.modules["moirestm.learn.train"]  # the package exports the function train

    kw = dict(model="mlp", split="group", progress=False, seed=1, min_epochs=0, batch_size=8, epochs=6,
              patience=100)
    full = train(store_path, out=tmp_path / "full", **kw)
    # simulate Ctrl-C during the validation of epoch 3, after epochs 0-2 were saved
    real, calls = train_module.predict_standardised, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "predict_standardised", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(store_path, out=tmp_path / "part", **kw)
    monkeypatch.setattr(train_module, "predict_standardised", real)
    resumed = train(store_path, out=tmp_path / "part", resume=True, **kw)
    assert [h["epoch"] for h in resumed.history] == list(range(6))
    assert [h["val_mae"][0] for h in resumed.history] == pytest.approx([h["val_mae"][0] for h in full.history])
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(MoireSTMError, match="config differs"):
        train(store_path, out=tmp_path / "part", resume=True, **{**kw, "lr": 0.1})
    with pytest.raises(MoireSTMError, match="already holds a run"):
        train(store_path, out=tmp_path / "full", **kw)
    quick = train(store_path, out=tmp_path / "quick", **{**kw, "epochs": 500, "max_minutes": 0.02})
    assert quick.best["stopped"] in ("time budget", "schedule fitted to the time budget")
    assert len(quick.history) < 500


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip(trained, store):
    loaded = Run.load(trained.path)
    images = [store.image(k) for k in trained.split.test[:4]]
    m1, s1 = trained.predict(images)
    m2, s2 = loaded.predict(images)
    np.testing.assert_allclose(m1, m2, rtol=1e-6)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    assert loaded.split.to_dict() == trained.split.to_dict()
    assert loaded.model_config == trained.model_config
    assert loaded.version == trained.version


def test_strict_loading_fails_clearly(trained, tmp_path):
    state = torch.load(trained.path / "checkpoint.pt", weights_only=True)
    bad = dict(state, model_config={**state["model_config"], "width": 8})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(MoireSTMError, match="do not match the model config.*shape mismatch"):
        Run.load(tmp_path / "bad.pt")
    sd = dict(state["state_dict"])
    sd.pop(next(iter(sd)))
    torch.save(dict(state, state_dict=sd), tmp_path / "missing.pt")
    with pytest.raises(MoireSTMError, match="missing 1 tensors"):
        Run.load(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(MoireSTMError, match="not hold a moirestm"):
        Run.load(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(MoireSTMError, match="not a readable"):
        Run.load(tmp_path / "junk.pt")


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18"])
def test_models_share_interface(name):
    from moirestm.learn.predict import mc_dropout

    model = build_model({"name": name, "in_shape": [32, 32], "n_targets": 2}).eval()
    x = torch.randn(3, 1, 32, 32)
    assert model(x).shape == (3, 2)
    point, sd = mc_dropout(model, x, n_samples=16)
    np.testing.assert_allclose(point, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert sd.shape == (3, 2) and np.all(sd > 0)  # dropout masks do vary the output
    with pytest.raises(MoireSTMError):
        build_model({"name": name, "in_shape": [32, 32], "n_targets": 1, "nonsense": 3})


# ------------------------------------------------------------------ prediction inputs
def test_predict_inputs_and_errors(trained, store, tmp_path):
    key = trained.split.test[0]
    image = store.image(key)
    np.save(tmp_path / "img.npy", image)
    from_store = predict(trained, store, key=key)
    from_npy = predict(trained, tmp_path / "img.npy")
    assert from_npy.values["hubbard_u_ev"] == pytest.approx(from_store.values["hubbard_u_ev"], rel=1e-6)
    from PIL import Image

    Image.fromarray((image / image.max() * 255).astype(np.uint8)).save(tmp_path / "img.png")
    p = predict(trained, tmp_path / "img.png")
    assert np.isfinite(p.values["hubbard_u_ev"]) and "rescaled" in p.note
    np.save(tmp_path / "small.npy", np.ones((8, 8)))
    with pytest.raises(MoireSTMError, match="does not match"):
        predict(trained, tmp_path / "small.npy")
    bad = image.copy()
    bad[3, 4] = np.nan
    with pytest.raises(MoireSTMError, match="NaN"):
        predict(trained, bad)
    with pytest.raises(MoireSTMError, match="2-D"):
        predict(trained, np.ones((2, 32, 32)))
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(MoireSTMError, match="not an image"):
        predict(trained, tmp_path / "fake.png")
    with pytest.raises(MoireSTMError, match="not found"):
        predict(trained, tmp_path / "nothing.npy")
    with pytest.raises(MoireSTMError, match="non-negative"):
        predict(trained, -image)


# ------------------------------------------------------------------ augmentation
def test_augmentation_presets_and_symmetries(store):
    key = store.keys()[0]
    image = store.image(key)
    sample = SampleArrays(store, key)
    kx, ky = sample.get("kx_nm"), sample.get("ky_nm")
    # a 60-degree rotation of a C6-symmetric pattern changes it little; six of them give it back
    rot = image
    for _ in range(6):
        rot = k_transform(rot, symmetry_matrix(1, False), kx, ky)
    core = np.s_[4:-4, 4:-4]
    assert np.corrcoef(rot[core].ravel(), image[core].ravel())[0, 1] > 0.9
    mirrored = k_transform(image, symmetry_matrix(0, True), kx, ky)
    np.testing.assert_allclose(mirrored, image[:, ::-1], rtol=1e-4, atol=1e-6 * image.max())
    assert Augmenter("clean").is_identity
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    for name in PRESETS:
        for space in ("ft", "real"):
            out = Augmenter(name, space)(image, rng(), sample)
            assert out.shape == image.shape and np.all(np.isfinite(out)) and out.min() >= 0
            if name != "clean":
                assert not np.allclose(out, image)
            np.testing.assert_array_equal(out, Augmenter(name, space)(image, rng(), sample))
            turned = Augmenter(name, space, symmetry=True)(image, rng(), sample)
            assert turned.shape == image.shape and not np.allclose(turned, out)
    # real-space mode with no artifact returns the stored image exactly
    from moirestm.learn.augment import AugmentConfig

    same = Augmenter(AugmentConfig(noise=1e-12, space="real"))(image, rng(), sample)
    np.testing.assert_allclose(same, image, rtol=1e-5, atol=1e-8 * image.max())
    with pytest.raises(MoireSTMError, match="unknown augmentation preset"):
        Augmenter("wild")


def test_dataset_is_lazy(store):
    sp = make_split(store, "group")
    norm = Normalizer.fit([store.image(k) for k in sp.train], targets_of(store, sp.train, ["hubbard_u_ev"]),
                          ["hubbard_u_ev"], 16)
    ds = ImageDataset(store, sp.val, norm, augment=Augmenter("noisy"), seed=2)
    assert not ds._images
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and y.shape == (1,) and len(ds._images) == 1
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x)


def test_dataset_reuses_images_read_and_reads_targets_on_use(store):
    sp = make_split(store, "group")
    images = [store.image(k) for k in sp.train]
    norm = Normalizer.fit(images, targets_of(store, sp.train, ["hubbard_u_ev"]), ["hubbard_u_ev"], 16)

    class Counting:  # the store, counting image reads and hiding U
        reads = 0

        def image(self, key):
            Counting.reads += 1
            return store.image(key)

        def params(self, key):
            return {k: v for k, v in store.params(key).items() if k != "hubbard_u_ev"}

        def __getattr__(self, name):
            return getattr(store, name)

    ds = ImageDataset(Counting(), sp.train, norm, images=images)
    assert len(ds.augmented(range(len(ds)))) == len(sp.train) and Counting.reads == 0
    with pytest.raises(MoireSTMError, match="hubbard_u_ev"):
        ds.targets
    with pytest.raises(MoireSTMError, match="3 images for"):
        ImageDataset(store, sp.train, norm, images=images[:3])


def test_batched_augmentation_matches_per_image(store):
    sp = make_split(store, "group")
    norm = Normalizer.fit([store.image(k) for k in sp.train], targets_of(store, sp.train, ["hubbard_u_ev"]),
                          ["hubbard_u_ev"], None)
    ds = ImageDataset(store, sp.train, norm, augment=Augmenter("noisy", symmetry=True), seed=4)
    ds.set_epoch(3)
    idx = [5, 0, 7, 2]
    x, y = ds.batch(idx)
    single = torch.stack([ds[i][0] for i in idx])
    np.testing.assert_allclose(x.numpy(), single.numpy(), rtol=1e-5, atol=1e-5)  # draws do not depend on the batch
    assert torch.equal(y, torch.stack([ds[i][1] for i in idx]))
    clean = ImageDataset(store, sp.train, norm)
    np.testing.assert_allclose(clean.batch(idx)[0].numpy(), torch.stack([clean[i][0] for i in idx]).numpy(),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(x.numpy(), clean.batch(idx)[0].numpy())


def test_cosine_schedule_fits_the_time_budget(store_path, tmp_path):
    from moirestm.learn.train import LR_FLOOR, cosine_lr

    assert cosine_lr(1.0, 0, 10) == 1.0 and cosine_lr(1.0, 10, 10) == pytest.approx(LR_FLOOR)
    assert cosine_lr(1.0, 5, 10) == pytest.approx(0.5 * (1 + LR_FLOOR))
    run = train(store_path, model="mlp", split="group", out=tmp_path / "fit", progress=False, seed=0,
                **{**FAST, "epochs": 100000, "patience": 100000, "max_minutes": 0.05})
    assert run.best["schedule_epochs"] < 100000  # the schedule was fitted to the 3-second budget
    assert run.best["stopped"] in ("schedule fitted to the time budget", "time budget")
    if run.best["stopped"] == "schedule fitted to the time budget":  # the learning rate was annealed
        assert len(run.history) == run.best["schedule_epochs"] and run.history[-1]["lr"] < 0.1 * FAST["lr"]


# ------------------------------------------------------------------ baselines and CLI
def test_baselines_on_same_split(trained, store_path):
    result = run_baselines(store_path, split=trained.split)
    assert result["n"]["test"] == len(trained.split.test)
    u_std = float(np.std(U_VALUES))
    for name in ("pca_ridge", "pca_kernel_ridge", "kernel_ridge", "peak_ridge"):
        m = result["results"][name]["hubbard_u_ev"]
        assert np.isfinite(m["mae"]) and m["mae"] < u_std, (name, m)
    assert result["results"]["peak_ridge"]["peaks"]["n_shells"] >= 2


def test_cli_round_trip(store_path, trained, tmp_path):
    from typer.testing import CliRunner

    from moirestm.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(trained.path), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "metrics.json").exists()
    np.save(tmp_path / "x.npy", np.ones((5, 5)))
    res = runner.invoke(app, ["predict", str(trained.path), str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and "does not match" in res.output
    res = runner.invoke(app, ["train", str(store_path), "--model", "mlp", "--out", str(tmp_path / "r"),
                              "--epochs", "2", "--split", "random"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", str(store_path), "--model", "mlp", "--norm", "batch", "--out",
                              str(tmp_path / "r2"), "--epochs", "1"])
    assert res.exit_code == 2 and "bad options for model 'mlp'" in res.output  # --norm reaches the model
    res = runner.invoke(app, ["predict", str(tmp_path / "r"), str(store_path), "--json"])
    assert res.exit_code == 0 and "hubbard_u_ev_sigma" in res.output


def test_unknown_training_device_is_refused(tmp_path):
    from moirestm.learn.train import training_device

    with pytest.raises(MoireSTMError, match="device"):
        training_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MoireSTMError, match="no CUDA"):
            training_device("cuda")
    assert training_device("auto").type in ("cpu", "cuda")


def test_loss_option(store_path, tmp_path):
    with pytest.raises(MoireSTMError, match="unknown loss 'hinge'"):
        train(store_path, out=tmp_path / "bad", progress=False, loss="hinge", epochs=1)
    runs = {loss: train(store_path, model="cnn", split="group", out=tmp_path / loss, progress=False, seed=0,
                        loss=loss, **{**FAST, "epochs": 2, "min_epochs": 2}) for loss in ("mse", "l1")}
    assert Run.load(runs["l1"].path).config["loss"] == "l1"
    # same seed, data and initial weights: only the loss differs, and the recorded training loss shows it
    assert runs["l1"].history[0]["train_loss"] != pytest.approx(runs["mse"].history[0]["train_loss"], rel=1e-3)


def test_evaluate_on_corrupted_images(trained):
    clean = evaluate(trained, plots=False)
    noisy = evaluate(trained, plots=False, corrupt="noisy", seed=3)
    again = evaluate(trained, plots=False, corrupt="noisy", seed=3)
    assert noisy["part"] == "test-noisy" and noisy["corrupt"]["preset"] == "noisy"
    m_clean, m_noisy = clean["targets"]["hubbard_u_ev"], noisy["targets"]["hubbard_u_ev"]
    assert m_noisy["mae"] != pytest.approx(m_clean["mae"], rel=1e-6)  # the images were really corrupted
    assert again["targets"]["hubbard_u_ev"]["mae"] == m_noisy["mae"]  # seeded
    with pytest.raises(MoireSTMError, match="unknown augmentation preset"):
        evaluate(trained, plots=False, corrupt="fog")
