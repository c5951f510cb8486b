"""Peak regions of an FT-LDOS image, from the lattice (no peak finding).

Three mutually exclusive regions cover every pixel:

``moire``
    the central moiré peaks: moiré reciprocal-lattice vectors g = n1 G1 + n2 G2 of the first
    ``moire_shells`` shells (|g| > 0), G_i from :attr:`moirestm.lattice.TBGLattice.reciprocal_nm`;
``bragg``
    the first-shell atomic Bragg peaks of both layers (graphene reciprocal vectors rotated by
    -θ/2 for the bottom and +θ/2 for the top layer, as in :class:`~moirestm.lattice.TBGLattice`)
    together with their moiré satellites G_Bragg + g (first ``satellite_shells`` moiré shells);
``elsewhere``
    every other pixel (higher moiré harmonics, background, the q = 0 pixel).

A pixel belongs to a peak when its wave vector lies within ``radius`` of it, where
``radius = max(radius_fraction |G_moiré|, min_radius_px * pixel size)``; ``moire`` wins over
``bragg`` where they would overlap. Pixels are mapped from the image's own ``kx_nm``
(columns) and ``ky_nm`` (rows) axes. Pure numpy: no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..constants import GRAPHENE_LATTICE_NM
from ..errors import MoireSTMError
from ..io import Result

#: Region names, in priority order for overlapping pixels (the last one is the remainder).
REGIONS = ("moire", "bragg", "elsewhere")
REGION_LABELS = {"moire": "central moiré peaks", "bragg": "Bragg peaks + moiré satellites",
                 "elsewhere": "elsewhere"}


def _rotation(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def graphene_bragg_nm(lattice_constant_nm: float = GRAPHENE_LATTICE_NM, angle_rad: float = 0.0) -> np.ndarray:
    """The six first-shell Bragg vectors (6, 2) in nm^-1 of a graphene layer rotated by ``angle_rad``.

    Primitive vectors a1 = a(1, 0), a2 = a(1/2, √3/2) as in :mod:`moirestm.lattice.tbg`;
    |G| = 4π / (√3 a).
    """
    a = float(lattice_constant_nm)
    prim = a * np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
    b = 2.0 * math.pi * np.linalg.inv(prim).T
    vecs = np.array([b[0], b[1], b[0] + b[1], -b[0], -b[1], -(b[0] + b[1])])
    return vecs @ _rotation(angle_rad).T


def moire_shells(reciprocal_nm: np.ndarray, n_shells: int, n_max: int = 6, rtol: float = 1e-6
                 ) -> list[np.ndarray]:
    """Moiré reciprocal-lattice vectors grouped into the first ``n_shells`` shells of equal |g| (g ≠ 0)."""
    if n_shells < 0:
        raise MoireSTMError(f"number of shells must be >= 0, got {n_shells}")
    if n_shells == 0:
        return []
    rng = np.arange(-n_max, n_max + 1)
    n1, n2 = np.meshgrid(rng, rng, indexing="ij")
    coeffs = np.stack([n1.ravel(), n2.ravel()], axis=1)
    g = coeffs @ np.asarray(reciprocal_nm, float)
    norm = np.linalg.norm(g, axis=1)
    keep = norm > 0
    g, norm = g[keep], norm[keep]
    radii = []
    for r in np.sort(norm):
        if not radii or r > radii[-1] * (1 + rtol):
            radii.append(r)
        if len(radii) == n_shells:
            break
    return [g[np.abs(norm - r) <= r * rtol] for r in radii]


@functools.lru_cache(maxsize=32)
def _lattice_geometry(index: int, lattice_constant_nm: float) -> tuple[np.ndarray, float]:
    from ..lattice import TBGLattice

    lat = TBGLattice(int(index), lattice_constant_nm=lattice_constant_nm)
    return np.array(lat.reciprocal_nm), math.radians(lat.twist_angle_deg)


def peak_vectors(index: int, lattice_constant_nm: float = GRAPHENE_LATTICE_NM, n_moire_shells: int = 1,
                 n_satellite_shells: int = 1) -> dict[str, np.ndarray]:
    """Wave vectors (nm^-1) of the peaks of a TBG cell of commensurate ``index``.

    Returns
    -------
    dict with ``moire`` (central moiré peaks), ``bragg`` (12 Bragg vectors: 6 per layer, bottom
    first), ``satellite`` (Bragg + moiré shell vectors, the Bragg peaks themselves excluded),
    ``reciprocal`` (2, 2) moiré G1, G2 and ``twist_angle_rad``.
    """
    recip, theta = _lattice_geometry(int(index), float(lattice_constant_nm))
    central = moire_shells(recip, n_moire_shells)
    bragg = np.concatenate([graphene_bragg_nm(lattice_constant_nm, -theta / 2.0),
                            graphene_bragg_nm(lattice_constant_nm, +theta / 2.0)])
    sats = [bragg[:, None, :] + shell[None, :, :] for shell in moire_shells(recip, n_satellite_shells)]
    sat = np.concatenate([s.reshape(-1, 2) for s in sats]) if sats else np.zeros((0, 2))
    return {"moire": np.concatenate(central) if central else np.zeros((0, 2)), "bragg": bragg,
            "satellite": sat, "reciprocal": recip, "twist_angle_rad": theta}


def pool_axis(axis: np.ndarray, n: int) -> np.ndarray:
    """Axis of an image area-averaged to ``n`` pixels (the bins of torch's adaptive average pooling)."""
    axis = np.asarray(axis, float)
    m = len(axis)
    if n == m:
        return axis.copy()
    starts = (np.arange(n) * m) // n
    ends = -((-(np.arange(n) + 1) * m) // n)
    return np.array([axis[s:e].mean() for s, e in zip(starts, ends)])


@dataclass
class PeakRegions(Result):
    """Boolean region masks of an image grid and the peaks that define them.

    Attributes
    ----------
    masks : ``{region: (ny, nx) bool}`` for :data:`REGIONS`; exclusive and covering.
    kx_nm, ky_nm : column and row wave vectors (nm^-1).
    peaks : ``{"moire", "bragg", "satellite"}`` peak wave vectors (n, 2) in nm^-1.
    radius_nm : radius of a peak's disc.
    index : commensurate index of the lattice.
    """

    masks: dict
    kx_nm: np.ndarray
    ky_nm: np.ndarray
    peaks: dict
    radius_nm: float
    index: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ky_nm), len(self.kx_nm))

    def pixel(self, k_nm: np.ndarray) -> np.ndarray:
        """Fractional (row, col) pixel positions (n, 2) of wave vectors (n, 2); NaN outside the image."""
        k = np.atleast_2d(np.asarray(k_nm, float))
        col = np.interp(k[:, 0], self.kx_nm, np.arange(len(self.kx_nm)), left=np.nan, right=np.nan)
        row = np.interp(k[:, 1], self.ky_nm, np.arange(len(self.ky_nm)), left=np.nan, right=np.nan)
        return np.column_stack([row, col])

    def area_fractions(self) -> dict:
        """Fraction of pixels in each region."""
        n = float(np.prod(self.shape))
        return {r: float(self.masks[r].sum()) / n for r in REGIONS}

    def shares(self, attribution: np.ndarray) -> dict:
        """Share of the total absolute ``attribution`` in each region (sums to 1)."""
        a = np.abs(np.asarray(attribution, float))
        if a.shape != self.shape:
            raise MoireSTMError(f"attribution shape {a.shape} does not match the region grid {self.shape}")
        total = float(a.sum())
        if not np.isfinite(total) or total <= 0:
            return {r: float("nan") for r in REGIONS}
        return {r: float(a[self.masks[r]].sum()) / total for r in REGIONS}

    def intensities(self, image: np.ndarray) -> dict:
        """Mean image value inside each region (integrated intensity per pixel)."""
        img = np.asarray(image, float)
        if img.shape != self.shape:
            raise MoireSTMError(f"image shape {img.shape} does not match the region grid {self.shape}")
        return {r: float(img[self.masks[r]].mean()) if self.masks[r].any() else float("nan") for r in REGIONS}

    def pooled(self, shape: tuple[int, int]) -> "PeakRegions":
        """The same regions on an area-down-sampled grid of ``shape`` (ny, nx)."""
        ny, nx = shape
        return peak_regions(pool_axis(self.kx_nm, nx), pool_axis(self.ky_nm, ny), self.index,
                            **getattr(self, "_options", {}))


