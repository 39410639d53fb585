"""Input checks of :func:`gpuperf.fit.fit_lm`: shapes, finiteness, bounds and settings.

:func:`validate_inputs` turns the caller's arrays into the voxel-major arrays of the working
precision that both backends (the CUDA kernel and its NumPy twin) take, or raises
:class:`~gpuperf.errors.InputError` naming the argument (or :class:`~gpuperf.errors.GpuperfError`
for a programming error: unknown device, dtype or model size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuperf.backend import NUMPY_BACKEND, Backend
from gpuperf.errors import GpuperfError, InputError
from gpuperf.fit.models import Model

#: The kernel keeps parameters and J^T W J in registers: fixed-size arrays of at most 8.
MAX_PARAMS = 8

#: Default (xtol, ftol) per working precision: a relative step of xtol ends the fit; float32
#: cannot resolve chi2 changes much below ~1e-6 relative, float64 goes to MINPACK-like levels.
DEFAULT_TOLERANCES = {
    np.dtype(np.float32): (1e-5, 1e-10),
    np.dtype(np.float64): (1e-8, 1e-14),
}

#: Devices accepted by :func:`gpuperf.fit.fit_lm`. ``host`` (not part of the public CLI) runs
#: the CUDA kernel source compiled with g++ on the CPU (tests, benchmarks).
FIT_DEVICES = ("auto", "cpu", "gpu", "host")


@dataclass
class FitInputs:
    """Validated inputs of one fit, voxel-major, in the working dtype.

    Attributes
    ----------
    dtype : numpy.dtype
    x : (N, NX) ; y : (V, N), host or (CuPy backend) device array ; consts : (NC,)
    p0 : (P,) shared by all voxels or (V, P); host or (CuPy backend) device array
    lower, upper : both (P,) shared by all voxels, or both (V, P); host arrays
    fixed : (P,) bool
    weights : (N,) or (V, N) or None ; weights_per_voxel : bool
    max_iter : int
    """

    dtype: np.dtype
    x: np.ndarray
    y: np.ndarray
    consts: np.ndarray
    p0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    fixed: np.ndarray
    weights: np.ndarray | None
    weights_per_voxel: bool
    max_iter: int

    @property
    def p0_per_voxel(self) -> bool:
        return self.p0.ndim == 2

    @property
    def bounds_per_voxel(self) -> bool:
        return self.lower.ndim == 2

    @property
    def n_voxels(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[1])


def per_parameter(
    name: str, a: Any, n_vox: int, n_par: int, dtype: np.dtype, backend: Backend = NUMPY_BACKEND
) -> Any:
    """``a`` as given, (P,) shared by all voxels or (V, P), in ``dtype``: no (V, P) copy of a
    shared value. A device array of ``backend`` stays there (converted on the device)."""
    if backend.is_device_array(a):
        arr = a.astype(dtype, copy=False)
    else:
        arr = np.asarray(a, dtype=dtype)
    if arr.shape in ((n_par,), (n_vox, n_par)):
        return arr
    raise InputError(
        None, name, f"expected shape ({n_par},) or ({n_vox}, {n_par}); got {arr.shape}"
    )


def check_settings(mdl: Model, dtype: Any, device: str) -> np.dtype:
    """Working dtype, device name and model size; returns the dtype."""
    dt = np.dtype(dtype)
    if dt not in DEFAULT_TOLERANCES:
        raise GpuperfError(f"dtype must be float32 or float64; got {dt}")
    if device not in FIT_DEVICES:
        raise GpuperfError(f"device must be one of {', '.join(FIT_DEVICES)}; got {device!r}")
    n_par = mdl.n_params
    if not 1 <= n_par <= MAX_PARAMS:
        raise GpuperfError(f"model {mdl.name!r} has {n_par} parameters; 1..{MAX_PARAMS} allowed")
    return dt


def _weights(weights: Any, n_vox: int, n_samples: int, dt: np.dtype):
    if weights is None:
        return None, False
    wa = np.asarray(weights, dtype=dt)
    if wa.shape == (n_samples,):
        return wa, False
    if wa.shape == (n_vox, n_samples):
        return wa, True
    raise InputError(
        None,
        "weights",
        f"expected shape ({n_samples},) or ({n_vox}, {n_samples}); got {wa.shape}",
    )


def validate_inputs(
    mdl: Model,
    x: Any,
    y: Any,
    p0: Any,
    *,
    lower: Any,
    upper: Any,
    fixed: Any,
    weights: Any,
    consts: Any,
    max_iter: int,
    dtype: Any,
    device: str,
    backend: Backend = NUMPY_BACKEND,
) -> FitInputs:
    """Check and convert the arguments of :func:`gpuperf.fit.fit_lm` (same meanings).

    ``p0=None`` asks the model for its ``initial_guess``. Raises InputError naming the
    argument (``x``, ``y``, ``consts``, ``p0``, ``lower/upper``, ``fixed``, ``weights``).
    ``y`` and ``p0`` may be device arrays of ``backend`` (the fit's CuPy backend): they are
    checked by shape and converted on the device, never copied to the host.
    """
    dt = check_settings(mdl, dtype, device)
    n_par = mdl.n_params
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
    if backend.is_device_array(y):
        ya = y.astype(dt, copy=False)
    else:
        ya = np.asarray(y, dtype=dt)
    if ya.ndim != 2 or ya.shape[1] != xa.shape[0]:
        raise InputError(None, "y", f"expected shape (V, {xa.shape[0]}); got {ya.shape}")
    n_vox, n_samples = ya.shape
    ca = np.asarray(consts, dtype=dt).reshape(-1)
    n_named = len(mdl.const_names)
    if ca.size < n_named if mdl.const_table else ca.size != n_named:
        more = " and a table" if mdl.const_table else ""
        raise InputError(
            None,
            "consts",
            f"model {mdl.name!r} takes {n_named} "
            f"constants ({', '.join(mdl.const_names)}){more}; got {ca.size}",
        )
    if not np.isfinite(ca).all():
        raise InputError(None, "consts", f"model constants must be finite; got {ca.tolist()}")
    if p0 is None and n_vox == 0:
        p0 = np.zeros(n_par)
    if p0 is None:
        if backend.is_device_array(ya):
            raise GpuperfError("fit_lm: p0 is required when y is a device array")
        p0 = mdl.initial_guess(xa.astype(np.float64), ya.astype(np.float64))
    p0a = per_parameter("p0", p0, n_vox, n_par, dt, backend)
    lo_default = mdl.default_lower if mdl.default_lower is not None else (-np.inf,) * n_par
    hi_default = mdl.default_upper if mdl.default_upper is not None else (np.inf,) * n_par
    lo = per_parameter("lower", lo_default if lower is None else lower, n_vox, n_par, dt)
    hi = per_parameter("upper", hi_default if upper is None else upper, n_vox, n_par, dt)
    if lo.ndim != hi.ndim:  # one per voxel: both (the kernel reads them alike)
        lo, hi = (np.broadcast_to(a, (n_vox, n_par)) for a in (lo, hi))
    if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
        raise InputError(None, "lower/upper", "bounds must be non-NaN with lower <= upper")
    fixed_a = np.zeros(n_par, dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    if fixed_a.shape != (n_par,):
        raise InputError(None, "fixed", f"expected shape ({n_par},); got {fixed_a.shape}")
    wa, w_per_voxel = _weights(weights, n_vox, n_samples, dt)
    if int(max_iter) < 0:
        raise GpuperfError(f"max_iter must be >= 0; got {max_iter}")
    return FitInputs(
        dtype=dt,
        x=xa,
        y=ya,
        consts=ca,
        p0=p0a,
        lower=lo,
        upper=hi,
        fixed=fixed_a,
        weights=wa,
        weights_per_voxel=w_per_voxel,
        max_iter=int(max_iter),
    )
