"""Method-accuracy benchmark and baselines: statistics, files, and the known-truth checks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from gpuperf.benchmarks import accuracy as acc
from gpuperf.benchmarks import baselines as bl


def test_summarize_relative_and_absolute():
    s = acc.summarize(np.array([90.0, 110.0, np.nan, 100.0, 120.0]), truth=100.0)
    assert s["n"] == 5 and s["n_valid"] == 4
    assert s["mean"] == pytest.approx(105.0)
    assert s["bias"] == pytest.approx(5.0)  # % of truth
    assert s["sd"] == pytest.approx(np.std([90, 110, 100, 120], ddof=1))  # truth 100: % == abs
    assert s["bias_unit"] == "%"
    assert s["median_bias"] == pytest.approx(5.0)  # median of -10, 10, 0, 20
    assert (s["q25"], s["q75"]) == pytest.approx((-2.5, 12.5))
    t = acc.summarize(np.array([1.5, 2.5]), truth=1.0, absolute=True)
    assert t["bias"] == pytest.approx(1.0) and t["bias_unit"] == "abs"
    empty = acc.summarize(np.array([np.nan]), truth=1.0)
    assert empty["n_valid"] == 0 and np.isnan(empty["bias"])


def test_dsc_truth_follows_central_volume():
    t = acc.dsc_truth({"cbf": 60.0, "mtt_s": 4.0, "delay_s": 2.0, "snr": 50.0})
    assert t == {"cbf": 60.0, "cbv": 4.0, "mtt": 4.0, "tmax": 2.0}


def test_phantoms_layout_and_noise():
    sig, aif, conds, t = acc.dsc_phantom(3, seed=1)
    assert sig.shape == (3 * len(conds), acc.DSC_FRAMES) and aif.shape == t.shape
    assert {c[0] for c in conds} == set(acc.DSC_SWEEPS)
    # the high-SNR condition is closer to its noise-free curve than the low-SNR one
    i20 = next(i for i, c in enumerate(conds) if c[0] == "snr" and c[2] == 20.0)
    i200 = next(i for i, c in enumerate(conds) if c[0] == "snr" and c[2] == 200.0)
    base = lambda i: sig[3 * i : 3 * i + 3, : acc.DSC_BASELINE].std()  # noqa: E731
    assert base(i20) > 3 * base(i200)
    multi, single, aconds = acc.asl_phantom(2, seed=1)
    assert multi.shape == single.shape == (2 * len(aconds), len(acc.ASL_PLDS_S))


def test_dsc_and_asl_accuracy_small():
    rows = acc.dsc_accuracy(8, methods=("csvd",), include_osipy=False, device="cpu")
    n_cond = sum(len(v[1]) for v in acc.DSC_SWEEPS.values())
    assert len(rows) == n_cond * len(acc.DSC_UNITS)
    assert all(set(acc.TSV_COLUMNS) <= set(r) for r in rows)
    assert all(r["n"] == 8 for r in rows)
    # cSVD is delay-insensitive (Wu 2003): CBF at 0 s and 3 s agree within the noise
    cbf = {r["value"]: r for r in rows if r["sweep"] == "delay" and r["quantity"] == "cbf"}
    se = max(cbf[0.0]["sd"], cbf[3.0]["sd"]) / np.sqrt(8)
    assert abs(cbf[0.0]["bias"] - cbf[3.0]["bias"]) < 4 * se + 2.0
    arows = acc.asl_accuracy(8, include_osipy=False, device="cpu")
    methods = {r["method"] for r in arows}
    assert methods == {"gkm", "consensus"}
    # the kinetic-model fit is unbiased at high SNR (model-matched data)
    hi = next(r for r in arows if r["method"] == "gkm" and r["sweep"] == "snr"
              and r["value"] == 100.0 and r["quantity"] == "cbf")  # fmt: skip
    assert abs(hi["bias"]) < 3.0


def test_run_accuracy_writes_readable_files(tmp_path):
    out = tmp_path / "acc"
    summary = acc.run_accuracy(out, voxels_per_condition=6, device="cpu", include_osipy=False)
    names = sorted(p.name for p in out.iterdir())
    assert "accuracy_dsc.tsv" in names and "accuracy_asl.tsv" in names
    assert {f"accuracy_dsc_{s}.png" for s in acc.DSC_SWEEPS} <= set(names)
    assert {f"accuracy_asl_{s}.png" for s in acc.ASL_SWEEPS} <= set(names)
    assert not [n for n in names if n.startswith(".gpuperf-tmp")]
    with open(out / "accuracy_dsc.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert tuple(rows[0]) == acc.TSV_COLUMNS
    assert {r["method"] for r in rows} == set(acc.DSC_METHODS)
    side = json.loads((out / "accuracy_summary.json").read_text())
    assert side["SoftwareName"] == "gpuperf" and side["Headline"]
    assert summary["files"]
    with open(out / "accuracy_dsc_delay.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    from gpuperf.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        acc.run_accuracy(out, voxels_per_condition=2, device="cpu", include_osipy=False)


# -- baselines ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dsc_curves():
    from gpuperf.dsc.simulate import aif_curve, tissue_curve

    t = np.arange(60) * 1.5
    rng = np.random.default_rng(3)
    curves = np.stack([tissue_curve(t, 60.0, 4.0, d) for d in (0.0, 1.5, 3.0)])
    noisy = curves + rng.normal(0, 0.05, (3, 60))
    return t, aif_curve(t), np.vstack([curves, noisy])


def test_dsc_baselines_agree_with_gpuperf(dsc_curves):
    """The voxel loop, the plain NumPy sweep and gpuperf's oSVD are the same method."""
    from gpuperf.dsc import DSCModel

    t, aif, curves = dsc_curves
    loop = bl.svd_loop(curves, aif, 1.5, "osvd")
    sweep = bl.numpy_circulant_sweep(curves, aif, 1.5)
    gp = DSCModel(te_s=0.03, tr_s=1.5, method="osvd", device="cpu", dtype=np.float64)
    fit = gp.fit_concentration(curves, aif)
    np.testing.assert_allclose(loop["cbf"], sweep["cbf"], rtol=1e-9)
    np.testing.assert_allclose(fit.cbf, sweep["cbf"], rtol=1e-4)
    np.testing.assert_allclose(fit.tmax, sweep["tmax"])
    ssvd = DSCModel(te_s=0.03, tr_s=1.5, method="ssvd", device="cpu", dtype=np.float64)
    np.testing.assert_allclose(
        ssvd.fit_concentration(curves, aif).cbf, bl.svd_loop(curves, aif, 1.5)["cbf"], rtol=1e-4
    )


