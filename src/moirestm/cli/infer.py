"""Posterior commands: ``infer`` (train the amortised posterior), and the posterior halves of
``predict`` and ``evaluate`` (``cli/learn.py`` dispatches a posterior run here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, console, emit_json, friendly, option, result_console


@app.command("infer")
@friendly
def infer_cmd(
    data: Path = typer.Argument(..., help="dataset store drawn from priors"),
    out: Path = typer.Option(Path("runs/posterior"), "--out", "-o", help="posterior run directory"),
    flow: str = option("flow"),
    epochs: int = option("epochs", command="infer"),
    batch_size: int = option("batch_size", command="infer"),
    lr: float = option("lr", command="infer"),
    patience: int = option("patience", command="infer",
                           help="Early-stopping patience (epochs without a better validation NLL)"),
    max_minutes: Optional[float] = option("max_minutes"),
    seed: int = option("seed", help="Split and initialisation seed"),
    point: bool = option("point"),
    point_max_minutes: Optional[float] = option("point_max_minutes"),
    augment: str = option("augment", help="STM-artefact preset of the training family: train on the artefacts "
                                          "the measurements carry"),
    balance: float = option("balance"),
    ensemble: int = option("ensemble"),
    embedding: str = option("embedding"),
    flow_scale: float = option("flow_scale"),
    overwrite: bool = typer.Option(False, help="replace an existing posterior run in OUT"),
    threads: Optional[int] = typer.Option(None, help="torch threads"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Neural posterior estimation (sbi flows on kernel summaries or a CNN embedding) of U and the drawn
    parameters on a draw split."""
    from ..learn.posterior import infer

    if threads:
        import torch

        torch.set_num_threads(threads)
    run = infer(data, out, overwrite=overwrite, flow=flow, epochs=epochs, batch_size=batch_size, lr=lr,
                patience=patience, max_minutes=max_minutes, seed=seed,
                point=point, point_max_minutes=point_max_minutes, augment=augment, balance=balance,
                ensemble=ensemble, embedding=embedding, flow_scale=flow_scale, progress=not json_out)
    summary = run.summary
    if json_out:
        emit_json({"run": str(out), "theta": run.names, **summary})
        return
    best = summary["best"]
    console.print(f"{len(best['members'])} flow(s): best epochs {', '.join(map(str, best['epoch']))} (stopped: "
                  f"{', '.join(best['stopped'])}), mean val NLL {best['val_nll']:.3f}, fit {best['fit_s']:.0f} s",
                  highlight=False)
    for name, m in summary["val"]["parameters"].items():
        result_console.print(f"val {name}: median MAE {m['mae']:.4g}  90 % coverage {m['coverage']['0.9']:.2f}  "
                             f"SBC KS p {m.get('sbc_ks_p', float('nan')):.3g}", highlight=False)
    for line in summary["warnings"]:
        result_console.print(f"warning: {line}", highlight=False)
    result_console.print(f"posterior run saved in {out}", highlight=False)


def predict_posterior_cmd(run: Path, input: Path, key: Optional[str], json_out: bool,
                          measured: Optional[dict] = None) -> None:
    """``moirestm predict`` for a posterior run: median, mean, 68 % and 95 % intervals, OOD flag; a measured
    STM file (``measured``: its reading options) is calibrated to the simulation frame first."""
    if measured is not None:
        from ..learn.measured import predict_measured_posterior

        results = [predict_measured_posterior(run, input, **measured)]
    else:
        from ..learn.posterior import predict_source

        results = predict_source(run, input, key=key)
    if json_out:
        emit_json(results if key is None and len(results) != 1 else results[0])
        return
    for r in results:
        u = r["hubbard_u_ev"]
        others = ", ".join(f"{n} {v['median']:.4g} [{v['q16']:.4g}, {v['q84']:.4g}]" for n, v in r.items()
                           if isinstance(v, dict) and "median" in v and n != "hubbard_u_ev")
        flag = "  OUT OF FAMILY" if r["ood"] else ""
        typer.echo(f"{r['source']}: U = {u['median']:.3f} eV (68 %: {u['q16']:.3f}-{u['q84']:.3f}, 95 %: "
                   f"{u['q025']:.3f}-{u['q975']:.3f}); {others}; ood score {r['ood_score']:.2f}{flag}")
        for line in r.get("warnings", []):
            typer.echo(f"WARNING: {line}")


def evaluate_posterior_cmd(run: Path, data: Optional[Path], part: str, out: Optional[Path], json_out: bool,
                           seed: int) -> None:
    """``moirestm evaluate`` for a posterior run: MAE, RMSE, coverage, SBC, identifiability, point baseline."""
    from ..learn.calibration import evaluate_posterior

    result = evaluate_posterior(run, store=data, part=part, out=out, seed=seed)
    if json_out:
        emit_json(result)
        return
    for name, m in result["parameters"].items():
        c = m["coverage"]
        result_console.print(f"{name} on {result['part']} (n={result['n']}): median MAE {m['mae']:.4g}  RMSE "
                             f"{m['rmse']:.4g}  coverage 50/68/90/95 % {c['0.5']:.2f}/{c['0.68']:.2f}/"
                             f"{c['0.9']:.2f}/{c['0.95']:.2f} ({_error(m['coverage_se']['0.9'])})  "
                             f"SBC KS p {m['sbc_ks_p']:.3g} "
                             f"({result['n_solves']} solves)", highlight=False)
    ident = result["identifiability"]["identifiable_u"]
    result_console.print("U identifiable: " + (f"{ident['low']:.2f}-{ident['high']:.2f} eV (MAE {ident['u_mae']:.3g})"
                                               if ident else "nowhere (contraction < 2 in every U bin)"),
                         highlight=False)
    if result["point"]:
        p = result["point"]
        result_console.print(f"point {p['model']}: MAE {p['mae']:.4g}  RMSE {p['rmse']:.4g}  conformal 90 % "
                             f"coverage {p['conformal_coverage']['0.9']:.2f}", highlight=False)
    for line in result["warnings"]:
        result_console.print(f"warning: {line}", highlight=False)
    if result.get("out"):
        result_console.print(f"written to {result['out']}", highlight=False)


def _error(se: float | None) -> str:
    """The 90 % coverage's error over solves in words (None: too few solves to estimate it)."""
    return "too few solves for an error" if se is None else f"90 %: ± {se:.2f} over solves"