def peak_regions(kx_nm: np.ndarray, ky_nm: np.ndarray, index: int, *,
                 lattice_constant_nm: float = GRAPHENE_LATTICE_NM, n_moire_shells: int = 1,
                 n_satellite_shells: int = 1, radius_fraction: float = 0.3, min_radius_px: float = 1.0
                 ) -> PeakRegions:
    """Region masks of an image with axes ``kx_nm`` (columns) and ``ky_nm`` (rows).

    Parameters
    ----------
    index : commensurate index of the sample's TBG cell (sample parameter ``index``).
    n_moire_shells : moiré shells counted as central peaks.
    n_satellite_shells : moiré shells added around each Bragg peak as satellites.
    radius_fraction : peak radius in units of |G_moiré|.
    min_radius_px : lower bound of the radius in pixels (largest pixel side).
    """
    kx, ky = np.asarray(kx_nm, float), np.asarray(ky_nm, float)
    if kx.ndim != 1 or ky.ndim != 1 or len(kx) < 2 or len(ky) < 2:
        raise MoireSTMError("kx_nm and ky_nm must be 1-D axes with at least 2 points")
    if not (np.all(np.diff(kx) > 0) and np.all(np.diff(ky) > 0)):
        raise MoireSTMError("kx_nm and ky_nm must be strictly increasing")
    peaks = peak_vectors(index, lattice_constant_nm, n_moire_shells, n_satellite_shells)
    g_moire = float(np.min(np.linalg.norm(peaks["reciprocal"], axis=1)))
    pixel = max(float(np.mean(np.diff(kx))), float(np.mean(np.diff(ky))))
    radius = max(radius_fraction * g_moire, min_radius_px * pixel)
    kxx, kyy = np.meshgrid(kx, ky)

    def disc(points: np.ndarray) -> np.ndarray:
        mask = np.zeros(kxx.shape, bool)
        for p in points:
            mask |= (kxx - p[0]) ** 2 + (kyy - p[1]) ** 2 <= radius ** 2
        return mask

    moire = disc(peaks["moire"])
    bragg = disc(np.concatenate([peaks["bragg"], peaks["satellite"]])) & ~moire
    masks = {"moire": moire, "bragg": bragg, "elsewhere": ~(moire | bragg)}
    regions = PeakRegions(masks, kx, ky, {k: peaks[k] for k in ("moire", "bragg", "satellite")}, radius, int(index))
    regions._options = {"lattice_constant_nm": lattice_constant_nm, "n_moire_shells": n_moire_shells,
                        "n_satellite_shells": n_satellite_shells, "radius_fraction": radius_fraction,
                        "min_radius_px": min_radius_px}
    return regions


