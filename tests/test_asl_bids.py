"""BIDS ASL input and the file pipeline: phantoms through ``run_asl`` and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gpuperf.asl.bids import read_asl_series
from gpuperf.asl.pipeline import run_asl
from gpuperf.asl.preprocess import (
    REFERENCE_TISSUES,
    average_per_pld,
    difference_samples,
    pair_control_label,
    reference_region_m0_blood,
)
from gpuperf.asl.simulate import M0_TISSUE, write_phantom
from gpuperf.errors import InputError, OutputExistsError


def _load(p) -> np.ndarray:
    return np.asarray(nib.load(str(p)).dataobj, dtype=np.float64)


def _compare(ph, res, cbf_rtol, att_atol=None):
    mask = _load(ph["mask"]) > 0
    cbf = _load(res.outputs["cbf"])
    np.testing.assert_allclose(cbf[mask], _load(ph["truth_cbf"])[mask], rtol=cbf_rtol)
    assert np.isnan(cbf[~mask]).all()
    if att_atol is not None:
        att = _load(res.outputs["att"])
        np.testing.assert_allclose(att[mask], _load(ph["truth_att"])[mask], atol=att_atol)


def _rewrite(ph, *, volumes=None, types=None, meta_update=None, meta_drop=()):
    """Rewrite a phantom's series/context/sidecar in place (volumes: index list to keep)."""
    img = nib.load(str(ph["asl"]))
    data = np.asarray(img.dataobj)
    ctx = Path(ph["aslcontext"]).read_text().split()[1:]
    meta = json.loads(Path(ph["asl_json"]).read_text())
    if volumes is not None:
        data = data[..., volumes]
        ctx = [ctx[i] for i in volumes]
        if isinstance(meta.get("PostLabelingDelay"), list):
            meta["PostLabelingDelay"] = [meta["PostLabelingDelay"][i] for i in volumes]
    if types is not None:
        ctx = types
    meta.update(meta_update or {})
    for k in meta_drop:
        meta.pop(k, None)
    nib.Nifti1Image(data, img.affine).to_filename(str(ph["asl"]))
    Path(ph["aslcontext"]).write_text("volume_type\n" + "\n".join(ctx) + "\n")
    Path(ph["asl_json"]).write_text(json.dumps(meta))
    return data, ctx, meta


@pytest.fixture
def pcasl(tmp_path):
    return write_phantom(tmp_path / "in", "pcasl")


# ---- whole pipeline on phantoms --------------------------------------------------------------
def test_pcasl_phantom_separate_m0(pcasl, tmp_path):
    res = run_asl(pcasl["asl"], tmp_path / "out", device="cpu")  # automatic mask from M0
    assert res.summary["method"] == "gkm"
    _compare(pcasl, res, 0.005, 0.01)
    for name in ("cbf", "att", "cbf_stderr", "att_stderr", "status", "residual"):
        assert res.outputs[name].exists()
    side = json.loads(res.outputs["cbf"].with_name("sub-phantom_cbf.json").read_text())
    assert side["Units"] == "ml/100g/min"
    params = side["Parameters"]
    for key in (
        "T1BloodSeconds",
        "T1TissueSeconds",
        "PartitionCoefficientMlPerG",
        "LabelingEfficiency",
        "EffectiveLabelingEfficiency",
        "ShortTRFactor",
        "SampleTimeDefinition",
        "M0Type",
    ):
        assert key in params, key
    assert params["SampleTimeDefinition"] == "t = LabelingDuration + PostLabelingDelay"
    with pytest.raises(OutputExistsError):
        run_asl(pcasl["asl"], tmp_path / "out", device="cpu")
    run_asl(pcasl["asl"], tmp_path / "out", device="cpu", overwrite=True)


