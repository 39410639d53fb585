"""Batched Levenberg-Marquardt fitting: :func:`fit_lm`.

One nonlinear least-squares problem per voxel, all voxels at once: a fused CUDA kernel (one
thread per voxel, the whole iteration loop in one launch) on the GPU, and its NumPy twin,
vectorised over voxels, on the CPU. Both implement exactly the algorithm described in
``kernels/fit/lm_fit.cu`` (Levenberg 1944; Marquardt 1963; Press et al., Numerical Recipes
3rd ed. 15.5), with box bounds by projection and an active set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from gpuperf.backend import NUMPY_BACKEND, chunk_slices, get_backend
from gpuperf.errors import GpuperfError, InputError
from gpuperf.fit._numpy_lm import LMSettings, lm_numpy
from gpuperf.fit.models import Model, get_model
from gpuperf.progress import Reporter, ensure_reporter

#: The kernel keeps parameters and J^T W J in registers: fixed-size arrays of at most 8.
MAX_PARAMS = 8

#: Default (xtol, ftol) per working precision: a relative step of xtol ends the fit; float32
#: cannot resolve chi2 changes much below ~1e-6 relative, float64 goes to MINPACK-like levels.
DEFAULT_TOLERANCES = {
    np.dtype(np.float32): (1e-5, 1e-10),
    np.dtype(np.float64): (1e-8, 1e-14),
}
#: Damping schedule (Marquardt 1963): start, floor, ceiling; factor 10 up on a rejected step,
#: 10 down on an accepted one. Above the ceiling no step lowers chi2: a (local) minimum.
LAMBDA0 = 1e-3
LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e10
#: A trial step is accepted unless chi2 grows by more than this many machine epsilons times its
#: rounding scale sum |w r| (|y| + |f|) (see kernels/fit/lm_fit.cu).
ACCEPT_TOL_EPS = 16.0

#: Devices accepted by :func:`fit_lm`. ``host`` (not part of the public CLI) runs the CUDA
#: kernel source compiled with g++ on the CPU (tests, benchmarks).
FIT_DEVICES = ("auto", "cpu", "gpu", "host")


class FitStatus(IntEnum):
    """Per-voxel outcome of a fit."""

    CONVERGED = 0  #: a convergence test passed (or no step can lower chi2 any more)
    MAX_ITER = 1  #: max_iter trial steps without convergence; params are the last iterate
    FAILED = 2  #: non-finite input/start (params NaN) or a parameter without influence


@dataclass
class FitResult:
    """Host NumPy results of :func:`fit_lm`, voxel-major.

    Attributes
    ----------
    params : (V, P) array
        Fitted parameters (NaN where the input was not finite).
    stderr : (V, P) array
        ``sqrt(diag((J^T W J)^-1) chi2 / (N - P_free))``; 0 for fixed parameters; NaN when
        N <= P_free, when J^T W J is singular, or for FAILED voxels.
    status : (V,) int8
        :class:`FitStatus` codes.
    chi2 : (V,) array
        Final weighted sum of squared residuals.
    n_iter : (V,) int32
        Trial steps taken (accepted or rejected).
    backend, device : str
        Where the fit ran (for provenance).
    param_names : tuple of str
    elapsed_s : float
    """

    params: np.ndarray
    stderr: np.ndarray
    status: np.ndarray
    chi2: np.ndarray
    n_iter: np.ndarray
    backend: str = "numpy"
    device: str = "CPU (NumPy)"
    param_names: tuple[str, ...] = field(default_factory=tuple)
    elapsed_s: float = 0.0

    def param(self, name: str) -> np.ndarray:
        """Column of ``params`` by parameter name."""
        return self.params[:, self.param_names.index(name)]


def _per_voxel(name: str, a: Any, n_vox: int, n_par: int, dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(a, dtype=dtype)
    if arr.shape == (n_par,):
        return np.broadcast_to(arr, (n_vox, n_par))
    if arr.shape == (n_vox, n_par):
        return arr
    raise InputError(
        None, name, f"expected shape ({n_par},) or ({n_vox}, {n_par}); got {arr.shape}"
    )


def _bytes_per_voxel(n_samples: int, n_par: int, itemsize: int) -> int:
    # y, w, f, r, J (N*(4+P)), plus the (P, P) stacks (A, An, L) and (P,) vectors, twice over
    # for temporaries of the NumPy twin.
    return 2 * itemsize * (n_samples * (4 + 2 * n_par) + 4 * n_par * n_par + 16 * n_par + 8)


def fit_lm(
    model: str | Model,
    x: Any,
    y: Any,
    p0: Any = None,
    *,
    lower: Any = None,
    upper: Any = None,
    fixed: Any = None,
    weights: Any = None,
    consts: Any = (),
    max_iter: int = 100,
    xtol: float | None = None,
    ftol: float | None = None,
    dtype: Any = np.float32,
    device: str = "auto",
    memory_budget: int | None = None,
    reporter: Reporter | None = None,
) -> FitResult:
    """Fit ``model`` to every voxel of ``y`` by box-constrained Levenberg-Marquardt.

    Parameters
    ----------
    model : str or Model
        Registry name (``gpuperf.fit.models.MODELS``) or a model instance.
    x : array (N,) or (N, NX)
        Independent variable(s) shared by all voxels (e.g. time in s; ASL: columns t, tau).
    y : array (V, N)
        Data, one row per voxel.
    p0 : array (P,) or (V, P), optional
        Start. Default: ``model.initial_guess(x, y)``.
    lower, upper : array (P,) or (V, P), optional
        Box bounds (inclusive; +-inf for none). Default: the model's ``default_lower`` /
        ``default_upper``, else unbounded. Steps are projected onto the box.
    fixed : array (P,) of bool, optional
        Parameters held at ``p0`` (excluded from J^T W J; stderr 0).
    weights : array (N,) or (V, N), optional
        Non-negative weights w of chi2 = sum w (y - f)^2 (1/sigma^2 for a chi-square fit).
    consts : array (NC,)
        Model constants (e.g. T1 of blood), shared by all voxels.
    max_iter : int
        Maximum trial steps per voxel.
    xtol, ftol : float, optional
        Convergence tolerances (relative step; relative chi2 reduction, actual and
        predicted). Default: :data:`DEFAULT_TOLERANCES` for ``dtype``.
    dtype : {numpy.float32, numpy.float64}
        Working precision (the kernel is instantiated for either).
    device : {'auto', 'cpu', 'gpu', 'host'}
        ``auto``/``cpu``/``gpu`` as :func:`gpuperf.backend.get_backend`; ``host`` runs the CUDA
        kernel's source built with g++ (testing aid).
    memory_budget : int, optional
        Bytes per chunk (default: the backend's budget). Results do not depend on it.
    reporter : Reporter, optional
        Progress over chunks (silent by default).

    Returns
    -------
    FitResult
        Voxel-major host arrays in ``dtype``; non-finite input voxels are FAILED with NaN
        parameters, never silently NaN with another status.
    """
    t_start = time.perf_counter()
    mdl = get_model(model)
    dt = np.dtype(dtype)
    if dt not in DEFAULT_TOLERANCES:
        raise GpuperfError(f"dtype must be float32 or float64; got {dt}")
    if device not in FIT_DEVICES:
        raise GpuperfError(f"device must be one of {', '.join(FIT_DEVICES)}; got {device!r}")
    n_par = mdl.n_params
    if not 1 <= n_par <= MAX_PARAMS:
        raise GpuperfError(f"model {mdl.name!r} has {n_par} parameters; 1..{MAX_PARAMS} allowed")

    xa = np.asarray(x, dtype=dt)
    if xa.ndim == 1:
        xa = xa[:, None]
    n_x = len(mdl.x_names)
    if xa.ndim != 2 or xa.shape[1] != n_x:
        raise InputError(
            None, "x", f"expected shape (N, {n_x}) ({', '.join(mdl.x_names)}); got {np.shape(x)}"
        )
    if not np.isfinite(xa).all():
        raise InputError(None, "x", "the independent variable must be finite everywhere")
    ya = np.asarray(y, dtype=dt)
    if ya.ndim != 2 or ya.shape[1] != xa.shape[0]:
        raise InputError(None, "y", f"expected shape (V, {xa.shape[0]}); got {ya.shape}")
    n_vox, n_samples = ya.shape
    ca = np.asarray(consts, dtype=dt).reshape(-1)
    if ca.size != len(mdl.const_names):
        raise InputError(
            None,
            "consts",
            f"model {mdl.name!r} takes {len(mdl.const_names)} "
            f"constants ({', '.join(mdl.const_names)}); got {ca.size}",
        )
    if not np.isfinite(ca).all():
        raise InputError(None, "consts", f"model constants must be finite; got {ca.tolist()}")
    if p0 is None and n_vox == 0:
        p0 = np.zeros(n_par)
    if p0 is None:
        p0 = mdl.initial_guess(xa.astype(np.float64), ya.astype(np.float64))
    p0a = _per_voxel("p0", p0, n_vox, n_par, dt)
    lo_default = mdl.default_lower if mdl.default_lower is not None else (-np.inf,) * n_par
    hi_default = mdl.default_upper if mdl.default_upper is not None else (np.inf,) * n_par
    lo = _per_voxel("lower", lo_default if lower is None else lower, n_vox, n_par, dt)
    hi = _per_voxel("upper", hi_default if upper is None else upper, n_vox, n_par, dt)
    if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
        raise InputError(None, "lower/upper", "bounds must be non-NaN with lower <= upper")
    fixed_a = np.zeros(n_par, dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    if fixed_a.shape != (n_par,):
        raise InputError(None, "fixed", f"expected shape ({n_par},); got {fixed_a.shape}")
    w_per_voxel = False
    wa = None
    if weights is not None:
        wa = np.asarray(weights, dtype=dt)
        if wa.shape == (n_samples,):
            w_per_voxel = False
        elif wa.shape == (n_vox, n_samples):
            w_per_voxel = True
        else:
            raise InputError(
                None,
                "weights",
                f"expected shape ({n_samples},) or ({n_vox}, {n_samples}); got {wa.shape}",
            )
    if int(max_iter) < 0:
        raise GpuperfError(f"max_iter must be >= 0; got {max_iter}")
    xtol_d, ftol_d = DEFAULT_TOLERANCES[dt]
    settings = LMSettings(
        max_iter=int(max_iter),
        xtol=xtol_d if xtol is None else float(xtol),
        ftol=ftol_d if ftol is None else float(ftol),
        lambda0=LAMBDA0,
        lambda_min=LAMBDA_MIN,
        lambda_max=LAMBDA_MAX,
        accept_tol=ACCEPT_TOL_EPS * float(np.finfo(dt).eps),
    )

    if device == "host":
        backend, backend_name, device_name = NUMPY_BACKEND, "host-cpp", "CPU (g++ build of kernel)"
    else:
        backend = get_backend(device)
        backend_name, device_name = backend.name, backend.device_name

    params = np.empty((n_vox, n_par), dtype=dt)
    stderr = np.empty((n_vox, n_par), dtype=dt)
    chi2 = np.empty(n_vox, dtype=dt)
    n_iter = np.empty(n_vox, dtype=np.int32)
    status = np.empty(n_vox, dtype=np.int8)
    slices = chunk_slices(
        n_vox, _bytes_per_voxel(n_samples, n_par, dt.itemsize), memory_budget, backend
    )
    rep = ensure_reporter(reporter)
    for sl in rep.track(slices, total=len(slices), description=f"fitting {mdl.name}"):
        yc, p0c, loc, hic = ya[sl], p0a[sl], lo[sl], hi[sl]
        wc = None if wa is None else (wa[sl] if w_per_voxel else wa)
        if device == "host":
            from gpuperf.fit._kernel_lm import lm_host

            out = lm_host(mdl, xa, yc, wc, w_per_voxel, ca, p0c, loc, hic, fixed_a, settings)
        elif backend.is_gpu:
            from gpuperf.fit._kernel_lm import lm_cupy

            out = lm_cupy(
                backend, mdl, xa, yc, wc, w_per_voxel, ca, p0c, loc, hic, fixed_a, settings
            )
        else:
            if wc is None:
                wfull = np.broadcast_to(np.ones((), dtype=dt), yc.shape)
            elif w_per_voxel:
                wfull = wc
            else:
                wfull = np.broadcast_to(wc, yc.shape)
            out = lm_numpy(mdl, xa, yc, wfull, ca, p0c, loc, hic, fixed_a, settings)
        params[sl], stderr[sl], chi2[sl], n_iter[sl], status[sl] = out
    return FitResult(
        params=params,
        stderr=stderr,
        status=status,
        chi2=chi2,
        n_iter=n_iter,
        backend=backend_name,
        device=device_name,
        param_names=tuple(mdl.param_names),
        elapsed_s=time.perf_counter() - t_start,
    )
