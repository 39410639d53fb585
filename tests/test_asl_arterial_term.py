"""The macrovascular (arterial) term against its published formula, independently of the
fitted model: ``2 alpha (aBV/lambda) e^{-aBAT/T1b}`` on ``[aBAT, aBAT + tau)``, 0 outside
(Chappell et al., MRM 63:1357, 2010; REFERENCE.md). A model that dropped ``/lambda`` (or
``alpha``, or the decay) from the arterial term alone fails here, whereas a fit of data made
with the model itself would not notice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuperf.fit import fit_lm
from gpuperf.fit.models.buxton import BUXTON_PCASL_ARTERIAL, BUXTON_PCASL_ARTERIAL_SLICED

T1T, T1B, LAM, ALPHA = 1.3, 1.65, 0.9, 0.85
TAU = 1.8


def published_arterial(abv_percent: float, abat: float, t: float, tau: float) -> float:
    """2 alpha (aBV/lambda) e^{-aBAT/T1b} for aBAT <= t < aBAT + tau, else 0 (dM/M0)."""
    if abat <= t < abat + tau:
        return 2.0 * ALPHA * (abv_percent / 100.0) / LAM * math.exp(-abat / T1B)
    return 0.0


def _grid():
    t = np.array([0.3, 0.7, 1.0, 1.5, 1.99, 2.0, 2.4, 2.8, 3.3, 3.79, 3.8, 4.3])
    cases = [(1.5, 0.7), (0.4, 1.0), (2.0, 0.2), (1.0, 2.0)]  # (aBV %, aBAT s)
    return t, cases


def test_numpy_twin_equals_published_formula():
    t, cases = _grid()
    x = np.stack([t, np.full(t.size, TAU)], 1)
    for abv, abat in cases:
        # CBF 0: the tissue term vanishes, only the arterial term is left
        f, jac = BUXTON_PCASL_ARTERIAL.evaluate(np, np.array([[0.0, 1.0, abv, abat]]), x,
                                                (T1T, T1B, LAM, ALPHA))  # fmt: skip
        want = [published_arterial(abv, abat, tt, TAU) for tt in t]
        np.testing.assert_allclose(f[0], want, rtol=1e-12, atol=0)
        # edges: inside at t = aBAT, outside at t = aBAT + tau
        assert (f[0] != 0).sum() == sum(abat <= tt < abat + TAU for tt in t)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sliced", [False, True])
def test_kernel_host_build_equals_published_formula(dtype, sliced):
    """The CUDA header (host build): data = published arterial term; at the true parameters
    (zero iterations) the residual is rounding only, and a /lambda-less term would leave
    (1/lambda - 1)^2 of the signal."""
    t, cases = _grid()
    dt = 0.25 if sliced else 0.0
    x = np.stack([t, np.full(t.size, TAU)], 1)
    y = np.array([[published_arterial(a, b, tt + dt, TAU) for tt in t] for a, b in cases])
    p = np.array([[0.0, 1.0, a, b] for a, b in cases])
    model = BUXTON_PCASL_ARTERIAL
    if sliced:
        model = BUXTON_PCASL_ARTERIAL_SLICED
        p = np.column_stack([p, np.full(len(cases), dt)])
    r = fit_lm(model, x, y, p, consts=(T1T, T1B, LAM, ALPHA), max_iter=0, dtype=dtype,
               device="host", fixed=[True] * p.shape[1])  # fmt: skip
    scale = (y**2).sum(axis=1)
    eps = float(np.finfo(dtype).eps)
    assert np.all(np.asarray(r.chi2) <= 100 * eps**2 * scale + 1e-30)
    no_lambda = ((y * LAM - y) ** 2).sum(axis=1)  # what a dropped /lambda would leave
    assert np.all(no_lambda > 1e6 * (100 * eps**2 * scale))
