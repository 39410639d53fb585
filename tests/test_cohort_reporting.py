"""The report worker of a cohort run (:mod:`gpuperf.cohort.reporting`): a process beside the
compute, equal to a thread file for file, robust to its own death and to scripts without a
main guard; the cohort page takes its numbers and thumbnails from the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_cohort_support import make_real_bids, published_files

from gpuperf.cohort import reporting, run_participants
from gpuperf.io import outputs, readahead

#: Fields that hold wall-clock times or durations: they differ between any two runs.
TIMED = ("ElapsedSeconds", "DateTime", "Finished")


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMED}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rw")
    return make_real_bids(tmp, subjects=("01", "02", "03"), masks_for=())


def _run(ds, out, kind, monkeypatch, work):
    # PROCESS_MIN_JOBS decides thread or process for a run (worker_kind); 6 jobs here
    monkeypatch.setattr(reporting, "PROCESS_MIN_JOBS", 1 if kind == "process" else 10**6)
    run = run_participants(ds["bids"], out, device="cpu", work_dir=work)
    assert run.exit_code == 0, [r.error for r in run.failed]
    return run


def _same_files(a: Path, b: Path) -> int:
    """The same files published in ``a`` and ``b``: maps bit for bit, sidecars equal but for
    their times; returns the number of reports (each bigger than 10 kB in both)."""
    fa = [p.relative_to(a) for p in published_files(a)]
    assert fa == [p.relative_to(b) for p in published_files(b)] and len(fa) > 20
    n_reports = 0
    for rel in fa:
        x, y = a / rel, b / rel
        if rel.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(
                np.asarray(nib.load(x).dataobj), np.asarray(nib.load(y).dataobj), str(rel)
            )
        elif rel.suffix == ".json":
            assert _untimed(json.loads(x.read_text())) == _untimed(json.loads(y.read_text()))
        elif rel.suffix == ".html":
            n_reports += 1
            assert x.stat().st_size > 10_000 and y.stat().st_size > 10_000
    return n_reports


def test_process_worker_equals_thread_file_for_file(cohort, tmp_path, monkeypatch):
    """Maps bit for bit, sidecars and done-markers equal but for their times, the same reports
    and cohort page (timestamps aside), logs of whole lines, no scratch left behind."""
    runs = {}
    for kind in ("thread", "process"):
        runs[kind] = _run(cohort, tmp_path / kind, kind, monkeypatch, tmp_path / f"w-{kind}")
        assert not list((tmp_path / f"w-{kind}").iterdir()), "scratch left behind"
        assert not outputs._OPEN, "journals (file descriptors) left open in this process"
        assert not readahead._READ_AHEAD, "inflated inputs left in memory"
    a, b = tmp_path / "thread", tmp_path / "process"
    assert _same_files(a, b) == 6
    markers = sorted(p.relative_to(b) for p in b.glob("sub-*/**/.gpuperf-done_*.json"))
    assert markers == sorted(p.relative_to(a) for p in a.glob("sub-*/**/.gpuperf-done_*.json"))
    assert len(markers) == 6
    for rel in markers:  # the same outputs (sizes aside: the reports print their timings)
        x, y = (json.loads((d / rel).read_text()) for d in (a, b))
        assert set(x.pop("Outputs")) == set(y.pop("Outputs")) and _untimed(x) == _untimed(y)
    for log in (b / "logs").glob("sub-*.log"):  # both processes appended; lines are whole
        lines = log.read_text().splitlines()
        assert lines and all(line[:4] == "2026" or line[:2] == "20" for line in lines if line)
        assert any("published" in line for line in lines), log

    def page(out):
        text = (out / "cohort_report.html").read_text()
        return text[text.index("<table>") :]

    assert page(a) == page(b)
    assert "outputs unreadable" not in page(b) and page(b).count("data:image/png") == 6


def test_subjects_prepared_by_the_worker_equal_a_thread_run(cohort, tmp_path, monkeypatch):
    """The report worker loads every subject (this process never claims one first; it runs
    DSC's model stages, ``run.finish_load``, itself): the published files equal those of a
    thread run as in the test above, ``prepared_aside`` says so, and only what the compute
    made crosses back."""
    ref = _run(cohort, tmp_path / "thread", "thread", monkeypatch, tmp_path / "w-t")
    monkeypatch.setattr(reporting, "claim_prepare", lambda oj: False)  # here only
    run = _run(cohort, tmp_path / "aside", "process", monkeypatch, tmp_path / "w-a")
    aside = {r.job_id: r.prepared_aside for r in run.results}
    assert all(aside.values()) and len(aside) == 6, aside
    assert all(r.prepare_s > 0 and r.write_s > 0 for r in run.results)
    assert all(r.prepare_s + r.write_s < r.compute_s for r in run.results)
    assert not list((tmp_path / "w-a").iterdir()) and not readahead._READ_AHEAD
    assert _same_files(tmp_path / "thread", tmp_path / "aside") == 6
    assert [r.status for r in run.results] == [r.status for r in ref.results]
    tsv = (tmp_path / "aside" / "logs" / "jobs.tsv").read_text().splitlines()
    assert "prepare_s" in tsv[0].split("\t") and "write_s" in tsv[0].split("\t")


def test_a_subject_the_worker_fails_to_prepare_fails_as_here(cohort, tmp_path, monkeypatch):
    """A bad input found by the worker's ``prepare``: that subject fails with the message a
    thread run gives (naming the user's file and field, not a scratch copy); the others are
    done."""
    import shutil

    bids = tmp_path / "bids"
    shutil.copytree(cohort["bids"], bids, symlinks=True)
    sidecar = next(bids.glob("sub-02/perf/*_asl.json"))
    meta = json.loads(sidecar.read_text())
    meta["PostLabelingDelay"] = "soon"
    sidecar.write_text(json.dumps(meta))
    errors = {}
    for kind in ("thread", "process"):
        monkeypatch.setattr(reporting, "PROCESS_MIN_JOBS", 1 if kind == "process" else 10**6)
        if kind == "process":
            monkeypatch.setattr(reporting, "claim_prepare", lambda oj: False)
        run = run_participants(bids, tmp_path / kind, device="cpu", work_dir=tmp_path / "w")
        assert [r.job_id for r in run.failed] == ["sub-02_asl"], [r.error for r in run.failed]
        errors[kind] = (run.failed[0].error_type, run.failed[0].error)
        assert run.count("done") == len(run.results) - 1
    assert errors["process"] == errors["thread"]
    assert str(sidecar) in errors["process"][1] and "PostLabelingDelay" in errors["process"][1]


def test_worker_death_while_preparing_leaves_the_run_whole(cohort, tmp_path, monkeypatch):
    """A worker that dies on its first request to prepare, while this process waits for that
    subject (it never claims one first here): this process prepares and reports every subject
    itself; nothing fails."""
    monkeypatch.setattr(
        reporting.ReportProcess,
        "COMMAND",
        ("-c", "import struct, sys; b = sys.stdin.buffer; b.read(8); sys.exit(3)"),
    )
    monkeypatch.setattr(reporting, "PROCESS_MIN_JOBS", 1)
    monkeypatch.setattr(reporting, "claim_prepare", lambda oj: False)
    run = run_participants(cohort["bids"], tmp_path / "o", device="cpu", work_dir=tmp_path / "w")
    assert run.exit_code == 0 and run.count("done") == 6, [r.error for r in run.failed]
    assert not any(r.prepared_aside for r in run.results)
    assert len(list((tmp_path / "o").glob("sub-*/perf/*_report.html"))) == 6


def test_cohort_page_reads_no_map_after_a_process_run(cohort, tmp_path, monkeypatch):
    """The page's numbers and thumbnails come from whoever drew each report (``precompute_row``:
    the worker process, or this process's report thread for a last subject while the worker is
    busy): with every map read refused in the main thread, the page still has all of them,
    equal to a page that reads the maps itself."""
    import threading

    import gpuperf.report.cohort as page

    load_run = page.load_run

    def refuse(*a, **k):
        if threading.current_thread() is threading.main_thread():
            raise AssertionError("the cohort page read a map again")
        return load_run(*a, **k)

    monkeypatch.setattr(page, "load_run", refuse)
    _run(cohort, tmp_path / "p", "process", monkeypatch, tmp_path / "w")
    text = (tmp_path / "p" / "cohort_report.html").read_text()
    assert "outputs unreadable" not in text and text.count("data:image/png") == 6
    monkeypatch.undo()
    rows = page.rows_from_jobs(tmp_path / "p", run_participants_results(tmp_path / "p"))
    assert all("precomputed" not in r for r in rows)  # from the files: the same numbers
    again = page.write_cohort_report(tmp_path / "p", rows, filename="again.html")
    body = again.read_text()
    assert body[body.index("<table>") :] == text[text.index("<table>") :]


def run_participants_results(out):
    """Job results as the page needs them, rebuilt from the done-markers (no precomputed row)."""
    from types import SimpleNamespace

    res = []
    for m in sorted(out.glob("sub-*/**/.gpuperf-done_*.json")):
        d = json.loads(m.read_text())
        res.append(
            SimpleNamespace(
                job_id=d["JobId"], status="done", outputs=list(d["Outputs"]), error=None
            )
        )
    return res


def test_worker_death_fails_only_what_it_held_and_a_rerun_completes(cohort, tmp_path, monkeypatch):
    """A worker that dies on the first job it is sent to finish (it never answers the
    requests to prepare before it: this process prepares those subjects itself): what it held
    fails (no done-marker, named error), the thread finishes the others, and the same command
    again completes the run."""
    monkeypatch.setattr(
        reporting.ReportProcess,
        "COMMAND",
        (
            "-c",
            "import pickle, struct, sys; b = sys.stdin.buffer\n"
            "while pickle.loads(b.read(struct.unpack('<Q', b.read(8))[0]))[0] != 'finish':\n"
            "    pass\n"
            "sys.exit(3)",
        ),
    )
    monkeypatch.setattr(reporting, "PROCESS_MIN_JOBS", 1)
    out = tmp_path / "o"
    run = run_participants(cohort["bids"], out, device="cpu", work_dir=tmp_path / "w")
    assert {r.status for r in run.results} <= {"done", "failed"}
    # what it held: the job it read and at most one more already in its pipe (depth 1)
    assert 1 <= len(run.failed) <= 2 and len(run.results) == 6
    done = {json.loads(m.read_text())["JobId"] for m in out.glob("sub-*/**/.gpuperf-done_*")}
    for r in run.failed:
        assert "report worker process" in r.error and r.job_id not in done
    monkeypatch.undo()
    again = run_participants(cohort["bids"], out, device="cpu", work_dir=tmp_path / "w")
    assert again.exit_code == 0 and {r.status for r in again.results} <= {"done", "skipped"}
    assert sum(r.status == "done" for r in again.results) == len(run.failed)
    assert len(list(out.glob("sub-*/perf/*_report.html"))) == 6


def test_script_without_main_guard(cohort, tmp_path):
    """A user's script with no ``if __name__ == "__main__"`` guard runs once, with the report
    worker a process (``multiprocessing``'s spawn would import the script again)."""
    script = tmp_path / "myscript.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from gpuperf.cohort import reporting, run_participants
            print("script body ran")
            reporting.PROCESS_MIN_JOBS = 1
            r = run_participants({str(cohort["bids"])!r}, {str(tmp_path / "out")!r},
                                 modality=["asl"], device="cpu")
            print("exit", r.exit_code, r.mode)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(reporting.__file__).parents[2])}
    p = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("script body ran") == 1 and "exit 0 local" in p.stdout
    assert len(list((tmp_path / "out").glob("sub-*/perf/*_report.html"))) == 3


