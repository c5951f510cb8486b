"""Learning commands: train, evaluate, predict, baselines (thin wrappers over moirestm.learn)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, check_targets, console, emit_json, friendly, option, result_console

TargetOpt = typer.Option(["hubbard_u_ev"], "--target", help="Target parameter(s), registry names; repeat for several.")


def _threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command("train")
@friendly
def train_cmd(
    data: Path = typer.Argument(..., help="dataset store (.h5)"),
    model: str = option("model"),
    split: str = option("split"),
    out: Path = typer.Option(Path("runs/run"), "--out", "-o", help="run directory"),
    target: list[str] = TargetOpt,
    epochs: int = option("epochs"),
    batch_size: int = option("batch_size"),
    lr: float = option("lr"),
    patience: int = option("patience"),
    seed: int = option("seed"),
    augment: str = option("augment"),
    augment_space: str = option("augment_space"),
    symmetry: bool = option("symmetry"),
    input_size: Optional[int] = option("input_size"),
    max_minutes: Optional[float] = option("max_minutes"),
    resume: bool = typer.Option(False, help="continue OUT/last.pt"),
    overwrite: bool = typer.Option(False, help="replace an existing run in OUT"),
    threads: Optional[int] = option("threads"),
    device: str = option("device"),
    loss: str = option("loss"),
    standardise: str = option("standardise"),
    norm: Optional[str] = option("norm"),
    channels: Optional[str] = option("channels"),
    kernel: bool = option("kernel"),
    json_out: bool = typer.Option(False, "--json", help="print the test metrics as JSON"),
) -> None:
    """Train a network to predict U from FT-LDOS images; prints the held-out test metrics."""
    from ..learn import evaluate, train

    targets = check_targets(target)
    _threads(threads)
    run = train(data, model=model, split=split, out=out, targets=targets, epochs=epochs, batch_size=batch_size,
                lr=lr, patience=patience, seed=seed, augment=augment, augment_space=augment_space,
                symmetry=symmetry,
                input_size=input_size, max_minutes=max_minutes, resume=resume, overwrite=overwrite,
                device=device, loss=loss, standardise=standardise, channels=channels, kernel=kernel,
                model_options={} if norm is None else {"norm": norm})
    best = run.best
    console.print(f"best epoch {best['epoch']} (stopped: {best['stopped']}), val MAE "
                  f"{', '.join(f'{v:.4g}' for v in best['val_mae'])}, time to best {best['time_s']:.1f} s",
                  highlight=False)
    if run.kernel is not None:
        v = run.kernel.val_mae
        console.print(f"blend: {run.kernel.describe()}; val MAE network {v['network']:.4g}, kernel "
                      f"{v['kernel']:.4g}, blend {v['blend']:.4g}", highlight=False)
    result = evaluate(run)
    if json_out:
        emit_json({**result, "run": str(out)})
        return
    for name, m in result["targets"].items():
        result_console.print(f"test {name}: MAE {m['mae']:.4g}  RMSE {m['rmse']:.4g}  R² {m['r2']:.4f}  "
                             f"(n={m['n']}, within 2σ {m['coverage']['within_2sigma']:.2f})", highlight=False)
    result_console.print(f"run saved in {out}", highlight=False)


@app.command("evaluate")
@friendly
def evaluate_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, help="another store to evaluate on (all its samples)"),
    part: str = option("part"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory for metrics.json and plots"),
    json_out: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    corrupt: Optional[str] = option("corrupt"),
    seed: int = option("seed", help="Seed of the corruption draws"),
) -> None:
    """MAE, RMSE, R², error per U, uncertainty coverage; parity and residual PNGs and metrics.json."""
    from ..learn import evaluate
    from ..learn.posterior import is_posterior_run

    if is_posterior_run(run):  # coverage, SBC, identifiability (cli/infer.py)
        from .infer import evaluate_posterior_cmd

        return evaluate_posterior_cmd(run, data, part, out, json_out, seed)

    result = evaluate(run, store=data, part=part, out=out, corrupt=corrupt, seed=seed)
    if json_out:
        emit_json(result)
        return
    for name, m in result["targets"].items():
        cov = m["coverage"]
        result_console.print(f"{name} on {result['part']} (n={m['n']}): MAE {m['mae']:.4g}  RMSE {m['rmse']:.4g}  "
                             f"R² {m['r2']:.4f}  within 1σ/2σ {cov['within_1sigma']:.2f}/{cov['within_2sigma']:.2f}",
                             highlight=False)
    result_console.print(f"written to {result.get('out')}", highlight=False)


@app.command("predict")
@friendly
def predict_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    input: Path = typer.Argument(..., help="FT image (.npy, PNG), a store (.h5), or a measured STM file "
                                           "(.sxm, .3ds, .gwy; .npy/.txt real-space map with --pixel-nm)"),
    key: Optional[str] = typer.Option(None, help="sample key when INPUT is a store (default: all samples)"),
    channel: Optional[str] = typer.Option(None, help="channel of a measured STM file (e.g. 'Z', 'LI Demod 1 X')"),
    pixel_nm: Optional[float] = option("pixel_nm"),
    drift: bool = option("drift"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Predict U ± 1σ (MC dropout and, for a blend, the network-kernel disagreement, recalibrated on
    validation data) for an image, store samples, or a measured STM map (calibrated to the simulation
    frame, with out-of-distribution warnings)."""
    from ..learn import predict
    from ..learn.posterior import is_posterior_run

    measured = input.suffix.lower() in (".sxm", ".3ds", ".gwy", ".txt") or pixel_nm is not None or channel
    if is_posterior_run(run):  # posterior quantiles and the out-of-family flag (cli/infer.py)
        from .infer import predict_posterior_cmd

        return predict_posterior_cmd(run, input, key, json_out,
                                     measured={"channel": channel, "pixel_nm": pixel_nm, "drift_correction": drift}
                                     if measured else None)
    if measured:
        from ..learn.measured import predict_measured

        result = predict_measured(run, input, channel, pixel_nm=pixel_nm, drift_correction=drift)
        if json_out:
            emit_json(result.to_dict())
        else:
            typer.echo(str(result))
        return
    result = predict(run, input, key=key)
    preds = result if isinstance(result, list) else [result]
    if json_out:
        emit_json([p.to_dict() for p in preds])
        return
    for p in preds:
        typer.echo(str(p))


@app.command("baselines")
@friendly
def baselines_cmd(
    data: Path = typer.Argument(..., help="dataset store (.h5)"),
    split: str = option("split"),
    seed: int = option("seed"),
    target: list[str] = TargetOpt,
    run: Optional[Path] = typer.Option(None, help="use the split (and channels) of this run (to compare with it)"),
    channels: Optional[str] = option("channels"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """PCA + ridge, PCA + kernel ridge and peak-intensity + ridge baselines on the same split."""
    from ..learn import Run, run_baselines

    targets = check_targets(target)
    loaded = Run.load(run) if run is not None else None
    result = run_baselines(data, split=loaded.split if loaded else split, seed=seed, targets=targets,
                           channels=loaded.normalizer.channels if loaded else channels)
    if json_out:
        emit_json(result)
        return
    console.print(f"split {result['split']} (train/val/test = {result['n']['train']}/{result['n']['val']}/"
                  f"{result['n']['test']})", highlight=False)
    for name, r in result["results"].items():
        for t in result["targets"]:
            m = r[t]
            typer.echo(f"{name:18s} {t}: MAE {m['mae']:.4g}  RMSE {m['rmse']:.4g}  R² {m['r2']:.4f}")
