"""2D slice timing on the metadata of real acquisitions (bids-standard/bids-examples).

Each fixture under tests/data/bids_examples (sidecars and aslcontext files of asl001-asl005
and 2d_mb_pcasl, see its README) is read as it is; synthetic images with a known truth are
made for it in which slice k is read SliceTiming[k] after the volume starts (effective delay
PLD + SliceTiming[k], PASL TI + SliceTiming[k]). The pipeline must recover CBF with no
slice-dependent drift (<= 3 % between slices) and, for multi-delay data, ATT within 0.05 s in
every slice; ignoring the timing must visibly fail the same check (so the test can fail).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gpuperf.asl import constants as K
from gpuperf.asl.bids import read_aslcontext
from gpuperf.asl.model import ASLModel
from gpuperf.asl.pipeline import run_asl
from gpuperf.errors import InputError
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL, slice_timed

DATA = Path(__file__).parent / "data" / "bids_examples"
DATASETS = ["asl001", "asl002", "asl003", "asl004", "asl005", "2d_mb_pcasl"]
M0_TRUE = 1000.0
CBF_X = np.array([30.0, 60.0, 90.0])  # truth varies along x
ATT_Y = {"PCASL": np.array([0.83, 1.21, 1.57]), "PASL": np.array([0.43, 0.61, 0.79])}


def _series_json(dataset: str) -> Path:
    (p,) = sorted((DATA / dataset).glob("sub-*/perf/*_asl.json"))
    return p


def _per_volume(v, n):
    return np.full(n, float(v)) if not isinstance(v, list) else np.asarray(v, dtype=float)


def make_series(dataset: str, out: Path, *, slice_axis_len: int = 3) -> dict:
    """Write ``dataset``'s sidecars with a synthetic 4D image carrying slice-timing truth."""
    src = _series_json(dataset)
    meta = json.loads(src.read_text())
    ctx = src.with_name(src.name.replace("_asl.json", "_aslcontext.tsv"))
    types = read_aslcontext(ctx)
    n_vol = len(types)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.parent.glob("*"):
        if f.suffix in (".json", ".tsv"):
            shutil.copy(f, out / f.name)
    timing = np.asarray(meta.get("SliceTiming", [0.0] * slice_axis_len), dtype=float)
    two_d = meta.get("MRAcquisitionType") == "2D" and "SliceTiming" in meta
    offs = timing if two_d else np.zeros(timing.size)
    nz = timing.size
    lt = meta["ArterialSpinLabelingType"]
    pld = _per_volume(meta["PostLabelingDelay"], n_vol)
    if lt == "PASL":
        tau = np.full(n_vol, float(np.atleast_1d(meta["BolusCutOffDelayTime"])[0]))
    else:
        tau = _per_volume(meta["LabelingDuration"], n_vol)
    alpha = meta.get("LabelingEfficiency", K.ALPHA_BY_TYPE[lt])
    alpha *= K.background_suppression_factor(
        meta["BackgroundSuppression"], meta.get("BackgroundSuppressionNumberPulses")
    )
    t1b, lam = K.T1_BLOOD_BY_FIELD_S[3.0], K.LAMBDA_ML_G
    cbf = np.broadcast_to(CBF_X[:, None, None], (3, 3, nz))
    att = np.broadcast_to(ATT_Y[lt][None, :, None], (3, 3, nz))
    st = np.broadcast_to(offs[None, None, :], (3, 3, nz))
    dm_plds = sorted({round(p, 6) for p, t in zip(pld, types, strict=True)
                      if t in ("control", "label", "deltam")})  # fmt: skip
    single = len(dm_plds) == 1
    vols = np.zeros((3, 3, nz, n_vol))
    for i, t in enumerate(types):
        if t in ("control", "label", "deltam"):
            if single:  # consensus assumptions (Alsop 2015): bolus fully delivered, T1 blood
                f = cbf / 6000.0
                pe = pld[i] + st
                if lt == "PASL":
                    dm = 2 * alpha * (f / lam) * tau[i] * np.exp(-pe / t1b)
                else:
                    dm = 2 * alpha * t1b * (f / lam) * np.exp(-pe / t1b) * -np.expm1(-tau[i] / t1b)
            else:
                t_nom = pld[i] + (0.0 if lt == "PASL" else tau[i])
                mdl = slice_timed(BUXTON_PASL if lt == "PASL" else BUXTON_PCASL)
                p = np.stack([cbf.ravel(), att.ravel(), st.ravel()], 1)
                consts = (K.T1_TISSUE_S, t1b, lam, alpha)
                dm = mdl.evaluate(np, p, np.array([[t_nom, tau[i]]]), consts)[0]
                dm = dm.reshape(cbf.shape)
            dm = M0_TRUE * dm
            vols[..., i] = {"control": M0_TRUE, "label": M0_TRUE - dm, "deltam": dm}[t]
        elif t == "m0scan":
            tr = _per_volume(meta.get("RepetitionTimePreparation", meta.get("RepetitionTime")),
                             n_vol)[i]  # fmt: skip
            vols[..., i] = M0_TRUE * -np.expm1(-tr / K.T1_TISSUE_S)
    aff = np.diag([3.0, 3.0, 4.0, 1.0])
    asl = out / src.name.replace(".json", ".nii.gz")
    nib.save(nib.Nifti1Image(vols.astype(np.float32), aff), asl)
    if meta["M0Type"] == "Separate":
        m0j = json.loads(src.with_name(src.name.replace("_asl.json", "_m0scan.json")).read_text())
        tr = m0j.get("RepetitionTimePreparation", m0j.get("RepetitionTime"))
        tr = float(np.atleast_1d(tr)[0])
        m0 = np.full((3, 3, nz), M0_TRUE * -np.expm1(-tr / K.T1_TISSUE_S))
        nib.save(
            nib.Nifti1Image(m0.astype(np.float32), aff), out / asl.name.replace("_asl", "_m0scan")
        )
    return {"asl": asl, "meta": meta, "multi": not single, "two_d": two_d, "lt": lt,
            "cbf": np.asarray(cbf), "att": np.asarray(att), "timing": timing}  # fmt: skip


