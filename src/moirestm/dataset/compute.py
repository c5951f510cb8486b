"""Work done inside one Dask task: a U-continuation chain -> sample records.

A task (see :meth:`moirestm.dataset.sweep.Sweep.tasks`) is computed by an *engine*: the
built-in "meanfield" engine (tight binding -> mean field -> site LDOS -> STM map -> FT-LDOS),
or any importable ``module:function`` taking the task dict and returning the same records.
A record is ``{"key", "params", "status", "error", "arrays", "results"}``; errors of one U
are recorded and the chain continues from a fresh start.
"""

from __future__ import annotations

import importlib
import time
import traceback

import numpy as np

from ..errors import MoireSTMError

#: A fresh start is solved beside the warm start at every this many U values of a chain (the first
#: value of a chain is always a fresh start).
BRANCH_CHECK_EVERY = 10
#: Free-energy margin (eV per cell) by which a fresh-start branch must be lower to replace the warm one.
BRANCH_TOL_EV = 1e-6


def resolve_engine(name: str):
    """Callable computing a task for engine ``name``."""
    if name == "meanfield":
        return meanfield_engine
    module, _, func = name.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise MoireSTMError(f"cannot load sweep engine {name!r} ({exc})") from None


def execute_task(task: dict, blas_threads: int | None = 1) -> list[dict]:
    """Run one task with at most ``blas_threads`` BLAS/OpenMP threads; never raises for a sample."""
    from threadpoolctl import threadpool_limits

    engine = resolve_engine(task["engine"])
    if blas_threads is None:
        return engine(task)
    with threadpool_limits(limits=int(blas_threads)):
        return engine(task)


def _failed(sample: dict, error: str, results: dict | None = None) -> dict:
    return {"key": sample["key"], "params": sample["params"], "status": "failed", "error": error,
            "arrays": {}, "results": results or {}}


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MoireSTMError):
        return str(exc)
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _branch(start: str, solution) -> dict:
    """Plain-data record of one solve of a sample (for comparing branches)."""
    moment = 0.5 * (np.asarray(solution.n_up) - np.asarray(solution.n_down))
    return {"start": start, "free_energy_ev": float(solution.free_energy_ev), "converged": bool(solution.converged),
            "iterations": int(solution.iterations), "mean_abs_moment": float(np.mean(np.abs(moment)))}


