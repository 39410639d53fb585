"""Test helper: DSC curves on realistic physiology (not a test module).

A recirculating AIF (gamma-variate first pass + a delayed, dispersed second pass + a small
steady state) and tissue curves for several residue shapes, by fine-grid convolution
(``C_t = (rho/kH) F (C_a conv R)(t - delay)``). Kept in the tests (the phantom module
``gpuperf.dsc.simulate`` belongs to another change); the residue shapes follow Mouridsen et al.,
JCBFM 34:1511 (2014): gamma transit times give ``R = Q(a, t a / MTT)``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erfc, gammaincc

from gpuperf.dsc.aif import gamma_variate
from gpuperf.dsc.options import KH_DEFAULT, RHO_DEFAULT
from gpuperf.dsc.simulate import AIF_PARAMS

#: Residue shapes with their mean transit time equal to ``mtt``.
SHAPES = ("exponential", "gamma3", "box", "lognormal")


def first_pass(t: np.ndarray, delay_s: float = 0.0) -> np.ndarray:
    """The phantom's gamma-variate AIF (peak ~40 1/s at t0 = 8 s)."""
    amp, t0, a, b = AIF_PARAMS
    return gamma_variate(t, amp, t0 + delay_s, a, b)


def recirculating_aif(
    t: np.ndarray, second: float = 0.25, steady: float = 0.04, delay_s: float = 0.0
) -> np.ndarray:
    """First pass + second pass (``second`` x its area, 12 s later, twice as wide) + a steady
    state rising to ``steady`` x the first-pass peak."""
    amp, t0, a, b = AIF_PARAMS
    fp = first_pass(t, delay_s)
    # second pass: same shape family, b doubled, scaled to `second` of the first pass's area
    area_ratio = (2.0 * b) ** (a + 1) / b ** (a + 1)
    sp = gamma_variate(t, amp * second / area_ratio, t0 + delay_s + 12.0, a, 2.0 * b)
    peak = amp * (a * b) ** a * np.exp(-a)
    ss = steady * peak * (1.0 - np.exp(-np.clip(t - (t0 + delay_s + 6.0), 0, None) / 8.0))
    return fp + sp + ss


def residue(t: np.ndarray, shape: str, mtt: float) -> np.ndarray:
    """``R(t)``, R(0) = 1, mean transit time ``mtt`` (s)."""
    t = np.asarray(t, np.float64)
    if shape == "exponential":
        return np.exp(-t / mtt)
    if shape == "gamma3":
        return gammaincc(3.0, 3.0 * t / mtt)
    if shape == "box":
        return (t < mtt).astype(np.float64)
    if shape == "lognormal":  # sigma 0.5 of log transit time, mean mtt
        sigma = 0.5
        mu = np.log(mtt) - sigma**2 / 2
        with np.errstate(divide="ignore"):
            z = (np.log(np.where(t > 0, t, 1e-300)) - mu) / (sigma * np.sqrt(2))
        return np.where(t > 0, 0.5 * erfc(z), 1.0)
    raise ValueError(shape)


def tissue(
    t: np.ndarray,
    cbf: float,
    mtt: float,
    shape: str = "exponential",
    delay_s: float = 0.0,
    aif=first_pass,
    oversample: int = 20,
) -> np.ndarray:
    """Tissue dR2* (1/s): ``(rho/kH) (CBF/6000) (C_a conv R)(t - delay)`` on a fine grid."""
    dt = float(t[1] - t[0])
    fine = dt / oversample
    tf = np.arange(t.size * oversample) * fine
    ca = aif(tf - delay_s) if delay_s else aif(tf)
    conv = np.convolve(ca, residue(tf, shape, mtt))[: tf.size] * fine
    return (RHO_DEFAULT / KH_DEFAULT) * (cbf / 6000.0) * conv[::oversample]
