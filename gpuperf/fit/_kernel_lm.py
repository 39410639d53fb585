"""Launchers of ``kernels/fit/lm_fit.cu``: CuPy on the GPU, and the g++ host build via ctypes.

Both take voxel-major host/device chunks (V, N), lay them out time-major (N, V) as the kernel
expects (coalesced reads on the GPU; the host build runs the same indexing) and return
voxel-major results. Start values and bounds shared by every voxel travel as (P,) arrays (the
kernel's ``p0_per_voxel``/``bounds_per_voxel`` flags), never as broadcast (P, V) copies.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gpuperf.backend import NUMPY_BACKEND, Backend
from gpuperf.cuda.host import HostLauncher, build_host_library
from gpuperf.cuda.signature import signature
from gpuperf.cuda.source import get_module, read_kernel
from gpuperf.fit._numpy_lm import LMSettings

#: Threads per block of the fit kernel (one voxel per thread).
BLOCK_SIZE = 128

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def kernel_expression(model: Any, dtype: Any) -> str:
    """Template instantiation name, e.g. ``lm_fit<float, MonoExp>``."""
    return f"lm_fit<{_CTYPE[np.dtype(dtype)]}, {model.cuda_struct}>"


def kernel_signature(model: Any, dtype: Any) -> Any:
    """The compiled signature of ``lm_fit<T, Model>`` (:func:`gpuperf.cuda.signature.signature`):
    the one source of the launch's argument list, host and device alike."""
    return signature(kernel_expression(model, dtype))


def _launcher_name(model: Any, dtype: Any) -> str:
    return f"lm_fit_{_SUFFIX[np.dtype(dtype)]}_{model.cuda_struct}"


def host_library(model: Any) -> Any:
    """Host build of the fit kernel for ``model`` (float and double launchers)."""
    launchers = [
        HostLauncher(_launcher_name(model, dt), kernel_expression(model, dt)) for dt in _CTYPE
    ]
    return build_host_library(
        code=f'#include "{model.cuda_header}"',
        sources=["fit/lm_fit.cu"],
        launchers=launchers,
    )


def fixed_mask(fixed: np.ndarray) -> int:
    return int(sum(1 << k for k, f in enumerate(np.asarray(fixed, dtype=bool)) if f))


def device_array(backend: Backend, a: Any, dtype: Any) -> Any:
    """``a`` in ``dtype``, C-contiguous, on ``backend``: uploaded when it is a host array, left
    on the device (converted there) when it is one already."""
    if backend.is_device_array(a):
        return backend.xp.ascontiguousarray(a.astype(dtype, copy=False))
    return backend.asarray(np.ascontiguousarray(a, dtype=dtype))


def shared_inputs(backend: Backend, x, c, w, w_per_voxel, p0, lower, upper, dtype) -> tuple:
    """What every chunk of a fit shares, on ``backend`` once: ``x``, ``c`` (a 1-element
    placeholder when empty: no null pointer), shared weights and the (P,) start values and
    bounds when they are shared. Per-voxel arrays are returned as they are (sliced per chunk)."""
    dt = np.dtype(dtype)

    def shared(a: Any, per_voxel: bool) -> Any:
        return a if a is None or per_voxel else device_array(backend, a, dt)

    c = c if c.size else np.zeros(1, dtype=dt)
    return (
        device_array(backend, x, dt),
        device_array(backend, c, dt),
        shared(w, w_per_voxel),
        shared(p0, p0.ndim == 2),
        shared(lower, lower.ndim == 2),
        shared(upper, upper.ndim == 2),
    )