def test_pasl_phantom_m0_included(tmp_path):
    ph = write_phantom(tmp_path / "in", "pasl", label_first=True)
    series = read_asl_series(ph["asl"])
    assert series.m0_type == "Included" and series.is_pasl
    assert np.allclose(series.tau_s, 0.8)  # TI1 from BolusCutOffDelayTime
    res = run_asl(ph["asl"], tmp_path / "out", mask_path=ph["mask"], device="cpu")
    _compare(ph, res, 0.005, 0.01)


def test_single_pld_phantom_consensus(tmp_path):
    ph = write_phantom(tmp_path / "in", "single", repeats=3)
    res = run_asl(ph["asl"], tmp_path / "out", mask_path=ph["mask"], device="cpu")
    assert res.summary["method"] == "whitepaper"
    assert "att" not in res.outputs and "cbf_stderr" in res.outputs
    _compare(ph, res, 0.001)


def test_deltam_only_series(pcasl, tmp_path):
    img = nib.load(str(pcasl["asl"]))
    data = np.asarray(img.dataobj)
    meta = json.loads(Path(pcasl["asl_json"]).read_text())
    dm = data[..., 0::2] - data[..., 1::2]  # control - label pairs
    nib.Nifti1Image(dm, img.affine).to_filename(str(pcasl["asl"]))
    meta["PostLabelingDelay"] = meta["PostLabelingDelay"][0::2]
    Path(pcasl["asl_json"]).write_text(json.dumps(meta))
    Path(pcasl["aslcontext"]).write_text("volume_type\n" + "deltam\n" * dm.shape[-1])
    res = run_asl(pcasl["asl"], tmp_path / "out", mask_path=pcasl["mask"], device="cpu")
    _compare(pcasl, res, 0.005, 0.01)


def test_volumes_in_any_order_and_ignored_types(pcasl, tmp_path):
    n = nib.load(str(pcasl["asl"])).shape[-1]
    order = list(np.random.default_rng(0).permutation(n))
    data, ctx, meta = _rewrite(pcasl, volumes=order)
    # add a noRF volume (ignored) at the end
    img = nib.load(str(pcasl["asl"]))
    data = np.concatenate([data, np.zeros(data.shape[:3] + (1,), data.dtype)], axis=-1)
    nib.Nifti1Image(data, img.affine).to_filename(str(pcasl["asl"]))
    _rewrite(
        pcasl,
        types=ctx + ["noRF"],
        meta_update={"PostLabelingDelay": meta["PostLabelingDelay"] + [0.0]},
    )
    res = run_asl(pcasl["asl"], tmp_path / "out", mask_path=pcasl["mask"], device="cpu")
    _compare(pcasl, res, 0.005, 0.01)


def test_m0type_estimate(pcasl, tmp_path):
    # BIDS M0Estimate is the M0 of blood: tissue M0 1000 -> M0b = 1000 / lambda
    _rewrite(pcasl, meta_update={"M0Type": "Estimate", "M0Estimate": M0_TISSUE / 0.9})
    Path(pcasl["m0"]).unlink()
    res = run_asl(pcasl["asl"], tmp_path / "out", mask_path=pcasl["mask"], device="cpu")
    _compare(pcasl, res, 0.005, 0.01)


def test_scalar_pld_and_labeling_duration_array(tmp_path):
    ph = write_phantom(tmp_path / "in", "single")
    meta = json.loads(Path(ph["asl_json"]).read_text())
    assert not isinstance(meta["PostLabelingDelay"], list)
    n = nib.load(str(ph["asl"])).shape[-1]
    _rewrite(ph, meta_update={"LabelingDuration": [1.8] * n})
    res = run_asl(ph["asl"], tmp_path / "out", mask_path=ph["mask"], device="cpu")
    _compare(ph, res, 0.001)


