"""Oscillation-index SVD (oSVD, Wu et al., MRM 50:164, 2003), batched over voxels.

With one AIF, the truncated block-circulant SVD at threshold ``P`` keeps the same set of
frequencies for every voxel: those with ``|dt * DFT(aif_pad)_k| >= P * s_max``. Sorting the
frequencies by decreasing magnitude, the set kept at ``P`` is the first ``m(P)`` of them, so
the residue at every threshold is one real linear combination

    r_P(t) = sum_{j < m(P)} coef_j * basis_j(t),      t = 0 .. L-1,  L = 2N,

with ``coef = c @ W`` (the tissue DFT divided by the AIF spectrum, one GEMM for all voxels)
and ``basis`` the cos/sin rows of the inverse real DFT. The per-voxel work is then: for every
distinct set, the oscillation index

    OI = (1/L) * (1/max_t r) * sum_{k=2}^{L-1} |r_k - 2 r_{k-1} + r_{k-2}|   (Wu 2003, eq. 8)

over the full padded length L, and the choice of the lowest threshold with ``OI < limit``
(default 0.035, as the reference toolboxes). That selection is ``kernels/dsc/osvd_select.cu``
on the GPU and :func:`select_numpy` here (its twin: same sets, same order, same outputs).

Several AIFs (the subjects of a batch, :func:`gpuperf.dsc.model.fit_dr2s_batch`) share one
launch: their plans are padded to common sizes (:func:`stack_plans`) and each voxel carries
the index of its plan; :func:`select_numpy_multi` is the twin of such a launch.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuperf.dsc.constants import DEFAULT_OI_LIMIT, DEFAULT_THRESHOLDS
from gpuperf.dsc.deconvolution import aif_spectrum
from gpuperf.errors import GpuperfError, InputError

#: Sizes of the CUDA kernel's per-thread arrays (kernels/dsc/osvd_select.cuh; checked).
MAX_SETS = 32
MAX_PAD = 512


class _Padded:
    """The zero-padded length ``L = 2N`` of a plan over ``n`` frames (the block-circulant
    deconvolution of Wu 2003)."""

    n: int

    @property
    def n_pad(self) -> int:
        return 2 * self.n


@dataclass(frozen=True)
class OSVDPlan(_Padded):
    """Everything oSVD needs that depends on the AIF only (built once, shared by all voxels).

    Attributes
    ----------
    weights : ndarray (N, M)
        ``coef = conc @ weights``: DFT of the (zero-padded) tissue curve divided by the AIF
        spectrum, real and imaginary parts of the kept frequencies, by decreasing ``|lambda|``.
    basis : ndarray (M, L)
        Rows of the inverse real DFT matching ``weights``' columns.
    set_rows : ndarray (S,) int32
        Number of leading coefficient rows kept by each *distinct* set, in ascending threshold
        order (so non-increasing).
    set_threshold : ndarray (S,)
        The lowest swept threshold that produces each distinct set (that is what oSVD reports).
    n : int
        Frames N; ``L = 2N``.
    """

    weights: np.ndarray
    basis: np.ndarray
    set_rows: np.ndarray
    set_threshold: np.ndarray
    n: int


def make_plan(aif: np.ndarray, dt_s: float, thresholds: Any = DEFAULT_THRESHOLDS) -> OSVDPlan:
    """Build the oSVD plan for one AIF (float64 on the host; tiny).

    Parameters
    ----------
    aif : ndarray (N,)
        Arterial curve.
    dt_s : float
        Sampling interval (s).
    thresholds : sequence of float
        Relative thresholds to sweep (fractions of s_max, each in (0, 1]).
    """
    thr = np.sort(np.asarray(thresholds, dtype=np.float64))
    if thr.size == 0 or thr[0] <= 0 or thr[-1] > 1:
        raise InputError(None, "osvd_thresholds", f"must lie in (0, 1]; got {thresholds!r}")
    aif = np.asarray(aif, dtype=np.float64)
    n = aif.size
    n_pad = 2 * n
    lam = aif_spectrum(aif, dt_s)  # (n + 1,): k = 0 .. n (n is the Nyquist frequency of 2n)
    mag = np.abs(lam)
    smax = mag.max()
    if not np.isfinite(smax) or smax <= 0:
        raise GpuperfError("the AIF is zero or not finite: nothing to deconvolve by")
    order = np.argsort(-mag, kind="stable")
    order = order[mag[order] >= thr[0] * smax]  # frequencies no threshold keeps are never used
    t_in = np.arange(n)
    t_out = np.arange(n_pad)
    w_cols, b_rows, rows_after = [], [], []
    for k in order:
        e = np.exp(-2j * np.pi * k * t_in / n_pad) / lam[k]  # c -> Y_k = C_k / lambda_k
        ang = 2 * np.pi * k * t_out / n_pad
        if k == 0 or k == n:  # real frequency: one coefficient
            w_cols.append(e.real)
            b_rows.append(np.cos(ang) / n_pad)
        else:  # a conjugate pair: Re and Im, each counted twice in the inverse DFT
            w_cols += [e.real, e.imag]
            b_rows += [2 * np.cos(ang) / n_pad, -2 * np.sin(ang) / n_pad]
        rows_after.append(len(b_rows))
    rows_after = np.asarray(rows_after)
    kept_mag = mag[order]
    # rows kept at each threshold (ascending, so non-increasing): frequencies >= P * s_max
    rows_per_thr = [int(rows_after[np.count_nonzero(kept_mag >= p * smax) - 1]) for p in thr]
    set_rows, set_threshold = [], []
    for p, r in zip(thr, rows_per_thr, strict=True):
        if not set_rows or r != set_rows[-1]:  # distinct sets only; report the lowest P
            set_rows.append(r)
            set_threshold.append(p)
    return OSVDPlan(
        weights=np.stack(w_cols, axis=1),
        basis=np.stack(b_rows, axis=0),
        set_rows=np.asarray(set_rows, dtype=np.int32),
        set_threshold=np.asarray(set_threshold),
        n=n,
    )


@dataclass
class OSVDResult:
    """Per-voxel oSVD outputs (arrays on the backend that computed them).

    Attributes
    ----------
    rmax : (V,) max over the first N samples of the chosen residue (1/s)
    tmax_index : (V,) int32 sample index of that maximum
    set_index : (V,) int32 index into ``plan.set_rows`` of the chosen set
    oi : (V,) oscillation index of the chosen set
    passed : (V,) bool, whether that OI is below the limit
    """

    rmax: Any
    tmax_index: Any
    set_index: Any
    oi: Any
    passed: Any


def coefficients(conc: Any, plan: OSVDPlan, xp: Any = np) -> Any:
    """``conc @ plan.weights`` on the backend: (V, M) in the dtype of ``conc``."""
    return conc @ xp.asarray(plan.weights, dtype=conc.dtype)


def select_numpy(
    coef: np.ndarray,
    plan: OSVDPlan,
    oi_limit: float = DEFAULT_OI_LIMIT,
    block: int = 4096,
    workers: int | None = None,
) -> OSVDResult:
    """NumPy twin of the ``osvd_select`` kernel (same sets, same choice, same outputs).

    Thresholds are visited from the lowest up; a voxel leaves the active set at the first
    threshold whose OI is below the limit (that *is* the lowest passing threshold, so stopping
    there changes nothing), and its residue maximum and Tmax index are read off then. Each step
    subtracts the frequencies the next threshold drops from the residue with one rank-few GEMM;
    the second difference is taken from the residue, as in the kernel. Blocks are time-major
    ``(L, voxels)`` so that the
    per-voxel max and sum run as contiguous vector operations across voxels; they are
    cache-sized and run on ``workers`` threads (NumPy and BLAS release the GIL).

    Parameters
    ----------
    coef : ndarray (V, M) float32 or float64
        :func:`coefficients` of the tissue curves.
    plan : OSVDPlan
    oi_limit : float
    block : int
        Voxels per block (does not change the result).
    workers : int, optional
        Worker threads (default: up to 2), each with single-threaded BLAS.
    """
    dtype = coef.dtype
    v = coef.shape[0]
    rows = plan.set_rows
    basis = plan.basis.astype(dtype)
    # [r | second difference of r] as rows of one operator: OI needs both for every set
    # r(t) as rows of one operator; its second difference is taken from r, as the kernel does
    # (a second-difference operator would double the GEMM for the same numbers)
    basis_t = basis.T
    ops = [np.ascontiguousarray(basis_t[:, : rows[0]])] + [
        np.ascontiguousarray(basis_t[:, rows[s] : rows[s - 1]]) for s in range(1, rows.size)
    ]
    out = (
        np.empty(v, dtype=np.int32),  # set index
        np.empty(v, dtype=dtype),  # oi
        np.empty(v, dtype=bool),  # passed
        np.empty(v, dtype=dtype),  # rmax
        np.empty(v, dtype=np.int32),  # tmax index
    )
    slices = [slice(i, min(i + block, v)) for i in range(0, v, block)]

    def one_block(sl: slice) -> None:
        _select_block(coef[sl], ops, plan, dtype.type(oi_limit), [o[sl] for o in out])

    n_workers = min(2, len(slices)) if workers is None else max(1, workers)
    # even one worker runs off the main thread, so its BLAS setting stays local to it
    list(_worker_pool(n_workers).map(one_block, slices))
    set_index, oi, passed, rmax, tmax_index = out
    return OSVDResult(rmax, tmax_index, set_index, oi, passed)


_POOLS: dict[tuple[int, int], Any] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's worker threads do not exist there (nor may its lock
    be free)."""
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()
    _POOLS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pools)


