"""Learning benchmarks (issue 4): training throughput per model, prediction latency, time to best.

Usage::

    python benchmarks/bench_learn.py [--data STORE.h5] [--threads 2] [--split group] [--json out.json]

Without ``--data`` a synthetic store of 256 x 256 images is built (toy maps, see
``moirestm.learn.synthetic``), so throughput and latency are measured at the real image size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moirestm.learn import Run, evaluate, run_baselines, train
from moirestm.learn.data import open_store
from moirestm.learn.models import DEFAULT_INPUT_SIZE, build_model, count_parameters
from moirestm.learn.predict import MC_SAMPLES


def throughput(model_name: str, image_side: int, batch: int = 16, steps: int = 6) -> dict:
    """Training images/s (forward + backward + AdamW step) at the model's default input size."""
    size = min(DEFAULT_INPUT_SIZE[model_name], image_side)
    torch.manual_seed(0)
    net = build_model({"name": model_name, "in_shape": [size, size], "n_targets": 1})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 1, size, size), torch.randn(batch, 1)
    net.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()  # first step warms up
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    dt = time.perf_counter() - t0
    return {"model": model_name, "input_size": size, "parameters": count_parameters(net),
            "train_images_per_s": batch * steps / dt}


def augmentation_cost(store, presets=("mild", "symb", "noisy"), n: int = 64, batch: int = 16) -> dict:
    """Milliseconds per image to build training inputs (``ImageDataset.batch``: augment + normalise).

    The ratio to the clean input (cached after its first epoch, so timed uncached) is the
    hardware-independent figure.
    """
    from moirestm.learn.augment import Augmenter
    from moirestm.learn.data import ImageDataset, Normalizer, targets_of

    keys = store.keys()[:n]
    norm = Normalizer.fit([store.image(k) for k in keys], targets_of(store, keys, ["hubbard_u_ev"]),
                          ["hubbard_u_ev"], min(DEFAULT_INPUT_SIZE["cnn"], store.image(keys[0]).shape[0]))

    def per_image(ds) -> float:
        ds.batch(range(min(batch, len(keys))))  # reads and caches the raw images
        t0 = time.perf_counter()
        for first in range(0, len(keys), batch):
            ds.batch(range(first, min(first + batch, len(keys))))
        return (time.perf_counter() - t0) / len(keys) * 1e3

    clean = per_image(ImageDataset(store, keys, norm, cache=False))
    out = {"clean_ms_per_image": clean}
    for name in presets:
        ms = per_image(ImageDataset(store, keys, norm, augment=Augmenter(name)))
        out[name] = {"ms_per_image": ms, "ratio_to_clean": ms / clean}
    return out


def latency(run: Run, image: np.ndarray, repeats: int = 20) -> dict:
    """Prediction time per single image (normalisation + MC dropout with the run's mask count)."""
    run.predict([image])
    t0 = time.perf_counter()
    for _ in range(repeats):
        run.predict([image])
    single = (time.perf_counter() - t0) / repeats * 1e3
    return {"predict_ms_per_image": single, "mc_samples": run.config.get("mc_samples", MC_SAMPLES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default="group")
    ap.add_argument("--models", default="mlp,cnn,resnet18")
    ap.add_argument("--train-models", default="cnn", help="models trained to their best checkpoint")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--augment", default="clean")
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_learn_"))
    data = args.data
    if data is None:
        from moirestm.learn.synthetic import make_synthetic_store

        data = tmp / "synthetic.h5"
        make_synthetic_store(data, u_values=np.round(np.arange(0, 6.01, 0.25), 3), fillings=(-1.0, 0.0, 1.0),
                             replicas=1, image_size=256, map_size=128)
    store = open_store(data)
    image = store.image(store.keys()[0])
    report = {"data": str(data), "n_samples": len(store.keys()), "image_shape": list(image.shape),
              "threads": args.threads, "throughput": [], "runs": {}}
    for name in args.models.split(","):
        r = throughput(name, image.shape[0])
        report["throughput"].append(r)
        print(f"{name:9s} input {r['input_size']:4d}  params {r['parameters']:>9,d}  "
              f"train {r['train_images_per_s']:7.1f} images/s", flush=True)
    report["augmentation"] = aug = augmentation_cost(store)
    print(f"inputs: clean {aug['clean_ms_per_image']:.2f} ms/image; " + ", ".join(
        f"{k} {v['ms_per_image']:.2f} ms ({v['ratio_to_clean']:.1f}x)" for k, v in aug.items() if k != "clean_ms_per_image"),
        flush=True)
    for name in args.train_models.split(","):
        if not name:
            continue
        t0 = time.perf_counter()
        run = train(data, model=name, split=args.split, out=tmp / f"run-{name}", epochs=args.epochs,
                    augment=args.augment, max_minutes=args.max_minutes, progress=False)
        total = time.perf_counter() - t0
        ev = evaluate(run, plots=False)["targets"][run.targets[0]]
        lat = latency(run, image)
        report["runs"][name] = {"split": args.split, "augment": args.augment, "best_epoch": run.best["epoch"],
                                "epochs_run": len(run.history), "time_to_best_s": run.best["time_s"],
                                "total_train_s": total, "stopped": run.best["stopped"], **lat,
                                "test": {k: ev[k] for k in ("mae", "rmse", "r2", "n")},
                                "coverage": ev["coverage"]}
        print(f"{name}: best epoch {run.best['epoch']} after {run.best['time_s']:.1f} s (total {total:.1f} s), "
              f"test MAE {ev['mae']:.4f} R² {ev['r2']:.4f}, within 1σ/2σ "
              f"{ev['coverage']['within_1sigma']:.2f}/{ev['coverage']['within_2sigma']:.2f}, "
              f"predict {lat['predict_ms_per_image']:.1f} ms/image", flush=True)
        t0 = time.perf_counter()
        base = run_baselines(data, split=run.split)
        report["runs"][name]["baselines"] = {k: {**v[run.targets[0]], "fit_s": v["fit_s"]}
                                             for k, v in base["results"].items()}
        for k, v in base["results"].items():
            m = v[run.targets[0]]
            print(f"  baseline {k:17s} MAE {m['mae']:.4f} R² {m['r2']:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