def test_worker_kind():
    from gpuperf.cohort.jobs import JobSettings

    named = {"dsc": JobSettings(Path("."), {}, "gpuperf.dsc.pipeline:run_dsc")}
    given = {"dsc": JobSettings(Path("."), {}, lambda *a, **k: None)}
    n = reporting.PROCESS_MIN_JOBS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert reporting.worker_kind(named, n) == ("process" if cores >= 2 else "thread")
    assert reporting.worker_kind(named, n - 1) == "thread"
    assert reporting.worker_kind(given, n) == "thread"  # a callable may not pickle


def test_staged_series_are_read_from_memory_and_freed(tmp_path, monkeypatch):
    """Staging inflates a ``.nii.gz`` into memory and links the file: the pipeline's
    ``load_image`` of the link takes the bytes (no inflated copy on disk, no second read), and
    the bytes of a job that never reads its series (it fails, or a pipeline reads otherwise) are
    freed when the job closes."""
    from test_cohort_support import fake_pipeline, make_bids

    from gpuperf.cohort.bids import find_jobs
    from gpuperf.cohort.jobs import stage_inputs
    from gpuperf.io.nifti import load_image

    root = make_bids(tmp_path / "bids", subjects=("01", "02"))
    job = find_jobs(root, modality=["dsc"])[0]
    staged = stage_inputs(job, tmp_path / "w")
    assert staged.series.is_symlink() and staged.series.name.endswith(".nii.gz")
    assert staged.series.resolve() == job.series.resolve()
    reads = []
    monkeypatch.setattr("gpuperf.io.nifti.gunzip_bytes", lambda raw: reads.append(1) or b"unused")
    img = load_image(staged.series)  # from memory: nothing inflated here
    assert reads == []
    monkeypatch.undo()
    np.testing.assert_array_equal(img.data, load_image(job.series).data)
    staged.cleanup()
    assert not readahead._READ_AHEAD and not staged.folder.exists()
    again = stage_inputs(job, tmp_path / "w")  # never read: freed by cleanup
    assert readahead._READ_AHEAD
    again.cleanup()
    assert not readahead._READ_AHEAD
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dsc]\nfail_subject = "02"\n')
    run = run_participants(
        root, tmp_path / "out", pipelines={"dsc": fake_pipeline}, config=cfg, prefetch=2
    )
    assert [r.status for r in run.results] == ["done", "failed"]
    assert not readahead._READ_AHEAD