def meanfield_engine(task: dict) -> list[dict]:
    """Solve the chain's U values in order and evaluate every bias/broadening on the LDOS grid.

    Warm starts are extrapolated from the two previous converged solutions of the chain; every
    ``[solver] branch_check_every`` U values (default ``BRANCH_CHECK_EVERY``; 0 = never) a fresh start is
    solved too and the lower free energy kept (both recorded in ``results["branches"]``).
    """
    from ..hamiltonian import TightBinding
    from ..lattice import TBGLattice
    from ..meanfield import Interaction, solve
    from ..meanfield.scf import extrapolated_start
    from ..observables import site_ldos

    base = task["base"]
    by_u: dict[float, list[dict]] = {}
    for sample in task["samples"]:
        by_u.setdefault(sample["params"]["hubbard_u_ev"], []).append(sample)
    try:
        lattice = TBGLattice(base["index"], base["distance_nm"])
        tb = TightBinding(lattice)
    except Exception as exc:  # noqa: BLE001 - recorded per sample
        text = _error_text(exc)
        return [_failed(s, text) for s in task["samples"]]
    stm_opts = {k: v for k, v in task["stm"].items() if k != "enabled"}
    ft_opts = dict(task["ft"])
    ft_source = ft_opts.pop("source", "site_ldos")
    if ft_source not in ("site_ldos", "stm_map"):
        return [_failed(s, f"[ft] source must be 'site_ldos' or 'stm_map', got {ft_source!r}")
                for s in task["samples"]]
    records = []
    chain: list = []  # converged solutions of this chain, in order (warm starts and extrapolation)
    fresh_start = base.get("start", "afm")
    solver = dict(task["solver"])
    check_every = int(solver.pop("branch_check_every", BRANCH_CHECK_EVERY))
    scf_kgrid = int(base.get("scf_kgrid", base.get("kgrid", 1)))
    ldos_kgrid = int(base.get("ldos_kgrid", scf_kgrid))
    for position, u in enumerate(task["u_values"]):
        samples = by_u.get(u, [])
        t0 = time.perf_counter()
        try:
            interaction = Interaction(hubbard_u_ev=u, dielectric=base["dielectric"], **task["interaction"])
            filling = base.get("filling") if "mu_ev" not in base else None
            warm = bool(chain) and task["continuation"] != "none"
            start = extrapolated_start(chain[-2:], u) if warm else fresh_start
            kwargs = dict(filling=filling, mu_ev=base.get("mu_ev"), kgrid=scf_kgrid,
                          temperature_k=base["temperature_k"], seed=base.get("seed", 0), **solver)
            solution = solve(tb, interaction, start=start, **kwargs)
            chosen = "warm" if warm else str(fresh_start)
            branches = [_branch(chosen, solution)]
            # a fresh start every check_every U values: U chains must not follow a metastable branch silently
            if warm and check_every > 0 and position % check_every == 0:
                other = solve(tb, interaction, start=fresh_start, **kwargs)
                branches.append(_branch(str(fresh_start), other))
                if other.converged and (not solution.converged
                                        or other.free_energy_ev < solution.free_energy_ev - BRANCH_TOL_EV):
                    solution, chosen = other, str(fresh_start)
        except Exception as exc:  # noqa: BLE001
            text = _error_text(exc)
            records += [_failed(s, text) for s in samples]
            continue  # the next U warm-starts from the last converged solution
        solve_s = time.perf_counter() - t0
        moment = 0.5 * (np.asarray(solution.n_up) - np.asarray(solution.n_down))
        results = {"mu_ev": float(solution.mu_ev), "free_energy_ev": float(solution.free_energy_ev),
                   "converged": bool(solution.converged), "iterations": int(solution.iterations),
                   "solve_wall_time_s": float(solve_s), "warm_start": warm,
                   "scf_kgrid": scf_kgrid, "ldos_kgrid": ldos_kgrid,
                   "kpoint_symmetry": solution.params.get("kpoint_symmetry", "TR"),
                   "ladder": [r["rung"] for r in solution.params.get("ladder", [])],
                   "branches": branches, "branch": chosen,
                   "branch_switch": bool(warm and chosen != "warm"),
                   "max_abs_moment": float(np.max(np.abs(moment))),
                   "mean_abs_moment": float(np.mean(np.abs(moment)))}
        if not solution.converged:
            text = (f"mean field did not converge in {solution.iterations} iterations "
                    f"(last residual {float(np.ravel(solution.residuals)[-1]) if np.size(solution.residuals) else float('nan'):.3g}; "
                    f"rungs: {', '.join(results['ladder'])})")
            records += [_failed(s, text, results) for s in samples]
            continue  # keep following the branch of the last converged solution
        if results["branch_switch"]:
            chain.clear()  # do not extrapolate across a change of branch
        chain.append(solution)
        # every (bias, broadening) image of this solution from one diagonalisation of the LDOS grid
        pairs = sorted({(s["params"]["bias_ev"], s["params"]["broadening_ev"]) for s in samples})
        if not pairs:
            continue
        try:
            t1 = time.perf_counter()
            sldos = site_ldos(solution, bias_ev=[b for b, _ in pairs], broadening_ev=[w for _, w in pairs],
                              ldos_kgrid=ldos_kgrid)
            ldos_s = time.perf_counter() - t1
        except Exception as exc:  # noqa: BLE001
            text = _error_text(exc)
            records += [_failed(s, text, results) for s in samples]
            continue
        for sample in samples:
            row = pairs.index((sample["params"]["bias_ev"], sample["params"]["broadening_ev"]))
            try:
                records.append(_image_record(sample, solution, sldos, row, results, ldos_s / len(pairs),
                                             task, stm_opts, ft_opts, ft_source))
            except Exception as exc:  # noqa: BLE001
                records.append(_failed(sample, _error_text(exc), results))
    return records


def _image_record(sample, solution, sldos, row, results, ldos_s, task, stm_opts, ft_opts, ft_source) -> dict:
    """The stored record of one image: row ``row`` of ``sldos`` -> STM map (when enabled) -> FT-LDOS."""
    from ..observables import stm_map
    from ..observables.ftldos import ft_ldos

    smap = stm_map(sldos, bias_index=row, **stm_opts) if task["stm"].get("enabled", True) else None
    t2 = time.perf_counter()
    if ft_source == "stm_map":
        if smap is None:
            raise MoireSTMError("[ft] source = 'stm_map' needs [stm] enabled = true")
        ft = ft_ldos(smap, **{k: v for k, v in ft_opts.items() if k != "tiling"})
    else:
        ft = ft_ldos(sldos, bias_index=row, nthreads=1, **ft_opts)
    ft_s = time.perf_counter() - t2
    arrays = {"ft_image": ft.image, "kx_nm": ft.kx_nm, "ky_nm": ft.ky_nm,
              "ldos": np.asarray(sldos.total)[row].astype(np.float32),
              "ldos_up": np.asarray(sldos.ldos_up)[row].astype(np.float32),
              "ldos_down": np.asarray(sldos.ldos_down)[row].astype(np.float32),
              "n_up": np.asarray(solution.n_up, dtype=float),
              "n_down": np.asarray(solution.n_down, dtype=float),
              "residuals": np.asarray(solution.residuals, dtype=float)}
    if smap is not None:
        arrays.update(stm_map=np.asarray(smap.image, dtype=np.float32),
                      stm_x_nm=np.asarray(smap.x_nm), stm_y_nm=np.asarray(smap.y_nm))
    return {"key": sample["key"], "params": sample["params"], "status": "ok", "error": "", "arrays": arrays,
            "results": dict(results, ldos_wall_time_s=ldos_s, ft_wall_time_s=ft_s, ft_params=ft.params)}
