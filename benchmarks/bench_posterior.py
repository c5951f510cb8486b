"""Posterior benchmark: training time, held-out calibration, OOD detection and prediction latency.

    OMP_NUM_THREADS=2 flock /tmp/team/heavy.lock .venv/bin/python benchmarks/bench_posterior.py \
        [--data STORE] [--independent STORE] [--ood NAME=STORE ...] [--augment PRESET] \
        [--max-minutes 10] [--out runs/bench-posterior]

Without ``--data`` a toy store with priors (:mod:`moirestm.learn.toy_priors`, not physics) is
built.  ``--independent`` names a store of further draws from the same priors (e.g.
``benchmarks/sweeps/demo-sbi-sbc.toml``): calibration, SBC and the false-alarm rate are measured on
it too, since the run's own test split holds few independent draws.  Writes
``benchmarks/results/posterior-<store name>[-<augment>].json`` and prints the markdown rows of the
docs/benchmarks.md section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def latency(run, images, n_samples: int = 1000, threads: int = 2) -> dict:
    """Median, 90th percentile and mean wall time (ms) per image of ``predict_posterior`` with ``n_samples``."""
    from moirestm.learn.posterior import predict_posterior

    torch.set_num_threads(threads)
    predict_posterior(run, images[0], n_samples)
    times = []
    for im in images:
        t0 = time.perf_counter()
        predict_posterior(run, im, n_samples)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"threads": threads, "n_samples": n_samples, "median_ms": float(np.median(times)),
            "p90_ms": float(np.quantile(times, 0.9)), "mean_ms": float(np.mean(times)), "n": len(times)}


def _se(parameter_metrics: dict) -> float:
    """The 90 % coverage's error over solves (NaN where too few solves leave it unestimated)."""
    se = parameter_metrics["coverage_se"]["0.9"]
    return float("nan") if se is None else se


