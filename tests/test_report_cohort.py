"""Cohort summary page (issue 7): a row per subject, robust outlier flags, working links."""

from __future__ import annotations

import numpy as np
import pytest
from test_report_run import assert_self_contained, references, write_outputs

from gpuperf.errors import InputError, OutputExistsError
from gpuperf.report import robust_z, summarize_run, write_cohort_report, write_run_report
from gpuperf.report.cohort import OUTLIER_Z


def test_robust_z_matches_iglewicz_hoaglin():
    x = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, MAD 1
    assert robust_z(x) == pytest.approx(0.6745 * (np.array(x) - 3.0))
    # MAD = 0: mean absolute deviation 0.2 -> z = (6 - 5) / (1.253314 * 0.2)
    assert robust_z([5, 5, 5, 5, 6])[-1] == pytest.approx(1 / (1.253314 * 0.2))
    assert np.all(robust_z([7, 7, 7]) == 0)
    z = robust_z([1.0, np.nan, 2.0, 3.0])
    assert np.isnan(z[1]) and z[2] == 0


def test_summarize_run_numbers(tmp_path):
    truth = write_outputs(tmp_path / "a", "s", "asl", failed_fraction=0.1, extra=False)
    s = summarize_run(tmp_path / "a", "s")
    cbf = truth["cbf"][truth["mask"] & ~truth["failed"]]
    assert s["CBF median"] == pytest.approx(np.median(cbf), rel=1e-5)
    assert s["flagged %"] == pytest.approx(100 * truth["failed"].sum() / truth["mask"].sum())
    assert s["mask ml"] == pytest.approx(truth["mask"].sum() * 2 * 2 * 4 / 1000)
    assert "MTT median" not in s  # ASL: only the maps present


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    rows = []
    for i in range(6):
        sub = root / f"sub-{i:02d}"
        # sub-03 has twice the CBF of the others: an outlier whatever the noise
        write_outputs(
            sub,
            f"sub-{i:02d}",
            "dsc",
            cbf_level=100.0 if i == 3 else 50.0,
            seed=i,
            extra=False,
            shape=(16, 16, 4),
        )
        rows.append({"subject": f"sub-{i:02d}", "out_dir": sub, "prefix": f"sub-{i:02d}"})
    write_run_report(root / "sub-00", "sub-00", "dsc", max_slices=2)
    rows.append({"subject": "sub-06", "status": "failed", "message": "no AIF found"})
    rows.append({"subject": "sub 07", "values": {"GM CBF": 61.0}, "report": root / "nope.html"})
    return root, rows


def test_cohort_page_flags_outlier_and_links(cohort):
    root, rows = cohort
    path = write_cohort_report(root, rows)
    assert path == root / "cohort_report.html"
    refs = assert_self_contained(path)
    text = path.read_text(encoding="utf-8")
    outlier_rows = [r for r in text.split("<tr") if 'class="outlier"' in r]
    assert len(outlier_rows) == 1 and "sub-03" in outlier_rows[0]
    assert "outlier: CBF median" in outlier_rows[0]
    z = float(outlier_rows[0].split("(z=")[1].split(")")[0])
    assert z > OUTLIER_Z
    assert "failed" in text and "no AIF found" in text and "no report file" in text
    assert "GM CBF" in text and "61" in text
    links = [h for h in refs.href if not h.startswith("#")]
    assert links == ["sub-00/sub-00_report.html"]
    assert refs.n_img == 6  # one thumbnail per subject with outputs
    with pytest.raises(OutputExistsError):
        write_cohort_report(root, rows)


def test_cohort_row_needs_subject(tmp_path):
    with pytest.raises(InputError, match="subject"):
        write_cohort_report(tmp_path, [{"status": "ok"}])


