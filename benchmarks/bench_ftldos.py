"""FT-LDOS benchmark: type-3 NUFFT vs the direct sum in the reference study's setting.

Setting: 3 x 3 tiled i = 9 moiré cells (9 x 1084 = 9756 point sources), 1003 x 1003 k-grid over
the reference window. The NUFFT is timed on the full grid. The direct sum
F(k) = sum_j w_j exp(-i k.r_j) is timed on a random subset of the k-points (default 2000) and
extrapolated linearly to all 1003^2 points (its cost is exactly proportional to the number of
k-points); the subset also gives the NUFFT error against the direct sum.

    .venv/bin/python benchmarks/bench_ftldos.py [--subset 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from moirestm.lattice import TBGLattice
from moirestm.observables.ftldos import default_window_nm, k_axes, point_amplitude


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=9)
    parser.add_argument("--tiling", type=int, default=3)
    parser.add_argument("--size", type=int, default=1003)
    parser.add_argument("--subset", type=int, default=2000, help="k-points timed for the direct sum")
    parser.add_argument("--threads", type=int, default=1, help="finufft threads")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    lat = TBGLattice(args.index)
    shifts = np.array([[i, j] for i in range(args.tiling) for j in range(args.tiling)]) @ lat.superlattice_nm
    xy = (lat.positions_nm[None, :, :2] + shifts[:, None, :]).reshape(-1, 2)
    xy -= 0.5 * (xy.min(axis=0) + xy.max(axis=0))
    w = np.random.default_rng(0).random(len(xy))
    kx, ky = k_axes(args.size, default_window_nm())

    nufft_s = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        amp = point_amplitude(xy, w, kx, ky, nthreads=args.threads)
        nufft_s.append(time.perf_counter() - t0)

    rng = np.random.default_rng(1)
    pick = rng.choice(args.size * args.size, size=args.subset, replace=False)
    kxg, kyg = np.meshgrid(kx, ky, indexing="xy")
    k = np.column_stack([kxg.ravel()[pick], kyg.ravel()[pick]])
    t0 = time.perf_counter()
    direct = np.empty(len(k), dtype=complex)
    for start in range(0, len(k), 500):
        direct[start:start + 500] = np.exp(-1j * (k[start:start + 500] @ xy.T)) @ w
    direct_subset_s = time.perf_counter() - t0
    direct_full_s = direct_subset_s * args.size**2 / args.subset
    err = np.max(np.abs(amp.ravel()[pick] - direct)) / np.max(np.abs(direct))
    result = {
        "points": len(xy), "k_grid": [args.size, args.size], "finufft_threads": args.threads,
        "nufft_s_best": min(nufft_s), "direct_subset_points": args.subset,
        "direct_subset_s": direct_subset_s, "direct_full_s_extrapolated": direct_full_s,
        "speedup": direct_full_s / min(nufft_s), "max_rel_error_vs_direct": float(err),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
