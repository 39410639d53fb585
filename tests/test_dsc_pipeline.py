"""End-to-end DSC file pipeline (run_dsc), the CLI shells, and the demo."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuperf.dsc.pipeline import run_dsc
from gpuperf.dsc.simulate import write_phantom
from gpuperf.errors import InputError, OutputExistsError
from gpuperf.io.outputs import OutputWriter

SHAPE = (20, 20, 2)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(
        tmp_path_factory.mktemp("ph"), shape=SHAPE, n_frames=50, noise_sd=0.003, seed=4
    )


def _load(p):
    return np.asarray(nib.load(str(p)).dataobj)


def test_run_dsc_writes_maps_with_sidecars(phantom, tmp_path):
    out = tmp_path / "out"
    res = run_dsc(
        phantom["series"],
        out,
        method="osvd",
        leakage="bsw",
        ref_mask_path=phantom["brainmask"],
        device="cpu",
    )
    names = {p.name for p in res.outputs}
    for m in (
        "cbf",
        "cbv",
        "mtt",
        "tmax",
        "ttp",
        "k2",
        "rcbv",
        "threshold",
        "oi",
        "status",
        "aifmask",
    ):
        assert f"phantom_dsc_{m}.nii.gz" in names and f"phantom_dsc_{m}.json" in names, m
    assert "phantom_dsc_aif.tsv" in names
    side = json.loads((out / "phantom_dsc_cbf.json").read_text())
    assert side["Units"] == "ml/100g/min" and side["Parameters"]["EchoTime"] == 0.03
    assert side["Backend"] == "numpy" and "ElapsedSeconds" in side
    assert json.loads((out / "phantom_dsc_mtt.json").read_text())["Units"] == "s"
    cbf = _load(out / "phantom_dsc_cbf.nii.gz")
    truth = _load(phantom["truth_cbf"])
    tissue = np.isfinite(truth) & (_load(phantom["truth_k2"]) == 0)
    assert cbf.shape == SHAPE
    assert 0.3 < np.nanmedian(cbf[tissue] / truth[tissue]) < 1.3
    cbv = _load(out / "phantom_dsc_cbv.nii.gz")
    np.testing.assert_allclose(
        np.nanmedian(cbv[tissue] / _load(phantom["truth_cbv"])[tissue]), 1.0, atol=0.1
    )
    aifmask = _load(out / "phantom_dsc_aifmask.nii.gz") > 0
    assert aifmask.sum() >= 3 and (aifmask <= (_load(phantom["arterymask"]) > 0)).all()
    tsv = (out / "phantom_dsc_aif.tsv").read_text().splitlines()
    assert tsv[0] == "time_s\tdr2s_per_s" and len(tsv) == 51
    assert res.summary["voxels"] > 0 and res.summary["flagged_input"] == 0
    aif_side = json.loads((out / "phantom_dsc_aif.json").read_text())
    artery = _load(phantom["arterymask"]) > 0
    assert len(aif_side["VoxelsIJK"]) == aifmask.sum()
    assert all(artery[tuple(ijk)] for ijk in aif_side["VoxelsIJK"])


def test_aif_mask_and_curve_inputs_agree(phantom, tmp_path):
    a = run_dsc(
        phantom["series"],
        tmp_path / "a",
        method="csvd",
        aif=phantom["arterymask"],
        mask_path=phantom["brainmask"],
        device="cpu",
    )
    tsv = next(p for p in a.outputs if p.name.endswith("_aif.tsv"))
    run_dsc(
        phantom["series"],
        tmp_path / "b",
        method="csvd",
        aif=tsv,
        mask_path=phantom["brainmask"],
        device="cpu",
    )
    ca = _load(tmp_path / "a" / "phantom_dsc_cbf.nii.gz")
    cb = _load(tmp_path / "b" / "phantom_dsc_cbf.nii.gz")
    np.testing.assert_allclose(ca, cb, rtol=1e-4, equal_nan=True)
    assert not (tmp_path / "a" / "phantom_dsc_aifmask.nii.gz").exists()


def test_te_in_ms_in_sidecar_rejected_and_nothing_written(phantom, tmp_path):
    series = tmp_path / "s_dsc.nii.gz"
    series.write_bytes(phantom["series"].read_bytes())
    (tmp_path / "s_dsc.json").write_text(json.dumps({"EchoTime": 30, "RepetitionTime": 1.5}))
    with pytest.raises(InputError, match="milliseconds") as exc:
        run_dsc(series, tmp_path / "out", device="cpu")
    assert "s_dsc.json" in str(exc.value)
    assert not (tmp_path / "out").exists()
    run_dsc(series, tmp_path / "out", te_s=0.03, device="cpu", method="csvd")  # override works


def test_no_partial_output_on_failure(phantom, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real = OutputWriter.add_map

    def failing(self, name, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full (simulated)")
        return real(self, name, *a, **k)

    monkeypatch.setattr(OutputWriter, "add_map", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        run_dsc(phantom["series"], out, method="csvd", device="cpu")
    assert not list(out.glob("*.nii.gz")) and not list(out.glob("*.json"))
    assert not list(out.glob("*.tsv"))


def test_existing_outputs_need_overwrite(phantom, tmp_path):
    run_dsc(phantom["series"], tmp_path, method="ssvd", device="cpu", prefix="x")
    with pytest.raises(OutputExistsError):
        run_dsc(phantom["series"], tmp_path, method="ssvd", device="cpu", prefix="x")
    run_dsc(phantom["series"], tmp_path, method="ssvd", device="cpu", prefix="x", overwrite=True)


def test_mask_grid_mismatch_names_both_files(phantom, tmp_path):
    bad = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 2), np.uint8), np.eye(4)), bad)
    with pytest.raises(InputError, match="mask.nii.gz"):
        run_dsc(phantom["series"], tmp_path / "o", mask_path=bad, device="cpu")


def test_cli_simulate_and_dsc(tmp_path):
    from gpuperf.cli import app

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "simulate",
            "dsc",
            str(tmp_path / "ph"),
            "--nx",
            "16",
            "--ny",
            "16",
            "--nz",
            "2",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    series = tmp_path / "ph" / "phantom_dsc.nii.gz"
    assert series.exists() and (tmp_path / "ph" / "phantom_truth_k2.nii.gz").exists()
    r = runner.invoke(
        app,
        [
            "dsc",
            str(series),
            "--out",
            str(tmp_path / "o"),
            "--method",
            "csvd",
            "--leakage",
            "bsw",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "phantom_dsc_k2.nii.gz").exists()
    r = runner.invoke(
        app, ["dsc", str(series), "--out", str(tmp_path / "o2"), "--te", "30", "--quiet"]
    )
    assert r.exit_code == 2 and "milliseconds" in r.output


def test_demo_summary(tmp_path):
    from gpuperf.dsc.demo import run_demo

    s = run_demo(tmp_path, device="cpu")
    assert s["aif_voxels_arterial"] == s["aif_voxels"] > 0
    assert abs(s["cbv_median_rel_error"]) < 0.1
    assert s["k2_true_+0.01_median"] > 0 > s["k2_true_-0.01_median"]


def test_the_aif_figure_is_an_svg_of_the_aif_curve_drawn_without_matplotlib(
    phantom, tmp_path, monkeypatch
):
    """``<prefix>_aif.svg`` plots the curve of ``<prefix>_aif.tsv`` (one marker a frame, the
    axes from the data) and the run needs no plotting library (matplotlib's import fails)."""
    import sys
    import xml.etree.ElementTree as ET

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any matplotlib import now fails
    res = run_dsc(phantom["series"], tmp_path, method="csvd", device="cpu")
    names = {p.name for p in res.outputs}
    assert {"phantom_dsc_aif.tsv", "phantom_dsc_aif.svg"} <= names
    assert not any(n.endswith("_aif.png") for n in names)
    root = ET.parse(tmp_path / "phantom_dsc_aif.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    tsv = np.loadtxt(tmp_path / "phantom_dsc_aif.tsv", skiprows=1)
    assert len(root.findall(f".//{ns}circle")) == tsv.shape[0]  # a marker per frame
    text = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "AIF" in text and "time (s)" in text and "dR2* (1/s)" in text


def test_cli_threshold_parsing():
    """--osvd-thresholds text as the CLI converts it (gpuperf.cli._options)."""
    from gpuperf.cli._options import _convert
    from gpuperf.dsc.options import DSCOptions
    from gpuperf.dsc.osvd import DEFAULT_THRESHOLDS

    spec = DSCOptions.option_specs()["osvd_thresholds"]
    assert _convert(spec, "0.05:0.95:0.05") == DEFAULT_THRESHOLDS
    assert _convert(spec, "0.1, 0.2,0.4") == (0.1, 0.2, 0.4)
    with pytest.raises(InputError) as exc:
        _convert(spec, "a:b")
    assert exc.value.field == "--osvd-thresholds"


def test_pipeline_leaves_the_report_to_its_caller(phantom, tmp_path, monkeypatch):
    """No HTML from the pipeline; the names the caller will write are checked first; the
    result carries what the report needs; the status map uses the shared flags."""
    from gpuperf.dsc import pipeline
    from gpuperf.dsc.options import DSCOptions
    from gpuperf.status import Status

    (tmp_path / "x_report.html").write_text("old")
    called = []
    monkeypatch.setattr(pipeline.DSCModel, "fit_batch", lambda *a, **k: called.append(1))
    with pytest.raises(OutputExistsError, match="x_report.html"):
        run_dsc(
            phantom["series"], tmp_path, device="cpu", prefix="x", extra_outputs=["report.html"]
        )
    assert not called and not list(tmp_path.glob("*.nii.gz"))
    monkeypatch.undo()
    opts = DSCOptions(method="osvd", baseline=5)
    res = run_dsc(
        phantom["series"],
        tmp_path / "o",
        options=opts,
        mask_path=phantom["brainmask"],
        device="cpu",
        extra_outputs=("report.html",),
    )
    names = {p.name for p in res.outputs}
    assert "phantom_dsc_qc.npz" in names and not any(n.endswith(".html") for n in names)
    assert (res.out_dir, res.prefix, res.modality) == (tmp_path / "o", "phantom_dsc", "dsc")
    assert res.report_extra == {"baseline_s": (0.0, 4 * 1.5)}
    assert res.mask_path == phantom["brainmask"]
    side = json.loads((tmp_path / "o" / "phantom_dsc_status.json").read_text())
    assert side["Flags"][str(int(Status.OSVD_NO_PASS))].startswith("oSVD")
    assert side["Parameters"]["Baseline"] == 5 and side["Parameters"]["Method"] == "osvd"
    status = _load(tmp_path / "o" / "phantom_dsc_status.nii.gz")
    brain = _load(phantom["brainmask"]) > 0
    assert (status[~brain] == int(Status.OUTSIDE_MASK)).all()
    assert not (status[brain] & int(Status.OUTSIDE_MASK)).any()
    # without extra outputs: no QC extras either
    res = run_dsc(phantom["series"], tmp_path / "p", options=opts, device="cpu")
    assert not any(p.name.endswith("_qc.npz") for p in res.outputs)
    with pytest.raises(TypeError, match="report"):
        run_dsc(phantom["series"], tmp_path / "q", device="cpu", report=False)


def test_cli_publishes_the_report(phantom, tmp_path):
    from gpuperf.cli import app

    r = CliRunner().invoke(
        app, ["dsc", str(phantom["series"]), "--out", str(tmp_path), "--method", "csvd",
              "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "phantom_dsc_report.html").exists()
    assert (tmp_path / "phantom_dsc_qc.npz").exists()
    r = CliRunner().invoke(
        app, ["dsc", str(phantom["series"]), "--out", str(tmp_path / "n"), "--no-report",
              "--threshold", "0.2", "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert not list((tmp_path / "n").glob("*.html")) and not list((tmp_path / "n").glob("*.npz"))
    r = CliRunner().invoke(
        app, ["dsc", str(phantom["series"]), "--out", str(tmp_path / "m"), "--threshold", "0"],
    )  # fmt: skip
    assert r.exit_code == 2 and "--threshold" in r.output and "Traceback" not in r.output