def sample_lattice(params: dict) -> tuple[int, float]:
    """(commensurate index, graphene lattice constant) of a sample from its parameters."""
    if "index" not in params:
        raise MoireSTMError("sample parameters lack the commensurate 'index'; cannot place the peaks "
                            f"(has: {', '.join(sorted(params))})")
    return int(params["index"]), float(params.get("lattice_constant_nm", GRAPHENE_LATTICE_NM))


def regions_for_sample(store, key: str, shape: tuple[int, int] | None = None, **options) -> PeakRegions:
    """Regions of a stored sample from its ``kx_nm``/``ky_nm`` axes and lattice, optionally pooled to ``shape``."""
    params = store.params(key)
    index, a = sample_lattice(params)
    try:
        axes = store.arrays(key, ["kx_nm", "ky_nm"])
    except (KeyError, MoireSTMError) as exc:
        raise MoireSTMError(f"sample {key} has no k axes (kx_nm, ky_nm); cannot map peaks to pixels ({exc})") \
            from None
    regions = _cached_regions(tuple(np.round(axes["kx_nm"], 12)), tuple(np.round(axes["ky_nm"], 12)), index, a,
                              tuple(sorted(options.items())))
    return regions if shape is None or tuple(shape) == regions.shape else regions.pooled(shape)


@functools.lru_cache(maxsize=64)
def _cached_regions(kx: tuple, ky: tuple, index: int, a: float, options: tuple) -> PeakRegions:
    return peak_regions(np.array(kx), np.array(ky), index, lattice_constant_nm=a, **dict(options))


__all__ = ["REGIONS", "REGION_LABELS", "PeakRegions", "peak_regions", "peak_vectors", "graphene_bragg_nm",
           "moire_shells", "pool_axis", "regions_for_sample", "sample_lattice"]