def _worker_pool(n: int) -> Any:
    """``n`` worker threads with single-threaded BLAS (:func:`_openblas_local_threads`), kept
    for the process: starting and joining threads for every call cost milliseconds, as much
    as the selection of the few voxels of a QC curve. One pool per process id and size (a
    forked child has none of its parent's threads and makes its own)."""
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), n)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            set_local = _openblas_local_threads()

            def init_worker() -> None:
                if set_local is not None:
                    set_local(1)

            pool = ThreadPoolExecutor(n, thread_name_prefix="gpuperf-osvd", initializer=init_worker)
            _POOLS[key] = pool
    return pool


@functools.lru_cache(maxsize=1)
def _openblas_local_threads() -> Any:
    """OpenBLAS's per-thread ``openblas_set_num_threads_local`` (>= 0.3.27), or None.

    Why: :func:`select_numpy` runs its blocks on its own worker threads; OpenBLAS threading
    each worker's small GEMMs as well oversubscribes the cores (measured 3x slower on two
    cores). Setting the count for the *calling thread only* leaves the rest of the process
    alone. Best effort: any other BLAS (or an older OpenBLAS) keeps its own threading.
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            libs = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return None
    for lib in sorted(libs):
        try:
            fn = ctypes.CDLL(lib).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


def _select_block(c: np.ndarray, ops: list, plan: OSVDPlan, limit: Any, out: list) -> None:
    out_set, out_oi, out_passed, out_rmax, out_tmax = out
    rows = plan.set_rows
    n_sets, n_pad, n = rows.size, plan.n_pad, plan.n
    c_t = np.ascontiguousarray(c.T)  # (M, nb)
    x = ops[0] @ c_t[: rows[0]]  # lowest threshold: every kept frequency, (L, nb)
    active = np.arange(c.shape[0])  # block columns still searching (x, c_t hold them)
    pending = np.ones(c.shape[0], dtype=bool)
    # scratch reused across thresholds: fresh multi-MB temporaries cost page faults each time
    scratch = np.empty(x.size, dtype=x.dtype)
    for s in range(n_sets):
        tmp = scratch[: x.size].reshape(x.shape)
        if s > 0:
            np.matmul(ops[s], c_t[rows[s] : rows[s - 1]], out=tmp)
            x -= tmp
        rmax = x.max(axis=0)
        d2 = tmp[: n_pad - 2]  # r_t - 2 r_{t-1} + r_{t-2}, evaluated in the kernel's order
        np.multiply(x[1:-1], 2, out=d2)
        np.subtract(x[2:], d2, out=d2)
        d2 += x[:-2]
        rough = np.abs(d2, out=d2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.where(rmax > 0, rough / (n_pad * rmax), np.inf).astype(x.dtype)
        ok = val < limit
        done = (ok | (s == n_sets - 1)) & pending  # last set: nothing passed, flagged
        if not done.any():
            continue
        cols = np.flatnonzero(done)
        idx = active[cols]
        out_set[idx] = s
        out_oi[idx] = val[cols]
        out_passed[idx] = ok[cols]
        first_n = x[:n, cols]  # the chosen residue over the first N samples
        t_max = first_n.argmax(axis=0)
        out_tmax[idx] = t_max
        out_rmax[idx] = first_n[t_max, np.arange(cols.size)]
        pending &= ~done
        n_left = int(pending.sum())
        if n_left == 0:
            return
        if n_left < 0.6 * pending.size:  # compact only when it pays for the copy
            keep = np.flatnonzero(pending)
            active, x, c_t = active[keep], np.take(x, keep, axis=1), np.take(c_t, keep, axis=1)
            pending = np.ones(n_left, dtype=bool)


def residue(coef: Any, plan: OSVDPlan, set_index: Any, xp: Any = np) -> Any:
    """The chosen residue per voxel over the first N samples, (V, N), negative values kept."""
    rows = xp.asarray(plan.set_rows)
    keep = xp.arange(coef.shape[1])[None, :] < rows[set_index][:, None]
    basis = xp.asarray(plan.basis[:, : plan.n], dtype=coef.dtype)
    return xp.where(keep, coef, 0) @ basis


@dataclass(frozen=True)
class StackedPlans(_Padded):
    """Several :class:`OSVDPlan` (one per AIF) padded to common sizes for one kernel launch.

    Attributes
    ----------
    basis : ndarray (P, M_max, L)
        Each plan's basis, zero rows past its own ``M``.
    set_rows : ndarray (P, S_max) int32
        Each plan's ``set_rows``, zero past its own count.
    n_sets : ndarray (P,) int32
    n : int
        Frames N (equal for all plans); ``L = 2N``.
    """

    basis: np.ndarray
    set_rows: np.ndarray
    n_sets: np.ndarray
    n: int

    @property
    def n_coef(self) -> int:
        return self.basis.shape[1]


def stack_plans(plans: Any) -> StackedPlans:
    """Pad one plan or a sequence of plans (same frame count) to common sizes.

    Coefficient arrays for the stacked launch have ``M_max`` columns; a voxel's columns past
    its own plan's ``M`` are never read (its ``set_rows`` stop before them).
    """
    plans = [plans] if isinstance(plans, OSVDPlan) else list(plans)
    if not plans:
        raise ValueError("no oSVD plan to stack")
    n = plans[0].n
    if any(p.n != n for p in plans):
        raise GpuperfError(f"oSVD plans of different frame counts: {[p.n for p in plans]}")
    m_max = max(p.basis.shape[0] for p in plans)
    s_max = max(p.set_rows.size for p in plans)
    basis = np.zeros((len(plans), m_max, 2 * n))
    set_rows = np.zeros((len(plans), s_max), dtype=np.int32)
    for i, p in enumerate(plans):
        basis[i, : p.basis.shape[0]] = p.basis
        set_rows[i, : p.set_rows.size] = p.set_rows
    n_sets = np.asarray([p.set_rows.size for p in plans], dtype=np.int32)
    return StackedPlans(basis, set_rows, n_sets, n)


def _plan_index(plan_index: Any, v: int, n_plans: int, xp: Any = np) -> Any:
    """Each voxel's plan as int32 (V,) on ``xp``; a CuPy ``plan_index`` stays on the device
    (its range is checked there, one scalar each way)."""
    if plan_index is None:
        if n_plans != 1:
            raise ValueError("plan_index is needed with several plans")
        return xp.zeros(v, dtype=np.int32)
    idx = xp.ascontiguousarray(xp.asarray(plan_index).reshape(-1).astype(np.int32, copy=False))
    if idx.size != v or (v and (int(idx.min()) < 0 or int(idx.max()) >= n_plans)):
        raise ValueError(f"plan_index must give each of {v} voxels a plan in [0, {n_plans})")
    return idx


def _launch_args(
    coef_t: Any, sp: StackedPlans, dev: Any, plan_index: Any, oi_limit: float, outs: tuple
) -> tuple:
    """Arguments of ``osvd_select<T>``, bound by name to its compiled signature
    (:func:`gpuperf.dsc.kernels.osvd_signature`); ``dev(array, dtype)`` puts a host array
    where the kernel runs."""
    from gpuperf.dsc.kernels import osvd_signature

    dtype = np.dtype(coef_t.dtype)
    set_index, oi, rmax, tmax_index = outs
    return osvd_signature(dtype).bind(
        coef=coef_t,
        basis=dev(sp.basis, dtype),
        set_rows=dev(sp.set_rows, np.int32),
        n_sets=dev(sp.n_sets, np.int32),
        plan_index=plan_index,
        basis_stride=sp.n_coef * sp.n_pad,
        sets_stride=sp.set_rows.shape[1],
        n_pad=sp.n_pad,
        n_frames=sp.n,
        n_vox=coef_t.shape[1],
        oi_limit=oi_limit,
        set_index=set_index,
        oi=oi,
        rmax=rmax,
        tmax_index=tmax_index,
    )


def _check_coef(coef: Any, sp: StackedPlans) -> None:
    if coef.shape[1] < sp.n_coef:
        raise ValueError(f"coef has {coef.shape[1]} columns, the plans need {sp.n_coef}")


def select_cupy(
    coef: Any,
    plan: Any,
    oi_limit: float = DEFAULT_OI_LIMIT,
    threads: int = 128,
    plan_index: Any = None,
) -> OSVDResult:
    """The ``osvd_select`` CUDA kernel (one thread per voxel) on a CuPy ``coef`` (V, M).

    ``plan`` is one :class:`OSVDPlan`, or a sequence of them with ``plan_index`` (V,) giving
    each voxel's plan (``coef`` then has the largest plan's M columns, see :func:`stack_plans`).
    """
    import cupy as cp

    from gpuperf.dsc.kernels import osvd_kernel

    sp = stack_plans(plan)
    check_kernel_limits(sp)
    _check_coef(coef, sp)
    dtype = np.dtype(coef.dtype)
    v = coef.shape[0]
    idx = _plan_index(plan_index if plan_index is None else cp.asarray(plan_index), v,
                      sp.n_sets.size, cp)  # fmt: skip
    coef_t = cp.ascontiguousarray(coef[:, : sp.n_coef].T)  # time-major (M, V): coalesced reads
    outs = (
        cp.empty(v, dtype=cp.int32),
        cp.empty(v, dtype=dtype),
        cp.empty(v, dtype=dtype),
        cp.empty(v, dtype=cp.int32),
    )
    args = _launch_args(
        coef_t, sp, lambda a, dt: cp.asarray(np.ascontiguousarray(a, dt)), idx, oi_limit, outs
    )
    if v:  # no voxels, no launch (a zero grid is a CUDA error)
        osvd_kernel(dtype)(((v + threads - 1) // threads,), (threads,), args)
    set_index, oi, rmax, tmax_index = outs
    return OSVDResult(rmax, tmax_index, set_index, oi, oi < oi_limit)


def select_host(
    coef: np.ndarray,
    plan: Any,
    oi_limit: float = DEFAULT_OI_LIMIT,
    threads: int = 64,
    n_threads: int = 2,
    plan_index: Any = None,
) -> OSVDResult:
    """The same kernel source built as host C++ (g++) and run on the CPU: the parity harness.

    ``plan`` and ``plan_index`` as for :func:`select_cupy`.
    """
    from gpuperf.dsc.kernels import osvd_host_library

    sp = stack_plans(plan)
    check_kernel_limits(sp)
    _check_coef(coef, sp)
    dtype = np.dtype(coef.dtype)
    v = coef.shape[0]
    idx = _plan_index(plan_index, v, sp.n_sets.size)
    lib, name = osvd_host_library(dtype)
    coef_t = np.ascontiguousarray(coef[:, : sp.n_coef].T)
    outs = (np.empty(v, np.int32), np.empty(v, dtype), np.empty(v, dtype), np.empty(v, np.int32))
    args = _launch_args(coef_t, sp, np.ascontiguousarray, idx, oi_limit, outs)
    if v:
        lib.launch(
            name, (v + threads - 1) // threads, threads, args, n_threads=n_threads, strict=True
        )
    set_index, oi, rmax, tmax_index = outs
    return OSVDResult(rmax, tmax_index, set_index, oi, oi < oi_limit)


def select_numpy_multi(
    coef: np.ndarray,
    plans: Any,
    plan_index: Any,
    oi_limit: float = DEFAULT_OI_LIMIT,
) -> OSVDResult:
    """NumPy twin of a several-plan launch: the voxels of each plan by :func:`select_numpy`
    (a loop over plans, not voxels); ``coef`` (V, M_max) as for :func:`select_cupy`."""
    plans = [plans] if isinstance(plans, OSVDPlan) else list(plans)
    v = coef.shape[0]
    idx = _plan_index(plan_index, v, len(plans))
    out = OSVDResult(
        np.empty(v, dtype=coef.dtype),
        np.empty(v, dtype=np.int32),
        np.empty(v, dtype=np.int32),
        np.empty(v, dtype=coef.dtype),
        np.empty(v, dtype=bool),
    )
    for p, plan in enumerate(plans):
        sel = np.flatnonzero(idx == p)
        if sel.size == 0:
            continue
        m = plan.basis.shape[0]
        res = select_numpy(np.ascontiguousarray(coef[sel, :m]), plan, oi_limit)
        for name in ("rmax", "tmax_index", "set_index", "oi", "passed"):
            getattr(out, name)[sel] = getattr(res, name)
    return out


def check_kernel_limits(plan: OSVDPlan | StackedPlans) -> None:
    """Raise if the plan(s) exceed the kernel's fixed per-thread arrays."""
    n_sets = int(np.max(plan.n_sets)) if isinstance(plan, StackedPlans) else plan.set_rows.size
    if n_sets > MAX_SETS or plan.n_pad > MAX_PAD:
        raise GpuperfError(
            f"oSVD plan too large for the GPU kernel: {n_sets} sets (max {MAX_SETS}), "
            f"{plan.n_pad} padded samples (max {MAX_PAD}, i.e. {MAX_PAD // 2} frames); "
            "use --device cpu"
        )


def osvd(
    conc: Any,
    aif: np.ndarray,
    dt_s: float,
    thresholds: Any = DEFAULT_THRESHOLDS,
    oi_limit: float = DEFAULT_OI_LIMIT,
    xp: Any = np,
    plan: OSVDPlan | None = None,
) -> tuple[OSVDResult, OSVDPlan, Any]:
    """oSVD of a (V, N) block on the backend ``xp`` (NumPy twin or CUDA kernel).

    Returns
    -------
    result : OSVDResult
    plan : OSVDPlan
    coef : array (V, M), kept so that callers can rebuild residues (:func:`residue`).
    """
    plan = plan or make_plan(aif, dt_s, thresholds)
    coef = coefficients(conc, plan, xp)
    if xp is np:
        return select_numpy(coef, plan, oi_limit), plan, coef
    return select_cupy(coef, plan, oi_limit), plan, coef
