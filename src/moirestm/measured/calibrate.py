"""Calibration of measured TBG maps to the simulation frame.

Steps (:func:`calibrate`):

1. levelling: plane subtraction, then line-by-line polynomial subtraction (scan lines along x);
2. detection in the FFT (Hann window) of the three moiré peaks and the three atomic Bragg
   peaks of one layer, as 60°-spaced constellations, refined to sub-pixel precision by
   maximising the discrete-time Fourier transform (DTFT);
3. optional Lawler–Fujita drift correction (Lawler et al., Nature 466, 347 (2010)): the
   phase of the lock-in signal at each Bragg peak, low-pass filtered over a third of a moiré period,
   gives the displacement field u(r), and the map is resampled at r - u(r);
4. an affine fit q = M k of the measured Bragg vectors q to the ideal ones k of the top
   layer of the simulation (graphene reciprocal vectors at 30° + 60°n, rotated by +theta/2);
   M holds the scan rotation, the piezo scale error and linear drift / shear;
5. the twist angle from the corrected moiré wave vectors, |G_m| = 2 sin(theta/2) |b|, i.e.
   L = a / (2 sin(theta/2)) with a = 0.246 nm, independent of the piezo calibration;
6. the model-ready image |F(k)| on the simulated FT-LDOS window, evaluated exactly at the
   measured frequencies q = M k with a type-2 non-uniform FFT (finufft).

Without resolved atoms (Bragg peaks beyond Nyquist or too weak) the scale comes from the
file calibration, with :data:`PIEZO_SCALE_UNCERTAINTY` added to the twist-angle uncertainty.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from ..constants import FT_IMAGE_SIZE, GRAPHENE_LATTICE_NM
from ..errors import MoireSTMError
from ..io import Result
from ..observables.ftldos import k_axes
from .readers import STMImage

#: |b| = 4 pi / (sqrt(3) a): length of the graphene reciprocal vectors in nm^-1.
BRAGG_NM = 4.0 * math.pi / (math.sqrt(3.0) * GRAPHENE_LATTICE_NM)
#: Twist-angle search range in degrees (moiré peaks are searched between the matching |G_m|).
TWIST_RANGE_DEG = (0.4, 10.0)
#: Bragg peaks are searched in |k| within this fraction of BRAGG_NM (file calibration error).
BRAGG_SEARCH_FRACTION = (0.75, 1.25)
#: Minimum peak-to-median power ratio for a detected Bragg constellation.
BRAGG_MIN_SNR = 30.0
#: Minimum power of each moiré peak relative to the mean noise power (pure noise rarely exceeds ~10x).
MOIRE_MIN_SNR = 30.0
#: Relative uncertainty of a piezo calibration, used only when atoms are not resolved.
PIEZO_SCALE_UNCERTAINTY = 0.03
#: Systematic floor of a refined peak position in FFT bins (2 pi / scan size): leakage of
#: neighbouring peaks through the Hann window biases noise-free synthetic maps by <= 0.003 bins.
PEAK_FLOOR_BINS = 0.01
#: Lawler-Fujita low-pass length as a fraction of the moiré period: short enough to follow
#: drift on the scale of a few moiré cells, long enough that the other layer's Bragg peak one
#: moiré vector away is suppressed (Gaussian weight exp(-(7.26/3)^2/2) ~ 0.05).
DRIFT_LENGTH_FRACTION = 1.0 / 3.0
#: Ratio of partner-peak powers above which the layer of a Bragg peak counts as determined.
LAYER_RATIO = 1.5


# --------------------------------------------------------------------------- levelling
def level_plane(image: np.ndarray) -> np.ndarray:
    """Subtract the least-squares plane a + b x + c y."""
    ny, nx = image.shape
    y, x = np.mgrid[0:ny, 0:nx]
    design = np.column_stack([np.ones(image.size), x.ravel() / nx, y.ravel() / ny])
    coef, *_ = np.linalg.lstsq(design, image.ravel(), rcond=None)
    return image - (design @ coef).reshape(image.shape)


def level_lines(image: np.ndarray, order: int = 1) -> np.ndarray:
    """Subtract from every scan line (row) its least-squares polynomial of degree ``order`` (0: median)."""
    if order < 0:
        return image.copy()
    if order == 0:
        return image - np.median(image, axis=1, keepdims=True)
    nx = image.shape[1]
    x = np.linspace(-1.0, 1.0, nx)
    vander = np.vander(x, order + 1)
    coef, *_ = np.linalg.lstsq(vander, image.T, rcond=None)
    return image - (vander @ coef).T


# --------------------------------------------------------------------------- Fourier tools
def _hann2d(shape) -> np.ndarray:
    ny, nx = shape
    return np.outer(np.hanning(ny), np.hanning(nx))


class _Spectrum:
    """Windowed image with its FFT power and a DTFT evaluator at arbitrary k (nm^-1)."""

    def __init__(self, image: np.ndarray, pixel_nm: tuple[float, float]):
        self.shape = image.shape
        self.dx, self.dy = pixel_nm
        self.window = _hann2d(image.shape)
        data = image - np.sum(self.window * image) / np.sum(self.window)
        self.weighted = self.window * data
        ny, nx = image.shape
        self.x = np.arange(nx) * self.dx
        self.y = np.arange(ny) * self.dy
        f = np.fft.fftshift(np.fft.fft2(self.weighted))
        self.power = np.abs(f) ** 2
        self.kx = 2 * np.pi * np.fft.fftshift(np.fft.fftfreq(nx, self.dx))
        self.ky = 2 * np.pi * np.fft.fftshift(np.fft.fftfreq(ny, self.dy))
        self.KX, self.KY = np.meshgrid(self.kx, self.ky)
        self.K = np.hypot(self.KX, self.KY)
        self.dk = 2 * np.pi / max(nx * self.dx, ny * self.dy)
        self.k_nyquist = math.pi / max(self.dx, self.dy)
        self.noise_power = float(np.median(self.power[self.K > 0.25 * self.K.max()])) / math.log(2.0)

    def dtft(self, k) -> complex:
        ex = np.exp(-1j * k[0] * self.x)
        ey = np.exp(-1j * k[1] * self.y)
        return complex(ey @ self.weighted @ ex)

    def dtft_grid(self, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
        """|DTFT|^2 on the outer grid (ky rows, kx columns)."""
        ex = np.exp(-1j * np.outer(self.x, kx))
        ey = np.exp(-1j * np.outer(ky, self.y))
        return np.abs(ey @ self.weighted @ ex) ** 2

    def refine(self, k0) -> tuple[np.ndarray, float]:
        """Sub-pixel peak position (nm^-1) maximising |DTFT|^2 near ``k0``, and that power.

        Three zooms of a 7 x 7 DTFT grid (steps 0.3, 0.05, 0.01 FFT bins), each followed
        by a parabolic fit of the log power around the grid maximum.
        """
        k = np.asarray(k0, dtype=float).copy()
        offsets = np.arange(-3, 4)
        for step in (0.3, 0.05, 0.01):
            h = step * self.dk
            p = self.dtft_grid(k[0] + h * offsets, k[1] + h * offsets)
            iy, ix = np.unravel_index(np.argmax(p), p.shape)
            shift = np.array([offsets[ix], offsets[iy]], dtype=float)
            if 0 < ix < 6 and 0 < iy < 6:
                lp = np.log(np.maximum(p, 1e-300))
                for axis, (c, lo, hi) in enumerate(((lp[iy, ix], lp[iy, ix - 1], lp[iy, ix + 1]),
                                                    (lp[iy, ix], lp[iy - 1, ix], lp[iy + 1, ix]))):
                    denom = lo - 2 * c + hi
                    if denom < 0:
                        shift[axis] += 0.5 * (lo - hi) / denom
            k = k + h * shift
        if np.linalg.norm(k - np.asarray(k0)) > 3 * self.dk:  # wandered to another peak: keep the start
            k = np.asarray(k0, dtype=float)
        return k, abs(self.dtft(k)) ** 2

    def position_sigma_nm(self, power: float) -> float:
        """Cramér–Rao-type 1-sigma error of a peak position (nm^-1) from its power and the noise.

        For a real sinusoid of amplitude A in white noise of variance s^2 on N = nx ny pixels,
        var(omega_x) = 12 s^2 / (A^2 N nx^2) (Rife & Boorstyn, IEEE Trans. Inf. Theory 20,
        591 (1974)); the Hann window roughly doubles it. A floor of :data:`PEAK_FLOOR_BINS`
        FFT bins covers the leakage bias from neighbouring peaks.
        """
        ny, nx = self.shape
        s1, s2 = float(self.window.sum()), float((self.window**2).sum())
        amplitude = 2.0 * math.sqrt(power) / s1
        noise_var = self.noise_power / s2
        var = 2.0 * 12.0 * noise_var / (amplitude**2 * nx * ny * min(nx, ny) ** 2)
        floor = PEAK_FLOOR_BINS * self.dk
        return math.sqrt(var / min(self.dx, self.dy) ** 2 + floor**2)


def _local_maxima(spec: _Spectrum, kmin: float, kmax: float, n: int = 40) -> np.ndarray:
    """Up to ``n`` strongest local maxima (k vectors, half plane ky > 0 or ky = 0, kx > 0) in kmin < |k| < kmax."""
    p = spec.power
    peaks = (p == ndimage.maximum_filter(p, size=3)) & (spec.K > kmin) & (spec.K < kmax)
    half = (spec.KY > 0) | ((spec.KY == 0) & (spec.KX > 0))
    iy, ix = np.nonzero(peaks & half)
    order = np.argsort(p[iy, ix])[::-1][:n]
    return np.column_stack([spec.KX[iy[order], ix[order]], spec.KY[iy[order], ix[order]], p[iy[order], ix[order]]])


def _constellation(spec: _Spectrum, kmin: float, kmax: float, tolerance_deg: float = 15.0,
                   radial_tolerance: float = 0.25) -> np.ndarray | None:
    """Best triple of peaks 60° apart (mod 180°) with similar |k|: (3, 2) k vectors, or None."""
    cand = _local_maxima(spec, kmin, kmax)
    if len(cand) < 3:
        return None
    ang = np.degrees(np.arctan2(cand[:, 1], cand[:, 0])) % 180.0
    rad = np.hypot(cand[:, 0], cand[:, 1])
    best, best_score = None, 0.0
    for i in range(len(cand)):
        members = [i]
        for step in (60.0, 120.0):
            d = np.abs(((ang - ang[i] - step) + 90.0) % 180.0 - 90.0)
            ok = (d < tolerance_deg) & (np.abs(rad / rad[i] - 1.0) < radial_tolerance)
            if not ok.any():
                break
            members.append(int(np.flatnonzero(ok)[np.argmax(cand[ok, 2])]))
        if len(members) < 3:
            continue
        score = float(min(cand[members, 2]))
        if score > best_score:
            best, best_score = members, score
    if best is None:
        return None
    return cand[best, :2]


def _cross(a, b) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def _angle_deg(v) -> float:
    return math.degrees(math.atan2(v[1], v[0]))


def _wrap(angle_deg: float, period: float = 60.0) -> float:
    return (angle_deg + period / 2.0) % period - period / 2.0


def _ideal_bragg(twist_deg: float) -> np.ndarray:
    """(6, 2) Bragg vectors of the simulation's top layer (+theta/2), sorted by angle."""
    angles = np.radians(30.0 + 60.0 * np.arange(6) + twist_deg / 2.0)
    return BRAGG_NM * np.column_stack([np.cos(angles), np.sin(angles)])