def _maps(res, names=("cbf", "att")):
    return {n: np.asarray(nib.load(res.outputs[n]).dataobj) for n in names if n in res.outputs}


def _slice_drift(cbf, truth):
    """Largest difference between slices of the slice-mean CBF relative to the truth."""
    per_slice = np.nanmean(cbf / truth, axis=(0, 1))
    return float(per_slice.max() - per_slice.min()), per_slice


@pytest.mark.parametrize("dataset", DATASETS)
def test_fixture_recovers_truth_in_every_slice(dataset, tmp_path):
    s = make_series(dataset, tmp_path / "in")
    res = run_asl(s["asl"], tmp_path / "out", device="cpu", prefix="p")
    m = _maps(res)
    drift, per_slice = _slice_drift(m["cbf"], s["cbf"])
    assert drift <= 0.03, (dataset, per_slice)
    np.testing.assert_allclose(per_slice, 1.0, atol=0.03)
    if s["multi"]:
        assert np.nanmax(np.abs(m["att"] - s["att"])) <= 0.05
    text = json.dumps(json.loads(res.outputs["cbf"].with_name("p_cbf.json").read_text()))
    if s["two_d"]:  # the sidecar records the timing used
        assert '"SliceTimingApplied": true' in text
        assert str(float(s["timing"][1])) in text
    else:
        assert '"SliceTimingApplied": false' in text


@pytest.mark.parametrize("dataset", ["asl002", "asl004", "2d_mb_pcasl"])
def test_ignoring_slice_timing_drifts(dataset, tmp_path):
    """The same data with --ignore-slice-timing: the check above fails (the test can fail)."""
    s = make_series(dataset, tmp_path / "in")
    res = run_asl(s["asl"], tmp_path / "out", device="cpu", prefix="p", ignore_slice_timing=True)
    m = _maps(res)
    drift, _ = _slice_drift(m["cbf"], s["cbf"])
    worst_att = np.nanmax(np.abs(m["att"] - s["att"])) if s["multi"] else 0.0
    assert drift > 0.1 or worst_att > 0.2, (drift, worst_att)


