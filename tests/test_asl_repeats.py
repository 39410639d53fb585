"""Repeats as sufficient statistics (issue #12 item 1): the kinetic fit of the per-(PLD, tau)
means weighted by their repeat counts equals the fit of every repeat, parameters and standard
errors, with sigma^2 from the full residual sum of squares (within-group + between)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuperf.asl.fitting import group_means, initial_params, repeat_groups
from gpuperf.asl.model import ASLModel
from gpuperf.fit import fit_lm
from gpuperf.status import Status

PLDS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5])
TAU = 1.8


def _noisy(model, n_vox, repeats_pld, seed, sd=0.002, offset=None):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(20, 90, n_vox), rng.uniform(0.6, 2.0, n_vox)], axis=1)
    x = model.sample_times()
    if offset is not None:
        from gpuperf.fit.models.buxton import slice_timed

        f, _ = slice_timed(model.kinetics.tissue).evaluate(
            np, np.column_stack([truth, offset]), x, model.consts()
        )
    else:
        f, _ = model.kinetics.tissue.evaluate(np, truth, x, model.consts())
    return f + rng.normal(0.0, sd, f.shape)


def test_grouping_and_within_group_sum_of_squares():
    x = np.array([[1.0, 0.5], [2.0, 0.5], [1.0, 0.5], [2.0, 0.5], [1.0, 0.5]])
    xu, inv, counts = repeat_groups(x)
    np.testing.assert_array_equal(xu, [[1.0, 0.5], [2.0, 0.5]])
    np.testing.assert_array_equal(counts, [3, 2])
    y = np.array([[1.0, 10.0, 2.0, 12.0, 3.0]])
    ybar, ssw = group_means(y, inv, counts)
    np.testing.assert_allclose(ybar, [[2.0, 11.0]])
    np.testing.assert_allclose(ssw, [1 + 0 + 1 + 1 + 1])


@pytest.mark.parametrize("sliced", [False, True], ids=["3d", "2d-slice-timing"])
def test_weighted_means_fit_equals_per_repeat_fit(sliced):
    """Random data, 7 PLDs x 6 repeats (shuffled order): CBF, ATT and their standard errors
    from the fit of the means equal a plain per-repeat fit_lm (float64)."""
    rng = np.random.default_rng(1)
    plds = np.repeat(PLDS, 6)
    rng.shuffle(plds)
    model = ASLModel("PCASL", plds, TAU, device="cpu", dtype=np.float64, max_iter=200)
    n_vox = 400
    offset = rng.uniform(0.0, 0.7, n_vox) if sliced else None
    y = _noisy(model, n_vox, 6, seed=2, offset=offset)
    fit = model.fit(y, 1.0, time_offset_s=offset)
    # reference: every repeat a sample of its own (the previous method), same start values
    p0 = initial_params(model, y, offset)[:, :2]
    lower = np.array(model.cbf_bounds + model.att_bounds)[[0, 2]]
    upper = np.array(model.cbf_bounds + model.att_bounds)[[1, 3]]
    kw = dict(consts=model.consts(), dtype=np.float64, device="cpu", max_iter=200)
    if sliced:
        ref = fit_lm("buxton_pcasl_sliced", model.sample_times(), y, np.column_stack([p0, offset]),
                     lower=np.append(lower, -np.inf), upper=np.append(upper, np.inf),
                     fixed=[False, False, True], **kw)  # fmt: skip
    else:
        ref = fit_lm("buxton_pcasl", model.sample_times(), y, p0, lower=lower, upper=upper, **kw)
    ok = (np.asarray(ref.status) == 0) & (fit.status == 0)
    assert ok.mean() > 0.97
    np.testing.assert_allclose(fit.cbf[ok], ref.params[ok, 0], rtol=1e-6)
    np.testing.assert_allclose(fit.att[ok], ref.params[ok, 1], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fit.cbf_stderr[ok], ref.stderr[ok, 0], rtol=1e-5)
    np.testing.assert_allclose(fit.att_stderr[ok], ref.stderr[ok, 1], rtol=1e-5)
    resid = np.sqrt(np.asarray(ref.chi2) / y.shape[1])
    np.testing.assert_allclose(fit.residual[ok], resid[ok], rtol=1e-5)


def test_two_plds_with_repeats_keep_finite_standard_errors():
    """U = 2 distinct PLDs = P: the means alone have no degrees of freedom, the repeats do."""
    plds = np.repeat([1.0, 2.0], 5)
    model = ASLModel("PCASL", plds, TAU, device="cpu", dtype=np.float64, model="gkm")
    y = _noisy(model, 50, 5, seed=3)
    fit = model.fit(y, 1.0)
    ok = fit.status == int(Status.OK)
    assert ok.any() and np.all(np.isfinite(fit.cbf_stderr[ok]))


def test_group_means_blocks_match_the_whole_array_formula():
    """group_means works in blocks of GROUP_BLOCK voxels; every voxel's mean and SSW are the
    bits of the one-shot formula (means by a one-hot product, SSW of the deviations)."""
    from gpuperf.asl import fitting

    rng = np.random.default_rng(4)
    inverse = np.tile(np.arange(5), 4)
    counts = np.full(5, 4)
    onehot = np.zeros((20, 5))
    onehot[np.arange(20), inverse] = 1.0
    for n_vox in (1, fitting.GROUP_BLOCK - 1, 2 * fitting.GROUP_BLOCK + 37):
        y = (rng.normal(size=(n_vox, 20)) * rng.uniform(0.01, 100, (n_vox, 1))).astype(np.float32)
        y64 = y.astype(np.float64)
        ybar = (y64 @ onehot) / counts
        d = y64 - ybar[:, inverse]
        got_bar, got_ssw = group_means(y, inverse, counts)
        np.testing.assert_array_equal(got_bar, ybar)
        np.testing.assert_array_equal(got_ssw, np.einsum("ij,ij->i", d, d))