def test_reference_region_calibration(pcasl, tmp_path):
    mask = _load(pcasl["mask"]) > 0
    ref = np.zeros_like(mask)
    ref[5:10, 5:10, :] = True
    ref_path = tmp_path / "ref.nii.gz"
    nib.Nifti1Image(ref.astype(np.uint8), nib.load(str(pcasl["mask"])).affine).to_filename(
        str(ref_path)
    )
    res = run_asl(
        pcasl["asl"],
        tmp_path / "out",
        mask_path=pcasl["mask"],
        m0_ref_mask=ref_path,
        m0_ref_tissue="wm",
        device="cpu",
    )
    # phantom M0 scan: 1000 (1 - e^{-TR/1.3}), TR 4 s, no TE; as WM (T1 1.0 s, pc 0.82):
    m0b = 1000 * (1 - np.exp(-4 / 1.3)) / (1 - np.exp(-4 / 1.0)) / REFERENCE_TISSUES["wm"]["pc"]
    scale = (1000 / 0.9) / m0b  # CBF scales with the voxel M0b over the reference M0b
    cbf = _load(res.outputs["cbf"])[mask]
    np.testing.assert_allclose(cbf, _load(pcasl["truth_cbf"])[mask] * scale, rtol=0.005)
    assert res.constants["M0Source"] == "reference region"


def test_reference_region_formula():
    m0b, used = reference_region_m0_blood(np.full(10, 800.0), "csf", tr_s=None, te_s=0.02)
    t = REFERENCE_TISSUES["csf"]
    expect = 800 * np.exp(0.02 / t["t2_s"]) * np.exp(-0.02 / 0.150) / t["pc"]
    assert m0b == pytest.approx(expect)
    assert used["ReferencePartitionCoefficient"] == t["pc"]
    with pytest.raises(InputError, match="m0_ref_tissue"):
        reference_region_m0_blood(np.ones(3), "bone", tr_s=None, te_s=None)


# ---- malformed input: clear errors naming file and field ------------------------------------
def test_aslcontext_count_mismatch(pcasl, tmp_path):
    ctx = Path(pcasl["aslcontext"]).read_text().split()[1:]
    Path(pcasl["aslcontext"]).write_text("volume_type\n" + "\n".join(ctx[:-1]) + "\n")
    with pytest.raises(InputError) as err:
        run_asl(pcasl["asl"], tmp_path / "out", device="cpu")
    assert "aslcontext.tsv" in str(err.value) and "volume_type" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("drop", "update", "field"),
    [
        (("ArterialSpinLabelingType",), {}, "ArterialSpinLabelingType"),
        (("PostLabelingDelay",), {}, "PostLabelingDelay"),
        (("LabelingDuration",), {}, "LabelingDuration"),
        (("M0Type",), {}, "M0Type"),
        (("MagneticFieldStrength",), {}, "MagneticFieldStrength"),
        ((), {"PostLabelingDelay": [1.0, 2.0]}, "PostLabelingDelay"),
        ((), {"PostLabelingDelay": 1800}, "PostLabelingDelay"),
        ((), {"ArterialSpinLabelingType": "VSASL"}, "ArterialSpinLabelingType"),
        ((), {"M0Type": "Absent"}, "M0Type"),
        ((), {"M0Type": "Estimate"}, "M0Estimate"),
        ((), {"LabelingEfficiency": 1.5}, "LabelingEfficiency"),
    ],
)
def test_sidecar_errors_name_the_field(pcasl, tmp_path, drop, update, field):
    _rewrite(pcasl, meta_update=update, meta_drop=drop)
    with pytest.raises(InputError) as err:
        run_asl(pcasl["asl"], tmp_path / "out", device="cpu")
    assert err.value.field == field
    assert "_asl.json" in str(err.value)


def test_pasl_without_bolus_cutoff_is_an_error(tmp_path):
    ph = write_phantom(tmp_path / "in", "pasl")
    _rewrite(ph, meta_update={"BolusCutOffFlag": False})
    with pytest.raises(InputError, match="BolusCutOffFlag"):
        read_asl_series(ph["asl"])
    _rewrite(
        ph,
        meta_update={
            "BolusCutOffFlag": True,
            "BolusCutOffTechnique": "Q2TIPS",
            "BolusCutOffDelayTime": [0.8, 1.6],
        },
    )
    assert np.allclose(read_asl_series(ph["asl"]).tau_s, 0.8)  # Q2TIPS: TI1 = start of train