def test_report_notes_and_qc_carry_the_timing(tmp_path):
    from gpuperf.io.qc import load_extra

    s = make_series("asl002", tmp_path / "in")
    res = run_asl(s["asl"], tmp_path / "out", device="cpu", prefix="p")
    extra = load_extra(res.outputs["qc"])
    assert any("SliceTiming" in n and "applied" in n for n in extra["notes"])


def _broken(tmp_path, **change):
    s = make_series("asl004", tmp_path / "in")
    js = s["asl"].with_name(s["asl"].name.replace(".nii.gz", ".json"))
    meta = json.loads(js.read_text())
    meta.update(change)
    js.write_text(json.dumps(meta))
    return s["asl"], js


@pytest.mark.parametrize(
    "change, words",
    [
        ({"SliceTiming": [0.0, 0.05, 0.1]}, "3 entries but the image has 24 slices"),
        ({"SliceTiming": [-0.1] + [0.0] * 23}, "finite and >= 0"),
        ({"SliceTiming": [float(k * 45) for k in range(24)]}, "milliseconds"),
        ({"SliceTiming": "0 0.1"}, "list of numbers"),
        ({"SliceEncodingDirection": "z"}, "SliceEncodingDirection"),
    ],
)
def test_bad_slice_timing_is_one_clear_error(tmp_path, change, words):
    asl, js = _broken(tmp_path, **change)
    with pytest.raises(InputError) as e:
        run_asl(asl, tmp_path / "out", device="cpu")
    msg = str(e.value)
    assert js.name in msg and words in msg and "\n" not in msg
    field = "SliceEncodingDirection" if "SliceEncodingDirection" in change else "SliceTiming"
    assert field in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_slice_timing_cli_exit_2(tmp_path):
    from typer.testing import CliRunner

    from gpuperf.cli import app

    asl, js = _broken(tmp_path, SliceTiming=[0.0, 0.1])
    r = CliRunner().invoke(app, ["asl", str(asl), "--out", str(tmp_path / "o"), "--no-report"])
    assert r.exit_code == 2
    assert "SliceTiming" in r.output and js.name in r.output and "Traceback" not in r.output


def test_reversed_slice_encoding_direction(tmp_path):
    """k-: the first SliceTiming entry is the last slice along k."""
    s = make_series("asl004", tmp_path / "in")
    from gpuperf.asl.bids import read_asl_series, slice_time_offsets

    js = s["asl"].with_name(s["asl"].name.replace(".nii.gz", ".json"))
    meta = json.loads(js.read_text())
    meta["SliceEncodingDirection"] = "k-"
    js.write_text(json.dumps(meta))
    off = slice_time_offsets(read_asl_series(s["asl"]))
    np.testing.assert_allclose(off[0, 0, :], s["timing"][::-1])


def test_time_offset_array_api_matches_shifted_plds():
    """ASLModel.fit(time_offset_s=dt) equals a model whose PLDs are PLD + dt (one voxel)."""
    plds = np.array([0.25, 0.5, 1.0, 1.5, 2.0])
    dt = 0.37
    truth = np.array([[55.0, 1.1]])
    shifted = ASLModel("PCASL", plds + dt, 1.8, device="cpu", dtype=np.float64)
    y, _ = shifted.kinetic_model.evaluate(np, truth, shifted.sample_times(), shifted.consts())
    a = ASLModel("PCASL", plds, 1.8, device="cpu", dtype=np.float64).fit(y, 1.0, time_offset_s=dt)
    b = shifted.fit(y, 1.0)
    np.testing.assert_allclose([a.cbf[0], a.att[0]], [b.cbf[0], b.att[0]], rtol=1e-6)
    np.testing.assert_allclose(a.cbf[0], 55.0, rtol=1e-4)


