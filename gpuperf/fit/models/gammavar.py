"""Gamma-variate bolus model: NumPy twin of ``kernels/models/gammavar.cuh``."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.fit.models.base import Model

#: Shape ``a`` of the initial guess (typical first-pass bolus; Benner et al., MRM 1997).
GUESS_SHAPE = 3.0
#: Fraction of the peak that marks the bolus foot in the initial guess.
GUESS_FOOT_FRACTION = 0.1


class GammaVar(Model):
    """``f(t) = A (t - t0)^a exp(-(t - t0)/b)`` for t > t0, 0 for t <= t0.

    Thompson et al., Circ Res 14:502 (1964); for DSC first-pass/AIF fits, Benner et al.,
    MRM 38:29 (1997). Parameters ``(A, t0, a, b)``: A in signal units, t0 and b in the units of
    ``t``, a dimensionless. Peak at ``t0 + a b``; first moment (mean transit time of the
    bolus) ``(a + 1) b`` -- not ``a b``, which is the time to peak.

    ``s^a e^{-s/b}`` is computed as ``exp(a ln s - s/b)``; ``df/dt0 = f/b - A a s^(a-1)
    e^{-s/b}`` in the same exponential form, finite for every s > 0. At and before t0 the value
    and all derivatives are 0 (one-sided Jacobian). Default bounds: A >= 0, a >= 0, b >= 1e-6
    (units of t); t0 free.
    """

    name = "gammavar"
    param_names = ("amplitude", "t0", "alpha", "beta")
    param_units = ("a.u.", "[t]", "1", "[t]")
    x_names = ("t",)
    const_names = ()
    cuda_header = "models/gammavar.cuh"
    cuda_struct = "GammaVar"
    default_lower = (0.0, -np.inf, 0.0, 1e-6)
    default_upper = (np.inf, np.inf, np.inf, np.inf)

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        t = x[:, 0][None, :]  # (1, N)
        amp = p[:, 0:1]
        t0 = p[:, 1:2]
        a = p[:, 2:3]
        b = p[:, 3:4]
        s = t - t0
        inside = s > 0
        one = xp.ones((), dtype=s.dtype)
        s_safe = xp.where(inside, s, one)  # log/exp only where used; no warnings elsewhere
        ls = xp.log(s_safe)
        e = xp.exp(a * ls - s_safe / b)
        f = amp * e
        d_t0 = f / b - amp * a * xp.exp((a - one) * ls - s_safe / b)
        d_a = f * ls
        d_b = f * s_safe / (b * b)
        zero = xp.zeros((), dtype=s.dtype)
        f = xp.where(inside, f, zero)
        jac = xp.stack(
            [
                xp.where(inside, e, zero),
                xp.where(inside, d_t0, zero),
                xp.where(inside, d_a, zero),
                xp.where(inside, d_b, zero),
            ],
            axis=-1,
        )
        return f, jac

    def initial_guess(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Start from the curve shape (vectorised over voxels).

        Peak time ``tp`` and height ``yp`` from the maximum sample; ``t0`` = time of the last
        sample before the peak that is below 10 % of the peak (the first sample otherwise);
        ``a = 3`` and ``b = (tp - t0)/a`` put the model's peak at the observed one, and ``A``
        matches its height: ``A = yp / ((a b)^a e^-a)``.
        """
        t = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, 0]
        yv = np.asarray(y, dtype=np.float64)
        yf = np.where(np.isfinite(yv), yv, -np.inf)
        ip = np.argmax(yf, axis=1)
        yp = np.take_along_axis(yf, ip[:, None], axis=1)[:, 0]
        tp = t[ip]
        n = t.size
        before = np.arange(n)[None, :] < ip[:, None]
        low = before & (yf < GUESS_FOOT_FRACTION * yp[:, None])
        # last index before the peak with a low value (0 when there is none)
        last_low = np.where(low, np.arange(n)[None, :], 0).max(axis=1)
        t0 = t[last_low]
        dt = np.median(np.diff(t)) if n > 1 else 1.0
        rise = np.maximum(tp - t0, dt)
        t0 = np.where(tp - t0 < dt, tp - dt, t0)
        a = np.full_like(tp, GUESS_SHAPE)
        b = rise / a
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            amp = yp / ((a * b) ** a * np.exp(-a))
        amp = np.where(np.isfinite(amp) & (amp > 0), amp, np.where(yp > 0, yp, 1.0))
        return np.stack([amp, t0, a, b], axis=1)
