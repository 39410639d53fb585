"""A cohort run killed mid-way (SIGKILL, SIGINT) in a real subprocess: no partial output under a
final name, and the next run redoes exactly the incomplete subjects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
from test_cohort_support import fake_pipeline, make_bids, published_files

from gpuperf.cohort import run_participants
from gpuperf.cohort.jobs import MARKER_PREFIX

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_cohort_support import fake_pipeline
from gpuperf.cohort import run_participants
run = run_participants({bids!r}, {out!r}, pipelines={{"dsc": fake_pipeline}}, work_dir={work!r})
sys.exit(run.exit_code)
"""


def _wait_for(cond, proc, timeout_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early with {proc.returncode}")
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            raise AssertionError("timed out waiting for the runner")
        time.sleep(0.02)


def _published_subjects(out: Path) -> set[str]:
    """Subjects with files under final names; each such file must be complete."""
    subjects = set()
    for p in published_files(out):
        if p.name.endswith(".nii.gz"):
            nib.load(p).get_fdata()  # a truncated file would raise
        elif p.suffix == ".json":
            json.loads(p.read_text())
        subjects.add(p.parts[-3])
    return subjects


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_leaves_no_partial_output_and_resumes(tmp_path, sig):
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03", "04"))
    out, work = tmp_path / "out", tmp_path / "work"
    script = tmp_path / "run.py"
    script.write_text(
        SCRIPT.format(
            tests=str(Path(__file__).parent), bids=str(root), out=str(out), work=str(work)
        )
    )
    flag = tmp_path / "computing.txt"
    env = {**os.environ, "GPUPERF_TEST_COMPUTING": str(flag), "GPUPERF_TEST_SLEEP_S": "1.2"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    marker1 = out / "sub-01" / "perf" / f"{MARKER_PREFIX}sub-01_dsc.json"
    # signal while sub-02 is inside its pipeline (maps staged in a temp folder, not published)
    _wait_for(lambda: marker1.exists() and flag.exists() and "sub-02" in flag.read_text(), proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    assert rc != 0
    assert _published_subjects(out) == {"sub-01"}
    if sig == signal.SIGINT:  # an interrupt cleans up after itself
        assert list(out.rglob(".gpuperf-tmp-*")) == []
        assert list(work.iterdir()) == []
    else:  # SIGKILL leaves the staged maps of sub-02, in a hidden temp folder only
        assert [p.parent.parent.name for p in out.glob("sub-*/perf/.gpuperf-tmp-*")] == ["sub-02"]
    # resume: sub-01 skipped, the others done, stale temporary folders removed
    run = run_participants(root, out, pipelines={"dsc": fake_pipeline}, work_dir=work)
    assert [r.status for r in run.results] == ["skipped", "done", "done", "done"]
    assert _published_subjects(out) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    assert list(out.rglob(".gpuperf-tmp-*")) == []
