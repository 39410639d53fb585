"""The voxelwise kinetic-model fit of ASL (method ``gkm``): start, fit, kinks, arterial part.

Buxton's general kinetic model (Buxton et al., MRM 40:383, 1998) is fitted for CBF and ATT by
the batched Levenberg-Marquardt fitter :func:`gpuperf.fit.fit_lm` (CUDA kernel or NumPy twin);
optima at a kink of the model are finished by :mod:`gpuperf.asl.kinks`, the macrovascular
component by :mod:`gpuperf.asl.arterial`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.asl.arterial import fit_arterial
from gpuperf.asl.kinks import snap_kinks
from gpuperf.fit import fit_lm
from gpuperf.status import DTYPE as STATUS_DTYPE


def initial_params(model: Any, y: np.ndarray) -> np.ndarray:
    """Starting values (V, P): ATT at ``att_start_s`` and CBF from a linear least-squares
    scale of the model at that ATT (the signal is nearly linear in CBF)."""
    x = model.sample_times()
    ref = np.array([[50.0, model.att_start_s] + ([0.0, 0.0] if model.arterial else [])])
    g, _ = model.kinetic_model.evaluate(np, ref, x, model.consts())
    g = g[0]
    gg = float(g @ g)
    lo, hi = model.cbf_bounds
    if gg > 0:
        cbf0 = 50.0 * (y.astype(np.float64) @ g) / gg
    else:
        cbf0 = np.full(y.shape[0], 50.0)
    span = hi - lo
    cbf0 = np.clip(np.nan_to_num(cbf0, nan=50.0), lo + 1e-3 * span, hi - 1e-3 * span)
    cols = [cbf0, np.full(y.shape[0], model.att_start_s)]
    if model.arterial:
        cols += [np.full(y.shape[0], 0.5), np.full(y.shape[0], 0.5 * model.att_start_s)]
    return np.stack(cols, axis=1).astype(model.dtype)


def fit_kinetic(model: Any, y: np.ndarray, reporter: Any = None) -> dict[str, Any]:
    """Fit ``y = dM/M0`` (V, K) of valid voxels; returns the per-voxel maps, ``status``
    (:class:`gpuperf.status.Status` flags) and ``_n_iter``."""
    n_vox, n = y.shape
    if n_vox == 0:
        empty = np.zeros(0, dtype=np.float32)
        res = {
            "cbf": empty,
            "att": empty,
            "cbf_stderr": empty,
            "att_stderr": empty,
            "residual": empty,
            "status": np.zeros(0, STATUS_DTYPE),
            "_n_iter": np.zeros(0),
        }
        if model.arterial:
            res.update(abv=empty, abat=empty, abv_stderr=empty, abat_stderr=empty)
        return res
    p0 = initial_params(model, y)
    common = {
        "consts": model.consts(),
        "max_iter": model.max_iter,
        "dtype": model.dtype,
        "device": model.device,
        "memory_budget": model.memory_budget,
        "reporter": reporter,
    }
    r = fit_lm(
        model.kinetics.tissue,
        model.sample_times(),
        y,
        p0[:, :2],
        lower=np.array([model.cbf_bounds[0], model.att_bounds[0]]),
        upper=np.array([model.cbf_bounds[1], model.att_bounds[1]]),
        **common,
    )
    params = np.asarray(r.params, dtype=np.float64)
    stderr = np.asarray(r.stderr, dtype=np.float64)
    chi2 = np.asarray(r.chi2, dtype=np.float64)
    status = np.asarray(r.status, dtype=STATUS_DTYPE)
    n_iter = np.asarray(r.n_iter)
    snap_kinks(model, y, params, stderr, chi2, status, common)
    if model.arterial:
        params, stderr, chi2, status, n_iter = fit_arterial(
            model, y, params, stderr, chi2, status, n_iter, common
        )
    res = {
        "cbf": params[:, 0],
        "att": params[:, 1],
        "cbf_stderr": stderr[:, 0],
        "att_stderr": stderr[:, 1],
        "residual": np.sqrt(chi2 / n).astype(np.float32),
        "status": status,
        "_n_iter": n_iter,
    }
    if model.arterial:
        res.update(
            abv=params[:, 2],
            abat=params[:, 3],
            abv_stderr=stderr[:, 2],
            abat_stderr=stderr[:, 3],
        )
    return res
