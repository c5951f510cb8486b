"""Mean-field benchmarks (issue 6): SCF cost relative to eigh, iterations, U sweep, memory peak.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_meanfield.py [section ...]
Sections: iteration (i=9, 3x3 k, AFM start, U=4 eV), sweep (i=9 Gamma, U 0->6 eV step 0.1, up+down),
crossover (i=5 and i=9 staggered moment vs U at neutrality), memory (peak RSS, Gamma only, i=9 [i=31]).
Results are printed as Markdown and written to benchmarks/results/meanfield.json.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"


class EighTimer:
    """Wrap scipy.linalg.eigh inside moirestm.meanfield.scf to time the diagonalisations alone."""

    def __init__(self):
        import scipy.linalg as sla

        from moirestm.meanfield import scf

        self.scf, self.orig, self.seconds, self.calls = scf, sla.eigh, 0.0, 0
        timer = self

        class _Wrapped:
            def __getattr__(self, name):
                return getattr(sla, name)

            @staticmethod
            def eigh(*args, **kwargs):
                t = time.perf_counter()
                out = timer.orig(*args, **kwargs)
                timer.seconds += time.perf_counter() - t
                timer.calls += 1
                return out

        scf.sla = _Wrapped()

    def reset(self):
        self.seconds, self.calls = 0.0, 0


def bench_iteration(index=9, kgrid=3, u_ev=4.0):
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.meanfield import Interaction, prepare, solve

    timer = EighTimer()
    tb = TightBinding(TBGLattice(index))
    inter = Interaction(hubbard_u_ev=u_ev)
    t = time.perf_counter()
    setup = prepare(tb, inter, kgrid)
    t_setup = time.perf_counter() - t
    timer.reset()
    its = []
    sol = solve(tb, inter, kgrid=kgrid, start="afm", setup=setup,
                callback=lambda it, res, f: its.append((time.perf_counter(), res, f)))
    loop = sol.wall_time_s
    row = {
        "index": index, "n_sites": tb.n_sites, "kgrid": kgrid, "n_kpoints": len(setup.kpoints), "u_ev": u_ev,
        "converged": bool(sol.converged), "iterations": sol.iterations, "solve_s": loop, "setup_s": t_setup,
        "eigh_s": timer.seconds, "eigh_calls": timer.calls, "ratio_total_to_eigh": loop / timer.seconds,
        "per_iteration_s": loop / sol.iterations, "eigh_per_iteration_s": timer.seconds / sol.iterations,
        "staggered_magnetization": sol.orders()["staggered_magnetization"],
        "max_local_moment": sol.orders()["max_local_moment"], "final_residual": float(sol.residuals[-1]),
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    print(f"\n### SCF iteration cost, i={index} ({tb.n_sites} sites), {kgrid}x{kgrid} k ({len(setup.kpoints)} "
          f"reduced), U={u_ev} eV, AFM start")
    for k, v in row.items():
        print(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    return row


def bench_sweep(index=9, kgrid=1, step=0.1, u_max=6.0):
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.meanfield import Interaction, prepare, sweep_u

    tb = TightBinding(TBGLattice(index))
    inter = Interaction()
    setup = prepare(tb, inter, kgrid)
    u = np.round(np.arange(0.0, u_max + 1e-9, step), 10)
    t = time.perf_counter()
    res = sweep_u(tb, inter, u, start="afm", kgrid=kgrid, setup=setup)
    wall = time.perf_counter() - t
    its = {d: [s.iterations for s in p] for d, p in res.passes.items()}
    nconv = {d: int(sum(s.converged for s in p)) for d, p in res.passes.items()}
    row = {"index": index, "kgrid": kgrid, "n_u": len(u), "wall_s": wall, "mean_iterations": res.mean_iterations,
           "mean_iterations_up": float(np.mean(its["up"])), "mean_iterations_down": float(np.mean(its["down"])),
           "max_iterations": int(max(max(v) for v in its.values())), "converged": nconv,
           "u_ev": u.tolist(), "staggered": [s.orders()["staggered_magnetization"] for s in res.best],
           "max_local_moment": [s.orders()["max_local_moment"] for s in res.best]}
    print(f"\n### U sweep 0 -> {u_max} eV, step {step}, i={index}, {kgrid}x{kgrid} k, up + down continuation")
    for k in ("wall_s", "mean_iterations", "mean_iterations_up", "mean_iterations_down", "max_iterations",
              "converged"):
        print(f"- {k}: {row[k]}")
    return row


def crossover(index, u_values, kgrid=1):
    """Staggered moment vs U (continuation up and down); U_c = U of the steepest rise of m_s."""
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.meanfield import Interaction, prepare, sweep_u

    tb = TightBinding(TBGLattice(index))
    inter = Interaction()
    setup = prepare(tb, inter, kgrid)
    res = sweep_u(tb, inter, u_values, start="afm", kgrid=kgrid, setup=setup)
    ms = np.array([s.orders()["staggered_magnetization"] for s in res.best])
    mmax = np.array([s.orders()["max_local_moment"] for s in res.best])
    u = res.u_ev
    slope = np.gradient(ms, u)
    uc = float(u[int(np.argmax(slope))])
    onset = float(u[np.argmax(ms > 1e-3)]) if np.any(ms > 1e-3) else float("nan")
    return {"index": index, "kgrid": kgrid, "u_ev": u.tolist(), "staggered": ms.tolist(),
            "max_local_moment": mmax.tolist(), "uc_steepest_ev": uc, "onset_ev_ms_gt_1e-3": onset,
            "mean_iterations": res.mean_iterations}


def bench_crossover(kgrid=1):
    rows = []
    for index in (5, 9):
        u = np.round(np.arange(0.0, 8.0 + 1e-9, 0.5), 10)
        row = crossover(index, u, kgrid)
        rows.append(row)
        print(f"\n### Crossover i={index}, {kgrid}x{kgrid} k, eps=10: onset (m_s > 1e-3) at U = "
              f"{row['onset_ev_ms_gt_1e-3']} eV, steepest rise at U = {row['uc_steepest_ev']} eV")
        print("| U (eV) | m_s | max m_i |\n|---|---|---|")
        for uu, m, mm in zip(row["u_ev"], row["staggered"], row["max_local_moment"]):
            print(f"| {uu:.2f} | {m:.4f} | {mm:.4f} |")
    return rows


def _memory_child(index, iterations):
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.meanfield import Interaction, solve

    t = time.perf_counter()
    tb = TightBinding(TBGLattice(index))
    sol = solve(tb, Interaction(hubbard_u_ev=4.0), kgrid=1, start="afm", max_iterations=iterations)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"index": index, "n_sites": tb.n_sites, "iterations": sol.iterations, "peak_rss_gb": peak_gb,
                      "wall_s": time.perf_counter() - t}))


def bench_memory(indices=(9,), iterations=2):
    rows = []
    for index in indices:
        out = subprocess.run([sys.executable, __file__, "_memory", str(index), str(iterations)],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"- memory peak (RSS, whole process), i={index} ({row['n_sites']} sites), Gamma only, "
              f"{row['iterations']} SCF iterations: {row['peak_rss_gb']:.2f} GB ({row['wall_s']:.0f} s)")
    return rows


SECTIONS = {"iteration": bench_iteration, "sweep": bench_sweep, "crossover": bench_crossover,
            "memory": bench_memory}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_memory":
        _memory_child(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    chosen = sys.argv[1:] or ["iteration", "memory", "crossover", "sweep"]
    OUT.mkdir(exist_ok=True)
    path = OUT / "meanfield.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in chosen:
        if name.startswith("memory="):
            results["memory"] = bench_memory(tuple(int(i) for i in name.split("=")[1].split(",")))
        else:
            results[name] = SECTIONS[name]()
        path.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {path}")
