"""ASL physics: the Buxton kinetic models and the consensus formulas against the published
equations, evaluated independently here in float64 (Buxton et al., MRM 40:383, 1998; Alsop et
al., MRM 73:102, 2015; as written in ../shared/REFERENCE.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuperf.asl.model import ASLModel
from gpuperf.asl.quantify import whitepaper_pasl, whitepaper_pcasl
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL, BUXTON_PCASL_ARTERIAL

T1T, T1B, LAM = 1.3, 1.65, 0.9
PLDS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5])
TAU = 1.8
TIS = np.array([0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0])
TI1 = 0.8


# --- the published formulas, written straight from REFERENCE.md (scalar, float64) -----------
def pcasl_published(cbf, att, t, tau, m0=1.0, alpha=0.85):
    """Buxton (p)CASL tissue signal dM at time t since the START of labelling."""
    f = cbf / 6000.0
    m0b = m0 / LAM
    t1app = 1.0 / (1.0 / T1T + f / LAM)
    if t < att:
        return 0.0
    if t < att + tau:
        return (
            2 * alpha * m0b * f * t1app * math.exp(-att / T1B) * (1 - math.exp(-(t - att) / t1app))
        )
    return (
        2
        * alpha
        * m0b
        * f
        * t1app
        * math.exp(-att / T1B)
        * math.exp(-(t - tau - att) / t1app)
        * (1 - math.exp(-tau / t1app))
    )


def pasl_published(cbf, att, t, tau, m0=1.0, alpha=0.98):
    """Buxton PASL tissue signal dM at inversion time t, bolus duration tau = TI1."""
    f = cbf / 6000.0
    m0b = m0 / LAM
    t1app = 1.0 / (1.0 / T1T + f / LAM)
    k = 1 / T1B - 1 / t1app
    if t < att:
        return 0.0
    if t < att + tau:
        q = math.exp(k * t) * (math.exp(-k * att) - math.exp(-k * t)) / (k * (t - att))
        return 2 * alpha * m0b * f * (t - att) * math.exp(-t / T1B) * q
    q = math.exp(k * t) * (math.exp(-k * att) - math.exp(-k * (att + tau))) / (k * tau)
    return 2 * alpha * m0b * f * tau * math.exp(-t / T1B) * q


def _grid(n=9):
    # no ATT equal to a sample time (the published q(t) is 0/0 there)
    cbf, att = np.meshgrid(np.linspace(5, 150, n), np.linspace(0.21, 2.97, n))
    return np.stack([cbf.ravel(), att.ravel()], axis=1)


def test_pcasl_twin_matches_published_formula_at_tau_plus_pld():
    model = ASLModel("PCASL", PLDS, TAU)
    x = model.sample_times()
    # The abscissa is tau + PLD: the defect "PLD used as t" must be impossible.
    np.testing.assert_allclose(x[:, 0], TAU + PLDS)
    p = _grid()
    f, _ = BUXTON_PCASL.evaluate(np, p, x, model.consts())
    ref = np.array([[pcasl_published(c, a, TAU + pld, TAU) for pld in PLDS] for c, a in p])
    np.testing.assert_allclose(f, ref, rtol=1e-12, atol=1e-15)
    # the test discriminates: the known defects differ far beyond the tolerance
    wrong_t = np.array([[pcasl_published(c, a, pld, TAU) for pld in PLDS] for c, a in p])
    wrong_m0 = ref * LAM  # M0 used where M0b = M0/lambda belongs
    assert np.abs(f - wrong_t).max() > 1e3 * 1e-12 * np.abs(ref).max()
    assert np.abs(f - wrong_m0).max() > 0.05 * np.abs(ref).max()


def test_pasl_twin_matches_published_formula():
    model = ASLModel("PASL", TIS, TI1)
    x = model.sample_times()
    np.testing.assert_allclose(x[:, 0], TIS)  # PASL: t is the inversion time itself
    p = _grid()
    f, _ = BUXTON_PASL.evaluate(np, p, x, model.consts())
    ref = np.array([[pasl_published(c, a, ti, TI1) for ti in TIS] for c, a in p])
    np.testing.assert_allclose(f, ref, rtol=1e-10, atol=1e-15)


def test_pasl_stable_when_t1app_equals_t1b():
    # k = 1/T1b - 1/T1app -> 0: the published q(t) is 0/0; the model's series branch must give
    # the limit 2 alpha (f/lambda) (t - ATT) e^{-t/T1b} (label decays with T1b only).
    cbf = np.array([[1e-6, 0.5]])
    x = np.array([[1.0, 0.8], [2.0, 0.8]])
    c = (T1B, T1B, LAM, 0.98)
    f, jac = BUXTON_PASL.evaluate(np, cbf, x, c)
    fl = 1e-6 / 6000
    expect = [
        2 * 0.98 * fl / LAM * 0.5 * math.exp(-1 / T1B),
        2 * 0.98 * fl / LAM * 0.8 * math.exp(-2 / T1B),
    ]
    np.testing.assert_allclose(f[0], expect, rtol=1e-9)
    assert np.all(np.isfinite(jac))


@pytest.mark.parametrize(
    "model", [BUXTON_PCASL, BUXTON_PASL, BUXTON_PCASL_ARTERIAL], ids=lambda m: m.name
)
def test_jacobian_matches_finite_differences(model):
    rng = np.random.default_rng(3)
    v = 200
    p = np.stack(
        [
            rng.uniform(5, 150, v),
            rng.uniform(0.2, 2.5, v),
            rng.uniform(0.2, 3, v),
            rng.uniform(0.1, 0.9, v),
        ],
        axis=1,
    )[:, : model.n_params]
    x = np.stack([TAU + PLDS, np.full(PLDS.size, TAU)], axis=1)
    if model is BUXTON_PASL:
        x = np.stack([TIS, np.full(TIS.size, TI1)], axis=1)
    c = (T1T, T1B, LAM, 0.85)
    _, jac = model.evaluate(np, p, x, c)
    for k in range(model.n_params):
        h = 1e-6 * max(1.0, float(np.abs(p[:, k]).max()))
        dp = np.zeros_like(p)
        dp[:, k] = h
        num = (model.evaluate(np, p + dp, x, c)[0] - model.evaluate(np, p - dp, x, c)[0]) / (2 * h)
        # samples within h of a kink (t = ATT, ATT + tau, box edges) have one-sided derivatives
        t = x[:, 0][None, :]
        kinks = [p[:, 1:2], p[:, 1:2] + x[:, 1][None, :]]
        if model.n_params == 4:
            kinks += [p[:, 3:4], p[:, 3:4] + x[:, 1][None, :]]
        smooth = np.all([np.abs(t - kk) > 10 * h for kk in kinks], axis=0)
        scale = np.abs(jac[..., k]).max() + 1e-30
        np.testing.assert_allclose(jac[..., k][smooth], num[smooth], atol=1e-6 * scale)


def test_whitepaper_pcasl_formula():
    dm, pld, tau, alpha = 0.006, 1.8, 1.8, 0.85
    expect = 6000 * LAM * dm * math.exp(pld / T1B) / (2 * alpha * T1B * (1 - math.exp(-tau / T1B)))
    got = whitepaper_pcasl(np.array(dm), pld, tau, t1_blood_s=T1B, lambda_=LAM, alpha=alpha)
    assert float(got) == pytest.approx(expect, rel=1e-12)


def test_whitepaper_pasl_formula():
    dm, ti, ti1, alpha = 0.01, 1.8, 0.8, 0.98
    expect = 6000 * LAM * dm * math.exp(ti / T1B) / (2 * alpha * ti1)
    got = whitepaper_pasl(np.array(dm), ti, ti1, t1_blood_s=T1B, lambda_=LAM, alpha=alpha)
    assert float(got) == pytest.approx(expect, rel=1e-12)


def test_single_pld_consensus_recovers_cbf_exactly():
    # Data generated under the consensus assumptions: the whole bolus delivered (ATT < PLD),
    # label relaxing with T1 of blood; that is the Buxton (p)CASL signal with T1app = T1b and
    # ATT = 0, here from the published expression with t = tau + PLD.
    cbf = np.linspace(10, 100, 50)
    pld = 1.8
    f = cbf / 6000
    dm = (
        2 * 0.85 * (f / LAM) * T1B * math.exp(-(TAU + pld - TAU) / T1B) * (1 - math.exp(-TAU / T1B))
    )
    model = ASLModel("PCASL", [pld, pld], TAU, method="auto", t1_blood_s=T1B)
    assert model.method == "whitepaper"
    fit = model.fit(
        np.stack([dm, dm], axis=1).astype(np.float32),
        1.0,
    )
    np.testing.assert_allclose(fit.cbf, cbf, rtol=1e-3)
    fit64 = ASLModel("PCASL", [pld], TAU, dtype=np.float64).fit(dm[:, None] * 1000.0, 1000.0)
    np.testing.assert_allclose(fit64.cbf, cbf, rtol=1e-5)


def test_background_suppression_scales_alpha():
    from gpuperf.asl.constants import background_suppression_factor

    assert background_suppression_factor(False, 4) == 1.0
    assert background_suppression_factor(True, 4) == pytest.approx(0.95**4)
    m = ASLModel("PCASL", [1.8], TAU, bs_factor=0.95**2)
    assert m.alpha_effective == pytest.approx(0.85 * 0.95**2)


def test_t1_blood_from_field_strength():
    from gpuperf.asl.constants import t1_blood_for_field
    from gpuperf.errors import InputError

    assert t1_blood_for_field(3.0) == 1.65
    assert t1_blood_for_field(1.5) == 1.35
    with pytest.raises(InputError, match="MagneticFieldStrength"):
        t1_blood_for_field(7.0)
    with pytest.raises(InputError, match="MagneticFieldStrength"):
        t1_blood_for_field(None)


@pytest.mark.parametrize("lt", ["PCASL", "PASL"])
def test_with_samples_is_the_model_built_at_those_samples(lt):
    """with_samples (the QC curves' fine PLD grid) is the model a constructor call gives at
    those samples with the method fixed: same sample times, constants, kinetic model, method."""

    model = ASLModel(lt, [0.5, 1.0, 1.5, 2.0], 1.8 if lt == "PCASL" else 0.7, alpha=0.8)
    pld = np.linspace(0.0, 2.2, 100)
    tau = np.full(pld.size, 1.8 if lt == "PCASL" else 0.7)
    built = ASLModel(lt, pld, tau, options=model.options.replace(model=model.method))
    fine = model.with_samples(pld, tau)
    assert fine.method == built.method == model.method
    assert fine.sample_times().tobytes() == built.sample_times().tobytes()
    assert fine.consts().tobytes() == built.consts().tobytes()
    assert fine.kinetic_model is built.kinetic_model
    assert model.pld_s.size == 4  # the original is unchanged
