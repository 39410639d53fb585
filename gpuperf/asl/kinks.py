"""Kinetic-model optima at a kink of the model: detection and the fixed-ATT refit.

The (p)CASL and PASL tissue curves (Buxton et al., MRM 40:383, 1998) are not differentiable
in ATT where ATT crosses ``t_n - tau_n`` (the sample sees the whole bolus from there on) or
``t_n`` (arrival at the sample). An optimum exactly there is non-smooth: Levenberg-Marquardt
only creeps towards it (linear convergence) and stops at the iteration limit.
:func:`snap_kinks` finishes such voxels explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.status import Status

#: A max-iteration ATT closer than this to a kink of the model is tested as a kink optimum (s).
KINK_TOLERANCE_S = 2e-3


def kinks(sample_times: np.ndarray) -> np.ndarray:
    """ATT values (s) where the tissue model is not differentiable: ``t_n - tau_n`` and
    ``t_n`` for the fitter abscissa ``sample_times`` (K, 2) of columns ``(t, tau)``."""
    x = sample_times
    return np.unique(np.round(np.concatenate([x[:, 0] - x[:, 1], x[:, 0]]), 9))


def snap_kinks(model: Any, data: Any, params, stderr, chi2, status) -> None:
    """Finish voxels whose optimum sits on a kink of the model (arrays changed in place).

    For voxels stopped at the iteration limit (``Status.MAX_ITER``) with ATT within
    :data:`KINK_TOLERANCE_S` of a kink, ATT is set to the kink and CBF refitted with ATT
    fixed; the result is kept when chi2 does not increase, with status ``Status.AT_KINK``.
    The standard errors come from J^T J at that point with both parameters free (one-sided
    J). A voxel with a slice-time offset ``dt`` has its kinks at ``kink + dt``.

    Parameters
    ----------
    model : gpuperf.asl.ASLModel
    data : gpuperf.asl.fitting.GroupedFit
        The voxels' group means, weights, offsets and the fitter settings.
    params, stderr : (V, 2) float64 ; chi2 : (V,) of the repeats ; status : (V,) int32
    """
    cand = np.flatnonzero((status == Status.MAX_ITER) & np.isfinite(params[:, 1]))
    if cand.size == 0:
        return
    knots = kinks(model.sample_times())[None, :]
    if data.offset is not None:
        knots = knots + data.offset[cand, None]
    dist = np.abs(params[cand, 1][:, None] - knots)
    nearest = np.take_along_axis(
        np.broadcast_to(knots, dist.shape), dist.argmin(axis=1)[:, None], axis=1
    )[:, 0]
    near = np.abs(params[cand, 1] - nearest) < KINK_TOLERANCE_S
    cand, nearest = cand[near], nearest[near]
    if cand.size == 0:
        return
    lower = np.array([model.cbf_bounds[0], model.att_bounds[0]])
    upper = np.array([model.cbf_bounds[1], model.att_bounds[1]])
    p0 = np.stack([params[cand, 0], nearest], axis=1)
    p_new, c2, st, _, _ = data.fit(
        model.kinetics.tissue,
        p0,
        lower,
        upper,
        fixed=np.array([False, True]),
        rows=cand,
        reporter=None,
    )
    ok = (st == Status.OK) & (c2 <= chi2[cand] * (1 + 1e-6))
    if not ok.any():
        return
    idx = cand[ok]
    # covariance at the kink with both free: zero iterations evaluate J^T J only
    *_, se = data.fit(
        model.kinetics.tissue, p_new[ok], lower, upper, rows=idx, reporter=None, max_iter=0
    )
    params[idx] = p_new[ok]
    stderr[idx] = se
    chi2[idx] = c2[ok]
    status[idx] = Status.AT_KINK
