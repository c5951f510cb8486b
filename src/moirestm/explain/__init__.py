"""Explanation and analysis: attribution by peak region, dataset analysis, crossover U_c, HTML report.

Notebook API::

    from moirestm.explain import explain, analyze, build_report
    res = explain("runs/x", samples="test")          # Grad-CAM, guided backprop, integrated gradients
    an = analyze("data.h5", "runs/x/analysis")       # similarity, PCA, peak intensities, order parameters, U_c
    build_report("runs/x", "data.h5", "runs/x/report.html")

:mod:`.regions`, :mod:`.crossover` and :mod:`.analysis` are numpy-only; :mod:`.attribution`
(and hence :func:`explain`, :func:`build_report`) imports torch and captum when called.
"""

from .analysis import AnalysisResult, analyze
from .crossover import Crossover, estimate_crossover
from .regions import REGIONS, PeakRegions, peak_regions, peak_vectors, regions_for_sample


def explain(*args, **kwargs):
    """See :func:`moirestm.explain.attribution.explain` (imports torch lazily)."""
    from .attribution import explain as _explain

    return _explain(*args, **kwargs)


def build_report(*args, **kwargs):
    """See :func:`moirestm.explain.report.build_report` (imports torch lazily)."""
    from .report import build_report as _build

    return _build(*args, **kwargs)


__all__ = ["explain", "analyze", "build_report", "AnalysisResult", "Crossover", "estimate_crossover", "REGIONS",
           "PeakRegions", "peak_regions", "peak_vectors", "regions_for_sample"]