def test_unpaired_control_label_is_an_error():
    types = ["control", "label", "control"]
    with pytest.raises(InputError, match="control"):
        pair_control_label(types, np.ones(3), np.ones(3), "x_aslcontext.tsv")


def test_unknown_volume_type(pcasl):
    ctx = Path(pcasl["aslcontext"]).read_text().split()[1:]
    ctx[0] = "tag"
    Path(pcasl["aslcontext"]).write_text("volume_type\n" + "\n".join(ctx) + "\n")
    with pytest.raises(InputError, match="tag"):
        read_asl_series(pcasl["asl"])


def test_separate_m0_missing_file(pcasl):
    Path(pcasl["m0"]).unlink()
    with pytest.raises(InputError, match="m0scan"):
        read_asl_series(pcasl["asl"])


def test_difference_and_average_per_pld():
    types = ["label", "control", "control", "label", "deltam", "m0scan"]
    pld = np.array([1.0, 1.0, 2.0, 2.0, 1.0, 0.0])
    tau = np.full(6, 1.8)
    data = np.array([[1.0, 3.0, 10.0, 4.0, 5.0, 100.0]])
    s = difference_samples(data, types, pld, tau)
    np.testing.assert_allclose(s.deltam, [[2.0, 6.0, 5.0]])
    np.testing.assert_allclose(s.pld_s, [1.0, 2.0, 1.0])
    mean, plds, _, counts = average_per_pld(s.deltam, s.pld_s, s.tau_s)
    np.testing.assert_allclose(mean, [[3.5, 6.0]])
    np.testing.assert_allclose(plds, [1.0, 2.0])
    assert list(counts) == [2, 1]


@pytest.mark.parametrize("order", ["F", "C"])
def test_differences_of_whole_volumes_equal_differences_of_gathered_voxels(order):
    """``difference_samples(series, ..., mask=mask)`` (differences between whole volumes, then
    the K sample volumes gathered: the pipeline's path) equals gathering the T volumes first,
    bit for bit: pairs in any order, a deltam volume, an m0scan left out, NaN passed through."""
    from gpuperf.io.nifti import gather

    rng = np.random.default_rng(4)
    types = ["label", "control", "m0scan", "control", "label", "deltam", "label", "control"]
    pld = np.array([1.0, 1.0, 0.0, 2.0, 2.0, 1.5, 2.0, 2.0])
    tau = np.full(8, 1.8)
    series = rng.normal(100.0, 10.0, (6, 5, 4, 8)).astype(np.float32)
    series[1, 2, 3, 4] = np.nan
    series = np.asfortranarray(series) if order == "F" else np.ascontiguousarray(series)
    mask = rng.random((6, 5, 4)) > 0.3
    ref = difference_samples(gather(series, mask), types, pld, tau)
    got = difference_samples(series, types, pld, tau, mask=mask)
    assert got.deltam.dtype == np.float32 and got.deltam.flags.c_contiguous
    np.testing.assert_array_equal(got.deltam, ref.deltam)
    assert np.isnan(got.deltam).sum() == 1
    np.testing.assert_array_equal(got.pld_s, ref.pld_s)
    np.testing.assert_array_equal(got.tau_s, ref.tau_s)
    assert got.source_volumes == ref.source_volumes


