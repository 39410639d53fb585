"""Mono-exponential decay ``f(t) = S0 exp(-R t)``: NumPy twin of ``kernels/models/monoexp.cuh``."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.fit.models.base import Model


class MonoExp(Model):
    """``f(t) = S0 exp(-R t)``.

    Parameters ``(S0, R)``: S0 in signal units, R in 1/[t] (e.g. R2* in 1/s for t in s). The
    rate form is used rather than ``exp(-t/T)``: finite at R = 0 and a better-conditioned
    Jacobian. ``x`` has one column, ``t``; no constants.
    """

    name = "monoexp"
    param_names = ("s0", "r")
    param_units = ("a.u.", "1/[t]")
    x_names = ("t",)
    const_names = ()
    cuda_header = "models/monoexp.cuh"
    cuda_struct = "MonoExp"

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        t = x[:, 0][None, :]  # (1, N)
        s0 = p[:, 0:1]
        r = p[:, 1:2]
        e = xp.exp(-r * t)
        f = s0 * e
        jac = xp.stack([e, -t * f], axis=-1)
        return f, jac

    def initial_guess(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Log-linear least squares over the positive samples (vectorised over voxels).

        ``ln y = ln S0 - R t`` weighted by ``y^2`` (the first-order variance of ``ln y`` is
        ``sigma^2 / y^2``). Voxels with fewer than two positive samples get ``(max y, 0)``.
        """
        t = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, 0]
        yv = np.asarray(y, dtype=np.float64)
        pos = np.isfinite(yv) & (yv > 0)
        wts = np.where(pos, np.where(pos, yv, 0.0) ** 2, 0.0)
        ly = np.log(np.where(pos, yv, 1.0))
        sw = wts.sum(axis=1)
        swt = (wts * t).sum(axis=1)
        swtt = (wts * t * t).sum(axis=1)
        swy = (wts * ly).sum(axis=1)
        swty = (wts * t * ly).sum(axis=1)
        det = sw * swtt - swt * swt
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (sw * swty - swt * swy) / det
            icpt = (swy - slope * swt) / sw
        ok = (pos.sum(axis=1) >= 2) & np.isfinite(slope) & np.isfinite(icpt) & (det > 0)
        fallback = np.where(np.isfinite(yv), yv, -np.inf).max(axis=1)
        s0 = np.where(ok, np.exp(np.where(ok, icpt, 0.0)), fallback)
        r = np.where(ok, -slope, 0.0)
        return np.stack([s0, r], axis=1)
