"""Lattice -> tight binding -> bands, drawn on axes by moirestm.plot and saved through moirestm.io."""

import moirestm as ms
from moirestm import plot

lattice = ms.TBGLattice(2)  # 76 atoms, 13.2 degrees
bands = ms.band_structure(ms.TightBinding(lattice), n_points=12)
print(f"i = {lattice.index}: {lattice.n_atoms} atoms, central bandwidth {bands.central_width_ev() * 1e3:.0f} meV")
fig, ax = plot.figure()
plot.bands(bands, ax=ax, window_ev=1.0)  # axes in, axes out
plot.save_figure(fig, "bands.png")       # atomic; refuses to replace a file of another kind
bands.save("bands.h5")
print("saved bands.png and bands.h5")
