"""DSC signal to relaxation-rate change, bolus-arrival detection, acquisition checks.

``dR2*(t) = -ln(S(t) / S0) / TE`` with TE in seconds (BIDS ``EchoTime``) and S0 the mean of the
pre-bolus frames (Rosen et al., MRM 14:249, 1990; Ostergaard et al., MRM 36:715, 1996).
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from gpuperf.errors import InputError
from gpuperf.status import Status

#: Baseline frames needed at least for a usable S0.
MIN_BASELINE_FRAMES = 2
#: Fraction of the peak signal drop that marks the bolus arrival on the mean curve.
ARRIVAL_DROP_FRACTION = 0.1


def check_te_tr(te_s: Any, tr_s: Any, source: str | PathLike | None = None) -> tuple[float, float]:
    """Validate TE and TR (seconds) and reject values that look like milliseconds.

    Raises
    ------
    InputError
        Naming ``source`` (the sidecar, or None for the API) and the field.
    """
    if te_s is None:
        raise InputError(
            source,
            "EchoTime",
            "TE is required (seconds): give --te or put EchoTime in the JSON sidecar",
        )
    if tr_s is None:
        raise InputError(
            source,
            "RepetitionTime",
            "TR is required (seconds): give --tr or put RepetitionTime in the JSON sidecar",
        )
    for name, value in (("EchoTime", te_s), ("RepetitionTime", tr_s)):
        if isinstance(value, (bool, str)):  # JSON true would read as 1 s
            raise InputError(source, name, f"expected a number of seconds, found {value!r}")
    try:
        te, tr = float(te_s), float(tr_s)
    except (TypeError, ValueError) as exc:
        raise InputError(
            source,
            "EchoTime/RepetitionTime",
            f"expected numbers in seconds, found {te_s!r} / {tr_s!r}",
        ) from exc
    if not np.isfinite(te) or te <= 0:
        raise InputError(source, "EchoTime", f"TE must be a positive number of seconds; got {te}")
    if te > 1:
        raise InputError(
            source,
            "EchoTime",
            f"TE = {te} looks like milliseconds; EchoTime is in seconds "
            f"(BIDS), e.g. {te / 1000:g} for {te:g} ms",
        )
    if not np.isfinite(tr) or tr <= 0:
        raise InputError(
            source, "RepetitionTime", f"TR must be a positive number of seconds; got {tr}"
        )
    if tr > 20:
        raise InputError(
            source,
            "RepetitionTime",
            f"TR = {tr} looks like milliseconds; RepetitionTime is in seconds "
            f"(BIDS), e.g. {tr / 1000:g} for {tr:g} ms",
        )
    return te, tr


def detect_bolus_arrival(mean_signal: np.ndarray) -> int:
    """Frame index at which the bolus arrives, from a (brain-)mean signal curve.

    The reference level is the median of the frames before the signal minimum; the arrival is
    the first frame before the minimum where the drop exceeds
    :data:`ARRIVAL_DROP_FRACTION` of the peak drop. The baseline is every frame before it.

    Parameters
    ----------
    mean_signal : ndarray (T,)

    Returns
    -------
    int
        Number of baseline frames (frames ``0 .. n-1`` are pre-bolus); at least 1.
    """
    s = np.asarray(mean_signal, dtype=np.float64)
    t_min = int(np.nanargmin(s))
    if t_min < 1:
        return 1
    ref = float(np.nanmedian(s[:t_min]))
    drop = ref - s[: t_min + 1]
    peak = drop[-1]
    if not np.isfinite(peak) or peak <= 0:
        return max(1, t_min)
    arrived = np.flatnonzero(drop > ARRIVAL_DROP_FRACTION * peak)
    return max(1, int(arrived[0]) if arrived.size else t_min)


#: Fraction of voxels (largest relative signal drop) whose mean curve times the arrival.
EARLY_FRACTION = 0.05


def baseline_frames(
    signal: np.ndarray, valid: np.ndarray | None = None, top: np.ndarray | None = None
) -> int:
    """Pre-bolus frames for a whole series from its (V, T) signal block.

    The arrival is detected (:func:`detect_bolus_arrival`) on the mean curve of the
    :data:`EARLY_FRACTION` of voxels with the largest relative drop (arteries and high-CBV
    tissue, where the bolus arrives first); one more frame is left out as a margin, since a
    single bolus frame in S0 biases every curve (the AIF most).

    ``valid`` (V,) marks the voxels to use (finite, positive signal); default all. ``top``
    (V,): each voxel's maximum signal when the caller has it already.

    Returns
    -------
    int, >= 1
    """
    s = np.asarray(signal)
    if top is None:
        top = s.max(axis=1)  # the pre-bolus level, up to noise; cheaper than a median
    drop = 1.0 - s.min(axis=1) / np.where(top > 0, top, 1.0)
    if valid is not None:
        drop = np.where(valid, drop, -np.inf)
        if not np.any(valid):
            return 1
    n_valid = s.shape[0] if valid is None else int(np.count_nonzero(valid))
    n_early = max(1, int(np.ceil(EARLY_FRACTION * n_valid)))
    early = np.argpartition(-drop, n_early - 1)[:n_early]
    return max(1, detect_bolus_arrival(s[early].astype(np.float64).mean(axis=0)) - 1)


def signal_to_dr2s(signal: Any, te_s: float, n_baseline: int, xp: Any = np) -> tuple[Any, Any]:
    """Convert a (V, T) signal block to dR2* (1/s), flagging unusable voxels.

    Parameters
    ----------
    signal : array (V, T)
    te_s : float
        Echo time in seconds.
    n_baseline : int
        Frames ``0 .. n_baseline-1`` form S0.

    Returns
    -------
    dr2s : array (V, T), dtype of ``signal``
        0 for flagged voxels (they are NaN in the maps).
    status : array (V,) int32
        :class:`gpuperf.status.Status` flags (input flags only).
    """
    dtype = signal.dtype
    # one pass each: a row sum is finite iff every frame is (NaN/inf propagate)
    finite = xp.isfinite(signal.sum(axis=1))
    all_pos = (signal > 0).all(axis=1)  # False for NaN frames too
    flags = xp.where(finite, 0, int(Status.NONFINITE_INPUT)).astype(xp.int32)
    odd = xp.flatnonzero(~all_pos)  # few voxels: tell <= 0 from NaN on them only
    if odd.size:
        flags[odd] |= xp.where(
            (signal[odd] <= 0).any(axis=1), int(Status.NONPOSITIVE_INPUT), 0
        ).astype(xp.int32)
    s0 = signal[:, :n_baseline].mean(axis=1)
    flags |= xp.where(xp.isfinite(s0) & (s0 > 0), 0, int(Status.NO_BASELINE)).astype(xp.int32)
    bad = flags != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dr2s = xp.log(signal)  # bad rows hold NaN/-inf here and are zeroed below
        dr2s -= xp.log(xp.where(bad, dtype.type(1), s0))[:, None]
    dr2s *= dtype.type(-1.0 / te_s)
    dr2s[bad] = 0
    return dr2s, flags
