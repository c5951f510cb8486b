"""Magnetic crossover of i = 9 at its flat-band distance (issue 14, section 4), against Tanksale & Stauber.

For each configuration (filling, SCF k grid, dielectric, distance, hopping cutoff) a U sweep from the
AFM start ("up" pass, warm-started and re-seeded) gives the staggered magnetisation and mean |m| vs U;
U_c is estimated under four definitions: onset (smoothed curve moved by 10 % of its change),
steepest slope (local-linear derivative), inflection of a tanh fit, and 10 % of saturation (first U
where the moment reaches 0.05 mu_B per site, one tenth of the full moment 1/2, linearly interpolated).
Results are written after every configuration to benchmarks/results/crossover-i9.json.

    python benchmarks/bench_crossover.py            # all configurations (3x3 ones ~1 h each on one core)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from moirestm.dataset.sweep import resolve_magic_distance
from moirestm.explain.crossover import estimate_crossover
from moirestm.hamiltonian import TightBinding
from moirestm.hamiltonian.slater_koster import SlaterKoster
from moirestm.lattice import TBGLattice
from moirestm.meanfield import Interaction, sweep_u

OUT = Path(__file__).parent / "results" / "crossover-i9.json"
#: Full moment per site (mu_B) of a half-filled p_z orbital; "10 % of saturation" is a tenth of it.
FULL_MOMENT = 0.5
ORDERS = ("staggered_magnetization", "mean_abs_moment")


def saturation_crossing(u: np.ndarray, m: np.ndarray, level: float) -> float:
    """First U at which m reaches ``level`` (linear interpolation); NaN when it never does."""
    above = np.nonzero(m >= level)[0]
    if above.size == 0:
        return float("nan")
    j = int(above[0])
    return float(u[0]) if j == 0 else float(np.interp(level, m[j - 1:j + 1], u[j - 1:j + 1]))


def u_c_estimates(u, m) -> dict:
    """U_c of one curve under the four definitions."""
    u, m = np.asarray(u, float), np.asarray(m, float)
    cross = estimate_crossover(u, m)
    return {"onset": cross.u_c_onset, "steepest_slope": cross.u_c_derivative,
            "tanh_inflection": cross.u_c_tanh, "tanh_width": cross.width,
            "ten_percent_of_saturation": saturation_crossing(u, m, 0.1 * FULL_MOMENT),
            "at_edge": bool(cross.at_edge), "note": cross.note}


CONFIGS = [  # (label, filling, scf_kgrid, dielectric, distance shift pm, hopping cutoff nm or None)
    ("nu0 k3", 0.0, 3, 10.0, 0.0, None),
    ("nu0 gamma", 0.0, 1, 10.0, 0.0, None),
    ("nu-2 gamma", -2.0, 1, 10.0, 0.0, None),
    ("nu+2 gamma", 2.0, 1, 10.0, 0.0, None),
    ("nu0 gamma eps5", 0.0, 1, 5.0, 0.0, None),
    ("nu0 gamma eps20", 0.0, 1, 20.0, 0.0, None),
    ("nu0 gamma d+2pm", 0.0, 1, 10.0, 2.0, None),
    ("nu0 gamma cutoff0.45", 0.0, 1, 10.0, 0.0, 0.45),
    ("nu-2 k3", -2.0, 3, 10.0, 0.0, None),
    ("nu+2 k3", 2.0, 3, 10.0, 0.0, None),
]


def run(label, filling, nk, dielectric, shift_pm, cutoff_nm, u_values) -> dict:
    d0, _ = resolve_magic_distance(9)
    distance = d0 + 1e-3 * shift_pm
    sk = SlaterKoster() if cutoff_nm is None else SlaterKoster(cutoff_nm=cutoff_nm)
    tb = TightBinding(TBGLattice(9, distance), sk)
    t0 = time.perf_counter()
    sweep = sweep_u(tb, Interaction(hubbard_u_ev=0.0, dielectric=dielectric), u_values, directions=("up",),
                    start="afm", filling=filling, kgrid=nk)
    wall = time.perf_counter() - t0
    rows = []
    for u, sol in zip(sweep.u_ev, sweep.best):
        orders = sol.orders()
        rows.append({"hubbard_u_ev": float(u), "converged": bool(sol.converged), "iterations": int(sol.iterations),
                     **{k: orders[k] for k in ORDERS}})
    u = [r["hubbard_u_ev"] for r in rows]
    return {"label": label, "filling": filling, "scf_kgrid": nk, "dielectric": dielectric,
            "distance_nm": distance, "hopping_cutoff_nm": sk.cutoff_nm, "wall_s": wall, "rows": rows,
            "u_c": {k: u_c_estimates(u, [r[k] for r in rows]) for k in ORDERS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--u-step", type=float, default=0.5)
    ap.add_argument("--u-max", type=float, default=6.0)
    ap.add_argument("--only", nargs="*", help="labels to run (default: all)")
    args = ap.parse_args()
    u_values = np.round(np.arange(0.0, args.u_max + 1e-9, args.u_step), 6)
    done = json.loads(OUT.read_text()) if OUT.exists() else {"configs": []}
    have = {c["label"] for c in done["configs"]}
    for config in CONFIGS:
        if (args.only and config[0] not in args.only) or config[0] in have:
            continue
        result = run(*config, u_values)
        done["configs"].append(result)
        OUT.write_text(json.dumps(done, indent=1))
        print(config[0], f"{result['wall_s']:.0f} s", json.dumps(result["u_c"]), flush=True)


if __name__ == "__main__":
    main()
