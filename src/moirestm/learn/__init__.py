"""Learning U (and other parameters) from FT-LDOS images, in plain PyTorch.

Notebook API::

    from moirestm.learn import train, Run, evaluate, predict, run_baselines
    run = train("data.h5", model="cnn", split="group", out="runs/x")   # CNN + pixel kernel ridge blend
    run = Run.load("runs/x")
    metrics = evaluate(run)                 # held-out test split of the training store
    p = predict(run, "image.npy")           # U ± sigma (MC dropout + disagreement, recalibrated)
    table = run_baselines("data.h5", split="group")
    post = infer("sbi.zarr", "runs/p")      # posterior over U and the drawn unknowns (sbi NPE), draw split
    summary = predict_posterior(post, image)   # one 2-D image: median, mean, 68/95 % intervals, ood score
    report = evaluate_posterior(post)       # coverage, SBC, identifiability on the held-out draws

Imports torch; the physics modules never import this package.
"""

from .augment import PRESETS, AugmentConfig, Augmenter
from .baselines import run_baselines
from .data import ImageDataset, Normalizer, Split, make_split, open_store
from .evaluate import evaluate, regression_metrics
from .models import MODELS, build_model
from .predict import Prediction, predict
from .kernel import KernelBlend, PixelKernelRidge
from .run import Run, RunInfo
from .train import TrainConfig, attach_kernel, train
from .posterior import PosteriorRun, infer, predict_posterior
from .calibration import evaluate_posterior

__all__ = ["train", "attach_kernel", "infer", "PosteriorRun", "predict_posterior", "evaluate_posterior", "Run",
           "RunInfo", "TrainConfig", "KernelBlend", "PixelKernelRidge", "evaluate", "predict", "Prediction",
           "run_baselines", "make_split", "Split", "Normalizer", "ImageDataset", "open_store", "Augmenter",
           "AugmentConfig", "PRESETS", "build_model", "MODELS", "regression_metrics"]
