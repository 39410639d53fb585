"""Deconvolution of tissue curves by the arterial input function, batched over voxels.

Model (indicator dilution): ``C_t(t) = (rho/kH) * (C_a conv F*R)(t)``; discretised as
``c = A @ r`` with ``A = dt * conv(C_a)``. Every function here takes one AIF for all voxels, so
the matrix (or its spectrum) is built once and applied to a ``(V, N)`` block as a GEMM or FFT.

Methods
-------
sSVD
    Ostergaard et al., MRM 36:715 (1996): lower-triangular Toeplitz ``A`` (N x N), singular
    values below ``threshold * s_max`` dropped (default 0.2). Delay-sensitive.
cSVD
    Wu et al., MRM 50:164 (2003): AIF and tissue zero-padded to ``L = 2N``; ``A`` is the L x L
    block-circulant; threshold 0.1; the first N samples of ``r`` are kept. A circulant is
    diagonalised by the DFT, its singular values are ``|dt * DFT(aif_pad)|`` and truncated SVD is
    frequency filtering: :func:`csvd_fft` (fast) and :func:`csvd_reference` (explicit SVD) agree
    to rounding.
oSVD
    Wu et al. (2003): per voxel, the lowest threshold of a sweep whose oscillation index
    ``OI = (1/L) (1/max r) sum_k |r_k - 2 r_{k-1} + r_{k-2}|`` is below a limit (0.035).
    See :mod:`gpuperf.dsc.osvd`.
Tikhonov
    Filter factors ``s^2 / (s^2 + mu^2)`` on the same block-circulant (Calamante et al., MRM
    50:1237, 2003); ``mu`` fixed (relative to ``s_max``) or chosen per voxel by generalised
    cross-validation (GCV; Golub, Heath & Wahba, Technometrics 21:215, 1979).

Discretisation (Sourbron et al., PMB 52:6761, 2007)
    The rectangle rule ``c_n = dt sum_{k<=n} a_{n-k} r_k`` gives the first residue sample full
    weight, though it only covers half an interval of the integral ``int_0^t a(t-s) r(s) ds``:
    a residue that peaks at t = 0 comes back near half height and CBF reads low. ``trapezoid``
    halves the weights of the end samples ``r_0`` and ``r_n``; ``volterra`` takes both curves
    piecewise linear (weights ``dt/6 (a_{m-1} + 4 a_m + a_{m+1})`` inside, ``dt/6 (2 a_n +
    a_{n-1})`` for ``r_0``, ``dt/6 (2 a_0 + a_1)`` for ``r_n``). Both need a causal origin, so
    they apply to the Toeplitz methods (sSVD, Tikhonov on the Toeplitz matrix), not to the
    block-circulant ones.

All residues returned are ``F*R`` scaled by ``rho/kH`` (units 1/s when the curves share units);
negative values are kept as computed: clipping them would make MTT/Tmax depend on the window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Default relative SVD thresholds (fraction of the largest singular value).
SSVD_THRESHOLD = 0.2
CSVD_THRESHOLD = 0.1


#: GCV search grid for Tikhonov, mu relative to s_max (log-spaced).
GCV_MU_GRID = np.logspace(-3, 0, 31)


def toeplitz_matrix(aif: np.ndarray, dt_s: float, discretisation: str = "rectangle") -> np.ndarray:
    """Lower-triangular convolution matrix ``A`` of the AIF (``c = A @ r``), float64 (N, N).

    Parameters
    ----------
    aif : ndarray (N,)
    dt_s : float
    discretisation : {'rectangle', 'trapezoid', 'volterra'}
        Quadrature of ``c(t_n) = int_0^{t_n} a(t_n - s) r(s) ds`` (see the module docstring;
        Sourbron et al., PMB 52:6761, 2007). ``rectangle``: ``A_nk = dt a_{n-k}`` (k <= n),
        the toolboxes' matrix (Ostergaard 1996).
    """
    a = np.asarray(aif, dtype=np.float64)
    n = a.size
    idx = np.arange(n)[:, None] - np.arange(n)[None, :]  # n - k
    lower = idx >= 0

    def at(m: np.ndarray) -> np.ndarray:  # a_m, 0 outside 0..N-1
        return np.where((m >= 0) & (m < n), a[np.clip(m, 0, n - 1)], 0.0)

    if discretisation == "rectangle":
        return np.where(lower, at(idx), 0.0) * dt_s
    row = np.arange(n)[:, None]
    col = np.arange(n)[None, :]
    if discretisation == "trapezoid":
        w = np.where((col == 0) | (col == row), 0.5, 1.0)
        out = np.where(lower, at(idx) * w, 0.0)
        out[0, 0] = 0.0  # the integral over [0, 0]
        return out * dt_s
    if discretisation == "volterra":
        # piecewise-linear a and r: each interval [t_j, t_j+1] contributes
        # dt (r_j (a_{n-j}/3 + a_{n-j-1}/6) + r_{j+1} (a_{n-j}/6 + a_{n-j-1}/3))
        left = np.where(col < row, at(idx) / 3.0 + at(idx - 1) / 6.0, 0.0)  # interval j = k
        right = np.where((col >= 1) & (col <= row), at(idx + 1) / 6.0 + at(idx) / 3.0, 0.0)
        return (left + right) * dt_s
    raise ValueError(f"unknown discretisation {discretisation!r}")


def circulant_matrix(aif: np.ndarray, dt_s: float) -> np.ndarray:
    """``dt * `` block-circulant matrix of the AIF zero-padded to ``L = 2N``, float64 (L, L)."""
    a = np.asarray(aif, dtype=np.float64)
    n_pad = 2 * a.size
    ap = np.zeros(n_pad)
    ap[: a.size] = a
    idx = (np.arange(n_pad)[:, None] - np.arange(n_pad)[None, :]) % n_pad
    return ap[idx] * dt_s


def truncated_pinv(matrix: np.ndarray, threshold: float) -> np.ndarray:
    """Pseudo-inverse keeping singular values ``>= threshold * s_max`` (float64)."""
    u, s, vt = np.linalg.svd(matrix)
    keep = s >= threshold * s[0]
    inv_s = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    return (vt.T * inv_s) @ u.T


def aif_spectrum(aif: np.ndarray, dt_s: float) -> np.ndarray:
    """``dt * rfft(aif zero-padded to 2N)``: eigenvalues of the circulant, (N + 1,) complex."""
    a = np.asarray(aif, dtype=np.float64)
    return np.fft.rfft(a, n=2 * a.size) * dt_s


def ssvd(
    conc: Any, aif: np.ndarray, dt_s: float, threshold: float = SSVD_THRESHOLD, xp: Any = np
) -> Any:
    """Standard truncated-SVD deconvolution (Ostergaard 1996).

    Parameters
    ----------
    conc : array (V, N)
        Tissue concentration (or dR2*) curves on the backend ``xp``.
    aif : ndarray (N,)
        Arterial curve, same units.
    dt_s : float
        Sampling interval (s).
    threshold : float
        Relative singular-value cut-off (0.2).

    Returns
    -------
    array (V, N), dtype of ``conc``
        ``(rho/kH) F R(t)`` in 1/s.
    """
    pinv = truncated_pinv(toeplitz_matrix(aif, dt_s), threshold)
    return conc @ xp.asarray(pinv.T, dtype=conc.dtype)


def csvd_reference(
    conc: Any, aif: np.ndarray, dt_s: float, threshold: float = CSVD_THRESHOLD, xp: Any = np
) -> Any:
    """Circular SVD by an explicit SVD of the 2N block-circulant (Wu 2003); slow reference.

    Same contract as :func:`ssvd`; the curves are zero-padded to 2N and the first N samples of
    the residue are returned.
    """
    n = conc.shape[-1]
    pinv = truncated_pinv(circulant_matrix(aif, dt_s), threshold)
    # c_pad has zeros in its second half, so only the first N columns of pinv act; keep N rows.
    op = pinv[:n, :n]
    return conc @ xp.asarray(op.T, dtype=conc.dtype)


def csvd_fft(
    conc: Any, aif: np.ndarray, dt_s: float, threshold: float = CSVD_THRESHOLD, xp: Any = np
) -> Any:
    """Circular SVD as batched FFTs: truncated circulant SVD == frequency filtering (Wu 2003).

    Same contract and result as :func:`csvd_reference` (to rounding), in ``O(V N log N)``.
    """
    n = conc.shape[-1]
    lam = aif_spectrum(aif, dt_s)
    mag = np.abs(lam)
    keep = mag >= threshold * mag.max()
    filt = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    cdtype = np.complex64 if conc.dtype == np.float32 else np.complex128
    spec = xp.fft.rfft(conc, n=2 * n, axis=-1)
    spec *= xp.asarray(filt, dtype=cdtype)
    return xp.fft.irfft(spec, n=2 * n, axis=-1)[..., :n].astype(conc.dtype, copy=False)


def csvd_operator(aif: np.ndarray, dt_s: float, threshold: float = CSVD_THRESHOLD) -> np.ndarray:
    """The cSVD filter of :func:`csvd_fft` written as an (N, N) matrix ``op``: ``r = c @ op``.

    Built from the AIF spectrum (no SVD): column ``j`` is the filtered response to a unit
    impulse at sample ``j``. Applying it is one GEMM, faster than FFTs for N of 50..100 on a CPU;
    it is the same linear map, so results agree with both other paths to rounding.
    """
    n = np.asarray(aif).size
    return csvd_fft(np.eye(n), aif, dt_s, threshold)


def toeplitz_svd(
    aif: np.ndarray, dt_s: float, discretisation: str = "rectangle"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD ``(U, s, Vt)`` of :func:`toeplitz_matrix` (float64), for :func:`tikhonov_svd`."""
    return np.linalg.svd(toeplitz_matrix(aif, dt_s, discretisation))


