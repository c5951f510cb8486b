"""Synthetic TBG topographs with realistic scan artefacts, and small writers for STM file formats.

Used by the tests and the round-trip checks: a map of known twist angle is
degraded (scan rotation, piezo miscalibration, thermal drift, tilt, line offsets,
noise), written in an instrument format, read back and calibrated.

The sample frame is the simulation frame of :mod:`moirestm.lattice.tbg`: graphene
a1 = a(1, 0), a2 = a(1/2, sqrt(3)/2), bottom layer rotated by -theta/2, top by +theta/2,
AA stacking at the origin.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..constants import GRAPHENE_LATTICE_NM
from ..errors import MoireSTMError


def _rot(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def graphene_reciprocal_nm(a_nm: float = GRAPHENE_LATTICE_NM) -> np.ndarray:
    """(3, 2) rows b1, b2, b1 + b2 ... of the unrotated graphene lattice (|b| = 4 pi / (sqrt(3) a)), at 30°, 90°, 150°."""
    norm = 4.0 * math.pi / (math.sqrt(3.0) * a_nm)
    angles = np.radians([30.0, 90.0, 150.0])
    return norm * np.column_stack([np.cos(angles), np.sin(angles)])


def tbg_pattern(
    x_nm: np.ndarray,
    y_nm: np.ndarray,
    twist_deg: float,
    *,
    a_nm: float = GRAPHENE_LATTICE_NM,
    top_weight: float = 1.0,
    bottom_weight: float = 0.4,
    moire_amplitude: float = 1.5,
    modulation: float = 0.3,
) -> np.ndarray:
    """TBG-like topograph at sample positions (x_nm, y_nm).

    Atomic contrast of both layers (top rotated +theta/2, bottom -theta/2) modulated by
    the moiré envelope, plus the moiré corrugation (bright AA regions).
    """
    half = math.radians(twist_deg) / 2.0
    b = graphene_reciprocal_nm(a_nm)
    b_top, b_bottom = b @ _rot(half).T, b @ _rot(-half).T
    moire = b_top - b_bottom
    envelope = sum(np.cos(g[0] * x_nm + g[1] * y_nm) for g in moire)
    top = sum(np.cos(g[0] * x_nm + g[1] * y_nm) for g in b_top)
    bottom = sum(np.cos(g[0] * x_nm + g[1] * y_nm) for g in b_bottom)
    atoms = (top_weight * top + bottom_weight * bottom) * (1.0 + modulation * envelope / 3.0)
    return atoms + moire_amplitude * envelope


def synthetic_stm_map(
    twist_deg: float,
    *,
    n_px: int = 384,
    pixel_nm: float = 0.065,
    rotation_deg: float = 0.0,
    scale_error: float = 1.0,
    drift_nm: float = 0.0,
    noise: float = 0.0,
    line_noise: float = 0.0,
    tilt: float = 0.0,
    seed: int = 0,
    **pattern,
) -> np.ndarray:
    """Degraded TBG map as recorded by an STM with nominal pixel size ``pixel_nm``.

    Parameters
    ----------
    twist_deg : true twist angle.
    n_px : image side in pixels.
    pixel_nm : pixel size the instrument *reports* (file calibration).
    rotation_deg : scan-frame rotation relative to the sample (simulation) frame.
    scale_error : true pixel size / reported pixel size (piezo miscalibration).
    drift_nm : thermal drift accumulated over the frame, growing like t^1.5 along the slow axis.
    noise, line_noise : white noise and per-line offset standard deviations (pattern units).
    tilt : plane slope added across the frame (pattern units per frame).
    seed : random seed.

    Returns
    -------
    (n_px, n_px) float64 map, row 0 at the bottom of the frame (the reader convention).
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(n_px)
    ix, iy = np.meshgrid(idx, idx)
    x_nom, y_nom = ix * pixel_nm, iy * pixel_nm
    t = (iy + ix / n_px) / n_px  # acquisition time, slow axis along y
    xy = np.stack([x_nom, y_nom], axis=-1) * scale_error
    xy = xy @ _rot(math.radians(rotation_deg)).T
    drift = drift_nm * t**1.5
    xy[..., 0] += 0.8 * drift
    xy[..., 1] += 0.6 * drift
    image = tbg_pattern(xy[..., 0], xy[..., 1], twist_deg, **pattern)
    image += tilt * (0.7 * ix + 0.3 * iy) / n_px
    image += line_noise * rng.standard_normal(n_px)[:, None]
    image += noise * rng.standard_normal(image.shape)
    return image


