"""oSVD: plan, selection semantics against an explicit-SVD reference, and the kernel source
(built as host C++, and on CuPy when a GPU exists) against its NumPy twin."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gpuperf.dsc import deconvolution as dec
from gpuperf.dsc import osvd
from gpuperf.errors import GpuperfError


def _curves(n_vox=600, n=60, tr=1.5, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * tr
    s = np.clip(t - 9.0, 0, None)
    aif = 40 * (s / 4.5) ** 3 * np.exp(3 - s / 1.5)
    mtt = rng.uniform(1.0, 10.0, (n_vox, 1))
    resid = np.exp(-t[None, :] / mtt) * rng.uniform(0.005, 0.02, (n_vox, 1))
    conc = resid @ dec.toeplitz_matrix(aif, tr).T
    conc = np.roll(conc, 0)
    conc += (
        rng.normal(0, 1, conc.shape) * conc.max(1, keepdims=True) * rng.uniform(0, 0.08, (n_vox, 1))
    )
    return conc, aif, tr


def _oi(r):
    return np.abs(np.diff(r, n=2)).sum() / (r.size * r.max()) if r.max() > 0 else np.inf


def test_plan_sets_are_nested_and_match_thresholds():
    conc, aif, tr = _curves(10)
    plan = osvd.make_plan(aif, tr)
    assert np.all(np.diff(plan.set_rows) < 0)
    assert np.all(np.diff(plan.set_threshold) > 0)
    mag = np.abs(dec.aif_spectrum(aif, tr))
    for rows, thr in zip(plan.set_rows, plan.set_threshold, strict=True):
        kept = mag >= thr * mag.max()
        n_real = kept[0] + kept[-1]  # DC and Nyquist carry one coefficient, the others two
        assert rows == n_real + 2 * kept[1:-1].sum()


def test_selection_matches_explicit_circulant_svd_sweep():
    """Independent reference: truncated SVD of the 2N circulant at every threshold, OI over
    the full padded residue, lowest threshold below the limit (Wu 2003)."""
    conc, aif, tr = _curves(40, seed=1)
    n = aif.size
    circ = dec.circulant_matrix(aif, tr)
    thresholds = osvd.DEFAULT_THRESHOLDS
    pinvs = [dec.truncated_pinv(circ, p) for p in thresholds]
    res, plan, _ = osvd.osvd(conc, aif, tr)
    for v in range(conc.shape[0]):
        cpad = np.concatenate([conc[v], np.zeros(n)])
        chosen = None
        for p, pinv in zip(thresholds, pinvs, strict=True):
            r = pinv @ cpad
            if _oi(r) < osvd.DEFAULT_OI_LIMIT:
                chosen = (p, r)
                break
        if chosen is None:
            chosen = (thresholds[-1], pinvs[-1] @ cpad)
            assert not res.passed[v]
        p, r = chosen
        assert plan.set_threshold[res.set_index[v]] == pytest.approx(p)
        assert res.oi[v] == pytest.approx(_oi(r), rel=1e-9)
        assert res.rmax[v] == pytest.approx(r[:n].max(), rel=1e-9)
        assert res.tmax_index[v] == int(np.argmax(r[:n]))


def _compare(a, b, rtol):
    # a voxel whose OI sits within rounding of the limit may legitimately choose differently
    border = np.abs(a.oi / osvd.DEFAULT_OI_LIMIT - 1) < 10 * rtol
    same = ~border
    assert border.mean() < 0.01
    np.testing.assert_array_equal(a.set_index[same], b.set_index[same])
    np.testing.assert_array_equal(a.passed[same], b.passed[same])
    np.testing.assert_allclose(a.oi[same], b.oi[same], rtol=rtol)
    np.testing.assert_allclose(
        a.rmax[same], b.rmax[same], rtol=rtol, atol=rtol * np.abs(a.rmax).max()
    )
    assert (a.tmax_index[same] != b.tmax_index[same]).mean() < 0.005


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_kernel_source_on_host_matches_numpy_twin(dtype, rtol):
    from conftest import in_ci

    from gpuperf.cuda.host import find_cxx

    if find_cxx() is None and not in_ci():
        pytest.skip("no host C++ compiler (g++) to build the kernel source")
    conc, aif, tr = _curves(1500, seed=int(np.random.SeedSequence().entropy % 2**31))
    plan = osvd.make_plan(aif, tr)
    coef = osvd.coefficients(conc.astype(dtype), plan)
    twin = osvd.select_numpy(coef, plan)
    kern = osvd.select_host(coef, plan, threads=64, n_threads=2)
    assert kern.oi.dtype == dtype
    _compare(twin, kern, rtol)


def _several_plans(dtype, n=60, tr=1.5):
    """Three AIFs of different arrival and width (plans of different sizes), their voxels
    interleaved, coefficients padded to the largest plan's M."""
    rng = np.random.default_rng(5)
    t = np.arange(n) * tr
    plans, coefs, index = [], [], []
    for p, (t0, width, n_vox) in enumerate([(9.0, 1.5, 700), (15.0, 3.0, 500), (6.0, 0.8, 300)]):
        s = np.clip(t - t0, 0, None)
        aif = 40 * (s / (3 * width)) ** 3 * np.exp(3 - s / width)
        mtt = rng.uniform(1.0, 10.0, (n_vox, 1))
        conc = (np.exp(-t[None, :] / mtt) * rng.uniform(0.005, 0.02, (n_vox, 1))) @ (
            dec.toeplitz_matrix(aif, tr).T
        )
        conc += rng.normal(0, 0.03, conc.shape) * conc.max(1, keepdims=True)
        plan = osvd.make_plan(aif, tr)
        plans.append(plan)
        coefs.append(osvd.coefficients(conc.astype(dtype), plan))
        index.append(np.full(n_vox, p, dtype=np.int32))
    m_max = max(c.shape[1] for c in coefs)
    coef = np.concatenate([np.pad(c, ((0, 0), (0, m_max - c.shape[1]))) for c in coefs])
    order = rng.permutation(coef.shape[0])  # interleave the plans' voxels
    return plans, coefs, np.ascontiguousarray(coef[order]), np.concatenate(index)[order], order


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_kernel_source_with_several_plans(dtype, rtol):
    """One launch with a plan per voxel: each voxel's outputs are bit-identical to a launch of
    its own plan alone, and match the NumPy twin of the several-plan launch."""
    from conftest import in_ci

    from gpuperf.cuda.host import find_cxx

    if find_cxx() is None and not in_ci():
        pytest.skip("no host C++ compiler (g++) to build the kernel source")
    plans, coefs, coef, index, order = _several_plans(dtype)
    assert len({p.basis.shape[0] for p in plans}) > 1  # really different sizes
    assert len({p.set_rows.size for p in plans}) > 1
    kern = osvd.select_host(coef, plans, plan_index=index)
    twin = osvd.select_numpy_multi(coef, plans, index)
    _compare(twin, kern, rtol)
    start = np.cumsum([0] + [c.shape[0] for c in coefs])
    where = np.argsort(order)  # position of each original voxel in the shuffled launch
    for p, (plan, c) in enumerate(zip(plans, coefs, strict=True)):
        alone = osvd.select_host(c, plan)
        at = where[start[p] : start[p + 1]]
        assert (index[at] == p).all()
        for name in ("rmax", "tmax_index", "set_index", "oi", "passed"):
            np.testing.assert_array_equal(getattr(kern, name)[at], getattr(alone, name))
    # the twin with each plan's voxels contiguous (as a batch of subjects): each plan's block
    # is exactly its own run (the twin's BLAS blocks make its bits depend on the neighbours)
    unshuffled = np.empty_like(coef)
    unshuffled[order] = coef
    twin = osvd.select_numpy_multi(unshuffled, plans, np.sort(index))
    for p, (plan, c) in enumerate(zip(plans, coefs, strict=True)):
        single = osvd.select_numpy(c, plan)
        for name in ("rmax", "tmax_index", "set_index", "oi", "passed"):
            got = getattr(twin, name)[start[p] : start[p + 1]]
            np.testing.assert_array_equal(got, getattr(single, name))
    with pytest.raises(ValueError, match="plan_index"):
        osvd.select_host(coef, plans)


