"""Stacked input channels (maps of one point at several biases): store view, augmentation, training, prediction.

Toy stores written through the Store contract: each bias channel on its own is ambiguous in U (its
image depends on |U - U_b| only), the stack of both is not.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from moirestm.errors import MoireSTMError  # noqa: E402
from moirestm.learn import Run, evaluate, predict, run_baselines, train  # noqa: E402
from moirestm.learn.augment import AugmentConfig, Augmenter, default_k_axes  # noqa: E402
from moirestm.learn.data import ImageDataset, Normalizer, StackedStore, open_store  # noqa: E402
from moirestm.learn.synthetic import toy_k_axes, toy_map  # noqa: E402

U_VALUES = tuple(np.round(np.arange(0.0, 3.01, 0.1), 3))  # 31 values
#: each bias sees U only through |U - centre|: U and 2 centre - U give the same image
CENTRES = {-0.01: 1.0, 0.01: 2.0}


def write_toy_store(path, u_values=U_VALUES, drop=()):
    """One sample per (U, bias); ``drop`` lists (U, bias) pairs left out."""
    from moirestm.dataset.store import Store, sample_key
    from moirestm.learn.augment import numpy_ft

    kx, ky = toy_k_axes(24)
    rng = np.random.default_rng(0)
    with Store.create(path, {"name": "toy-channels"}, overwrite=True) as store:
        for u in u_values:
            for bias, centre in CENTRES.items():
                if (u, bias) in drop:
                    continue
                params = {"hubbard_u_ev": float(u), "bias_ev": bias, "filling": 0.0, "synthetic_label": "toy"}
                stm, x, _ = toy_map(2 * abs(u - centre), 0.0, 48, noise=0.01, rng=rng)
                ft = numpy_ft(stm, float(x[1] - x[0]), float(x[1] - x[0]), kx, ky).astype(np.float32)
                store.write_sample(sample_key(params), params, {"ft_image": ft, "kx_nm": kx, "ky_nm": ky})
    return Store.open(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_store(tmp_path_factory.mktemp("channels") / "toy.h5", drop={(0.5, 0.01)})


def test_stacked_store_groups_channels(toy):
    view = StackedStore(toy, "bias_ev")
    assert view.values == [-0.01, 0.01]
    assert len(view.keys()) == len(U_VALUES) - 1  # U = 0.5 misses one bias and is left out
    key = view.keys()[3]
    members = view.members(key)
    image = view.image(key)
    assert image.shape == (2, 24, 24)
    for c, member in enumerate(members):  # channel order = ascending bias
        assert toy.params(member)["bias_ev"] == view.values[c]
        np.testing.assert_array_equal(image[c], toy.image(member))
    assert view.params(key)["bias_ev"] == [-0.01, 0.01]
    assert view.stacked_key(members[1]) == key and view.stacked_key(key) == key
    assert view.arrays(key, ["kx_nm"])["kx_nm"].shape == (24,)
    assert open_store(toy, {"bias_ev": [-0.01, 0.01]}).keys() == view.keys()
    assert open_store(view, "bias_ev") is view and open_store(view, view.channels) is view  # not stacked twice
    with pytest.raises(MoireSTMError, match="stacks"):
        open_store(view, "filling")


def test_stacked_store_bad_input(toy):
    with pytest.raises(MoireSTMError, match="no such parameter"):
        StackedStore(toy, "dielectric")
    with pytest.raises(MoireSTMError, match="must be numbers"):
        StackedStore(toy, "synthetic_label")
    with pytest.raises(MoireSTMError, match="at least 2"):
        StackedStore(toy, "filling")
    with pytest.raises(MoireSTMError, match="not part of a stacked sample"):
        StackedStore(toy, "bias_ev").stacked_key("nope")
    with pytest.raises(MoireSTMError, match="no sample of the store has all"):
        StackedStore(toy, "bias_ev", values=[-0.01, 0.02])


def test_stacking_resolves_single_channel_ambiguity(toy):
    """Physics of the option: each channel alone confuses U with its mirror about U_b; both together do not."""
    single = run_baselines(toy, "group", seed=0, which=("kernel_ridge",), input_size=None)
    stacked = run_baselines(toy, "group", seed=0, which=("kernel_ridge",), input_size=None, channels="bias_ev")
    mae_single = single["results"]["kernel_ridge"]["hubbard_u_ev"]["mae"]
    mae_stacked = stacked["results"]["kernel_ridge"]["hubbard_u_ev"]["mae"]
    assert stacked["n"]["test"] < single["n"]["test"]  # one input per U, not per (U, bias)
    assert mae_stacked < 0.15 and mae_single > 4 * mae_stacked, (mae_single, mae_stacked)  # U std: 0.9 eV


def test_stacked_augmentation_shares_geometry_not_noise():
    kx, ky = default_k_axes((32, 32))
    rng_img = np.random.default_rng(1)
    image = torch.from_numpy(rng_img.uniform(0.5, 1.5, (32, 32)).astype(np.float32))
    stack = torch.stack([image, image])[None]  # (1, 2, 32, 32), identical channels
    strain = Augmenter(AugmentConfig(gain=0.1, offset=0.05, blur_nm=0.04, anisotropy=0.6, strain=0.02))  # no noise
    out = strain.batch(stack, [np.random.default_rng(7)], kx, ky)
    assert out.shape == (1, 2, 32, 32)
    np.testing.assert_allclose(out[0, 0].numpy(), out[0, 1].numpy())
    single = strain.batch(image[None], [np.random.default_rng(7)], kx, ky)  # (B, H, W) path, same draws
    np.testing.assert_allclose(single[0].numpy(), out[0, 0].numpy(), rtol=1e-6, atol=1e-6)
    noisy = Augmenter("noisy").batch(stack, [np.random.default_rng(7)], kx, ky)
    assert not np.allclose(noisy[0, 0].numpy(), noisy[0, 1].numpy())


def test_train_predict_evaluate_with_channels(toy, tmp_path):
    run = train(toy, model="cnn", split="group", out=tmp_path / "run", progress=False, channels="bias_ev",
                epochs=3, min_epochs=1, batch_size=8, augment="noisy")
    assert run.model_config["in_channels"] == 2
    assert run.normalizer.channels == {"bias_ev": [-0.01, 0.01]}
    loaded = Run.load(tmp_path / "run")
    assert loaded.normalizer.channels == run.normalizer.channels
    result = evaluate(loaded, plots=False)
    assert result["n"] == len(run.split.test) and result["targets"]["hubbard_u_ev"]["n"] == len(run.split.test)
    view = StackedStore(toy, "bias_ev")
    key = run.split.test[0]
    by_array = predict(loaded, view.image(key))
    by_member = predict(loaded, toy, key=view.members(key)[0])  # a member key names its stack
    assert by_member.source == key
    assert by_array.values["hubbard_u_ev"] == pytest.approx(by_member.values["hubbard_u_ev"], abs=1e-5)
    with pytest.raises(MoireSTMError, match=r"2 stacked FT-LDOS images.*bias_ev"):
        predict(loaded, toy.image(view.members(key)[0]))
    ds = ImageDataset(view, run.split.train[:4], run.normalizer)
    assert ds.batch(range(4))[0].shape == (4, 2, *run.normalizer.input_shape)


def test_channels_bad_options(toy, tmp_path):
    with pytest.raises(MoireSTMError, match="cannot stack the target"):
        train(toy, out=tmp_path / "a", channels="hubbard_u_ev", progress=False)
    with pytest.raises(MoireSTMError, match="FT-space augmentation"):
        train(toy, out=tmp_path / "b", channels="bias_ev", augment="noisy", augment_space="real", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(MoireSTMError, match="do not match the channels"):
        Normalizer.fit([toy.image(k) for k in toy.keys()[:3]], np.zeros((3, 1)), ["hubbard_u_ev"], None,
                       channels={"bias_ev": [-0.01, 0.01]})


def test_cli_channels(toy, tmp_path):
    from typer.testing import CliRunner

    from moirestm.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", str(toy.path), "--model", "mlp", "--channels", "bias_ev", "--out",
                              str(tmp_path / "r"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    view = StackedStore(toy, "bias_ev")
    np.save(tmp_path / "stack.npy", view.image(view.keys()[0]))
    res = runner.invoke(app, ["predict", str(tmp_path / "r"), str(tmp_path / "stack.npy"), "--json"])
    assert res.exit_code == 0 and "hubbard_u_ev_sigma" in res.output, res.output
    np.save(tmp_path / "single.npy", toy.image(toy.keys()[0]))
    res = runner.invoke(app, ["predict", str(tmp_path / "r"), str(tmp_path / "single.npy")])
    assert res.exit_code == 2 and "stacked FT-LDOS images" in res.output
    res = runner.invoke(app, ["baselines", str(toy.path), "--run", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0 and '"kernel_ridge"' in res.output, res.output
