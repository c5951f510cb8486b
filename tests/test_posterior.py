"""Posterior estimation on a problem whose true posterior is known, OOD flags, save/load, bad inputs."""

import json

import numpy as np
import pytest
import torch

from moirestm.errors import MoireSTMError
from moirestm.learn.posterior import (PosteriorRun, conformal_quantile, draw_split, infer, predict_posterior,
                                      predict_source)

SIZE = 32
#: noise of one block mean: the true posterior of each parameter is N(2 (m - 1), (2 S)^2) truncated to [-1, 1]
S = 0.05
N_DRAWS = 1000


class MemoryStore:
    """Store-like object: two blocks of the image carry 1 + theta/2 + noise (mean noise S)."""

    def __init__(self, n_draws, seed, priors=True):
        rng = np.random.default_rng(seed)
        self.theta = rng.uniform(-1, 1, (n_draws, 2))
        self.sweep_params = {"name": "gauss-test", "index": 5, "n_draws": n_draws, "prior_seed": seed,
                             **({"priors": {"dielectric": {"dist": "uniform", "low": -1.0, "high": 1.0}}}
                                if priors else {})}
        npix = 8 * 8
        self.images = []
        for t in self.theta:
            im = np.full((SIZE, SIZE), 1.0, np.float32)
            for j, (r, c) in enumerate(((4, 4), (20, 20))):
                block = 1 + t[j] / 2 + rng.normal(0, S * np.sqrt(npix), (8, 8))
                im[r:r + 8, c:c + 8] = np.abs(block)
            self.images.append(im)
        self._keys = [f"s{i:05d}" for i in range(n_draws)]

    def keys(self, status="ok"):
        return list(self._keys)

    def params(self, key):
        i = int(key[1:])
        return {"draw_id": i, "hubbard_u_ev": float(self.theta[i, 0]), "dielectric": float(self.theta[i, 1])}

    def image(self, key):
        return self.images[int(key[1:])]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one torch thread avoids thread thrashing on busy shared cores (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["mlp", "kernel"])
def trained(request, one_thread, tmp_path_factory):
    """A two-flow run on the known-posterior store: flows with their own MLP embeddings, or on the shared
    cross-fitted kernel summaries (the default)."""
    store = MemoryStore(N_DRAWS, 0)
    out = tmp_path_factory.mktemp("post") / "run"
    run = infer(store, out, point=False, progress=False, epochs=40, patience=6, embedding=request.param,
                embedding_dim=8, input_size=8, hidden_features=32, num_transforms=2, n_samples=200, lr=2e-3,
                batch_size=64, ensemble=2)
    return store, run, out


def test_log_uniform_prior_is_uniform_in_box_coordinates():
    """A log-uniform prior is inferred in log space: its draws fill the box [-1, 1] uniformly (KS test),
    and decoding inverts encoding; a uniform prior stays linear."""
    from scipy.stats import kstest

    from moirestm.learn.posterior import Theta

    rng = np.random.default_rng(3)
    temperature = np.exp(rng.uniform(np.log(0.4), np.log(10.0), 4000))
    u = rng.uniform(0, 6, 4000)
    theta = Theta(["hubbard_u_ev", "temperature_k"], np.array([0.0, 0.4]), np.array([6.0, 10.0]), {},
                  np.array([False, True]))
    z = theta.encode(np.column_stack([u, temperature]))
    assert np.all(np.abs(z) <= 1 + 1e-6)
    assert kstest(z[:, 1], "uniform", args=(-1, 2)).pvalue > 1e-3
    assert kstest(z[:, 0], "uniform", args=(-1, 2)).pvalue > 1e-3
    np.testing.assert_allclose(theta.decode(z), np.column_stack([u, temperature]), rtol=1e-5, atol=1e-6)
    assert Theta.from_dict(theta.to_dict()).log.tolist() == [False, True]


