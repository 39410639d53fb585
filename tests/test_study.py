"""End to end: `gpuperf simulate study` -> `run participant` -> `run group` recovers the effects."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuperf.cli import app
from gpuperf.errors import InputError


def _read(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _one(rows, **match):
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, len(hits))
    return hits[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    root, out = tmp / "bids", tmp / "out"
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "study", str(root)])
    assert r.exit_code == 0, r.output
    cfg = tmp / "study.toml"
    cfg.write_text(f'[asl]\nreport = false\n[inputs]\nmasks_dir = "{root}/derivatives/masks"\n')
    r = runner.invoke(app, ["run", str(root), str(out), "participant", "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "run",
            str(root),
            str(out),
            "group",
            "--masks-dir",
            f"{root}/derivatives/masks",
            "--reference-region",
            "NAWM",
            "--covariate",
            "age,sex",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    return root, out, json.loads((root / "truth.json").read_text())


def test_group_differences_recovered(study):
    root, out, truth = study
    rows = _read(out / "group_stats.tsv")
    key = {"modality": "asl", "session": "n/a", "group": "patient", "measure": "mean"}
    effect = truth["patient_effect"]  # -0.10
    nawm = _one(rows, map="cbf", region="NAWM", **key)
    assert nawm["reference_group"] == "control" and (nawm["n"], nawm["n_reference"]) == ("4", "4")
    assert float(nawm["relative_difference"]) == pytest.approx(effect, abs=0.02)
    assert float(nawm["ci_low"]) < float(nawm["difference"]) < float(nawm["ci_high"])
    assert nawm["covariates"] == "age,sex" and nawm["adjusted_difference"] != "n/a"
    # uncorrected NAGM CBF is confounded by the patients' atrophy (more CSF in GM voxels) ...
    nagm = _one(rows, map="cbf", region="NAGM", **key)
    assert float(nagm["relative_difference"]) < effect - 0.05
    # ... partial-volume corrected GM CBF gives the true effect and the true tissue values
    gm = _one(rows, map="cbf_gm", region="NAGM", **key)
    assert float(gm["relative_difference"]) == pytest.approx(effect, abs=0.02)
    assert float(gm["mean_reference"]) == pytest.approx(truth["gm_cbf"], rel=0.03)
    assert float(gm["mean"]) == pytest.approx(truth["gm_cbf"] * (1 + effect), rel=0.03)
    wm = _one(rows, map="cbf_wm", region="NAWM", **key)
    assert float(wm["mean_reference"]) == pytest.approx(truth["wm_cbf"], rel=0.03)
    # lesions are patients-only regions: not compared with controls
    assert not [r for r in rows if r["region"] in ("lesion", "enhancing")]


def test_lesion_ratios_recovered(study):
    root, out, truth = study
    rows = [r for r in _read(out / "group_lesions.tsv") if r["map"] == "cbf"]
    assert len(rows) == 2 * truth["n_patients"]
    assert {r["n_voxels"] for r in rows} == {"8"}
    assert [float(r["volume_ml"]) for r in rows] == pytest.approx([8 * 0.027] * len(rows))
    enh = [float(r["rel_median"]) for r in rows if r["enhancing"] == "1"]
    non = [float(r["rel_median"]) for r in rows if r["enhancing"] == "0"]
    assert len(enh) == len(non) == truth["n_patients"]
    assert np.median(enh) == pytest.approx(truth["enhancing_ratio"], rel=0.03)
    assert np.median(non) == pytest.approx(truth["nonenhancing_ratio"], rel=0.03)
    ring = [float(r["ring_rel_median"]) for r in rows]
    assert np.median(ring) == pytest.approx(1.0, rel=0.05)


def test_correlation_and_report(study):
    root, out, truth = study
    rows = _read(out / "group_correlations.tsv")
    r = _one(
        rows,
        modality="asl",
        map="cbf",
        region="NAWM",
        measure="mean",
        variable="edss",
        group="patient",
    )
    assert int(r["n"]) == truth["n_patients"] and float(r["r"]) < -0.5  # simulated: r < 0
    page = (out / "group_report.html").read_text()
    assert "Group comparisons" in page and "Lesions" in page and "<img" in page


def test_study_refuses_to_overwrite(tmp_path):
    from gpuperf.cohort.study import simulate_study
    from gpuperf.errors import OutputExistsError

    simulate_study(tmp_path / "s", n_controls=2, n_patients=2)
    with pytest.raises(OutputExistsError):
        simulate_study(tmp_path / "s")
    with pytest.raises(InputError, match="per group"):
        simulate_study(tmp_path / "t", n_controls=1)
