"""Side-by-side benchmark of the Hubbard mean field against pyqula (issue 6).

Same problem size and algorithm in both codes: twisted bilayer graphene of the commensurate (i, i+1)
family, 4(3i^2 + 3i + 1) atoms (i = 9: 1084 atoms), spinful collinear Hubbard mean field with the
on-site U only (no long-range Coulomb), Gamma point only, antiferromagnetic (sublattice) start, half
filling, and an equal density tolerance. Each code runs in its own subprocess with its own
interpreter and the same number of BLAS/OpenMP/numba threads; the script prints a Markdown table
(end-to-end time, ratio, converged staggered magnetization, memory peak) and writes
benchmarks/results/pyqula.json.

pyqula is a benchmark-only dependency and lives in its own virtual environment, never in moirestm's::

    python3 -m venv /tmp/pyqula-venv && /tmp/pyqula-venv/bin/pip install pyqula==0.0.96
    .venv/bin/python benchmarks/bench_pyqula.py                       # i = 9, U = 4 eV, tol 1e-6
    .venv/bin/python benchmarks/bench_pyqula.py --index 2 --threads 1  # quick check of the script

What is compared
----------------
moirestm: ``solve(TightBinding(TBGLattice(i)), Interaction(hubbard_u_ev=U, coulomb="none"),
filling=0.0, kgrid=1, start="afm", density_tol=tol)`` -- Slater-Koster (Moon-Koshino) hoppings,
d = 0.335 nm, Pulay mixing, stops when max_i,sigma |n_out - n_in| <= tol (and the free energy
changes by <= 1e-7 eV, its default, which only makes moirestm stricter).

pyqula: ``specialhamiltonian.tbg(n=i, has_spin=True)`` (geometry ``specialgeometry.twisted_bilayer(i)``,
supercell [[i, i+1], [-(i+1), 2i+1]] per layer, hence the same 4(3i^2+3i+1) atoms; its own
exponential interlayer hopping ti = 0.12 t) and ``scftk.spinspin.VJinteraction(h, U=U/t, nk=1,
mf="antiferro", filling=0.5, maxerror=...)`` -- the engine that ``Hamiltonian.get_mean_field_hamiltonian``
calls for a spinful Hamiltonian (called directly only to get the SCF object: converged flag, density
matrix). Energies are in units of the nearest-neighbour hopping, t = 1 <-> 2.7 eV (|V_pp_pi| of
moirestm), so U_pyqula = U_eV / 2.7.

The two hopping models differ (pyqula's interlayer hopping and layer distance are its own), so this
compares the cost of the same-size problem with the same algorithm, not identical numbers; each code's
converged staggered magnetization |mean_i s_i (n_i,up - n_i,dn)| (s_i = +-1 by sublattice) is reported.

Equal tolerance: pyqula stops when diff_mf = sum over hopping directions of mean_{ab} |mf_out - mf_in|
< maxerror, the mean running over all (2N)^2 entries of the mean-field matrix. For the Hubbard-only
collinear problem only the 2N diagonal entries U n_{i,-sigma} are non-zero, so diff_mf =
U mean_{i,sigma} |dn| / (2N). The default ``--pyqula-criterion mean`` sets maxerror = U tol / (2N),
i.e. pyqula stops at mean |dn| < tol, which is never stricter than moirestm's max |dn| <= tol (it favours
pyqula); ``max`` sets maxerror = U tol / (2N)^2, which guarantees max |dn| < tol. After the timed part,
the achieved max |n_out - n_in| of pyqula's last iteration is measured from its output mean field and
its input Hamiltonian and reported next to moirestm's.

Timing: "end to end" runs from just before the subprocess is started (interpreter start, imports,
numba JIT, lattice + Hamiltonian construction, SCF) to the end of the SCF; the post-hoc analysis is
excluded. Memory: ru_maxrss of the child at the end of the SCF (the peak resident set size of the
whole process up to then), plus the peak of the complete child process from wait4.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "pyqula.json"
DEFAULT_PYQULA_PYTHON = "/tmp/pyqula-venv/bin/python"
DEFAULT_MOIRESTM_PYTHON = str(ROOT / ".venv" / "bin" / "python")
#: pyqula's hopping unit t = 1 in eV (graphene nearest-neighbour |V_pp_pi| = 2.7 eV, as in moirestm).
HOPPING_EV = 2.7
TARGET_SPEEDUP = 20.0
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def n_atoms(index: int) -> int:
    return 4 * (3 * index * index + 3 * index + 1)


def _peak_gib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# ============================================================================ children
def child_moirestm(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np

    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.meanfield import Interaction, solve

    t1 = time.perf_counter()
    tb = TightBinding(TBGLattice(cfg["index"]))
    t2 = time.perf_counter()
    sol = solve(tb, Interaction(hubbard_u_ev=cfg["u_ev"], coulomb="none"), filling=0.0, kgrid=1, start="afm",
                density_tol=cfg["tol"], max_iterations=cfg["moirestm_max_iterations"])
    t3 = time.perf_counter()
    end_epoch, peak = time.time(), _peak_gib()
    # ---------------------------------------------------------------- not timed
    orders = sol.orders()
    m = np.asarray(sol.n_up) - np.asarray(sol.n_down)
    return {
        "code": "moirestm", "version": _version("moirestm"), "n_atoms": int(tb.n_sites),
        "u": cfg["u_ev"], "u_unit": "eV", "hopping_model": "Slater-Koster (Moon & Koshino), d = 0.335 nm",
        "tolerance": f"max |dn| <= {cfg['tol']:g} and |dF| <= 1e-7 eV", "mixing": "Pulay (DIIS)",
        "converged": bool(sol.converged), "iterations": int(sol.iterations),
        "final_max_density_residual": float(sol.residuals[-1]),
        "final_mean_density_residual": None,
        "staggered_magnetization": orders["staggered_magnetization"],
        "mean_abs_moment": orders["mean_abs_moment"], "max_local_moment": orders["max_local_moment"],
        "ferromagnetic_moment": float(np.mean(m)), "electrons": float(np.sum(sol.n_up) + np.sum(sol.n_down)),
        "import_s": t1 - t0, "build_s": t2 - t1, "scf_s": t3 - t2, "end_epoch": end_epoch, "peak_rss_gib": peak,
    }


def _dense(m):
    import numpy as np

    return np.asarray(m.todense() if hasattr(m, "todense") else m)


def child_pyqula(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    from pyqula import specialhamiltonian
    # the engine of Hamiltonian.get_mean_field_hamiltonian for spinful Hamiltonians (integration="ed")
    from pyqula.scftk.spinspin import VJinteraction

    t1 = time.perf_counter()
    index = cfg["index"]
    h = specialhamiltonian.tbg(n=index, has_spin=True)
    t2 = time.perf_counter()
    nat = len(h.geometry.r)
    if nat != n_atoms(index):
        raise SystemExit(f"pyqula twisted_bilayer({index}) has {nat} atoms, expected {n_atoms(index)}")
    u = cfg["u_ev"] / cfg["hopping_ev"]
    norb = 2 * nat
    maxerror = u * cfg["tol"] / (norb if cfg["pyqula_criterion"] == "mean" else norb**2)
    kwargs = {"U": u, "mf": "antiferro", "nk": 1, "filling": 0.5, "maxerror": maxerror,
              "maxite": cfg["pyqula_maxite"], "verbose": 1}
    if cfg["pyqula_mix"] is not None:
        kwargs["mix"] = cfg["pyqula_mix"]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # verbose=1 prints one line per SCF iteration
        scf = VJinteraction(h, **kwargs)
    t3 = time.perf_counter()
    end_epoch, peak = time.time(), _peak_gib()
    # ---------------------------------------------------------------- not timed
    text = log.getvalue()
    iterations = text.count("ERROR in the SCF cycle")
    # achieved density residual of the last iteration: output mean field U n_{-sigma} (scf.mf) against
    # the input one, diag(H_final - H0) + E_F (the final Hamiltonian is shifted to E_F = 0)
    mf_out = np.diag(_dense(scf.mf[(0, 0, 0)])).real
    h_in = _dense(scf.hamiltonian.intra)
    h_0 = _dense(h.get_multicell().intra)
    fermi = float(np.mean(scf.hamiltonian.fermi))
    mf_in = np.diag(h_in - h_0).real + fermi
    dn = np.abs(mf_out - mf_in) / u
    n = np.diag(_dense(scf.dm[(0, 0, 0)])).real  # orbital 2i = site i up, 2i + 1 = site i down
    m = n[0::2] - n[1::2]
    s = np.sign(np.asarray(h.geometry.sublattice, float))
    return {
        "code": "pyqula", "version": _version("pyqula"), "n_atoms": int(nat),
        "u": u, "u_unit": f"t = {cfg['hopping_ev']} eV",
        "hopping_model": "pyqula tbg(): first neighbours + exponential interlayer ti = 0.12 t, dz = 3 a_cc",
        "tolerance": f"diff_mf < {maxerror:.3g} ({cfg['pyqula_criterion']} |dn| < {cfg['tol']:g})",
        "mixing": f"linear, mix = {kwargs.get('mix', 0.1)}",
        "converged": bool(scf.converged), "iterations": iterations,
        "final_max_density_residual": float(dn.max()), "final_mean_density_residual": float(dn.mean()),
        "staggered_magnetization": float(abs(np.mean(s * m))), "mean_abs_moment": float(np.mean(np.abs(m))),
        "max_local_moment": float(np.max(np.abs(m))), "ferromagnetic_moment": float(np.mean(m)),
        "electrons": float(n.sum()), "maxerror": maxerror,
        "import_s": t1 - t0, "build_s": t2 - t1, "scf_s": t3 - t2, "end_epoch": end_epoch, "peak_rss_gib": peak,
        "stdout_tail": text.splitlines()[-3:],
    }


CHILDREN = {"moirestm": child_moirestm, "pyqula": child_pyqula}


# ============================================================================ parent
def run_child(code: str, python: str, cfg: dict, threads: int) -> dict:
    env = dict(os.environ)
    env.update({v: str(threads) for v in THREAD_VARS})
    env["PYTHONPATH"] = ""  # each interpreter uses its own environment only
    with tempfile.TemporaryDirectory() as tmp:
        out, logf = Path(tmp) / "result.json", Path(tmp) / "child.log"
        args = [python, str(Path(__file__).resolve()), "_child", code, json.dumps(cfg), str(out)]
        with open(logf, "w") as log:
            start_epoch = time.time()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not out.exists():
            tail = logf.read_text()[-3000:]
            raise RuntimeError(f"{code} child failed (exit {proc.returncode}):\n{tail}")
        row = json.loads(out.read_text())
    row["end_to_end_s"] = row.pop("end_epoch") - start_epoch
    row["process_peak_rss_gib"] = usage.ru_maxrss / 1024**2
    row["threads"] = threads
    row["python"] = python
    return row


def markdown(rows: list[dict], cfg: dict, ratio: float | None, verdict: str | None) -> str:
    i = cfg["index"]
    lines = [
        f"### Hubbard mean field vs pyqula: TBG i={i} ({n_atoms(i)} atoms), U = {cfg['u_ev']} eV "
        f"(= {cfg['u_ev'] / cfg['hopping_ev']:.4g} t, t = {cfg['hopping_ev']} eV), Gamma only, AFM start, "
        f"half filling, density tol {cfg['tol']:g}, {cfg['threads']} thread(s)",
        "",
        "| code | version | atoms | converged | iterations | end to end (s) | SCF (s) | m_s (muB/site) | "
        "mean abs m | max abs m | final max abs dn | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['code']} | {r['version']} | {r['n_atoms']} | {r['converged']} | {r['iterations']} | "
            f"{r['end_to_end_s']:.2f} | {r['scf_s']:.2f} | {r['staggered_magnetization']:.4f} | "
            f"{r['mean_abs_moment']:.4f} | {r['max_local_moment']:.4f} | {r['final_max_density_residual']:.2e} | "
            f"{r['peak_rss_gib']:.3f} |")
    lines.append("")
    for r in rows:
        lines.append(f"- {r['code']}: import {r['import_s']:.2f} s, build {r['build_s']:.2f} s, "
                     f"SCF {r['scf_s']:.2f} s; stop rule {r['tolerance']}; mixing {r['mixing']}; "
                     f"whole-process peak RSS {r['process_peak_rss_gib']:.3f} GiB")
    if ratio is not None:
        lines.append(f"- speed-up (pyqula / moirestm, end to end): **{ratio:.1f}x** "
                     f"(target >= {TARGET_SPEEDUP:g}x): {verdict}")
    lines.append("- hopping models differ (pyqula uses its own interlayer hopping and layer distance): "
                 "same problem size and algorithm, magnetizations are each code's own converged state.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=int, default=9, help="commensurate index i (i = 9: 1084 atoms)")
    p.add_argument("--U", dest="u_ev", type=float, default=4.0, help="Hubbard U in eV (pyqula: U / hopping)")
    p.add_argument("--tol", type=float, default=1e-6, help="density tolerance (electrons per site and spin)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="BLAS/OpenMP/numba threads, equal for both codes (default: all cores)")
    p.add_argument("--hopping-ev", type=float, default=HOPPING_EV, help="pyqula's t = 1 in eV")
    p.add_argument("--pyqula-criterion", choices=("mean", "max"), default="mean",
                   help="map tol onto pyqula's maxerror as mean |dn| < tol (default) or max |dn| < tol")
    p.add_argument("--pyqula-maxite", type=int, default=1000, help="pyqula's SCF iteration limit (its default)")
    p.add_argument("--pyqula-mix", type=float, default=None, help="pyqula's linear mixing (default: its 0.1)")
    p.add_argument("--moirestm-max-iterations", type=int, default=300, help="moirestm's limit (its default)")
    p.add_argument("--only", choices=("moirestm", "pyqula"), default=None, help="run one code only")
    p.add_argument("--pyqula-python", default=DEFAULT_PYQULA_PYTHON)
    p.add_argument("--moirestm-python", default=DEFAULT_MOIRESTM_PYTHON)
    p.add_argument("--output", type=Path, default=OUT)
    a = p.parse_args(argv)
    cfg = {"index": a.index, "u_ev": a.u_ev, "tol": a.tol, "hopping_ev": a.hopping_ev, "threads": a.threads,
           "pyqula_criterion": a.pyqula_criterion, "pyqula_maxite": a.pyqula_maxite, "pyqula_mix": a.pyqula_mix,
           "moirestm_max_iterations": a.moirestm_max_iterations}
    codes = [a.only] if a.only else ["moirestm", "pyqula"]
    pythons = {"moirestm": a.moirestm_python, "pyqula": a.pyqula_python}
    rows = []
    for code in codes:
        print(f"running {code} (i={a.index}, {n_atoms(a.index)} atoms, {a.threads} thread(s)) ...", flush=True)
        rows.append(run_child(code, pythons[code], cfg, a.threads))
        print(f"  {code}: {rows[-1]['end_to_end_s']:.2f} s end to end", flush=True)
    by = {r["code"]: r for r in rows}
    ratio = verdict = None
    if len(by) == 2:
        ratio = by["pyqula"]["end_to_end_s"] / by["moirestm"]["end_to_end_s"]
        both = by["pyqula"]["converged"] and by["moirestm"]["converged"]
        verdict = ("PASS" if ratio >= TARGET_SPEEDUP else "FAIL") + ("" if both else " (not both converged)")
    print()
    print(markdown(rows, cfg, ratio, verdict))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {"config": cfg, "n_atoms": n_atoms(a.index), "rows": rows, "speedup_end_to_end": ratio,
              "target_speedup": TARGET_SPEEDUP, "verdict": verdict, "commit": commit,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(result, indent=1))
    print(f"\nwritten {a.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        code, config, path = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
        Path(path).write_text(json.dumps(CHILDREN[code](config)))
        sys.exit(0)
    main()
