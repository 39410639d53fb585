"""DSC deconvolution: OSIPI reference curves, delay (in)sensitivity, cSVD paths, kH/rho, MTT."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import require_shared

from gpuperf.dsc import DSCModel
from gpuperf.dsc import deconvolution as dec
from gpuperf.dsc.simulate import aif_curve, tissue_curve


def load_osipi():
    path = require_shared("osipi_dsc", "dsc_data.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    c_tis = np.array([np.array(r["C_tis"].split(), float) for r in rows])
    c_aif = np.array([np.array(r["C_aif"].split(), float) for r in rows])
    cbv = np.array([float(r["cbv"]) for r in rows])
    cbf = np.array([float(r["cbf"]) for r in rows])
    return c_tis, c_aif, cbv, cbf, float(rows[0]["tr"])


@pytest.mark.parametrize("method", ["ssvd", "csvd", "osvd", "tikhonov"])
def test_osipi_curves_pass_community_tolerances(method):
    c_tis, c_aif, cbv, cbf, tr = load_osipi()
    model = DSCModel(0.03, tr, method, kh=1.0, rho=1.0, device="cpu")  # OSIPI convention
    fits = [model.fit_concentration(c_tis[i : i + 1], c_aif[i]) for i in range(len(cbf))]
    got_cbf = np.array([f.cbf[0] for f in fits])
    got_cbv = np.array([f.cbv[0] for f in fits])
    assert np.all(np.abs(got_cbv - cbv) <= 1 + 0.1 * cbv), got_cbv
    assert np.all(np.abs(got_cbf - cbf) <= 15 + 0.1 * cbf), got_cbf


def _delayed_curves(tr_s=1.0, mtt_s=2.0, n=80):
    t = np.arange(n) * tr_s
    delays = np.arange(0.0, 3.01, 0.5)
    conc = np.array([tissue_curve(t, 60.0, mtt_s, d, kh=1.0, rho=1.0) for d in delays])
    return conc, aif_curve(t), tr_s


@pytest.mark.parametrize("mtt_s", [2.0, 4.0])
def test_delay_csvd_osvd_insensitive_ssvd_not(mtt_s):
    conc, aif, tr = _delayed_curves(mtt_s=mtt_s)
    ratio = {}
    for method in ("ssvd", "csvd", "osvd"):
        fit = DSCModel(0.03, tr, method, kh=1, rho=1, device="cpu").fit_concentration(conc, aif)
        ratio[method] = fit.cbf / fit.cbf[0]
    assert np.all(np.abs(ratio["csvd"] - 1) <= 0.10), ratio["csvd"]
    assert np.all(np.abs(ratio["osvd"] - 1) <= 0.10), ratio["osvd"]
    # sSVD is delay-sensitive: a "cSVD" that is secretly sSVD fails the lines above
    assert ratio["ssvd"].min() < 0.88, ratio["ssvd"]


def test_fake_csvd_top_left_block_is_caught():
    """A cSVD that builds the 2N circulant but inverts its top-left N x N block is sSVD."""
    conc, aif, tr = _delayed_curves()
    n = aif.size
    fake = dec.circulant_matrix(aif, tr)[:n, :n]  # == the lower-triangular Toeplitz matrix
    np.testing.assert_allclose(fake, dec.toeplitz_matrix(aif, tr))
    r = conc @ dec.truncated_pinv(fake, 0.1).T
    ratio = r.max(1) / r.max(1)[0]
    assert ratio.min() < 0.9  # the delay test would flag it


def test_csvd_svd_and_fft_agree_float64():
    rng = np.random.default_rng(3)
    conc, aif, tr = _delayed_curves(tr_s=1.5, n=60)
    conc = conc + rng.normal(0, 0.05, conc.shape)
    for thr in (0.05, 0.1, 0.3):
        ref = dec.csvd_reference(conc, aif, tr, thr)
        fft = dec.csvd_fft(conc, aif, tr, thr)
        op = conc @ dec.csvd_operator(aif, tr, thr)
        scale = np.abs(ref).max()
        assert np.abs(fft - ref).max() <= 1e-10 * scale
        assert np.abs(op - ref).max() <= 1e-10 * scale


def test_exponential_residue_cbv_mtt_tmax():
    tr = 1.0
    t = np.arange(90) * tr
    mtts = np.array([2.0, 4.0, 6.0, 9.0])
    delays = np.array([0.0, 1.0, 2.0, 3.0])
    cbf = 50.0
    conc = np.array([tissue_curve(t, cbf, m, d) for m, d in zip(mtts, delays, strict=True)])
    aif = aif_curve(t)
    for method in ("osvd", "csvd", "ssvd"):
        fit = DSCModel(0.03, tr, method, device="cpu").fit_concentration(conc, aif)
        true_cbv = cbf * mtts / 60.0
        np.testing.assert_allclose(fit.cbv, true_cbv, rtol=0.02)
        assert np.all(np.diff(fit.mtt) > 0), (method, fit.mtt)
        if method != "ssvd":  # Tmax follows the bolus delay (cSVD/oSVD)
            assert np.all(np.diff(fit.tmax) > 0), (method, fit.tmax)
            # truncation smooths the residue, so its peak lags the true delay a little
            assert np.all((fit.tmax >= delays) & (fit.tmax <= delays + 2.5 * tr)), fit.tmax


def test_kh_rho_applied_to_cbf_and_cbv():
    conc, aif, tr = _delayed_curves()
    absolute = DSCModel(0.03, tr, "csvd", kh=0.733, rho=1.04, device="cpu")
    relative = DSCModel(0.03, tr, "csvd", kh=1.0, rho=1.0, device="cpu")
    fa, fr = absolute.fit_concentration(conc, aif), relative.fit_concentration(conc, aif)
    np.testing.assert_allclose(fa.cbf / fr.cbf, 0.733 / 1.04, rtol=1e-5)
    np.testing.assert_allclose(fa.cbv / fr.cbv, 0.733 / 1.04, rtol=1e-5)
    np.testing.assert_allclose(fa.mtt, fr.mtt, rtol=1e-5)


def test_truth_recovered_with_default_kh_rho():
    """Curves simulated with kH/rho are quantified back to the simulated CBV."""
    tr = 1.0
    t = np.arange(90) * tr
    conc = tissue_curve(t, 40.0, 5.0)[None, :]
    fit = DSCModel(0.03, tr, "csvd", device="cpu").fit_concentration(conc, aif_curve(t))
    np.testing.assert_allclose(fit.cbv, 40.0 * 5.0 / 60.0, rtol=0.02)


@pytest.mark.parametrize("method", ["ssvd", "csvd", "osvd", "tikhonov"])
def test_negative_residue_values_are_kept(method):
    rng = np.random.default_rng(5)
    conc, aif, tr = _delayed_curves()
    conc = conc + rng.normal(0, 0.02 * conc.max(), conc.shape)
    fit = DSCModel(0.03, tr, method, device="cpu").fit_concentration(conc, aif, return_residue=True)
    assert fit.residue.min() < 0  # not clipped
    scale = 0.733 / 1.04
    np.testing.assert_allclose(fit.cbf, 6000 * scale * fit.residue.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(fit.tmax, fit.residue.argmax(axis=1) * tr)
    np.testing.assert_allclose(fit.mtt, 60 * fit.cbv / fit.cbf, rtol=1e-5)


def test_tikhonov_fixed_and_gcv():
    rng = np.random.default_rng(7)
    conc, aif, tr = _delayed_curves()
    quiet = conc + rng.normal(0, 0.002 * conc.max(), conc.shape)
    noisy = conc + rng.normal(0, 0.05 * conc.max(), conc.shape)
    fixed = DSCModel(0.03, tr, "tikhonov", mu=0.1, device="cpu").fit_concentration(quiet, aif)
    np.testing.assert_allclose(fixed.threshold, 0.1)
    gq = DSCModel(0.03, tr, "tikhonov", device="cpu").fit_concentration(quiet, aif)
    gn = DSCModel(0.03, tr, "tikhonov", device="cpu").fit_concentration(noisy, aif)
    assert np.median(gn.threshold) > np.median(gq.threshold)  # GCV regularises noise more
    true_cbf = 60.0 * 0.733 / 1.04  # simulated with kH = rho = 1, quantified with defaults
    assert abs(np.median(gq.cbf) - true_cbf) < abs(np.median(gn.cbf) - true_cbf)


def test_ssvd_matches_explicit_pseudoinverse():
    conc, aif, tr = _delayed_curves(n=40)
    r = dec.ssvd(conc, aif, tr, 0.2)
    a = dec.toeplitz_matrix(aif, tr)
    u, s, vt = np.linalg.svd(a)
    s_inv = np.where(s >= 0.2 * s.max(), 1 / s, 0)
    np.testing.assert_allclose(r, conc @ (vt.T @ np.diag(s_inv) @ u.T).T, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", ["osvd", "csvd", "ssvd", "tikhonov"])
def test_chunking_does_not_change_results(method):
    """Maps do not depend on the memory budget beyond float32 rounding.

    Not bitwise: OpenBLAS picks GEMM kernels (and thread splits) by matrix size, so a voxel's
    dot products may round differently in a chunk of 256 than in one of 1050 voxels."""
    conc, aif, tr = _delayed_curves()
    rng = np.random.default_rng(1)
    conc = np.repeat(conc, 150, axis=0) * (1 + 0.05 * rng.standard_normal((7 * 150, 1)))
    whole = DSCModel(0.03, tr, method, device="cpu").fit_concentration(conc, aif)
    for budget in (1, 3_000_000):  # 1 byte: the 256-voxel floor; 3 MB: ~290-voxel chunks
        chunked = DSCModel(0.03, tr, method, device="cpu", memory_budget=budget).fit_concentration(
            conc, aif
        )
        for name in ("cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi"):
            np.testing.assert_allclose(
                getattr(whole, name), getattr(chunked, name), rtol=2e-6, atol=0, err_msg=name
            )
