"""Network + kernel blend on the ``standard`` study runs: the blend against each half alone.

Loads trained CNN runs of the study (``runs/study/<name>``), gives each the kernel half of a
blend with :func:`moirestm.learn.attach_kernel` (kernel and weight fitted on the run's own
training and validation parts; the test part is not touched), and scores network, kernel and
blend on the held-out test part (and, for augmented runs, on its ``noisy`` corruption).  The
runs' checkpoints are not rewritten.

    python benchmarks/standard_kernel_blend.py [RUN ...] [--out benchmarks/results/standard-kernel-blend.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from moirestm.learn import Run, attach_kernel, evaluate

DEFAULT_RUNS = ["cnn-group-bias-64"] + [f"cnn-group-bias-64-seed{i}" for i in (1, 2, 3, 4)] + [
    "cnn-group-bias-64-noisy", "cnn-group-bias-64-noisy-seed1"]


def score(run: Run, corrupt: str | None) -> dict:
    m = evaluate(run, plots=False, corrupt=corrupt)["targets"]["hubbard_u_ev"]
    row = {"blend": {k: m[k] for k in ("mae", "r2", "max_abs_error")},
           "within_1sigma": m["coverage"]["within_1sigma"], "within_2sigma": m["coverage"]["within_2sigma"]}
    row.update({part: {k: c[k] for k in ("mae", "r2", "max_abs_error")} for part, c in m["components"].items()})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", default=DEFAULT_RUNS)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--out", default="benchmarks/results/standard-kernel-blend.json")
    args = ap.parse_args()
    results = {}
    for name in args.runs:
        t0 = time.perf_counter()
        run = attach_kernel(Path(args.study) / name, save=False)
        row = {"weight": run.kernel.weight, "kernel": run.best["kernel"], "test": score(run, None)}
        if run.config.get("augment", "clean") != "clean":
            row["test_noisy"] = score(run, run.config["augment"])
        row["seconds"] = time.perf_counter() - t0
        results[name] = row
        t = row["test"]
        print(f"{name}: w={row['weight']:.2f}  network {t['network']['mae']:.3f}/{t['network']['r2']:.4f}  "
              f"kernel {t['kernel']['mae']:.3f}/{t['kernel']['r2']:.4f}  blend {t['blend']['mae']:.3f}/"
              f"{t['blend']['r2']:.4f}  within 1σ {t['within_1sigma']:.2f}"
              + (f"  | noisy blend {row['test_noisy']['blend']['mae']:.3f}/{row['test_noisy']['blend']['r2']:.4f}"
                 f" network {row['test_noisy']['network']['mae']:.3f}" if "test_noisy" in row else ""), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
