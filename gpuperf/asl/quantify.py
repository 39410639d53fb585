"""Consensus single-PLD CBF quantification (Alsop et al., MRM 73:102, 2015, eqs. 1 and 2).

Elementwise formulas on normalised difference signals ``dM/M0``; they run on NumPy or CuPy
arrays alike (``xp`` is taken from the input).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def whitepaper_pcasl(
    dm_over_m0: Any, pld_s: Any, tau_s: Any, *, t1_blood_s: float, lambda_: float, alpha: float
) -> Any:
    """(p)CASL: ``CBF = 6000 lambda dM e^{PLD/T1b} / (2 alpha T1b M0 (1 - e^{-tau/T1b}))``.

    Parameters
    ----------
    dm_over_m0 : array (...)
        Control - label difference divided by the voxel M0 (dimensionless).
    pld_s, tau_s : float or array broadcastable to ``dm_over_m0``
        Post-labelling delay and labelling duration (s).

    Returns
    -------
    array (...)
        CBF, ml/100g/min.
    """
    xp = _xp(dm_over_m0)
    num = 6000.0 * lambda_ * dm_over_m0 * xp.exp(xp.asarray(pld_s) / t1_blood_s)
    return num / (2.0 * alpha * t1_blood_s * -xp.expm1(-xp.asarray(tau_s) / t1_blood_s))


def whitepaper_pasl(
    dm_over_m0: Any, ti_s: Any, ti1_s: Any, *, t1_blood_s: float, lambda_: float, alpha: float
) -> Any:
    """PASL (QUIPSS II / Q2TIPS): ``CBF = 6000 lambda dM e^{TI/T1b} / (2 alpha TI1 M0)``.

    ``ti_s`` is the inversion time (BIDS PostLabelingDelay for PASL), ``ti1_s`` the bolus
    duration (BIDS BolusCutOffDelayTime). Returns CBF in ml/100g/min.
    """
    xp = _xp(dm_over_m0)
    return (
        6000.0
        * lambda_
        * dm_over_m0
        * xp.exp(xp.asarray(ti_s) / t1_blood_s)
        / (2.0 * alpha * xp.asarray(ti1_s))
    )


def _xp(a: Any):
    """The array module of ``a`` (NumPy, or CuPy for a device array), without importing CuPy
    here: a CuPy array can only exist once the backend has loaded it."""
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(a, cp.ndarray):  # (also the emulated-GPU test double)
        return cp
    return np