def _kernel_args(
    backend: Backend, model, x, y, w, w_per_voxel, c, p0, lower, upper, fixed, s: LMSettings
):
    """The kernel's argument list for one chunk on ``backend`` (NumPy for the host build, CuPy
    on the GPU): one marshalling for both, so the host parity tests check the GPU's too.

    Voxel-major inputs (host arrays, or device arrays already on ``backend``) go up as they are
    and are transposed to time-major on the device; ``p0`` and ``lower``/``upper`` are (P,) when
    shared by every voxel (passed as such, with ``p0_per_voxel``/``bounds_per_voxel`` 0) or
    (V, P). The values are bound by name to the kernel's compiled signature, which orders them
    and makes every scalar a NumPy scalar of the C parameter's width. Returns
    ``(args, outputs)``, the outputs ``(params (P, V), stderr (P, V), chi2, n_iter, status)``
    being filled by the launch.
    """
    if lower.ndim != upper.ndim:
        raise ValueError("lower and upper must both be shared (P,) or both per voxel (V, P)")
    xp = backend.xp
    dt = np.dtype(y.dtype)
    n_vox, n_samples = y.shape
    n_par = p0.shape[-1]
    yt = xp.ascontiguousarray(device_array(backend, y, dt).T)
    if w is None:
        # a shared weight of 1 is exact (1 * r == r), and avoids passing a null pointer
        wt, w_per_voxel = xp.ones(n_samples, dtype=dt), False
    else:
        wd = device_array(backend, w, dt)
        wt = xp.ascontiguousarray(wd.T) if w_per_voxel else wd
    xd = device_array(backend, x, dt)
    cd = device_array(backend, c if c.size else np.zeros(1, dtype=dt), dt)
    # (V, P) -> (P, V) time-major on the device; (P,) shared values as they are
    p0t, lot, hit = (
        xp.ascontiguousarray(device_array(backend, a, dt).T) for a in (p0, lower, upper)
    )
    outs = (
        xp.empty((n_par, n_vox), dtype=dt),
        xp.empty((n_par, n_vox), dtype=dt),
        xp.empty(n_vox, dtype=dt),
        xp.empty(n_vox, dtype=np.int32),
        xp.empty(n_vox, dtype=np.int8),
    )
    values = {
        "y": yt,
        "w": wt,
        "w_per_voxel": bool(w_per_voxel),
        "x": xd,
        "c": cd,
        "p0": p0t,
        "lower": lot,
        "upper": hit,
        "p0_per_voxel": p0.ndim == 2,
        "bounds_per_voxel": lower.ndim == 2,
        "fixed_mask": fixed_mask(fixed),
        "n_samples": n_samples,
        "n_vox": n_vox,
        "max_iter": s.max_iter,
        "xtol": s.xtol,
        "ftol": s.ftol,
        "lambda0": s.lambda0,
        "lambda_min": s.lambda_min,
        "lambda_max": s.lambda_max,
        "accept_tol": s.accept_tol,
        "params": outs[0],
        "stderr_out": outs[1],
        "chi2_out": outs[2],
        "n_iter_out": outs[3],
        "status_out": outs[4],
    }
    args = kernel_signature(model, dt).bind(values)
    return args, outs


def _grid(n_vox: int) -> int:
    return -(-n_vox // BLOCK_SIZE)


def lm_host(
    model: Any, x, y, w, w_per_voxel, c, p0, lower, upper, fixed, s: LMSettings, n_threads=None
):
    """Run the kernel's host build on one chunk (arrays as in :func:`lm_numpy`; ``w`` (N,)
    shared, (V, N) per voxel, or None)."""
    args, (params, stderr, chi2, n_iter, status) = _kernel_args(
        NUMPY_BACKEND, model, x, y, w, w_per_voxel, c, p0, lower, upper, fixed, s
    )
    threads = n_threads if n_threads is not None else (os.cpu_count() or 1)
    if y.shape[0] == 0:
        return params.T.copy(), stderr.T.copy(), chi2, n_iter, status
    host_library(model).launch(
        _launcher_name(model, y.dtype),
        _grid(y.shape[0]),
        BLOCK_SIZE,
        args,
        n_threads=threads,
        strict=True,
    )
    return params.T.copy(), stderr.T.copy(), chi2, n_iter, status


def cupy_kernel(model: Any, dtype: Any) -> Any:
    """The compiled ``lm_fit<T, Model>`` CuPy kernel (built on first use, cached per device)."""
    expr = kernel_expression(model, dtype)
    source = f'#include "{model.cuda_header}"\n' + read_kernel("fit/lm_fit.cu")
    return get_module("fit/lm_fit", source, [expr]).get_function(expr)


def lm_cupy(
    backend: Any, model: Any, x, y, w, w_per_voxel, c, p0, lower, upper, fixed, s: LMSettings
):
    """Run the CUDA kernel on one chunk; inputs are host arrays or arrays already on the device
    (:func:`shared_inputs`, a resident ``y``), results come back to the host."""
    args, outs = _kernel_args(backend, model, x, y, w, w_per_voxel, c, p0, lower, upper, fixed, s)
    if y.shape[0]:  # no voxels, no launch (a zero grid is a CUDA error)
        kernel = cupy_kernel(model, np.dtype(y.dtype))
        kernel((_grid(y.shape[0]),), (BLOCK_SIZE,), args)
    params, stderr, chi2, n_iter, status = outs
    return (
        backend.to_host(params.T),
        backend.to_host(stderr.T),
        backend.to_host(chi2),
        backend.to_host(n_iter),
        backend.to_host(status),
    )
