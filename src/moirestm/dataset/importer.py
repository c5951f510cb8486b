"""Import LDOS text files of the reference code into a Store.

Format: whitespace- or comma-separated columns ``x  y  LDOS`` (one atom per row, ``#``
comments allowed), the Hubbard U in the file name as ``...-U2.5...`` or ``..._U2.5...``.
Lengths are detected from the nearest-neighbour distance (nm, Å, or units of the
carbon-carbon bond a0 or of the lattice constant a) unless ``length_unit`` is given.
Each file becomes one sample whose FT-LDOS is the point-source transform of the rows as given.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..constants import CARBON_BOND_NM, GRAPHENE_LATTICE_NM
from ..errors import MoireSTMError
from ..observables.ftldos import ft_points
from .store import Store, sample_key
from .sweep import FT_DEFAULTS

U_PATTERN = re.compile(r"(?:^|[-_ ])U(?P<u>[+-]?\d+(?:\.\d+)?)(?![\d])")
#: nm per file length unit.
LENGTH_UNITS = {"nm": 1.0, "angstrom": 0.1, "bond": CARBON_BOND_NM, "lattice": GRAPHENE_LATTICE_NM}


def hubbard_u_from_name(path) -> float:
    """U in eV from a file name such as ``ldos-i9-U2.5.dat``."""
    name = Path(path).name
    found = {float(m.group("u")) for m in U_PATTERN.finditer(Path(name).stem)}
    if not found:
        raise MoireSTMError(f"{name}: no Hubbard U in the file name (expected e.g. '...-U2.5...')")
    if len(found) > 1:
        raise MoireSTMError(f"{name}: several U values in the file name {sorted(found)}")
    return found.pop()


def read_ldos_text(path) -> np.ndarray:
    """(n, 3) array of x, y, LDOS rows; raises naming the first malformed line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MoireSTMError(f"cannot read LDOS file {path} ({exc})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        if len(fields) < 3:
            raise MoireSTMError(f"{path}:{lineno}: expected 3 columns x y LDOS, got {len(fields)}")
        try:
            values = [float(v) for v in fields[:3]]
        except ValueError:
            raise MoireSTMError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
        if not all(np.isfinite(values)):
            raise MoireSTMError(f"{path}:{lineno}: non-finite value in {line!r}")
        rows.append(values)
    if len(rows) < 3:
        raise MoireSTMError(f"{path}: {len(rows)} data rows; an LDOS file needs at least 3 atoms")
    return np.array(rows)


def detect_length_unit(xy: np.ndarray) -> str:
    """Length unit in which most atoms have a neighbour at the C-C bond length (0.142 nm).

    Works for one layer or both layers projected onto the plane (the other layer's atoms
    lie at scattered distances, the in-layer bonds all at a0).
    """
    k = min(7, len(xy))
    dist, _ = cKDTree(xy).query(xy, k=k)
    dist = dist[:, 1:]  # zero distances (AA-stacked atoms of two layers) never match a bond
    scores = {}
    for unit, scale in LENGTH_UNITS.items():
        bond = CARBON_BOND_NM / scale
        scores[unit] = float(np.mean(np.any(np.abs(dist / bond - 1.0) < 0.02, axis=1)))
    best = max(scores, key=scores.get)
    if scores[best] < 0.5:
        nn = float(np.median(np.where(dist > 0, dist, np.inf).min(axis=1)))
        raise MoireSTMError(
            f"cannot tell the length unit: nearest-neighbour distance {nn:.4g} matches none of "
            f"{sorted(LENGTH_UNITS)} (C-C bond 0.142 nm); pass length_unit explicitly")
    return best


def import_ldos_files(files, out, length_unit: str = "auto", ft: dict | None = None,
                      progress=None) -> dict:
    """Import LDOS text files into the store ``out`` (created if absent).

    Returns
    -------
    counts : {"imported": n, "skipped": n (already present)}.
    """
    files = [Path(f) for f in files]
    if not files:
        raise MoireSTMError("no LDOS files given")
    if length_unit != "auto" and length_unit not in LENGTH_UNITS:
        raise MoireSTMError(f"length unit must be 'auto' or one of {sorted(LENGTH_UNITS)}, got {length_unit!r}")
    ft_opts = {**{k: v for k, v in FT_DEFAULTS.items() if k != "tiling"}, **(ft or {})}
    parsed = []
    for path in files:  # validate everything before writing anything
        u = hubbard_u_from_name(path)
        data = read_ldos_text(path)
        unit = detect_length_unit(data[:, :2]) if length_unit == "auto" else length_unit
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        params = {"source": "import", "file": path.name, "file_sha256": digest,
                  "hubbard_u_ev": u, "length_unit": unit, "n_points": int(len(data)), "ft": ft_opts}
        parsed.append((path, data, unit, params))
    out = Path(out)
    if out.exists():
        store = Store.open(out, "a")
    else:
        store = Store.create(out, {"sweep": "import", "definition": {"source": "import"}})
    counts = {"imported": 0, "skipped": 0}
    try:
        store.add_history("import", files=[p.name for p, *_ in parsed])
        existing = set(store.keys(None))
        for path, data, unit, params in parsed:
            key = sample_key(params)
            if key in existing:
                counts["skipped"] += 1
                continue
            xy_nm = data[:, :2] * LENGTH_UNITS[unit]
            image = ft_points(xy_nm, data[:, 2], params={"source": "import"}, **ft_opts)
            store.write_sample(key, params, {"ft_image": image.image, "kx_nm": image.kx_nm,
                                             "ky_nm": image.ky_nm, "ldos": data[:, 2],
                                             "positions_xy_nm": xy_nm},
                               results={"ft_params": image.params})
            counts["imported"] += 1
            if progress is not None:
                progress(path)
    finally:
        store.close()
    return counts
