"""Quality-control checks whose findings go at the top of a report.

Each check looks at the written outputs only and returns :class:`Finding` objects; the limits
are module constants so that they are documented and testable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuperf import status
from gpuperf.report.collect import RunOutputs
from gpuperf.report.display import normalize_units

#: More than this fraction of mask voxels with a non-zero status is a warning.
MAX_FLAGGED_FRACTION = 0.10
#: More than this fraction of mask voxels with a non-finite CBF is a warning.
MAX_NAN_FRACTION = 0.05
#: The AIF peak later than this fraction of the acquisition is a warning: the bolus should
#: arrive early, leaving the rest of the series for its passage and tail.
MAX_AIF_PEAK_FRACTION = 0.5
#: Plausible echo times for DSC (s): GRE 20-50 ms, SE 60-100 ms at 1.5-3 T.
TE_RANGE_S = (0.010, 0.110)
#: A mask smaller than this fraction of the field of view is a warning ...
MIN_MASK_FOV_FRACTION = 0.05
#: ... and so is one smaller than this volume (ml) when the field of view could hold a brain.
MIN_MASK_ML = 300.0
BRAIN_FOV_ML = 800.0
#: Median CBF in the mask outside this range (ml/100g/min) is implausible for a brain.
CBF_PLAUSIBLE = (5.0, 250.0)

_TE_KEYS = ("te_s", "echo_time_s", "echotime", "te", "echo_time")


@dataclass(frozen=True)
class Finding:
    """One QC finding: ``level`` is "warning" (shown in red) or "info"."""

    level: str
    code: str
    message: str


def _find_key(obj: Any, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """Depth-first search of nested mappings for the first key (case-insensitive) in ``keys``."""
    if isinstance(obj, Mapping):
        lowered = {str(k).lower(): k for k in obj}
        for key in keys:
            if key in lowered:
                return str(lowered[key]), obj[lowered[key]]
        for value in obj.values():
            hit = _find_key(value, keys)
            if hit is not None:
                return hit
    return None


def find_parameter(params: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """First parameter named like one of ``keys`` (case-insensitive, nested dicts searched)."""
    return _find_key(params, tuple(k.lower() for k in keys))


def mask_volume_ml(run: RunOutputs) -> float:
    if run.mask is None:
        return float("nan")
    return float(run.mask.sum()) * float(np.prod(run.zooms_mm)) / 1000.0


def check_mask(run: RunOutputs) -> list[Finding]:
    if run.mask is None or run.shape is None:
        return [Finding("info", "no-mask", "no mask found: statistics use the whole volume")]
    n = int(run.mask.sum())
    if n == 0:
        return [Finding("warning", "empty-mask", "the mask is empty: no voxel was analysed")]
    fov_ml = float(np.prod(run.mask.shape)) * float(np.prod(run.zooms_mm)) / 1000.0
    ml = mask_volume_ml(run)
    frac = n / float(np.prod(run.mask.shape))
    if frac < MIN_MASK_FOV_FRACTION or (ml < MIN_MASK_ML and fov_ml > BRAIN_FOV_ML):
        return [
            Finding(
                "warning",
                "small-mask",
                f"the mask covers little: {n} voxels = {ml:.1f} ml ({100 * frac:.1f}% of the "
                f"{fov_ml:.0f} ml field of view); check the brain mask",
            )
        ]
    return []


def status_counts(run: RunOutputs) -> dict[int, int]:
    """Voxel count per status code inside the mask (empty without a status map)."""
    st = run.maps.get("status")
    if st is None:
        return {}
    sel = run.mask if run.mask is not None else np.ones(st.data.shape, bool)
    vals = st.data[sel]
    vals = vals[np.isfinite(vals)].astype(np.int64)
    codes, counts = np.unique(vals, return_counts=True)
    return {int(c): int(n) for c, n in zip(codes, counts, strict=True)}


def flagged_count(run: RunOutputs) -> tuple[int, int]:
    """(voxels with a flag other than the notes of :mod:`gpuperf.status`, voxels with a status)
    inside the mask."""
    counts = status_counts(run)
    flagged = status.is_flagged(np.array(list(counts), dtype=np.int64))
    n = np.array(list(counts.values()), dtype=np.int64)
    return int(n[flagged].sum()), int(n.sum())


def check_status(run: RunOutputs) -> list[Finding]:
    out = []
    flagged, total = flagged_count(run)
    if total:
        if flagged / total > MAX_FLAGGED_FRACTION:
            out.append(
                Finding(
                    "warning",
                    "many-flagged",
                    f"{flagged} of {total} mask voxels ({100 * flagged / total:.1f}%) have a "
                    "status flag (input unusable, fit failed or stopped, oSVD without a pass): "
                    "see "
                    "the status summary",
                )
            )
    cbf = run.maps.get("cbf")
    if cbf is not None and run.mask is not None and run.mask.any():
        nan = int((~np.isfinite(cbf.data[run.mask])).sum())
        n = int(run.mask.sum())
        if nan / n > MAX_NAN_FRACTION:
            out.append(
                Finding(
                    "warning",
                    "many-nan",
                    f"CBF is missing (NaN) in {nan} of {n} mask voxels ({100 * nan / n:.1f}%)",
                )
            )
    return out


def check_cbf_level(run: RunOutputs) -> list[Finding]:
    cbf = run.maps.get("cbf")
    if cbf is None or normalize_units(cbf.units) != "ml/100g/min":
        return []
    sel = run.mask if run.mask is not None else np.isfinite(cbf.data)
    v = cbf.data[sel]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return []
    med = float(np.median(v))
    lo, hi = CBF_PLAUSIBLE
    if not lo <= med <= hi:
        return [
            Finding(
                "warning",
                "cbf-implausible",
                f"median CBF in the mask is {med:.3g} ml/100g/min, outside the plausible "
                f"{lo:g}-{hi:g}: check TE units, constants (kH, rho, lambda), M0 and labelling",
            )
        ]
    return []


def check_te(params: Mapping[str, Any]) -> list[Finding]:
    hit = find_parameter(params, _TE_KEYS)
    if hit is None:
        return []
    key, value = hit
    try:
        te = float(value)
    except (TypeError, ValueError):
        return [Finding("warning", "te-wrong", f"echo time {key}={value!r} is not a number")]
    lo, hi = TE_RANGE_S
    if te > 1.0:
        return [
            Finding(
                "warning",
                "te-wrong",
                f"echo time {key}={te:g} looks like milliseconds: it must be in seconds "
                f"(BIDS EchoTime); CBF/CBV scale with 1/TE",
            )
        ]
    if not lo <= te <= hi:
        return [
            Finding(
                "warning",
                "te-wrong",
                f"echo time {key}={te:g} s is unusual for DSC (expected {lo:g}-{hi:g} s)",
            )
        ]
    return []


def aif_peak(run: RunOutputs) -> tuple[float, float] | None:
    """(peak time s, peak time as a fraction of the acquisition) of the AIF, or None."""
    if run.aif_time_s is None or run.aif_curve is None:
        return None
    t, c = run.aif_time_s, run.aif_curve
    ok = np.isfinite(t) & np.isfinite(c)
    if ok.sum() < 2:
        return None
    t, c = t[ok], c[ok]
    i = int(np.argmax(c))
    span = float(t[-1] - t[0])
    return float(t[i]), (float(t[i] - t[0]) / span if span > 0 else 0.0)


def map_median(run: RunOutputs, name: str) -> float:
    m = run.maps.get(name)
    if m is None:
        return float("nan")
    sel = run.mask if run.mask is not None else np.ones(m.data.shape, bool)
    v = m.data[sel]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def check_aif(run: RunOutputs) -> list[Finding]:
    if run.aif_curve is None:
        return [Finding("info", "no-aif", "no AIF table (<prefix>_aif.tsv) in the folder")]
    c = run.aif_curve
    if not np.isfinite(c).any() or np.nanmax(c) <= 0:
        return [Finding("warning", "aif-flat", "the AIF has no positive peak")]
    out = []
    peak = aif_peak(run)
    if peak is not None:
        t_peak, frac = peak
        if frac > MAX_AIF_PEAK_FRACTION:
            out.append(
                Finding(
                    "warning",
                    "aif-late",
                    f"the AIF peaks late, at {t_peak:.1f} s ({100 * frac:.0f}% of the "
                    "acquisition): the bolus tail may be cut off or the AIF may be venous",
                )
            )
        ttp = map_median(run, "ttp")
        if np.isfinite(ttp) and t_peak > ttp:
            out.append(
                Finding(
                    "warning",
                    "aif-after-tissue",
                    f"the AIF peaks at {t_peak:.1f} s, after the median tissue time to peak "
                    f"({ttp:.1f} s): an arterial input must arrive first (venous or "
                    "partial-volumed AIF?)",
                )
            )
    return out


def run_checks(run: RunOutputs, modality: str, extra: Mapping[str, Any]) -> list[Finding]:
    """Every check for a run; pipeline warnings from ``extra["warnings"]`` come first."""
    findings = [Finding("warning", "pipeline", str(w)) for w in extra.get("warnings", [])]
    params = run.provenance().get("Parameters", {}) or {}
    findings += check_status(run)
    findings += check_mask(run)
    findings += check_cbf_level(run)
    if modality == "dsc":
        findings += check_te(params)
        findings += check_aif(run)
    findings += [Finding("info", "unreadable", n) for n in run.notes]
    return findings
