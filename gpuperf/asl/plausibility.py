"""Plausibility checks of an ASL series: realistic mistakes that give garbage maps.

- **Control and label swapped** (a wrong ``aslcontext.tsv``, a vendor that orders label first):
  labelling lowers the tissue magnetisation, so ``dM = control - label`` is positive in perfused
  brain (Alsop et al., MRM 2015, Eq. 1); a negative median dM over the brain means the two are
  swapped. CBF then comes out negative (single PLD) or every kinetic fit fails (multi-PLD).
  A warning (log and report): the user may know better.
- **An all-zero or all-NaN series**: nothing to quantify; an error.
- **A PASL bolus duration TI1 later than every inversion time** (``BolusCutOffDelayTime`` in ms,
  or the wrong field): no sample sees the tagged bolus after its cut-off (Buxton et al., MRM 1998:
  with QUIPSS II the signal is defined for TI > TI1); an error naming the sidecar field.
"""

from __future__ import annotations

import warnings
from os import PathLike
from typing import Any

import numpy as np

from gpuperf.errors import InputError
from gpuperf.io.qc import publish_warnings

__all__ = ["check_asl_samples", "check_asl_signal", "publish_warnings"]


#: Values per block of :func:`check_asl_signal`'s scan (a few hundred kB of booleans).
SIGNAL_CHECK_BLOCK = 1 << 18


def check_asl_signal(data: np.ndarray, path: str | PathLike | None) -> None:
    """Refuse a series with no finite value or with only zeros (names ``path``).

    The series is scanned in blocks of :data:`SIGNAL_CHECK_BLOCK` values in memory order and
    the scan stops at the first block with a finite non-zero value: a real series passes after
    its first block instead of two passes and a copy of the whole array (0.6 s for a
    whole-brain multi-PLD series).
    """
    a = np.asarray(data)
    flat = a.reshape(-1, order="A")  # a view for C- and Fortran-ordered arrays
    for start in range(0, flat.size, SIGNAL_CHECK_BLOCK):
        block = flat[start : start + SIGNAL_CHECK_BLOCK]
        if np.any(np.isfinite(block) & (block != 0)):
            return
    if not np.isfinite(flat).any():
        raise InputError(path, "signal", "every value of the series is NaN or infinite")
    raise InputError(path, "signal", "every value of the series is zero")


def check_asl_samples(
    samples: Any, is_pasl: bool, sidecar: str | PathLike | None, path: str | PathLike | None
) -> list[str]:
    """Warnings for the control-label samples of a series (empty when plausible).

    Parameters
    ----------
    samples : gpuperf.asl.preprocess.DifferenceSamples
        ``deltam`` (V, K), ``pld_s`` and ``tau_s`` (K,).
    is_pasl : bool
        Pulsed labelling: ``tau_s`` is TI1 and ``pld_s`` the inversion times.
    sidecar, path : path-like
        The series' JSON sidecar and NIfTI file, named in messages.

    Raises
    ------
    InputError
        PASL with TI1 at or after every inversion time (names ``BolusCutOffDelayTime``).
    """
    pld = np.asarray(samples.pld_s, dtype=np.float64)
    tau = np.asarray(samples.tau_s, dtype=np.float64)
    if is_pasl and pld.size and np.isfinite(tau).any():
        ti1 = float(np.nanmin(tau))
        if np.all(pld <= ti1):
            raise InputError(
                sidecar,
                "BolusCutOffDelayTime",
                f"TI1 = {ti1:g} s is not earlier than any inversion time (PostLabelingDelay, "
                f"at most {float(pld.max()):g} s): no sample follows the bolus cut-off; "
                "BolusCutOffDelayTime is in seconds",
            )
    dm = np.asarray(samples.deltam)
    if dm.size == 0:
        return []
    per_voxel = np.empty(dm.shape[0])
    block = max(1, SIGNAL_CHECK_BLOCK // max(dm.shape[1], 1))  # float64 copies stay in cache
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN voxels
        for a in range(0, dm.shape[0], block):
            blk = np.asarray(dm[a : a + block], dtype=np.float64)
            # nanmean only where there is a NaN (it copies and counts; the same sums otherwise)
            mean = np.nanmean if np.isnan(blk).any() else np.mean
            per_voxel[a : a + block] = mean(blk, axis=1)
    per_voxel = per_voxel[np.isfinite(per_voxel)]
    if per_voxel.size == 0 or np.median(per_voxel) >= 0:
        return []
    return [
        f"{path}: control and label look swapped: the median control - label difference in "
        f"the brain is negative ({float(np.median(per_voxel)):.3g}); check the volume_type "
        "column of aslcontext.tsv"
    ]
