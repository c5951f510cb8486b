"""Mean field of the smallest TBG cell, its site LDOS, STM map and FT-LDOS image."""

import moirestm as ms

tb = ms.TightBinding(ms.TBGLattice(1))
sol = ms.solve(tb, ms.Interaction(hubbard_u_ev=4.0), filling=0.0, kgrid=1)
print("converged:", sol.converged, f"staggered moment {sol.orders()['staggered_magnetization']:.3f}")
sol.save("solution.h5")
ldos = ms.site_ldos(ms.MeanFieldSolution.load("solution.h5"), bias_ev=[0.0], broadening_ev=0.05)
stm = ms.stm_map(ldos, n_cells=2)  # real-space map, 20 pixels per nm
image = ms.ft_ldos(stm, size=32)
print("STM map", stm.image.shape, "-> FT-LDOS image", image.image.shape, image.image.dtype)
