"""Solver speed (issue 14), measured in one run: a converged solve against the float64 eigh floor it
replaces, iterations per point along a 0.1 eV U chain, and the dense-grid LDOS against a Gamma-only solve.

    python benchmarks/bench_solver_speed.py [--i9]

Writes benchmarks/results/solver-speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.linalg as sla

from moirestm.dataset.sweep import resolve_magic_distance
from moirestm.hamiltonian import TightBinding, monkhorst_pack
from moirestm.lattice import TBGLattice
from moirestm.meanfield import Interaction, extrapolated_start, solve
from moirestm.meanfield.scf import prepare
from moirestm.observables import site_ldos


def eigh_seconds(tb, nk: int, repeats: int = 2) -> float:
    """Float64 time of one SCF iteration without tricks: eigh of both spins at every TR-reduced k-point."""
    k, _ = monkhorst_pack(tb.structure.reciprocal_nm, nk)
    mats = [tb.hamiltonian(kk, dense=True) for kk in k]
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _spin in range(2):
            for h in mats:
                sla.eigh(h.copy(), driver="evd", overwrite_a=True, check_finite=False)
        best = min(best, time.perf_counter() - t0)
    return best


def solve_vs_floor(tb, nk: int, u: float, filling: float) -> dict:
    per_iteration = eigh_seconds(tb, nk)
    t0 = time.perf_counter()
    sol = solve(tb, Interaction(hubbard_u_ev=u), filling=filling, kgrid=nk, start="afm")
    wall = time.perf_counter() - t0
    floor = sol.iterations * per_iteration
    return {"scf_kgrid": nk, "hubbard_u_ev": u, "filling": filling, "converged": bool(sol.converged),
            "iterations": sol.iterations, "wall_s": wall, "eigh_floor_s": floor, "ratio_to_floor": wall / floor,
            "kpoint_symmetry": sol.params["kpoint_symmetry"], "rungs": [r["rung"] for r in sol.params["ladder"]]}


def u_chain(tb, nk: int, filling: float, u_values) -> dict:
    setup = prepare(tb, Interaction(hubbard_u_ev=0.0), nk)
    chain, its, plain_its = [], [], []
    for u in u_values:
        start = extrapolated_start(chain[-2:], u) if chain else "afm"
        sol = solve(tb, Interaction(hubbard_u_ev=u), filling=filling, kgrid=nk, start=start, setup=setup)
        if chain:
            its.append(sol.iterations)
            plain = solve(tb, Interaction(hubbard_u_ev=u), filling=filling, kgrid=nk, start=chain[-1], setup=setup)
            plain_its.append(plain.iterations)
        chain.append(sol)
    return {"scf_kgrid": nk, "filling": filling, "u_ev": [float(u) for u in u_values],
            "iterations_extrapolated": its, "iterations_previous_only": plain_its,
            "mean_extrapolated": float(np.mean(its)), "mean_previous_only": float(np.mean(plain_its)),
            "max_extrapolated": int(max(its))}


def ldos_vs_gamma(tb, ldos_kgrid: int) -> dict:
    t0 = time.perf_counter()
    sol = solve(tb, Interaction(hubbard_u_ev=0.0), filling=0.0, kgrid=1, start="afm")
    gamma_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ld = site_ldos(sol, [0.0], broadening_ev=0.005, ldos_kgrid=ldos_kgrid)
    ldos_s = time.perf_counter() - t1
    return {"gamma_solve_s": gamma_s, "gamma_iterations": sol.iterations, "ldos_kgrid": ldos_kgrid,
            "ldos_s": ldos_s, "ratio": ldos_s / gamma_s, "n_kpoints": ld.params["n_kpoints"],
            "kpoint_symmetry": ld.params["kpoint_symmetry"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--i9", action="store_true", help="also time i = 9 (minutes)")
    args = ap.parse_args()
    out = {}
    d5, _ = resolve_magic_distance(5)
    tb5 = TightBinding(TBGLattice(5, d5))
    out["i5_solve_vs_floor"] = [solve_vs_floor(tb5, 3, 4.0, 0.0), solve_vs_floor(tb5, 3, 4.0, -2.0)]
    out["i5_u_chain"] = u_chain(tb5, 3, 0.0, np.round(np.arange(4.0, 2.95, -0.1), 2))
    out["i5_ldos12_vs_gamma"] = ldos_vs_gamma(tb5, 12)
    if args.i9:
        d9, _ = resolve_magic_distance(9)
        tb9 = TightBinding(TBGLattice(9, d9))
        out["i9_ldos12_vs_gamma"] = ldos_vs_gamma(tb9, 12)
        out["i9_solve_vs_floor"] = [solve_vs_floor(tb9, 3, 4.0, 0.0)]
    path = Path(__file__).parent / "results" / "solver-speed.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
