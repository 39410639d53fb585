"""fit_lm against ground truth, scipy.optimize.least_squares and statistics; chunking; inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gpuperf.errors import GpuperfError, InputError
from gpuperf.fit import MODELS, FitStatus, fit_lm
from gpuperf.fit._synthetic import gammavar_problem, monoexp_problem
from gpuperf.status import Status

scipy_optimize = pytest.importorskip("scipy.optimize")


@pytest.fixture(autouse=True)
def _host_build_needs_cxx(request):
    """Cases run on ``device="host"`` need g++ (skipped without it, except in CI)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "host":
        from gpuperf.cuda.host import find_cxx

        if find_cxx() is None:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail("g++ is required in CI")
            pytest.skip("no host C++ compiler (g++)")


#: Models whose synthetic problems live in gpuperf.fit._synthetic (others test themselves).
OWN_MODELS = ["gammavar", "monoexp"]


# ---------------------------------------------------------------- noise-free recovery
@pytest.mark.parametrize("device", ["cpu", "host"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_free_monoexp_recovers_truth(dtype, device):
    pr = monoexp_problem(np.random.default_rng(1), 500, sigma=0)
    r = fit_lm("monoexp", pr.x, pr.y, pr.p0, dtype=dtype, device=device)
    assert (r.status == FitStatus.CONVERGED).all()
    np.testing.assert_allclose(r.params, pr.truth, rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", "host"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_free_gammavar_recovers_truth(dtype, device):
    """float64 to 1e-5; float32 to 5e-5: amplitude and shape are so correlated (cond(J^T J)
    ~ 1e8) that float32 rounding of the model alone moves the minimum by ~1e-5."""
    pr = gammavar_problem(np.random.default_rng(2), 500, sigma=0)
    r = fit_lm("gammavar", pr.x, pr.y, pr.p0, dtype=dtype, device=device, max_iter=200)
    assert (r.status == FitStatus.CONVERGED).all()
    np.testing.assert_allclose(r.params, pr.truth, rtol=1e-5 if dtype == np.float64 else 5e-5)


def test_initial_guess_is_used_when_p0_is_none():
    pr = gammavar_problem(np.random.default_rng(3), 200, sigma=0)
    r = fit_lm("gammavar", pr.x, pr.y, dtype=np.float64, max_iter=200)
    assert (r.status == FitStatus.CONVERGED).mean() > 0.99
    np.testing.assert_allclose(r.params[r.status == 0], pr.truth[r.status == 0], rtol=1e-5)
    pm = monoexp_problem(np.random.default_rng(3), 200, sigma=0)
    g = MODELS["monoexp"].initial_guess(pm.x, pm.y)
    np.testing.assert_allclose(g, pm.truth, rtol=1e-8)  # exact for noise-free data


# ---------------------------------------------------------------- vs scipy
def _scipy_fit(model, x, y, p0, lower, upper):
    out = np.empty_like(p0)
    for v in range(y.shape[0]):  # reference only: a voxel loop is what fit_lm replaces

        def fun(p, v=v):
            f, _ = model.evaluate(np, p[None], x, np.zeros(0))
            return f[0] - y[v]

        def jac(p):
            _, j = model.evaluate(np, p[None], x, np.zeros(0))
            return j[0]

        res = scipy_optimize.least_squares(
            fun,
            p0[v],
            jac=jac,
            bounds=(lower, upper),
            method="trf",
            xtol=1e-14,
            ftol=1e-14,
            gtol=1e-14,
            max_nfev=2000,
        )
        out[v] = res.x
    return out


@pytest.mark.parametrize(
    ("name", "dtype"), [("monoexp", np.float64), ("monoexp", np.float32), ("gammavar", np.float64)]
)
def test_noisy_fits_match_scipy_least_squares(name, dtype):
    rng = np.random.default_rng(4)
    if name == "monoexp":
        pr = monoexp_problem(rng, 300)
        lower, upper = np.array([0.0, 0.0]), np.array([np.inf, 35.0])  # R bound active for some
    else:
        pr = gammavar_problem(rng, 200)
        lower, upper = np.array(MODELS[name].default_lower), np.array(MODELS[name].default_upper)
    p0 = np.clip(pr.p0, lower, upper)
    ref = _scipy_fit(MODELS[name], pr.x, pr.y, p0, lower, upper)
    r = fit_lm(
        name, pr.x, pr.y, p0, lower=lower, upper=upper, dtype=dtype, max_iter=300, device="cpu"
    )
    rel = (np.abs(r.params - ref) / np.maximum(np.abs(ref), 1e-12)).max(axis=1)
    frac = np.mean(rel <= 1e-4)
    assert frac >= 0.99, f"only {frac:.1%} of voxels within 1e-4 of scipy (worst {rel.max():.2g})"


# ---------------------------------------------------------------- stderr
@pytest.mark.parametrize(
    ("name", "truth", "sigma"),
    [("monoexp", [1000.0, 25.0], 10.0), ("gammavar", [2.0, 7.3, 3.0, 1.5], 0.05)],
)
def test_stderr_matches_empirical_spread(name, truth, sigma):
    """stderr (from J^T J and chi2) vs the spread over 2000 noise realisations, within 15 %."""
    rng = np.random.default_rng(5)
    model = MODELS[name]
    x = np.linspace(0, 0.1, 12)[:, None] if name == "monoexp" else np.arange(40.0)[:, None]
    p = np.tile(truth, (2000, 1))
    f, _ = model.evaluate(np, p, x, np.zeros(0))
    y = f + rng.normal(0, sigma, f.shape)
    r = fit_lm(name, x, y, p, dtype=np.float64, max_iter=200)
    ok = r.status == FitStatus.CONVERGED
    assert ok.mean() > 0.99
    empirical = r.params[ok].std(axis=0, ddof=1)
    predicted = np.sqrt(np.mean(r.stderr[ok] ** 2, axis=0))
    np.testing.assert_allclose(predicted, empirical, rtol=0.15)
    # and the estimator is unbiased to well within its spread
    assert (np.abs(r.params[ok].mean(0) - truth) < 0.2 * empirical).all()


# ---------------------------------------------------------------- chunking
@pytest.mark.parametrize("device", ["cpu", "host"])
def test_results_do_not_depend_on_chunk_size(device):
    pr = gammavar_problem(np.random.default_rng(6), 700)
    kw = dict(dtype=np.float32, device=device, max_iter=200)
    big = fit_lm("gammavar", pr.x, pr.y, pr.p0, memory_budget=1 << 30, **kw)
    small = fit_lm("gammavar", pr.x, pr.y, pr.p0, memory_budget=200_000, **kw)  # ~40 voxels
    for name in ("params", "stderr", "chi2", "n_iter", "status"):
        np.testing.assert_array_equal(getattr(small, name), getattr(big, name), err_msg=name)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("name", OWN_MODELS)
def test_model_jacobian_matches_finite_differences(name):
    model = MODELS[name]
    rng = np.random.default_rng(7)
    if name == "monoexp":
        pr = monoexp_problem(rng, 50, sigma=0)
    else:
        pr = gammavar_problem(rng, 50, sigma=0)
    p = pr.truth
    _, jac = model.evaluate(np, p, pr.x, np.zeros(0))
    for k in range(p.shape[1]):
        h = 1e-6 * np.maximum(np.abs(p[:, k]), 1.0)
        pp, pm = p.copy(), p.copy()
        pp[:, k] += h
        pm[:, k] -= h
        fd = (
            model.evaluate(np, pp, pr.x, np.zeros(0))[0]
            - model.evaluate(np, pm, pr.x, np.zeros(0))[0]
        ) / (2 * h[:, None])
        if name == "gammavar" and k == 1:
            # derivative in t0 is one-sided at samples within h of t0: skip those
            near = np.abs(pr.x[:, 0][None, :] - p[:, 1:2]) < 2 * h[:, None]
            fd = np.where(near, jac[:, :, k], fd)
        np.testing.assert_allclose(jac[:, :, k], fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_gammavar_jacobian_near_t0_is_finite_and_zero_before():
    model = MODELS["gammavar"]
    t = np.array([[4.0], [5.0], [5.0 + 1e-12], [5.0 + 1e-6], [6.0]])
    for a in (0.5, 1.0, 3.0):
        f, jac = model.evaluate(np, np.array([[2.0, 5.0, a, 1.5]]), t, np.zeros(0))
        assert np.isfinite(f).all() and np.isfinite(jac).all()
        assert f[0, 0] == 0 and f[0, 1] == 0 and (jac[0, :2] == 0).all()  # t <= t0
        # d f / d t0 -> -A a s^(a-1): 0 for a > 1, -A for a = 1, large negative for a < 1
        d0 = jac[0, 3, 1]
        expected = 2.0 / 1.5 * (1e-6) ** a * np.exp(-1e-6 / 1.5) - 2.0 * a * (1e-6) ** (a - 1)
        np.testing.assert_allclose(d0, expected, rtol=1e-6)


def test_gammavar_initial_guess_is_close():
    pr = gammavar_problem(np.random.default_rng(8), 300, sigma=0.05)
    g = MODELS["gammavar"].initial_guess(pr.x, pr.y)
    peak_true = pr.truth[:, 1] + pr.truth[:, 2] * pr.truth[:, 3]
    peak_guess = g[:, 1] + g[:, 2] * g[:, 3]
    assert np.median(np.abs(peak_guess - peak_true)) <= 1.0  # one sample
    # t0: the last sample below 10 % of the peak, i.e. within ~2 samples after the true foot
    assert (np.abs(g[:, 1] - pr.truth[:, 1]) <= 2.5).mean() > 0.95


# ---------------------------------------------------------------- inputs
def test_input_validation():
    x = np.linspace(0, 1, 5)
    y = np.ones((3, 5))
    with pytest.raises(InputError, match="y"):
        fit_lm("monoexp", x, np.ones((3, 4)), [1, 1])
    with pytest.raises(InputError, match="p0"):
        fit_lm("monoexp", x, y, [1, 1, 1])
    with pytest.raises(InputError, match="weights"):
        fit_lm("monoexp", x, y, [1, 1], weights=np.ones(4))
    with pytest.raises(InputError, match="lower"):
        fit_lm("monoexp", x, y, [1, 1], lower=[2, 0], upper=[1, 1])
    with pytest.raises(InputError, match="consts"):
        fit_lm("monoexp", x, y, [1, 1], consts=[1.0])
    with pytest.raises(InputError, match="x"):
        fit_lm("monoexp", np.ones((5, 2)), y, [1, 1])
    with pytest.raises(GpuperfError, match="unknown fit model"):
        fit_lm("nope", x, y, [1, 1])
    with pytest.raises(GpuperfError, match="float32 or float64"):
        fit_lm("monoexp", x, y, [1, 1], dtype=np.float16)
    with pytest.raises(GpuperfError, match="device"):
        fit_lm("monoexp", x, y, [1, 1], device="tpu")


def test_non_finite_x_is_an_input_error_and_empty_input_is_fine():
    y = np.ones((3, 5))
    with pytest.raises(InputError, match="x"):
        fit_lm("monoexp", [0, 1, np.nan, 3, 4], y, [1, 1])
    r = fit_lm("gammavar", np.arange(5.0), np.ones((0, 5)))
    assert r.params.shape == (0, 4) and r.status.shape == (0,)


def test_reporter_is_accepted():
    from gpuperf.progress import Reporter

    pr = monoexp_problem(np.random.default_rng(9), 50)
    r = fit_lm("monoexp", pr.x, pr.y, pr.p0, reporter=Reporter(quiet=True), memory_budget=5000)
    assert (r.status == FitStatus.CONVERGED).all()


def test_inputs_are_not_modified_and_result_metadata():
    pr = monoexp_problem(np.random.default_rng(9), 20)
    y, p0 = pr.y.copy(), pr.p0.copy()
    r = fit_lm("monoexp", pr.x[:, 0], y, p0, device="cpu")
    np.testing.assert_array_equal(y, pr.y)
    np.testing.assert_array_equal(p0, pr.p0)
    assert r.params.dtype == np.float32 and r.status.dtype == np.int32
    assert r.n_iter.dtype == np.int32 and r.param_names == ("s0", "r")
    assert r.backend == "numpy"


def test_status_uses_the_flag_convention():
    """FitResult.status carries gpuperf.status flags, not the backends' 0/1/2 codes."""
    pr = monoexp_problem(np.random.default_rng(3), 6)
    y = pr.y.copy()
    y[2, 0] = np.nan
    r = fit_lm("monoexp", pr.x[:, 0], y, pr.p0, device="cpu", dtype=np.float64)
    assert r.status[2] == Status.FIT_FAILED == FitStatus.FAILED == 32
    assert set(r.status[[0, 1, 3, 4, 5]].tolist()) == {int(Status.OK)}
    r1 = fit_lm("monoexp", pr.x[:, 0], pr.y, pr.p0, device="cpu", max_iter=1)
    assert (r1.status == Status.MAX_ITER).all() and FitStatus.MAX_ITER == 16
    np.testing.assert_array_equal(r.param("r"), r.params[:, 1])


def test_too_few_samples_gives_nan_stderr():
    x = np.array([0.0, 0.05])
    y = np.array([[1000.0, 500.0]])
    r = fit_lm("monoexp", x, y, [900.0, 10.0], dtype=np.float64)
    assert r.status[0] == FitStatus.CONVERGED
    np.testing.assert_allclose(r.params[0], [1000.0, np.log(2) / 0.05], rtol=1e-6)
    assert np.isnan(r.stderr).all()  # N - P_free = 0


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", OWN_MODELS)
def test_cupy_kernel_matches_numpy(name, dtype):
    """GPU (nvcc FMA contraction changes rounding) vs NumPy: same tolerances as the host
    parity test; >= 99 % identical statuses."""
    if name == "monoexp":
        pr = monoexp_problem(np.random.default_rng(10), 5000)
    else:
        pr = gammavar_problem(np.random.default_rng(10), 5000)
    y = pr.y.copy()
    y[7, 2] = np.nan
    kw = dict(dtype=dtype, max_iter=200)
    r_np = fit_lm(name, pr.x, y, pr.p0, device="cpu", **kw)
    r_gpu = fit_lm(name, pr.x, y, pr.p0, device="gpu", **kw)
    assert r_gpu.backend == "cupy"
    assert r_gpu.status[7] == FitStatus.FAILED and np.isnan(r_gpu.params[7]).all()
    assert (r_gpu.status == r_np.status).mean() >= 0.99
    ok = (r_np.status == 0) & (r_gpu.status == 0)
    rtol, se_tol = (1e-5, 1e-3) if dtype == np.float32 else (1e-10, 1e-6)
    se = np.nan_to_num(r_np.stderr[ok])
    excess = np.abs(r_np.params[ok] - r_gpu.params[ok]) - (
        rtol * np.abs(r_np.params[ok]) + se_tol * se
    )
    assert np.mean(excess.max(axis=1) <= 0) >= 0.99


@pytest.mark.gpu
def test_cupy_chunking_invariance():
    pr = monoexp_problem(np.random.default_rng(11), 3000)
    a = fit_lm("monoexp", pr.x, pr.y, pr.p0, device="gpu", memory_budget=1 << 30)
    b = fit_lm("monoexp", pr.x, pr.y, pr.p0, device="gpu", memory_budget=50_000)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.status, b.status)
