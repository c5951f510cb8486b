"""Pressure -> interlayer distance from the c-axis equation of state of graphite.

Linear Birch-Murnaghan form for the c lattice parameter, x = d/d0:
P = (3 K0/2) (x^-7 - x^-5) [1 + (3/4)(K0' - 4)(x^-2 - 1)],
with K0 = 12.0 GPa and K0' = 4 (Wang, Panzik, Kiefer & Lee, Sci. Rep. 2, 520 (2012)).
Graphite transforms above ~11 GPa (Hanfland et al., PRB 39, 12598 (1989)), so larger
pressures are refused. Twisted bilayers are assumed to compress like graphite layers.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from ..constants import (
    GRAPHITE_C_MODULUS_DERIVATIVE,
    GRAPHITE_C_MODULUS_GPA,
    GRAPHITE_MAX_PRESSURE_GPA,
    INTERLAYER_DISTANCE_NM,
)
from ..errors import MoireSTMError


def pressure_for_distance(distance_nm: float, d0_nm: float = INTERLAYER_DISTANCE_NM) -> float:
    """Pressure in GPa that compresses the interlayer distance from ``d0_nm`` to ``distance_nm``."""
    x = float(distance_nm) / d0_nm
    k0, k1 = GRAPHITE_C_MODULUS_GPA, GRAPHITE_C_MODULUS_DERIVATIVE
    return 1.5 * k0 * (x**-7 - x**-5) * (1.0 + 0.75 * (k1 - 4.0) * (x**-2 - 1.0))


def distance_for_pressure(pressure_gpa: float, d0_nm: float = INTERLAYER_DISTANCE_NM) -> float:
    """Interlayer distance in nm at ``pressure_gpa`` (0 <= P <= 11 GPa)."""
    p = float(pressure_gpa)
    if not np.isfinite(p) or p < 0.0:
        raise MoireSTMError(f"pressure must be a non-negative number of GPa, got {pressure_gpa}")
    if p > GRAPHITE_MAX_PRESSURE_GPA:
        raise MoireSTMError(
            f"pressure {p} GPa is above {GRAPHITE_MAX_PRESSURE_GPA} GPa, where graphite transforms; "
            "the equation of state does not apply"
        )
    if p == 0.0:
        return d0_nm
    return brentq(lambda d: pressure_for_distance(d, d0_nm) - p, 0.5 * d0_nm, d0_nm, xtol=1e-12)
