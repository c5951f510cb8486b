"""STM-artifact augmentation of FT-LDOS images, and label-preserving lattice symmetries.

Two ways to apply the artifacts:

``space="ft"`` (fast)
    Each real-space artifact is applied through its exact or leading-order effect on the
    FT magnitude: a global gain scales ``|F|``; white noise of the map adds a circular complex
    Gaussian to ``F`` (so ``|F| -> |(|F| + n_r) + i n_i|``, exact in distribution because
    the noise phase is uniform); scan-line offsets add noise on the ``k_x = 0`` column; a
    Gaussian tip of covariance ``S`` multiplies ``F`` by ``exp(-k^T S k / 2)``; a uniform
    strain ``r -> (1 + e) r`` maps ``k -> (1 + e)^-T k``; an offset adds to the DC pixel.
``space="real"`` (physically faithful)
    The artifacts (including a linear gain drift along the slow scan axis, which has no
    simple FT form) are applied to the stored real-space ``stm_map``; both the clean and the
    corrupted map are Fourier transformed with numpy (Hann window), resampled on the stored
    ``(k_x, k_y)`` grid, and the *difference* is added to the stored FT image after a
    least-squares scale match.  With no artifact the stored image is returned unchanged.

Lattice symmetries (rotations by multiples of 60° and the mirror ``k_x -> -k_x``) are
applied in reciprocal space, in physical ``k`` coordinates (the FT window has different
``k_x`` and ``k_y`` extents).  They preserve U: a rotated sample, or the mirror image
(twist angle ``-theta``), has the same energetics.  In ``space="ft"`` the symmetry operation
and the strain are one resampling, done first, so the scan artifacts (scan lines, tip
orientation) stay in the frame of the scan while the lattice orientation is random, as in
an experiment; in ``space="real"`` the symmetry is applied last.

The FT-space path works on whole batches in torch (:meth:`Augmenter.batch`), which keeps
augmented training nearly as fast as clean training; per-sample draws still depend only on
each sample's own generator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..constants import FT_WINDOW_FRACTION, GRAPHENE_LATTICE_NM
from ..errors import MoireSTMError

#: Poisson ratio of graphene for uniaxial strain (Blakslee et al., J. Appl. Phys. 41, 3373 (1970)).
GRAPHENE_POISSON = 0.165


@dataclass(frozen=True)
class AugmentConfig:
    """Artifact strengths; each artifact is applied with probability ``p``.

    gain : std of the log of the global gain.
    drift : max relative linear gain change across the scan (``space="real"`` only).
    offset : DC offset, relative to the image maximum (ft) or the map std (real).
    noise : white-noise std, relative to the mean FT magnitude (ft) or the map std (real).
    scanline : per-scan-line offset std, same units as ``noise``.
    blur_nm : max Gaussian tip width (nm); the minor axis is ``blur_nm * (1 - anisotropy)``.
    anisotropy : max relative difference of the tip's two axes.
    strain : max uniaxial strain (fraction), random direction, Poisson ratio of graphene.
    symmetry : random 60° rotation and mirror.
    space : ``"ft"`` or ``"real"`` (see module docstring).
    """

    gain: float = 0.0
    drift: float = 0.0
    offset: float = 0.0
    noise: float = 0.0
    scanline: float = 0.0
    blur_nm: float = 0.0
    anisotropy: float = 0.0
    strain: float = 0.0
    symmetry: bool = False
    p: float = 1.0
    space: str = "ft"

    def to_dict(self) -> dict:
        return asdict(self)


#: STM-artifact presets.  The lattice symmetries are a separate switch (``symmetry``): simulated FT
#: images of a tiled rhombic supercell are only C2-symmetric (the tiling's shape factor broadens every
#: peak anisotropically; a 60° rotation changes the log image by ~80 % of its variation), so rotated
#: training images lie outside the distribution of unrotated test images.  Measured maps are brought
#: into the simulation frame by :mod:`moirestm.measured.calibrate` before prediction.
PRESETS: dict[str, AugmentConfig] = {
    "clean": AugmentConfig(),
    "mild": AugmentConfig(gain=0.05, drift=0.02, offset=0.02, noise=0.02, blur_nm=0.02, anisotropy=0.2, p=0.7),
    # symmetry breaking: strain and anisotropic tips, which lower the C6 symmetry of the pattern
    "symb": AugmentConfig(gain=0.05, noise=0.02, blur_nm=0.04, anisotropy=0.6, strain=0.02, p=0.8),
    "noisy": AugmentConfig(gain=0.15, drift=0.05, offset=0.1, noise=0.10, scanline=0.05, blur_nm=0.05,
                           anisotropy=0.5, strain=0.01, p=0.9),
}


def get_preset(name: str | AugmentConfig | None, space: str | None = None,
               symmetry: bool | None = None) -> AugmentConfig:
    """Preset by name (``clean``, ``mild``, ``symb``, ``noisy``), optionally in ``space`` and with the
    random lattice symmetries (60° rotations, mirror) switched on or off."""
    if name is None:
        cfg = PRESETS["clean"]
    elif isinstance(name, AugmentConfig):
        cfg = name
    elif isinstance(name, dict):
        cfg = AugmentConfig(**name)
    elif name in PRESETS:
        cfg = PRESETS[name]
    else:
        raise MoireSTMError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)}")
    if space is not None:
        cfg = replace(cfg, space=space)
    if symmetry is not None:
        cfg = replace(cfg, symmetry=bool(symmetry))
    if cfg.space not in ("ft", "real"):
        raise MoireSTMError(f"augmentation space must be 'ft' or 'real', not {cfg.space!r}")
    return cfg


def default_k_axes(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """k axes (nm^-1) of the default FT window (constants.FT_WINDOW_FRACTION), used when none is stored."""
    ny, nx = shape
    hx = FT_WINDOW_FRACTION * 2 * math.pi / GRAPHENE_LATTICE_NM
    hy = FT_WINDOW_FRACTION * 4 * math.pi / (math.sqrt(3) * GRAPHENE_LATTICE_NM)
    return np.linspace(-hx, hx, nx, endpoint=False), np.linspace(-hy, hy, ny, endpoint=False)


def sample_k_axes(sample, shape) -> tuple[np.ndarray, np.ndarray]:
    kx = sample.get("kx_nm") if sample is not None else None
    ky = sample.get("ky_nm") if sample is not None else None
    if kx is None or ky is None or len(kx) != shape[1] or len(ky) != shape[0]:
        return default_k_axes(shape)
    return np.asarray(kx, float), np.asarray(ky, float)


def k_transform(image: np.ndarray, m_xy: np.ndarray, kx: np.ndarray, ky: np.ndarray,
                fill: np.ndarray | None = None) -> np.ndarray:
    """Resample ``out(k) = image(M^-1 k)`` on the (kx, ky) grid; ``M`` acts on ``(k_x, k_y)``.

    Points whose source lies outside the window take ``fill`` (default: the input image,
    a good stand-in for the nearly C6-symmetric FT patterns).
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    base = None if fill is None else torch.as_tensor(np.asarray(fill, dtype=np.float32))[None]
    return resample_k(x, np.linalg.inv(m_xy)[None], kx, ky, fill=base)[0].numpy()