def tikhonov_svd(
    conc: Any, svd: tuple[np.ndarray, np.ndarray, np.ndarray], mu: float | None, xp: Any = np
) -> tuple[Any, Any]:
    """Tikhonov deconvolution with a (causal, Toeplitz) matrix given by its SVD.

    ``r = V diag(s / (s^2 + mu^2)) U^T c`` (Calamante et al., MRM 50:1237, 2003; with the
    trapezoid/Volterra matrices of Sourbron et al., PMB 52:6761, 2007). ``mu`` relative to
    ``s_max``, or None for per-voxel GCV on :data:`GCV_MU_GRID`:
    ``GCV(mu) = sum_i (phi_i beta_i)^2 / (sum_i phi_i)^2``, ``phi_i = mu^2 / (s_i^2 + mu^2)``,
    ``beta = U^T c`` (A is square: U is complete, so the residual is in its basis).

    Returns
    -------
    residue : array (V, N)
    mu_rel : array (V,)
    """
    u, s, vt = svd
    v = conc.shape[0]
    s2 = s**2
    smax2 = s2.max()
    beta = conc @ xp.asarray(u, dtype=conc.dtype)  # (V, N): rows are U^T c
    if mu is not None:
        filt = s / (s2 + (mu**2) * smax2)
        res = (beta * xp.asarray(filt, dtype=conc.dtype)) @ xp.asarray(vt, dtype=conc.dtype)
        return res, xp.full((v,), mu, dtype=conc.dtype)
    grid = GCV_MU_GRID
    mu2 = (grid**2)[:, None] * smax2  # (G, N)
    phi = mu2 / (s2[None, :] + mu2)
    rw = xp.asarray((phi**2 / phi.sum(axis=1)[:, None] ** 2).T, dtype=conc.dtype)  # (N, G)
    best = xp.argmin((beta * beta) @ rw, axis=1)
    filt = xp.asarray(s[None, :] / (s2[None, :] + mu2), dtype=conc.dtype)[best]  # (V, N)
    res = (beta * filt) @ xp.asarray(vt, dtype=conc.dtype)
    return res, xp.asarray(grid, dtype=conc.dtype)[best]


