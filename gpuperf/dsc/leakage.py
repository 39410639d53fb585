"""Boxerman-Schmainda-Weisskoff (BSW) leakage correction.

Boxerman, Schmainda & Weisskoff, AJNR 27:859 (2006): each voxel's curve is modelled as

    dR2*(t) ~= K1 * Rbar(t) - K2 * int_0^t Rbar(t') dt'

with ``Rbar`` the mean dR2* of *non-enhancing* brain voxels (never the AIF: that is a known
defect of some tools). K1, K2 follow from a closed-form 2-parameter linear least squares per
voxel; the corrected curve is ``dR2* + K2 * int_0^t Rbar``. K2 > 0: T1 leakage (signal rises,
CBV underestimated); K2 < 0: T2* leakage. K2 is in 1/s.

How the non-enhancing reference is chosen (documented in ``docs/dsc.md``): start from every
usable brain voxel that is not an AIF voxel; fit K2 against their mean; keep the voxels whose
K2 lies within 3 robust standard deviations (1.4826 * MAD) of the median K2 (leaky voxels are
the outliers); the mean of those is ``Rbar``. Two passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuperf.errors import GpuperfError, InputError

#: Robust z-score beyond which a voxel counts as enhancing (leaky) when choosing Rbar.
ENHANCING_Z = 3.0
#: Lower bound on the robust spread of K2 (1/s), so noise-free data do not exclude everything.
K2_SPREAD_FLOOR = 1e-5


@dataclass
class BSWResult:
    """K1 (1), K2 (1/s) per voxel, the reference curve and which voxels formed it."""

    k1: Any
    k2: Any
    reference: np.ndarray
    reference_voxels: np.ndarray


def cumulative_integral(curve: np.ndarray, dt_s: float) -> np.ndarray:
    """Trapezoidal running integral, 0 at t = 0 (same length as ``curve``)."""
    c = np.asarray(curve, dtype=np.float64)
    out = np.zeros_like(c)
    out[1:] = np.cumsum(0.5 * (c[1:] + c[:-1])) * dt_s
    return out


def bsw_fit(dr2s: Any, reference: np.ndarray, dt_s: float, xp: Any = np) -> tuple[Any, Any]:
    """Closed-form per-voxel least squares of the BSW model.

    Parameters
    ----------
    dr2s : array (V, T)
    reference : ndarray (T,)
        ``Rbar``, the non-enhancing brain mean.
    dt_s : float

    Returns
    -------
    k1, k2 : arrays (V,)
    """
    x = np.stack(
        [np.asarray(reference, np.float64), -cumulative_integral(reference, dt_s)], axis=1
    )  # (T, 2)
    # (X^T X)^-1 X^T, shared by all voxels: one (V, T) @ (T, 2) product
    solve = np.linalg.solve(x.T @ x, x.T)  # (2, T)
    k = dr2s @ xp.asarray(solve.T, dtype=dr2s.dtype)
    return k[:, 0], k[:, 1]


def bsw_correct(
    dr2s: Any,
    dt_s: float,
    candidates: np.ndarray,
    xp: Any = np,
    to_host: Any = np.asarray,
) -> tuple[Any, BSWResult]:
    """Choose the non-enhancing reference, fit K1/K2, and return the corrected curves.

    Parameters
    ----------
    dr2s : array (V, T)
    dt_s : float
    candidates : ndarray (V,) bool
        Voxels allowed in the reference (usable brain voxels, AIF voxels excluded).

    Returns
    -------
    corrected : array (V, T)
        ``dr2s + K2 * int Rbar``.
    result : BSWResult
    """
    cand = np.asarray(candidates, dtype=bool)
    if cand.sum() < 3:
        raise GpuperfError("BSW needs at least 3 usable non-AIF brain voxels for its reference")
    idx = xp.asarray(np.flatnonzero(cand))
    ref = to_host(dr2s[idx].mean(axis=0)).astype(np.float64)
    use = cand
    for _ in range(2):
        _, k2 = bsw_fit(dr2s[idx], ref, dt_s, xp)
        k2h = to_host(k2).astype(np.float64)
        med = np.median(k2h)
        spread = max(1.4826 * np.median(np.abs(k2h - med)), K2_SPREAD_FLOOR)
        keep = np.abs(k2h - med) <= ENHANCING_Z * spread
        use = np.zeros_like(cand)
        use[np.flatnonzero(cand)[keep]] = True
        ref = to_host(dr2s[xp.asarray(np.flatnonzero(use))].mean(axis=0)).astype(np.float64)
    k1, k2 = bsw_fit(dr2s, ref, dt_s, xp)
    integ = xp.asarray(cumulative_integral(ref, dt_s), dtype=dr2s.dtype)
    corrected = dr2s + k2[:, None] * integ[None, :]
    return corrected, BSWResult(k1, k2, ref, use)


# -- the registry of leakage corrections (``--leakage``) ----------------------------------------
class LeakageCorrection:
    """A leakage correction: curves in, corrected curves and per-voxel maps out.

    Attributes
    ----------
    name : str
        The registry key (``--leakage``).
    description : str
    maps : tuple of str
        Output maps it adds (names in :mod:`gpuperf.maps`).
    """

    name: str = ""
    description: str = ""
    maps: tuple[str, ...] = ()

    def correct(
        self, dr2s: Any, dt_s: float, candidates: np.ndarray, xp: Any, to_host: Any
    ) -> tuple[Any, np.ndarray | None]:
        """Return the corrected curves and the K2 map (host float32, (V,)) or None."""
        return dr2s, None


class NoCorrection(LeakageCorrection):
    name = "none"
    description = "no leakage correction"


class BSW(LeakageCorrection):
    name = "bsw"
    description = "Boxerman-Schmainda-Weisskoff, AJNR 27:859 (2006)"
    maps = ("k2",)

    def correct(self, dr2s, dt_s, candidates, xp, to_host):
        corrected, bsw = bsw_correct(dr2s, dt_s, candidates, xp, to_host)
        return corrected, to_host(bsw.k2).astype(np.float32)


#: Name -> leakage correction.
CORRECTIONS: dict[str, LeakageCorrection] = {c.name: c for c in (NoCorrection(), BSW())}


def names() -> tuple[str, ...]:
    """The registered leakage corrections."""
    return tuple(CORRECTIONS)


def get(name: str) -> LeakageCorrection:
    """The correction called ``name``; InputError naming ``--leakage`` otherwise."""
    try:
        return CORRECTIONS[name]
    except KeyError:
        raise InputError(
            None, "--leakage", f"expected one of {', '.join(CORRECTIONS)}; found {name!r}"
        ) from None


def register(correction: LeakageCorrection) -> LeakageCorrection:
    """Add a leakage correction (its name becomes a ``--leakage`` choice)."""
    old = CORRECTIONS.get(correction.name)
    if old is not None and old is not correction:
        raise ValueError(f"leakage correction {correction.name!r} is registered already")
    CORRECTIONS[correction.name] = correction
    return correction
