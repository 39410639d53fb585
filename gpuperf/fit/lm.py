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
from gpuperf.fit._numpy_lm import LMSettings, lm_numpy
from gpuperf.fit.models import Model, get_model
from gpuperf.fit.validate import (  # noqa: F401 - re-exported (public names of this module)
    DEFAULT_TOLERANCES,
    FIT_DEVICES,
    MAX_PARAMS,
    check_settings,
    validate_inputs,
)
from gpuperf.progress import Reporter, ensure_reporter
from gpuperf.status import Status, from_fit_codes

#: Damping schedule (Marquardt 1963): start, floor, ceiling; factor 10 up on a rejected step,
#: 10 down on an accepted one. Above the ceiling no step lowers chi2: a (local) minimum.
LAMBDA0 = 1e-3
LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e10
#: A trial step is accepted unless chi2 grows by more than this many machine epsilons times its
#: rounding scale sum |w r| (|y| + |f|) (see kernels/fit/lm_fit.cu).
ACCEPT_TOL_EPS = 16.0


class FitStatus(IntEnum):
    """Per-voxel outcome of a fit, as :class:`gpuperf.status.Status` flags.

    The backends (CUDA kernel and NumPy twin) write their own codes 0/1/2; :func:`fit_lm`
    converts them with :func:`gpuperf.status.from_fit_codes`.
    """

    CONVERGED = int(Status.OK)  #: a convergence test passed (or no step can lower chi2 any more)
    #: max_iter trial steps without convergence; params are the last iterate
    MAX_ITER = int(Status.MAX_ITER)
    #: non-finite input/start (params NaN) or a parameter without influence
    FAILED = int(Status.FIT_FAILED)


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
    status : (V,) int32
        :class:`gpuperf.status.Status` flags: 0 converged, ``MAX_ITER``, ``FIT_FAILED``
        (also importable as :class:`FitStatus`).
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
        Data, one row per voxel: a host array, or on the CuPy backend a device array, which
        stays there (a caller fitting the same curves from several starts uploads them once).
    p0 : array (P,) or (V, P), optional
        Start (a device array like ``y``, or a host array). Default:
        ``model.initial_guess(x, y)`` (host ``y`` only).
    lower, upper : array (P,) or (V, P), optional
        Box bounds (inclusive; +-inf for none). Default: the model's ``default_lower`` /
        ``default_upper``, else unbounded. Steps are projected onto the box. Values shared
        by every voxel ((P,)) reach the kernel as P numbers, never as a (V, P) copy.
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
    check_settings(mdl, dtype, device)
    if device == "host":
        backend, backend_name, device_name = NUMPY_BACKEND, "host-cpp", "CPU (g++ build of kernel)"
    else:
        backend = get_backend(device)
        backend_name, device_name = backend.name, backend.device_name
    inp = validate_inputs(
        mdl,
        x,
        y,
        p0,
        lower=lower,
        upper=upper,
        fixed=fixed,
        weights=weights,
        consts=consts,
        max_iter=max_iter,
        dtype=dtype,
        device=device,
        backend=backend,
    )
    dt, xa, ya, ca = inp.dtype, inp.x, inp.y, inp.consts
    p0a, lo, hi, fixed_a = inp.p0, inp.lower, inp.upper, inp.fixed
    wa, w_per_voxel = inp.weights, inp.weights_per_voxel
    n_vox, n_samples, n_par = inp.n_voxels, inp.n_samples, mdl.n_params
    xtol_d, ftol_d = DEFAULT_TOLERANCES[dt]
    settings = LMSettings(
        max_iter=inp.max_iter,
        xtol=xtol_d if xtol is None else float(xtol),
        ftol=ftol_d if ftol is None else float(ftol),
        lambda0=LAMBDA0,
        lambda_min=LAMBDA_MIN,
        lambda_max=LAMBDA_MAX,
        accept_tol=ACCEPT_TOL_EPS * float(np.finfo(dt).eps),
    )

    params = np.empty((n_vox, n_par), dtype=dt)
    stderr = np.empty((n_vox, n_par), dtype=dt)
    chi2 = np.empty(n_vox, dtype=dt)
    n_iter = np.empty(n_vox, dtype=np.int32)
    codes = np.empty(n_vox, dtype=np.int8)  # the backends' 0/1/2
    slices = chunk_slices(
        n_vox, _bytes_per_voxel(n_samples, n_par, dt.itemsize), memory_budget, backend
    )
    if backend.is_gpu and slices:
        from gpuperf.fit._kernel_lm import lm_cupy, shared_inputs

        # what every chunk shares goes up once; shared start values and bounds as (P,)
        xa, ca, wa, p0a, lo, hi = shared_inputs(backend, xa, ca, wa, w_per_voxel, p0a, lo, hi, dt)
    rep = ensure_reporter(reporter)
    for sl in rep.track(slices, total=len(slices), description=f"fitting {mdl.name}"):
        yc = ya[sl]
        p0c = p0a[sl] if inp.p0_per_voxel else p0a
        loc, hic = (lo[sl], hi[sl]) if inp.bounds_per_voxel else (lo, hi)
        wc = None if wa is None else (wa[sl] if w_per_voxel else wa)
        if device == "host":
            from gpuperf.fit._kernel_lm import lm_host

            out = lm_host(mdl, xa, yc, wc, w_per_voxel, ca, p0c, loc, hic, fixed_a, settings)
        elif backend.is_gpu:
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
            shape = (yc.shape[0], n_par)  # shared values as broadcast views: no copies
            p0c, loc, hic = (np.broadcast_to(a, shape) for a in (p0c, loc, hic))
            out = lm_numpy(mdl, xa, yc, wfull, ca, p0c, loc, hic, fixed_a, settings)
        params[sl], stderr[sl], chi2[sl], n_iter[sl], codes[sl] = out
    return FitResult(
        params=params,
        stderr=stderr,
        status=from_fit_codes(codes),
        chi2=chi2,
        n_iter=n_iter,
        backend=backend_name,
        device=device_name,
        param_names=tuple(mdl.param_names),
        elapsed_s=time.perf_counter() - t_start,
    )
