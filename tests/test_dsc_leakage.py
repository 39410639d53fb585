"""BSW leakage correction (Boxerman, Schmainda & Weisskoff 2006)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuperf.dsc import DSCModel
from gpuperf.dsc.leakage import bsw_correct, cumulative_integral
from gpuperf.dsc.simulate import aif_curve, phantom_arrays, tissue_curve


def _population(k2_values, n_normal=200, seed=0):
    tr = 1.0
    t = np.arange(80) * tr
    rng = np.random.default_rng(seed)
    base = tissue_curve(t, 40.0, 5.0)
    scale = rng.uniform(0.5, 1.5, n_normal)
    normal = scale[:, None] * base[None, :]
    rbar = normal.mean(axis=0)
    integ = cumulative_integral(rbar, tr)
    leaky = np.array([base - k * integ for k in k2_values])
    return np.vstack([normal, leaky]), base, tr, t


@pytest.mark.parametrize("k2", [0.02, -0.02])
def test_bsw_recovers_k2_both_signs_and_cbv(k2):
    curves, base, tr, t = _population([k2] * 5)
    corrected, res = bsw_correct(curves, tr, np.ones(len(curves), bool))
    np.testing.assert_allclose(res.k2[-5:], k2, rtol=0.02)
    np.testing.assert_allclose(res.k2[:-5], 0, atol=1e-6)
    assert not res.reference_voxels[-5:].any()  # leaky voxels left out of the reference
    aif = aif_curve(t)
    leaky_fit = DSCModel(0.03, tr, "csvd", leakage="none", device="cpu").fit_concentration(
        curves[-5:], aif
    )
    model = DSCModel(0.03, tr, "csvd", device="cpu")
    ref = model.fit_concentration(base[None, :], aif).cbv[0]
    fixed = model.fit_concentration(corrected[-5:], aif).cbv
    np.testing.assert_allclose(fixed, ref, rtol=0.10)
    assert np.all(np.abs(leaky_fit.cbv / ref - 1) > 0.10)  # the leak did matter


def test_bsw_reference_is_brain_average_not_aif():
    """Regressing on the AIF instead of the brain mean (a known defect) gives wrong K2."""
    curves, base, tr, t = _population([0.02] * 5)
    _, res = bsw_correct(curves, tr, np.ones(len(curves), bool))
    ref = res.reference / res.reference.max()
    aif = aif_curve(t)
    assert np.abs(ref - aif / aif.max()).max() > 0.1
    np.testing.assert_allclose(ref, base / base.max(), atol=1e-6)


def test_bsw_on_phantom_via_model():
    ph = phantom_arrays(shape=(24, 24, 2), noise_sd=0.0)
    model = DSCModel(ph["te_s"], ph["tr_s"], "csvd", leakage="bsw", device="cpu")
    fit = model.fit(ph["signal"], aif=ph["artery"], mask=ph["brain"])
    plain = DSCModel(ph["te_s"], ph["tr_s"], "csvd", device="cpu").fit(
        ph["signal"], aif=ph["artery"], mask=ph["brain"]
    )
    leaky = ph["leaky"]
    assert np.nanmedian(fit.k2[leaky == 1]) > 0.005
    assert np.nanmedian(fit.k2[leaky == 2]) < -0.005
    for code in (1, 2):
        sel = leaky == code
        err_fixed = np.abs(np.nanmedian(fit.cbv[sel] / ph["cbv"][sel]) - 1)
        err_plain = np.abs(np.nanmedian(plain.cbv[sel] / ph["cbv"][sel]) - 1)
        assert err_fixed < 0.10 and err_fixed < err_plain
