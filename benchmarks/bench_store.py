"""Dataset store scaling: append/commit time per sample vs store size, random-order read throughput, disk size.

Payload: one demo-sbi sample (i = 5, 364 atoms): ft_image 128 x 128 float32 (log-normal noise, which
compresses about as badly as a real FT image), kx/ky (128 float64), ldos/ldos_up/ldos_down (364 float32),
n_up/n_down (364 float64), residuals (60 float64).

* Zarr store: the store is filled to N samples (fill without fsync, the same code path), then 100 appends
  are timed at N = 1e2, 1e3, 1e4, with fsync (durable against power loss, the default) and without.
* HDF5 store (``.h5``): N samples committed, then 10 samples each written and committed (the runner's
  ``commit_interval_s = 0`` worst case; the default 30 s interval amortises the copy over the samples of
  30 s); N = 1e2, 1e3 (at 1e4 one commit copies the ~1 GB file).
* Reads: 2000 ``Store.image`` calls in random order on the warm 1e4-sample Zarr store (after one pass).

Run: ``OMP_NUM_THREADS=2 flock /tmp/team/heavy.lock .venv/bin/python benchmarks/bench_store.py [--quick]``;
writes ``benchmarks/results/store.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from moirestm.dataset import Store, sample_key, zarrstore


def payload(rng: np.random.Generator) -> dict:
    k = np.linspace(-20.0, 20.0, 128)
    return {"ft_image": rng.lognormal(0.0, 1.0, (128, 128)).astype(np.float32), "kx_nm": k, "ky_nm": k,
            "ldos": rng.random(364, dtype=np.float32), "ldos_up": rng.random(364, dtype=np.float32),
            "ldos_down": rng.random(364, dtype=np.float32), "n_up": rng.random(364), "n_down": rng.random(364),
            "residuals": rng.random(60)}


def params(i: int) -> dict:
    return {"draw_id": i // 12, "hubbard_u_ev": 0.5 * (i % 12), "index": 5, "dielectric": 7.0, "i": i}


def _append(store, start: int, n: int, rng, commit: bool) -> float:
    """Median seconds per sample of ``n`` appends (each committed when ``commit``)."""
    times = []
    for i in range(start, start + n):
        p, arrays = params(i), payload(rng)
        t = time.perf_counter()
        store.write_sample(sample_key(p), p, arrays)
        if commit:
            store.commit()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def disk(path: Path, n: int) -> dict:
    used = int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()[0]) * 1024
    apparent = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return {"kb_per_sample_on_disk": round(used / n / 1024, 1), "kb_per_sample_apparent": round(apparent / n / 1024, 1)}


def bench_zarr(root: Path, sizes: list[int], rng) -> dict:
    path = root / "bench.zarr"
    store = Store.create(path, {"sweep": "bench"})
    out, filled = {}, 0
    for n in sizes:
        zarrstore.FSYNC = False
        while filled < n:
            p = params(filled)
            store.write_sample(sample_key(p), p, payload(rng))
            filled += 1
        row = {"no_fsync_ms": 1e3 * _append(store, filled, 100, rng, commit=True)}
        filled += 100
        zarrstore.FSYNC = True
        row["fsync_ms"] = 1e3 * _append(store, filled, 100, rng, commit=True)
        filled += 100
        out[n] = {k: round(v, 2) for k, v in row.items()}
        print(f"zarr  N={n:>6}: append+commit {row['fsync_ms']:.2f} ms/sample (fsync), "
              f"{row['no_fsync_ms']:.2f} ms (no fsync)", flush=True)
    store.close()
    reader = Store.open(path)
    keys = reader.keys()
    order = [keys[i] for i in np.random.default_rng(1).permutation(len(keys))[:2000]]
    for k in order:  # warm pass
        reader.image(k)
    t = time.perf_counter()
    for k in order:
        reader.image(k)
    rate = len(order) / (time.perf_counter() - t)
    t = time.perf_counter()
    Store.open(path).keys()
    index_s = time.perf_counter() - t
    print(f"zarr  random-order reads: {rate:.0f} images/s (warm, {len(keys)} samples); "
          f"opening + index {index_s:.2f} s", flush=True)
    return {"append": out, "reads_per_s": round(rate), "open_index_s": round(index_s, 2), "n": len(keys),
            **disk(path, len(keys))}


def bench_h5(root: Path, sizes: list[int], rng) -> dict:
    out = {}
    for n in sizes:
        path = root / f"bench{n}.h5"
        store = Store.create(path, {"sweep": "bench"})
        for i in range(n):
            p = params(i)
            store.write_sample(sample_key(p), p, payload(rng))
        store.commit()
        ms = 1e3 * _append(store, n, 10, rng, commit=True)
        store.close()
        reader = Store.open(path)
        keys = reader.keys()
        order = [keys[i] for i in np.random.default_rng(1).permutation(len(keys))[:1000]]
        for k in order:
            reader.image(k)
        t = time.perf_counter()
        for k in order:
            reader.image(k)
        rate = len(order) / (time.perf_counter() - t)
        out[n] = {"commit_ms": round(ms, 2), "reads_per_s": round(rate), **disk(path, len(keys))}
        print(f"hdf5  N={n:>6}: write+commit {ms:.1f} ms/sample; reads {rate:.0f} images/s", flush=True)
        path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 1e2, 1e3 only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = ap.parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 10_000]
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench_store.", dir=Path(__file__).parent))
    try:
        result = {"zarr": bench_zarr(root, sizes, rng), "hdf5": bench_h5(root, [100, 1000], rng)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    z = result["zarr"]["append"]
    result["zarr_ratio_largest_to_smallest"] = round(z[sizes[-1]]["fsync_ms"] / z[sizes[0]]["fsync_ms"], 2)
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
