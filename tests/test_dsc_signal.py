"""DSC signal conversion, acquisition checks, bolus arrival, status flags, brain mask."""

from __future__ import annotations

import numpy as np
import pytest

from gpuperf.dsc import DSCModel
from gpuperf.dsc.model import auto_brain_mask
from gpuperf.dsc.signal import check_te_tr, detect_bolus_arrival, signal_to_dr2s
from gpuperf.dsc.simulate import phantom_arrays
from gpuperf.errors import InputError
from gpuperf.status import Status


def test_te_in_milliseconds_is_rejected_with_hint():
    with pytest.raises(InputError, match="milliseconds") as exc:
        check_te_tr(30.0, 1.5, "sub-01_dsc.json")
    assert exc.value.field == "EchoTime"
    assert "0.03" in str(exc.value) and "sub-01_dsc.json" in str(exc.value)
    with pytest.raises(InputError, match="milliseconds"):
        DSCModel(te_s=25, tr_s=1.5)
    with pytest.raises(InputError, match="RepetitionTime"):
        check_te_tr(0.03, 1500.0)
    with pytest.raises(InputError, match="EchoTime"):
        check_te_tr(None, 1.5)
    assert check_te_tr(0.03, 1.5) == (0.03, 1.5)


def test_dr2s_formula_in_seconds():
    te = 0.025
    s0 = 800.0
    dr2s_true = np.array([0, 0, 0, 0, 10.0, 30.0, 12.0, 4.0])
    sig = (s0 * np.exp(-te * dr2s_true))[None, :].astype(np.float64)
    dr2s, flags = signal_to_dr2s(sig, te, 4)
    np.testing.assert_allclose(dr2s[0], dr2s_true, atol=1e-9)
    assert flags[0] == 0


def test_bad_voxels_flagged_not_fatal():
    t = np.arange(30)
    good = 500 * np.exp(-0.03 * 20 * np.exp(-(((t - 12) / 3.0) ** 2)))
    sig = np.tile(good, (5, 1)).astype(np.float32)
    sig[1, 15] = 0.0  # signal <= 0
    sig[2, 20] = np.nan
    sig[3, :5] = -1.0  # no usable baseline (and <= 0)
    fit = DSCModel(0.03, 1.0, "csvd", device="cpu", baseline=5).fit(
        sig, aif=np.mean(-np.log(sig[[0, 4]] / 500.0) / 0.03, axis=0)
    )
    assert fit.status[0] == 0 and fit.status[4] == 0
    assert fit.status[1] & Status.NONPOSITIVE_INPUT
    assert fit.status[2] & Status.NONFINITE_INPUT
    assert fit.status[3] & Status.NO_BASELINE
    assert np.isfinite(fit.cbf[[0, 4]]).all()
    assert np.isnan(fit.cbf[1:4]).all() and np.isnan(fit.mtt[1:4]).all()


def test_bolus_arrival_detection_and_override():
    ph = phantom_arrays(shape=(16, 16, 2), noise_sd=0.005)
    fit = DSCModel(ph["te_s"], ph["tr_s"], "csvd", device="cpu").fit(ph["signal"], aif=ph["artery"])
    first_bolus_frame = int(np.ceil(8.0 / ph["tr_s"]))  # AIF t0 = 8 s
    assert 2 <= fit.n_baseline <= first_bolus_frame
    fixed = DSCModel(ph["te_s"], ph["tr_s"], "csvd", device="cpu", baseline=3).fit(
        ph["signal"], aif=ph["artery"]
    )
    assert fixed.n_baseline == 3
    s = np.r_[np.full(10, 100.0), 60, 30, 50, 80, 95, 100]
    assert detect_bolus_arrival(s) == 10


def test_auto_brain_mask_separates_background():
    ph = phantom_arrays(shape=(20, 20, 2), noise_sd=0.01)
    mask = auto_brain_mask(ph["signal"][..., :4].mean(-1))
    assert (mask == ph["brain"]).mean() > 0.99
    fit = DSCModel(ph["te_s"], ph["tr_s"], "csvd", device="cpu").fit(ph["signal"], aif=ph["artery"])
    assert (fit.mask == ph["brain"]).mean() > 0.99
    assert np.isnan(fit.cbf[~fit.mask]).all()


def test_fortran_and_c_ordered_input_give_the_same_maps():
    """NIfTI arrays are Fortran-ordered; the model numbers voxels in the array's own order."""
    ph = phantom_arrays(shape=(20, 18, 3), noise_sd=0.005)
    c_order = np.ascontiguousarray(ph["signal"])
    f_order = np.asfortranarray(ph["signal"])
    model = DSCModel(ph["te_s"], ph["tr_s"], "osvd", device="cpu")
    a = model.fit(c_order, aif="auto", ref_mask=ph["brain"])
    b = model.fit(f_order, aif="auto", ref_mask=ph["brain"])
    np.testing.assert_allclose(a.cbf, b.cbf, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(a.rcbv, b.rcbv, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.aif_voxels, b.aif_voxels)
    assert ph["artery"].reshape(-1)[a.aif_voxels].all()  # C-order flat indices


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 11, 1000, 1001])
def test_brain_median_curve_is_nanmedian_bit_for_bit(n):
    """column_median (one partition per frame) is np.nanmedian of the float64 rows, bit for
    bit: odd and even counts, ties, infinities, signed zeros in the middle, float32 and
    float64 blocks, and a NaN (nanmedian's own path)."""
    from gpuperf.dsc.plausibility import column_median

    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((n, 9)) * rng.uniform(0.1, 100)).astype(dtype)
        if n > 3:
            x[rng.integers(0, n, 3), 1] = x[0, 1]  # ties
            x[:2, 2] = [np.inf, -np.inf]
        if n > 5:
            x[: n // 2 + 1, 3] = -0.0  # dR2* of a frame equal to S0: -0.0
            x[:2, 3] = 0.0
            x[:, 4] = 0.0
        want = np.nanmedian(x.astype(np.float64), axis=0)
        got = column_median(x)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        x[0, 5] = np.nan
        assert column_median(x).tobytes() == np.nanmedian(x.astype(np.float64), 0).tobytes()
