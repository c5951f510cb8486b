"""Order parameters of a mean-field state: staggered and ferromagnetic moments, charge modulation.

Moments are m_i = n_i^up - n_i^down in Bohr magnetons per site (|m_i| <= 1).
"""

from __future__ import annotations

import numpy as np


def order_parameters(solution=None, *, n_up=None, n_down=None, sublattice=None, layer=None) -> dict:
    """Order parameters of a solution (or of explicit arrays).

    Returns
    -------
    dict with
    staggered_magnetization : |mean_i s_i m_i|, s_i = +1 (A) / -1 (B) (sublattice Neel order);
    layer_staggered_magnetization : |mean_i l_i m_i|, l_i = +1 (bottom) / -1 (top);
    ferromagnetic_moment : mean_i m_i (total moment per site);
    max_local_moment : max_i |m_i|; mean_abs_moment : mean_i |m_i|;
    charge_modulation : max_i n_i - min_i n_i of the total occupation inside the cell;
    charge_rms : root-mean-square deviation of n_i from its cell average.
    """
    if solution is not None:
        n_up, n_down = solution.n_up, solution.n_down
        sublattice, layer = solution.sublattice, solution.layer
    n_up, n_down = np.asarray(n_up, float), np.asarray(n_down, float)
    m = n_up - n_down
    q = n_up + n_down
    s = np.where(np.asarray(sublattice) == 0, 1.0, -1.0)
    lay = np.where(np.asarray(layer) == 0, 1.0, -1.0)
    return {
        "staggered_magnetization": float(abs(np.mean(s * m))),
        "layer_staggered_magnetization": float(abs(np.mean(lay * m))),
        "ferromagnetic_moment": float(np.mean(m)),
        "max_local_moment": float(np.max(np.abs(m))),
        "mean_abs_moment": float(np.mean(np.abs(m))),
        "charge_modulation": float(np.ptp(q)),
        "charge_rms": float(np.sqrt(np.mean((q - q.mean()) ** 2))),
    }
