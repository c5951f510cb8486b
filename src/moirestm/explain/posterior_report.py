"""Report section of a posterior run: coverage, SBC, identifiability, out-of-family detection and
example posteriors beside the point model's answers on the same held-out draws.

:func:`posterior_section` returns the HTML section (for :func:`moirestm.explain.report.build_report`
or any page); :func:`build_posterior_report` writes it as a self-contained page.
"""

from __future__ import annotations

import html
import tempfile
import time
from pathlib import Path
from typing import Any


from .. import __version__
from ..io import HTML, check_output, write_text
from .report import CSS, _figure, _fmt, _table


def posterior_section(run: Any, store: Any = None, n_examples: int = 6, tmp: Path | None = None) -> tuple[str, dict]:
    """HTML of the posterior section and the numbers it shows (``{"evaluation", "ood"}``)."""
    from ..learn.calibration import evaluate_posterior
    from ..learn.data import open_store
    from ..learn.ood import ood_detection
    from ..learn.posterior import CALIBRATED_90, PosteriorRun, predict_source

    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    with tempfile.TemporaryDirectory(prefix="moirestm-posterior-") as own:
        directory = Path(tmp or own)
        ev = evaluate_posterior(run, store=None, part="test", out=directory / "posterior-eval")
        ood = ood_detection(run, store=store)
        params = ev["parameters"]
        rows = [[n, _fmt(m["mae"]), _fmt(m["rmse"]),
                 *(f"{m['coverage'][k]:.2f}" + ("" if m["coverage_se"][k] is None else f" ± {m['coverage_se'][k]:.2f}")
                   for k in ("0.5", "0.68", "0.9", "0.95")),
                 _fmt(m.get("sbc_ks_p", float("nan")), 3), _fmt(m.get("sbc_ks_p_pooled_images", float("nan")), 3)]
                for n, m in params.items()]
        parts = [f"<h2>Posterior over U and the unknowns ({html.escape(run.config.get('flow', ''))} flow, "
                 f"{len(run.split.test)} held-out images of {len(run.split.held_out.get('test', []))} held-out draws)</h2>",
                 _table(["parameter", "median MAE", "RMSE", "50 %", "68 %", "90 %", "95 %",
                         f"SBC KS p ({ev['n_solves']} solves)", "all images as if independent (too strict)"],
                        rows)]
        lo, hi = CALIBRATED_90
        for line in ev["warnings"]:
            parts.append(f'<p class="note">warning: {html.escape(line)}</p>')
        if ev["point"]:
            p = ev["point"]
            parts.append(f"<p>Point model ({html.escape(p['model'])}) on the same draws: MAE {_fmt(p['mae'])} eV, "
                         f"RMSE {_fmt(p['rmse'])} eV; split-conformal 90 % interval coverage "
                         f"{p['conformal_coverage']['0.9']:.2f} (target band {lo}-{hi}).</p>")
        ident = ev["identifiability"]
        iu = ident["identifiable_u"]
        parts.append("<p>Identifiability (" + html.escape(ident["definition"]) + "): " +
                     (f"U identifiable for {iu['low']:.2f}-{iu['high']:.2f} eV, posterior-median MAE there "
                      f"{_fmt(iu['u_mae'])} eV." if iu else "U is identifiable in no U bin.") +
                     " Median contraction: " + ", ".join(f"{n} {v:.2f}" for n, v in ident["contraction"].items()) +
                     "; mean posterior correlation with U: " +
                     ", ".join(f"{n} {v:+.2f}" for n, v in ident["corr_u"].items()) + ".</p>")
        plots = ev.get("plots", {})
        for name, caption in (("coverage", "empirical vs nominal coverage of central intervals"),
                              ("sbc_ranks", "SBC rank histograms (grey: +-2 sd of a uniform histogram, with the solves as the "
                                             "independent samples)"),
                              ("median_vs_truth", "posterior median with 68 % / 95 % intervals vs truth"),
                              ("contraction", "contraction (prior sd / posterior sd) per bin of true U")):
            if name in plots:
                parts.append(_figure(plots[name], caption))
        orows = [["test draws (false alarms)", ood["false_alarm_test"]["n"], f"{ood['false_alarm_test']['flagged']:.3f}"]]
        orows += [[n, s["n"], f"{s['flagged']:.3f}"] for n, s in ood["sets"].items()]
        parts += [f"<h3>Out-of-family detection (threshold {ood['threshold']:.3g}, 5 % false alarms on validation draws)</h3>",
                  _table(["set", "n", "flagged"], orows)]
        st = open_store(store if store is not None else run.store)
        keys = run.split.test[:: max(1, len(run.split.test) // n_examples)][:n_examples]
        point_run = Path(run.path) / "point" if run.path is not None else None
        point = None
        if point_run is not None and point_run.is_dir():
            from ..learn import Run

            point = Run.load(point_run).predict([st.image(k) for k in keys])
        erows = []
        for i, k in enumerate(keys):
            r = predict_source(run, st.path if hasattr(st, "path") else st, key=k)[0]
            u = r["hubbard_u_ev"]
            erows.append([k, _fmt(st.params(k)["hubbard_u_ev"], 3), f"{u['median']:.3f}",
                          f"{u['q16']:.3f}-{u['q84']:.3f}", f"{u['q025']:.3f}-{u['q975']:.3f}",
                          "-" if point is None else f"{point[0][i, 0]:.3f} +- {point[1][i, 0]:.3f}",
                          "yes" if r["ood"] else "no"])
        parts += ["<h3>Example posteriors beside the point model (held-out draws)</h3>",
                  _table(["sample", "true U", "median", "68 %", "95 %", "point blend", "OOD"], erows)]
    return "".join(parts), {"evaluation": {k: v for k, v in ev.items() if k != "plots"}, "ood": ood}


def build_posterior_report(run: Any, out_html: str | Path, store: Any = None, overwrite: bool = False) -> Path:
    """Write the posterior section as a self-contained HTML page and return its path."""
    out_html = Path(out_html)
    check_output(out_html, HTML, overwrite)
    body, _ = posterior_section(run, store)
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f'<meta name="generator" content="moirestm {html.escape(__version__)}">'
           f"<title>moirestm posterior report</title><style>{CSS}</style></head><body>"
           f"<h1>moirestm posterior report</h1><p>generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>{body}"
           "</body></html>\n")
    write_text(out_html, doc, HTML, overwrite)
    return out_html


__all__ = ["posterior_section", "build_posterior_report"]
