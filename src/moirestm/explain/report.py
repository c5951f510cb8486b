"""One self-contained HTML report of a run: data, training, metrics, attribution, analysis.

Every figure is a PNG embedded as a base64 ``data:`` URI, so the single ``.html`` file can be
mailed or archived; nothing is fetched when it is opened.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..errors import MoireSTMError
from ..io import HTML, check_output, write_json, write_text
from .attribution import METHOD_LABELS, METHODS
from .regions import REGION_LABELS, REGIONS

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} td,th{border:1px solid #ccc;padding:.25em .6em;
     text-align:right} th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555} .note{color:#a33} code{background:#f5f5f5;padding:0 .2em}
"""


def embed_png(path: str | Path) -> str:
    """``data:image/png;base64,...`` URI of a PNG file (checked by its signature)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise MoireSTMError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(float(v)) else f"{float(v):.{digits}g}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: str | Path | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="note">figure missing: {html.escape(caption)}</p>'
    return (f'<figure><img src="{embed_png(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def plot_history(history: list[dict], path: Path) -> Path | None:
    """Save :func:`moirestm.plot.history` (training loss and validation MAE per epoch) to ``path``."""
    if not history:
        return None
    from ..plot import history as draw, save_figure

    return Path(save_figure(draw(history)[0].figure, path, overwrite=True, dpi=100))


#: A parameter with more distinct values than this is summarised by its range (draws from priors).
MAX_LISTED_VALUES = 12


def _values_summary(values: list) -> str:
    """The distinct values, or "n values from a to b" when there are many numeric ones."""
    distinct = sorted({str(v) for v in values})
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(distinct) <= MAX_LISTED_VALUES or len(numeric) < len(values):
        return ", ".join(distinct)
    return f"{len(distinct)} values from {min(numeric):.4g} to {max(numeric):.4g}"


def _dataset_section(st, analysis) -> str:
    table = st.table(status="ok")
    n_failed = len(st.keys(status="failed"))
    u = np.array([float(r.get("hubbard_u_ev", np.nan)) for r in table])
    rows = [("usable samples", len(table)), ("failed samples", n_failed),
            ("U values", f"{len(np.unique(u))} from {np.nanmin(u):.3g} to {np.nanmax(u):.3g} eV")]
    for name in analysis.group_by:
        rows.append((name, _values_summary([r.get(name) for r in table])))
    first = table[0]
    if "index" in first:
        from ..lattice.tbg import atom_count, twist_angle_deg

        rows.append(("TBG cell", f"i = {first['index']}: θ = {twist_angle_deg(int(first['index'])):.3f}°, "
                                 f"{atom_count(int(first['index']))} atoms"))
    image = st.image(first["key"])
    rows.append(("image", f"{image.shape[0]} × {image.shape[1]} float32"))
    try:
        ax = st.arrays(first["key"], ["kx_nm", "ky_nm"])
        rows.append(("k window (nm⁻¹)", f"kx ∈ [{ax['kx_nm'][0]:.3g}, {ax['kx_nm'][-1]:.3g}], "
                                         f"ky ∈ [{ax['ky_nm'][0]:.3g}, {ax['ky_nm'][-1]:.3g}]"))
    except (KeyError, MoireSTMError):
        pass
    try:
        sweep = st.sweep_params
        rows.append(("sweep", sweep.get("name") or sweep.get("summary", {}).get("name", "")))
    except (AttributeError, KeyError, ValueError):
        pass
    return "<h2>Dataset</h2>" + _table(["", ""], rows)


def _metrics_section(run, metrics: dict, baselines: dict | None, trivial: dict, parity: Path | None,
                     curves: Path | None) -> str:
    parts = ["<h2>Training</h2>"]
    best = run.best
    parts.append(_table(["model", "parameters", "split", "best epoch", "stopped", "time to best (s)"],
                        [[run.name, best.get("n_parameters"), run.split.kind, best.get("epoch"),
                          best.get("stopped"), best.get("time_s")]]))
    parts.append(_figure(curves, "Training loss and validation MAE per epoch."))
    parts.append("<h2>Metrics on the held-out test split</h2>")
    rows = []
    for name, m in metrics["targets"].items():
        cov = m.get("coverage", {})
        rows.append([f"{run.name} ({name})", m["mae"], m["rmse"], m["r2"], m["n"],
                     cov.get("within_1sigma"), cov.get("within_2sigma")])
        for half, c in m.get("components", {}).items():
            rows.append([f"{half} half alone ({name})", c["mae"], c["rmse"], c["r2"], c["n"], None, None])
    for name, m in trivial.items():
        rows.append([f"training mean ({name})", m["mae"], m["rmse"], m["r2"], m["n"], None, None])
    if baselines:
        for bname, res in baselines.get("results", {}).items():
            for name in metrics["targets"]:
                if name in res:
                    m = res[name]
                    rows.append([f"{bname} ({name})", m["mae"], m["rmse"], m["r2"], m["n"], None, None])
    parts.append(_table(["model", "MAE", "RMSE", "R²", "n", "within 1σ", "within 2σ"], rows))
    if run.kernel is not None:
        parts.append(f"<p>Prediction: {run.kernel.describe()}; the rows 'half alone' score each half "
                     "by itself.</p>")
    parts.append("<p>Baselines are fitted on the same split (training part) and scored on the same test "
                 "samples; the training mean is the trivial predictor.</p>")
    parts.append(_figure(parity, "Parity plot of the test split (prediction ± calibrated 1σ)."))
    return "".join(parts)


def _attribution_section(expl, u_c: float, quantity: str = "the U prediction") -> str:
    parts = ["<h2>Attribution</h2>",
             f"<p>Attribution of {quantity} on the model input grid. Regions are placed from the "
             "lattice: central moiré peaks (first moiré shell), Bragg peaks of both layers (rotated by ∓θ/2) "
             "with their first-shell moiré satellites, and everything else. Shares are fractions of the total "
             "absolute attribution; the trend statistic is Spearman ρ between U and "
             "bragg / (bragg + moiré).</p>"]
    areas = expl.area_fractions
    parts.append(_table(["region", "area fraction"], [[REGION_LABELS[r], areas.get(r)] for r in REGIONS]))
    rows = []
    for method, t in expl.trends.items():
        lo, hi = t.get("shares_at_min_u", {}), t.get("shares_at_max_u", {})
        rows.append([METHOD_LABELS[method], t["n"], lo.get("moire"), lo.get("bragg"), hi.get("moire"),
                     hi.get("bragg"), t["rho"], t["p_value"], t["finding"]])
    parts.append(_table(["method", "n", "moiré share (min U)", "Bragg share (min U)", "moiré share (max U)",
                         "Bragg share (max U)", "ρ", "p", "finding"], rows))
    parts.append(_figure(expl.files.get("overlays"), "Attribution maps over the FT-LDOS image (log scale); "
                         "circles: central moiré peaks (cyan), Bragg peaks (green), satellites (yellow)."))
    cap = "Share of |attribution| per region vs U (mean ± std over samples)"
    if math.isfinite(u_c):
        cap += f"; dashed line: mean-field crossover U_c = {u_c:.2f} eV"
    parts.append(_figure(expl.files.get("shares"), cap + "."))
    return "".join(parts)


def _analysis_section(an) -> str:
    s = an.similarity_stats
    parts = ["<h2>Image similarity and PCA</h2>",
             _table(["images", "min", "mean", "median", "adjacent in U"],
                    [["raw", s["min"], s["mean"], s["median"], s["adjacent_mean"]],
                     ["mean-subtracted", s["mean_subtracted"]["min"], s["mean_subtracted"]["mean"],
                      s["mean_subtracted"]["median"], s["mean_subtracted"]["adjacent_mean"]]]),
             "<p>Cosine similarity of the flattened images (n = %d). The reference study reports &gt; 99.98 %% "
             "similarity between raw images.</p>" % s["n"],
             _figure(an.figures.get("similarity"), "Cosine-similarity matrix of the images: one block per "
                     "curve (e.g. filling), ordered by U within each block."),
             _figure(an.figures.get("pca"), "PCA of log1p(image / median mean), coloured by U."),
             "<h2>Peak intensities</h2>",
             _figure(an.figures.get("intensities"), "Mean FT-LDOS intensity inside each peak region vs U."),
             "<h2>Order parameters and crossover</h2>"]
    if an.order_parameters:
        parts.append(f"<p>Headline U<sub>c</sub> = <b>{_fmt(an.u_c, 3)} eV</b> from "
                     f"<code>{html.escape(an.u_c_parameter)}</code>: the median over curves of the "
                     + {"derivative": "maximum of dm/dU of a Gaussian-kernel local-linear smooth of m(U)",
                        "tanh": "tanh-fit centre of m(U)",
                        "onset": "onset (10 % of the total change) of the smoothed m(U)"}[an.u_c_method]
                     + "; the onset and the tanh fit m = a + b tanh((U − U<sub>c</sub>)/w) are given for "
                       "comparison.</p>")
        rows = []
        for g, d in an.crossovers.items():
            c = d.get(an.u_c_parameter)
            if c is not None:
                rows.append([g, c.u_c_derivative, c.u_c_onset, c.u_c_tanh, c.u_c_tanh_sigma, c.width, c.bandwidth,
                             c.note])
        parts.append(_table(["curve", "U_c (max dm/dU)", "U_c (onset)", "U_c (tanh)", "σ (tanh)", "width w",
                             "bandwidth", "note"], rows))
        parts.append(_figure(an.figures.get("order_parameters"), "Mean-field order parameters vs U; dashed: "
                             "headline U_c, dotted: per-curve estimates."))
    for note in an.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    return "".join(parts)


def _trivial_baseline(run, st, keys_test: list[str]) -> dict:
    from ..learn import regression_metrics
    from ..learn.data import targets_of

    out = {}
    y_train = targets_of(st, run.split.train, run.targets)
    y_test = targets_of(st, keys_test, run.targets)
    for j, name in enumerate(run.targets):
        out[name] = regression_metrics(y_test[:, j], np.full(len(keys_test), y_train[:, j].mean()))
    return out


def build_report(run_dir: str | Path, store_path: str | Path | None = None, out_html: str | Path | None = None,
                 *, samples: str | Sequence[str] = "test", max_samples: int = 24,
                 methods: Sequence[str] = METHODS, n_steps: int = 32, baselines: bool = True,
                 analysis=None, title: str | None = None, posterior=None, progress=None,
                 overwrite: bool = False) -> Path:
    """Write the self-contained HTML report of a run and return its path.

    Parameters
    ----------
    run_dir : run directory (or a loaded :class:`moirestm.learn.Run`).
    store_path : dataset store; default the run's training store.
    out_html : output file; default ``<run_dir>/report.html``.
    samples, max_samples, methods, n_steps : passed to :func:`moirestm.explain.attribution.explain`.
    baselines : also fit the classical baselines (PCA + ridge, pixel kernel ridge, peak + ridge) on the
        run's split.
    analysis : a precomputed :class:`~moirestm.explain.analysis.AnalysisResult` with figures (else computed).
    posterior : a posterior run (or its directory) trained on the same split: the report then explains the
        quantity it reports (the posterior mean of U) and adds its calibration, identifiability and
        out-of-family section (:func:`~moirestm.explain.posterior_report.posterior_section`).
    progress : optional callable ``progress(message)`` for status lines.
    overwrite : replace ``out_html`` (and the ``.json`` beside it) even if it holds another kind of file.
    """
    from ..learn import Run, evaluate, open_store
    from .analysis import analyze
    from .attribution import explain

    say = progress or (lambda msg: None)
    run = run_dir if isinstance(run_dir, Run) else Run.load(run_dir)
    store = store_path or run.store
    if store is None:
        raise MoireSTMError("the run records no store; pass the store path")
    st = open_store(store)
    out_html = Path(out_html) if out_html is not None else Path(run.path) / "report.html"
    if run.path is not None and out_html.resolve().parent == Path(run.path).resolve():
        overwrite = True  # the run folder's own report
    check_output(out_html, HTML, overwrite)
    check_output(out_html.with_suffix(".json"), REPORT_DATA_KIND, overwrite)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moirestm-report-") as tmp:
        tmp = Path(tmp)
        if analysis is None or not analysis.figures:
            say("analysing the dataset")
            analysis = analyze(st, tmp / "analysis")
        say("evaluating the run")
        metrics = evaluate(run, st, part="test", out=tmp / "eval", plots=True)
        view = open_store(st, run.normalizer.channels)  # stacked samples if the run stacks channels
        keys_test = run.split.keys("test") if metrics["part"] == "test" else view.keys(status="ok")
        trivial = _trivial_baseline(run, view, keys_test)
        base = None
        if baselines:
            say("fitting baselines")
            try:
                from ..learn import run_baselines

                base = run_baselines(view, split=run.split, targets=run.targets,
                                     which=("pca_ridge", "kernel_ridge", "peak_ridge"))
            except MoireSTMError as exc:
                base = {"results": {}, "error": str(exc)}
        say("computing attributions")
        expl = explain(run if posterior is None else posterior, st, samples=samples, out=tmp / "explain",
                       methods=methods, max_samples=max_samples, n_steps=n_steps, u_c=analysis.u_c)
        posterior_html, posterior_numbers = "", None
        if posterior is not None:
            from .posterior_report import posterior_section

            say("calibrating the posterior")
            posterior_html, posterior_numbers = posterior_section(posterior, st, tmp=tmp / "posterior")
        curves = plot_history(run.history, tmp / "history.png")
        body = [f"<h1>{html.escape(title or 'moirestm report: learning U from FT-LDOS images')}</h1>",
                f"<p>Run <code>{html.escape(str(run.path))}</code>, store <code>{html.escape(str(store))}</code>, "
                f"moirestm {html.escape(__version__)}, generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>",
                _dataset_section(st, analysis),
                _metrics_section(run, metrics, base, trivial, Path(metrics.get("out", tmp)) / "parity.png", curves),
                posterior_html,
                _attribution_section(expl, analysis.u_c, "the posterior mean of U" if posterior is not None
                                     else "the U prediction"),
                _analysis_section(analysis)]
        if base and base.get("error"):
            body.append(f'<p class="note">baselines failed: {html.escape(base["error"])}</p>')
        body.append(f"<p><small>report built in {time.perf_counter() - t0:.1f} s</small></p>")
        doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               f'<meta name="generator" content="moirestm {html.escape(__version__)}">'
               f"<title>{html.escape(title or 'moirestm report')}</title><style>{CSS}</style></head>"
               f"<body>{''.join(body)}</body></html>\n")
    write_text(out_html, doc, HTML, overwrite)
    metrics = {k: v for k, v in metrics.items() if k not in ("out", "plots")}
    write_json(out_html.with_suffix(".json"),
               {"metrics": metrics, "trivial_baseline": trivial, "baselines": base, "explain": expl.summary(),
                "analysis": analysis.summary(), "posterior": posterior_numbers}, REPORT_DATA_KIND, overwrite)
    return out_html


#: Kind of the ``.json`` written beside the report.
REPORT_DATA_KIND = "ReportData"


__all__ = ["build_report", "embed_png", "plot_history"]