def test_draw_split_leaks_no_draw(trained):
    store, run, _ = trained
    ids = {part: {store.params(k)["draw_id"] for k in run.split.keys(part)} for part in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert run.split.kind == "draw"


def test_coverage_matches_the_known_posterior(trained):
    """On 105 test draws the 90 % coverage has binomial sd 0.03; the band 0.78-0.99 allows 4 sd
    below (finite training adds bias) and 3 sd above.  The posterior sd of untruncated cases
    must match the exact 2 S = 0.1 within 50 % (an uncalibrated or prior-like flow is 3-6x off)."""
    from moirestm.learn.calibration import calibration_metrics

    store, run, _ = trained
    m = calibration_metrics(run, store, run.split.test, n_samples=300, seed=1)
    for name in ("hubbard_u_ev", "dielectric"):
        assert 0.78 <= m["parameters"][name]["coverage"]["0.9"] <= 0.99, m["parameters"][name]
        assert m["parameters"][name]["sbc_ks_p"] > 1e-3
    images = [store.image(k) for k in run.split.test[:40]]
    truth = np.array([[store.params(k)["hubbard_u_ev"], store.params(k)["dielectric"]] for k in run.split.test[:40]])
    samples, _ = run.samples(images, 300)
    inner = np.all(np.abs(truth) < 0.6, axis=1)
    sd = samples[inner].std(axis=1)
    assert abs(np.median(sd) / (2 * S) - 1) < 0.5, np.median(sd)
    assert np.mean(np.abs(np.median(samples, axis=1) - truth)) < 0.15


def test_ood_flags_blank_and_saturated(trained):
    store, run, _ = trained
    image = store.image(run.split.test[0])
    assert not predict_posterior(run, image)["ood"] or run.ood["false_alarm"] > 0
    assert predict_posterior(run, np.zeros_like(image))["ood"]
    assert predict_posterior(run, np.full_like(image, image.max()))["ood"]
    val = [predict_posterior(run, store.image(k), n_samples=50)["ood"] for k in run.split.val[:60]]
    assert np.mean(val) <= 0.15


def test_ood_flags_a_pattern_the_family_never_makes(trained):
    """A third bright block (no training image has one) is flagged on nearly every test image; the
    same images without it are flagged at about the false-alarm rate."""
    store, run, _ = trained
    keys = run.split.test[:40]
    clean = [store.image(k) for k in keys]
    spotted = [im.copy() for im in clean]
    for im in spotted:
        im[24:32, 0:8] += 0.5
    _, clean_scores = run.samples(clean, 100)
    _, spotted_scores = run.samples(spotted, 100)
    assert np.mean(spotted_scores > run.ood["threshold"]) >= 0.9
    assert np.mean(clean_scores > run.ood["threshold"]) <= 0.15


def test_ood_reads_a_parameter_beyond_its_prior(trained):
    """Block 0 at theta = 1.8 (prior [-1, 1]): the flow can only put it at the box edge, the linear
    box reading extrapolates to about 1.8 and the image is flagged; in-family images read near their truth."""
    from moirestm.learn.data import batch_inputs
    from moirestm.learn.posterior import _box_reading, _pca_coords

    store, run, _ = trained
    keys = run.split.test[:40]
    beyond = [store.image(k).copy() for k in keys]
    for im in beyond:
        im[4:12, 4:12] += 1.9 - im[4:12, 4:12].mean()
    x = lambda images: batch_inputs(run.normalizer, images).reshape(len(images), -1).numpy()
    reading = _box_reading(run.ood, _pca_coords(run.ood, x(beyond))[0])[:, 0]
    assert 1.4 < np.median(reading) < 2.2
    truth = run.theta.encode(np.array([[store.params(k)[n] for n in run.names] for k in keys]))[:, 0]
    clean = _box_reading(run.ood, _pca_coords(run.ood, x([store.image(k) for k in keys]))[0])[:, 0]
    assert np.median(np.abs(clean - truth)) < 0.15
    _, scores = run.samples(beyond, 100)
    assert np.mean(scores > run.ood["threshold"]) >= 0.9


def test_ood_detection_checks_u_on_the_images_it_does_not_flag(trained):
    """Fresh draws of the training family passed as an 'other' store: flagged at about the false-alarm
    rate, and the U posterior of the unflagged ones covers the truth as calibrated (binomial sd 0.02)."""
    from moirestm.learn.ood import ood_detection

    store, run, _ = trained
    fresh = ood_detection(run, store, artefacts=(), others={"fresh": MemoryStore(200, 7)})["sets"]["fresh"]
    assert fresh["n"] == 200 and fresh["flagged"] <= 0.15
    assert 0.78 <= fresh["unflagged_u_coverage_90"] <= 0.99 and fresh["unflagged_u_mae_ev"] < 0.15


def test_prediction_keys_and_round_trip(trained, tmp_path):
    store, run, out = trained
    image = store.image(run.split.test[1])
    a = predict_posterior(run, image, seed=3)
    assert set(a) == {"hubbard_u_ev", "dielectric", "ood_score", "ood"}
    assert set(a["hubbard_u_ev"]) == {"median", "mean", "q025", "q16", "q84", "q975"}
    u = a["hubbard_u_ev"]
    assert u["q025"] <= u["q16"] <= u["median"] <= u["q84"] <= u["q975"]
    loaded = PosteriorRun.load(out)
    b = predict_posterior(loaded, image, seed=3)
    assert a == b
    assert loaded.family["priors"] == store.sweep_params["priors"] and loaded.split.test == run.split.test
    np.save(tmp_path / "im.npy", image)
    assert predict_source(out, tmp_path / "im.npy", seed=3)[0]["hubbard_u_ev"] == a["hubbard_u_ev"]
    assert json.loads((out / "posterior.json").read_text())["kind"] == "posterior"


def test_bad_inputs(trained, tmp_path):
    store, run, out = trained
    image = store.image(run.split.test[0])
    bad = image.copy()
    bad[0, 0] = np.nan
    with pytest.raises(MoireSTMError, match="NaN"):
        predict_posterior(run, bad)
    with pytest.raises(MoireSTMError, match="shape"):
        predict_posterior(run, image[:16])
    with pytest.raises(MoireSTMError, match="shape"):
        predict_posterior(run, np.stack([image, image]))
    with pytest.raises(MoireSTMError, match="no priors"):
        infer(MemoryStore(20, 1, priors=False), tmp_path / "x", point=False, progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(MoireSTMError, match="unknown posterior options"):
        infer(store, tmp_path / "y", bogus=1)
    with pytest.raises(MoireSTMError, match="already holds"):
        infer(store, out, point=False, progress=False)
    with pytest.raises(MoireSTMError, match="balance must be non-negative"):
        infer(store, tmp_path / "b", point=False, progress=False, balance=-1.0)
    with pytest.raises(MoireSTMError, match="ensemble must be"):
        infer(store, tmp_path / "e", point=False, progress=False, ensemble=0)
    with pytest.raises(MoireSTMError, match="flow_scale must be"):
        infer(store, tmp_path / "s", point=False, progress=False, flow_scale=0.0)
    (tmp_path / "z").mkdir()
    torch.save({"format": "other"}, tmp_path / "z" / "posterior.pt")
    with pytest.raises(MoireSTMError, match="does not hold a moirestm posterior run"):
        PosteriorRun.load(tmp_path / "z")
    with pytest.raises(MoireSTMError, match="no posterior run"):
        PosteriorRun.load(tmp_path)
    with pytest.raises(MoireSTMError, match="embedding must be one of"):
        infer(store, tmp_path / "k", point=False, progress=False, embedding="pca")
    if run.summariser is not None:  # a kernel run whose kernel is missing or does not fit its flows
        state = torch.load(out / "posterior.pt", weights_only=False)
        for broken, message in ((None, "holds no kernel"), ({**state["summariser"], "x_train":
                                                            state["summariser"]["x_train"][:, :10]}, "input values")):
            (tmp_path / "kr").mkdir(exist_ok=True)
            torch.save({**state, "summariser": broken}, tmp_path / "kr" / "posterior.pt")
            with pytest.raises(MoireSTMError, match=message):
                PosteriorRun.load(tmp_path / "kr")


def test_other_family_store_is_refused_or_warned(trained):
    from moirestm.learn.calibration import check_family

    store, run, _ = trained
    other = MemoryStore(10, 2)
    other.sweep_params["index"] = 9
    assert any("twist index" in w for w in check_family(run, other))
    other.params = lambda key: {"draw_id": 0, "hubbard_u_ev": 0.0}
    with pytest.raises(MoireSTMError, match="not of the run's family"):
        check_family(run, other)


def test_balance_penalty_is_the_squared_classifier_imbalance():
    """sigmoid(log q - log p) = a on joint pairs and b on marginal pairs gives (a + b - 1)^2 (box prior 2^-d)."""
    from moirestm.learn.posterior import _balance_penalty

    d, a, b = 3, 0.7, 0.1
    log_prior = -d * np.log(2.0)
    logit = lambda v: float(np.log(v / (1 - v)))
    joint = torch.full((5,), log_prior + logit(a), dtype=torch.float64)
    marginal = torch.full((5,), log_prior + logit(b), dtype=torch.float64)
    assert float(_balance_penalty(joint, marginal, d)) == pytest.approx((a + b - 1) ** 2, rel=1e-9)
    assert float(_balance_penalty(joint, marginal + logit(1 - a) - logit(b), d)) == pytest.approx(0.0, abs=1e-12)


def test_balanced_npe_trains_and_keeps_its_setting(tmp_path):
    store = MemoryStore(120, 3)
    run = infer(store, tmp_path / "bal", point=False, progress=False, balance=100.0, epochs=2, embedding="mlp",
                embedding_dim=4, input_size=8, hidden_features=16, num_transforms=1, n_samples=50)
    assert np.isfinite(run.history[-1]["train_nll"])
    assert PosteriorRun.load(tmp_path / "bal").config["balance"] == 100.0


def test_conformal_quantile_and_draw_split_without_draws():
    assert conformal_quantile(np.arange(1, 10), 0.5) == 5  # ceil(10 * 0.5) = 5th smallest
    assert conformal_quantile(np.arange(1, 10), 0.95) == np.inf
    store = MemoryStore(20, 3)
    store.params = lambda key: {"hubbard_u_ev": 0.0}
    with pytest.raises(MoireSTMError, match="draw_id"):
        draw_split(store)


def test_attribution_explains_the_posterior_mean(trained):
    from moirestm.explain.attribution import attribution_maps
    from moirestm.explain.posterior_attribution import PosteriorMean
    from moirestm.learn.data import batch_inputs

    store, run, _ = trained
    image = store.image(run.split.test[2])
    model = PosteriorMean(run, n_samples=512).eval()
    x = batch_inputs(run.normalizer, [image])
    with torch.no_grad():
        mean = float(model(x)[0, 0])
    sampled = predict_posterior(run, image, n_samples=2000)["hubbard_u_ev"]["mean"]
    assert abs(mean - sampled) < 0.03  # Monte-Carlo error: sd ~0.1 / sqrt(512) and / sqrt(2000)
    maps = attribution_maps(model, x, 0, methods=("integrated_gradients",), n_steps=8)
    ig = maps["integrated_gradients"][0]
    assert ig.shape == tuple(x.shape[-2:]) and np.all(np.isfinite(ig)) and np.abs(ig).sum() > 0


def test_cli_predict_and_evaluate_dispatch_on_a_posterior_run(trained, tmp_path):
    from typer.testing import CliRunner

    from moirestm.cli import app

    store, run, out = trained
    np.save(tmp_path / "im.npy", store.image(run.split.test[0]))
    res = CliRunner().invoke(app, ["predict", str(out), str(tmp_path / "im.npy"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["hubbard_u_ev"]) == {"median", "mean", "q025", "q16", "q84", "q975"} and "ood" in data
    res = CliRunner().invoke(app, ["evaluate", str(out), "--json"])
    assert res.exit_code == 2 and "pass --data STORE" in res.output


def test_measured_map_through_a_posterior_run_flags_another_twist(trained, tmp_path):
    """A measured real-space map is calibrated to the run's frame; a 3.48 deg map against the run's
    i = 5 (6.01 deg) family is flagged as a twist mismatch, a 6.01 deg one is not."""
    from typer.testing import CliRunner

    from moirestm.cli import app
    from moirestm.lattice import twist_angle_deg
    from moirestm.learn.measured import predict_measured_posterior
    from moirestm.measured.synthetic import synthetic_stm_map

    _, _, out = trained
    for index, mismatch in ((9, True), (5, False)):
        np.save(tmp_path / f"map{index}.npy", synthetic_stm_map(twist_angle_deg(index), n_px=256, pixel_nm=0.065,
                                                                seed=1, noise=0.05))
        r = predict_measured_posterior(out, tmp_path / f"map{index}.npy", pixel_nm=0.065)
        u = r["hubbard_u_ev"]
        assert u["q025"] <= u["q16"] <= u["median"] <= u["q84"] <= u["q975"] and isinstance(r["ood"], bool)
        assert r["twist"]["mismatch"] is mismatch
        assert any("twist" in w for w in r["warnings"]) is mismatch
    res = CliRunner().invoke(app, ["predict", str(out), str(tmp_path / "map9.npy"), "--pixel-nm", "0.065", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"hubbard_u_ev", "ood_score", "ood", "calibration", "twist", "warnings"} <= set(data)


def test_posterior_report_page_on_a_toy_store(tmp_path):
    """The report's posterior section (coverage table, identifiability, out-of-family detection, example
    posteriors) is built from a run on a real store; a second write refuses to replace a user's file."""
    from moirestm.explain.posterior_report import build_posterior_report
    from moirestm.learn.toy_priors import make_toy_prior_store

    store = tmp_path / "toy.h5"
    make_toy_prior_store(store, n_draws=32, size=16, seed=0)
    run = infer(store, tmp_path / "run", point=False, progress=False, epochs=3, embedding="mlp", embedding_dim=8,
                input_size=8, hidden_features=16, num_transforms=1, n_samples=100, batch_size=32)
    page = build_posterior_report(run, tmp_path / "posterior.html")
    text = page.read_text()
    for words in ("Posterior over U and the unknowns", "SBC KS p", "Identifiability", "Out-of-family detection",
                  "Example posteriors"):
        assert words in text
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(MoireSTMError, match="refusing to overwrite"):
        build_posterior_report(run, notes)
    assert notes.read_text() == "mine"


def test_solve_groups_number_the_images_of_one_solve():
    """Images differing only in image_id, bias and broadening come from one solve; another U or draw is
    another solve (the rank test treats a solve's images as one sample)."""
    from moirestm.learn.calibration import solve_groups

    class Params:
        rows = {"a": {"draw_id": 0, "hubbard_u_ev": 1.0, "image_id": 0, "bias_ev": 0.01, "broadening_ev": 0.01},
                "b": {"draw_id": 0, "hubbard_u_ev": 1.0, "image_id": 1, "bias_ev": -0.01, "broadening_ev": 0.02},
                "c": {"draw_id": 0, "hubbard_u_ev": 3.0, "image_id": 0, "bias_ev": 0.01, "broadening_ev": 0.01},
                "d": {"draw_id": 1, "hubbard_u_ev": 1.0, "image_id": 0, "bias_ev": 0.01, "broadening_ev": 0.01}}

        def params(self, key):
            return dict(self.rows[key])

    assert solve_groups(Params(), ["a", "b", "c", "d", "b"]).tolist() == [0, 0, 1, 2, 0]


def _clustered_sbc_rejections(width_factor: float, reps: int, n_solves: int, seed: int) -> tuple[float, float]:
    """Rejection rates at the 5 % level of the solve-aware and the pooled KS test, for the exact Gaussian
    posterior (times ``width_factor``) of 16 images per solve that share theta and most of their noise."""
    from scipy.stats import kstest, uniform

    from moirestm.learn.calibration import sbc_ks_p_by_solve

    rng = np.random.default_rng(seed)
    shared_sd, own_sd, n_post = 0.5, 0.05, 200
    noise_var = shared_sd**2 + own_sd**2
    groups = np.repeat(np.arange(n_solves), 16)
    by_solve = pooled = 0
    for _ in range(reps):
        theta, shared = rng.normal(size=n_solves), rng.normal(0, shared_sd, n_solves)
        x = (theta + shared)[groups] + rng.normal(0, own_sd, len(groups))
        post_sd = np.sqrt(noise_var / (1 + noise_var)) * width_factor
        samples = (x / (1 + noise_var))[:, None] + post_sd * rng.normal(size=(len(x), n_post))
        ranks = (samples < theta[groups][:, None]).sum(axis=1).astype(float)[:, None]
        by_solve += sbc_ks_p_by_solve(ranks, groups, n_post)[0] < 0.05
        pooled += kstest(ranks[:, 0], uniform(loc=0, scale=n_post).cdf)[1] < 0.05
    return by_solve / reps, pooled / reps


def test_solve_aware_sbc_holds_its_level_where_the_pooled_test_does_not():
    """Exact posteriors, 13 solves of 16 correlated images: the pooled KS test rejects nearly always (it was
    0.97 at the 5 % level), the solve-aware one at its level (binomial sd 0.022 over 100 repetitions);
    a posterior half as wide as it should be is rejected on 40 solves."""
    by_solve, pooled = _clustered_sbc_rejections(1.0, reps=100, n_solves=13, seed=3)
    assert by_solve <= 0.12 and pooled >= 0.5, (by_solve, pooled)
    assert _clustered_sbc_rejections(0.5, reps=30, n_solves=40, seed=4)[0] >= 0.6


def test_cauchy_combination_of_identical_p_values_is_that_p_value():
    from moirestm.learn.calibration import cauchy_combination

    p = np.array([0.003, 0.2, 0.5, 0.9])
    assert np.allclose(cauchy_combination(np.tile(p, (5, 1))), p)


def test_infer_with_an_artefact_preset(tmp_path):
    """A run trained on an artefact preset evaluates its held-out draws with that preset (the same draw
    on every call), leaves it out of the out-of-family artefact sets, and refuses an unknown preset."""
    from moirestm.learn.calibration import calibration_metrics
    from moirestm.learn.ood import ood_detection
    from moirestm.learn.toy_priors import make_toy_prior_store

    store = make_toy_prior_store(tmp_path / "toy.h5", n_draws=24, size=32, seed=0)
    with pytest.raises(MoireSTMError, match="unknown augmentation preset 'scratchy'"):
        infer(store, tmp_path / "bad", point=False, progress=False, augment="scratchy")
    assert not (tmp_path / "bad").exists()
    run = infer(store, tmp_path / "run", point=False, progress=False, augment="noisy", epochs=3, embedding="mlp",
                embedding_dim=4, input_size=8, hidden_features=16, num_transforms=1, n_samples=50)
    keys = run.split.test[:6]
    first, again = run.held_out_images(store, keys), run.held_out_images(store, keys)
    raw = [store.image(k) for k in keys]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.allclose(a, r) for a, r in zip(first, raw))
    reloaded = PosteriorRun.load(tmp_path / "run")
    assert reloaded.config["augment"] == "noisy"
    assert calibration_metrics(reloaded, store, keys, n_samples=50, with_sbc=False)["n"] == len(keys)
    sets = ood_detection(reloaded, store)["sets"]
    assert "artefact:symb" in sets and "artefact:noisy" not in sets
    symb = sets["artefact:symb"]  # U is known for the altered test images: the misses are checked too
    assert "unflagged_u_coverage_90" in symb
    changes = [symb[k] for k in ("change_flagged_median", "change_unflagged_median") if symb[k] is not None]
    assert changes and all(c > 0 for c in changes)  # every symb draw alters the normalised input


def _first_member(run):
    """A copy of ``run`` holding only its first ensemble member (network-embedding statistics cut to that
    member's; shared kernel summaries are the same for one member)."""
    dim = run.estimator_config["embedding_dim"]
    ood = run.ood
    if run.summariser is None:
        covariance = np.linalg.inv(run.ood["emb_precision"])[:dim, :dim]
        ood = {**run.ood, "emb_mean": run.ood["emb_mean"][:dim], "emb_precision": np.linalg.inv(covariance)}
    return PosteriorRun(None, run.estimators[:1], run.estimator_config, run.normalizer, run.theta, run.split,
                        run.config, ood, run.store, run.version, run.history, run.summary, run.family,
                        run.summariser)


def test_ensemble_posterior_is_the_mixture_of_its_members_truncated_to_the_box(trained):
    """The two members differ (different initialisations); the ensemble's samples have the mean and variance
    of the equal-weight mixture restricted to the box, in which each member weighs its mass inside."""
    store, run, _ = trained
    assert run.n_members == 2 and len(run.summary["best"]["members"]) == 2
    from moirestm.learn.data import batch_inputs
    from moirestm.learn.posterior import _flow

    x = batch_inputs(run.normalizer, [store.image(k) for k in run.split.test[:20]])
    both = run.sample_z(x, 2000, seed=5)[..., 0]
    inputs = x if run.summariser is None else run.summariser(x)
    weights, means, squares = [], [], []
    with torch.inference_mode():
        for flow in [_flow(e) for e in run.estimators]:
            z = flow._transform.inverse(torch.randn(len(x) * 8000, len(run.names)),
                                        context=flow._embedding_net(inputs).repeat_interleave(8000, 0))[0]
            z = z.reshape(len(x), 8000, -1).numpy()
            inside = np.all(np.abs(z) <= 1, axis=-1)
            u = np.where(inside, z[..., 0], 0.0)
            weights.append(inside.mean(axis=1))
            means.append(u.sum(axis=1) / inside.sum(axis=1))
            squares.append((u ** 2).sum(axis=1) / inside.sum(axis=1))
    weights, means, squares = map(np.array, (weights, means, squares))
    assert np.max(np.abs(means[0] - means[1])) > 1e-3  # the members are not copies
    w = weights / weights.sum(axis=0)
    mixture_mean = (w * means).sum(axis=0)
    np.testing.assert_allclose(both.mean(axis=1), mixture_mean, atol=0.02)  # MC sd ~0.1 / sqrt(2000)
    mixture_var = (w * squares).sum(axis=0) - mixture_mean ** 2
    assert abs(np.median(both.var(axis=1) / mixture_var) - 1) < 0.1  # per image: MC sd of a variance ~0.05
    assert run.sample_z(x[:3], 1).shape == (3, 1, len(run.names))  # fewer samples than members


def test_truncated_mixture_gives_a_member_that_leaves_the_box_no_weight():
    """Two members: one inside the box, one that puts 99.9 % of its mass beyond it.  The mixture restricted to
    the box takes almost all samples from the first (each member weighs its in-box mass, 1 : 0.001); the second
    member's leak costs a bounded number of rounds, and an image whose members all leave is clamped."""
    from moirestm.learn.posterior import _sample_in_box

    passes = []

    def inverse(noise, context):  # member m: N(context[m], 0.1^2) per coordinate
        passes.append(noise.shape[1])
        return context[..., :2] + 0.1 * noise

    contexts = torch.tensor([[[0.0, 0.0]], [[1.31, 0.0]]]).repeat(1, 3, 1)  # 1.31 = 3.1 sd beyond the face
    samples = _sample_in_box(inverse, contexts, 1000, 2)
    assert samples.shape == (3, 1000, 2) and np.abs(samples).max() <= 1
    from_second = np.mean(samples[..., 0] > 0.6)  # the first member puts 6e-10 there
    assert from_second < 0.01, from_second
    assert len(passes) <= 2
    gone = _sample_in_box(inverse, torch.full((2, 1, 2), 5.0), 100, 2)
    assert len(passes) == 2 + 6 and np.all(gone == 1.0)


def test_a_version_3_run_loads_as_an_ensemble_of_one(trained, tmp_path):
    """Runs written before ensembles (format 3: one ``state_dict``) still load and predict."""
    store, run, out = trained
    if run.summariser is not None:
        pytest.skip("format 3 predates kernel summaries: only network-embedding runs were written in it")
    state = torch.load(out / "posterior.pt", weights_only=False)
    state["format_version"], state["state_dict"] = 3, state.pop("state_dicts")[0]
    (tmp_path / "v3").mkdir()
    first = _first_member(run)
    state["ood"] = first.state()["ood"]
    torch.save(state, tmp_path / "v3" / "posterior.pt")
    old = PosteriorRun.load(tmp_path / "v3")
    image = store.image(run.split.test[0])
    assert old.n_members == 1
    assert predict_posterior(old, image, seed=2) == predict_posterior(first, image, seed=2)


def test_kernel_summaries_refuse_too_few_draws_or_too_many_images(tmp_path, monkeypatch):
    """The kernel summaries are cross-fitted over training draws and fit an n x n kernel: one-line errors."""
    from moirestm.learn import kernel

    store = MemoryStore(40, 4)
    monkeypatch.setattr(kernel, "KERNEL_MAX_TRAIN", 10)
    with pytest.raises(MoireSTMError, match="KERNEL_MAX_TRAIN = 10; use embedding 'cnn'"):
        infer(store, tmp_path / "big", point=False, progress=False, epochs=1, input_size=8)
    assert not (tmp_path / "big").exists()
    monkeypatch.undo()
    with pytest.raises(MoireSTMError, match="at least 2 draws"):  # 3 draws: one each for train, val, test
        infer(MemoryStore(3, 4), tmp_path / "few", point=False, progress=False, epochs=1, input_size=8)
    no_ids = MemoryStore(40, 4)
    split = draw_split(no_ids)  # a user's split of a store whose samples do not record their draw
    no_ids.params = lambda key: {k: v for k, v in MemoryStore.params(no_ids, key).items() if k != "draw_id"}
    with pytest.raises(MoireSTMError, match="has no draw_id: embedding 'kernel' cross-fits over draws"):
        infer(no_ids, tmp_path / "no-ids", split=split, point=False, progress=False, epochs=1, input_size=8)


def test_conformal_threshold_holds_its_false_alarm_rate():
    """A new score exchangeable with n = 50 validation scores exceeds the split-conformal 95 % quantile with
    probability (n + 1 - 49) / (n + 1) = 0.039 exactly; 4000 repetitions (sd 0.003).  Too few scores: inf, or
    the largest score where a threshold must flag the extremes."""
    from moirestm.learn.posterior import conformal_quantile

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4000, 51))
    rate = np.mean([s[50] > conformal_quantile(s[:50], 0.95) for s in scores])
    assert 0.029 <= rate <= 0.05, rate
    assert conformal_quantile(np.arange(10.0), 0.95) == np.inf
    assert conformal_quantile(np.arange(10.0), 0.95, at_most_max=True) == 9.0


def test_stacked_spline_flows_sample_as_each_member_does(trained):
    """The ensemble's batched sampling pass equals every member's own nflows pass on the same noise, inside
    the spline interval and in its linear tails (|noise| > 3); a MAF ensemble is not stacked."""
    from moirestm.learn.posterior import _flow, build_estimator
    from moirestm.learn.stacked_flows import StackedSplineFlows

    _, run, _ = trained
    flows = [_flow(e) for e in run.estimators]
    stacked = StackedSplineFlows.from_flows(flows)
    gen = torch.Generator().manual_seed(0)
    noise = 1.8 * torch.randn(len(flows), 400, len(run.names), generator=gen)
    context = torch.randn(len(flows), 400, flows[0]._transform._transforms[0].transform_net.context_features,
                          generator=gen)
    with torch.inference_mode():
        own = torch.stack([f._transform.inverse(n, context=c)[0] for f, n, c in zip(flows, noise, context)])
    assert (noise.abs() > 3).any()
    torch.testing.assert_close(stacked.inverse(noise, context), own, atol=1e-4, rtol=1e-4)
    assert StackedSplineFlows.from_flows([_flow(build_estimator({**run.estimator_config, "flow": "maf"}))]) is None


def test_cluster_robust_coverage_error_counts_solves_not_images():
    """16 identical images per solve carry one solve's information: the error of the coverage is the binomial
    one of the 100 solves, sqrt(c (1 - c) / 99), not of the 1600 images.  With partly correlated solves
    (30 x 8 images) the error matches the spread of the coverage over 400 repetitions within 15 %."""
    from moirestm.learn.calibration import interval_coverage

    rng = np.random.default_rng(0)
    per_solve = rng.normal(size=100)
    truth = np.repeat(per_solve, 16)[:, None]
    samples = rng.normal(size=(100, 1, 200)).repeat(16, axis=0).transpose(0, 2, 1)  # one posterior per solve
    cover, se = interval_coverage(samples, truth, np.repeat(np.arange(100), 16))
    c = cover["0.9"][0]
    assert se["0.9"][0] == pytest.approx(np.sqrt(c * (1 - c) / 99), rel=1e-9)
    groups = np.repeat(np.arange(30), 8)
    estimates, errors = [], []
    for _ in range(400):
        theta = (rng.normal(size=30)[groups] + 0.7 * rng.normal(size=240))[:, None]
        post = rng.normal(size=(240, 100, 1)) * np.sqrt(1 + 0.49)  # the marginal of theta: calibrated
        cover, se = interval_coverage(post, theta, groups)
        estimates.append(cover["0.68"][0])
        errors.append(se["0.68"][0])
    assert 0.85 <= np.std(estimates) / np.mean(errors) <= 1.15, (np.std(estimates), np.mean(errors))
    few = np.repeat(np.arange(2), 8)  # two solves: no error can be estimated
    assert np.isnan(interval_coverage(post[:16], theta[:16], few)[1]["0.9"][0])


def test_coverage_warning_names_the_parameter_its_coverage_and_error():
    from moirestm.learn.posterior import coverage_warnings

    metrics = {"n": 40, "parameters": {"hubbard_u_ev": {"coverage": {"0.9": 0.8}, "coverage_se": {"0.9": 0.03}},
                                       "dielectric": {"coverage": {"0.9": 0.9}, "coverage_se": {"0.9": 0.03}}}}
    (line,) = coverage_warnings(metrics)
    assert "hubbard_u_ev 0.800 ± 0.030 (under-dispersed)" in line and "dielectric" not in line


def test_rank_histogram_band_counts_the_solves():
    """160 ranks from 10 solves: the +-2 sd band of a bin's count is 2 * 160 * sqrt(0.1 * 0.9 / 10) = 30.4 wide
    on each side, not the 2 * sqrt(160 * 0.1 * 0.9) = 7.6 of 160 independent ranks."""
    import matplotlib

    matplotlib.use("Agg")
    from moirestm.plot import figure
    from moirestm.plot.posterior import rank_histograms

    ranks = np.random.default_rng(0).integers(0, 100, (160, 1)).astype(float)
    for n_independent, half_width in ((10, 2 * 160 * np.sqrt(0.09 / 10)), (None, 2 * np.sqrt(160 * 0.09))):
        _, ax = figure()
        rank_histograms(ranks, ["hubbard_u_ev"], 100, [ax], n_independent=n_independent)
        band = ax.patches[-1].get_path().get_extents(ax.patches[-1].get_patch_transform())
        assert band.height / 2 == pytest.approx(half_width, rel=1e-6)


def test_flow_scale_is_a_change_of_variables_and_is_stacked():
    """A flow with ``flow_scale`` s models s z: log q_s(z) = log q_1(s z) + d log s for the same inner flow;
    runs saved before the option (no ``flow_scale`` in their config) build without the layer; the batched
    sampling pass handles the layer."""
    from moirestm.learn.posterior import _flow, build_estimator
    from moirestm.learn.stacked_flows import StackedSplineFlows

    config = {"flow": "nsf", "embedding": "kernel", "embedding_dim": 3, "hidden_features": 16,
              "num_transforms": 2, "n_theta": 4, "input_shape": [1, 8, 8], "seed": 3}
    gen = torch.Generator().manual_seed(1)
    z, context = torch.rand(50, 4, generator=gen) * 2 - 1, torch.randn(50, 3, generator=gen)
    scaled, plain = build_estimator({**config, "flow_scale": 0.5}), build_estimator(config)
    with torch.no_grad():
        torch.testing.assert_close(-scaled.loss(z, condition=context),
                                   -plain.loss(0.5 * z, condition=context) + 4 * np.log(0.5))
    assert len(_flow(plain)._transform._transforms) + 1 == len(_flow(scaled)._transform._transforms)
    flows = [_flow(build_estimator({**config, "flow_scale": 0.5, "seed": s})) for s in (0, 1)]
    noise, ctx = torch.randn(2, 30, 4, generator=gen), torch.randn(2, 30, 3, generator=gen)
    with torch.inference_mode():
        own = torch.stack([f._transform.inverse(n, context=c)[0] for f, n, c in zip(flows, noise, ctx)])
    torch.testing.assert_close(StackedSplineFlows.from_flows(flows).inverse(noise, ctx), own, atol=1e-5, rtol=1e-5)
