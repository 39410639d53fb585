"""Display ranges and colour maps of the report's montages.

Fixed ranges make maps comparable between runs and subjects: a CBF of 60 ml/100g/min has the
same colour in every report. A fixed range is only used when the sidecar's ``Units`` are the
units the range was chosen for; otherwise (relative maps with ``Units`` "a.u.", unknown maps) the
range is taken from the data (robust percentiles inside the mask) and the report says "auto".
Values outside the range are never silently clipped: the colour bar gets arrow ends and the
figure caption gives the fraction of voxels beyond each end.
"""

from __future__ import annotations

import numpy as np

from gpuperf import maps
from gpuperf.maps import MapSpec

_UNIT_ALIASES = {
    "ml/100 g/min": "ml/100g/min",
    "ml/100g/min": "ml/100g/min",
    "ml/(100g*min)": "ml/100g/min",
    "ml/100 g": "ml/100g",
    "ml/100g": "ml/100g",
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
}


def normalize_units(units: str) -> str:
    """Lower-case, spacing-insensitive units (``"mL/100 g/min"`` -> ``"ml/100g/min"``)."""
    u = " ".join(str(units).strip().lower().split())
    return _UNIT_ALIASES.get(u, _UNIT_ALIASES.get(u.replace(" ", ""), u))


def spec_for(name: str) -> MapSpec:
    """The map-table entry of ``name`` (:mod:`gpuperf.maps`), or a data-driven default for a
    map the table does not know (shown with a range from the data)."""
    if name in maps.MAPS:
        return maps.MAPS[name]
    label = f"{name[:-7]} standard error" if name.endswith("_stderr") else name.replace("_", " ")
    cmap = "cividis" if name.endswith("_stderr") or "threshold" in name else "viridis"
    return MapSpec(name, "", "", label, cmap=cmap)


def display_range(name: str, units: str, values: np.ndarray) -> tuple[float, float, bool, MapSpec]:
    """Range to show map ``name`` with.

    Parameters
    ----------
    name : str
    units : str
        The sidecar's ``Units``.
    values : ndarray
        The map's values inside the mask (any shape; NaN ignored).

    Returns
    -------
    vmin, vmax : float
    fixed : bool
        True when the map table's fixed range was used.
    spec : gpuperf.maps.MapSpec
    """
    spec = spec_for(name)
    # dimensionless maps (ratios) keep their range whatever their sidecar says
    same_units = spec.units == "1" or normalize_units(units) == normalize_units(spec.units)
    if spec.vmin is not None and spec.vmax is not None and same_units:
        return float(spec.vmin), float(spec.vmax), True, spec
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0, False, spec
    if spec.categorical:
        return float(min(v.min(), 0.0)), float(max(v.max(), 1.0)), False, spec
    if spec.symmetric:
        m = float(np.percentile(np.abs(v), 98))
        m = m if m > 0 else 1.0
        return -m, m, False, spec
    lo, hi = (float(x) for x in np.percentile(v, [2, 98]))
    if 0.0 <= lo < 0.5 * hi:  # non-negative quantities: start the scale at zero
        lo = 0.0
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    return lo, hi, False, spec
