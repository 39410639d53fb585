"""Leakage corrections: Boxerman-Schmainda-Weisskoff (BSW) and bidirectional (Bjornerud).

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

BSW assumes the tissue's transit-time distribution equals the reference's (``K1 Rbar`` must
fit the vascular part): where tissue MTT differs from the reference MTT, the mismatch leaks
into K2 and CBV is biased. The **bidirectional** correction (Bjornerud et al., JCBFM 31:2041,
2011) works in the residue domain instead, with the AIF as input and no reference curve:

    dR2*(t) = C_a(t) conv [ CBF R(t) - K2 exp(-kep t) ]

The deconvolved apparent residue is ``r*(t) = CBF R(t) - K2 exp(-kep (t - t0))`` (t0 the
tissue's bolus arrival, taken at Tmax); the vascular part has decayed in the tail, so K2 and the
efflux rate kep (1/s) are fitted there (kep on a grid, K2 in closed form per kep, per voxel) and
the corrected curve is ``dR2* + K2 (C_a conv exp(-kep (t - t0)))``. kep = 0 is unidirectional
(BSW with the AIF as reference). See :func:`bidirectional_correct`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuperf.dsc.constants import TAIL_S
from gpuperf.dsc.registry import CORRECTIONS
from gpuperf.errors import GpuperfError
from gpuperf.options import Choice, registry_add, registry_get

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


#: Efflux-rate grid (1/s) of the bidirectional fit: 0 .. 0.05 1/s (0 .. 3 1/min).
KEP_GRID = np.linspace(0.0, 0.05, 101)
#: Relative SVD threshold of the (Toeplitz) deconvolution giving the apparent residue: the
#: standard sSVD threshold (Ostergaard et al., MRM 36:715, 1996). The tail fitted is a slow
#: exponential (kep <= 0.05 1/s), carried by the large singular values; the small ones only add
#: noise. With 0.01 (gpuperf before issue #11's follow-up) the CBV IQR at SNR 100 was 6-42 %
#: on the leaky phantom of ``tests/test_dsc_physiology.py``, with 0.2 it is 1-6 % (docs/dsc.md).
BIDIRECTIONAL_THRESHOLD = 0.2
#: Fewest tail samples for the bidirectional fit; fewer: that voxel is left uncorrected.
MIN_TAIL_SAMPLES = 5


@dataclass
class BidirectionalResult:
    """K2 (1/s, relative to the AIF), kep (1/s) and the tail start (sample) per voxel."""

    k2: Any
    kep: Any
    tail_start: Any


def bidirectional_correct(
    dr2s: Any, aif: np.ndarray, dt_s: float, tail_s: float, xp: Any = np
) -> tuple[Any, BidirectionalResult]:
    """Bidirectional residue-domain leakage correction (Bjornerud et al., JCBFM 31:2041, 2011).

    Parameters
    ----------
    dr2s : array (V, N)
    aif : ndarray (N,)
        The AIF (dR2*, 1/s): the leakage term's input.
    dt_s : float
    tail_s : float
        The tail fitted starts this long after each voxel's residue maximum (Tmax), when the
        vascular residue has decayed (several MTTs).

    Returns
    -------
    corrected : array (V, N)
        ``dr2s + K2 (C_a conv exp(-kep (t - t0)) H(t - t0))`` (rectangle-rule convolution).
    result : BidirectionalResult
        ``k2`` (1/s; > 0: T1 leakage, < 0: T2* leakage), ``kep`` (1/s), ``tail_start``.
        Voxels whose tail is shorter than :data:`MIN_TAIL_SAMPLES` keep K2 = kep = 0.
    """
    from gpuperf.dsc.deconvolution import toeplitz_matrix, truncated_pinv

    v, n = dr2s.shape
    dtype = dr2s.dtype
    # causal (Toeplitz) deconvolution: the leaky curves do not return to baseline, which a
    # block-circulant would wrap around onto the residue's start
    pinv = truncated_pinv(toeplitz_matrix(aif, dt_s), BIDIRECTIONAL_THRESHOLD)
    r = dr2s @ xp.asarray(pinv.T, dtype=dtype)  # apparent residue (V, N), 1/s
    t = np.arange(n) * dt_s
    i0 = xp.argmax(r, axis=1)  # bolus arrival in the residue domain
    start = i0 + int(np.ceil(tail_s / dt_s))
    # lag k of the residue is seen only by frames k + (AIF onset) and later: the last lags,
    # beyond N - 1 - (AIF peak), are not determined by the data (truncation pins them)
    end = n - int(np.argmax(np.asarray(aif)))
    lag = xp.arange(n)[None, :]
    w = ((lag >= start[:, None]) & (lag < end)).astype(dtype)  # tail mask (V, N)
    # r*(t) ~ -K2' exp(-kep t) on the tail; K2' = K2 exp(kep t0) absorbs each voxel's t0
    e = np.exp(-np.outer(KEP_GRID, t))  # (G, N)
    num = (w * r) @ xp.asarray(e.T, dtype=dtype)  # (V, G)
    den = w @ xp.asarray((e * e).T, dtype=dtype)
    ok = den > 0
    safe = xp.where(ok, den, 1)
    sse = -(num * num) / safe  # sum w r^2 is common to every kep of a voxel
    best = xp.argmin(xp.where(ok, sse, np.inf), axis=1)
    rows = xp.arange(v)
    k2p = -(num / safe)[rows, best]
    kep = xp.asarray(KEP_GRID, dtype=dtype)[best]
    enough = w.sum(axis=1) >= MIN_TAIL_SAMPLES
    k2p = xp.where(enough, k2p, 0)
    kep = xp.where(enough, kep, 0)
    t_dev = xp.asarray(t, dtype=dtype)
    t0 = t_dev[xp.clip(i0, 0, n - 1)]
    k2 = k2p * xp.exp(-kep * t0)
    # leakage term K2' exp(-kep t) H(t - t0), convolved with the AIF (rectangle rule, as A)
    kern = xp.where(xp.arange(n)[None, :] >= i0[:, None], 1.0, 0.0).astype(dtype)
    kern *= k2p[:, None] * xp.exp(-kep[:, None] * t_dev[None, :])
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    spec = xp.fft.rfft(kern, n=2 * n, axis=-1)
    spec *= xp.asarray(np.fft.rfft(np.asarray(aif, np.float64), n=2 * n) * dt_s, dtype=cdtype)
    leak = xp.fft.irfft(spec, n=2 * n, axis=-1)[:, :n].astype(dtype, copy=False)
    return dr2s + leak, BidirectionalResult(k2, kep, start)


# -- the registry of leakage corrections (``--leakage``) ----------------------------------------
class LeakageCorrection(Choice):
    """A leakage correction: curves in, corrected curves and per-voxel maps out.

    ``name`` is its ``--leakage`` value (:class:`~gpuperf.options.Choice`).

    Attributes
    ----------
    maps : tuple of str
        Output maps it adds (names in :mod:`gpuperf.maps`).
    """

    maps: tuple[str, ...] = ()

    def correct(
        self,
        dr2s: Any,
        dt_s: float,
        candidates: np.ndarray,
        xp: Any,
        to_host: Any,
        aif: np.ndarray | None = None,
        options: Any = None,
    ) -> tuple[Any, dict[str, np.ndarray]]:
        """Return the corrected curves and the correction's maps (name in :attr:`maps` ->
        host float32 (V,)).

        ``candidates`` (V,) bool: usable non-AIF voxels (a reference may be chosen there);
        ``aif`` (N,): the AIF; ``options``: the :class:`gpuperf.dsc.options.DSCOptions`.
        """
        return dr2s, {}


class NoCorrection(LeakageCorrection):
    name = "none"
    description = "no leakage correction"


class BSW(LeakageCorrection):
    name = "bsw"
    description = "Boxerman-Schmainda-Weisskoff, AJNR 27:859 (2006)"
    maps = ("k2",)

    def correct(self, dr2s, dt_s, candidates, xp, to_host, aif=None, options=None):
        corrected, bsw = bsw_correct(dr2s, dt_s, candidates, xp, to_host)
        return corrected, {"k2": to_host(bsw.k2).astype(np.float32)}


class Bidirectional(LeakageCorrection):
    name = "bidirectional"
    description = "residue-domain, with efflux kep (Bjornerud et al., JCBFM 31:2041, 2011)"
    maps = ("k2", "kep")

    def correct(self, dr2s, dt_s, candidates, xp, to_host, aif=None, options=None):
        if aif is None:
            raise GpuperfError("bidirectional leakage correction needs the AIF")
        tail = TAIL_S if options is None else options.leakage_tail_s
        corrected, res = bidirectional_correct(dr2s, aif, dt_s, tail, xp)
        return corrected, {
            "k2": to_host(res.k2).astype(np.float32),
            "kep": to_host(res.kep).astype(np.float32),
        }


def names() -> tuple[str, ...]:
    """The registered leakage corrections (:data:`gpuperf.dsc.registry.CORRECTIONS`)."""
    return CORRECTIONS.names()


def get(name: str) -> LeakageCorrection:
    """The correction called ``name``; InputError naming ``--leakage`` otherwise."""
    return registry_get(CORRECTIONS, name, "--leakage")


def register(correction: LeakageCorrection) -> LeakageCorrection:
    """Add a leakage correction (its name becomes a ``--leakage`` choice)."""
    return registry_add(CORRECTIONS, correction.name, correction, "leakage correction")