def tikhonov(
    conc: Any, aif: np.ndarray, dt_s: float, mu: float | None = None, xp: Any = np
) -> tuple[Any, Any]:
    """Tikhonov-regularised circulant deconvolution, fixed ``mu`` or per-voxel GCV.

    Parameters
    ----------
    conc : array (V, N)
    aif : ndarray (N,)
    dt_s : float
    mu : float, optional
        Regularisation parameter relative to the largest singular value. ``None`` chooses it
        per voxel on :data:`GCV_MU_GRID` by minimising
        ``GCV(mu) = ||(I - A A_mu^+) c||^2 / trace(I - A A_mu^+)^2`` (evaluated exactly in the
        frequency domain, where ``A`` is diagonal).

    Returns
    -------
    residue : array (V, N)
    mu_rel : array (V,)
        The ``mu / s_max`` used per voxel.
    """
    n = conc.shape[-1]
    n_pad = 2 * n
    lam = aif_spectrum(aif, dt_s)
    s2 = np.abs(lam) ** 2
    smax2 = s2.max()
    cdtype = np.complex64 if conc.dtype == np.float32 else np.complex128
    spec = xp.fft.rfft(conc, n=n_pad, axis=-1)
    v = conc.shape[0]
    if mu is not None:
        filt = np.conj(lam) / (s2 + (mu**2) * smax2)
        spec *= xp.asarray(filt, dtype=cdtype)
        mu_rel = xp.full((v,), mu, dtype=conc.dtype)
    else:
        grid = GCV_MU_GRID
        mu2 = (grid**2)[:, None] * smax2  # (G, K)
        one_minus_f = mu2 / (s2[None, :] + mu2)  # residual filter per frequency
        # rfft holds each interior frequency once for a pair: weight 2 (DC, Nyquist: 1).
        w = np.full(s2.size, 2.0)
        w[0] = 1.0
        w[-1] = 1.0
        trace = (w[None, :] * one_minus_f).sum(axis=1)  # (G,)
        power = xp.abs(spec) ** 2  # (V, K)
        rw = xp.asarray((w[None, :] * one_minus_f**2 / trace[:, None] ** 2).T, dtype=conc.dtype)
        gcv = power @ rw  # (V, G), the 1/L of Parseval is common to all mu
        best = xp.argmin(gcv, axis=1)
        filt = np.conj(lam)[None, :] / (s2[None, :] + mu2)  # (G, K)
        spec *= xp.asarray(filt, dtype=cdtype)[best]
        mu_rel = xp.asarray(grid, dtype=conc.dtype)[best]
    res = xp.fft.irfft(spec, n=n_pad, axis=-1)[..., :n]
    return res.astype(conc.dtype, copy=False), mu_rel
