"""Throughput of the batched Levenberg-Marquardt fitter (fits per second).

Problem: 100 000 voxels x 10 samples, mono-exponential decay with noise (float32).
Cases, measured in the same run: the NumPy backend, the g++ host build of the CUDA kernel
(all CPU cores), the CuPy kernel (skipped without a GPU), and a voxel-by-voxel
``scipy.optimize.least_squares`` loop -- timed on 500 voxels and extrapolated (fits/s is a
per-voxel rate; the loop has no batch effects), as a stand-in for the per-voxel fitting loops
this project replaces.

Run: ``python -m pytest bench/bench_fit.py --benchmark-columns=mean,rounds -s``. Fits/s are in
each benchmark's ``extra_info`` (``--benchmark-json=out.json`` keeps them); the last case
prints the NumPy / scipy-loop ratio.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuperf.backend import NUMPY_BACKEND, get_backend, gpu_status
from gpuperf.benchmarks.conventions import record, synced
from gpuperf.fit import MODELS, fit_lm
from gpuperf.fit._synthetic import monoexp_problem

N_VOX = 100_000
N_SAMPLES = 10
N_SCIPY = 500
RATES: dict[str, float] = {}


@pytest.fixture(scope="module")
def problem():
    return monoexp_problem(np.random.default_rng(0), N_VOX, n_samples=N_SAMPLES)


def _record(benchmark, key, n_vox, backend, **kw):
    rate = n_vox / benchmark.stats.stats.mean
    RATES[key] = rate
    record(
        benchmark,
        stage="fit.lm",
        method="monoexp",
        voxels=n_vox,
        backend=backend,
        frames=N_SAMPLES,
        fits_per_s=rate,
        **kw,
    )
    print(f"\n{key}: {rate:,.0f} fits/s")
    return rate


def test_bench_numpy(benchmark, problem):
    pr = problem
    res = benchmark.pedantic(
        fit_lm, args=("monoexp", pr.x, pr.y, pr.p0), kwargs=dict(device="cpu"), rounds=3
    )
    assert (res.status == 0).mean() > 0.99
    benchmark.extra_info["mean_iterations"] = float(res.n_iter.mean())
    _record(benchmark, "numpy", N_VOX, NUMPY_BACKEND, note="float32")


def test_bench_host_kernel(benchmark, problem):
    pr = problem
    fit_lm("monoexp", pr.x[:10], pr.y[:10, :10], pr.p0[:10], device="host")  # build once
    res = benchmark.pedantic(
        fit_lm, args=("monoexp", pr.x, pr.y, pr.p0), kwargs=dict(device="host"), rounds=3
    )
    assert (res.status == 0).mean() > 0.99
    _record(
        benchmark,
        "host_kernel",
        N_VOX,
        "host-cpp",
        note="float32; CUDA kernel source built with g++ -O2, all CPU cores",
    )
    from gpuperf.cuda import nvcc

    if nvcc.find_nvcc() is not None:
        rows = nvcc.resource_table()
        benchmark.extra_info["kernel_resources"] = [
            f"{r.arch} {r.kernel.split('(')[0]}: {r.registers} regs, {r.spill_stores} B spill"
            for r in rows
        ]


@pytest.mark.gpu
def test_bench_cupy(benchmark, problem):
    usable, detail = gpu_status()
    if not usable:
        pytest.skip(f"no GPU: {detail}")
    pr = problem
    backend = get_backend("gpu")
    fit_lm("monoexp", pr.x, pr.y[:1000], pr.p0[:1000], device="gpu")  # compile + warm up
    res = benchmark.pedantic(
        synced(backend, fit_lm),
        args=("monoexp", pr.x, pr.y, pr.p0),
        kwargs=dict(device="gpu"),
        rounds=5,
    )
    assert (res.status == 0).mean() > 0.99
    _record(benchmark, "cupy", N_VOX, backend, note="float32; includes host<->device copies")


def _scipy_loop(x, y, p0):
    from scipy.optimize import least_squares

    model = MODELS["monoexp"]
    c = np.zeros(0)
    out = np.empty_like(p0)
    for v in range(y.shape[0]):  # the per-voxel loop gpuperf replaces

        def fun(p, v=v):
            return model.evaluate(np, p[None], x, c)[0][0] - y[v]

        def jac(p):
            return model.evaluate(np, p[None], x, c)[1][0]

        out[v] = least_squares(fun, p0[v], jac=jac, method="trf").x
    return out


def test_bench_scipy_loop(benchmark, problem):
    pytest.importorskip("scipy")
    pr = problem
    benchmark.pedantic(_scipy_loop, args=(pr.x, pr.y[:N_SCIPY], pr.p0[:N_SCIPY]), rounds=1)
    rate = _record(
        benchmark,
        "scipy_loop (rate from 500 voxels)",
        N_SCIPY,
        "scipy",
        baseline="scipy_loop",
        note="least_squares(method='trf') per voxel",
    )
    if "numpy" in RATES:
        ratio = RATES["numpy"] / rate
        benchmark.extra_info["numpy_over_scipy_loop"] = ratio
        print(f"NumPy backend / scipy loop: {ratio:,.0f}x")
    if "host_kernel" in RATES:
        benchmark.extra_info["host_kernel_over_scipy_loop"] = RATES["host_kernel"] / rate