def test_oscillation_index_of_known_curves():
    flat = np.ones((1, 10))
    assert bl.oscillation_index(flat)[0] == 0.0
    zigzag = np.array([[1.0, 0.0] * 5])  # |second difference| = 2 at each of 8 points
    assert bl.oscillation_index(zigzag)[0] == pytest.approx(8 * 2 / 10)


def test_scipy_loop_recovers_model_matched_truth():
    from gpuperf.fit.models.buxton import BUXTON_PCASL

    pld = np.array(acc.ASL_PLDS_S)
    x = np.stack([acc.ASL_TAU_S + pld, np.full(pld.size, acc.ASL_TAU_S)], axis=1)
    truth = np.array([[60.0, 1.2], [25.0, 0.7]])
    y = BUXTON_PCASL.evaluate(np, truth, x, np.array([1.3, 1.65, 0.9, 0.85]))[0]
    out = bl.scipy_loop_asl_fit(y, pld, acc.ASL_TAU_S)
    np.testing.assert_allclose(np.stack([out["cbf"], out["att"]], 1), truth, rtol=1e-3)


osipy_missing = pytest.mark.skipif(
    bl.osipy_version() is None, reason="osipy (optional benchmark dependency) is not installed"
)


@osipy_missing
def test_osipy_known_defects_are_measured():
    """osipy 0.1.4: 'cSVD' is sSVD (top-left block), PLD used as t: numbers, not opinions."""
    rows = acc.osipy_checks(device="cpu")
    f = acc.osipy_findings(rows)
    assert f["osipy_csvd_minus_ssvd_max_abs"] == pytest.approx(0.0, abs=1e-9)
    lo, hi = f["dsc_cbf_error_pct_range_over_delays_0_4s"]["osipy_osvd_x_kh"]
    glo, ghi = f["dsc_cbf_error_pct_range_over_delays_0_4s"]["gpuperf_osvd"]
    assert hi - lo > 2 * (ghi - glo)  # osipy's oSVD swings with delay, gpuperf's does not
    clo, chi = f["asl_cbf_error_pct_range_over_att_0p5_2p5s"]["gpuperf_gkm"]
    assert max(abs(clo), abs(chi)) < 0.1
    olo, _ohi = f["asl_cbf_error_pct_range_over_att_0p5_2p5s"]["osipy_gkm"]
    assert olo < -50.0
