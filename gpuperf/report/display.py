"""Display ranges and colour maps of the report's montages.

Fixed ranges make maps comparable between runs and subjects: a CBF of 60 ml/100g/min has the
same colour in every report. A fixed range is only used when the sidecar's ``Units`` are the
units the range was chosen for; otherwise (relative maps with ``Units`` "a.u.", unknown maps) the
range is taken from the data (robust percentiles inside the mask) and the report says "auto".
Values outside the range are never silently clipped: the colour bar gets arrow ends and the
figure caption gives the fraction of voxels beyond each end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DisplaySpec:
    """How to show one map.

    Attributes
    ----------
    label : str
        Human name of the quantity ("CBF").
    vmin, vmax : float or None
        Fixed range, or None for a range from the data.
    units : tuple of str
        Units (normalised, see :func:`normalize_units`) the fixed range is meant for; empty
        means any units.
    cmap : str
        Matplotlib colour map.
    symmetric : bool
        Auto range symmetric about zero (signed maps such as K2).
    categorical : bool
        Integer codes (status maps): no interpolation, discrete colour bar.
    """

    label: str
    vmin: float | None = None
    vmax: float | None = None
    units: tuple[str, ...] = ()
    cmap: str = "viridis"
    symmetric: bool = False
    categorical: bool = False


_CBF_UNITS = ("ml/100g/min",)
_S = ("s",)

#: Map name -> display. Keys are the ``<name>`` of ``<prefix>_<name>.nii.gz``.
DISPLAY: dict[str, DisplaySpec] = {
    "cbf": DisplaySpec("CBF", 0.0, 100.0, _CBF_UNITS, "inferno"),
    "cbv": DisplaySpec("CBV", 0.0, 8.0, ("ml/100g",), "inferno"),
    "rcbv": DisplaySpec("rCBV", 0.0, 6.0, (), "inferno"),
    "rcbf": DisplaySpec("rCBF", 0.0, 6.0, (), "inferno"),
    "mtt": DisplaySpec("MTT", 0.0, 12.0, _S, "viridis"),
    "tmax": DisplaySpec("Tmax", 0.0, 10.0, _S, "magma"),
    "ttp": DisplaySpec("TTP", None, None, (), "viridis"),
    "delay": DisplaySpec("Bolus delay", 0.0, 10.0, _S, "magma"),
    "k2": DisplaySpec("K2 (leakage)", None, None, (), "RdBu_r", symmetric=True),
    "att": DisplaySpec("ATT", 0.0, 3.0, _S, "viridis"),
    "abat": DisplaySpec("aBAT", 0.0, 3.0, _S, "viridis"),
    "abv": DisplaySpec("aBV", None, None, (), "inferno"),
    "cbf_stderr": DisplaySpec("CBF standard error", 0.0, 25.0, _CBF_UNITS, "cividis"),
    "att_stderr": DisplaySpec("ATT standard error", 0.0, 0.5, _S, "cividis"),
    "abv_stderr": DisplaySpec("aBV standard error", None, None, (), "cividis"),
    "abat_stderr": DisplaySpec("aBAT standard error", None, None, (), "cividis"),
    "residual": DisplaySpec("Fit residual", None, None, (), "cividis"),
    "rmse": DisplaySpec("Fit RMSE", None, None, (), "cividis"),
    "osvd_threshold": DisplaySpec("oSVD threshold", None, None, (), "cividis"),
    "threshold": DisplaySpec("SVD threshold", None, None, (), "cividis"),
    "oi": DisplaySpec("Oscillation index", None, None, (), "cividis"),
    "s0": DisplaySpec("S0 (baseline signal)", None, None, (), "gray"),
    "m0": DisplaySpec("M0", None, None, (), "gray"),
    "status": DisplaySpec("Status flags", categorical=True, cmap="tab10"),
}

#: Order of the montages in a report (others follow alphabetically).
ORDER = (
    "cbf",
    "cbv",
    "rcbv",
    "rcbf",
    "mtt",
    "tmax",
    "ttp",
    "delay",
    "k2",
    "att",
    "abv",
    "abat",
    "cbf_stderr",
    "att_stderr",
    "abv_stderr",
    "abat_stderr",
    "osvd_threshold",
    "threshold",
    "oi",
    "residual",
    "rmse",
    "s0",
    "m0",
    "status",
)

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


def spec_for(name: str) -> DisplaySpec:
    """Display spec of map ``name`` (a data-driven default for unknown names)."""
    if name in DISPLAY:
        return DISPLAY[name]
    if name.endswith("_stderr"):
        return DisplaySpec(f"{name[:-7]} standard error", cmap="cividis")
    if "threshold" in name:
        return DisplaySpec(name.replace("_", " "), cmap="cividis")
    return DisplaySpec(name.replace("_", " "))


def display_range(
    name: str, units: str, values: np.ndarray
) -> tuple[float, float, bool, DisplaySpec]:
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
        True when the fixed range of :data:`DISPLAY` was used.
    spec : DisplaySpec
    """
    spec = spec_for(name)
    if (
        spec.vmin is not None
        and spec.vmax is not None
        and (not spec.units or normalize_units(units) in spec.units)
    ):
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
