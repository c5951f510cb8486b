"""k-point convergence study (issue 14): images and order parameters vs the SCF grid and the LDOS grid.

For each (index, filling, U): solve self-consistently on each SCF grid (warm-started along U), then
evaluate the LDOS at E_F non-self-consistently on each LDOS grid; compare against the densest pair
(reference) by the FT-LDOS image (relative L2 error, correlation), the mean LDOS at E_F and the
staggered / mean |m|. Writes benchmarks/results/kgrid-<tag>.json; docs/meanfield.md quotes it.

    python benchmarks/bench_kgrid.py --index 5 --broadening 0.02 --scf 1 3 6 --ldos 3 6 12 24
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from moirestm.dataset.sweep import BUILTIN, FT_DEFAULTS, resolve_magic_distance
from moirestm.hamiltonian import TightBinding
from moirestm.lattice import TBGLattice
from moirestm.meanfield import Interaction, solve
from moirestm.meanfield.scf import extrapolated_start, prepare
from moirestm.observables import site_ldos
from moirestm.observables.ftldos import ft_ldos


def _image(sldos, size: int) -> np.ndarray:
    opts = {**FT_DEFAULTS, "size": size}
    opts.pop("size")
    return np.asarray(ft_ldos(sldos, bias_index=0, size=size, nthreads=1, **opts).image, float)


def compare(image: np.ndarray, reference: np.ndarray) -> dict:
    """Relative L2 error and Pearson correlation of two images."""
    err = float(np.linalg.norm(image - reference) / np.linalg.norm(reference))
    corr = float(np.corrcoef(image.ravel(), reference.ravel())[0, 1])
    return {"image_rel_l2": err, "image_corr": corr}


def study(index: int, fillings, u_values, scf_grids, ldos_grids, broadening_ev: float, size: int,
          ldos_at=None) -> dict:
    distance_nm, _ = resolve_magic_distance(index)
    tb = TightBinding(TBGLattice(index, distance_nm))
    interaction = Interaction(hubbard_u_ev=0.0)
    rows, order_rows = [], []
    for filling in fillings:
        for nk in scf_grids:
            setup = prepare(tb, interaction, nk)
            chain = []
            for u in sorted(u_values, reverse=True):
                t0 = time.perf_counter()
                start = extrapolated_start(chain[-2:], u) if chain else "afm"
                sol = solve(tb, Interaction(hubbard_u_ev=u), filling=filling, kgrid=nk, start=start, setup=setup)
                solve_s = time.perf_counter() - t0
                if sol.converged:
                    chain.append(sol)
                orders = sol.orders()
                order_rows.append({"filling": filling, "hubbard_u_ev": u, "scf_kgrid": nk,
                                   "converged": bool(sol.converged), "iterations": sol.iterations,
                                   "staggered_m": float(orders["staggered_magnetization"]),
                                   "mean_abs_m": float(np.mean(np.abs(sol.n_up - sol.n_down)))})
                for nl in ldos_grids:
                    if nl < nk or (ldos_at is not None and u not in ldos_at):
                        continue
                    t1 = time.perf_counter()
                    ld = site_ldos(sol, [0.0], broadening_ev=broadening_ev, ldos_kgrid=nl)
                    rows.append({"index": index, "filling": filling, "hubbard_u_ev": u, "scf_kgrid": nk,
                                 "ldos_kgrid": nl, "converged": bool(sol.converged), "iterations": sol.iterations,
                                 "solve_s": solve_s, "ldos_s": time.perf_counter() - t1,
                                 "mean_ldos_ef": float(np.mean(ld.total[0])),
                                 "staggered_m": float(orders["staggered_magnetization"]),
                                 "mean_abs_m": float(np.mean(np.abs(sol.n_up - sol.n_down))),
                                 "_image": _image(ld, size)})
                print(f"i={index} nu={filling:+g} U={u:g} scf={nk} it={sol.iterations} conv={sol.converged} "
                      f"{solve_s:.1f}s", flush=True)
    ref_scf, ref_ldos = max(scf_grids), max(ldos_grids)
    for row in rows:
        ref = next(r for r in rows if r["filling"] == row["filling"] and r["hubbard_u_ev"] == row["hubbard_u_ev"]
                   and r["scf_kgrid"] == ref_scf and r["ldos_kgrid"] == ref_ldos)
        row.update(compare(row["_image"], ref["_image"]))
        row["mean_ldos_rel_err"] = abs(row["mean_ldos_ef"] / ref["mean_ldos_ef"] - 1.0)
        row["staggered_m_abs_err"] = abs(row["staggered_m"] - ref["staggered_m"])
    for row in rows:
        row.pop("_image")
    return {"index": index, "distance_nm": distance_nm, "broadening_ev": broadening_ev, "image_size": size,
            "reference": {"scf_kgrid": ref_scf, "ldos_kgrid": ref_ldos}, "rows": rows, "orders": order_rows}


def worst_by_grid(result: dict) -> list[dict]:
    """Worst image error, mean-LDOS error and m error over all (filling, U) per grid pair."""
    out = {}
    for r in result["rows"]:
        key = (r["scf_kgrid"], r["ldos_kgrid"])
        w = out.setdefault(key, {"scf_kgrid": key[0], "ldos_kgrid": key[1], "image_rel_l2": 0.0,
                                 "image_corr_min": 1.0, "mean_ldos_rel_err": 0.0, "staggered_m_abs_err": 0.0,
                                 "ldos_s": 0.0, "n": 0})
        w["image_rel_l2"] = max(w["image_rel_l2"], r["image_rel_l2"])
        w["image_corr_min"] = min(w["image_corr_min"], r["image_corr"])
        w["mean_ldos_rel_err"] = max(w["mean_ldos_rel_err"], r["mean_ldos_rel_err"])
        w["staggered_m_abs_err"] = max(w["staggered_m_abs_err"], r["staggered_m_abs_err"])
        w["ldos_s"] += r["ldos_s"]
        w["n"] += 1
    for w in out.values():
        w["ldos_s"] /= w["n"]
    return sorted(out.values(), key=lambda w: (w["scf_kgrid"], w["ldos_kgrid"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=int, default=5)
    ap.add_argument("--fillings", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0])
    ap.add_argument("--u", type=float, nargs="+", default=[0.0, 2.0, 4.0, 6.0])
    ap.add_argument("--scf", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--ldos", type=int, nargs="+", default=[3, 6, 12, 24])
    ap.add_argument("--broadening", type=float, default=BUILTIN["demo"]["fixed"]["broadening_ev"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--ldos-at", type=float, nargs="+", default=None, help="U values with LDOS (default all)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    result = study(args.index, args.fillings, args.u, args.scf, args.ldos, args.broadening, args.size,
                   args.ldos_at)
    result["worst_by_grid"] = worst_by_grid(result)
    out = Path(__file__).parent / "results" / f"kgrid-{args.tag or f'i{args.index}'}.json"
    out.write_text(json.dumps(result, indent=1))
    for w in result["worst_by_grid"]:
        print(f"scf {w['scf_kgrid']:2d} ldos {w['ldos_kgrid']:2d}: image err {w['image_rel_l2']:.3f} "
              f"corr>={w['image_corr_min']:.4f} mean LDOS err {w['mean_ldos_rel_err']:.3f} "
              f"|dm_s| {w['staggered_m_abs_err']:.4f} LDOS {w['ldos_s']:.1f}s")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
