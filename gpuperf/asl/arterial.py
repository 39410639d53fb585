"""The macrovascular (arterial) component of the (p)CASL kinetic-model fit.

The arterial term ``2 alpha M0b aBV e^{-aBAT/T1b}`` on ``[aBAT, aBAT + tau)`` (Chappell et al.,
MRM 63:1357, 2010) is a box in t: its edges carry no gradient and, between two sample times,
d/daBAT is proportional to d/daBV, so aBAT cannot be a free Levenberg-Marquardt parameter.
:func:`fit_arterial` therefore fits aBAT on a grid of identifiable intervals
(:func:`abat_candidates`) and keeps the best chi2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.asl import constants as K
from gpuperf.status import Status


def abat_candidates(sample_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate aBAT values (s) and the half-widths of their intervals.

    The arterial box ``[aBAT, aBAT + tau)`` contains sample ``t`` iff ``t - tau < aBAT <= t``,
    so which samples it covers changes only at the breakpoints ``{t_n, t_n - tau_n}``; between
    two breakpoints aBV absorbs ``e^{-aBAT/T1b}`` and chi2 is the same. aBAT is therefore
    identifiable only up to such an interval: the fit tries the midpoint of every interval
    inside the aBAT bounds (aBAT held fixed, CBF, ATT, aBV free) and keeps the best.

    Parameters
    ----------
    sample_times : (K, 2)
        Fitter abscissa, columns ``(t, tau)`` (:meth:`gpuperf.asl.ASLModel.sample_times`).
    """
    x = sample_times
    lo, hi = K.ABAT_BOUNDS
    brk = np.concatenate([[lo], x[:, 0], x[:, 0] - x[:, 1]])
    brk = np.unique(np.clip(brk, lo, min(hi, float(x[:, 0].max()))))
    mids = 0.5 * (brk[1:] + brk[:-1])
    half = 0.5 * np.diff(brk)
    keep = half > 1e-6
    return mids[keep], half[keep]


def fit_arterial(model: Any, data: Any, params, stderr, chi2, status, n_iter):
    """Tissue + arterial fit: best chi2 over the aBAT intervals of :func:`abat_candidates`.

    Each candidate interval is fitted with aBAT fixed at its midpoint (shifted by the voxel's
    slice-time offset, when there is one); the tissue-only fit (aBV = 0, aBAT undefined) is
    kept wherever no arterial solution lowers chi2. ``abat_stderr`` reports the half-width of
    the chosen interval (the resolution the sampling allows), not a covariance-based error.

    Parameters
    ----------
    model : gpuperf.asl.ASLModel
    data : gpuperf.asl.fitting.GroupedFit
        The voxels' group means, weights, offsets and the fitter settings.
    params, stderr : (V, 2) ; chi2, status, n_iter : (V,)
        The tissue-only fit (chi2 of the repeats).

    Returns
    -------
    params, stderr : (V, 4) ; chi2, status, n_iter : (V,)
    """
    n_vox = params.shape[0]
    best_p = np.concatenate([params, np.zeros((n_vox, 1)), np.full((n_vox, 1), np.nan)], 1)
    best_se = np.concatenate([stderr, np.full((n_vox, 2), np.nan)], 1)
    best_chi2 = np.where(np.isfinite(chi2), chi2, np.inf)
    best_status, best_iter = status.copy(), n_iter.copy()
    lower = np.array([model.cbf_bounds[0], model.att_bounds[0], K.ABV_BOUNDS[0], K.ABAT_BOUNDS[0]])
    upper = np.array([model.cbf_bounds[1], model.att_bounds[1], K.ABV_BOUNDS[1], K.ABAT_BOUNDS[1]])
    att_t = np.where(np.isfinite(params[:, 1]), params[:, 1], model.att_start_s)
    cbf_t = np.where(np.isfinite(params[:, 0]), params[:, 0], 50.0)
    fixed = np.array([False, False, False, True])
    # the starts are built where the fit runs: on CuPy the curves (data.resident), the
    # tissue-fit starts and the offsets go up once, not once per start
    backend = data.backend
    xp, put = backend.xp, backend.asarray
    cbf_d, att_d, lo_d, hi_d = (put(a) for a in (cbf_t, att_t, lower, upper))
    shift = xp.zeros(n_vox) if data.offset is None else data.resident("offset")
    # ATT starts: the tissue-only fit (biased by arterial signal), the default, and later
    # (ATT kinks make the arterial chi2 multimodal)
    att_starts = (
        att_d,
        xp.full(n_vox, model.att_start_s),
        xp.full(n_vox, model.att_start_s + 0.7),
    )
    starts = [
        (abat, half, a0)
        for abat, half in zip(*abat_candidates(model.sample_times()), strict=True)
        for a0 in att_starts
    ]
    for abat, half, a0 in starts:
        p0 = xp.stack([cbf_d, a0, xp.full(n_vox, 1.0), shift + float(abat)], axis=1)
        p0 = xp.clip(p0, lo_d, hi_d)
        rp, c2, st, it, se = data.fit(model.kinetics.signal, p0, lower, upper, fixed=fixed)
        # an arterial solution must beat the current one by more than rounding (0.1 % of
        # chi2) with a non-negligible aBV (> 0.001 %), else the simpler fit stands
        better = (
            (st != Status.FIT_FAILED)
            & np.isfinite(c2)
            & (c2 < best_chi2 * (1 - 1e-3))
            & (rp[:, 2] > 1e-3)
        )
        best_p[better] = rp[better]
        se[:, 3] = half
        best_se[better] = se[better]
        best_chi2[better] = c2[better]
        best_status[better] = st[better]
        best_iter[better] = it[better]
    best_chi2[~np.isfinite(best_chi2)] = np.nan
    return best_p, best_se, best_chi2, best_status, best_iter