@pytest.mark.parametrize("modality", ["dsc", "asl"])
def test_computed_run_written_after_pickling_equals_written_here(cohort, tmp_path, modality):
    """What the worker process does with a computed subject (``jobs.Computed``): the prepared
    run pickled (the backend by name, the writer's reference without voxels) and its maps
    written from the copy are the maps and sidecars written from the original, byte for byte
    (sidecars but for their timings)."""
    import pickle

    from gpuperf.cohort.bids import find_jobs
    from gpuperf.cohort.jobs import DEFAULT_PIPELINES, JobSettings, open_job, resolve_pipeline
    from gpuperf.io.nifti import ImageGrid

    job = find_jobs(cohort["bids"], modality=[modality])[0]
    fn = resolve_pipeline(DEFAULT_PIPELINES[modality])
    written = {}
    for kind in ("here", "pickled"):
        oj = open_job(job, JobSettings(tmp_path / kind, {"device": "cpu"}, fn, work_dir=tmp_path))
        args, kwargs = oj.call_args()
        prepared = fn.prepare(*args, **kwargs)
        fn.compute([prepared])
        if kind == "pickled":
            prepared = pickle.loads(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
            assert isinstance(prepared.writer.reference, ImageGrid)  # no input voxels inside
        fn.write(prepared)
        written[kind] = {}
        for p in oj.tmp_out.iterdir():
            if p.is_file() and p.suffix != ".npz":
                data = p.read_bytes()
                for folder, token in ((oj.staged.folder, b"STAGED"), (oj.tmp_out, b"OUT")):
                    data = data.replace(str(folder).encode(), token)
                written[kind][p.name] = data
        oj.close()
    a, b = written["here"], written["pickled"]
    assert a.keys() == b.keys() and any(k.endswith(".nii.gz") for k in a)
    for name in a:
        if name.endswith(".json"):
            assert _untimed(json.loads(a[name])) == _untimed(json.loads(b[name])), name
        else:
            assert a[name] == b[name], name


def test_a_job_that_does_not_pickle_is_refused_not_sent():
    """The caller finishes such a job itself (``run_overlapped`` falls back to its thread); the
    worker stays up for the next."""
    proc = reporting.ReportProcess()
    try:
        with pytest.raises(reporting.WorkerGone, match="cannot send"):
            proc.submit(lambda: 0, None)  # type: ignore[arg-type]
        assert proc.alive
    finally:
        proc.shutdown()


def test_a_loaded_subject_goes_back_by_reference():
    """What the worker loaded crosses back to it by reference (it keeps its own copy): only
    what the computing process made is pickled, and the worker's copy takes its place."""
    import pickle
    from types import SimpleNamespace

    from gpuperf.cohort.jobs import Computed

    worker_side = SimpleNamespace(series=np.arange(10**6, dtype=np.float64), name="sub-01")
    loaded = pickle.loads(pickle.dumps(worker_side))  # as the computing process receives it
    kept = reporting._kept_objects(loaded)
    assert set(kept) == {"loaded.series"}  # a string is not worth a reference
    loaded.fit = np.full(1000, 2.0)  # the compute sets its results
    body = reporting._dumps(Computed(loaded), kept)
    assert len(body) < 20_000 < len(pickle.dumps(Computed(loaded)))
    back = reporting._loads(body, reporting._kept_objects(worker_side)).prepared
    assert back.series is worker_side.series and back.name == "sub-01"
    np.testing.assert_array_equal(back.fit, loaded.fit)