def test_kernel_limits_checked():
    conc, aif, tr = _curves(4, n=300)
    with pytest.raises(GpuperfError, match="too large"):
        osvd.check_kernel_limits(osvd.make_plan(aif, tr))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_cupy_kernel_matches_numpy_twin(dtype, rtol):
    import cupy as cp

    conc, aif, tr = _curves(5000, seed=11)
    plan = osvd.make_plan(aif, tr)
    coef = osvd.coefficients(conc.astype(dtype), plan)
    twin = osvd.select_numpy(coef, plan)
    g = osvd.select_cupy(cp.asarray(coef), plan)
    kern = osvd.OSVDResult(
        *(cp.asnumpy(x) for x in (g.rmax, g.tmax_index, g.set_index, g.oi, g.passed))
    )
    _compare(twin, kern, rtol)


@pytest.mark.gpu
def test_cupy_kernel_with_several_plans():
    import cupy as cp

    plans, coefs, coef, index, order = _several_plans(np.float32)
    twin_in = np.empty_like(coef)
    twin_in[order] = coef
    g = osvd.select_cupy(cp.asarray(coef), plans, plan_index=index)
    got = osvd.OSVDResult(
        *(cp.asnumpy(x) for x in (g.rmax, g.tmax_index, g.set_index, g.oi, g.passed))
    )
    twin = osvd.select_numpy_multi(twin_in, plans, np.sort(index))
    back = np.argsort(order)  # shuffled launch position of each twin voxel
    kern = osvd.OSVDResult(
        *(getattr(got, f)[back] for f in ("rmax", "tmax_index", "set_index", "oi", "passed"))
    )
    _compare(twin, kern, 1e-5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_worker_threads_are_kept_and_a_forked_child_gets_its_own():
    """select_numpy's worker threads outlive a call (no thread start per call), give the same
    results call after call, and a forked child (which has none of them) selects too."""
    import time

    rng = np.random.default_rng(4)
    aif = 10 * np.exp(-(((np.arange(40) - 8.0) / 3) ** 2))
    plan = osvd.make_plan(aif, 1.5)
    coef = rng.standard_normal((300, plan.weights.shape[1])).astype(np.float32)
    first = osvd.select_numpy(coef, plan)
    pools = dict(osvd._POOLS)
    again = osvd.select_numpy(coef, plan)
    assert osvd._POOLS == pools and pools  # the same pool, not a new one
    for f in ("rmax", "tmax_index", "set_index", "oi", "passed"):
        assert np.array_equal(getattr(first, f), getattr(again, f))
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when its selection matches, 3 otherwise
        res = osvd.select_numpy(coef, plan)
        os._exit(0 if np.array_equal(res.rmax, first.rmax) else 3)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("select_numpy hung in a forked child")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
