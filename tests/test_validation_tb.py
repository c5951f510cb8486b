"""Slow tight-binding validations (run with `make validate`)."""

import numpy as np
import pytest

from moirestm.hamiltonian import TightBinding, band_structure
from moirestm.hamiltonian.magic import magic_distance
from moirestm.lattice import TBGLattice

pytestmark = pytest.mark.validate


def test_magic_angle_cell_has_flat_central_bands():
    """i = 31 (1.05°) at d0: the central bands are flattened to a few tens of meV (free graphene
    cones over the same k-range would span ~ hbar v k_theta ~ 0.2 eV)."""
    lat = TBGLattice(31)
    bands = band_structure(TightBinding(lat), n_points=7)
    assert not bands.full_spectrum
    width = bands.central_width_ev()
    print(f"i=31 central four-band width along G-K-M-G (7 points): {width * 1e3:.1f} meV")
    assert width < 0.06
    # the Dirac point at K stays four-fold degenerate (two valleys x two layers' cones)
    k_row = np.argmin(np.abs(bands.distance_nm - bands.ticks_nm[1]))
    central = bands.central_energies_ev()[k_row]
    assert central.max() - central.min() < 1e-3


def test_magic_distance_i9():
    result = magic_distance(9, bounds_nm=(0.27, 0.32), n_scan=11, n_points=16)
    print(f"i=9 magic distance {result.distance_nm:.4f} nm, width {result.bandwidth_ev * 1e3:.2f} meV")
    assert 0.285 < result.distance_nm < 0.30
    assert result.bandwidth_ev < 0.02
    assert result.bandwidth_ev < 0.05 * np.max(result.scan_bandwidth_ev)
