"""Fourier-transformed LDOS (FT-LDOS) images on a regular wave-vector grid.

Two exact routes, both evaluated directly at the pixel wave vectors (no resampling):

* site LDOS -> point sources w_j at the atoms of an n x n tiling of the moiré cell,
  F(q) = sum_j a_j w_j exp(-i q.r_j) / sum_j a_j, evaluated with a type-3 non-uniform FFT
  (finufft; Barnett, Magland & af Klinteberg, SIAM J. Sci. Comput. 41, C479 (2019));
* STM map on a regular real-space grid -> the same sum over pixels, evaluated with the
  chirp-z (zoom) FFT along x and y, which is exact on any frequency window below Nyquist.

``a_j`` is the apodisation window (1 for "none"). The default window is the reference
study's k_x in (2 pi / a)[-1.1, 1.1], k_y in (4 pi / (sqrt 3 a))[-1.1, 1.1], holding the
central moiré peaks and the first atomic Bragg peaks with their satellites.
Images are (ny, nx) arrays, row index along k_y, column index along k_x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..constants import FT_IMAGE_SIZE, FT_WINDOW_FRACTION, GRAPHENE_LATTICE_NM
from ..errors import MoireSTMError
from ..io import Result
from .stm import check_image_axes

#: finufft relative tolerance; gives ~1e-11 relative error against the direct sum.
NUFFT_EPS = 1e-12
#: Apodisation windows on [0, 1] (Harris, Proc. IEEE 66, 51 (1978)).
APODISATIONS = ("none", "hann", "blackman")
SPINS = ("total", "up", "down", "spin")
#: log scaling floor relative to the image maximum: image = log10(|F| + LOG_FLOOR * max|F|).
LOG_FLOOR = 1e-6


def default_window_nm(lattice_constant_nm: float = GRAPHENE_LATTICE_NM,
                      fraction: float = FT_WINDOW_FRACTION) -> tuple[float, float, float, float]:
    """Reference FT window (kx_min, kx_max, ky_min, ky_max) in nm^-1."""
    kx = fraction * 2.0 * math.pi / lattice_constant_nm
    ky = fraction * 4.0 * math.pi / (math.sqrt(3.0) * lattice_constant_nm)
    return (-kx, kx, -ky, ky)


@dataclass(frozen=True)
class FTImage(Result):
    """FT-LDOS magnitude image (saved and loaded through :class:`moirestm.io.Result`).

    Attributes
    ----------
    image : (ny, nx) float32 |F(kx, ky)| (or its log10 when ``params["log_scale"]``).
    kx_nm, ky_nm : (nx,), (ny,) wave vectors of the columns and rows in nm^-1.
    params : every option that produced the image (source, window, tiling, ...).
    """

    image: np.ndarray
    kx_nm: np.ndarray
    ky_nm: np.ndarray
    params: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path) -> "FTImage":
        """Read an image written by :meth:`save` (or before the result base); MoireSTMError when damaged."""
        ft = check_image_axes(super().load(path), path, "kx_nm", "ky_nm")
        return replace(ft, image=np.asarray(ft.image, dtype=np.float32))

    def plot(self, ax=None, cmap: str = "inferno"):
        """Show the image with k axes in nm^-1 (:func:`moirestm.plot.ft_image`; colours for viewing only)."""
        from ..plot import ft_image

        return ft_image(self, ax, cmap=cmap)


# --------------------------------------------------------------------------- options
def _grid_shape(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise MoireSTMError(f"size must be an integer or (ny, nx), got {size!r}")
        ny, nx = size
    else:
        ny = nx = size
    out = []
    for n in (ny, nx):
        if isinstance(n, bool) or not float(n).is_integer() or not 2 <= int(n) <= 8192:
            raise MoireSTMError(f"FT image size must be an integer between 2 and 8192, got {n!r}")
        out.append(int(n))
    return out[0], out[1]


def _window(window) -> tuple[float, float, float, float]:
    if window is None:
        return default_window_nm()
    w = np.asarray(window, dtype=float).ravel()
    if w.size == 2:
        w = np.array([-w[0], w[0], -w[1], w[1]])
    if w.size != 4 or not np.all(np.isfinite(w)) or w[1] <= w[0] or w[3] <= w[2]:
        raise MoireSTMError(
            "window must be (kx_half, ky_half) or (kx_min, kx_max, ky_min, ky_max) in nm^-1 "
            f"with max > min, got {window!r}"
        )
    return tuple(float(v) for v in w)


def k_axes(size=FT_IMAGE_SIZE, window=None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel wave vectors (kx_nm (nx,), ky_nm (ny,)), endpoints included (symmetric about 0)."""
    ny, nx = _grid_shape(size)
    kx0, kx1, ky0, ky1 = _window(window)
    return np.linspace(kx0, kx1, nx), np.linspace(ky0, ky1, ny)


