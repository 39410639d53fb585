"""Reports on the real pipelines' outputs (issue 7): simulated DSC and ASL phantoms are fitted
with ``run_dsc`` / ``run_asl``, and the report is built from what they wrote."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_report_run import assert_self_contained

from gpuperf.report import load_run, publish_result, voxel_curves
from gpuperf.report.curves import dsc_curves_from_inputs, pick_voxels


def test_pick_voxels_percentiles_and_flagged():
    cbf = np.arange(100, dtype=float).reshape(4, 5, 5)
    mask = np.ones(cbf.shape, bool)
    status = np.zeros(cbf.shape)
    status.flat[7] = 8
    idx, labels = pick_voxels(cbf, mask, status)
    ok = np.delete(np.arange(100.0), 7)
    for i, p in zip(idx[:3], (10, 50, 90), strict=True):
        assert abs(cbf.flat[i] - np.percentile(ok, p)) <= 0.5
    assert idx[3] == 7 and labels[3] == "flagged (status 8)"


def test_voxel_curves_keeps_rows_of_picked_voxels():
    rng = np.random.default_rng(0)
    cbf = rng.uniform(10, 90, 50)
    meas = rng.random((50, 7))
    c = voxel_curves(
        cbf,
        np.arange(7) * 0.5,
        meas,
        fitted=meas * 2,
        voxels=rng.integers(0, 9, (50, 3)),
        units="ΔM/M0",
    )
    order = np.argsort(cbf)
    assert c["measured"].shape == (3, 7) and np.array_equal(c["fitted"], 2 * c["measured"])
    assert np.isin(c["measured"][1], meas[order[24:26]]).all()  # the median voxel
    assert c["labels"][0].startswith("CBF p10 (") and c["units"] == "ΔM/M0"


@pytest.fixture(scope="module")
def dsc_outputs(tmp_path_factory):
    from gpuperf.dsc.pipeline import run_dsc
    from gpuperf.dsc.simulate import write_phantom

    root = tmp_path_factory.mktemp("dsc_e2e")
    ph = write_phantom(root / "in", shape=(24, 24, 3), seed=1)
    res = run_dsc(
        ph["series"], root / "out", mask_path=ph["brainmask"], device="cpu",
        extra_outputs=("report.html",),
    )  # fmt: skip
    publish(res)
    return root / "out", ph


def publish(res):
    """What ``gpuperf dsc``/``asl`` and the cohort runner do after the pipeline returns."""
    from gpuperf.report import publish_run_report

    return publish_run_report(
        res.out_dir, res.prefix, res.modality, res.report_extra, mask=res.mask_path
    )


def test_dsc_curves_recomputed_match_maps(dsc_outputs):
    out, ph = dsc_outputs
    run = load_run(out, "phantom_dsc")
    assert "brainmask" in run.mask_source
    curves, note = dsc_curves_from_inputs(run)
    assert curves is not None, note
    assert curves["measured"].shape == (curves["cbf_map"].size, run.aif_curve.size)
    np.testing.assert_allclose(curves["cbf_recomputed"], curves["cbf_map"], rtol=1e-3)


def test_dsc_pipeline_report(dsc_outputs):
    out, _ = dsc_outputs
    path = out / "phantom_dsc_report.html"  # published from the pipeline's result
    assert path.exists()
    refs = assert_self_contained(path)
    text = path.read_text(encoding="utf-8")
    maps = {"cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "status"}
    assert maps <= set(re.findall(r'id="map-([a-z0-9_]+)"', text))
    # montages + AIF curve + AIF voxels + voxel curves
    assert refs.n_img == len(maps) + 3
    # the run saved its voxel curves: the report does not read the series again
    assert "saved by the pipeline" in text and "no warnings" in text
    assert "recomputed from phantom_dsc.nii.gz" not in text
    from gpuperf.report import load_extra

    curves = load_extra(out / "phantom_dsc_qc.npz")["curves"]
    assert curves["measured"].shape == (curves["cbf_map"].size, curves["time_s"].size)
    np.testing.assert_allclose(curves["cbf_recomputed"], curves["cbf_map"], rtol=1e-3)


def test_asl_pipeline_report(tmp_path):
    from gpuperf.asl.pipeline import run_asl
    from gpuperf.asl.simulate import write_phantom

    ph = write_phantom(tmp_path / "in", "pcasl", shape=(12, 12, 2))
    res = run_asl(
        ph["asl"], tmp_path / "out", mask_path=ph["mask"], device="cpu",
        extra_outputs=("report.html",),
    )  # fmt: skip
    prefix = res.outputs["cbf"].name[: -len("_cbf.nii.gz")]
    assert "report" not in res.outputs  # the pipeline does not draw it; its caller publishes it
    (path,) = publish_result(res)
    assert path == tmp_path / "out" / f"{prefix}_report.html"
    refs = assert_self_contained(path)
    text = path.read_text(encoding="utf-8")
    n_maps = len(re.findall(r'id="map-', text))
    assert n_maps >= 3  # cbf, att, status at least
    assert (tmp_path / "out" / f"{prefix}_qc.npz").exists()  # curves staged by the pipeline
    assert "fitted kinetic model; saved by the pipeline" in text
    assert refs.n_img == n_maps + 2 + 1  # montages, CBF/ATT histograms, ΔM curves
    assert "Fit status" in text and "ΔM against PLD" in text
    assert "many-flagged" not in text
    run = load_run(tmp_path / "out", prefix)
    assert "mask" in run.mask_source and int(run.mask.sum()) == int(
        np.isfinite(run.maps["cbf"].data).sum()
    )