# --------------------------------------------------------------------------- writers
def write_sxm(
    path: str | os.PathLike,
    channels: dict[str, tuple[np.ndarray, np.ndarray | None]],
    scan_range_nm: tuple[float, float],
    *,
    units: dict[str, str] | None = None,
    bias_v: float = 0.1,
    setpoint: str = "1.000E-10 A",
    scan_angle_deg: float = 0.0,
    scan_dir: str = "up",
) -> Path:
    """Write a minimal Nanonis ``.sxm`` file following the published format.

    ``channels`` maps a name to (forward, backward or None) images in the reader
    convention (row 0 at the bottom, x left to right). Header text ends with
    ``:SCANIT_END:``, then ``\\x1a\\x04`` and big-endian float32 data, channel by
    channel, forward then backward (stored right to left), lines in acquisition order.
    """
    path = Path(path)
    units = units or {}
    first = next(iter(channels.values()))[0]
    ny, nx = first.shape
    info_rows, blocks = [], []
    for number, (name, (forward, backward)) in enumerate(channels.items()):
        direction = "both" if backward is not None else "forward"
        info_rows.append(f"\t{number}\t{name}\t{units.get(name, 'm')}\t{direction}\t1.000E+0\t0.000E+0")
        for image, is_backward in ((forward, False), (backward, True)):
            if image is None:
                continue
            if image.shape != (ny, nx):
                raise MoireSTMError("all channels of an .sxm file must have the same shape")
            stored = image[:, ::-1] if is_backward else image
            if scan_dir == "down":
                stored = stored[::-1]
            blocks.append(np.asarray(stored, dtype=">f4").tobytes())
    header = "\n".join(
        [
            ":NANONIS_VERSION:", "2",
            ":SCANIT_TYPE:", "              FLOAT            MSBFIRST",
            ":REC_DATE:", "01.01.2025",
            ":REC_TIME:", "12:00:00",
            ":REC_TEMP:", "      4.5000000000",
            ":ACQ_TIME:", "       600.0",
            ":SCAN_PIXELS:", f"       {nx}       {ny}",
            ":SCAN_FILE:", f"C:\\data\\{path.name}",
            ":SCAN_TIME:", "             1.000E+0             1.000E+0",
            ":SCAN_RANGE:", f"           {scan_range_nm[0] * 1e-9:.9E}           {scan_range_nm[1] * 1e-9:.9E}",
            ":SCAN_OFFSET:", "             0.000000E+0         0.000000E+0",
            ":SCAN_ANGLE:", f"            {scan_angle_deg:.3E}",
            ":SCAN_DIR:", scan_dir,
            ":BIAS:", f"            {bias_v:.3E}",
            ":Z-CONTROLLER:",
            "\tName\ton\tSetpoint\tP-gain\tI-gain\tT-const",
            f"\tlog Current\t1\t{setpoint}\t1.000E-12 m\t1.000E-9 m/s\t1.000E-3 s",
            ":COMMENT:", "synthetic twisted bilayer graphene map",
            ":DATA_INFO:",
            "\tChannel\tName\tUnit\tDirection\tCalibration\tOffset",
            *info_rows,
            "",
            ":SCANIT_END:",
            "",
            "",
        ]
    )
    path.write_bytes(header.encode() + b"\n" + b"\x1a\x04" + b"".join(blocks))
    return path


def write_3ds(
    path: str | os.PathLike,
    channels: dict[str, np.ndarray],
    size_nm: tuple[float, float],
    bias_v: np.ndarray,
    *,
    topo_m: np.ndarray | None = None,
    angle_deg: float = 0.0,
    setpoint: str = "1.000E-10",
) -> Path:
    """Write a minimal Nanonis ``.3ds`` grid: ``channels`` maps a name to (ny, nx, n_bias) data.

    Header ``key=value`` lines end with ``:HEADER_END:``; each pixel then stores the
    parameters (sweep start, sweep end, X, Y, Z) and every channel's sweep, big-endian float32.
    """
    path = Path(path)
    bias_v = np.asarray(bias_v, dtype=float)
    names = list(channels)
    ny, nx, nb = channels[names[0]].shape
    topo = np.zeros((ny, nx)) if topo_m is None else topo_m
    lines = [
        f'Grid dim="{nx} x {ny}"',
        f"Grid settings=0.000000E+0;0.000000E+0;{size_nm[0] * 1e-9:.9E};{size_nm[1] * 1e-9:.9E};{angle_deg:.6E}",
        'Sweep Signal="Bias (V)"',
        'Fixed parameters="Sweep Start;Sweep End"',
        'Experiment parameters="X (m);Y (m);Z (m)"',
        "# Parameters (4 byte)=5",
        f"Experiment size (bytes)={4 * nb * len(names)}",
        f"Points={nb}",
        'Channels="' + ";".join(names) + '"',
        "Delay before measuring (s)=0.000000E+0",
        'Experiment="Grid Spectroscopy"',
        'Start time="01.01.2025 12:00:00"',
        'End time="01.01.2025 14:00:00"',
        "User=",
        "Comment=synthetic",
        f"Bias>Bias (V)={bias_v[0]:.6E}",
        f"Z-Controller>Setpoint={setpoint}",
        ":HEADER_END:",
        "",
    ]
    pixels = np.empty((ny, nx, 5 + nb * len(names)), dtype=">f4")
    pixels[..., 0], pixels[..., 1] = bias_v[0], bias_v[-1]
    pixels[..., 2] = np.arange(nx)[None, :] * size_nm[0] * 1e-9 / nx
    pixels[..., 3] = np.arange(ny)[:, None] * size_nm[1] * 1e-9 / ny
    pixels[..., 4] = topo
    for i, name in enumerate(names):
        pixels[..., 5 + i * nb : 5 + (i + 1) * nb] = channels[name]
    path.write_bytes("\r\n".join(lines).encode() + pixels.tobytes())
    return path


def write_gwy(
    path: str | os.PathLike,
    channels: dict[str, np.ndarray],
    size_nm: tuple[float, float],
    *,
    meta: dict[str, str] | None = None,
) -> Path:
    """Write a Gwyddion ``.gwy`` file with ``gwyfile`` (images in the reader convention, row 0 at the bottom)."""
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    container = GwyContainer()
    for number, (name, image) in enumerate(channels.items()):
        field = GwyDataField(
            np.ascontiguousarray(image[::-1], dtype=np.float64),
            xreal=size_nm[0] * 1e-9,
            yreal=size_nm[1] * 1e-9,
            si_unit_xy=GwySIUnit(unitstr="m"),
            si_unit_z=GwySIUnit(unitstr="m"),
        )
        container[f"/{number}/data"] = field
        container[f"/{number}/data/title"] = name
        if meta:
            container[f"/{number}/meta"] = GwyContainer(dict(meta))
    container.tofile(str(path))
    return Path(path)
