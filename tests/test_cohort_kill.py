"""A cohort run killed mid-way (SIGKILL, SIGINT) in a real subprocess: no partial output under a
final name, and the next run redoes exactly the incomplete subjects."""

from __future__ import annotations

import contextlib
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
import os, sys, time
sys.path.insert(0, {tests!r})
import test_cohort_support
from test_cohort_support import fake_pipeline
from gpuperf.cohort import run_participants


class BlockingTime:
    # the fake pipeline's pause (maps staged, not published) blocks for good in the subject
    # GPUPERF_TEST_BLOCK names ("all": every one): the signal always finds the run there,
    # however slow the machine (no race with the run's end)
    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        with open(os.environ["GPUPERF_TEST_COMPUTING"]) as fh:
            series = fh.read()
        block = os.environ["GPUPERF_TEST_BLOCK"]
        if block == "all" or block in series:
            with open(os.environ["GPUPERF_TEST_COMPUTING"] + ".pids", "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
            deadline = time.monotonic() + 300  # a failing test must not leave them forever
            while time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(seconds)


test_cohort_support.time = BlockingTime()  # also in spawned workers (they import this script)
if __name__ == "__main__":
    run = run_participants(
        {bids!r}, {out!r}, pipelines={{"dsc": fake_pipeline}}, work_dir={work!r}, workers={workers}
    )
    sys.exit(run.exit_code)
"""


def _start(tmp_path, root, out, work, block: str, workers: int = 1):
    script = tmp_path / "run.py"
    script.write_text(
        SCRIPT.format(
            tests=str(Path(__file__).parent),
            bids=str(root),
            out=str(out),
            work=str(work),
            workers=workers,
        )
    )
    flag = tmp_path / "computing.txt"
    env = {
        **os.environ,
        "GPUPERF_TEST_COMPUTING": str(flag),
        "GPUPERF_TEST_SLEEP_S": "0.01",
        "GPUPERF_TEST_BLOCK": block,
    }
    return subprocess.Popen([sys.executable, str(script)], env=env), flag


def _wait_for(cond, proc, timeout_s: float = 120.0) -> None:
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
    proc, flag = _start(tmp_path, root, out, work, block="sub-02")
    marker1 = out / "sub-01" / "perf" / f"{MARKER_PREFIX}sub-01_dsc.json"
    # signal while sub-02 is inside its pipeline (maps staged in a temp folder, not published;
    # the script blocks it there until the signal comes)
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


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_their_killed_runner(tmp_path):
    """kill -9 of the runner: its worker processes end too (no done-markers, no overlap with a
    re-run, and on a GPU node no device memory held by orphans)."""
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    out, work = tmp_path / "out", tmp_path / "work"
    proc, flag = _start(tmp_path, root, out, work, block="all", workers=2)
    pids_file = Path(str(flag) + ".pids")

    def two_blocked() -> bool:
        return pids_file.exists() and len(pids_file.read_text().split()) >= 2

    _wait_for(two_blocked, proc)
    workers = [int(p) for p in pids_file.read_text().split()]
    assert os.getpid() not in workers and proc.pid not in workers
    assert all(_alive(p) for p in workers)
    try:
        proc.kill()
        proc.wait(timeout=30)
        t0 = time.monotonic()
        while any(_alive(p) for p in workers) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "orphaned workers outlived the runner"
    finally:
        for p in workers:  # our own children's children: leave nothing behind on failure
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
    assert list(out.glob(f"sub-*/perf/{MARKER_PREFIX}*")) == []
