"""Run a sweep on dask.distributed and write the samples to a Store from the client process.

* ``scheduler=None``: a LocalCluster sized to the machine (one process per core, one
  thread each, one BLAS thread per worker); ``scheduler="tcp://host:8786"``: any running
  Dask cluster (e.g. dask-jobqueue on SLURM, see docs/datasets.md); ``scheduler="synchronous"``:
  no Dask, tasks run one after the other in this process (debugging).
* Resumable: samples already stored with status "ok" are skipped (failed ones are retried
  unless ``retry_failed=False``); a task is submitted only if one of its samples is missing.
* Crash-safe: each sample is committed atomically as soon as its task returns (a Zarr store,
  ``out`` ending in ``.zarr``: renamed into place; an HDF5 store: into its journal, merged into
  the file every ``commit_interval_s`` and at the end).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MoireSTMError
from .compute import execute_task
from .store import Store
from .sweep import Sweep
from .zarrstore import is_zarr


@dataclass
class RunSummary:
    """Outcome of :func:`run_sweep`."""

    path: str
    n_samples: int
    skipped: int
    written_ok: int
    written_failed: int
    tasks: int
    wall_time_s: float
    workers: int
    errors: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def open_store(sweep: Sweep, out) -> Store:
    """Open ``out`` for appending, or create it recording the sweep definition."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if out.is_dir() and not is_zarr(out):
            raise MoireSTMError(f"output {out} is a directory; give a file name such as data.h5 or a "
                                "Zarr store name such as data.zarr")
        store = Store.open(out, "a")
        if store.sweep_params.get("definition") != sweep.definition:
            store.add_history("extend", sweep=sweep.name, definition=sweep.definition)
        return store
    return Store.create(out, {"sweep": sweep.name, "definition": sweep.definition,
                              "summary": sweep.summary(), **sweep.prior_records()})


def _task_cost(task: dict) -> float:
    from ..lattice import atom_count

    try:
        n = atom_count(task["base"]["index"])
    except MoireSTMError:
        n = 1
    return n ** 2 * len(task["u_values"]) * task["base"].get("scf_kgrid", task["base"].get("kgrid", 1)) ** 2


def run_sweep(sweep: Sweep | str, out, scheduler: str | None = None, workers: int | None = None,
              retry_failed: bool = True, commit_interval_s: float = 30.0, progress: bool = True,
              console=None, blas_threads: int = 1, limit_tasks: int | None = None) -> RunSummary:
    """Compute every missing sample of ``sweep`` into the store at ``out``.

    Parameters
    ----------
    sweep : a Sweep, a TOML path or a built-in name.
    scheduler : None (local cluster), "synchronous", or the address of a Dask scheduler.
    workers : local-cluster worker processes (default: available cores).
    retry_failed : recompute samples stored as failed.
    commit_interval_s : merge the journal into the HDF5 file at most this often.
    limit_tasks : stop after this many tasks (for timing runs).
    """
    if not isinstance(sweep, Sweep):
        sweep = Sweep.load(sweep)
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        raise MoireSTMError(f"workers must be a positive integer, got {workers!r}")
    t_start = time.perf_counter()
    tasks = sweep.tasks()
    store = open_store(sweep, out)
    try:
        done = set(store.keys("ok"))
        if not retry_failed:
            done |= set(store.keys("failed"))
        todo = []
        for task in tasks:
            missing = [s for s in task["samples"] if s["key"] not in done]
            if missing:
                todo.append((task, {s["key"] for s in missing}))
        todo.sort(key=lambda item: -_task_cost(item[0]))
        present = sweep.n_samples - sum(len(m) for _, m in todo)
        if limit_tasks is not None:
            todo = todo[: int(limit_tasks)]
        summary = RunSummary(str(out), sweep.n_samples, present, 0, 0, len(todo), 0.0, 0)
        store.add_history("run", sweep=sweep.name, tasks=len(todo), scheduler=str(scheduler or "local"))
        if todo:
            _execute(todo, store, summary, scheduler, workers, commit_interval_s, progress, console,
                     blas_threads)
    finally:
        store.close()
    summary.wall_time_s = time.perf_counter() - t_start
    return summary


def _write(store: Store, records: list[dict], wanted: set, summary: RunSummary) -> int:
    n = 0
    for rec in records:
        if rec["key"] not in wanted:
            continue
        store.write_sample(rec["key"], rec["params"], rec.get("arrays", {}), status=rec["status"],
                           error=rec.get("error", ""), results=rec.get("results"))
        wanted.discard(rec["key"])
        if rec["status"] == "ok":
            summary.written_ok += 1
        else:
            summary.written_failed += 1
            if len(summary.errors) < 20:
                summary.errors.append(f"{rec['key']}: {rec.get('error', '')}")
        n += 1
    return n


def _record_task_failure(store, task, wanted, error, summary) -> int:
    records = [{"key": s["key"], "params": s["params"], "status": "failed", "error": error}
               for s in task["samples"] if s["key"] in wanted]
    return _write(store, records, wanted, summary)


def _progress(console, enabled):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("samples"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


def _execute(todo, store, summary, scheduler, workers, commit_interval_s, progress, console,
             blas_threads):
    n_samples = sum(len(m) for _, m in todo)
    last_commit = time.monotonic()
    with _progress(console, progress) as bar:
        job = bar.add_task(f"sweep {summary.path}", total=n_samples)

        def handle(task, wanted, records=None, error=None):
            nonlocal last_commit
            if error is not None:
                n = _record_task_failure(store, task, wanted, error, summary)
            else:
                n = _write(store, records, wanted, summary)
                if wanted:  # engine returned fewer samples than asked for
                    n += _record_task_failure(store, task, wanted, "engine returned no record", summary)
            bar.advance(job, n)
            if time.monotonic() - last_commit >= commit_interval_s:
                store.commit()
                last_commit = time.monotonic()

        if scheduler == "synchronous":
            summary.workers = 1
            for task, wanted in todo:
                try:
                    records = execute_task(task, blas_threads)
                except Exception as exc:  # noqa: BLE001
                    handle(task, wanted, error=f"task failed: {type(exc).__name__}: {exc}")
                    continue
                handle(task, wanted, records)
            return
        client, cluster = _client(scheduler, workers, len(todo))
        try:
            summary.workers = len(client.scheduler_info().get("workers", {})) or (workers or 0)
            from distributed import as_completed

            futures = {}
            for task, wanted in todo:
                fut = client.submit(execute_task, task, blas_threads, pure=False)
                futures[fut] = (task, wanted)
            for fut in as_completed(futures):
                task, wanted = futures.pop(fut)
                try:
                    records = fut.result()
                except Exception as exc:  # noqa: BLE001 - worker died, unpicklable result, ...
                    handle(task, wanted, error=f"task failed: {type(exc).__name__}: {exc}")
                    continue
                handle(task, wanted, records)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _client(scheduler, workers, n_tasks):
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise MoireSTMError(f"cannot connect to Dask scheduler {scheduler!r} ({exc})") from None
    n = int(workers or available_cores())
    n = max(1, min(n, n_tasks))
    env = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None, env=env, silence_logs=logging.ERROR)
    return Client(cluster), cluster