def resample_k(images: torch.Tensor, minv: np.ndarray, kx: np.ndarray, ky: np.ndarray,
               fill: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear ``out_b(k) = image_b(minv_b k)`` for a batch ``(B, ny, nx)`` or ``(B, C, ny, nx)`` on one grid.

    ``minv`` is ``(B, 2, 2)``, acting on ``(k_x, k_y)`` (shared by a sample's channels).  Points whose
    source lies outside the window take ``fill`` (default: the input images).
    """
    squeeze = images.ndim == 3
    x = images[:, None] if squeeze else images
    fill = x if fill is None else (fill[:, None] if squeeze else fill)
    b, _, ny, nx = x.shape
    kx, ky = np.asarray(kx, np.float64), np.asarray(ky, np.float64)
    dkx, dky = kx[1] - kx[0], ky[1] - ky[0]
    kxs, kys = _k_mesh(kx, ky)
    m = torch.from_numpy(np.asarray(minv, np.float32).reshape(b, 2, 2))[:, :, :, None, None]
    fj = ((m[:, 0, 0] * kxs + m[:, 0, 1] * kys) - float(kx[0])) / float(dkx)
    fi = ((m[:, 1, 0] * kxs + m[:, 1, 1] * kys) - float(ky[0])) / float(dky)
    eps = 1e-4
    inside = (fi >= -eps) & (fi <= ny - 1 + eps) & (fj >= -eps) & (fj <= nx - 1 + eps)
    grid = torch.stack([2 * fj.clamp(0, nx - 1) / (nx - 1) - 1, 2 * fi.clamp(0, ny - 1) / (ny - 1) - 1], -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    out = torch.where(inside[:, None], out, fill)
    return out[:, 0] if squeeze else out


def _k_mesh(kx: np.ndarray, ky: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k_x, k_y)`` at every pixel, float32 tensors of shape ``(ny, nx)``."""
    kxx, kyy = np.meshgrid(np.asarray(kx, np.float64), np.asarray(ky, np.float64))
    return torch.from_numpy(kxx.astype(np.float32)), torch.from_numpy(kyy.astype(np.float32))


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def symmetry_matrix(rotation: int, mirror: bool) -> np.ndarray:
    """Point operation ``C6^rotation`` (times the mirror ``k_x -> -k_x``) on (k_x, k_y)."""
    m = _rotation(rotation * math.pi / 3)
    if mirror:
        m = m @ np.diag([-1.0, 1.0])
    return m


def strain_tensor(magnitude: float, angle: float) -> np.ndarray:
    """Uniaxial strain along ``angle`` with graphene's Poisson contraction."""
    n = np.array([math.cos(angle), math.sin(angle)])
    t = np.array([-n[1], n[0]])
    return magnitude * (np.outer(n, n) - GRAPHENE_POISSON * np.outer(t, t))


def _normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal float32 tensor from its own seeded torch generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _tip_covariance(rng, cfg: AugmentConfig) -> np.ndarray:
    major = rng.uniform(0.3, 1.0) * cfg.blur_nm
    minor = major * (1 - rng.uniform(0, cfg.anisotropy))
    r = _rotation(rng.uniform(0, math.pi))
    return r @ np.diag([major ** 2, minor ** 2]) @ r.T


class Augmenter:
    """Callable ``augment(image, rng, sample) -> image`` for :class:`moirestm.learn.data.ImageDataset`.

    Parameters
    ----------
    preset : preset name or :class:`AugmentConfig`.
    space : override the preset's space (``"ft"`` or ``"real"``).
    symmetry : override the preset's random lattice symmetries.
    """

    def __init__(self, preset: str | AugmentConfig = "clean", space: str | None = None,
                 symmetry: bool | None = None):
        self.config = get_preset(preset, space, symmetry)
        self._clean_ft: dict = {}

    @property
    def batched(self) -> bool:
        """Whether :meth:`batch` can augment whole batches (the FT-space path)."""
        return self.config.space == "ft"

    @property
    def is_identity(self) -> bool:
        c = self.config
        return not c.symmetry and not any([c.gain, c.drift, c.offset, c.noise, c.scanline, c.blur_nm, c.strain])

    def __call__(self, image: np.ndarray, rng: np.random.Generator, sample=None) -> np.ndarray:
        cfg = self.config
        if self.is_identity:
            return image
        kx, ky = sample_k_axes(sample, np.shape(image)[-2:])
        if cfg.space == "ft":
            x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
            return self.batch(x, [rng], kx, ky)[0].numpy()
        if np.ndim(image) != 2:
            raise MoireSTMError("real-space augmentation works on single images; stacked channels need space='ft'")
        out = self._real_space(image, rng, sample, kx, ky)
        if cfg.symmetry:
            rot, mir = int(rng.integers(6)), bool(rng.integers(2))
            if rot or mir:
                out = k_transform(out, symmetry_matrix(rot, mir), kx, ky)
        return np.maximum(out, 0).astype(np.float32)

    def _apply(self, rng) -> bool:
        return rng.uniform() < self.config.p

    # ------------------------------------------------------------ FT-space artifacts, batched
    def batch(self, images: torch.Tensor, rngs, kx: np.ndarray, ky: np.ndarray) -> torch.Tensor:
        """FT-space artifacts and symmetries on a batch ``(B, ny, nx)`` or ``(B, C, ny, nx)`` sharing one k grid.

        ``rngs`` holds one generator per image; image ``b``'s draws use ``rngs[b]`` only, so the
        result for an image does not depend on the rest of the batch.  The channels of a stacked
        sample (maps of one scan area at several biases) share strain, symmetry, tip and gain, and
        get independent noise.
        """
        cfg = self.config
        if cfg.space != "ft":
            raise MoireSTMError("batched augmentation is only available for space='ft'")
        x = images.to(torch.float32)
        if self.is_identity:
            return x
        squeeze = x.ndim == 3
        x = x[:, None].clone() if squeeze else x.clone()
        b, c, ny, nx = x.shape
        draws = [self._ft_draws(rng) for rng in rngs]
        mean = x.mean(dim=(2, 3))
        moved = [i for i, d in enumerate(draws) if d["minv"] is not None]
        if moved:
            x[moved] = resample_k(x[moved], np.stack([draws[i]["minv"] for i in moved]), kx, ky)
        blurred = [i for i, d in enumerate(draws) if d["cov"] is not None]
        if blurred:
            cov = torch.from_numpy(np.stack([draws[i]["cov"] for i in blurred]).astype(np.float32))[:, :, :, None, None]
            kxx, kyy = _k_mesh(kx, ky)
            quad = cov[:, 0, 0] * kxx ** 2 + 2 * cov[:, 0, 1] * kxx * kyy + cov[:, 1, 1] * kyy ** 2
            x[blurred] = x[blurred] * torch.exp(-0.5 * quad)[:, None]
        x = x * torch.tensor([d["gain"] for d in draws], dtype=torch.float32)[:, None, None, None]
        j0, i0 = int(np.argmin(np.abs(kx))), int(np.argmin(np.abs(ky)))
        offset = torch.tensor([d["offset"] for d in draws], dtype=torch.float32)[:, None]
        if torch.any(offset != 0):
            x[:, :, i0, j0] = torch.abs(x[:, :, i0, j0] + offset * x.amax(dim=(2, 3)))
        noisy = [i for i, d in enumerate(draws) if d["noise"] is not None]
        if noisy:  # circular complex Gaussian of std noise * mean |F|
            field = torch.stack([_normal((c, 2, ny, nx), draws[i]["noise"])
                                 * (cfg.noise * mean[i] / math.sqrt(2))[:, None, None, None] for i in noisy])
            x[noisy] = torch.hypot(x[noisy] + field[:, :, 0], field[:, :, 1])
        lined = [i for i, d in enumerate(draws) if d["scanline"] is not None]
        if lined:  # per-line offsets of the map all land on the k_x = 0 column
            field = torch.stack([_normal((c, 2, ny), draws[i]["scanline"])
                                 * (cfg.scanline * mean[i] * math.sqrt(nx / 2))[:, None, None] for i in lined])
            x[lined, :, :, j0] = torch.hypot(x[lined, :, :, j0] + field[:, :, 0], field[:, :, 1])
        x = torch.clamp(x, min=0)
        return x[:, 0] if squeeze else x

    def _ft_draws(self, rng: np.random.Generator) -> dict:
        """One sample's random draws for the FT-space path (``None`` where an artifact is off).

        Noise fields are drawn later from torch generators seeded here (``noise``, ``scanline``).
        """
        cfg = self.config
        m = np.eye(2)
        if cfg.strain and self._apply(rng):
            m = np.linalg.inv(np.eye(2) + strain_tensor(rng.uniform(-cfg.strain, cfg.strain),
                                                        rng.uniform(0, math.pi))).T
        if cfg.symmetry:
            m = symmetry_matrix(int(rng.integers(6)), bool(rng.integers(2))) @ m
        cov = _tip_covariance(rng, cfg) if cfg.blur_nm and self._apply(rng) else None
        gain = math.exp(rng.normal(0, cfg.gain)) if cfg.gain and self._apply(rng) else 1.0
        offset = rng.normal(0, cfg.offset) if cfg.offset and self._apply(rng) else 0.0
        noise = int(rng.integers(2 ** 62)) if cfg.noise and self._apply(rng) else None
        line = int(rng.integers(2 ** 62)) if cfg.scanline and self._apply(rng) else None
        minv = None if np.allclose(m, np.eye(2)) else np.linalg.inv(m)
        return {"minv": minv, "cov": cov, "gain": gain, "offset": offset, "noise": noise, "scanline": line}

    # ------------------------------------------------------------ real-space artifacts
    def _real_space(self, image, rng, sample, kx, ky) -> np.ndarray:
        cfg = self.config
        stm = sample.get("stm_map") if sample is not None else None
        if stm is None:
            raise MoireSTMError("real-space augmentation needs the sample's 'stm_map' dataset, which is absent")
        stm = np.asarray(stm, dtype=np.float64)
        if stm.ndim != 2:
            raise MoireSTMError(f"stm_map must be 2-D, has shape {stm.shape}")
        dx, dy = map_spacing(sample, stm.shape)
        key = (id(sample.store), sample.key)
        if key not in self._clean_ft:
            if len(self._clean_ft) > 2048:
                self._clean_ft.clear()
            self._clean_ft[key] = numpy_ft(stm, dx, dy, kx, ky)
        clean = self._clean_ft[key]
        m = stm.copy()
        std = float(stm.std()) or 1.0
        ny, nx = m.shape
        if cfg.strain and self._apply(rng):
            e = strain_tensor(rng.uniform(-cfg.strain, cfg.strain), rng.uniform(0, math.pi))
            a = np.linalg.inv(np.eye(2) + e)  # source position r0 = (1+e)^-1 r, pixel units below
            a_pix = np.array([[a[1, 1], a[1, 0] * dx / dy], [a[0, 1] * dy / dx, a[0, 0]]])
            c = np.array([(ny - 1) / 2, (nx - 1) / 2])
            m = ndimage.affine_transform(m, a_pix, offset=c - a_pix @ c, order=1, mode="reflect")
        if cfg.blur_nm and self._apply(rng):
            cov = _tip_covariance(rng, cfg)
            qx = 2 * np.pi * np.fft.fftfreq(nx, dx)
            qy = 2 * np.pi * np.fft.fftfreq(ny, dy)
            qxx, qyy = np.meshgrid(qx, qy)
            quad = cov[0, 0] * qxx ** 2 + 2 * cov[0, 1] * qxx * qyy + cov[1, 1] * qyy ** 2
            mean = m.mean()
            m = np.real(np.fft.ifft2(np.fft.fft2(m - mean) * np.exp(-0.5 * quad))) + mean
        if (cfg.gain or cfg.drift) and self._apply(rng):
            ramp = np.linspace(-0.5, 0.5, ny)[:, None]
            m = m * math.exp(rng.normal(0, cfg.gain)) * (1 + rng.uniform(-cfg.drift, cfg.drift) * ramp)
        if cfg.offset and self._apply(rng):
            m = m + rng.normal(0, cfg.offset) * std
        if cfg.noise and self._apply(rng):
            m = m + rng.normal(0, cfg.noise * std, m.shape)
        if cfg.scanline and self._apply(rng):
            m = m + rng.normal(0, cfg.scanline * std, (ny, 1))
        corrupted = numpy_ft(m, dx, dy, kx, ky)
        denom = float(np.sum(clean * clean))
        scale = float(np.sum(image * clean)) / denom if denom > 0 else 0.0
        return image + scale * (corrupted - clean)


def map_spacing(sample, shape) -> tuple[float, float]:
    """Pixel spacing (dx, dy) in nm of the sample's STM map, from its stored axes."""
    for xname, yname in (("stm_x_nm", "stm_y_nm"), ("x_nm", "y_nm"), ("map_x_nm", "map_y_nm")):
        x, y = sample.get(xname), sample.get(yname)
        if x is not None and y is not None and len(x) > 1 and len(y) > 1:
            return float(x[1] - x[0]), float(y[1] - y[0])
    raise MoireSTMError("real-space augmentation needs the STM map's x/y axes (stm_x_nm, stm_y_nm); "
                        "the store does not hold them")


def numpy_ft(stm: np.ndarray, dx: float, dy: float, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """|FT| of a real-space map (mean removed, Hann window) sampled on the (kx, ky) grid in nm^-1."""
    ny, nx = stm.shape
    w = np.outer(np.hanning(ny), np.hanning(nx))
    f = np.abs(np.fft.fftshift(np.fft.fft2((stm - stm.mean()) * w)))
    qx = 2 * np.pi * np.fft.fftshift(np.fft.fftfreq(nx, dx))
    qy = 2 * np.pi * np.fft.fftshift(np.fft.fftfreq(ny, dy))
    kxx, kyy = np.meshgrid(kx, ky)
    fi = (kyy - qy[0]) / (qy[1] - qy[0])
    fj = (kxx - qx[0]) / (qx[1] - qx[0])
    return ndimage.map_coordinates(f, [fi, fj], order=1, mode="constant", cval=0.0)
