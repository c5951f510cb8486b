"""Readers for measured STM maps: Nanonis ``.sxm`` / ``.3ds``, Gwyddion ``.gwy``, plain ``.npy`` / ``.txt``.

Binary formats are parsed by maintained packages from the ``measured`` extra:
``nanonispy2`` (Nanonis) and ``gwyfile`` (Gwyddion). Every reader returns an
:class:`STMImage` in one orientation convention: ``data[iy, ix]`` with ``ix``
along +x and ``iy`` along +y of the scan frame (row 0 at the *bottom*, as
``imshow(origin="lower")`` shows it), lengths in nm, bias in V.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MoireSTMError

SUPPORTED_SUFFIXES = (".sxm", ".3ds", ".gwy", ".npy", ".txt")

#: Channel-name fragments taken, in order, as the default channel (LDOS maps first, then topography).
DEFAULT_CHANNEL_HINTS = ("demod", "di/dv", "didv", "lix", "lock-in", "ldos", "z", "topo", "height")


@dataclass
class STMImage:
    """One channel of a measured STM map with its metadata.

    Attributes
    ----------
    data : (ny, nx) float64 image; row 0 is the bottom of the scan frame.
    pixel_nm : (dx_nm, dy_nm) pixel size from the file (the scan calibration).
    channel, unit : channel name and its physical unit ("" when unknown).
    scan_angle_deg : scan-frame rotation recorded by the instrument.
    bias_v : sample bias of the map (the selected sweep point for grids), or None.
    setpoint : feedback set point as recorded (e.g. "1.0E-10 A"), or None.
    source, file_format : file path and format name.
    channels : every channel in the file.
    metadata : further header entries (plain data).
    """

    data: np.ndarray
    pixel_nm: tuple[float, float]
    channel: str = ""
    unit: str = ""
    scan_angle_deg: float = 0.0
    bias_v: float | None = None
    setpoint: str | None = None
    source: str = ""
    file_format: str = ""
    channels: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def scan_size_nm(self) -> tuple[float, float]:
        """(width, height) of the scan frame in nm."""
        ny, nx = self.data.shape
        return nx * self.pixel_nm[0], ny * self.pixel_nm[1]

    def summary(self) -> dict:
        """Plain-data description without the image."""
        return {
            "source": self.source,
            "file_format": self.file_format,
            "channel": self.channel,
            "unit": self.unit,
            "shape": list(self.data.shape),
            "pixel_nm": list(self.pixel_nm),
            "scan_size_nm": list(self.scan_size_nm),
            "scan_angle_deg": self.scan_angle_deg,
            "bias_v": self.bias_v,
            "setpoint": self.setpoint,
            "channels": list(self.channels),
            "metadata": self.metadata,
        }


def _select_channel(available: list[str], channel: str | None, path: Path) -> str:
    if not available:
        raise MoireSTMError(f"{path}: the file holds no data channel")
    if channel is None:
        lowered = [name.lower() for name in available]
        for hint in DEFAULT_CHANNEL_HINTS:
            for name, low in zip(available, lowered):
                if (hint == "z" and re.fullmatch(r"z(\s*\(m\))?", low)) or (hint != "z" and hint in low):
                    return name
        return available[0]
    for name in available:
        if name == channel:
            return name
    matches = [name for name in available if channel.lower() in name.lower()]
    if len(matches) == 1:
        return matches[0]
    exact = [name for name in available if name.lower() == channel.lower()]
    if len(exact) == 1:
        return exact[0]
    what = "is ambiguous" if matches else "not found"
    raise MoireSTMError(f"{path}: channel '{channel}' {what}; available channels: {', '.join(available)}")


def _check_image(data: np.ndarray, path: Path, channel: str) -> np.ndarray:
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or min(data.shape) < 16:
        raise MoireSTMError(f"{path}: channel '{channel}' is not a 2D map of at least 16x16 pixels (shape {data.shape})")
    rows_ok = np.isfinite(data).all(axis=1)
    if not rows_ok.all():
        # Nanonis fills the lines of an interrupted scan with NaN: keep the complete lines.
        if rows_ok.sum() < data.shape[0] // 2:
            raise MoireSTMError(f"{path}: channel '{channel}' has fewer than half of its lines complete")
        first, last = np.flatnonzero(rows_ok)[[0, -1]]
        data = data[first : last + 1]
        if not np.isfinite(data).all():
            raise MoireSTMError(f"{path}: channel '{channel}' has missing pixels inside the scanned area")
    if np.ptp(data) == 0:
        raise MoireSTMError(f"{path}: channel '{channel}' is constant; nothing to calibrate")
    return data


def _pixel_from_arg(pixel_nm, path: Path) -> tuple[float, float]:
    if pixel_nm is None:
        raise MoireSTMError(f"{path}: plain arrays carry no scale; give the pixel size in nm (--pixel-nm)")
    values = np.atleast_1d(np.asarray(pixel_nm, dtype=float))
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise MoireSTMError(f"pixel size must be one or two positive numbers in nm, got {pixel_nm!r}")
    return float(values[0]), float(values[1])


# --------------------------------------------------------------------------- Nanonis .sxm
def _sxm_class():
    try:
        from nanonispy2 import read as nread
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MoireSTMError("reading Nanonis files needs nanonispy2: pip install 'moirestm[measured]'") from exc

    class _Scan(nread.Scan):
        """nanonispy2 Scan that also accepts channels recorded in one direction only and checks the size."""

        def _load_data(self):
            info = self.header["data_info"]
            names = list(info["Name"])
            directions = list(info.get("Direction", ["both"] * len(names)))
            nx, ny = (int(v) for v in self.header["scan_pixels"])
            with open(self.fname, "rb") as f:
                f.seek(self.byte_offset)
                raw = np.fromfile(f, dtype=self.data_format)
            blocks = [2 if d.strip().lower() == "both" else 1 for d in directions]
            expected = sum(blocks) * nx * ny
            if raw.size < expected:
                raise MoireSTMError(
                    f"{self.basename}: data block truncated ({raw.size} values, header announces {expected})"
                )
            signals, offset = {}, 0
            for name, direction, nblock in zip(names, directions, blocks):
                chunk = raw[offset : offset + nblock * nx * ny].reshape(nblock, ny, nx)
                offset += nblock * nx * ny
                d = direction.strip().lower()
                if nblock == 2:
                    signals[name] = {"forward": chunk[0], "backward": chunk[1]}
                else:
                    signals[name] = {"backward" if d == "backward" else "forward": chunk[0]}
            return signals

    return _Scan


def _header_float(value) -> float | None:
    try:
        return float(str(value).split()[0])
    except (ValueError, IndexError, TypeError):
        return None


def read_sxm(path: Path, channel: str | None = None, direction: str = "forward") -> STMImage:
    """Read one channel of a Nanonis ``.sxm`` scan (forward or backward)."""
    scan_cls = _sxm_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scan = scan_cls(str(path))
    except MoireSTMError:
        raise
    except Exception as exc:  # the parser raises KeyError, ValueError, IndexError, its own types
        raise MoireSTMError(f"{path}: damaged or unsupported Nanonis .sxm file ({type(exc).__name__}: {exc})") from None
    header = scan.header
    names = list(scan.signals)
    name = _select_channel(names, channel, path)
    directions = scan.signals[name]
    if direction not in ("forward", "backward"):
        raise MoireSTMError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if direction not in directions:
        raise MoireSTMError(f"{path}: channel '{name}' has no {direction} image (has {', '.join(directions)})")
    data = np.array(directions[direction], dtype=np.float64)
    # Nanonis stores lines in acquisition order, each line left to right in the forward direction.
    if direction == "backward":
        data = data[:, ::-1]
    if str(header.get("scan_dir", "up")).strip().lower() == "down":
        data = data[::-1]
    data = _check_image(data, path, name)
    nx, ny = (int(v) for v in header["scan_pixels"])
    range_m = np.asarray(header["scan_range"], dtype=float)
    if range_m.size != 2 or np.any(range_m <= 0):
        raise MoireSTMError(f"{path}: invalid SCAN_RANGE {header.get('scan_range')}")
    pixel_nm = (float(range_m[0] * 1e9 / nx), float(range_m[1] * 1e9 / ny))
    info = header["data_info"]
    unit = ""
    if "Unit" in info and name in info["Name"]:
        unit = info["Unit"][list(info["Name"]).index(name)]
    zc = header.get("z-controller", {}) or {}
    setpoint = None
    if "Setpoint" in zc and len(zc["Setpoint"]):
        setpoint = str(zc["Setpoint"][0])
    angle = _header_float(header.get("scan_angle", 0.0)) or 0.0
    bias = header.get("bias")
    meta = {
        "scan_offset_nm": [float(v) * 1e9 for v in np.atleast_1d(header.get("scan_offset", []))],
        "scan_dir": header.get("scan_dir"),
        "direction": direction,
        "rec_date": header.get("rec_date"),
        "rec_time": header.get("rec_time"),
        "comment": header.get("comment"),
    }
    return STMImage(
        data=data,
        pixel_nm=pixel_nm,
        channel=name,
        unit=unit,
        scan_angle_deg=float(angle),
        bias_v=None if bias is None else float(bias),
        setpoint=setpoint,
        source=str(path),
        file_format="nanonis-sxm",
        channels=names,
        metadata=meta,
    )


# --------------------------------------------------------------------------- Nanonis .3ds
def read_3ds(path: Path, channel: str | None = None, bias_v: float | None = None) -> STMImage:
    """Read a map from a Nanonis ``.3ds`` grid: one channel at the sweep point nearest ``bias_v``.

    ``channel="topo"`` gives the topography recorded at each grid point. Without
    ``bias_v`` the sweep point nearest 0 V (the Fermi level) is taken.
    """
    try:
        from nanonispy2 import read as nread
    except ImportError as exc:  # pragma: no cover
        raise MoireSTMError("reading Nanonis files needs nanonispy2: pip install 'moirestm[measured]'") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grid = nread.Grid(str(path))
    except Exception as exc:
        raise MoireSTMError(f"{path}: damaged or unsupported Nanonis .3ds file ({type(exc).__name__}: {exc})") from None
    header = grid.header
    nx, ny = header["dim_px"]
    per_pixel = header["num_parameters"] + header["num_sweep_signal"] * header["num_channels"]
    with open(path, "rb") as f:
        f.seek(grid.byte_offset)
        stored = len(f.read()) // 4
    if stored < nx * ny * per_pixel:
        raise MoireSTMError(f"{path}: grid data truncated ({stored} values, header announces {nx * ny * per_pixel})")
    names = list(header["channels"]) + ["topo"]
    name = _select_channel(names, channel, path)
    sweep = np.asarray(grid.signals["sweep_signal"], dtype=float)
    selected_bias = None
    if name == "topo":
        data = np.array(grid.signals["topo"], dtype=np.float64)
        unit = "m"
    else:
        target = 0.0 if bias_v is None else float(bias_v)
        index = int(np.argmin(np.abs(sweep - target)))
        data = np.array(grid.signals[name][:, :, index], dtype=np.float64)
        selected_bias = float(sweep[index])
        match = re.search(r"\(([^)]*)\)\s*$", name)
        unit = match.group(1) if match else ""
    data = _check_image(data, path, name)
    size_m = np.asarray(header["size_xy"], dtype=float)
    if np.any(size_m <= 0):
        raise MoireSTMError(f"{path}: invalid grid size {header['size_xy']}")
    setpoint = None
    scan_bias = None
    for key, value in header.items():
        if "setpoint" in str(key).lower() and setpoint is None:
            setpoint = str(value)
        if str(key).lower().startswith("bias>bias") and scan_bias is None:
            scan_bias = _header_float(value)
    return STMImage(
        data=data,
        pixel_nm=(float(size_m[0] * 1e9 / nx), float(size_m[1] * 1e9 / ny)),
        channel=name,
        unit=unit,
        scan_angle_deg=float(header.get("angle", 0.0)),
        bias_v=selected_bias if selected_bias is not None else scan_bias,
        setpoint=setpoint,
        source=str(path),
        file_format="nanonis-3ds",
        channels=names,
        metadata={
            "sweep_signal": header.get("sweep_signal"),
            "sweep_range": [float(sweep[0]), float(sweep[-1])],
            "n_sweep": int(sweep.size),
            "grid_center_nm": [float(v) * 1e9 for v in header["pos_xy"]],
            "scan_bias_v": scan_bias,
            "experiment": header.get("experiment_name"),
        },
    )


# --------------------------------------------------------------------------- Gwyddion .gwy
def read_gwy(path: Path, channel: str | None = None) -> STMImage:
    """Read one data field of a Gwyddion ``.gwy`` file (lateral unit taken as metres)."""
    try:
        import gwyfile
        from gwyfile.util import get_datafields
    except ImportError as exc:  # pragma: no cover
        raise MoireSTMError("reading Gwyddion files needs gwyfile: pip install 'moirestm[measured]'") from exc
    try:
        container = gwyfile.load(str(path))
        fields = get_datafields(container)
    except Exception as exc:
        raise MoireSTMError(f"{path}: damaged or unsupported Gwyddion .gwy file ({type(exc).__name__}: {exc})") from None
    names = list(fields)
    name = _select_channel(names, channel, path)
    dfield = fields[name]
    try:
        data = np.array(dfield.data, dtype=np.float64)
        xreal, yreal = float(dfield.xreal), float(dfield.yreal)
    except Exception as exc:
        raise MoireSTMError(f"{path}: data field '{name}' is damaged ({type(exc).__name__}: {exc})") from None
    # Gwyddion stores row 0 at the top of the frame.
    data = _check_image(data[::-1], path, name)
    ny, nx = data.shape
    unit_xy = dfield.si_unit_xy.get("unitstr", "m") if dfield.si_unit_xy is not None else "m"
    scale = {"m": 1e9, "nm": 1.0, "um": 1e3, "µm": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3}.get(unit_xy or "m")
    if scale is None:
        raise MoireSTMError(f"{path}: unsupported lateral unit '{unit_xy}' in field '{name}'")
    unit_z = dfield.si_unit_z.get("unitstr", "") if dfield.si_unit_z is not None else ""
    meta = {}
    channel_id = next((k.split("/")[1] for k, v in container.items() if k.endswith("/data/title") and v == name), None)
    if channel_id is not None:
        meta_obj = container.get(f"/{channel_id}/meta")
        if meta_obj is not None:
            meta = {str(k): str(v) for k, v in meta_obj.items()}
    bias = None
    setpoint = None
    angle = 0.0
    for key, value in meta.items():
        low = key.lower()
        if bias is None and low in ("bias", "bias (v)", "bias>bias (v)"):
            bias = _header_float(value)
        if setpoint is None and "setpoint" in low:
            setpoint = value
        if "angle" in low:
            angle = _header_float(value) or 0.0
    return STMImage(
        data=data,
        pixel_nm=(xreal * scale / nx, yreal * scale / ny),
        channel=name,
        unit=unit_z,
        scan_angle_deg=float(angle),
        bias_v=bias,
        setpoint=setpoint,
        source=str(path),
        file_format="gwyddion",
        channels=names,
        metadata={"meta": meta},
    )


# --------------------------------------------------------------------------- plain arrays
def read_array(path: Path, pixel_nm=None) -> STMImage:
    """Read a ``.npy`` or whitespace-separated ``.txt`` array; row 0 is the bottom of the frame."""
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = np.loadtxt(path, ndmin=2)
    except Exception as exc:
        raise MoireSTMError(f"{path}: not a readable numeric array ({type(exc).__name__}: {exc})") from None
    pixel = _pixel_from_arg(pixel_nm, path)
    data = _check_image(data, path, "array")
    return STMImage(
        data=data, pixel_nm=pixel, channel="array", source=str(path), file_format=path.suffix.lower()[1:],
        channels=["array"],
    )


def read_stm(
    path: str | os.PathLike,
    channel: str | None = None,
    *,
    direction: str = "forward",
    pixel_nm: float | tuple[float, float] | None = None,
    bias_v: float | None = None,
) -> STMImage:
    """Read one map from a measured STM file, dispatching on the suffix.

    Parameters
    ----------
    path : ``.sxm``, ``.3ds``, ``.gwy``, ``.npy`` or ``.txt`` file.
    channel : channel name (exact, or a unique case-insensitive fragment); None picks
        a dI/dV (lock-in) channel if present, else the topography.
    direction : ``"forward"`` or ``"backward"`` (``.sxm`` only).
    pixel_nm : pixel size in nm, required for plain arrays; for other formats it
        overrides the file's calibration when given.
    bias_v : for ``.3ds`` grids, the sweep point to map (nearest is taken; default 0 V).
    """
    path = Path(path)
    if not path.is_file():
        raise MoireSTMError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise MoireSTMError(
            f"{path}: unsupported file type '{path.suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if suffix in (".sxm", ".3ds") and path.suffix != suffix:
        raise MoireSTMError(f"{path}: rename the file with a lower-case '{suffix}' suffix (the Nanonis reader needs it)")
    if suffix == ".sxm":
        image = read_sxm(path, channel, direction)
    elif suffix == ".3ds":
        image = read_3ds(path, channel, bias_v)
    elif suffix == ".gwy":
        image = read_gwy(path, channel)
    else:
        return read_array(path, pixel_nm)
    if pixel_nm is not None:
        image.metadata["file_pixel_nm"] = list(image.pixel_nm)
        image.pixel_nm = _pixel_from_arg(pixel_nm, path)
    if not all(math.isfinite(v) and v > 0 for v in image.pixel_nm):
        raise MoireSTMError(f"{path}: invalid pixel size {image.pixel_nm} nm")
    return image


def list_channels(path: str | os.PathLike) -> list[str]:
    """Channel names in a measured STM file."""
    path = Path(path)
    if path.suffix.lower() in (".npy", ".txt"):
        return ["array"]
    return read_stm(path).channels