@pytest.mark.emulated_gpu
@pytest.mark.parametrize("arterial", [False, True])
def test_slice_timed_fit_one_launch_on_emulated_gpu(emulated_gpu, arterial):
    """CuPy path (emulated): every slice in one fused launch of the tissue fit; maps as NumPy."""
    rng = np.random.default_rng(4)
    plds = np.tile([0.25, 0.5, 0.75, 1.0, 1.5, 2.0], 2)
    n = 120
    dt = np.repeat(np.linspace(0.0, 0.6, 6), n // 6)  # six "slices"
    truth = np.stack([rng.uniform(20, 80, n), rng.uniform(0.7, 1.6, n)], 1)
    m = ASLModel("PCASL", plds, 1.8, arterial=arterial, max_iter=200)
    y, _ = slice_timed(m.kinetics.tissue).evaluate(np, np.column_stack([truth, dt]),
                                                   m.sample_times(), m.consts())  # fmt: skip
    y = (y + rng.normal(0, 2e-5, y.shape)).astype(np.float32)
    m.device = "cpu"
    a = m.fit(y, 1.0, time_offset_s=dt)
    emulated_gpu.STATE.launches.clear()
    m.device = "gpu"
    b = m.fit(y, 1.0, time_offset_s=dt)
    assert b.backend == "cupy"
    launches = [x for x in emulated_gpu.STATE.launches if x[0].startswith("lm_fit")]
    assert launches and "Sliced" in launches[0][0]
    if not arterial:  # the tissue fit (+ at most one kink refit), never one per slice
        assert len(launches) <= 3
    same = (a.status == b.status) & np.isclose(a.cbf, b.cbf, rtol=2e-3, equal_nan=True)
    # arterial: a multi-start over aBAT intervals on data without an arterial part; float32
    # rounding legitimately tips a few voxels between near-equal chi2 (test_emulated_gpu.py)
    assert same.mean() > (0.9 if arterial else 0.95)
    if not arterial:  # (the arterial part may take up noise: truth checked in test_asl_fit)
        ok = a.status == 0
        np.testing.assert_allclose(a.cbf[ok], truth[ok, 0], rtol=0.02)


def test_accuracy_benchmark_rows_for_2d_data():
    from gpuperf.benchmarks.accuracy import TSV_COLUMNS, asl_slice_timing_accuracy

    rows = asl_slice_timing_accuracy(60, seed=1, device="cpu")
    assert rows and all(set(TSV_COLUMNS) <= set(r) for r in rows)

    def bias(method, value, q="cbf"):
        (r,) = [r for r in rows if (r["method"], r["value"], r["quantity"]) == (method, value, q)]
        return r["median_bias"]

    for v in (0.0, 0.3, 0.6):
        assert abs(bias("gkm_2d", v)) < 4.0 and abs(bias("gkm_2d", v, "att")) < 0.05
    assert bias("gkm_2d_ignored", 0.75) < -25.0  # e^{-0.75/1.65} - 1 = -37 %
    assert bias("gkm_2d_ignored", 0.75, "att") < -0.6
    drift_ok = bias("consensus_2d", 0.75) - bias("consensus_2d", 0.0)
    drift_bad = bias("consensus_2d_ignored", 0.75) - bias("consensus_2d_ignored", 0.0)
    assert abs(drift_bad) > 2.5 * abs(drift_ok)


@pytest.mark.emulated_gpu
def test_slice_timed_consensus_on_emulated_gpu(emulated_gpu):
    """Single PLD on CuPy (emulated): per-voxel effective delays, same maps as NumPy."""
    dt = np.linspace(0.0, 0.7, 40)
    f = 60.0 / 6000.0
    t1b, lam, alpha = 1.65, 0.9, 0.85
    y = 2 * alpha * t1b * (f / lam) * np.exp(-(1.8 + dt) / t1b) * -np.expm1(-1.8 / t1b)
    y = np.repeat(y[:, None], 3, axis=1)
    m = ASLModel("PCASL", [1.8] * 3, 1.8, device="cpu")
    a = m.fit(y, 1.0, time_offset_s=dt)
    m.device = "gpu"
    b = m.fit(y, 1.0, time_offset_s=dt)
    assert b.backend == "cupy"
    np.testing.assert_allclose(b.cbf, a.cbf, rtol=1e-6)
    np.testing.assert_allclose(a.cbf, 60.0, rtol=1e-5)
