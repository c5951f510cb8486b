"""What a diagonalisation will cost before it starts: memory estimate, time class, available memory."""

from __future__ import annotations

import os

from ..errors import MoireSTMError

#: Dense eigensolver footprint in units of one complex N x N matrix (matrix, eigenvectors, workspace).
DENSE_MATRICES = 3.0
#: Sparse shift-invert: bytes per stored hopping and LU fill-in ~ c N^1.5 entries (nested dissection of
#: a quasi-2D graph, George, SIAM J. Numer. Anal. 10, 345 (1973)); constants fitted loosely, order of
#: magnitude only.
SPARSE_BYTES_PER_ATOM = 10000.0
SPARSE_FILL = 32.0
#: Dense diagonalisation rate assumed for the time class, in flop/s (one core of LAPACK zheevd).
FLOPS = 1.0e10


def estimate(n_atoms: int, n_k: int = 1, dense: bool = True, stored_k: int = 1) -> dict:
    """Memory (GiB) and time class of ``n_k`` diagonalisations of an ``n_atoms`` Hamiltonian.

    ``stored_k`` eigenvector sets kept at once (the self-consistency keeps one per k and spin).
    """
    n = float(n_atoms)
    if dense:
        memory = 16.0 * n * n * (DENSE_MATRICES + stored_k)
        seconds = n_k * 10.0 * n ** 3 / FLOPS
    else:
        memory = SPARSE_BYTES_PER_ATOM * n + SPARSE_FILL * n ** 1.5
        seconds = n_k * 2.0e-5 * n ** 1.5
    time_class = ("seconds" if seconds < 60 else "minutes" if seconds < 3600
                  else "hours" if seconds < 86400 else "days")
    return {"atoms": int(n_atoms), "memory_gib": memory / 2**30, "time_class": time_class,
            "method": "dense" if dense else "sparse shift-invert"}


def available_memory_bytes() -> float:
    """MemAvailable of /proc/meminfo (else physical memory), in bytes."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(cost: dict, what: str, force: bool = False, fraction: float = 0.8) -> None:
    """MoireSTMError, unless forced, when ``cost`` needs more than ``fraction`` of the available memory
    or days of computing."""
    available = available_memory_bytes() / 2**30
    if force:
        return
    if cost["memory_gib"] > fraction * available:
        raise MoireSTMError(f"{what}: {cost['atoms']} atoms need ~{cost['memory_gib']:.3g} GiB "
                            f"({cost['method']}, {cost['time_class']}), more than the {available:.3g} GiB "
                            "available; use --force to try anyway")
    if cost["time_class"] == "days":
        raise MoireSTMError(f"{what}: {cost['atoms']} atoms, ~{cost['memory_gib']:.3g} GiB "
                            f"({cost['method']}) would take days; use --force to run it anyway")