def test_unreadable_subject_does_not_hide_others(tmp_path):
    write_outputs(tmp_path / "a", "a", "asl", extra=False, shape=(12, 12, 3))
    rows = [
        {"subject": "a", "out_dir": tmp_path / "a", "prefix": "a"},
        {"subject": "b", "out_dir": tmp_path / "missing", "prefix": "b"},
    ]
    text = write_cohort_report(tmp_path, rows).read_text(encoding="utf-8")
    assert "outputs unreadable" in text and ">a<" in text
    assert len(references(tmp_path / "cohort_report.html").src) <= 1


def test_rows_from_jobs(tmp_path):
    from types import SimpleNamespace

    from gpuperf.report import rows_from_jobs

    jobs = [
        SimpleNamespace(
            job_id="sub-01_dsc",
            status="done",
            error=None,
            outputs=["sub-01/dsc/sub-01_cbv.nii.gz", "sub-01/dsc/sub-01_cbf.nii.gz"],
        ),
        SimpleNamespace(job_id="sub-02_dsc", status="failed", error="no AIF", outputs=[]),
        SimpleNamespace(job_id="sub-03_dsc", status="skipped", error=None, outputs=[]),
    ]
    rows = rows_from_jobs(tmp_path, jobs)
    assert rows[0] == {
        "subject": "sub-01_dsc",
        "status": "ok",
        "out_dir": tmp_path / "sub-01" / "dsc",
        "prefix": "sub-01",
    }
    assert rows[1] == {"subject": "sub-02_dsc", "status": "failed", "message": "no AIF"}
    assert rows[2]["status"] == "ok" and "prefix" not in rows[2]


# -- subject reports built in the background (gpuperf.cohort.reporting) -----------------------


def _jobs_tsv(out):
    import csv

    with open(out / "logs" / "jobs.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_background_reports_match_serial_maps_and_record_timings(tmp_path):
    """Reports on: each subject's report is drawn in a background thread while the next
    subject computes; the maps are those of a run without reports, bit for bit, every subject
    has its report, results keep job order, and logs/jobs.tsv has fit and report seconds."""
    import nibabel as nib
    from test_cohort_support import make_real_bids, published_files

    from gpuperf.cohort import run_participants

    ds = make_real_bids(tmp_path, subjects=("01", "02", "03"), modalities=("dsc",))
    on = run_participants(ds["bids"], tmp_path / "on", device="cpu", report=True)
    off = run_participants(ds["bids"], tmp_path / "off", device="cpu", report=False)
    assert on.exit_code == 0 == off.exit_code, [r.error for r in on.failed + off.failed]
    assert [r.job_id for r in on.results] == ["sub-01_dsc", "sub-02_dsc", "sub-03_dsc"]

    def maps(out):
        return {
            p.relative_to(out).as_posix(): np.asarray(nib.load(p).dataobj)
            for p in published_files(out)
            if p.name.endswith(".nii.gz")
        }

    a, b = maps(tmp_path / "on"), maps(tmp_path / "off")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    reports = sorted((tmp_path / "on").glob("sub-*/perf/*_report.html"))
    assert len(reports) == 3 and not list((tmp_path / "off").rglob("*_report.html"))
    assert (tmp_path / "on" / "cohort_report.html").exists()
    for r in reports:
        assert_self_contained(r)
    rows_on, rows_off = _jobs_tsv(tmp_path / "on"), _jobs_tsv(tmp_path / "off")
    assert all(float(r["report_s"]) > 0 and float(r["fit_s"]) > 0 for r in rows_on)
    assert all(float(r["report_s"]) == 0 for r in rows_off)
    assert all(float(r["fit_s"]) <= float(r["compute_s"]) for r in rows_on)


def test_background_reports_keep_order_and_isolate_failures(tmp_path):
    from test_cohort_support import fake_pipeline, make_bids

    from gpuperf.cohort import run_participants

    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03", "04"))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dsc]\nfail_subject = "02"\n')
    run = run_participants(
        root, tmp_path / "out", pipelines={"dsc": fake_pipeline}, config=cfg, report=True
    )
    assert [r.job_id for r in run.results] == [f"sub-0{i}_dsc" for i in range(1, 5)]
    assert [r.status for r in run.results] == ["done", "failed", "done", "done"]
    assert run.exit_code != 0
