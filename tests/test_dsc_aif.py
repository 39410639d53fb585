"""AIF: automatic (Mouridsen-style) selection, external curves, gamma-variate."""

from __future__ import annotations

import numpy as np
import pytest

from gpuperf.dsc import DSCModel
from gpuperf.dsc.aif import (
    auto_aif,
    fit_gamma_aif,
    gamma_variate,
    gamma_variate_first_moment,
    read_aif_curve,
)
from gpuperf.dsc.simulate import phantom_arrays
from gpuperf.errors import InputError


@pytest.mark.parametrize("noise_sd,seed", [(0.0, 0), (0.005, 1), (0.02, 2)])
def test_auto_aif_picks_arterial_voxels(noise_sd, seed):
    ph = phantom_arrays(shape=(32, 32, 3), noise_sd=noise_sd, seed=seed)
    fit = DSCModel(ph["te_s"], ph["tr_s"], "csvd", device="cpu").fit(ph["signal"], aif="auto")
    artery = ph["artery"].reshape(-1)
    assert fit.aif_voxels.size >= 3
    assert artery[fit.aif_voxels].all(), "automatic AIF chose non-arterial voxels"
    assert fit.mask.reshape(-1)[fit.aif_voxels].all()  # restricted to the mask


def test_auto_aif_restricted_to_usable_voxels():
    ph = phantom_arrays(shape=(32, 32, 2))
    t = ph["t_s"]
    flat = ph["dr2s"].reshape(-1, t.size)[ph["brain"].reshape(-1)]
    artery = ph["artery"].reshape(-1)[ph["brain"].reshape(-1)]
    usable = ~artery
    sel = auto_aif(flat, ph["tr_s"], usable)
    assert not artery[sel.voxels].any()


def test_read_aif_curve_formats(tmp_path):
    curve = np.linspace(0, 5, 12)
    p1 = tmp_path / "aif.txt"
    p1.write_text("\n".join(f"{v}" for v in curve))
    np.testing.assert_allclose(read_aif_curve(p1, 12), curve)
    p2 = tmp_path / "aif.tsv"
    p2.write_text("time_s\tdr2s_per_s\n" + "\n".join(f"{i}\t{v}" for i, v in enumerate(curve)))
    np.testing.assert_allclose(read_aif_curve(p2, 12), curve)
    with pytest.raises(InputError, match="12 values"):
        read_aif_curve(p1, 13)
    p3 = tmp_path / "bad.txt"
    p3.write_text("1\n2\nabc\n")
    with pytest.raises(InputError, match="line 3"):
        read_aif_curve(p3, 3)


def test_gamma_variate_first_moment_is_a_plus_1_times_b():
    t0, a, b = 2.0, 3.0, 1.5
    t = np.linspace(0, 200, 400001)
    g = gamma_variate(t, 1.0, t0, a, b)
    numeric = np.trapezoid(t * g, t) / np.trapezoid(g, t)
    assert gamma_variate_first_moment(t0, a, b) == pytest.approx(numeric, rel=1e-6)
    assert gamma_variate_first_moment(t0, a, b) == pytest.approx(t0 + (a + 1) * b)
    assert t[np.argmax(g)] == pytest.approx(t0 + a * b, abs=1e-3)  # a*b is only the peak


def test_gamma_fit_removes_recirculation():
    t = np.arange(60) * 1.0
    first = gamma_variate(t, 2.0, 8.0, 3.0, 1.5)
    late = gamma_variate(t, 1.0, 20.0, 3.0, 3.0)
    recirc = 0.15 * first.max() * late / late.max()
    fitted, params = fit_gamma_aif(first + recirc, 1.0, device="cpu")
    assert params["a"] == pytest.approx(3.0, rel=0.2)
    assert params["first_moment_s"] == pytest.approx(8.0 + 4.0 * 1.5, rel=0.1)
    assert np.abs(fitted - first).max() < 0.1 * first.max()
