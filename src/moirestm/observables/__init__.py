"""Observables of mean-field states: site LDOS, STM maps (and FT-LDOS images in ``ftldos``).

Contract (docs/architecture.md)::

    site_ldos(solution, bias_ev=[0.0], broadening_ev=0.01, kind="lorentzian") -> SiteLDOS
    stm_map(site_ldos, bias_index=0, n_cells=3, pixels_per_nm=..., ...) -> STMMap
"""

from .ftldos import FTImage, default_window_nm, ft_ldos
from .ldos import SiteLDOS, site_ldos
from .stm import STMMap, stm_map

__all__ = ["FTImage", "SiteLDOS", "STMMap", "default_window_nm", "ft_ldos", "site_ldos", "stm_map"]
