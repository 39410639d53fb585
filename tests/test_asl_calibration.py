"""M0 and calibration details (issue #10 item 3) and relative maps (item 4): T2 vs T2* of the
reference-region echo-time correction from the sidecar, Gaussian smoothing of M0, QUIPSS I
refused, and --ref-mask giving rCBF and rATT."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from gpuperf.asl.bids import read_asl_series
from gpuperf.asl.pipeline import run_asl
from gpuperf.asl.preprocess import (
    REFERENCE_TISSUES,
    T2STAR_BLOOD_S,
    readout_relaxation,
    reference_region_m0_blood,
    smooth_m0,
)
from gpuperf.asl.simulate import write_phantom
from gpuperf.errors import InputError


def _load(p) -> np.ndarray:
    return np.asarray(nib.load(str(p)).dataobj, dtype=np.float64)


@pytest.mark.parametrize(
    "seq, pst, acq, want",
    [
        ("EP", None, "2D", "T2*"),  # 2d_mb_pcasl (Siemens 2D EPI)
        ("GR", "EPI", "2D", "T2*"),  # asl002 (Philips 2D GRE-EPI)
        (None, "EPI", "2D", "T2*"),  # asl004
        ("RM", "spiral", "3D", "T2"),  # asl001 (GE 3D FSE spiral)
        ("RM", "3Dgrase", "3D", "T2"),  # asl003
        ("EP", "3Dgrase", "3D", "T2"),  # asl005: GRASE is spin echo despite 'EP'
        ("SE\\EP", None, "2D", "T2"),  # spin-echo EPI
        (["SE", "EP"], None, None, "T2"),
        (None, None, "2D", "T2*"),
        (None, None, "3D", "T2"),
    ],
)
def test_readout_relaxation_from_the_sidecar(seq, pst, acq, want):
    from gpuperf.asl.bids import _text

    kind, why = readout_relaxation(_text(seq), pst, acq)
    assert kind == want and why


def test_t2star_correction_formula():
    te = 0.014
    m0b, used = reference_region_m0_blood(
        np.full(5, 900.0), "csf", tr_s=None, te_s=te, relaxation="T2*"
    )
    t = REFERENCE_TISSUES["csf"]
    assert m0b == pytest.approx(
        900 * np.exp(te / t["t2star_s"]) * np.exp(-te / T2STAR_BLOOD_S) / t["pc"]
    )
    assert used["EchoDecay"] == "T2*" and used["ReferenceT2StarSeconds"] == t["t2star_s"]
    m0b_t2, _ = reference_region_m0_blood(np.full(5, 900.0), "csf", tr_s=None, te_s=te)
    assert m0b != pytest.approx(m0b_t2, rel=1e-3)  # the choice matters at this TE


def test_pipeline_chooses_t2star_for_a_2d_epi_m0(tmp_path):
    ph = write_phantom(tmp_path / "in", "pcasl")
    meta = json.loads(ph["m0_json"].read_text())
    meta.update(EchoTime=0.014, ScanningSequence="EP", MRAcquisitionType="2D")
    ph["m0_json"].write_text(json.dumps(meta))
    ref = _load(ph["mask"]) > 0
    ref_path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), nib.load(str(ph["mask"])).affine), ref_path)
    res = run_asl(ph["asl"], tmp_path / "o", m0_ref_mask=ref_path, m0_ref_tissue="csf",
                  mask_path=ph["mask"], device="cpu")  # fmt: skip
    assert res.constants["EchoDecay"] == "T2*"
    assert "gradient-echo" in res.constants["EchoDecaySource"]
    side = json.loads(res.outputs["cbf"].with_name(res.outputs["cbf"].name[:-7] + ".json")
                      .read_text())  # fmt: skip
    assert "T2*" in json.dumps(side)


def test_m0_smoothing_is_normalised_inside_the_region():
    m0 = np.zeros((12, 12, 4))
    m0[2:10, 2:10, :] = 1000.0
    sm = smooth_m0(m0, 8.0, (2.0, 2.0, 4.0))
    inside = m0 > 0
    np.testing.assert_allclose(sm[inside], 1000.0, rtol=1e-9)  # no edge darkening
    np.testing.assert_array_equal(sm[~inside], 0.0)
    noisy = m0 + np.where(inside, np.random.default_rng(0).normal(0, 50, m0.shape), 0)
    s2 = smooth_m0(noisy, 8.0, (2.0, 2.0, 4.0))
    assert s2[inside].std() < 0.5 * noisy[inside].std()
    assert smooth_m0(noisy, 0.0, (2.0, 2.0, 4.0)) is noisy


def test_m0_fwhm_option_reaches_the_fit_and_sidecar(tmp_path):
    ph = write_phantom(tmp_path / "in", "pcasl")
    res = run_asl(ph["asl"], tmp_path / "o", mask_path=ph["mask"], device="cpu", m0_fwhm_mm=6.0)
    assert res.constants["M0SmoothingFWHMmm"] == 6.0
    mask = _load(ph["mask"]) > 0
    # uniform M0 inside the region: smoothing leaves it (and CBF) unchanged
    np.testing.assert_allclose(_load(res.outputs["cbf"])[mask], _load(ph["truth_cbf"])[mask],
                               rtol=0.005)  # fmt: skip
    from gpuperf.asl.options import ASLOptions

    with pytest.raises(InputError, match="--m0-fwhm"):
        ASLOptions(m0_fwhm_mm=-1.0)


def test_quipss_one_is_refused(tmp_path):
    ph = write_phantom(tmp_path / "in", "pasl")
    meta = json.loads(ph["asl_json"].read_text())
    meta["BolusCutOffTechnique"] = "QUIPSS"
    ph["asl_json"].write_text(json.dumps(meta))
    with pytest.raises(InputError) as e:
        read_asl_series(ph["asl"])
    msg = str(e.value)
    assert "BolusCutOffTechnique" in msg and ph["asl_json"].name in msg and "QUIPSS II" in msg


@pytest.mark.parametrize("kind", ["pcasl", "single"])
def test_ref_mask_gives_rcbf_and_ratt(kind, tmp_path):
    ph = write_phantom(tmp_path / "in", kind)
    mask = _load(ph["mask"]) > 0
    ref = np.zeros_like(mask)
    ref[3:7, 3:7, :] = True
    ref &= mask
    ref_path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), nib.load(str(ph["mask"])).affine), ref_path)
    res = run_asl(ph["asl"], tmp_path / "o", mask_path=ph["mask"], ref_mask=ref_path,
                  device="cpu")  # fmt: skip
    cbf = _load(res.outputs["cbf"])
    rcbf = _load(res.outputs["rcbf"])
    np.testing.assert_allclose(rcbf[mask], cbf[mask] / cbf[ref].mean(), rtol=1e-5)
    assert rcbf[ref].mean() == pytest.approx(1.0, rel=1e-5)
    truth = _load(ph["truth_cbf"])
    np.testing.assert_allclose(rcbf[mask], truth[mask] / truth[ref].mean(), rtol=0.01)
    if kind == "pcasl":
        att = _load(res.outputs["att"])
        np.testing.assert_allclose(_load(res.outputs["ratt"])[mask], att[mask] / att[ref].mean(),
                                   rtol=1e-5)  # fmt: skip
    else:
        assert "ratt" not in res.outputs
    side = json.loads(res.outputs["rcbf"].with_name(res.outputs["rcbf"].name[:-7] + ".json")
                      .read_text())  # fmt: skip
    assert side["Units"] == "1" and "ReferenceRegion" in json.dumps(side)


def test_ref_mask_outside_the_brain_is_an_error(tmp_path):
    ph = write_phantom(tmp_path / "in", "pcasl")
    mask = _load(ph["mask"]) > 0
    ref_path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image((~mask).astype(np.uint8), nib.load(str(ph["mask"])).affine), ref_path)
    with pytest.raises(InputError, match="ref_mask"):
        run_asl(ph["asl"], tmp_path / "o", mask_path=ph["mask"], ref_mask=ref_path, device="cpu")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_ref_mask(tmp_path):
    from typer.testing import CliRunner

    from gpuperf.cli import app

    ph = write_phantom(tmp_path / "in", "pcasl")
    r = CliRunner().invoke(app, ["asl", str(ph["asl"]), "--out", str(tmp_path / "o"),
                                 "--mask", str(ph["mask"]), "--ref-mask", str(ph["mask"]),
                                 "--no-report", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "rcbf" in r.output and "ratt" in r.output
