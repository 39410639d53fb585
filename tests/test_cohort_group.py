"""The group stage: the tidy cohort table against values computed here with NumPy."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import typer
from test_cohort_support import SHAPE, TE_S, fake_pipeline, make_bids
from typer.testing import CliRunner

from gpuperf.cohort import GROUP_COLUMNS, group_table, run_participants
from gpuperf.cohort.jobs import MARKER_PREFIX
from gpuperf.errors import InputError

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data), AFFINE).to_filename(str(path))


@pytest.fixture
def cohort(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03"), sessions=("a",))
    out = tmp_path / "out"
    assert run_participants(root, out, pipelines={"dsc": fake_pipeline}).exit_code == 0
    masks = tmp_path / "masks"
    atlas = np.zeros(SHAPE, np.int16)
    atlas[:2] = 1
    atlas[2:4] = 2
    atlas[4, 0, 0] = 7  # a label missing from the lookup table
    _save(tmp_path / "atlas.nii.gz", atlas)
    (tmp_path / "atlas.tsv").write_text("index\tname\n1\tleft\n2\tright\n")
    for sub in ("01", "02"):  # sub-03 has no masks
        nawm = np.zeros(SHAPE, np.uint8)
        nawm[:, :2] = 1
        lesion = np.zeros(SHAPE, np.uint8)
        lesion[1:3, 3, 1] = 1
        anat = masks / f"sub-{sub}" / "ses-a" / "anat"
        _save(anat / f"sub-{sub}_ses-a_desc-NAWM_mask.nii.gz", nawm)
        _save(anat / f"sub-{sub}_ses-a_desc-lesion_mask.nii.gz", lesion)
    return root, out, masks, tmp_path


def _read(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_group_table_values_and_relative(cohort):
    root, out, masks, tmp = cohort
    res = group_table(out, masks_dir=masks, reference_region="NAWM")
    assert [p[0] for p in res.problems] == ["sub-03_ses-a_dsc"]  # no region: listed
    assert res.exit_code == 1
    rows = _read(res.table)
    assert tuple(rows[0]) == GROUP_COLUMNS
    assert {(r["subject"], r["session"], r["region"], r["map"]) for r in rows} == {
        (f"sub-{s}", "ses-a", reg, m)
        for s in ("01", "02")
        for reg in ("NAWM", "lesion")
        for m in ("cbf", "cbv")
    }
    series = nib.load(root / "sub-02/ses-a/perf/sub-02_ses-a_dsc.nii.gz").get_fdata(
        dtype=np.float32
    )
    cbf = series.mean(axis=3) * np.float32(TE_S)
    lesion = np.zeros(SHAPE, bool)
    lesion[1:3, 3, 1] = True
    v = cbf[lesion].astype(np.float64)
    ref = cbf[:, :2].astype(np.float64)
    row = next(
        r
        for r in rows
        if r["subject"] == "sub-02" and r["region"] == "lesion" and r["map"] == "cbf"
    )
    assert row["units"] == "ml/100g/min" and int(row["n_voxels"]) == 2
    assert float(row["mean"]) == pytest.approx(v.mean(), rel=1e-6)
    assert float(row["median"]) == pytest.approx(np.median(v), rel=1e-6)
    assert float(row["sd"]) == pytest.approx(v.std(ddof=1), rel=1e-5)
    assert row["reference_region"] == "NAWM"
    assert float(row["rel_mean"]) == pytest.approx(v.mean() / ref.mean(), rel=1e-6)
    assert float(row["rel_median"]) == pytest.approx(np.median(v) / np.median(ref), rel=1e-6)
    side = json.loads(res.table.with_suffix(".json").read_text())
    assert set(side) == set(GROUP_COLUMNS)
    try:
        import pandas as pd
    except ImportError:
        return
    df = pd.read_table(res.table)
    assert list(df.columns) == list(GROUP_COLUMNS) and len(df) == len(rows)
    assert set(df["subject"]) == {"sub-01", "sub-02"}
    assert df["mean"].dtype == np.float64 and df["rel_mean"].notna().all()


def test_group_atlas_and_incomplete_jobs(cohort):
    root, out, masks, tmp = cohort
    # an incomplete job (marker gone, as after a kill while publishing) stays out of the table
    (out / "sub-03/ses-a/perf" / f"{MARKER_PREFIX}sub-03_ses-a_dsc.json").unlink()
    res = group_table(out, atlas=tmp / "atlas.nii.gz", atlas_labels=tmp / "atlas.tsv", maps=["cbf"])
    rows = _read(res.table)
    assert res.problems == []
    assert {r["region"] for r in rows} == {"left", "right", "label-7"}
    assert {r["subject"] for r in rows} == {"sub-01", "sub-02"}
    assert all(r["reference_region"] == "n/a" and r["rel_mean"] == "n/a" for r in rows)
    row = next(r for r in rows if r["region"] == "label-7")
    assert int(row["n_voxels"]) == 1 and row["sd"] == "n/a"


def test_group_errors_and_cli(cohort):
    from gpuperf.cli.cohort import run_command

    root, out, masks, tmp = cohort
    with pytest.raises(InputError, match="regions"):
        group_table(out)
    bad = np.zeros((3, 3, 3), np.uint8)
    _save(masks / "sub-01/ses-a/anat/sub-01_ses-a_desc-big_mask.nii.gz", bad)
    res = group_table(out, masks_dir=masks, mask_descs=["big", "NAWM"])
    assert any("grid" in msg or "shape" in msg for _, msg in res.problems)
    app = typer.Typer()
    app.command("run")(run_command)
    app.command("x")(lambda: None)
    cfg = tmp / "g.toml"
    cfg.write_text(f'[group]\nmasks_dir = "{masks}"\nmask_descs = ["NAWM", "lesion"]\n')
    r = CliRunner().invoke(
        app,
        [
            "run",
            str(root),
            str(out),
            "group",
            "--config",
            str(cfg),
            "--participant-label",
            "01 02",
            "--reference-region",
            "NAWM",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = _read(out / "group_perfusion.tsv")
    assert {r["subject"] for r in rows} == {"sub-01", "sub-02"}
