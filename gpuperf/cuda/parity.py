"""The parity rule between a kernel's device run and its NumPy twin, robust to FMA.

A GPU build contracts ``a*b + c`` into fused multiply-adds and uses CUDA's libm, so its
rounding differs from NumPy's operation by operation; an iterative fit amplifies that by the
problem's conditioning. Bitwise or 1e-10 agreement is therefore not the test of a correct
kernel. A voxel *agrees* when

- both runs report the same status and every parameter agrees to ``rtol`` (relative to the
  parameter's magnitude, plus ``se_tol`` standard errors: the precision with which the working
  dtype can locate a minimum at all), or
- both ended at an *equally good* fit: chi2 within ``chi2_rtol`` of each other (a flat or
  multi-modal minimum where rounding picks another point), or
- both failed (NaN parameters in both).

For closeness itself (bitwise-style gates), build without contraction (``--fmad=false`` for
NVRTC, ``-ffp-contract=off`` on the host) and compare with the strict tolerances of
tests/test_fit_parity.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: dtype -> (rtol, se_tol, chi2_rtol) of :func:`fit_parity`.
PARITY_TOLERANCES = {
    np.dtype(np.float32): (2e-3, 1e-2, 1e-2),
    np.dtype(np.float64): (1e-6, 1e-4, 1e-6),
}


@dataclass(frozen=True)
class ParityReport:
    """Outcome of :func:`fit_parity`.

    Attributes
    ----------
    ok_fraction : float
        Fraction of voxels that agree (see the module docstring).
    same_params_fraction, equally_good_fraction, status_agree_fraction : float
        The fractions behind it.
    max_rel_diff : float
        Largest relative parameter difference among voxels with the same status.
    """

    ok_fraction: float
    same_params_fraction: float
    equally_good_fraction: float
    status_agree_fraction: float
    max_rel_diff: float


def fit_parity(ref: Any, res: Any, dtype: Any = None) -> ParityReport:
    """Compare two fit results (``params``, ``stderr``, ``chi2``, ``status`` attributes).

    Parameters
    ----------
    ref, res : FitResult-like
        The NumPy twin's and the kernel's results for the same problem.
    dtype : dtype, optional
        Working precision (default: ``ref.params.dtype``); picks :data:`PARITY_TOLERANCES`.
    """
    dt = np.dtype(dtype if dtype is not None else np.asarray(ref.params).dtype)
    rtol, se_tol, chi2_rtol = PARITY_TOLERANCES[dt]
    pa, pb = (np.asarray(r.params, np.float64) for r in (ref, res))
    sa, sb = (np.asarray(r.stderr, np.float64) for r in (ref, res))
    ca, cb = (np.asarray(r.chi2, np.float64) for r in (ref, res))
    same_status = np.asarray(ref.status) == np.asarray(res.status)
    se = np.nan_to_num(np.fmax(sa, sb), nan=0.0, posinf=0.0)
    diff = np.abs(pa - pb)
    both_nan = np.isnan(pa) & np.isnan(pb)
    close = (diff <= rtol * np.maximum(np.abs(pa), np.abs(pb)) + se_tol * se) | both_nan
    same_params = same_status & close.all(axis=1)
    with np.errstate(invalid="ignore"):
        equally_good = np.abs(ca - cb) <= chi2_rtol * np.fmax(ca, cb) + 1e-30
    both_failed = np.isnan(pa).all(axis=1) & np.isnan(pb).all(axis=1)
    ok = same_params | equally_good | both_failed
    rel = np.where(both_nan, 0.0, diff / (np.maximum(np.abs(pa), np.abs(pb)) + 1e-30))
    rel = rel[same_status]
    worst = float(np.nanmax(rel)) if rel.size else 0.0
    n = max(1, ok.size)
    return ParityReport(
        ok_fraction=float(ok.sum() / n),
        same_params_fraction=float(same_params.sum() / n),
        equally_good_fraction=float(equally_good.sum() / n),
        status_agree_fraction=float(same_status.sum() / n),
        max_rel_diff=worst,
    )