def _apodisation(u: np.ndarray, kind: str) -> np.ndarray:
    """Window value at reduced coordinate u in [0, 1]."""
    if kind == "none":
        return np.ones_like(u)
    if kind == "hann":
        return np.sin(np.pi * u) ** 2
    if kind == "blackman":
        return 0.42 - 0.5 * np.cos(2 * np.pi * u) + 0.08 * np.cos(4 * np.pi * u)
    raise MoireSTMError(f"unknown apodisation {kind!r}; choose one of {APODISATIONS}")


def _finish(amplitude: np.ndarray, kx, ky, log_scale: bool, params: dict) -> FTImage:
    magnitude = np.abs(amplitude)
    if log_scale:
        floor = LOG_FLOOR * float(magnitude.max()) if magnitude.size else 0.0
        magnitude = np.log10(magnitude + (floor if floor > 0 else LOG_FLOOR))
        params["log_scale_formula"] = f"log10(|F| + {LOG_FLOOR:g} max|F|)"
    image = np.ascontiguousarray(magnitude, dtype=np.float32)
    params.update(
        size=[int(len(ky)), int(len(kx))],
        window_nm=[float(kx[0]), float(kx[-1]), float(ky[0]), float(ky[-1])],
        log_scale=bool(log_scale),
        normalisation="F(q) = sum a_j w_j exp(-i q.r_j) / sum a_j (a: apodisation)",
    )
    return FTImage(image, kx.astype(float), ky.astype(float), params)


# --------------------------------------------------------------------------- point sources
def point_amplitude(xy_nm: np.ndarray, weights: np.ndarray, kx_nm: np.ndarray, ky_nm: np.ndarray,
                    eps: float = NUFFT_EPS, nthreads: int | None = None) -> np.ndarray:
    """Complex sum_j w_j exp(-i (kx x_j + ky y_j)) on the (ny, nx) grid, by type-3 NUFFT."""
    import finufft

    xy = np.asarray(xy_nm, dtype=float)
    c = np.ascontiguousarray(weights, dtype=np.complex128)
    kxg, kyg = np.meshgrid(kx_nm, ky_nm, indexing="xy")
    opts = {} if nthreads is None else {"nthreads": int(nthreads)}
    out = finufft.nufft2d3(np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1]), c,
                           kxg.ravel(), kyg.ravel(), eps=eps, isign=-1, **opts)
    return out.reshape(len(ky_nm), len(kx_nm))


