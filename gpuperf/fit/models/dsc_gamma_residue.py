"""DSC tissue curve with a gamma transit-time residue: NumPy twin of
``kernels/models/dsc_gamma_residue.cuh``.

Model-based deconvolution (Mouridsen et al., JCBFM 34:1511, 2014; the capillary transit-time
model of Jespersen & Ostergaard, JCBFM 32:264, 2012)::

    f(t) = F (C_a conv R)(t - delay),   R(s) = Q(a, a s / MTT) = 1 - GammaCDF(s; a, MTT/a)

with ``F = (rho/kH) CBF / 6000`` (1/s), CTH = MTT / sqrt(a). The AIF is a continuous table
(:func:`aif_table`): linear between fine nodes, its integral exact; the convolution is the
expectation over the transit time ``u ~ Gamma(a, MTT/a)`` of ``A(tau) - A(tau - u)`` on a fixed
grid ``u = MTT q_j`` with normalised weights (see the header for the derivatives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.fit.models.base import Model

#: Leading named constants; the AIF table (C then A, M values each) follows them.
N_HEADER = 5
#: Default transit-time quadrature: q = u / MTT on (0, Q_MAX], step Q_STEP (midpoint rule).
Q_STEP = 0.05
Q_MAX = 8.0


def aif_table(
    t0_s: float, step_s: float, c_fine: np.ndarray, q_step: float = Q_STEP, q_max: float = Q_MAX
) -> np.ndarray:
    """The model's constants for an AIF sampled on a fine grid.

    Parameters
    ----------
    t0_s, step_s : float
        Time of the first node and node spacing (s).
    c_fine : array (M,)
        The continuous AIF at ``t0_s + j step_s`` (linear in between; 0 before ``t0_s``,
        constant after the last node).
    q_step, q_max : float
        Transit-time quadrature in units of MTT.

    Returns
    -------
    ndarray (5 + 2 M,), float64: ``(t0, h, M, dq, J, C..., A...)`` with ``A`` the exact
    integral of the piecewise-linear ``C`` from ``t0``.
    """
    cf = np.asarray(c_fine, dtype=np.float64).reshape(-1)
    if cf.size < 2 or not np.isfinite(cf).all():
        raise ValueError("the AIF table needs at least 2 finite nodes")
    a = np.concatenate([[0.0], np.cumsum(0.5 * step_s * (cf[1:] + cf[:-1]))])
    n_q = int(round(q_max / q_step))
    head = [float(t0_s), float(step_s), float(cf.size), float(q_step), float(n_q)]
    return np.concatenate([head, cf, a])


def _aif_at(xp: Any, u: Any, c: Any, dt: Any) -> tuple[Any, Any]:
    """C(u), A(u) of the table, element-wise, with the kernel's arithmetic."""
    t0, h = c[0], c[1]
    m = int(c[2])
    tc = c[N_HEADER : N_HEADER + m]
    ta = c[N_HEADER + m : N_HEADER + 2 * m]
    s = (u - t0) / h
    before = ~(s > 0)
    after = s >= dt.type(m - 1)
    i = xp.clip(xp.where(before | after, 0, s).astype(np.int32), 0, m - 2)
    fr = s - i.astype(dt)
    c_i, c_n, a_i = tc[i], tc[i + 1], ta[i]
    dc = c_n - c_i
    ca = c_i + fr * dc
    ia = a_i + h * fr * (c_i + dt.type(0.5) * fr * dc)
    last_c = tc[m - 1]
    ia_after = ta[m - 1] + (u - (t0 + dt.type(m - 1) * h)) * last_c
    zero = dt.type(0)
    ca = xp.where(before, zero, xp.where(after, last_c, ca))
    ia = xp.where(before, zero, xp.where(after, ia_after, ia))
    return ca, ia


class DSCGammaResidue(Model):
    """``F (C_a conv R)(t - delay)`` with a gamma transit-time residue (see the module).

    Parameters ``(flow, mtt, shape, delay)``: flow F in 1/s (concentration units cancel),
    MTT and delay in s, shape a >= 1 dimensionless. ``x`` = time (s); ``consts`` = the output
    of :func:`aif_table` (a variable-length table after 5 named constants).
    """

    name = "dsc_gamma_residue"
    param_names = ("flow", "mtt", "shape", "delay")
    param_units = ("1/s", "s", "1", "s")
    x_names = ("t",)
    const_names = ("t0_s", "step_s", "n_table", "q_step", "n_q")
    const_table = True
    cuda_header = "models/dsc_gamma_residue.cuh"
    cuda_struct = "DSCGammaResidue"
    default_lower = (0.0, 0.5, 1.0, -10.0)
    default_upper = (np.inf, 40.0, 50.0, 10.0)

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """Model value (V, N) and Jacobian (V, N, 4), the kernel's sums in its order."""
        dt = np.dtype(p.dtype)
        c = xp.asarray(c, dtype=dt)
        flow, mtt, a, delay = (p[:, k : k + 1] for k in range(4))
        hc = np.asarray(c[:N_HEADER].get() if hasattr(c, "get") else c[:N_HEADER])
        dq = dt.type(hc[3])
        n_q = int(hc[4])
        one = dt.type(1)
        tau = x[:, 0][None, :].astype(dt) - delay
        c_tau, a_tau = _aif_at(xp, tau, c, dt)
        shape = tau.shape
        sk = xp.zeros(shape, dtype=dt)
        skd, skg, skgd, skqc, skc = (xp.zeros(shape, dtype=dt) for _ in range(5))
        for j in range(n_q):
            q = (dt.type(j) + dt.type(0.5)) * dq
            lq = dt.type(np.log(q))
            k = xp.exp((a - one) * lq - a * (q - one))  # (V, 1)
            g = lq - q + one
            cu, au = _aif_at(xp, tau - mtt * q, c, dt)
            d = a_tau - au
            sk = sk + k
            skd = skd + k * d
            skg = skg + k * g
            skgd = skgd + k * g * d
            skqc = skqc + k * q * cu
            skc = skc + k * cu
        conv = skd / sk
        f = flow * conv
        jac = xp.stack(
            [
                conv,
                flow * skqc / sk,
                flow * (skgd / sk - conv * (skg / sk)),
                -flow * (c_tau - skc / sk),
            ],
            axis=-1,
        )
        return f, jac
