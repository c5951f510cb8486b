"""End-to-end demo on the built-in small case (i = 5, 364 atoms, at its magic distance): bands, dataset, training,
evaluation, explanation and the HTML report. Everything is resumable: rerunning reuses finished work.

This module sits on top of the pipeline (like the CLI), so it may import every stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

#: Time budget of the demo's training step, minutes (the whole demo must fit in 10 minutes on 2 cores).
DEMO_TRAIN_MINUTES = 3.5
#: Commensurate index of the demo cell (6.01°, 364 atoms).
DEMO_INDEX = 5


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, its headline figures and the time of each stage (s)."""

    out_dir: Path
    report: Path
    metrics: dict
    timings_s: dict = field(default_factory=dict)


def run_demo(out_dir="demo-output", workers: int | None = None, console: Console | None = None) -> DemoResult:
    """Run the whole pipeline on the built-in ``demo`` sweep and return the report location."""
    from .dataset import run_sweep
    from .dataset.sweep import resolve_magic_distance
    from .explain import analyze, build_report
    from .hamiltonian import TightBinding, band_structure
    from .lattice import TBGLattice
    from .learn import Run, evaluate, train
    from .learn.train import CHECKPOINT

    console = console or Console(stderr=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    t = stage("1/5 lattice, magic distance and bands")
    distance_nm, _ = resolve_magic_distance(DEMO_INDEX)
    lattice = TBGLattice(DEMO_INDEX, distance_nm)
    bands = band_structure(TightBinding(lattice), n_points=45)
    bands.plot(out / "bands.png", title=f"TBG i={lattice.index}, θ={lattice.twist_angle_deg:.2f}°, "
                                        f"d={distance_nm:.4f} nm")
    bands.save(out / "bands.h5")
    console.print(f"i = {lattice.index}: θ = {lattice.twist_angle_deg:.3f}°, {lattice.n_atoms} atoms, "
                  f"magic distance {distance_nm:.4f} nm, central bands {bands.central_width_ev() * 1e3:.0f} meV wide -> {out / 'bands.png'}")
    timings["bands"] = time.perf_counter() - t

    t = stage("2/5 dataset: mean field + FT-LDOS for U = 0..6 eV (Dask)")
    store_path = out / "demo.h5"
    summary = run_sweep("demo", store_path, workers=workers, console=console)
    console.print(summary.as_dict())
    timings["dataset"] = time.perf_counter() - t

    t = stage("3/5 training the default CNN + kernel blend (group split: whole U values held out)")
    run_dir = out / "run-cnn"
    if (run_dir / CHECKPOINT).exists():
        run = Run.load(run_dir)
        console.print(f"reusing the finished run in {run_dir}")
    else:
        run = train(store_path, model="cnn", split="group", out=run_dir, overwrite=True,
                    max_minutes=DEMO_TRAIN_MINUTES, seed=0)
    timings["training"] = time.perf_counter() - t

    t = stage("4/5 evaluation on held-out U values")
    metrics = evaluate(run)
    u = metrics["targets"]["hubbard_u_ev"]
    console.print(f"test ({metrics['n']} images at unseen U): MAE {u['mae']:.3f} eV, RMSE {u['rmse']:.3f} eV, "
                  f"R² {u['r2']:.4f}; plots in {metrics.get('out')}")
    if "components" in u:
        console.print(f"  {metrics['blend']}; alone: " + ", ".join(
            f"{half} MAE {m['mae']:.3f} eV, R² {m['r2']:.4f}" for half, m in u["components"].items()))
    timings["evaluation"] = time.perf_counter() - t

    t = stage("5/5 analysis, attribution and report")
    analysis = analyze(store_path, out / "analysis")
    report = build_report(run, store_path, out / "report.html", analysis=analysis,
                          title="moirestm demo: learning U from FT-LDOS of TBG (i = 5)")
    timings["report"] = time.perf_counter() - t
    console.print(f"[bold green]report:[/] {report.resolve()}")
    return DemoResult(out, report, metrics, timings)
