"""Kinetic-model fits of ASL data: accuracy on noise-free data, bias and standard errors on
noisy data, CPU parity of the CUDA model headers (host build) with their NumPy twins."""

from __future__ import annotations

import numpy as np
import pytest

from gpuperf.asl.model import ASLModel
from gpuperf.fit import fit_lm
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL, BUXTON_PCASL_ARTERIAL
from gpuperf.status import Status
from tests.test_asl_model import PLDS, TAU, TI1, TIS, pasl_published, pcasl_published

DEVICES = [pytest.param("cpu", id="numpy"), pytest.param("gpu", id="cupy", marks=pytest.mark.gpu)]


def _truth_grid(n_cbf=19, n_att=18):
    """CBF 10-100 ml/100g/min x ATT 0.5-2.2 s (ATT values off the model's kinks)."""
    cbf, att = np.meshgrid(np.linspace(10, 100, n_cbf), np.linspace(0.5, 2.2, n_att) + 0.013)
    return cbf.ravel(), att.ravel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["PCASL", "PASL"])
def test_noise_free_multi_pld_recovers_truth(kind, device):
    cbf, att = _truth_grid()
    m0 = 1500.0
    if kind == "PCASL":
        # published formula evaluated at t = tau + PLD, with M0b = M0 / lambda
        dm = np.array(
            [
                [pcasl_published(c, a, TAU + pld, TAU, m0=m0) for pld in PLDS]
                for c, a in zip(cbf, att, strict=True)
            ]
        )
        model = ASLModel("PCASL", PLDS, TAU, device=device)
    else:
        dm = np.array(
            [
                [pasl_published(c, a, ti, TI1, m0=m0) for ti in TIS]
                for c, a in zip(cbf, att, strict=True)
            ]
        )
        model = ASLModel("PASL", TIS, TI1, device=device)
    assert model.method == "gkm"
    fit = model.fit(dm.astype(np.float32), m0)
    assert np.all(fit.status == 0)
    np.testing.assert_allclose(fit.cbf, cbf, rtol=0.005)
    np.testing.assert_allclose(fit.att, att, atol=0.01)
    assert np.all(fit.residual < 1e-3 * dm.max())


def test_pld_instead_of_tau_plus_pld_would_be_caught():
    """The defect 'PLD used as t' shifts the curve by tau: fitting such data with the correct
    model (or correct data with the defective one) misses the truth by far more than 0.5 %."""
    cbf, att = 60.0, 1.2
    wrong = np.array([[pcasl_published(cbf, att, pld + 0.6, TAU) for pld in PLDS]])  # bad t
    fit = ASLModel("PCASL", PLDS, TAU, device="cpu").fit(wrong.astype(np.float32), 1.0)
    assert abs(fit.att[0] - att) > 0.5 or abs(fit.cbf[0] / cbf - 1) > 0.05


@pytest.mark.parametrize("kind", ["PCASL", "PASL"])
def test_noisy_fit_unbiased_and_stderr_matches_spread(kind):
    rng = np.random.default_rng(42)
    n_vox = 3000
    if kind == "PCASL":
        cbf, att = 60.0, 1.2
        model = ASLModel("PCASL", np.repeat(PLDS, 4), TAU, device="cpu")
    else:
        cbf, att = 60.0, 0.9
        model = ASLModel("PASL", np.repeat(TIS, 4), TI1, device="cpu")
    clean, _ = model.kinetic_model.evaluate(
        np, np.array([[cbf, att]]), model.sample_times(), model.consts()
    )
    sigma = 0.06 * clean.max()  # SNR ~ 17 per sample at the peak
    m0 = 1000.0
    y = (clean + rng.normal(0.0, sigma, (n_vox, clean.shape[1]))) * m0
    fit = model.fit(y.astype(np.float32), m0)
    ok = fit.status == 0
    assert ok.mean() > 0.98
    assert abs(fit.cbf[ok].mean() / cbf - 1) < 0.03
    assert abs(fit.att[ok].mean() / att - 1) < 0.03
    for est, se in ((fit.cbf[ok], fit.cbf_stderr[ok]), (fit.att[ok], fit.att_stderr[ok])):
        ratio = np.median(se) / est.std()
        assert 0.8 < ratio < 1.2, ratio
    # residual is in signal units: RMS of the noise
    assert np.median(fit.residual[ok]) == pytest.approx(sigma * m0, rel=0.1)


def test_bad_voxels_flagged_not_crashing():
    model = ASLModel("PCASL", PLDS, TAU, device="cpu")
    clean, _ = model.kinetic_model.evaluate(
        np, np.array([[50.0, 1.0]] * 4), model.sample_times(), model.consts()
    )
    data = clean * 1000.0
    data = np.concatenate([data, data[:2]])
    data[1, 3] = np.nan
    data[5, 0] = np.inf
    m0 = np.array([1000.0, 1000.0, 0.0, -5.0, np.nan, -1.0])
    mask = np.array([True, True, True, False, True, True])
    fit = model.fit(data, m0, mask=mask)
    assert fit.status.dtype == np.int32
    assert list(fit.status) == [
        Status.OK,
        Status.NONFINITE_INPUT,
        Status.NONPOSITIVE_INPUT,
        Status.OUTSIDE_MASK,
        Status.NONFINITE_INPUT,
        Status.NONFINITE_INPUT | Status.NONPOSITIVE_INPUT,
    ]
    assert fit.cbf[0] == pytest.approx(50.0, rel=1e-3)
    assert np.isnan(fit.cbf[1:]).all()


