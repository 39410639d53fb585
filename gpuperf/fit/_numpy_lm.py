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

from concurrent.futures import ThreadPoolExecutor
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


#: Voxels per block of :func:`_accumulate`: the ~80 (N, block) temporaries of one model
#: evaluation and its sums then stay in the CPU's L2 cache (3x faster than whole-chunk
#: arrays on 200 000 voxels x 7 samples). Each voxel's numbers do not depend on the block.
BLOCK = 8192

#: Worker threads of :func:`lm_numpy` over the voxel blocks (1: none). Results do not depend on
#: it. Default 1: on the busy 2-core test machine two threads measured slower (whole ASL run
#: 3.4 s -> 4.2 s at load 3; alone on one core they cost nothing), so two pay only where a core
#: is free: to be decided on a quiet machine (``bench/``).
WORKERS = 1


def _accumulate(model: Any, p, y, ay, w, x, c):
    """chi2 (V,), noise (V,), A (P,P,V) lower triangle valid, g (P,V), finite (V,) at p (P,V).

    Everything is sample-major (voxels last): ``y`` and ``ay = |y|`` (N, V), ``w`` (N, V) or
    (N, 1) shared, and the model is evaluated as f (N, V), J (P, N, V)
    (:meth:`~gpuperf.fit.models.base.Model.evaluate_samples`), so each per-sample operand is a
    contiguous (V,) row. The sums over samples run sample by sample, n = 0..N-1, from 0, as
    the kernel's loop: the same operations on the same values. Voxels go in blocks of
    :data:`BLOCK`.
    """
    n_par, n_vox = p.shape
    dt = y.dtype
    chi2 = np.empty(n_vox, dtype=dt)
    noise = np.empty(n_vox, dtype=dt)
    A = np.zeros((n_par, n_par, n_vox), dtype=dt)
    g = np.empty((n_par, n_vox), dtype=dt)
    finite = np.empty(n_vox, dtype=bool)
    shared_w = w.shape[1] == 1
    for a in range(0, n_vox, BLOCK):
        b = slice(a, a + BLOCK)
        f, jac = model.evaluate_samples(np, p[:, b], x, c)
        wb = w if shared_w else w[:, b]
        r = y[:, b] - f
        wr = wb * r
        _sum_samples(wr * r, chi2[b])
        _sum_samples(np.abs(wr) * (ay[:, b] + np.abs(f)), noise[b])
        _sum_samples(wr[None] * jac, g[:, b])
        wd = wb[None] * jac
        fin = finite[b]
        np.isfinite(chi2[b], out=fin)
        fin &= np.isfinite(g[:, b]).all(axis=0)
        for k in range(n_par):
            for m in range(k + 1):  # [k, m] = sum (w d_k) d_m, the kernel's lower triangle
                _sum_samples(wd[k] * jac[m], A[k, m, b])
                fin &= np.isfinite(A[k, m, b])
    return chi2, noise, A, g, finite


def _sum_samples(a, out):
    """``out`` = the sum over the samples (axis -2 of (..., N, V)), sample by sample,
    n = 0..N-1, starting from 0 as the kernel's loop does (``0 + a_0``, not ``a_0``: the two
    differ for -0.0)."""
    if a.shape[-2] == 0:
        out[...] = 0
        return
    np.add(a[..., 0, :], 0, out=out)
    for n in range(1, a.shape[-2]):
        out += a[..., n, :]


def _cholesky(A, act, lam):
    """Packed-as-full lower factor of A + lam diag(A) on ``act`` (identity elsewhere); ok (V,).

    Parameter-major: A (P, P, V), act (P, V), lam (V,) or scalar."""
    n_par, _, n_vox = A.shape
    dt = A.dtype
    L = np.zeros_like(A)
    ok = np.ones(n_vox, dtype=bool)
    one = dt.type(1)
    zero = dt.type(0)
    for j in range(n_par):
        ajj = A[j, j]
        s = np.where(act[j], ajj + lam * ajj, one)
        for k in range(j):
            s = s - L[j, k] * L[j, k]
        ok &= s > 0
        djj = np.sqrt(np.where(s > 0, s, one))
        L[j, j] = djj
        for i in range(j + 1, n_par):
            t = np.where(act[i] & act[j], A[i, j], zero)
            for k in range(j):
                t = t - L[i, k] * L[j, k]
            L[i, j] = t / djj
    return L, ok


def _solve(L, b):
    n_par = b.shape[0]
    z = np.empty_like(b)
    out = np.empty_like(b)
    for i in range(n_par):
        t = b[i]
        for k in range(i):
            t = t - L[i, k] * z[k]
        z[i] = t / L[i, i]
    for i in range(n_par - 1, -1, -1):
        t = z[i]
        for k in range(i + 1, n_par):
            t = t - L[k, i] * out[k]
        out[i] = t / L[i, i]
    return out


