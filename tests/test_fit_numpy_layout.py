"""The NumPy LM twin's sample-major layout, voxel blocks and worker threads change no number.

``gpuperf.fit._numpy_lm`` evaluates models sample-major (``Model.evaluate_samples``: voxels
last), steps the voxels in cache-sized blocks, possibly on worker threads, and compacts the
live set once per iteration. Each voxel's arithmetic is the same whatever the layout, block,
thread or neighbours, so:

- ``evaluate_samples`` is ``evaluate`` transposed, bit for bit, for every model (the Buxton
  models broadcast the other way round and share subexpressions; the others transpose);
- a fit's outputs are bit-identical for any block size and number of workers, and for the
  voxels in any order.

Agreement with the kernel itself is tests/test_fit_parity.py and tests/test_asl_fit.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuperf.fit._numpy_lm as numpy_lm
from gpuperf.fit import fit_lm
from gpuperf.fit._synthetic import gammavar_problem, monoexp_problem
from gpuperf.fit.models import MODELS
from gpuperf.fit.models.buxton import BUXTON_PCASL

CONSTS = np.array([1.3, 1.65, 0.9, 0.85])
PLDS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5])
#: Every registered Buxton variant (a new one is covered without editing this test).
BUXTON = [m for name, m in MODELS.items() if name.startswith("buxton")]


def test_every_buxton_variant_is_in_the_list():
    """pCASL, PASL, arterial, and their slice-timed twins (six today)."""
    assert len(BUXTON) >= 6 and BUXTON_PCASL in BUXTON


def _asl_x(taus) -> np.ndarray:
    taus = np.asarray(taus, dtype=np.float64)
    return np.stack([PLDS + taus, taus], axis=1)


def _buxton_params(rng, model, n) -> np.ndarray:
    """Parameters across every phase of the curve (before arrival, during, after the bolus),
    a few exactly on a kink."""
    cols = [rng.uniform(0, 300, n), rng.uniform(0, 5, n)]
    if "arterial" in model.name:
        cols += [rng.uniform(0, 10, n), rng.uniform(0, 5, n)]
    if model.name.endswith("_sliced"):
        cols.append(rng.uniform(-0.5, 0.5, n))
    p = np.stack(cols, axis=1)
    p[:7, 1] = PLDS  # ATT = t - tau of the uniform-tau series: on a kink
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("taus", [[1.8] * 7, [1.8, 1.8, 1.5, 1.8, 0.7, 1.8, 1.8]])
@pytest.mark.parametrize("model", BUXTON, ids=lambda m: m.name)
def test_buxton_sample_major_is_transposed_evaluate(model, taus, dtype):
    """Uniform tau takes the shortcut (e^{-tau/T1app} once per voxel); mixed tau does not."""
    rng = np.random.default_rng(7)
    x = _asl_x(taus).astype(dtype)
    p = _buxton_params(rng, model, 3000).astype(dtype)
    with np.errstate(all="ignore"):
        f, jac = model.evaluate(np, p, x, CONSTS)
        fs, js = model.evaluate_samples(np, np.ascontiguousarray(p.T), x, CONSTS)
    assert fs.dtype == js.dtype == np.dtype(dtype)
    assert fs.shape == (x.shape[0], p.shape[0])
    assert js.shape == (p.shape[1], x.shape[0], p.shape[0])
    np.testing.assert_array_equal(fs, f.T)
    np.testing.assert_array_equal(js, jac.transpose(2, 1, 0))
    # every phase occurs (before arrival, during, after the bolus): every branch compared
    d = x[None, :, 0] - p[:, 1:2]
    assert (d < 0).any() and ((d >= 0) & (d < x[None, :, 1])).any() and (d > x[None, :, 1]).any()


def test_uniform_tau_shortcut_equals_the_per_sample_formula():
    """The shortcut gives the numbers of the per-sample evaluation it replaces: tau as a
    (V, N) array with equal entries does not take it (its elements are compared one by one),
    tau as a (1, N) row does."""
    rng = np.random.default_rng(8)
    p = _buxton_params(rng, BUXTON_PCASL, 2000).astype(np.float32)
    x = _asl_x([1.8] * 7).astype(np.float32)
    t = np.broadcast_to(x[:, 0], (p.shape[0], 7))
    tau_row = x[:, 1][None, :]
    tau_full = np.ascontiguousarray(np.broadcast_to(tau_row, t.shape))
    tau_full[0, 0] = np.nextafter(tau_full[0, 0], np.float32(0))  # not uniform: no shortcut
    with np.errstate(all="ignore"):
        f1, j1 = BUXTON_PCASL.evaluate_at(np, p, t, tau_row, CONSTS)
        f2, j2 = BUXTON_PCASL.evaluate_at(np, p, t, tau_full, CONSTS)
    np.testing.assert_array_equal(f1[1:], f2[1:])
    np.testing.assert_array_equal(j1[1:], j2[1:])


@pytest.mark.parametrize("name", ["monoexp", "gammavar"])
def test_default_sample_major_is_transposed_evaluate(name):
    """The base class's ``evaluate_samples`` (also dsc_gamma_residue's: its fits are compared
    with the kernel in tests/test_dsc_parametric.py)."""
    model = MODELS[name]
    rng = np.random.default_rng(9)
    pr = (monoexp_problem if name == "monoexp" else gammavar_problem)(rng, 200)
    x = np.asarray(pr.x, dtype=np.float64).reshape(len(pr.x), -1)
    f, jac = model.evaluate(np, pr.p0, x, np.zeros(0))
    fs, js = model.evaluate_samples(np, np.ascontiguousarray(pr.p0.T), x, np.zeros(0))
    assert fs.flags.c_contiguous and js.flags.c_contiguous
    np.testing.assert_array_equal(fs, f.T)
    np.testing.assert_array_equal(js, jac.transpose(2, 1, 0))


def _pcasl_problem(rng, n):
    x = _asl_x([1.8] * 7)
    truth = np.stack([rng.uniform(10, 90, n), rng.uniform(0.3, 2.2, n)], axis=1)
    f, _ = BUXTON_PCASL.evaluate(np, truth, x, CONSTS)
    y = f + rng.normal(0, 0.002, f.shape)
    y[3, 2] = np.nan  # bad input: FAILED with NaN, in every configuration
    p0 = np.tile([50.0, 1.3], (n, 1))
    return x, y, p0


def _outputs(r):
    return [r.params, r.stderr, r.chi2, r.n_iter, r.status]


def _assert_same(a, b):
    for u, v in zip(_outputs(a), _outputs(b), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_does_not_depend_on_blocks_threads_or_voxel_order(monkeypatch, dtype):
    rng = np.random.default_rng(10)
    n = 3000
    x, y, p0 = _pcasl_problem(rng, n)
    kw = dict(
        lower=[0.0, 0.0], upper=[300.0, 5.0], consts=CONSTS, weights=np.full(7, 6.0),
        dtype=dtype, device="cpu", max_iter=50,
    )  # fmt: skip
    monkeypatch.setattr(numpy_lm, "BLOCK", 1 << 20)
    monkeypatch.setattr(numpy_lm, "WORKERS", 1)
    ref = fit_lm(BUXTON_PCASL, x, y, p0, **kw)
    assert (ref.status == 0).mean() > 0.8 and (ref.n_iter > 3).any()  # the rest: kinks
    assert np.isnan(ref.params[3]).all()
    for block, workers in [(64, 1), (97, 2), (1000, 2)]:
        monkeypatch.setattr(numpy_lm, "BLOCK", block)
        monkeypatch.setattr(numpy_lm, "WORKERS", workers)
        _assert_same(fit_lm(BUXTON_PCASL, x, y, p0, **kw), ref)
    perm = rng.permutation(n)
    r = fit_lm(BUXTON_PCASL, x, y[perm], p0[perm], **kw)
    for u, v in zip(_outputs(r), _outputs(ref), strict=True):
        np.testing.assert_array_equal(u, v[perm])


def test_per_voxel_bounds_weights_and_fixed_parameters_in_blocks(monkeypatch):
    """The per-voxel (not shared) bounds and weights are compacted with the live set."""
    rng = np.random.default_rng(11)
    n = 1500
    x, y, p0 = _pcasl_problem(rng, n)
    upper = np.tile([300.0, 5.0], (n, 1))
    upper[: n // 3, 0] = 30.0  # an active bound for a third of the voxels
    w = rng.uniform(1.0, 6.0, y.shape)
    kw = dict(
        lower=np.zeros((n, 2)), upper=upper, weights=w, consts=CONSTS, dtype=np.float64,
        device="cpu",
    )  # fmt: skip
    monkeypatch.setattr(numpy_lm, "BLOCK", 1 << 20)
    monkeypatch.setattr(numpy_lm, "WORKERS", 1)
    ref = fit_lm(BUXTON_PCASL, x, y, p0, **kw)
    ref_fixed = fit_lm(BUXTON_PCASL, x, y, p0, fixed=[False, True], **kw)
    assert np.nanmax(ref.params[: n // 3, 0]) == 30.0
    assert (ref_fixed.params[np.isfinite(ref_fixed.params[:, 1]), 1] == 1.3).all()
    monkeypatch.setattr(numpy_lm, "BLOCK", 128)
    monkeypatch.setattr(numpy_lm, "WORKERS", 2)
    _assert_same(fit_lm(BUXTON_PCASL, x, y, p0, **kw), ref)
    _assert_same(fit_lm(BUXTON_PCASL, x, y, p0, fixed=[False, True], **kw), ref_fixed)