def test_results_do_not_depend_on_chunk_size():
    cbf, att = _truth_grid(7, 6)
    model = ASLModel("PCASL", PLDS, TAU, device="cpu")
    y, _ = model.kinetic_model.evaluate(
        np, np.stack([cbf, att], 1), model.sample_times(), model.consts()
    )
    y = y + np.random.default_rng(0).normal(0, 2e-4, y.shape)
    a = model.fit(y, 1.0)
    model.memory_budget = 4096  # a few voxels per chunk
    b = model.fit(y, 1.0)
    np.testing.assert_array_equal(a.cbf, b.cbf)
    np.testing.assert_array_equal(a.att_stderr, b.att_stderr)


# --- host build of the CUDA model headers vs the NumPy twins ----------------------------------
_EVAL_KERNEL = """
template <typename T, class M>
__global__ void asl_model_eval(const T* p, const T* x, const T* c, int n_samples,
                               long long n_vox, T* f, T* jac) {
    const long long v = GP_GLOBAL_INDEX;
    if (v >= n_vox) return;
    T pv[M::NP];
    for (int k = 0; k < M::NP; ++k) pv[k] = p[k * n_vox + v];
    for (int n = 0; n < n_samples; ++n) {
        T d[M::NP];
        M::template eval<T>(pv, x + n * M::NX, c, f[n * n_vox + v], d);
        for (int k = 0; k < M::NP; ++k) jac[((long long)k * n_samples + n) * n_vox + v] = d[k];
    }
}
"""


def _host_eval(model, p, x, c, dtype):
    from gpuperf.cuda.host import HostLauncher, build_host_library

    ct = "float" if dtype == np.float32 else "double"
    name = f"asl_eval_{model.cuda_struct}_{ct}"
    params = (
        (f"const {ct}*", "p"),
        (f"const {ct}*", "x"),
        (f"const {ct}*", "c"),
        ("int", "n_samples"),
        ("long long", "n_vox"),
        (f"{ct}*", "f"),
        (f"{ct}*", "jac"),
    )
    lib = build_host_library(
        code=f'#include "{model.cuda_header}"\n' + _EVAL_KERNEL,
        launchers=[HostLauncher(name, f"asl_model_eval<{ct}, {model.cuda_struct}>", params)],
    )
    v, n, n_par = p.shape[0], x.shape[0], p.shape[1]
    f = np.empty((n, v), dtype=dtype)
    jac = np.empty((n_par, n, v), dtype=dtype)
    args = (
        np.ascontiguousarray(p.T, dtype=dtype),
        np.ascontiguousarray(x, dtype=dtype),
        np.ascontiguousarray(c, dtype=dtype),
        n,
        v,
        f,
        jac,
    )
    lib.launch(name, -(-v // 64), 64, args, n_threads=1)
    return f.T, jac.transpose(2, 1, 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "model", [BUXTON_PCASL, BUXTON_PASL, BUXTON_PCASL_ARTERIAL], ids=lambda m: m.name
)
def test_cuda_header_matches_numpy_twin(model, dtype):
    pytest.importorskip("ctypes")
    from gpuperf.cuda.host import find_cxx

    if find_cxx() is None:
        pytest.skip("no host C++ compiler (g++)")
    rng = np.random.default_rng(7)
    v = 300
    p = np.stack(
        [
            rng.uniform(1, 200, v),
            rng.uniform(0.1, 3.0, v),
            rng.uniform(0, 5, v),
            rng.uniform(0.1, 1.5, v),
        ],
        axis=1,
    )[:, : model.n_params]
    if model is BUXTON_PASL:
        x = np.stack([TIS, np.full(TIS.size, TI1)], axis=1)
    else:
        x = np.stack([TAU + PLDS, np.full(PLDS.size, TAU)], axis=1)
    c = np.array([1.3, 1.65, 0.9, 0.85])
    p, x, c = p.astype(dtype), x.astype(dtype), c.astype(dtype)
    f_h, j_h = _host_eval(model, p, x, c, dtype)
    f_n, j_n = model.evaluate(np, p, x, c)
    # away from the kinks (a float32 rounding can put a sample on the other side of one)
    t = x[:, 0][None, :].astype(np.float64)
    edges = [p[:, 1:2], p[:, 1:2] + x[:, 1][None, :]]
    if model.n_params == 4:
        edges += [p[:, 3:4], p[:, 3:4] + x[:, 1][None, :]]
    away = np.all([np.abs(t - e) > 1e-4 for e in edges], axis=0)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for a, b in [(f_h, f_n)] + [(j_h[..., k], j_n[..., k]) for k in range(model.n_params)]:
        scale = np.abs(b).max() + 1e-30
        np.testing.assert_allclose(a[away], b[away], rtol=tol, atol=tol * scale)


def test_host_fit_matches_numpy_fit():
    """The fused LM kernel with the Buxton header (host build) agrees with the NumPy path."""
    from gpuperf.cuda.host import find_cxx

    if find_cxx() is None:
        pytest.skip("no host C++ compiler (g++)")
    cbf, att = _truth_grid(8, 8)
    for model, x in (
        (BUXTON_PCASL, ASLModel("PCASL", PLDS, TAU)),
        (BUXTON_PASL, ASLModel("PASL", TIS, TI1)),
    ):
        y, _ = model.evaluate(np, np.stack([cbf, att], 1), x.sample_times(), x.consts())
        y = y + np.random.default_rng(1).normal(0, 2e-4, y.shape)
        p0 = x.initial_params(y.astype(np.float32))
        kw = dict(lower=model.default_lower, upper=model.default_upper, consts=x.consts())
        a = fit_lm(model, x.sample_times(), y, p0, device="cpu", **kw)
        b = fit_lm(model, x.sample_times(), y, p0, device="host", **kw)
        both = (a.status == 0) & (b.status == 0)
        assert both.mean() > 0.95
        np.testing.assert_allclose(a.params[both], b.params[both], rtol=2e-3, atol=2e-3)


def test_arterial_component_runs_and_tissue_fit_is_unharmed():
    cbf, att = 60.0, 1.3
    model = ASLModel("PCASL", PLDS, TAU, arterial=True, device="cpu")
    y, _ = BUXTON_PCASL.evaluate(
        np, np.array([[cbf, att]] * 5), model.sample_times(), model.consts()
    )
    fit = model.fit(y.astype(np.float32), 1.0)
    assert fit.abv is not None and fit.abat is not None
    ok = fit.status == 0
    assert ok.any()
    np.testing.assert_allclose(fit.cbf[ok], cbf, rtol=0.01)
    np.testing.assert_allclose(fit.abv[ok], 0.0, atol=0.05)


def test_arterial_component_recovered_when_present():
    cbf, att, abv, abat = 50.0, 1.4, 1.5, 0.6
    plds = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0])
    tau = 1.0
    model = ASLModel("PCASL", plds, tau, arterial=True, device="cpu", dtype=np.float64)
    y, _ = BUXTON_PCASL_ARTERIAL.evaluate(
        np, np.array([[cbf, att, abv, abat]]), model.sample_times(), model.consts()
    )
    fit = model.fit(y, 1.0)
    assert fit.status[0] == 0
    assert fit.cbf[0] == pytest.approx(cbf, rel=0.01)
    assert fit.att[0] == pytest.approx(att, abs=0.02)
    assert fit.abv[0] == pytest.approx(abv, rel=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["PCASL", "PASL"])
