"""The `standard` study end to end: i = 9 flat-band dataset, training targets of issue 4, analysis.

Meant for a many-core machine (`--workers 16`); every stage checks a wall-clock deadline and results are
written incrementally to OUT/study.json, so a run cut short still reports what finished.

    python benchmarks/standard_dataset_study.py --out OUT --workers 16 --deadline-min 9 --device auto

`--quick` runs a tiny i = 5 version of the same script (a smoke test that takes ~2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--deadline-min", type=float, default=60.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-minutes", type=float, default=10.0, help="budget of each training run")
    parser.add_argument("--epochs", type=int, default=300, help="maximum epochs of each training run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store", type=Path, default=None,
                        help="use this finished store (e.g. from `moirestm sweep run standard`) instead of computing one")
    parser.add_argument("--only", nargs="*", default=None,
                        help="training runs to do, and 'extras' for baselines, analysis and report (default: all)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    deadline = t_start + args.deadline_min * 60.0
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "study.json"  # runs of earlier invocations (--only) are kept
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                     "stages": json.loads(previous.read_text()).get("stages", {}) if previous.exists() else {}}

    def save():
        results["elapsed_s"] = time.perf_counter() - t_start
        (args.out / "study.json").write_text(json.dumps(results, indent=1, default=str))

    def left_min():
        return (deadline - time.perf_counter()) / 60.0

    import torch

    from moirestm import __version__

    results["moirestm_version"] = __version__
    results["torch"] = {"version": torch.__version__, "cuda": torch.cuda.is_available(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if args.store is not None:
        store = args.store
        results["stages"]["dataset"] = {"store": str(store), "computed": False}
    else:
        store = build_store(args, results)
    save()
    train_and_analyse(args, store, results, save, left_min)


def build_store(args, results) -> Path:
    """Compute the standard sweep (or its --quick miniature) into OUT/standard.h5."""
    from moirestm.dataset import Sweep, run_sweep
    from moirestm.dataset.sweep import BUILTIN

    spec = json.loads(json.dumps(BUILTIN["standard"]))
    # independent samples parallelise over all workers; continuation chains would only use 7 (one per filling)
    spec["continuation"] = "none"
    if args.quick:
        spec["fixed"].update(index=5)
        spec["axes"] = {"hubbard_u_ev": {"start": 0.0, "stop": 6.0, "step": 0.5}, "filling": [0.0, 1.0],
                        "bias_ev": [0.0]}
        spec["ft"] = {"size": 64}
    spec["name"] = spec["name"] + ("-quick" if args.quick else "-flat")
    sweep = Sweep.from_dict(spec)
    store = args.out / "standard.h5"
    t = time.perf_counter()
    summary = run_sweep(sweep, store, workers=args.workers, progress=False)
    results["stages"]["dataset"] = {**summary.as_dict(), "errors": summary.errors[:5],
                                    "wall_s": time.perf_counter() - t, "sweep": sweep.summary()}
    return store


def train_and_analyse(args, store, results, save, left_min) -> None:
    """Training runs of the issue-4 targets, baselines, analysis (U_c) and the report."""
    from moirestm.learn import evaluate, run_baselines, train

    plan = [("cnn-group", dict(model="cnn", split="group")),
            ("cnn-random", dict(model="cnn", split="random")),
            ("cnn-interpolate", dict(model="cnn", split="interpolate")),
            ("cnn-group-noisy", dict(model="cnn", split="group", augment="noisy")),
            ("mlp-group", dict(model="mlp", split="group")),
            # the MLP (64 px) runs ~10x more epochs than the CNN in the same budget
            ("mlp-group-long", dict(model="mlp", split="group", epochs=4000)),
            ("resnet18-group", dict(model="resnet18", split="group")),
            # BatchNorm keeps each image's overall intensity, which GroupNorm removes (gain invariance)
            ("cnn-group-batchnorm", dict(model="cnn", split="group", model_options={"norm": "batch"})),
            # the default CNN under-fits its training set (train MAE 0.064 eV): a variant aimed at precision
            ("cnn-group-bn-l1-pixel", dict(model="cnn", split="group", model_options={"norm": "batch"},
                                           loss="l1", standardise="pixel")),
            # one input per (U, filling): the maps at every bias stacked as channels (StackedStore)
            ("cnn-group-bias", dict(model="cnn", split="group", channels="bias_ev")),
            ("cnn-group-bias-noisy", dict(model="cnn", split="group", channels="bias_ev", augment="noisy")),
            ("cnn-interpolate-bias", dict(model="cnn", split="interpolate", channels="bias_ev")),
            ("mlp-group-bias", dict(model="mlp", split="group", channels="bias_ev", epochs=4000)),
            ("cnn-group-bias-bn-l1-pixel", dict(model="cnn", split="group", channels="bias_ev",
                                                model_options={"norm": "batch"}, loss="l1", standardise="pixel")),
            # 64-px inputs: each epoch ~4x cheaper, so ~4x more epochs in the same budget
            ("cnn-group-bias-64", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                       epochs=1600)),
            # BatchNorm / L1 / per-pixel standardisation ran out of epochs (400) before the budget did
            ("cnn-group-bias-64-noisy", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                             epochs=1600, augment="noisy")),
            ("cnn-group-bias-64-seed1", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                             epochs=1600, seed=1)),
            ("cnn-group-bias-64-seed2", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                             epochs=1600, seed=2)),
            ("cnn-group-bias-64-seed3", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                             epochs=1600, seed=3)),
            ("cnn-group-bias-64-seed4", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                             epochs=1600, seed=4)),
            ("cnn-group-bias-64-noisy-seed1", dict(model="cnn", split="group", channels="bias_ev", input_size=64,
                                                   epochs=1600, augment="noisy", seed=1)),
            # session 5: network + pixel kernel ridge blend (the default), group split keeping the U ends in training
            *[(f"blend-group-bias-64{'' if seed == 0 else f'-seed{seed}'}",
               dict(model="cnn", split="group", channels="bias_ev", input_size=64, epochs=1600, seed=seed))
              for seed in range(5)],
            *[(f"blend-group-bias-64-noisy{'' if seed == 0 else f'-seed{seed}'}",
               dict(model="cnn", split="group", channels="bias_ev", input_size=64, epochs=1600, augment="noisy",
                    seed=seed)) for seed in range(2)],
            ("cnn-group-64", dict(model="cnn", split="group", input_size=64, epochs=1600)),
            ("cnn-group-bias-precise", dict(model="cnn", split="group", channels="bias_ev", epochs=1000,
                                            model_options={"norm": "batch"}, loss="l1", standardise="pixel")),
            ("cnn-group-bias-precise-seed1", dict(model="cnn", split="group", channels="bias_ev", epochs=1000,
                                                  model_options={"norm": "batch"}, loss="l1",
                                                  standardise="pixel", seed=1)),
            ("cnn-group-bias-precise-noisy", dict(model="cnn", split="group", channels="bias_ev", epochs=1000,
                                                  model_options={"norm": "batch"}, loss="l1",
                                                  standardise="pixel", augment="noisy"))]
    for name, kw in plan:
        if args.only is not None and name not in args.only:
            continue
        budget = min(args.train_minutes, left_min() - 0.6)
        if budget < 0.4:
            results["stages"][name] = "skipped: deadline"
            continue
        t = time.perf_counter()
        kw = dict(kw)
        epochs = 4 if args.quick else kw.pop("epochs", args.epochs)
        run = train(store, out=args.out / name, overwrite=True, progress=False, seed=kw.pop("seed", 0),
                    device=args.device,
                    max_minutes=budget, epochs=epochs, patience=max(epochs // 5, 2),
                    min_epochs=max(epochs // 5, 2), **kw)
        wall = time.perf_counter() - t
        metrics = evaluate(run, plots=True)
        u = metrics["targets"]["hubbard_u_ev"]
        worst = sorted(u["per_value"], key=lambda r: -r["mae"])[:5]
        results["stages"][name] = {"mae_ev": u["mae"], "rmse_ev": u["rmse"], "r2": u["r2"], "n_test": u["n"],
                                   "coverage": u["coverage"], "best": run.best, "wall_s": wall,
                                   "budget_min": budget, "worst_u": [(r["value"], r["mae"]) for r in worst],
                                   "held_out": run.split.held_out, "components": u.get("components")}
        if kw.get("augment") == "noisy":  # also score on held-out images corrupted the same way
            corrupted = evaluate(run, plots=True, corrupt="noisy")["targets"]["hubbard_u_ev"]
            results["stages"][name]["noisy_test"] = {"mae_ev": corrupted["mae"], "rmse_ev": corrupted["rmse"],
                                                     "r2": corrupted["r2"], "components": corrupted.get("components")}
        save()
    if (args.only is None or "baselines-bias" in args.only) and (args.out / "cnn-group-bias" / "checkpoint.pt").exists():
        from moirestm.learn import Run

        stacked = Run.load(args.out / "cnn-group-bias")
        base = run_baselines(store, split=stacked.split, channels=stacked.normalizer.channels)
        results["stages"]["baselines-group-bias"] = {k: v["hubbard_u_ev"] for k, v in base["results"].items()}
        save()
    if args.only is not None and "extras" not in args.only:
        return
    if left_min() > 0.5 and (args.out / "cnn-group" / "checkpoint.pt").exists():
        from moirestm.learn import Run

        base = run_baselines(store, split=Run.load(args.out / "cnn-group").split)
        results["stages"]["baselines-group"] = {k: v["hubbard_u_ev"] for k, v in base["results"].items()}
        save()
    if left_min() > 0.4:
        from moirestm.explain import analyze

        analysis = analyze(store, args.out / "analysis", max_samples=400)
        results["stages"]["analysis"] = {"u_c_ev": analysis.u_c, "u_c_parameter": analysis.u_c_parameter,
                                         "u_c_method": analysis.u_c_method,
                                         "similarity": analysis.similarity_stats}
        save()
    if left_min() > 0.4 and (args.out / "cnn-group" / "checkpoint.pt").exists():
        from moirestm.explain import build_report

        build_report(args.out / "cnn-group", store, args.out / "report.html", max_samples=12, n_steps=16,
                     title="moirestm standard study (i = 9 at its magic distance)")
        results["stages"]["report"] = str(args.out / "report.html")
    save()


if __name__ == "__main__":
    main()