# ---- command line ----------------------------------------------------------------------------
def test_cli_simulate_and_asl(tmp_path):
    import typer
    from typer.testing import CliRunner

    from gpuperf.cli.asl import asl_command, simulate_asl_command

    app = typer.Typer()
    app.command("asl")(asl_command)
    app.command("simulate")(simulate_asl_command)
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", str(tmp_path / "ph"), "--kind", "pasl"])
    assert r.exit_code == 0, r.output
    asl = tmp_path / "ph" / "sub-phantom_asl.nii.gz"
    r = runner.invoke(
        app,
        [
            "asl",
            str(asl),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--quiet",
            "--alpha",
            "0.98",
            "--t1-blood",
            "1.65",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "sub-phantom_att.nii.gz").exists()
    r = runner.invoke(
        app, ["asl", str(tmp_path / "missing_asl.nii.gz"), "--out", str(tmp_path / "o2"), "--quiet"]
    )
    assert r.exit_code == 2
    assert "does not exist" in r.output


def test_demo_recovers_phantom(tmp_path):
    from gpuperf.asl.demo import run_demo

    summary = run_demo(tmp_path / "demo", device="cpu")
    assert summary["voxels"] > 1000
    assert summary["converged_fraction"] > 0.97
    assert summary["cbf_median_error_percent"] < 10
    assert summary["att_median_error_s"] < 0.15


def test_background_suppression_and_per_volume_tr(tmp_path):
    ph = write_phantom(tmp_path / "in", "pasl")
    ctx = Path(ph["aslcontext"]).read_text().split()[1:]
    tr = [4.0 if v == "m0scan" else 3.5 for v in ctx]  # the M0 volumes' TR is what counts
    _rewrite(
        ph,
        meta_update={
            "BackgroundSuppression": True,
            "BackgroundSuppressionNumberPulses": 2,
            "RepetitionTimePreparation": tr,
        },
    )
    res = run_asl(ph["asl"], tmp_path / "out", mask_path=ph["mask"], device="cpu")
    # the phantom has no suppression: alpha x 0.95^2 in the model scales CBF by 1/0.95^2
    mask = _load(ph["mask"]) > 0
    cbf = _load(res.outputs["cbf"])[mask]
    np.testing.assert_allclose(cbf * 0.95**2, _load(ph["truth_cbf"])[mask], rtol=0.005)
    side = json.loads(res.outputs["cbf"].with_name("sub-phantom_cbf.json").read_text())
    assert side["Parameters"]["BackgroundSuppressionFactor"] == pytest.approx(0.95**2)
    assert side["Parameters"]["M0RepetitionTimeSeconds"] == 4.0


def test_cbf_volumes_only_are_passed_through(tmp_path):
    ph = write_phantom(tmp_path / "in", "single")
    img = nib.load(str(ph["asl"]))
    truth = _load(ph["truth_cbf"])
    vols = np.stack([np.nan_to_num(truth), np.nan_to_num(truth)], axis=-1).astype(np.float32)
    nib.Nifti1Image(vols, img.affine).to_filename(str(ph["asl"]))
    Path(ph["aslcontext"]).write_text("volume_type\ncbf\ncbf\n")
    _rewrite(ph, meta_update={"M0Type": "Absent"})
    res = run_asl(ph["asl"], tmp_path / "out", mask_path=ph["mask"], device="cpu")
    assert res.summary["method"] == "precomputed"
    mask = _load(ph["mask"]) > 0
    np.testing.assert_allclose(_load(res.outputs["cbf"])[mask], truth[mask], rtol=1e-6)


def test_pairing_does_not_depend_on_volume_order():
    """Any acquisition order of the same control/label volumes gives the same per-PLD means."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    rng = np.random.default_rng(5)
    plds = np.repeat([0.5, 1.0, 1.5], 4)  # 2 pairs per PLD
    types = ["control", "label"] * 6
    data = rng.normal(100, 5, (7, 12))
    ref = average_per_pld(*_diff_fields(difference_samples(data, types, plds, np.ones(12))))[0]

    @settings(max_examples=40, deadline=None)
    @given(st.permutations(range(12)))
    def check(order):
        order = list(order)
        s = difference_samples(data[:, order], [types[i] for i in order], plds[order], np.ones(12))
        np.testing.assert_allclose(average_per_pld(*_diff_fields(s))[0], ref, rtol=1e-5)

    check()


def _diff_fields(s):
    return s.deltam, s.pld_s, s.tau_s