def direct_amplitude(xy_nm: np.ndarray, weights: np.ndarray, kx_nm: np.ndarray,
                     ky_nm: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Reference O(N_atoms x N_k) direct sum, same convention as :func:`point_amplitude`."""
    xy = np.asarray(xy_nm, dtype=float)
    w = np.asarray(weights, dtype=np.complex128)
    kxg, kyg = np.meshgrid(kx_nm, ky_nm, indexing="xy")
    k = np.column_stack([kxg.ravel(), kyg.ravel()])
    out = np.empty(len(k), dtype=np.complex128)
    for start in range(0, len(k), chunk):
        phase = k[start:start + chunk] @ xy[:, :2].T
        out[start:start + chunk] = np.exp(-1j * phase) @ w
    return out.reshape(len(ky_nm), len(kx_nm))


def ft_points(xy_nm, weights, size=FT_IMAGE_SIZE, window=None, apodisation: str = "none",
              remove_q0: bool = False, log_scale: bool = False, cell_nm=None,
              eps: float = NUFFT_EPS, nthreads: int | None = None, params: dict | None = None
              ) -> FTImage:
    """FT-LDOS of point sources ``weights`` at positions ``xy_nm`` (N, 2 or 3).

    Parameters
    ----------
    cell_nm : (2, 2) rows spanning the parallelogram that holds the points, used for the
        apodisation coordinates; default: the bounding box of the points.
    remove_q0 : subtract the (apodised) mean weight so that F(0) = 0.
    eps : NUFFT tolerance.
    """
    xy = np.asarray(xy_nm, dtype=float)
    w = np.asarray(weights, dtype=float)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3) or len(xy) == 0:
        raise MoireSTMError(f"positions must be an (N, 2) or (N, 3) array with N > 0, got {xy.shape}")
    if w.shape != (len(xy),):
        raise MoireSTMError(f"weights must have shape ({len(xy)},), got {w.shape}")
    if not (np.all(np.isfinite(xy)) and np.all(np.isfinite(w))):
        raise MoireSTMError("positions and LDOS weights must be finite")
    if apodisation not in APODISATIONS:
        raise MoireSTMError(f"unknown apodisation {apodisation!r}; choose one of {APODISATIONS}")
    xy = xy[:, :2]
    kx, ky = k_axes(size, window)
    if cell_nm is None:
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        frac = (xy - lo) / span
    else:
        cell = np.asarray(cell_nm, dtype=float)
        frac = np.clip(xy @ np.linalg.inv(cell), 0.0, 1.0)
    apod = _apodisation(frac[:, 0], apodisation) * _apodisation(frac[:, 1], apodisation)
    total = float(apod.sum())
    if total <= 0:
        raise MoireSTMError("apodisation window vanishes on every point")
    if remove_q0:
        w = w - float(np.sum(apod * w)) / total
    # centre the patch: changes only the phase, keeps the NUFFT well conditioned
    centre = 0.5 * (xy.min(axis=0) + xy.max(axis=0))
    amplitude = point_amplitude(xy - centre, apod * w / total, kx, ky, eps=eps, nthreads=nthreads)
    out = dict(params or {})
    out.update(route="nufft_type3", apodisation=apodisation, remove_q0=bool(remove_q0),
               n_points=int(len(xy)), nufft_eps=float(eps))
    return _finish(amplitude, kx, ky, log_scale, out)


# --------------------------------------------------------------------------- sources
def _site_weights(source, bias_index: int, spin: str) -> np.ndarray:
    bias = np.atleast_1d(np.asarray(source.bias_ev))
    if isinstance(bias_index, bool) or not float(bias_index).is_integer():
        raise MoireSTMError(f"bias_index must be an integer, got {bias_index!r}")
    bias_index = int(bias_index)
    if not -len(bias) <= bias_index < len(bias):
        raise MoireSTMError(f"bias_index {bias_index} out of range for {len(bias)} bias energies")
    up, down = np.atleast_2d(source.ldos_up), np.atleast_2d(source.ldos_down)
    if spin == "total":
        w = up[bias_index] + down[bias_index]
    elif spin == "up":
        w = up[bias_index]
    elif spin == "down":
        w = down[bias_index]
    elif spin == "spin":
        w = up[bias_index] - down[bias_index]
    else:
        raise MoireSTMError(f"unknown spin channel {spin!r}; choose one of {SPINS}")
    return np.asarray(w, dtype=float)


def ft_site_ldos(site_ldos, bias_index: int = 0, size=FT_IMAGE_SIZE, window=None, tiling: int = 3,
                 apodisation: str = "none", remove_q0: bool = False, log_scale: bool = False,
                 spin: str = "total", layer: int | None = None, eps: float = NUFFT_EPS,
                 nthreads: int | None = None) -> FTImage:
    """FT-LDOS of a site LDOS: point sources at the atoms of a ``tiling`` x ``tiling`` moiré patch.

    Parameters
    ----------
    site_ldos : SiteLDOS-like (bias_ev, ldos_up, ldos_down (nb, N), positions_nm (N, 3),
        layer (N,), superlattice_nm (2, 2)).
    bias_index : which bias energy to transform.
    tiling : number of moiré cells along each superlattice vector.
    spin : "total", "up", "down" or "spin" (up - down).
    layer : restrict to one layer (0 bottom, 1 top); None keeps both.
    """
    if isinstance(tiling, bool) or not float(tiling).is_integer() or not 1 <= int(tiling) <= 64:
        raise MoireSTMError(f"tiling must be an integer between 1 and 64, got {tiling!r}")
    tiling = int(tiling)
    positions = np.asarray(site_ldos.positions_nm, dtype=float)
    superlattice = np.asarray(site_ldos.superlattice_nm, dtype=float)
    w = _site_weights(site_ldos, bias_index, spin)
    if w.shape != (len(positions),):
        raise MoireSTMError(f"LDOS has {w.shape[0]} sites but there are {len(positions)} positions")
    if layer is not None:
        layers = np.asarray(site_ldos.layer)
        if int(layer) not in set(np.unique(layers).tolist()):
            raise MoireSTMError(f"layer {layer!r} not present; layers are {sorted(set(layers.tolist()))}")
        sel = layers == int(layer)
        positions, w = positions[sel], w[sel]
    m1, m2 = np.meshgrid(np.arange(tiling), np.arange(tiling), indexing="ij")
    shifts = np.column_stack([m1.ravel(), m2.ravel()]) @ superlattice
    xy = (positions[None, :, :2] + shifts[:, None, :]).reshape(-1, 2)
    weights = np.tile(w, tiling * tiling)
    bias = float(np.atleast_1d(site_ldos.bias_ev)[int(bias_index)])
    params = {"source": "site_ldos", "bias_ev": bias, "tiling": tiling, "spin": spin,
              "layer": None if layer is None else int(layer)}
    return ft_points(xy, weights, size=size, window=window, apodisation=apodisation,
                     remove_q0=remove_q0, log_scale=log_scale, cell_nm=tiling * superlattice,
                     eps=eps, nthreads=nthreads, params=params)


def ft_stm_map(stm_map, size=FT_IMAGE_SIZE, window=None, apodisation: str = "none",
               remove_q0: bool = False, log_scale: bool = False) -> FTImage:
    """FT of an STM map on a regular grid by the chirp-z FFT, exact at the pixel wave vectors.

    Raises if the window reaches beyond the Nyquist wave vector pi / pixel of the map.
    """
    from scipy.signal import zoom_fft

    x = np.asarray(stm_map.x_nm, dtype=float)
    y = np.asarray(stm_map.y_nm, dtype=float)
    img = np.asarray(stm_map.image, dtype=float)
    if img.ndim != 2 or img.shape != (len(y), len(x)) or min(img.shape) < 2:
        raise MoireSTMError(f"STM image must be (ny, nx) = ({len(y)}, {len(x)}) with n >= 2, got {img.shape}")
    if not np.all(np.isfinite(img)):
        raise MoireSTMError("STM image holds non-finite values")
    dx, dy = np.diff(x), np.diff(y)
    for name, d in (("x", dx), ("y", dy)):
        if np.any(d <= 0) or not np.allclose(d, d[0], rtol=1e-6, atol=0):
            raise MoireSTMError(f"STM map {name} axis must be regular and increasing")
    dx, dy = float(dx[0]), float(dy[0])
    kx, ky = k_axes(size, window)
    kmax_x, kmax_y = np.pi / dx, np.pi / dy
    if np.max(np.abs(kx)) > kmax_x * (1 + 1e-9) or np.max(np.abs(ky)) > kmax_y * (1 + 1e-9):
        raise MoireSTMError(
            f"FT window |kx| <= {np.max(np.abs(kx)):.3g}, |ky| <= {np.max(np.abs(ky)):.3g} nm^-1 "
            f"exceeds the map's Nyquist limits {kmax_x:.3g}, {kmax_y:.3g} nm^-1 "
            f"(pixels {dx:.3g} x {dy:.3g} nm); use a finer STM map"
        )
    if apodisation not in APODISATIONS:
        raise MoireSTMError(f"unknown apodisation {apodisation!r}; choose one of {APODISATIONS}")
    ax = _apodisation(np.linspace(0, 1, len(x)), apodisation)
    ay = _apodisation(np.linspace(0, 1, len(y)), apodisation)
    apod = ay[:, None] * ax[None, :]
    total = float(apod.sum())
    if total <= 0:
        raise MoireSTMError("apodisation window vanishes on every pixel")
    if remove_q0:
        img = img - float(np.sum(apod * img)) / total
    data = apod * img / total
    # sum_n d[n] exp(-i k (x0 + n dx)): zoom FFT over frequency f = k / 2pi with fs = 1 / dx
    xc, yc = 0.5 * (x[0] + x[-1]), 0.5 * (y[0] + y[-1])
    amp = zoom_fft(data, [kx[0] / (2 * np.pi), kx[-1] / (2 * np.pi)], m=len(kx),
                   fs=1.0 / dx, endpoint=True, axis=1)
    amp = amp * np.exp(-1j * kx * (x[0] - xc))[None, :]
    amp = zoom_fft(amp, [ky[0] / (2 * np.pi), ky[-1] / (2 * np.pi)], m=len(ky),
                   fs=1.0 / dy, endpoint=True, axis=0)
    amp = amp * np.exp(-1j * ky * (y[0] - yc))[:, None]
    params = {"source": "stm_map", "route": "chirp_z_fft", "apodisation": apodisation,
              "remove_q0": bool(remove_q0), "map_shape": list(img.shape),
              "pixel_nm": [dx, dy]}
    return _finish(amp, kx, ky, log_scale, params)


def ft_ldos(source, size=FT_IMAGE_SIZE, window=None, tiling: int = 3, apodisation: str = "none",
            remove_q0: bool = False, log_scale: bool = False, **kwargs) -> FTImage:
    """FT-LDOS magnitude image of a site LDOS (NUFFT) or an STM map (FFT).

    Parameters
    ----------
    source : SiteLDOS-like (has ``ldos_up``) or STMMap-like (has ``image``, ``x_nm``, ``y_nm``).
    size : image side in pixels, or (ny, nx).
    window : (kx_half, ky_half) or (kx_min, kx_max, ky_min, ky_max) in nm^-1; default the
        reference window (see :func:`default_window_nm`).
    tiling : moiré cells per superlattice direction (site LDOS only).
    apodisation : "none", "hann" or "blackman".
    remove_q0 : subtract the mean so the q = 0 peak vanishes.
    log_scale : store log10(|F| + 1e-6 max|F|) instead of |F| (recorded in params).
    kwargs : bias_index, spin, layer, eps, nthreads for a site LDOS.
    """
    if hasattr(source, "ldos_up") and hasattr(source, "positions_nm"):
        return ft_site_ldos(source, size=size, window=window, tiling=tiling, apodisation=apodisation,
                            remove_q0=remove_q0, log_scale=log_scale, **kwargs)
    if hasattr(source, "image") and hasattr(source, "x_nm") and hasattr(source, "y_nm"):
        if kwargs:
            raise MoireSTMError(f"options {sorted(kwargs)} apply only to a site LDOS, not an STM map")
        return ft_stm_map(source, size=size, window=window, apodisation=apodisation,
                          remove_q0=remove_q0, log_scale=log_scale)
    raise MoireSTMError(
        f"ft_ldos needs a SiteLDOS or an STMMap, got {type(source).__name__}"
    )