def _inverse_diagonal(L):
    n_par, _, n_vox = L.shape
    dt = L.dtype
    out = np.empty((n_par, n_vox), dtype=dt)
    for k in range(n_par):
        z = np.empty((n_par, n_vox), dtype=dt)
        acc = np.zeros(n_vox, dtype=dt)
        for i in range(n_par):
            t = np.full(n_vox, 1 if i == k else 0, dtype=dt)
            for m in range(i):
                t = t - L[i, m] * z[m]
            z[i] = t / L[i, i]
            acc = acc + z[i] * z[i]
        out[k] = acc
    return out


def _clamp(v, lo, hi):
    return np.where(v < lo, lo, np.where(v > hi, hi, v))


def _keep(a, k):
    """``a[..., k]`` (voxels last), gathered row by row: each row a contiguous 1-D take,
    about 3x faster than NumPy's fancy indexing along the last axis."""
    out = np.empty((*a.shape[:-1], k.size), dtype=a.dtype)
    n_rows = int(np.prod(a.shape[:-1]))
    rows, flat = out.reshape(n_rows, k.size), a.reshape(n_rows, a.shape[-1])
    for i in range(flat.shape[0]):
        rows[i] = flat[i][k]
    return out


def _voxels_last(a):
    """(V, K) -> (K, V), or (K, 1) when every voxel shares one row (a broadcast view, stride 0,
    as ``fit_lm`` passes shared bounds and weights): shared values are never copied per voxel
    nor compacted."""
    if a.shape[0] > 1 and a.strides[0] == 0:
        return np.ascontiguousarray(a[0][:, None])
    return np.ascontiguousarray(a.T)


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
    A_out = np.zeros((n_par, n_par, n_vox), dtype=dt)

    fixed_v = np.asarray(fixed, dtype=bool)
    fixed_b = np.broadcast_to(fixed_v, (n_vox, n_par))
    p = np.where(fixed_b, p0, _clamp(p0, lower, upper))
    # live state, compacted and voxels-last: (P, V), (N, V), (P, P, V); shared rows (K, 1)
    lo_t, hi_t, w_t = _voxels_last(lower), _voxels_last(upper), _voxels_last(w)
    lo_shared, hi_shared, w_shared = (a.shape[1] == 1 < n_vox for a in (lo_t, hi_t, w_t))
    y_t = np.ascontiguousarray(y.T)
    ok = np.isfinite(p0).all(axis=1) & np.isfinite(y_t).all(axis=0)
    ok &= (np.isfinite(w_t) & (w_t >= 0)).all(axis=0)
    live = np.nonzero(ok)[0]
    every = live.size == n_vox  # nothing to compact (the usual case)
    lp = np.ascontiguousarray(p.T) if every else np.ascontiguousarray(p[live].T)
    ly = y_t if every else _keep(y_t, live)
    llo = lo_t if lo_shared or every else lo_t[:, live]
    lhi = hi_t if hi_shared or every else hi_t[:, live]
    lw = w_t if w_shared or every else w_t[:, live]
    lay = np.abs(ly)
    lfix = fixed_v[:, None]
    with np.errstate(all="ignore"):
        chi2, noise, A, g, fin = _accumulate(model, lp, ly, lay, lw, x, c)
    bad = np.ones(n_vox, dtype=bool)
    if not fin.all():
        live, chi2, noise, A, g = live[fin], chi2[fin], noise[fin], A[..., fin], g[:, fin]
        lp, ly, lay = lp[:, fin], ly[:, fin], lay[:, fin]
        llo = llo if lo_shared else llo[:, fin]
        lhi = lhi if hi_shared else lhi[:, fin]
        lw = lw if w_shared else lw[:, fin]
    bad[live] = False
    lam = np.full(live.size, settings.lambda0, dtype=dt)
    it = 0

    def finish(mask, code, n_it):
        """Record the voxels ``mask`` of the live set (``code`` scalar or per voxel) and
        drop them from it."""
        nonlocal live, lp, llo, lhi, ly, lay, lw, lam, chi2, noise, A, g
        idx = live[mask]
        params[idx] = lp[:, mask].T
        chi2_out[idx] = chi2[mask]
        A_out[..., idx] = A[..., mask]
        n_iter[idx] = n_it if np.ndim(n_it) == 0 else n_it[mask]
        status[idx] = code if np.ndim(code) == 0 else code[mask]
        k = np.flatnonzero(~mask)
        live, lp, ly, lay = live[k], _keep(lp, k), _keep(ly, k), _keep(lay, k)
        llo = llo if lo_shared else _keep(llo, k)
        lhi = lhi if hi_shared else _keep(lhi, k)
        lw = lw if w_shared else _keep(lw, k)
        lam, chi2, noise, A, g = lam[k], chi2[k], noise[k], _keep(A, k), _keep(g, k)

    def step(b, code):
        """One trial step of the live voxels ``b`` (a slice), the state updated in place;
        ``code[b]``: FAILED (singular, not stepped), CONVERGED or -1 (go on)."""
        lpb, gb, Ab, lamb, chi2b, noiseb = lp[:, b], g[:, b], A[..., b], lam[b], chi2[b], noise[b]
        lob = llo if lo_shared else llo[:, b]
        hib = lhi if hi_shared else lhi[:, b]
        out_low = (lpb <= lob) & (gb < 0)
        out_high = (lpb >= hib) & (gb > 0)
        act = ~lfix & ~out_low & ~out_high
        singular = np.zeros(lamb.size, dtype=bool)
        for k in range(n_par):
            singular |= act[k] & ~(Ab[k, k] > 0)
        L, chol_ok = _cholesky(Ab, act, lamb)
        delta = _solve(L, gb)
        pn = np.where(act, _clamp(lpb + delta, lob, hib), lpb)
        chi2n, noisen, An, gn, fin = _accumulate(
            model, pn, ly[:, b], lay[:, b], lw if w_shared else lw[:, b], x, c
        )
        accept = chol_ok & fin & (chi2n <= chi2b + acc_tol * (noiseb + noisen))

        # convergence tests of accepted steps (computed for all, used where accepted)
        pred = np.zeros(lamb.size, dtype=dt)
        small_x = np.ones(lamb.size, dtype=bool)
        for k in range(n_par):
            term = delta[k] * gb[k] + lamb * Ab[k, k] * delta[k] * delta[k]
            pred = np.where(act[k], pred + term, pred)
            if not fixed_v[k]:
                dp = pn[k] - lpb[k]
                small_x &= np.abs(dp) <= xtol * (np.abs(pn[k]) + xtol)
        dchi = chi2b - chi2n
        small_f = (dchi <= ftol * chi2b) & (pred <= ftol * chi2b)

        a = accept & ~singular  # singular voxels keep their state: they are recorded as is
        lam_new = np.where(a, np.maximum(lamb / ten, lam_min), lamb * ten)
        done = (a & (small_x | small_f)) | (~a & (lam_new > lam_max))
        lp[:, b] = np.where(a, pn, lpb)
        g[:, b] = np.where(a, gn, gb)
        A[..., b] = np.where(a, An, Ab)
        chi2[b] = np.where(a, chi2n, chi2b)
        noise[b] = np.where(a, noisen, noiseb)
        lam[b] = lam_new
        code[b] = np.where(singular, FAILED, np.where(done, CONVERGED, -1))

    def one_block(b, code):
        with np.errstate(all="ignore"):  # per thread: the workers need their own
            step(b, code)

    # every live voxel's step depends on that voxel alone: blocks of voxels (cache-sized) on
    # up to WORKERS threads (NumPy releases the GIL in its loops); results do not depend on
    # either
    n_workers = min(WORKERS, -(-live.size // BLOCK))
    pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
    try:
        with np.errstate(all="ignore"):
            while live.size:
                if it >= settings.max_iter:
                    finish(np.ones(live.size, dtype=bool), MAX_ITER, it)
                    break
                code = np.empty(live.size, dtype=np.int8)
                blocks = [slice(a, a + BLOCK) for a in range(0, live.size, BLOCK)]
                if pool is not None and len(blocks) > 1:
                    list(pool.map(one_block, blocks, [code] * len(blocks)))
                else:
                    for b in blocks:
                        step(b, code)
                it += 1
                end = code >= 0
                if end.any():
                    # singular voxels stop before this trial (it - 1 trials), as in the kernel
                    finish(end, code, np.where(code == FAILED, it - 1, it))
    finally:
        if pool is not None:
            pool.shutdown()

    # standard errors from the undamped J^T W J over the free parameters
    sel = status != FAILED
    sel &= np.isfinite(chi2_out)
    n_free = int((~fixed_v).sum())
    dof = n_samples - n_free
    if dof > 0 and sel.any():
        idx = np.nonzero(sel)[0]
        free = np.broadcast_to(~fixed_v[:, None], (n_par, idx.size))
        with np.errstate(all="ignore"):
            L, chol_ok = _cholesky(A_out[..., idx], free, T(0))
            dinv = _inverse_diagonal(L).T
            se = np.sqrt(dinv * (chi2_out[idx] / T(dof))[:, None])
        se = np.where(chol_ok[:, None], se, np.nan).astype(dt)
        stderr[idx] = se
    stderr[:, fixed_v] = 0
    stderr[status == FAILED] = np.where(fixed_v, 0, np.nan)
    # bad input or non-finite start: every output NaN (params included), as the kernel writes
    params[bad] = np.nan
    stderr[bad] = np.nan
    chi2_out[bad] = np.nan
    return params, stderr, chi2_out, n_iter, status
