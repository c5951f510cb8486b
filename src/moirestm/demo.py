"""End-to-end demo on the built-in small case (i = 5, 364 atoms, at its magic distance): bands, dataset, training,
evaluation, explanation and the HTML report. Everything is resumable: rerunning reuses finished work.

This module sits on top of the pipeline (like the CLI), so it may import every stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

#: Time budgets of the demo's training steps, minutes (the whole demo must fit in 10 minutes on 2 cores).
DEMO_POSTERIOR_MINUTES = 2.0
DEMO_POINT_MINUTES = 1.0
#: Commensurate index of the demo cell (6.01°, 364 atoms).
DEMO_INDEX = 5
#: The demo's store: the ``demo-sbi`` design (priors over distance, dielectric, temperature, filling,
#: broadening and bias) with fewer draws, sized for the 10-minute budget.
DEMO_DRAWS = 6
DEMO_IMAGES_PER_SOLVE = 16
#: U values per draw (jittered by up to half their spacing, so together they cover 0..6 eV).
DEMO_U_AXIS = {"start": 1.5, "stop": 4.5, "step": 3.0}


def demo_sweep(n_draws: int = DEMO_DRAWS, images_per_solve: int = DEMO_IMAGES_PER_SOLVE):
    """The demo's sweep: ``demo-sbi`` with ``n_draws`` draws and ``images_per_solve`` images per solve."""
    import copy

    from .dataset import Sweep
    from .dataset.sweep import BUILTIN

    spec = copy.deepcopy(BUILTIN["demo-sbi"])
    spec.update(name="demo", n_draws=n_draws, images_per_solve=images_per_solve,
                axes={"hubbard_u_ev": dict(DEMO_U_AXIS)}, description="")
    sweep = Sweep.from_dict(spec)
    sweep.description = (f"demo: the demo-sbi priors, {n_draws} draws x {len(sweep.values['hubbard_u_ev'])} "
                         f"jittered U values x {images_per_solve} images per solve")
    return sweep


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, its headline figures and the time of each stage (s)."""

    out_dir: Path
    report: Path
    metrics: dict
    timings_s: dict = field(default_factory=dict)


def run_demo(out_dir="demo-output", workers: int | None = None, console: Console | None = None,
             n_draws: int = DEMO_DRAWS, images_per_solve: int = DEMO_IMAGES_PER_SOLVE,
             posterior_minutes: float = DEMO_POSTERIOR_MINUTES, point_minutes: float = DEMO_POINT_MINUTES
             ) -> DemoResult:
    """Run the whole pipeline on the demo's store over the unknowns and return the report location.

    Stages: bands at the magic distance; the store (:func:`demo_sweep`, Dask); the amortised posterior
    over U and the drawn unknowns with the point model (network + kernel blend) on the same split of
    held-out draws (:func:`moirestm.learn.posterior.infer`); its calibration on the held-out draws; the
    HTML report (dataset analysis, point model, posterior calibration, identifiability, out-of-family
    detection, attribution of the posterior mean).
    """
    from .dataset import run_sweep
    from .dataset.sweep import resolve_magic_distance
    from .explain import analyze, build_report
    from .hamiltonian import TightBinding, band_structure
    from .lattice import TBGLattice
    from .learn import Run
    from .learn.calibration import evaluate_posterior
    from .errors import MoireSTMError
    from .learn.posterior import POINT_DIR, POSTERIOR_FILE, PosteriorRun, infer

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

    sweep = demo_sweep(n_draws, images_per_solve)
    t = stage(f"2/5 dataset over the unknowns: {sweep.n_samples} images from "
              f"{sweep.n_samples // sweep.images_per_solve} mean-field solves (Dask)")
    store_path = out / "demo.h5"
    summary = run_sweep(sweep, store_path, workers=workers, console=console)
    console.print(summary.as_dict())
    timings["dataset"] = time.perf_counter() - t

    t = stage("3/5 posterior over U and the unknowns + point model, on a split of whole held-out draws")
    run_dir = out / "run-posterior"
    posterior = None
    if (run_dir / POSTERIOR_FILE).exists():
        try:
            posterior = PosteriorRun.load(run_dir)
            console.print(f"reusing the finished posterior run in {run_dir}")
        except MoireSTMError as exc:  # e.g. written by an older moirestm: the demo's own run, so retrain
            console.print(f"[yellow]not reusing {run_dir}:[/] {exc}; retraining it")
    if posterior is None:
        posterior = infer(store_path, run_dir, overwrite=True, max_minutes=posterior_minutes,
                          point_max_minutes=point_minutes, seed=0)
    point = Run.load(run_dir / POINT_DIR)
    timings["training"] = time.perf_counter() - t

    t = stage("4/5 calibration on the held-out draws")
    metrics = evaluate_posterior(posterior, part="test", out=run_dir / "evaluation")
    u = metrics["parameters"]["hubbard_u_ev"]
    console.print(f"posterior, {metrics['n']} test images of unseen draws: U median MAE {u['mae']:.3f} eV, "
                  f"90 % interval coverage {u['coverage']['0.9']:.2f}, SBC KS p {u.get('sbc_ks_p', float('nan')):.3g}")
    if metrics.get("point"):
        console.print(f"point model on the same images: MAE {metrics['point']['mae']:.3f} eV")
    for line in metrics["warnings"]:
        console.print(f"[yellow]warning:[/] {line}")
    timings["evaluation"] = time.perf_counter() - t

    t = stage("5/5 analysis, attribution of the posterior mean and report")
    analysis = analyze(store_path, out / "analysis")
    report = build_report(point, store_path, out / "report.html", analysis=analysis, posterior=posterior,
                          baselines=False, max_samples=6,
                          title="moirestm demo: what FT-LDOS images of TBG (i = 5) say about U")
    timings["report"] = time.perf_counter() - t
    console.print(f"[bold green]report:[/] {report.resolve()}")
    return DemoResult(out, report, metrics, timings)
