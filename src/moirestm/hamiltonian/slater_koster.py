"""Slater-Koster p_z transfer integrals in the exponential form of Moon & Koshino.

-t(d) = V_pp_pi(d) [1 - (d_z/d)^2] + V_pp_sigma(d) (d_z/d)^2 with
V_pp_pi(d) = V_pp_pi^0 exp(-(d - a0)/delta0) and V_pp_sigma(d) = V_pp_sigma^0 exp(-(d - d0)/delta0)
(Moon & Koshino, PRB 85, 195458 (2012)). Here the returned value is the Hamiltonian
matrix element itself, so the nearest-neighbour intralayer hopping is V_pp_pi^0 = -2.7 eV.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..constants import (
    CARBON_BOND_NM,
    HOPPING_CUTOFF_NM,
    INTERLAYER_DISTANCE_NM,
    SK_DECAY_NM,
    V_PP_PI_EV,
    V_PP_SIGMA_EV,
)
from ..errors import MoireSTMError


@dataclass(frozen=True)
class SlaterKoster:
    """Exponential Slater-Koster p_z hopping model.

    Parameters
    ----------
    v_pp_pi_ev : V_pp_pi^0 in eV at the bond length ``bond_nm``.
    v_pp_sigma_ev : V_pp_sigma^0 in eV at the reference distance ``reference_distance_nm``.
    bond_nm : carbon-carbon bond length a0 in nm.
    reference_distance_nm : d0 in nm (fixed reference; compressing the layers below it raises
        the interlayer hopping, which is how pressure acts).
    decay_nm : decay length delta0 in nm.
    cutoff_nm : hoppings between sites farther apart than this are dropped.
    """

    v_pp_pi_ev: float = V_PP_PI_EV
    v_pp_sigma_ev: float = V_PP_SIGMA_EV
    bond_nm: float = CARBON_BOND_NM
    reference_distance_nm: float = INTERLAYER_DISTANCE_NM
    decay_nm: float = SK_DECAY_NM
    cutoff_nm: float = HOPPING_CUTOFF_NM

    def __post_init__(self):
        for name in ("bond_nm", "reference_distance_nm", "decay_nm", "cutoff_nm"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise MoireSTMError(f"Slater-Koster parameter {name} must be positive, got {value}")
        if self.cutoff_nm < self.bond_nm:
            raise MoireSTMError(
                f"hopping cutoff {self.cutoff_nm} nm is below the bond length {self.bond_nm} nm: no hoppings"
            )

    def hopping(self, displacement_nm: np.ndarray) -> np.ndarray:
        """Transfer integral in eV for displacement vectors of shape (..., 3) in nm."""
        d = np.linalg.norm(displacement_nm, axis=-1)
        cos2 = (displacement_nm[..., 2] / d) ** 2
        v_pi = self.v_pp_pi_ev * np.exp(-(d - self.bond_nm) / self.decay_nm)
        v_sigma = self.v_pp_sigma_ev * np.exp(-(d - self.reference_distance_nm) / self.decay_nm)
        return v_pi * (1.0 - cos2) + v_sigma * cos2

    def to_dict(self) -> dict:
        return asdict(self)
