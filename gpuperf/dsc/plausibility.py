"""Plausibility checks of a prepared DSC series: realistic mistakes that give garbage maps.

A series without a contrast bolus (the injection failed, the wrong run was picked) still
deconvolves into maps that look like maps: the CBF of noise divided by noise. The check here
looks at the median dR2* curve of the brain (the median: a few artery voxels with a bolus must
not make a brain without one look perfused): a bolus lowers the T2*-weighted signal of the
whole brain for several frames (Østergaard et al., MRM 1996; a first pass raises the dR2* of
grey and white matter by several 1/s), far above the frame-to-frame noise of a median over
thousands of voxels. Without such a rise the run warns (log and report); when the arterial
input function shows no bolus either, no sensible map exists and the run stops.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from gpuperf.errors import InputError
from gpuperf.io.qc import publish_warnings

__all__ = [
    "bolus_rise_sd",
    "brain_median_curve",
    "check_dsc",
    "column_median",
    "publish_warnings",
]

#: A bolus raises the brain's median dR2* at least this many noise SDs above its median.
BOLUS_MIN_RISE_SD = 10.0
#: Voxels of the brain's median curve (evenly spaced subsample: cheap on any grid).
SAMPLE_VOXELS = 20000


def bolus_rise_sd(curve: np.ndarray) -> float:
    """Rise of ``curve`` (its maximum above its median) in units of its frame-to-frame noise.

    The noise SD is the robust scale of the first differences (``MAD / 0.6745 / sqrt(2)``),
    which a smooth bolus barely changes. A flat curve gives 0; a noise-free bolus ``inf``.
    """
    c = np.asarray(curve, dtype=np.float64)
    c = c[np.isfinite(c)]
    if c.size < 4:
        return 0.0
    rise = float(c.max() - np.median(c))
    d = np.diff(c)
    sd = float(np.median(np.abs(d - np.median(d))) / 0.6745 / np.sqrt(2.0))
    if rise <= 0:
        return 0.0
    return float("inf") if sd == 0 else rise / sd


def brain_median_curve(prepared: Any) -> np.ndarray:
    """Median dR2* curve (1/s) of the usable voxels of a :class:`gpuperf.dsc.model.PreparedDSC`
    (at most :data:`SAMPLE_VOXELS` of them, evenly spaced)."""
    usable = np.flatnonzero(np.asarray(prepared.usable))
    if usable.size == 0:
        return np.zeros(0)
    pick = usable[np.linspace(0, usable.size - 1, min(usable.size, SAMPLE_VOXELS)).astype(int)]
    backend = prepared.backend
    dr2s = prepared.dr2s
    # pick ascends: every row when it has as many (no gathered copy of the block then)
    rows = dr2s if pick.size == dr2s.shape[0] else dr2s[backend.asarray(pick)]
    return column_median(np.asarray(backend.to_host(rows)))


def column_median(rows: np.ndarray) -> np.ndarray:
    """``np.nanmedian(rows.astype(float64), axis=0)``, bit for bit, of a (V, T) block.

    NumPy's ``nanmedian`` along the long axis is a Python loop over the columns (25 ms for a
    10k x 60 block); here each frame's voxels are one contiguous row and one partition finds
    the upper middle value, the lower one is the largest below it. The cast to float64 is
    exact and keeps the order, so the partition may run on the data's own type; the mean of
    the two middle values is taken in float64 as ``np.median`` takes it. Equal non-zero floats
    have equal bits, so the result does not depend on how ties were ordered; a middle value of
    zero (-0.0 and 0.0 compare equal) and a block holding a NaN (no usable voxel has one) take
    ``nanmedian`` itself.
    """
    x = np.asarray(rows)
    if x.ndim != 2 or x.shape[0] == 0 or x.dtype.kind != "f" or np.isnan(x).any():
        return _nanmedian64(x)
    n = x.shape[0]
    k = n // 2
    part = np.array(x.T, order="C")  # frames as rows (a copy: partitioned in place)
    part.partition(k, axis=1)
    upper = part[:, k].astype(np.float64)
    zero = upper == 0
    if n % 2:
        med = upper
    else:
        lower = part[:, :k].max(axis=1).astype(np.float64)
        zero |= lower == 0
        med = (lower + upper) / 2.0
    if zero.any():
        med[zero] = _nanmedian64(x[:, zero])
    return med


def _nanmedian64(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmedian(np.asarray(x, dtype=np.float64), axis=0)


def check_dsc(prepared: Any, series_path: str | PathLike | None) -> list[str]:
    """Warnings for a prepared DSC series (empty when plausible).

    Raises
    ------
    InputError
        Neither the brain nor the arterial input function shows a bolus: no map would mean
        anything. Names the series.
    """
    brain = bolus_rise_sd(brain_median_curve(prepared))
    if brain >= BOLUS_MIN_RISE_SD:
        return []
    aif = bolus_rise_sd(prepared.aif)
    if aif < BOLUS_MIN_RISE_SD:
        raise InputError(
            series_path,
            "signal",
            "no contrast bolus: neither the brain's median dR2* nor the AIF rises above the "
            f"noise (rises of {brain:.1f} and {aif:.1f} noise SDs, a bolus gives > "
            f"{BOLUS_MIN_RISE_SD:g}); is this a DSC series with an injection?",
        )
    return [
        f"{series_path}: no bolus in the brain: its median dR2* rises only {brain:.1f} noise SDs "
        f"(a first pass gives > {BOLUS_MIN_RISE_SD:g}); CBF, CBV and MTT are likely noise"
    ]
