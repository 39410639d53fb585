"""NumPy twin of ``kernels/fit/lm_fit.cu``: the same Levenberg-Marquardt, vectorised over voxels.

Every operation mirrors the kernel, in the same order, so that the host build of the kernel and
this code agree to rounding (see the kernel's header for the algorithm and its references):
sums over samples run sample by sample (n = 0..N-1) as in the kernel's loop, rather than
``np.sum``'s pairwise order; the Cholesky factorisation and the triangular solves are written
out element by element (loops over the P <= 8 parameters, each statement over all voxels)
instead of calling LAPACK, whose operation order differs. Only the lower triangle of the
(V, P, P) J^T W J stack is read, as the kernel stores only that.

Voxels still iterating are kept compacted (the "live" set) so that converged voxels cost
nothing; every live voxel has made the same number of trials, so the iteration count is one
scalar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CONVERGED, MAX_ITER, FAILED = 0, 1, 2


@dataclass
class LMSettings:
    """Tunables shared with the kernel (cast to the working dtype before use)."""

    max_iter: int
    xtol: float
    ftol: float
    lambda0: float
    lambda_min: float
    lambda_max: float
    accept_tol: float


def _accumulate(model: Any, p, y, w, x, c):
    """chi2 (V,), noise (V,), A (V,P,P) lower triangle valid, g (V,P), finite (V,) at p.

    The sums run sample by sample in the kernel's order; the per-sample operands are taken
    sample-major (contiguous (V,) rows of transposed copies) so that each step reads memory
    in order instead of with the (V, N) row stride: the same operations on the same values.
    """
    f, jac = model.evaluate(np, p, x, c)
    n_vox, n_samples = y.shape
    n_par = p.shape[1]
    dt = y.dtype
    y_t = np.ascontiguousarray(y.T)
    f_t = np.ascontiguousarray(np.broadcast_to(f, y.shape).T)
    w_t = np.ascontiguousarray(np.broadcast_to(w, y.shape).T)
    r_t = y_t - f_t
    jac_t = np.ascontiguousarray(np.broadcast_to(jac, (*y.shape, n_par)).transpose(1, 2, 0))
    chi2 = np.zeros(n_vox, dtype=dt)
    noise = np.zeros(n_vox, dtype=dt)
    A_t = np.zeros((n_par, n_par, n_vox), dtype=dt)
    g_t = np.zeros((n_par, n_vox), dtype=dt)
    for n in range(n_samples):
        wn = w_t[n]
        rn = r_t[n]
        wr = wn * rn
        chi2 += wr * rn
        noise += np.abs(wr) * (np.abs(y_t[n]) + np.abs(f_t[n]))
        d = jac_t[n]
        g_t += wr[None, :] * d
        wd = wn[None, :] * d
        A_t += wd[:, None, :] * d[None, :, :]  # [k, l] = (w d_k) d_l, as the kernel for l <= k
    A = A_t.transpose(2, 0, 1)
    g = g_t.T
    tril = np.tril_indices(n_par)
    finite = (
        np.isfinite(chi2) & np.isfinite(g).all(axis=1) & np.isfinite(A[:, tril[0], tril[1]]).all(1)
    )
    return chi2, noise, np.ascontiguousarray(A), np.ascontiguousarray(g), finite


def _cholesky(A, act, lam):
    """Packed-as-full lower factor of A + lam diag(A) on ``act`` (identity elsewhere); ok (V,)."""
    n_vox, n_par, _ = A.shape
    dt = A.dtype
    L = np.zeros_like(A)
    ok = np.ones(n_vox, dtype=bool)
    one = dt.type(1)
    zero = dt.type(0)
    for j in range(n_par):
        ajj = A[:, j, j]
        s = np.where(act[:, j], ajj + lam * ajj, one)
        for k in range(j):
            s = s - L[:, j, k] * L[:, j, k]
        ok &= s > 0
        djj = np.sqrt(np.where(s > 0, s, one))
        L[:, j, j] = djj
        for i in range(j + 1, n_par):
            t = np.where(act[:, i] & act[:, j], A[:, i, j], zero)
            for k in range(j):
                t = t - L[:, i, k] * L[:, j, k]
            L[:, i, j] = t / djj
    return L, ok


def _solve(L, b):
    n_par = b.shape[1]
    z = np.empty_like(b)
    out = np.empty_like(b)
    for i in range(n_par):
        t = b[:, i]
        for k in range(i):
            t = t - L[:, i, k] * z[:, k]
        z[:, i] = t / L[:, i, i]
    for i in range(n_par - 1, -1, -1):
        t = z[:, i]
        for k in range(i + 1, n_par):
            t = t - L[:, k, i] * out[:, k]
        out[:, i] = t / L[:, i, i]
    return out


def _inverse_diagonal(L):
    n_vox, n_par, _ = L.shape
    dt = L.dtype
    out = np.empty((n_vox, n_par), dtype=dt)
    for k in range(n_par):
        z = np.empty((n_vox, n_par), dtype=dt)
        acc = np.zeros(n_vox, dtype=dt)
        for i in range(n_par):
            t = np.full(n_vox, 1 if i == k else 0, dtype=dt)
            for m in range(i):
                t = t - L[:, i, m] * z[:, m]
            z[:, i] = t / L[:, i, i]
            acc = acc + z[:, i] * z[:, i]
        out[:, k] = acc
    return out


def _clamp(v, lo, hi):
    return np.where(v < lo, lo, np.where(v > hi, hi, v))


def lm_numpy(model: Any, x, y, w, c, p0, lower, upper, fixed, settings: LMSettings):
    """Fit one chunk on the host with NumPy.

    Parameters
    ----------
    x : (N, NX); y, w : (V, N); c : (NC,); p0, lower, upper : (V, P); fixed : (P,) bool.
    All float arrays share one dtype (float32 or float64).

    Returns
    -------
    params, stderr : (V, P); chi2 : (V,); n_iter : (V,) int32; status : (V,) int8
    """
    dt = y.dtype
    T = dt.type
    n_vox, n_samples = y.shape
    n_par = p0.shape[1]
    xtol, ftol = T(settings.xtol), T(settings.ftol)
    lam_min, lam_max = T(settings.lambda_min), T(settings.lambda_max)
    ten = T(10)
    acc_tol = T(settings.accept_tol)

    params = np.full((n_vox, n_par), np.nan, dtype=dt)
    stderr = np.full((n_vox, n_par), np.nan, dtype=dt)
    chi2_out = np.full(n_vox, np.nan, dtype=dt)
    n_iter = np.zeros(n_vox, dtype=np.int32)
    status = np.full(n_vox, FAILED, dtype=np.int8)
    A_out = np.zeros((n_vox, n_par, n_par), dtype=dt)

    fixed_b = np.broadcast_to(np.asarray(fixed, dtype=bool), (n_vox, n_par))
    p = np.where(fixed_b, p0, _clamp(p0, lower, upper))
    ok = np.isfinite(p0).all(axis=1) & np.isfinite(y).all(axis=1)
    ok &= (np.isfinite(w) & (w >= 0)).all(axis=1)
    live = np.nonzero(ok)[0]
    with np.errstate(all="ignore"):
        chi2, noise, A, g, fin = _accumulate(model, p[live], y[live], w[live], x, c)
    bad = np.ones(n_vox, dtype=bool)
    live, chi2, noise, A, g = live[fin], chi2[fin], noise[fin], A[fin], g[fin]
    bad[live] = False
    # live state, compacted
    lp, llo, lhi = p[live], lower[live], upper[live]
    ly, lw = y[live], w[live]
    lfix = fixed_b[live]
    lam = np.full(live.size, settings.lambda0, dtype=dt)
    it = 0

    def finish(mask, code):
        nonlocal live, lp, llo, lhi, ly, lw, lfix, lam, chi2, noise, A, g
        idx = live[mask]
        params[idx] = lp[mask]
        chi2_out[idx] = chi2[mask]
        A_out[idx] = A[mask]
        n_iter[idx] = it
        status[idx] = code
        k = ~mask
        live, lp, llo, lhi, ly, lw, lfix = live[k], lp[k], llo[k], lhi[k], ly[k], lw[k], lfix[k]
        lam, chi2, noise, A, g = lam[k], chi2[k], noise[k], A[k], g[k]

    with np.errstate(all="ignore"):
        while live.size:
            if it >= settings.max_iter:
                finish(np.ones(live.size, dtype=bool), MAX_ITER)
                break
            out_low = (lp <= llo) & (g < 0)
            out_high = (lp >= lhi) & (g > 0)
            act = ~lfix & ~out_low & ~out_high
            diag = np.diagonal(A, axis1=1, axis2=2)
            singular = (act & ~(diag > 0)).any(axis=1)
            if singular.any():
                finish(singular, FAILED)
                if not live.size:
                    break
                act = act[~singular]
            it += 1
            L, chol_ok = _cholesky(A, act, lam)
            delta = _solve(L, g)
            pn = np.where(act, _clamp(lp + delta, llo, lhi), lp)
            chi2n, noisen, An, gn, fin = _accumulate(model, pn, ly, lw, x, c)
            accept = chol_ok & fin & (chi2n <= chi2 + acc_tol * (noise + noisen))

            # convergence tests of accepted steps (computed for all, used where accepted)
            pred = np.zeros(live.size, dtype=dt)
            small_x = np.ones(live.size, dtype=bool)
            for k in range(n_par):
                term = delta[:, k] * g[:, k] + lam * A[:, k, k] * delta[:, k] * delta[:, k]
                pred = np.where(act[:, k], pred + term, pred)
                dp = pn[:, k] - lp[:, k]
                test = np.abs(dp) <= xtol * (np.abs(pn[:, k]) + xtol)
                small_x &= np.where(lfix[:, k], True, test)
            dchi = chi2 - chi2n
            small_f = (dchi <= ftol * chi2) & (pred <= ftol * chi2)

            a = accept
            lp = np.where(a[:, None], pn, lp)
            g = np.where(a[:, None], gn, g)
            A = np.where(a[:, None, None], An, A)
            chi2 = np.where(a, chi2n, chi2)
            noise = np.where(a, noisen, noise)
            lam = np.where(a, np.maximum(lam / ten, lam_min), lam * ten)
            done = (a & (small_x | small_f)) | (~a & (lam > lam_max))
            if done.any():
                finish(done, CONVERGED)

    # standard errors from the undamped J^T W J over the free parameters
    sel = status != FAILED
    sel &= np.isfinite(chi2_out)
    n_free = int((~np.asarray(fixed, dtype=bool)).sum())
    dof = n_samples - n_free
    if dof > 0 and sel.any():
        idx = np.nonzero(sel)[0]
        free = np.broadcast_to(~np.asarray(fixed, dtype=bool), (idx.size, n_par))
        with np.errstate(all="ignore"):
            L, chol_ok = _cholesky(A_out[idx], free, T(0))
            dinv = _inverse_diagonal(L)
            se = np.sqrt(dinv * (chi2_out[idx] / T(dof))[:, None])
        se = np.where(chol_ok[:, None], se, np.nan).astype(dt)
        stderr[idx] = se
    stderr[:, np.asarray(fixed, dtype=bool)] = 0
    stderr[status == FAILED] = np.where(np.asarray(fixed, dtype=bool), 0, np.nan)
    # bad input or non-finite start: every output NaN (params included), as the kernel writes
    params[bad] = np.nan
    stderr[bad] = np.nan
    chi2_out[bad] = np.nan
    return params, stderr, chi2_out, n_iter, status
