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

from gpuperf.fit import fit_lm
from gpuperf.status import Status

#: A max-iteration ATT closer than this to a kink of the model is tested as a kink optimum (s).
KINK_TOLERANCE_S = 2e-3


def kinks(sample_times: np.ndarray) -> np.ndarray:
    """ATT values (s) where the tissue model is not differentiable: ``t_n - tau_n`` and
    ``t_n`` for the fitter abscissa ``sample_times`` (K, 2) of columns ``(t, tau)``."""
    x = sample_times
    return np.unique(np.round(np.concatenate([x[:, 0] - x[:, 1], x[:, 0]]), 9))


def snap_kinks(model: Any, y, params, stderr, chi2, status, common: dict[str, Any]) -> None:
    """Finish voxels whose optimum sits on a kink of the model (arrays changed in place).

    For voxels stopped at the iteration limit (``Status.MAX_ITER``) with ATT within
    :data:`KINK_TOLERANCE_S` of a kink, ATT is set to the kink and CBF refitted with ATT
    fixed; the result is kept when chi2 does not increase, with status ``Status.AT_KINK``.
    The ATT standard error comes from J^T J at that point with both parameters free
    (one-sided J).

    Parameters
    ----------
    model : gpuperf.asl.ASLModel
    y : (V, K) dM/M0 ; params, stderr : (V, 2) float64 ; chi2 : (V,) ; status : (V,) int32
    common : dict
        Keyword arguments of :func:`gpuperf.fit.fit_lm` shared by the fits of the model.
    """
    cand = np.flatnonzero((status == Status.MAX_ITER) & np.isfinite(params[:, 1]))
    if cand.size == 0:
        return
    knots = kinks(model.sample_times())
    nearest = knots[np.abs(params[cand, 1][:, None] - knots[None, :]).argmin(axis=1)]
    near = np.abs(params[cand, 1] - nearest) < KINK_TOLERANCE_S
    cand, nearest = cand[near], nearest[near]
    if cand.size == 0:
        return
    tissue = model.kinetics.tissue
    lower = np.array([model.cbf_bounds[0], model.att_bounds[0]])
    upper = np.array([model.cbf_bounds[1], model.att_bounds[1]])
    p0 = np.stack([params[cand, 0], nearest], axis=1)
    kw = {**common, "reporter": None}
    r = fit_lm(
        tissue,
        model.sample_times(),
        y[cand],
        p0,
        lower=lower,
        upper=upper,
        fixed=np.array([False, True]),
        **kw,
    )
    c2 = np.asarray(r.chi2, dtype=np.float64)
    ok = (np.asarray(r.status) == Status.OK) & (c2 <= chi2[cand] * (1 + 1e-6))
    if not ok.any():
        return
    idx = cand[ok]
    p_new = np.asarray(r.params, dtype=np.float64)[ok]
    # covariance at the kink with both free: zero iterations evaluate J^T J only
    cov = fit_lm(
        tissue,
        model.sample_times(),
        y[idx],
        p_new,
        lower=lower,
        upper=upper,
        **{**kw, "max_iter": 0},
    )
    params[idx] = p_new
    stderr[idx] = np.asarray(cov.stderr, dtype=np.float64)
    chi2[idx] = c2[ok]
    status[idx] = Status.AT_KINK
