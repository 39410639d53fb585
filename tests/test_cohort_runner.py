"""Participant stage with an injected fake pipeline: layout, failure isolation, resumability."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from test_cohort_support import TE_S, fake_pipeline, make_bids, published_files
from typer.testing import CliRunner

from gpuperf.cohort import run_participants
from gpuperf.cohort.jobs import MARKER_PREFIX
from gpuperf.errors import InputError

FAKE = {"dsc": fake_pipeline, "asl": fake_pipeline}


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_layout_inheritance_and_provenance(tmp_path):
    root = make_bids(
        tmp_path / "bids", subjects=("01", "02"), sessions=("1",), modalities=("dsc", "asl")
    )
    out = tmp_path / "out"
    run = run_participants(root, out, pipelines=FAKE, config=None)
    assert run.exit_code == 0 and run.count("done") == 4
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "gpuperf"
    names = {p.relative_to(out).as_posix() for p in published_files(out)}
    assert "sub-01/ses-1/perf/sub-01_ses-1_desc-dsc_cbf.nii.gz" in names
    assert "sub-02/ses-1/perf/sub-02_ses-1_desc-asl_cbv.json" in names
    assert len(names) == 4 * 4
    # EchoTime came from the root-level dsc.json (inheritance), applied by staging
    series = root / "sub-01" / "ses-1" / "perf" / "sub-01_ses-1_dsc.nii.gz"
    cbf = nib.load(out / "sub-01/ses-1/perf/sub-01_ses-1_desc-dsc_cbf.nii.gz").get_fdata()
    expect = nib.load(series).get_fdata(dtype=np.float32).mean(axis=3) * TE_S
    np.testing.assert_allclose(cbf, expect, rtol=1e-6)
    # provenance names the original input, not the scratch copy
    side = json.loads((out / "sub-01/ses-1/perf/sub-01_ses-1_desc-dsc_cbf.json").read_text())
    assert side["Sources"] == [str(series)]
    assert not list(out.rglob(".gpuperf-tmp-*"))
    assert (out / "logs" / "sub-01_ses-1_dsc.log").read_text().count("fake pipeline") == 1
    assert _tsv(out / "logs" / "failures.tsv") == []
    assert json.loads((out / "logs" / "config.json").read_text())["run"]["workers"] == 1


def test_failure_isolation_tsv_and_exit_code(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03", "04"))
    # corrupt file, and missing metadata (the subject-level sidecar hides nothing, so
    # remove the root one and give the others their own)
    (root / "sub-02" / "perf" / "sub-02_dsc.nii.gz").write_bytes(b"\x1f\x8b not a gzip")
    (root / "dsc.json").unlink()
    for sub in ("01", "02", "04"):
        (root / f"sub-{sub}" / "perf" / f"sub-{sub}_dsc.json").write_text(
            json.dumps({"EchoTime": TE_S})
        )
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dsc": {"fail_subject": "04"}}))
    out = tmp_path / "out"
    run = run_participants(root, out, pipelines=FAKE, config=cfg)
    assert run.exit_code == 1
    assert [r.status for r in run.results] == ["done", "failed", "failed", "failed"]
    rows = _tsv(out / "logs" / "failures.tsv")
    assert [r["subject"] for r in rows] == ["02", "03", "04"]
    assert "decompress" in rows[0]["error"] and "sub-02_dsc.nii.gz" in rows[0]["error"]
    assert "EchoTime" in rows[1]["error"] or "sidecar" in rows[1]["error"]
    assert rows[2]["error"] == "RuntimeError: injected failure"
    assert "injected failure" in Path(rows[2]["log"]).read_text()
    # nothing of the failed subjects under a final name, nor temp folders
    assert {p.parts[-3] for p in published_files(out)} == {"sub-01"}
    assert not list(out.rglob(".gpuperf-tmp-*"))


def test_unknown_option_fails_before_any_subject(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01",))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[dsc]\nmethd = 'csvd'\n")
    with pytest.raises(InputError, match="dsc.methd"):
        run_participants(root, tmp_path / "out", pipelines=FAKE, config=cfg)
    assert not (tmp_path / "out" / "sub-01").exists()


def _statuses(out: Path) -> list[str]:
    return [r["status"] for r in _tsv(out / "logs" / "jobs.tsv")]


def test_resume_skips_complete_redoes_incomplete_and_changed(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    out = tmp_path / "out"
    assert run_participants(root, out, pipelines=FAKE).exit_code == 0
    first = {p: p.stat().st_mtime_ns for p in published_files(out)}
    rerun = run_participants(root, out, pipelines=FAKE)
    assert rerun.exit_code == 0 and _statuses(out) == ["skipped"] * 3
    assert "sub-01/perf/sub-01_desc-dsc_cbf.nii.gz" in rerun.results[0].outputs
    assert {p: p.stat().st_mtime_ns for p in published_files(out)} == first
    # incomplete: an output deleted (sub-01), a marker missing as after a kill while
    # publishing (sub-02); changed input stats (sub-03)
    (out / "sub-01" / "perf" / "sub-01_desc-dsc_cbv.nii.gz").unlink()
    (out / "sub-02" / "perf" / f"{MARKER_PREFIX}sub-02_dsc.json").unlink()
    series3 = root / "sub-03" / "perf" / "sub-03_dsc.nii.gz"
    os.utime(series3, ns=(series3.stat().st_atime_ns, series3.stat().st_mtime_ns + 10**9))
    run = run_participants(root, out, pipelines=FAKE)
    assert [r.status for r in run.results] == ["done", "done", "failed"]
    assert "--overwrite" in run.results[2].error  # complete outputs are never replaced silently
    run = run_participants(root, out, pipelines=FAKE, overwrite=True)
    assert [r.status for r in run.results] == ["skipped", "skipped", "done"]
    # a parameter change (inherited sidecar content) makes every subject stale
    (root / "dsc.json").write_text(json.dumps({"EchoTime": 2 * TE_S}))
    run = run_participants(root, out, pipelines=FAKE, overwrite=True)
    assert [r.status for r in run.results] == ["done"] * 3
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dsc": {"scale": 2.0}}))
    run = run_participants(root, out, pipelines=FAKE, config=cfg, overwrite=True)
    assert [r.status for r in run.results] == ["done"] * 3
    assert run_participants(root, out, pipelines=FAKE, config=cfg).count("skipped") == 3


def test_worker_processes_match_in_process_run(tmp_path, monkeypatch):
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    a, b = tmp_path / "a", tmp_path / "b"
    spec = {"dsc": "test_cohort_support:fake_pipeline"}
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    assert run_participants(root, a, pipelines=spec).exit_code == 0
    run = run_participants(root, b, pipelines=spec, workers=2, gpus=["3", "5"])
    assert run.exit_code == 0 and run.mode == "processes(2)"
    # one GPU per worker process, dealt round-robin
    pinned = {(r.summary["pid"], r.summary["cuda_visible_devices"]) for r in run.results}
    assert {g for _, g in pinned} <= {"3", "5"} and len({p for p, _ in pinned}) == len(pinned)
    for pa in published_files(a):
        pb = b / pa.relative_to(a)
        if pa.suffix == ".json":
            continue  # timings and dates differ
        assert pa.read_bytes() == pb.read_bytes()


def test_cli_participant_exit_code(tmp_path, monkeypatch):
    from gpuperf.cli.cohort import run_command

    root = make_bids(tmp_path / "bids", subjects=("01", "02"))
    (root / "sub-02" / "perf" / "sub-02_dsc.nii.gz").write_bytes(b"garbage")
    monkeypatch.setattr(
        "gpuperf.cohort.jobs.DEFAULT_PIPELINES",
        {"dsc": "test_cohort_support:fake_pipeline", "asl": "x:y"},
    )
    monkeypatch.setattr(
        "gpuperf.cohort.runner.DEFAULT_PIPELINES",
        {"dsc": "test_cohort_support:fake_pipeline", "asl": "x:y"},
    )
    app = typer.Typer()
    app.command("run")(run_command)
    app.command("other")(lambda: None)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "run",
            str(root),
            str(out),
            "participant",
            "--participant-label",
            "01,02",
            "--modality",
            "dsc",
            "-q",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "1 of 2 series failed" in res.output
    assert (out / "sub-01" / "perf" / "sub-01_desc-dsc_cbf.nii.gz").exists()


def test_slurm_cluster_options_and_missing_dependency(monkeypatch):
    import sys
    import types

    from gpuperf.cohort import dask_client
    from gpuperf.errors import GpuperfError

    pytest.importorskip("distributed")
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # makes the import fail
    with pytest.raises(GpuperfError, match=r"pip install 'gpuperf\[cluster\]'"):
        dask_client(cluster="slurm")
    made = {}

    class FakeSLURM:
        def __init__(self, **kw):
            made["kw"] = kw

        def scale(self, jobs):
            made["jobs"] = jobs

    monkeypatch.setitem(sys.modules, "dask_jobqueue", types.SimpleNamespace(SLURMCluster=FakeSLURM))
    monkeypatch.setattr("distributed.Client", lambda cluster: ("client", cluster))
    client, cluster = dask_client(
        cluster="slurm", workers=3, cluster_options={"queue": "gpu", "memory": "32GB"}
    )
    assert made["jobs"] == 3 and client == ("client", cluster)
    assert made["kw"]["job_extra_directives"] == ["--gres=gpu:1"]  # one GPU per worker
    assert made["kw"]["processes"] == 1 and made["kw"]["queue"] == "gpu"
    assert made["kw"]["memory"] == "32GB"
    with pytest.raises(InputError, match="cluster"):
        dask_client(cluster="pbs")


@pytest.mark.parametrize("use_isal", [True, False], ids=["isal", "zlib"])
def test_gunzip_multi_member_and_truncated(tmp_path, monkeypatch, use_isal):
    import gzip
    import sys

    from gpuperf.io.readahead import gunzip_bytes

    def _gunzip(src, dst):  # what staging does with a series (it keeps the bytes in memory)
        dst.write_bytes(gunzip_bytes(src.read_bytes()))

    if use_isal:
        pytest.importorskip("isal")
    else:
        monkeypatch.setitem(sys.modules, "isal", None)
    data = np.random.default_rng(0).standard_normal(1_500_000).astype(np.float32).tobytes()
    src = tmp_path / "a.nii.gz"
    src.write_bytes(gzip.compress(data[:4_000_000]) + gzip.compress(data[4_000_000:]))
    _gunzip(src, tmp_path / "a.nii")
    assert (tmp_path / "a.nii").read_bytes() == data
    src.write_bytes(gzip.compress(data)[:-100])
    with pytest.raises((EOFError, OSError)):
        _gunzip(src, tmp_path / "b.nii")


def test_bookkeeping_files_are_readable_by_others(tmp_path):
    import stat

    from gpuperf.io.outputs import _UMASK

    root = make_bids(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    run_participants(root, out, pipelines=FAKE)
    for p in (
        out / "dataset_description.json",
        out / "logs" / "jobs.tsv",
        out / "sub-01" / "perf" / f"{MARKER_PREFIX}sub-01_dsc.json",
    ):
        # mkstemp alone would give 0o600 whatever the umask
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_UMASK, p


def test_worker_process_death_fails_only_its_subject(tmp_path, monkeypatch):
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03", "04", "05"))
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dsc": {"crash_subject": "02"}}))
    out = tmp_path / "out"
    work = tmp_path / "work"
    run = run_participants(
        root,
        out,
        config=cfg,
        workers=2,
        work_dir=work,
        pipelines={"dsc": "test_cohort_support:fake_pipeline"},
    )
    status = [r.status for r in run.results]
    # a neighbour that finished just before the pool broke is found complete on its re-run
    assert status[1] == "failed" and set(status[:1] + status[2:]) <= {"done", "skipped"}
    assert list(out.rglob(".gpuperf-tmp-*")) == [] and list(work.iterdir()) == []
    assert "worker process" in run.results[1].error
    assert run.exit_code == 1
    assert [r["subject"] for r in _tsv(out / "logs" / "failures.tsv")] == ["02"]
