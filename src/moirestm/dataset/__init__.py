"""FT-LDOS datasets: sweep definitions, Dask execution and the self-describing HDF5 store."""

from .runner import RunSummary, run_sweep
from .store import Store, sample_key
from .sweep import BUILTIN, Sweep

__all__ = ["BUILTIN", "RunSummary", "Store", "Sweep", "run_sweep", "sample_key"]
