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
