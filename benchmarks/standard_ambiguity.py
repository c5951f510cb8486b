"""How ambiguous is U in one FT-LDOS image of a store, per (filling, bias) curve, and with the biases stacked?

For every curve (all U at one filling and bias) each image's nearest neighbour among the *other* images
of the same curve (Euclidean distance of the normalised 64-px log images) is found, and the U distance
to it reported: 0.1 eV (the U step) where the curve is locally unambiguous, more where a distant U looks
alike.  Then the pixel kernel ridge (``moirestm.learn.baselines``) is scored per bias and on the
stacked biases (``channels="bias_ev"``) over several group-split seeds.

    python benchmarks/standard_ambiguity.py STORE.h5 [--seeds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def nearest_neighbour_gaps(store) -> list[dict]:
    """Per (filling, bias): mean and max U distance to the nearest other image of the curve."""
    from moirestm.learn.data import Normalizer

    keys = store.keys()
    params = [store.params(k) for k in keys]
    u = np.array([p["hubbard_u_ev"] for p in params])
    images = [np.asarray(store.image(k), np.float32) for k in keys]
    norm = Normalizer.fit(images, u[:, None], ["hubbard_u_ev"], 64)
    x = norm.transform_images(images).reshape(len(images), -1).numpy().astype(np.float64)
    curve = np.array([(p["filling"], p["bias_ev"]) for p in params])
    rows = []
    for nu, bias in sorted({tuple(c) for c in curve.tolist()}):
        m = np.where((curve[:, 0] == nu) & (curve[:, 1] == bias))[0]
        d = np.sum(x[m] ** 2, 1)[:, None] + np.sum(x[m] ** 2, 1)[None] - 2 * x[m] @ x[m].T
        np.fill_diagonal(d, np.inf)
        gap = np.abs(u[m][np.argmin(d, axis=1)] - u[m])
        rows.append({"filling": nu, "bias_ev": bias, "n": int(len(m)), "mean_gap_ev": float(gap.mean()),
                     "max_gap_ev": float(gap.max())})
    return rows


def kernel_ridge_by_input(path, seeds: int) -> list[dict]:
    """Pixel kernel ridge test MAE / R² per group seed: each bias alone, and the stacked biases."""
    from moirestm.learn import run_baselines
    from moirestm.learn.data import StackedStore, open_store

    store = open_store(path)
    biases = StackedStore(store, "bias_ev").values
    rows = []
    for seed in range(seeds):
        row = {"seed": seed}
        for bias in biases:
            view = _OneBias(store, bias)
            r = run_baselines(view, "group", seed=seed, which=("kernel_ridge",))["results"]["kernel_ridge"]
            row[f"bias {bias:+g} eV"] = (r["hubbard_u_ev"]["mae"], r["hubbard_u_ev"]["r2"])
        r = run_baselines(store, "group", seed=seed, which=("kernel_ridge",), channels="bias_ev")
        row["stacked"] = (r["results"]["kernel_ridge"]["hubbard_u_ev"]["mae"],
                          r["results"]["kernel_ridge"]["hubbard_u_ev"]["r2"])
        rows.append(row)
        print(row, flush=True)
    return rows


class _OneBias:
    """The samples of one bias only (store-like)."""

    def __init__(self, store, bias: float):
        self.store, self.path = store, None
        self._keys = [k for k in store.keys() if round(store.params(k)["bias_ev"], 9) == round(bias, 9)]

    def keys(self, status="ok"):
        return list(self._keys)

    def params(self, key):
        return self.store.params(key)

    def image(self, key):
        return self.store.image(key)

    def arrays(self, key, names=None):
        return self.store.arrays(key, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from moirestm.learn.data import open_store

    gaps = nearest_neighbour_gaps(open_store(args.store))
    for row in gaps:
        print(row)
    krr = kernel_ridge_by_input(args.store, args.seeds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"nearest_neighbour": gaps, "kernel_ridge": krr}, f, indent=1)


if __name__ == "__main__":
    main()