def _sorted_six(vectors: np.ndarray) -> np.ndarray:
    six = np.vstack([vectors, -vectors])
    return six[np.argsort(np.arctan2(six[:, 1], six[:, 0]))]


def fit_affine(measured: np.ndarray, twist_deg: float, mirrored: bool) -> np.ndarray:
    """2x2 M with q = M k mapping the ideal top-layer Bragg vectors k to the measured ones q.

    Of the six equivalent assignments (60° lattice symmetry) the one whose rotation part
    lies within ±30° is returned; ``mirrored`` reverses the handedness (det M < 0).
    """
    q = _sorted_six(measured)
    if mirrored:
        q = q[::-1]
    k = _ideal_bragg(twist_deg)
    best, best_angle = None, None
    for shift in range(6):
        qs = np.roll(q, shift, axis=0)
        mt, *_ = np.linalg.lstsq(k, qs, rcond=None)
        m = mt.T
        u, _, vt = np.linalg.svd(m)
        rot = u @ vt
        angle = abs(_angle_deg(rot[:, 0]))
        if best is None or angle < best_angle:
            best, best_angle = m, angle
    return best


# --------------------------------------------------------------------------- drift correction
def _wrap_pi(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def unwrap_phase(wrapped: np.ndarray) -> np.ndarray:
    """Least-squares 2D phase unwrapping (Ghiglia & Romero, JOSA A 11, 107 (1994)).

    Integrates the wrapped phase differences by solving the Poisson equation with Neumann
    boundaries through a DCT; a local 2 pi slip cannot propagate across the map.
    """
    from scipy.fft import dctn, idctn

    ny, nx = wrapped.shape
    gx = np.zeros_like(wrapped)
    gy = np.zeros_like(wrapped)
    gx[:, :-1] = _wrap_pi(np.diff(wrapped, axis=1))
    gy[:-1, :] = _wrap_pi(np.diff(wrapped, axis=0))
    rho = gx.copy()
    rho[:, 1:] -= gx[:, :-1]
    rho += gy
    rho[1:, :] -= gy[:-1, :]
    transformed = dctn(rho, type=2, norm="ortho")
    i = np.arange(ny)[:, None]
    j = np.arange(nx)[None, :]
    denom = 2.0 * (np.cos(np.pi * i / ny) + np.cos(np.pi * j / nx) - 2.0)
    denom[0, 0] = 1.0
    transformed /= denom
    transformed[0, 0] = 0.0
    return idctn(transformed, type=2, norm="ortho")


def lawler_fujita(image: np.ndarray, pixel_nm: tuple[float, float], bragg_nm: np.ndarray,
                  sigma_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Lawler–Fujita drift correction.

    Parameters
    ----------
    image : levelled (ny, nx) map.
    pixel_nm : (dx, dy) pixel size.
    bragg_nm : (m >= 2, 2) Bragg wave vectors of one lattice (nm^-1), as measured.
    sigma_nm : Gaussian low-pass length of the lock-in (longer than the distance between
        peaks that must not be mixed, e.g. one moiré period).

    Returns
    -------
    corrected image (same grid) and the displacement field u (ny, nx, 2) in nm.
    """
    ny, nx = image.shape
    dx, dy = pixel_nm
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    x_nm, y_nm = x * dx, y * dy
    # lock-in by Fourier filtering: keep a Gaussian of width 1/sigma around each peak
    spectrum = np.fft.fft2(image)
    kx = 2 * np.pi * np.fft.fftfreq(nx, dx)
    ky = 2 * np.pi * np.fft.fftfreq(ny, dy)
    phases = []
    for q in bragg_nm:
        gauss = np.exp(-0.5 * sigma_nm**2 * ((kx[None, :] - q[0]) ** 2 + (ky[:, None] - q[1]) ** 2))
        smooth = np.fft.ifft2(spectrum * gauss) * np.exp(-1j * (q[0] * x_nm + q[1] * y_nm))
        phi = unwrap_phase(np.angle(smooth))
        phi -= phi[ny // 2, nx // 2]
        phases.append(phi)
    phases = np.stack(phases, axis=-1)  # (ny, nx, m)
    pinv = np.linalg.pinv(np.asarray(bragg_nm))  # (2, m)
    u = phases @ pinv.T  # (ny, nx, 2) with q . u = phi
    u -= u.mean(axis=(0, 1))
    coords = np.array([y - u[..., 1] / dy, x - u[..., 0] / dx])
    corrected = ndimage.map_coordinates(image, coords, order=3, mode="reflect")
    return corrected, u


# --------------------------------------------------------------------------- report
@dataclass
class CalibrationReport(Result):
    """What the calibration measured and did (all plain data; ``to_dict`` for JSON).

    Angles in degrees, lengths in nm, wave vectors in nm^-1. ``pixel_scale`` is the true
    pixel size divided by the file's; ``sample_rotation_deg`` is the rotation of the sample
    lattice relative to the scan frame, modulo 60°.
    """

    twist_angle_deg: float
    twist_uncertainty_deg: float
    twist_per_direction_deg: list
    moire_period_nm: float
    moire_period_uncertainty_nm: float
    atoms_resolved: bool
    pixel_scale: float
    sample_rotation_deg: float
    mirrored: bool
    affine_nm: list
    moire_orientation_deg: float
    bragg_peaks_nm: list
    moire_peaks_nm: list
    layer_determined: bool
    drift_corrected: bool
    drift_rms_nm: float
    ft_coverage: float
    kx_nm: list = field(repr=False)
    ky_nm: list = field(repr=False)
    source: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    wall_time_s: float = 0.0

    def to_dict(self, axes: bool = False) -> dict:
        d = asdict(self)
        if not axes:
            d.pop("kx_nm")
            d.pop("ky_nm")
        return d

    def __str__(self) -> str:
        return (f"twist {self.twist_angle_deg:.3f} ± {self.twist_uncertainty_deg:.3f}°, "
                f"moiré period {self.moire_period_nm:.3f} nm, pixel scale {self.pixel_scale:.4f}, "
                f"sample rotation {self.sample_rotation_deg:.2f}°"
                + (" (mirrored)" if self.mirrored else "")
                + (f"; drift rms {self.drift_rms_nm:.3f} nm corrected" if self.drift_corrected else ""))


@dataclass
class Calibrated(Result):
    """Result of :func:`calibrate`: the model-ready FT image, its axes, the report, the levelled map."""

    image: np.ndarray
    kx_nm: np.ndarray
    ky_nm: np.ndarray
    report: CalibrationReport
    levelled: np.ndarray


# --------------------------------------------------------------------------- main entry
def _twist_from_ratio(ratio: np.ndarray) -> np.ndarray:
    return np.degrees(2.0 * np.arcsin(np.clip(ratio / 2.0, 0.0, 1.0)))


def calibrate(
    source: STMImage | np.ndarray,
    pixel_nm: float | tuple[float, float] | None = None,
    *,
    line_order: int = 1,
    drift_correction: bool = True,
    drift_length_nm: float | None = None,
    twist_range_deg: tuple[float, float] = TWIST_RANGE_DEG,
    size: int = FT_IMAGE_SIZE,
    apodisation: str = "hann",
    intensity_scale: float | None = None,
) -> Calibrated:
    """Level a measured TBG map, measure lattice scale, rotation and twist angle, and map its FT onto the simulated window.

    Parameters
    ----------
    source : an :class:`STMImage` from :func:`moirestm.measured.read_stm`, or a 2D array
        (row 0 at the bottom) with ``pixel_nm``.
    pixel_nm : pixel size (dx, dy) or one value in nm; overrides the file's when given.
    line_order : polynomial degree removed from every scan line (-1: none, 0: median offset).
    drift_correction : apply the Lawler–Fujita correction (needs resolved atoms).
    drift_length_nm : its low-pass length; default a third of the moiré period.
    twist_range_deg : twist angles searched for the moiré peaks.
    size : side of the output image (the simulated FT-LDOS images are 256).
    apodisation : "hann" or "none": window applied to the map before the final transform.
    intensity_scale : the output is divided by its mean and multiplied by this (default 1);
        pass the training images' typical mean (e.g. the learning run's ``normalizer.scale``).

    Returns
    -------
    :class:`Calibrated` with ``image`` (size, size) float32 |F| on kx in (2 pi/a)[-1.1, 1.1],
    ky in (4 pi/(sqrt 3 a))[-1.1, 1.1] (rows along ky), oriented as the simulation.
    """
    t0 = time.perf_counter()
    data, (dx, dy), meta = _checked_input(source, pixel_nm, apodisation)
    warns: list[str] = []
    # Peaks are refined on the plane-levelled map: line levelling removes the pattern's k_x ~ 0
    # components and would bias peaks near that axis. The line-levelled map is searched only
    # when line noise hides the constellation in the plane-levelled one.
    levelled = level_plane(data)
    spec = _Spectrum(levelled, (dx, dy))
    line_search = _Spectrum(level_lines(levelled, line_order), (dx, dy)) if line_order >= 0 else spec
    bragg = _bragg_peaks(spec, line_search, dx, dy, warns)
    atoms = bragg is not None
    scale_guess = float(np.mean(np.hypot(bragg[:, 0], bragg[:, 1]))) / BRAGG_NM if atoms else 1.0
    moire = _moire_peaks(spec, line_search, scale_guess, twist_range_deg)
    mirrored, layer_known, drift_rms = False, False, 0.0
    if atoms:
        bragg, mirrored, layer_known = _assign_layer(spec, bragg, moire, warns)
        if drift_correction:
            levelled, spec, bragg, moire, drift_rms = _correct_drift(levelled, (dx, dy), bragg, moire,
                                                                   drift_length_nm)
    elif drift_correction:
        warns.append("drift correction skipped: it needs resolved atomic Bragg peaks")
    frame = _frame(spec, bragg, moire, mirrored, warns)

    # --- model-ready image -----------------------------------------------------------------
    levelled = level_lines(levelled, line_order)
    image, kx, ky, coverage = resample_ft(levelled, (dx, dy), frame["affine"], size=size, apodisation=apodisation)
    if coverage < 0.999:
        warns.append(f"only {100 * coverage:.0f}% of the simulated FT window lies below the map's Nyquist limit")
    mean = float(image.mean())
    if mean > 0:
        image = image / mean * (1.0 if intensity_scale is None else float(intensity_scale))
    report = CalibrationReport(
        twist_angle_deg=frame["twist"],
        twist_uncertainty_deg=frame["sigma"],
        twist_per_direction_deg=[float(v) for v in frame["twist_j"]],
        moire_period_nm=frame["period"],
        moire_period_uncertainty_nm=frame["period_sigma"],
        atoms_resolved=atoms,
        pixel_scale=frame["scale"],
        sample_rotation_deg=float(frame["sample_rotation"]),
        mirrored=bool(mirrored),
        affine_nm=frame["affine"].tolist(),
        moire_orientation_deg=frame["moire_orient"],
        bragg_peaks_nm=[] if bragg is None else bragg.tolist(),
        moire_peaks_nm=moire.tolist(),
        layer_determined=bool(layer_known),
        drift_corrected=bool(atoms and drift_correction),
        drift_rms_nm=drift_rms,
        ft_coverage=coverage,
        kx_nm=kx.tolist(),
        ky_nm=ky.tolist(),
        source=meta,
        warnings=warns,
        wall_time_s=time.perf_counter() - t0,
    )
    return Calibrated(image.astype(np.float32), kx, ky, report, levelled)


def _checked_input(source, pixel_nm, apodisation: str):
    """The map, its pixel size (dx, dy) in nm and the source metadata, checked."""
    if isinstance(source, STMImage):
        data = source.data
        pixel = source.pixel_nm if pixel_nm is None else pixel_nm
        meta = source.summary()
    else:
        data = np.asarray(source, dtype=float)
        if pixel_nm is None:
            raise MoireSTMError("calibrating a bare array needs its pixel size in nm")
        pixel = pixel_nm
        meta = {"shape": list(data.shape)}
    pix = np.atleast_1d(np.asarray(pixel, dtype=float))
    pix = np.repeat(pix, 2) if pix.size == 1 else pix
    if pix.size != 2 or np.any(~np.isfinite(pix)) or np.any(pix <= 0):
        raise MoireSTMError(f"pixel size must be positive (nm), got {pixel!r}")
    dx, dy = float(pix[0]), float(pix[1])
    if data.ndim != 2 or min(data.shape) < 32:
        raise MoireSTMError(f"need a 2D map of at least 32 x 32 pixels, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise MoireSTMError("the map holds non-finite values")
    if apodisation not in ("hann", "none"):
        raise MoireSTMError(f"apodisation must be 'hann' or 'none', got {apodisation!r}")
    return data, (dx, dy), meta


def _bragg_peaks(spec, line_search, dx: float, dy: float, warns: list) -> np.ndarray | None:
    """The six atomic Bragg peaks of one layer (nm^-1), or None (with a warning) when unresolved."""
    bragg = None
    b_lo, b_hi = (f * BRAGG_NM for f in BRAGG_SEARCH_FRACTION)
    if b_hi < spec.k_nyquist:
        for search in (spec, line_search):
            bragg = _constellation(search, b_lo, b_hi, tolerance_deg=10.0, radial_tolerance=0.1)
            if bragg is not None:
                powers = [search.power[np.argmin(np.abs(search.ky - b[1])), np.argmin(np.abs(search.kx - b[0]))]
                          for b in bragg]
                if min(powers) >= BRAGG_MIN_SNR * search.noise_power:
                    break
                bragg = None
        if bragg is None:
            warns.append("atomic Bragg peaks too weak: scale from the file calibration")
    else:
        warns.append(f"atoms not resolved (pixel {max(dx, dy):.3f} nm > {math.pi / b_hi:.3f} nm): "
                     "scale from the file calibration, FT window only partly covered")
    return bragg


def _moire_peaks(spec, line_search, scale_guess: float, twist_range_deg) -> np.ndarray:
    """The six moiré peaks (nm^-1), refined; MoireSTMError when none stand out of the noise."""
    t_lo, t_hi = twist_range_deg
    m_lo = max(2.0 * math.sin(math.radians(t_lo) / 2) * BRAGG_NM * scale_guess * 0.8, 2.5 * spec.dk)
    m_hi = 2.0 * math.sin(math.radians(t_hi) / 2) * BRAGG_NM * scale_guess * 1.2
    if m_lo >= m_hi:
        raise MoireSTMError("scan too small to resolve a moiré period in the twist range "
                            f"{t_lo}-{t_hi}°: need at least ~3 moiré periods across the frame")
    # a peak on the k_x = 0 axis is removed by line levelling: search the plane-levelled map first
    for search in (spec, line_search):
        moire = _constellation(search, m_lo, m_hi, tolerance_deg=20.0, radial_tolerance=0.3)
        if moire is not None:
            weakest = min(search.power[np.argmin(np.abs(search.ky - m[1])), np.argmin(np.abs(search.kx - m[0]))]
                          for m in moire)
            if weakest >= MOIRE_MIN_SNR * search.noise_power:
                break
    if moire is None:
        raise MoireSTMError(f"no moiré peaks found for twist angles {t_lo}-{t_hi}° "
                            "(is this a twisted-bilayer map, and is the pixel size right?)")
    if weakest < MOIRE_MIN_SNR * search.noise_power:
        raise MoireSTMError(f"no significant moiré peaks for twist angles {t_lo}-{t_hi}° (weakest candidate "
                            f"{weakest / search.noise_power:.0f}x the noise power, need {MOIRE_MIN_SNR:.0f}x)")
    return _refined(spec, moire)


def _refined(spec, peaks) -> np.ndarray:
    """Each peak position refined on ``spec``."""
    return np.array([spec.refine(p)[0] for p in peaks])


def _assign_layer(spec, bragg, moire, warns: list):
    """Bragg peaks of one layer (the partner one moiré vector away decides), mirrored, layer known."""
    bragg = _refined(spec, bragg)
    # layer consistency: the partner of each Bragg peak is one moiré vector away
    labels, partners = [], []
    for p in bragg:
        g = moire[np.argmin([abs(np.dot(p, m)) / np.linalg.norm(m) for m in moire])]
        g = g if _cross(p, g) > 0 else -g
        p_plus, pw_plus = spec.refine(p + g)
        p_minus, pw_minus = spec.refine(p - g)
        ratio = pw_minus / max(pw_plus, 1e-300)
        labels.append(1 if ratio > LAYER_RATIO else (-1 if ratio < 1 / LAYER_RATIO else 0))
        partners.append((p_minus, p_plus))
    vote = sum(labels)
    layer_known = vote != 0
    sign = 1 if vote >= 0 else -1
    if not layer_known:
        warns.append("layer handedness of the Bragg peaks undetermined; assumed counter-clockwise (top)")
    for j, lab in enumerate(labels):
        if lab == -sign:  # this sector picked the other layer: switch to its partner
            bragg[j] = partners[j][0] if lab == 1 else partners[j][1]
    mirrored = sign < 0
    return bragg, mirrored, layer_known


def _correct_drift(levelled, pixel, bragg, moire, drift_length_nm):
    """Lawler-Fujita drift correction; the corrected map, its spectrum, re-refined peaks, rms drift (nm)."""
    period_guess = 4 * math.pi / (math.sqrt(3) * float(np.mean(np.hypot(moire[:, 0], moire[:, 1]))))
    length = period_guess * DRIFT_LENGTH_FRACTION if drift_length_nm is None else float(drift_length_nm)
    corrected, u = lawler_fujita(levelled, pixel, bragg, sigma_nm=length)
    drift_rms = float(np.sqrt(np.mean(np.sum(u**2, axis=-1))))
    spec = _Spectrum(corrected, pixel)
    return corrected, spec, _refined(spec, bragg), _refined(spec, moire), drift_rms


def _frame(spec, bragg, moire, mirrored: bool, warns: list) -> dict:
    """Affine map of the scan frame onto the simulation's, twist angle with its uncertainty, moiré period."""
    atoms = bragg is not None
    moire_pw = [abs(spec.dtft(m)) ** 2 for m in moire]
    sig_k = np.array([spec.position_sigma_nm(p) for p in moire_pw])
    if atoms:
        ratio0 = np.mean(np.hypot(moire[:, 0], moire[:, 1])) / np.mean(np.hypot(bragg[:, 0], bragg[:, 1]))
        twist0 = float(_twist_from_ratio(np.array([ratio0]))[0])
        m_aff = fit_affine(bragg, twist0, mirrored)
        for _ in range(2):
            g_true = np.linalg.solve(m_aff, moire.T).T
            twist_j = _twist_from_ratio(np.hypot(g_true[:, 0], g_true[:, 1]) / BRAGG_NM)
            m_aff = fit_affine(bragg, float(np.mean(twist_j)), mirrored)
        g_true = np.linalg.solve(m_aff, moire.T).T
        gnorm = np.hypot(g_true[:, 0], g_true[:, 1])
        scale = math.sqrt(abs(np.linalg.det(m_aff)))
        bragg_sig = [spec.position_sigma_nm(abs(spec.dtft(b)) ** 2) for b in bragg]
        rel_scale_sigma = float(np.sqrt(np.sum(np.square(bragg_sig)))) / (3 * BRAGG_NM * scale)
    else:
        # moiré only: rotation from the moiré orientation (0° mod 60 in the simulation), scale from the file
        six = _sorted_six(moire)
        ang = np.mean([_wrap(_angle_deg(v)) for v in six])
        c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
        m_aff = np.array([[c, -s], [s, c]])
        g_true = np.linalg.solve(m_aff, moire.T).T
        gnorm = np.hypot(g_true[:, 0], g_true[:, 1])
        scale = 1.0
        rel_scale_sigma = PIEZO_SCALE_UNCERTAINTY
    twist_j = _twist_from_ratio(gnorm / BRAGG_NM)
    twist = float(np.mean(twist_j))
    dtheta_dk = np.degrees(1.0 / (BRAGG_NM * math.cos(math.radians(twist) / 2)))
    stat = float(np.sqrt(np.sum((sig_k / scale * dtheta_dk) ** 2))) / 3.0
    spread = float(np.std(twist_j, ddof=1)) / math.sqrt(3.0)
    sigma = math.sqrt(stat**2 + spread**2 + (twist * rel_scale_sigma) ** 2)
    period = GRAPHENE_LATTICE_NM / (2 * math.sin(math.radians(twist) / 2))
    period_sigma = period * sigma / twist if twist > 0 else float("nan")
    moire_orient = float(np.mean([_wrap(_angle_deg(g)) for g in _sorted_six(g_true)]))
    if abs(moire_orient) > 3.0:
        warns.append(f"moiré rotated by {moire_orient:.1f}° from the lattice's expected 0° (heterostrain?)")
    u_svd, _, vt_svd = np.linalg.svd(m_aff)
    rot = u_svd @ vt_svd
    # q = M k with M ~ s R(-phi): the sample lattice is rotated by phi relative to the scan frame
    sample_rotation = _wrap(-_angle_deg(rot[:, 0]) if np.linalg.det(rot) > 0 else _angle_deg(rot[:, 0]))
    return {"affine": m_aff, "twist": twist, "sigma": sigma, "twist_j": twist_j, "period": period,
            "period_sigma": period_sigma, "scale": scale, "moire_orient": moire_orient,
            "sample_rotation": sample_rotation}


def resample_ft(image: np.ndarray, pixel_nm: tuple[float, float], affine: np.ndarray, size: int = FT_IMAGE_SIZE,
                apodisation: str = "hann") -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """|F| of ``image`` on the simulated window: F(k) = DTFT at q = M k (type-2 NUFFT).

    Returns the (size, size) magnitude (rows along ky), kx_nm, ky_nm and the fraction of
    window pixels below the Nyquist limit (the others are set to 0).
    """
    import finufft

    dx, dy = pixel_nm
    kx, ky = k_axes(size)
    kxg, kyg = np.meshgrid(kx, ky)
    k = np.stack([kxg.ravel(), kyg.ravel()])
    q = np.asarray(affine) @ k  # measured frequencies, nm^-1
    wx, wy = q[0] * dx, q[1] * dy  # rad / pixel
    inside = (np.abs(wx) < math.pi) & (np.abs(wy) < math.pi)
    window = _hann2d(image.shape) if apodisation == "hann" else np.ones(image.shape)
    data = image - np.sum(window * image) / np.sum(window)
    coeff = np.ascontiguousarray(window * data / window.sum(), dtype=np.complex128)
    out = np.zeros(k.shape[1], dtype=np.complex128)
    if inside.any():
        out[inside] = finufft.nufft2d2(np.ascontiguousarray(wy[inside]), np.ascontiguousarray(wx[inside]),
                                       coeff, eps=1e-9, isign=-1)
    magnitude = np.abs(out).reshape(len(ky), len(kx))
    return magnitude, kx, ky, float(inside.mean())
