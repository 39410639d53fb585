"""The one per-voxel status convention of gpuperf: a bit field of named flags.

Every ``<prefix>_status`` map (DSC, ASL, and the fitter's :class:`gpuperf.fit.FitResult.status`)
uses these flags; 0 means the voxel was processed normally. A voxel can carry several flags
(e.g. ``NONPOSITIVE_INPUT | NO_BASELINE``). The status map's sidecar lists the flags that can
occur in it (:func:`describe`), and the report reads them with :func:`decode`, never by parsing
sidecar text.

Flags of the *input* class (:data:`INPUT_FLAGS`) mean the voxel could not be processed: every
map of the voxel is NaN. The others mark results that exist but deserve a look.

The CUDA fit kernel writes its own small codes (0 converged, 1 iteration limit, 2 failed);
:func:`from_fit_codes` maps them into this convention on the host.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Any

import numpy as np


class Status(IntFlag):
    """Per-voxel status flags (combine with ``|``)."""

    OK = 0
    #: The input is <= 0 where the method takes a logarithm or divides by it (DSC signal,
    #: ASL M0).
    NONPOSITIVE_INPUT = 1
    #: The input is NaN or infinite in at least one sample.
    NONFINITE_INPUT = 2
    #: DSC: no usable pre-bolus baseline S0 (<= 0 or not finite).
    NO_BASELINE = 4
    #: Outside the analysis mask: not processed.
    OUTSIDE_MASK = 8
    #: Fit: the iteration limit was reached without convergence (parameters: last iterate).
    MAX_ITER = 16
    #: Fit: non-finite start or parameters, or a parameter without influence (NaN maps).
    FIT_FAILED = 32
    #: ASL fit: the optimum lies at a kink of the model (ATT = t - tau or ATT = t).
    AT_KINK = 64
    #: oSVD: no threshold met the oscillation-index limit (the highest threshold was used).
    OSVD_NO_PASS = 128
    #: The deconvolved residue has no positive maximum: CBF <= 0 and MTT undefined.
    NONPOSITIVE_FLOW = 256


#: Meaning of each flag, for sidecars, documentation and the report.
DESCRIPTIONS: dict[Status, str] = {
    Status.NONPOSITIVE_INPUT: "input <= 0 where a logarithm or a division needs it positive "
    "(DSC signal, ASL M0)",
    Status.NONFINITE_INPUT: "input NaN or infinite in at least one sample",
    Status.NO_BASELINE: "no usable pre-bolus baseline (S0 <= 0 or not finite)",
    Status.OUTSIDE_MASK: "outside the analysis mask (not processed)",
    Status.MAX_ITER: "fit stopped at the iteration limit without converging",
    Status.FIT_FAILED: "fit failed (non-finite start or parameters, or a parameter without "
    "influence)",
    Status.AT_KINK: "fit converged at a kink of the model (ATT at a sample time)",
    Status.OSVD_NO_PASS: "oSVD: no threshold met the oscillation-index limit (highest used)",
    Status.NONPOSITIVE_FLOW: "residue maximum <= 0: CBF <= 0 and MTT undefined",
}

#: Flags that leave no map for the voxel (NaN everywhere).
INPUT_FLAGS = (
    Status.NONPOSITIVE_INPUT | Status.NONFINITE_INPUT | Status.NO_BASELINE | Status.OUTSIDE_MASK
)

#: Flags that mark a usable result worth knowing about (not counted as flagged by the QC checks).
NOTE_FLAGS = Status.AT_KINK

#: dtype of status maps on disk and in memory.
DTYPE = np.int32

#: Kernel code (index) -> flag: 0 converged, 1 iteration limit, 2 failed.
_FIT_CODES = np.array([Status.OK, Status.MAX_ITER, Status.FIT_FAILED], dtype=DTYPE)


def from_fit_codes(codes: Any) -> np.ndarray:
    """Map the fit kernel's codes (0 converged, 1 iteration limit, 2 failed) to flags."""
    return _FIT_CODES[np.asarray(codes, dtype=np.intp)]


def names(value: int) -> str:
    """``'MAX_ITER|AT_KINK'`` for a status value; ``'OK'`` for 0."""
    value = int(value)
    if value == 0:
        return "OK"
    parts = [f.name for f in DESCRIPTIONS if value & int(f)]
    unknown = value & ~sum(int(f) for f in DESCRIPTIONS)
    if unknown:
        parts.append(f"unknown bits {unknown}")
    return "|".join(parts)


def is_flagged(values: Any) -> np.ndarray:
    """True where a status value has a flag other than the :data:`NOTE_FLAGS`."""
    v = np.asarray(values).astype(np.int64)
    return (v & ~int(NOTE_FLAGS)) != 0


def describe(flags: Any = None) -> dict[str, str]:
    """Bit value (as a string, for JSON) -> meaning; all flags, or those in ``flags``."""
    selected = list(DESCRIPTIONS) if flags is None else [Status(int(f)) for f in flags]
    return {str(int(f)): DESCRIPTIONS[f] for f in selected}


def decode(status_map: Any) -> dict[str, int]:
    """Count voxels per flag name in a status map (a voxel with two flags counts twice);
    ``OK`` counts the voxels with no flag."""
    s = np.asarray(status_map)
    s = s[np.isfinite(s)].astype(np.int64) if s.dtype.kind == "f" else s.astype(np.int64)
    out = {"OK": int((s == 0).sum())}
    for flag in DESCRIPTIONS:
        n = int(((s & int(flag)) != 0).sum())
        if n:
            out[flag.name] = n
    return out


def sidecar_entry(flags: Any = None) -> dict[str, Any]:
    """The ``Flags`` block of a status map's sidecar."""
    return {
        "Convention": "bit field; 0 = processed normally; see gpuperf.status",
        "Flags": describe(flags),
    }
