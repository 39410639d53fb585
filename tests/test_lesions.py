"""Lesion-wise statistics: components, rings, and the group_lesions.tsv rows."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from test_cohort_support import SHAPE, TE_S, fake_pipeline, make_bids

from gpuperf.cohort import group_table, run_participants
from gpuperf.cohort.group import LESION_COLUMNS
from gpuperf.cohort.lesions import find_lesions, label_lesions, lesion_sizes, lesion_stats

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def test_components_and_label_maps():
    m = np.zeros((8, 8, 3), np.uint8)
    m[1:3, 1:3, 0] = 1  # lesion A
    m[4, 4, 1] = 1
    m[5, 5, 2] = 1  # touches (4,4,1) by a corner only: one lesion with 26-connectivity
    lab = label_lesions(m)
    assert lab.max() == 2 and lab[4, 4, 1] == lab[5, 5, 2]
    assert label_lesions(m, connectivity=1).max() == 3
    # a label map keeps its labels, even for touching lesions
    lm = np.zeros((4, 4, 1))
    lm[0, 0, 0], lm[0, 1, 0] = 3, 7
    assert sorted(np.unique(label_lesions(lm))) == [0, 3, 7]


def test_ring_and_stats():
    shape = (12, 12, 5)
    m = np.zeros(shape, np.uint8)
    m[5:7, 5:7, 2] = 1
    m[0, 0, 0] = 1
    zooms = (2.0, 2.0, 3.0)
    les = find_lesions(m, zooms, ring_mm=2.0)
    sl, ring = les.rings[1]  # the 2 x 2 lesion (labels follow scan order: corner first)
    full = np.zeros(shape, bool)
    full[sl] = ring
    # within 2 mm: the in-plane face neighbours only (the slices are 3 mm apart)
    want = np.zeros(shape, bool)
    want[4:8, 5:7, 2] = True
    want[5:7, 4:8, 2] = True
    want[5:7, 5:7, 2] = False
    np.testing.assert_array_equal(full, want)
    n, vol = lesion_sizes(les, zooms)
    assert n.tolist() == [1, 4] and vol == pytest.approx([0.012, 0.048])
    values = np.arange(np.prod(shape), dtype=float).reshape(shape)
    values[5, 5, 2] = np.nan
    inside, rng = lesion_stats(values, les)
    v = values[5:7, 5:7, 2][np.isfinite(values[5:7, 5:7, 2])]
    assert inside["n_finite"].tolist() == [1, 3]
    assert inside["mean"][1] == pytest.approx(v.mean()) and inside["median"][1] == np.median(v)
    assert rng["median"][1] == pytest.approx(np.median(values[want]))


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data), AFFINE).to_filename(str(path))


def test_group_lesions_table(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    assert run_participants(root, out, pipelines={"dsc": fake_pipeline}).exit_code == 0
    masks = tmp_path / "masks"
    nawm = np.zeros(SHAPE, np.uint8)
    nawm[:, :2] = 1
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[0, 3, 0] = 1
    lesion[3:5, 3, 2] = 1
    enh = np.zeros(SHAPE, np.uint8)
    enh[4, 3, 2] = 1
    anat = masks / "sub-01" / "anat"
    _save(anat / "sub-01_desc-NAWM_mask.nii.gz", nawm)
    _save(anat / "sub-01_desc-lesion_mask.nii.gz", lesion)
    _save(anat / "sub-01_desc-enhancing_mask.nii.gz", enh)
    res = group_table(out, masks_dir=masks, reference_region="NAWM", maps=["cbf"])
    assert res.lesions_table == out / "group_lesions.tsv"
    with open(res.lesions_table, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert tuple(rows[0]) == LESION_COLUMNS
    assert [(r["subject"], r["lesion"], r["enhancing"]) for r in rows] == [
        ("sub-01", "1", "0"),
        ("sub-01", "2", "1"),
    ]
    series = nib.load(root / "sub-01/perf/sub-01_dsc.nii.gz").get_fdata(dtype=np.float32)
    cbf = (series.mean(axis=3) * np.float32(TE_S)).astype(np.float64)
    r = rows[1]
    v = cbf[3:5, 3, 2]
    assert int(r["n_voxels"]) == 2 and float(r["volume_ml"]) == pytest.approx(0.024)
    assert float(r["enhancing_fraction"]) == 0.5
    assert float(r["median"]) == pytest.approx(np.median(v), rel=1e-6)
    assert float(r["rel_median"]) == pytest.approx(np.median(v) / np.median(cbf[:, :2]), rel=1e-6)
    # 3 mm ring on 2 x 2 x 3 mm voxels: faces (2 or 3 mm) and in-plane diagonals (2.83 mm)
    ring = np.zeros(SHAPE, bool)
    ring[2, 3, 2] = ring[3:5, 2, 2] = ring[3:5, 3, 1] = ring[2, 2, 2] = True
    assert int(r["ring_n_voxels"]) == ring.sum()
    assert float(r["ring_median"]) == pytest.approx(np.median(cbf[ring]), rel=1e-6)