def latency_keys(test_keys: list[str], n: int = 60) -> list[str]:
    """``n`` test keys spread evenly over the test split: its images come solve by solve, and a prefix holds
    only two or three solves (whether one of them sits at a prior's edge, where rejection costs more, then
    decides the p90)."""
    step = max(len(test_keys) // n, 1)
    return list(test_keys[::step][:n])


def fresh_latency(run_dir: Path, data: Path, keys: list[str], threads: int = 2) -> dict:
    """:func:`latency` in a fresh Python process that loads the run from disk, as ``moirestm predict`` does
    (sessions 11-12 saw slower predictions inside this long benchmark process; sessions 12-13 found the two
    within the machine's run-to-run spread, docs/benchmarks.md)."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import torch; from bench_posterior import latency, "
            "_images; from moirestm.learn.posterior import PosteriorRun; "
            f"run = PosteriorRun.load({str(run_dir)!r}); "
            f"print(json.dumps(latency(run, _images({str(data)!r}, {keys!r}), threads={threads})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--independent", type=Path, help="store of further draws from the training priors")
    ap.add_argument("--ood", action="append", default=[], help="NAME=STORE of an out-of-family store")
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--point-max-minutes", type=float, default=3.0)
    ap.add_argument("--embedding", default=None, help="kernel or a network (default: the registry's)")
    ap.add_argument("--augment", default="clean", help="artefact preset of the training family")
    ap.add_argument("--balance", type=float, default=0.0, help="balanced-NPE penalty weight")
    ap.add_argument("--ensemble", type=int, default=None, help="flows in the ensemble (default: the registry's)")
    ap.add_argument("--flow-scale", type=float, default=None, help="scale of the box coordinates in the flows "
                                                                   "(default: the registry's)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-posterior"))
    ap.add_argument("--toy-draws", type=int, default=300)
    args = ap.parse_args()
    from moirestm.learn.calibration import evaluate_posterior
    from moirestm.learn.ood import ood_detection
    from moirestm.learn.posterior import infer
    from moirestm.learn.toy_priors import TOY_PRIORS, make_toy_prior_store

    torch.set_num_threads(2)
    others = dict(item.split("=", 1) for item in args.ood)
    data = args.data
    if data is None:
        args.out.mkdir(parents=True, exist_ok=True)
        data = args.out.parent / "toy-sbi.h5"
        make_toy_prior_store(data, n_draws=args.toy_draws, size=64, seed=0)
        far = {**TOY_PRIORS, "distance_nm": {"dist": "uniform", "low": 0.345, "high": 0.355}}
        make_toy_prior_store(args.out.parent / "toy-sbi-far.h5", n_draws=30, priors=far, size=64, seed=7)
        others = {"distance beyond the prior": args.out.parent / "toy-sbi-far.h5", **others}
    t0 = time.perf_counter()
    registry_overrides = {k: v for k, v in (("embedding", args.embedding), ("ensemble", args.ensemble),
                                            ("flow_scale", args.flow_scale)) if v is not None}
    run = infer(data, args.out, overwrite=True, max_minutes=args.max_minutes, augment=args.augment,
                balance=args.balance, point_max_minutes=args.point_max_minutes, progress=False, **registry_overrides)
    wall = time.perf_counter() - t0
    metrics = evaluate_posterior(run, part="test")
    detection = ood_detection(run, others=others)
    independent = evaluate_posterior(run, store=args.independent) if args.independent else None
    timed = latency_keys(run.split.test)
    images = [np.asarray(run_image) for run_image in _images(data, timed)]
    result = {"store": str(data), "n_samples_store": len(run.split.train) + len(run.split.val) + len(run.split.test),
              "split": {p: len(run.split.keys(p)) for p in ("train", "val", "test")},
              "infer_wall_s": wall, "posterior_fit_s": run.summary["best"]["fit_s"],
              "point_fit_s": run.summary.get("point", {}).get("fit_s"), "best": run.summary["best"],
              "summariser": run.summary.get("summariser"),
              "val_warnings": run.summary["warnings"], "test": metrics, "ood_detection": detection,
              "independent": independent,
              "latency": [latency(run, images, threads=t) for t in (2, 1)],
              "latency_fresh_process": fresh_latency(args.out, data, timed)}
    name = (Path(data).stem + ("" if args.augment == "clean" else f"-{args.augment}")
            + ("" if not args.balance else f"-balance{args.balance:g}")
            + ("" if args.ensemble is None else f"-ensemble{args.ensemble}")
            + ("" if args.embedding is None else f"-{args.embedding}")
            + ("" if args.flow_scale is None else f"-scale{args.flow_scale:g}"))
    out = Path("benchmarks/results") / f"posterior-{name}.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    u = metrics["parameters"]["hubbard_u_ev"]
    ident = metrics["identifiability"]["identifiable_u"]
    print(f"| store | {name} ({result['n_samples_store']} samples, split {result['split']}) |")
    summariser = (f" + kernel summaries {result['summariser']['fit_s']:.0f} s" if result["summariser"] else "")
    print(f"| posterior training | {result['posterior_fit_s']:.0f} s{summariser} (+ point blend "
          f"{result['point_fit_s'] or 0:.0f} s) |")
    print(f"| U median MAE, whole range | {u['mae']:.3f} eV (point blend {metrics['point']['mae']:.3f} eV) |")
    if ident:
        print(f"| U identifiable range | {ident['low']:.2f}-{ident['high']:.2f} eV, MAE there {ident['u_mae']:.3f} eV |")
    print(f"| U coverage 50/68/90/95 % | {u['coverage']['0.5']:.2f}/{u['coverage']['0.68']:.2f}/"
          f"{u['coverage']['0.9']:.2f}/{u['coverage']['0.95']:.2f} (90 %: ± {_se(u):.2f} "
          f"over solves; conformal point 90 %: "
          f"{metrics['point']['conformal_coverage']['0.9']:.2f}) |")
    print(f"| U SBC KS p | {u['sbc_ks_p']:.3g} by solve ({metrics['n_solves']} solves); all images as if "
          f"independent {u['sbc_ks_p_pooled_images']:.3g} |")
    print(f"| OOD false alarms (test draws) | {detection['false_alarm_test']['flagged']:.3f} |")
    for set_name, s in detection["sets"].items():
        unflagged = ("" if s.get("unflagged_u_coverage_90") is None else
                     f"; unflagged: U 90 % coverage {s['unflagged_u_coverage_90']:.2f}, "
                     f"MAE {s['unflagged_u_mae_ev']:.2f} eV")
        if s.get("change_unflagged_median") is not None:
            unflagged += (f"; rms input change flagged {s['change_flagged_median']:.3f}, "
                          f"unflagged {s['change_unflagged_median']:.3f}")
        print(f"| OOD detected: {set_name} | {s['flagged']:.2f} (n={s['n']}{unflagged}) |")
    if independent is not None:
        ui = independent["parameters"]["hubbard_u_ev"]
        print(f"| independent draws | {independent['n']} images from {independent['n_solves']} solves |")
        print(f"| U median MAE there | {ui['mae']:.3f} eV (point blend {(independent['point'] or {}).get('mae', float('nan')):.3f} eV) |")
        ident_i = independent["identifiability"]["identifiable_u"]
        if ident_i:
            print(f"| U identifiable range there | {ident_i['low']:.2f}-{ident_i['high']:.2f} eV, "
                  f"MAE there {ident_i['u_mae']:.3f} eV |")
        print(f"| U coverage 50/68/90/95 % there | {ui['coverage']['0.5']:.2f}/{ui['coverage']['0.68']:.2f}/"
              f"{ui['coverage']['0.9']:.2f}/{ui['coverage']['0.95']:.2f} (90 %: ± {_se(ui):.2f}) |")
        print(f"| U SBC KS p there | {ui['sbc_ks_p']:.3g} by solve; all images as if independent "
              f"{ui['sbc_ks_p_pooled_images']:.3g} |")
        print(f"| OOD false alarms there | {independent['ood']['flagged']:.3f} |")
    for lat in result["latency"]:
        print(f"| predict, 1000 samples, {lat['threads']} thread(s) | {lat['median_ms']:.1f} ms median, "
              f"{lat['p90_ms']:.1f} ms p90, {lat['mean_ms']:.1f} ms mean |")
    lat = result["latency_fresh_process"]
    print(f"| predict, 1000 samples, 2 threads, fresh process | {lat['median_ms']:.1f} ms median, "
          f"{lat['p90_ms']:.1f} ms p90, {lat['mean_ms']:.1f} ms mean |")
    print(f"written {out}")


def _images(data, keys):
    from moirestm.learn.data import open_store

    st = open_store(data)
    return [st.image(k) for k in keys]


if __name__ == "__main__":
    main()