def test_gpu_matches_numpy(kind):
    cbf, att = _truth_grid(12, 12)
    model = ASLModel("PCASL", PLDS, TAU) if kind == "PCASL" else ASLModel("PASL", TIS, TI1)
    y, _ = model.kinetic_model.evaluate(
        np, np.stack([cbf, att], 1), model.sample_times(), model.consts()
    )
    y = (y + np.random.default_rng(2).normal(0, 2e-4, y.shape)).astype(np.float32)
    model.device = "cpu"
    a = model.fit(y, 1.0)
    model.device = "gpu"
    b = model.fit(y, 1.0)
    assert b.backend == "cupy"
    both = (a.status == 0) & (b.status == 0)
    assert both.mean() > 0.95
    np.testing.assert_allclose(a.cbf[both], b.cbf[both], rtol=2e-3)
    np.testing.assert_allclose(a.att[both], b.att[both], atol=2e-3)


def test_optimum_on_a_kink_is_finished_not_left_at_max_iter():
    """Truth ATT = a PLD: noisy fits often end exactly on the kink ATT = t - tau, where LM
    creeps (linear convergence). Those voxels are snapped to the kink (status AT_KINK)."""
    rng = np.random.default_rng(0)
    model = ASLModel("PCASL", np.repeat(PLDS, 4), TAU, device="cpu")
    clean, _ = model.kinetic_model.evaluate(
        np, np.array([[40.0, 1.0]]), model.sample_times(), model.consts()
    )
    y = (clean + rng.normal(0, 1e-3, (2000, clean.shape[1]))).astype(np.float32)
    fit = model.fit(y, 1.0)
    assert np.isin(fit.status, [Status.OK, Status.AT_KINK]).mean() > 0.995
    at_kink = fit.status == Status.AT_KINK
    assert at_kink.sum() > 0
    np.testing.assert_allclose(fit.att[at_kink], 1.0, atol=1e-6)  # the kink ATT = PLD 1.0
    assert np.isfinite(fit.att_stderr[at_kink]).all()
    ok = np.isin(fit.status, [Status.OK, Status.AT_KINK])
    assert abs(fit.cbf[ok].mean() / 40.0 - 1) < 0.03
