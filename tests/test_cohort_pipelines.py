"""The cohort runner with the real DSC and ASL pipelines, and with a real Dask cluster."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from test_cohort_support import make_real_bids, published_files

from gpuperf.cohort import group_table, run_participants


def _arrays(out):
    return {
        p.relative_to(out).as_posix(): np.asarray(nib.load(p).dataobj)
        for p in published_files(out)
        if p.name.endswith(".nii.gz")
    }


@pytest.fixture(scope="module")
def real_cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    ds = make_real_bids(tmp)
    out = tmp / "out"
    cfg = tmp / "c.toml"
    cfg.write_text(f'[dsc]\nmethod = "osvd"\n[inputs]\nmasks_dir = "{ds["masks"]}"\n')
    run = run_participants(ds["bids"], out, config=cfg, device="cpu")
    return ds, out, cfg, run


def test_real_pipelines_equal_direct_runs(real_cohort, tmp_path):
    from gpuperf.asl.pipeline import run_asl
    from gpuperf.dsc.pipeline import run_dsc

    ds, out, cfg, run = real_cohort
    assert run.exit_code == 0, [r.error for r in run.failed]
    assert [r.job_id for r in run.results] == [
        "sub-01_asl",
        "sub-01_dsc",
        "sub-02_asl",
        "sub-02_dsc",
    ]
    arrays = _arrays(out)
    # the same series run directly (sidecar complete beside it, masks given by hand) gives
    # the same maps bit for bit: staging, inheritance and publishing change nothing
    ph = ds["phantom-01-dsc"]
    masks = ds["masks"] / "sub-01" / "anat"
    direct = run_dsc(
        ph / "sub-01_dsc.nii.gz",
        tmp_path / "d1",
        method="osvd",
        device="cpu",
        mask_path=masks / "sub-01_acq-dsc_desc-brain_mask.nii.gz",
        aif=masks / "sub-01_acq-dsc_desc-aif_mask.nii.gz",
        prefix="d",
    )
    for name in ("cbf", "cbv", "mtt", "status"):
        got = arrays[f"sub-01/perf/sub-01_desc-dsc_{name}.nii.gz"]
        want = np.asarray(nib.load(tmp_path / "d1" / f"d_{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert direct.summary["voxels"] > 0
    # sub-02 has no masks: automatic brain mask and AIF selection
    side = json.loads((out / "sub-02/perf/sub-02_desc-dsc_cbf.json").read_text())
    assert str(ds["bids"] / "sub-02/perf/sub-02_dsc.nii.gz") in json.dumps(side)
    run_asl(ds["phantom-02-asl"] / "sub-02_asl.nii.gz", tmp_path / "a2", device="cpu", prefix="a")
    np.testing.assert_array_equal(
        arrays["sub-02/perf/sub-02_desc-asl_cbf.nii.gz"],
        np.asarray(nib.load(tmp_path / "a2" / "a_cbf.nii.gz").dataobj),
    )


def test_real_group_table(real_cohort):
    ds, out, cfg, run = real_cohort
    res = group_table(
        out, masks_dir=ds["masks"], mask_descs=["lesion", "NAWM"], reference_region="NAWM"
    )
    assert res.problems == []
    with open(res.table, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    cbv = [
        r for r in rows if r["subject"] == "sub-01" and r["modality"] == "dsc" and r["map"] == "cbv"
    ]
    assert {r["region"] for r in cbv} == {"lesion", "NAWM"}
    lesion = next(r for r in cbv if r["region"] == "lesion")
    m = nib.load(out / "sub-01/perf/sub-01_desc-dsc_cbv.nii.gz").get_fdata(dtype=np.float32)
    reg = (
        nib.load(ds["masks"] / "sub-01/anat/sub-01_acq-dsc_desc-lesion_mask.nii.gz").get_fdata() > 0
    )
    v = m[reg & np.isfinite(m)].astype(np.float64)
    assert int(lesion["n_voxels"]) == v.size > 0
    assert float(lesion["mean"]) == pytest.approx(v.mean(), rel=1e-12)
    nawm = next(r for r in cbv if r["region"] == "NAWM")
    assert float(lesion["rel_mean"]) == pytest.approx(v.mean() / float(nawm["mean"]), rel=1e-12)
    assert float(nawm["rel_mean"]) == pytest.approx(1.0)
    maps = {(r["modality"], r["map"]) for r in rows}
    assert ("asl", "cbf") in maps and ("dsc", "mtt") in maps
    assert not any(m.endswith(("status", "stderr", "aifmask")) for _, m in maps)


def test_dask_local_cluster_equals_local_run(real_cohort, tmp_path):
    import os

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import distributed  # CI must test the real cluster: fail, do not skip
    else:
        distributed = pytest.importorskip("distributed")
    ds, out, cfg, _ = real_cohort
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        local_directory=str(tmp_path / "dask-scratch"),
    ) as cluster:
        run = run_participants(
            ds["bids"],
            tmp_path / "dask",
            config=cfg,
            device="cpu",
            scheduler=cluster.scheduler_address,
        )
    assert run.exit_code == 0 and run.mode == "dask"
    local, dask = _arrays(out), _arrays(tmp_path / "dask")
    assert sorted(local) == sorted(dask) and len(local) > 10
    for k in local:
        assert local[k].dtype == dask[k].dtype
        assert local[k].tobytes() == dask[k].tobytes(), k
    # tasks ran on worker processes, not in this one
    logs = (tmp_path / "dask" / "logs" / "sub-01_dsc.log").read_text()
    assert f"pid {os.getpid()})" not in logs


def test_cli_subprocess_participant_resume_group(real_cohort, tmp_path):
    import shutil
    import subprocess
    import sys

    ds, out, cfg, _ = real_cohort
    bids = tmp_path / "bids"
    shutil.copytree(ds["bids"], bids)
    bad = bids / "sub-02" / "perf" / "sub-02_asl.nii.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated download
    new = tmp_path / "cli"
    cmd = [sys.executable, "-m", "gpuperf", "run", str(bids), str(new)]
    opts = ["--config", str(cfg), "--device", "cpu", "-q"]
    r = subprocess.run([*cmd, "participant", *opts], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr  # one subject failed, the others ran
    assert "1 of 4 series failed" in r.stderr
    with open(new / "logs" / "failures.tsv", encoding="utf-8") as fh:
        fails = list(csv.DictReader(fh, delimiter="\t"))
    assert [(f["subject"], f["modality"]) for f in fails] == [("02", "asl")]
    assert "sub-02_asl.nii.gz" in fails[0]["error"]
    local, cli = _arrays(out), _arrays(new)
    assert sorted(cli) == sorted(
        k for k in local if not k.startswith("sub-02/perf/sub-02_desc-asl")
    )
    assert all(local[k].tobytes() == cli[k].tobytes() for k in cli)  # same as in-process
    r = subprocess.run([*cmd, "participant", *opts], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    with open(new / "logs" / "jobs.tsv", encoding="utf-8") as fh:
        status = {row["job_id"]: row["status"] for row in csv.DictReader(fh, delimiter="\t")}
    assert status == {
        "sub-01_asl": "skipped",
        "sub-01_dsc": "skipped",
        "sub-02_asl": "failed",
        "sub-02_dsc": "skipped",
    }
    r = subprocess.run(
        [*cmd, "group", "--masks-dir", str(ds["masks"]), "--reference-region", "NAWM", "-q"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    with open(new / "group_perfusion.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {(x["subject"], x["modality"]) for x in rows} == {
        ("sub-01", "asl"),
        ("sub-01", "dsc"),
        ("sub-02", "dsc"),
    }


def test_reports_name_the_real_files_not_the_scratch(real_cohort):
    ds, out, cfg, run = real_cohort
    reports = sorted(out.glob("sub-*/perf/*_report.html"))
    assert len(reports) == 4  # one per subject and modality, published with the maps
    for report in reports:
        text = report.read_text(encoding="utf-8")
        assert "gpuperf-stage" not in text and ".gpuperf-tmp" not in text, report.name
        assert str(report.parent) in text
    assert (out / "cohort_report.html").exists()
