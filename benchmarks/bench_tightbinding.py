"""Tight-binding benchmark: neighbour list + H build, H(k) per k-point, and the eigh reference floor.

Run: `.venv/bin/python benchmarks/bench_tightbinding.py` (prints a Markdown section for docs/benchmarks.md).
"""

from __future__ import annotations

import os
import platform
import time

import scipy.linalg as sla
from threadpoolctl import threadpool_info

from moirestm.hamiltonian import TightBinding
from moirestm.lattice import TBGLattice


def best_of(func, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    lat31 = TBGLattice(31)
    t_build31 = best_of(lambda: TightBinding(lat31), 3)
    tb31 = TightBinding(lat31)
    lat9 = TBGLattice(9)
    t_build9 = best_of(lambda: TightBinding(lat9), 5)
    tb9 = TightBinding(lat9)
    k = lat9.high_symmetry_points()["M"] * 0.37
    t_sparse = best_of(lambda: tb9.hamiltonian(k), 20)
    t_dense = best_of(lambda: tb9.hamiltonian(k, dense=True), 20)
    h = tb9.hamiltonian(k, dense=True)
    h0 = tb9.hamiltonian((0.0, 0.0), dense=True)
    t_eigh_c = best_of(lambda: sla.eigh(h, driver="evd"), 5)
    t_eigh_r = best_of(lambda: sla.eigh(h0, driver="evd"), 5)
    blas = ", ".join(sorted({f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)" for i in threadpool_info()}))
    print("## Tight binding (issue 2)\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; BLAS: {blas}.\n")
    print("| quantity | wall time | ratio |")
    print("|---|---|---|")
    print(f"| i=31 (11908 atoms, {tb31.n_hoppings} hoppings): neighbour list + sparse H blocks | {t_build31:.3f} s | target ≤ 2 s |")
    print(f"| i=9 (1084 atoms): neighbour list + blocks | {t_build9 * 1e3:.1f} ms | |")
    print(f"| i=9 sparse H(k) per k-point | {t_sparse * 1e3:.2f} ms | {t_sparse / t_eigh_c:.3f} × complex eigh |")
    print(f"| i=9 dense H(k) per k-point | {t_dense * 1e3:.2f} ms | {t_dense / t_eigh_c:.3f} × complex eigh (target ≤ 50 ms) |")
    print(f"| i=9 `eigh(driver='evd')`, complex H(k) — reference floor | {t_eigh_c * 1e3:.1f} ms | 1 |")
    print(f"| i=9 `eigh(driver='evd')`, real H(Γ) | {t_eigh_r * 1e3:.1f} ms | {t_eigh_r / t_eigh_c:.2f} × complex |")


if __name__ == "__main__":
    main()
