"""The cohort's settings declared once (CohortOptions, GroupOptions): the Python API, the
``gpuperf run`` flags, the ``[group]`` configuration table and ``logs/config.json`` agree."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from test_cohort_support import fake_pipeline, make_bids
from typer.testing import CliRunner

from gpuperf.cli._options import options_command
from gpuperf.cohort import CohortOptions, GroupOptions, JobSettings, run_participants
from gpuperf.cohort.bids import find_jobs
from gpuperf.cohort.jobs import JobResult, OpenJob, open_job, stage_inputs
from gpuperf.errors import InputError
from gpuperf.options import Options, option

FAKE = {"dsc": fake_pipeline, "asl": fake_pipeline}


def test_list_values_and_ranges_are_checked_on_construction():
    o = CohortOptions(participant_label="01, 02", gpus=["0,1", "3"], modality=["dsc"])
    assert o.participant_label == ("01", "02")
    assert o.gpus == ("0", "1", "3")
    assert o.modality == ("dsc",)
    assert CohortOptions(session_label=[]).session_label is None
    with pytest.raises(InputError, match=r"--workers.*\[1, inf\).*found 0"):
        CohortOptions(workers=0)
    with pytest.raises(InputError, match=r"--batch-voxels.*found -1"):
        CohortOptions(batch_voxels=-1)
    with pytest.raises(InputError, match=r"--cluster.*slurm.*'pbs'"):
        CohortOptions(cluster="pbs")
    with pytest.raises(InputError, match=r"--gpus.*expected strings"):
        CohortOptions(gpus=[0, 1])
    with pytest.raises(InputError, match=r"--lesion-ring-mm.*\(0, inf\) mm, found 0"):
        GroupOptions(lesion_ring_mm=0)
    assert CohortOptions().local and not CohortOptions(workers=2).local
    assert not CohortOptions(scheduler="tcp://x:8786").local


def test_run_participants_takes_the_object_or_its_keywords(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01", "02"))
    by_kw = run_participants(
        root, tmp_path / "a", pipelines=FAKE, participant_label=["02"], prefetch=0
    )
    opts = CohortOptions(participant_label="02", prefetch=0)
    by_obj = run_participants(root, tmp_path / "b", pipelines=FAKE, options=opts)
    assert [r.job_id for r in by_kw.results] == [r.job_id for r in by_obj.results] == ["sub-02_dsc"]
    run_a = json.loads((tmp_path / "a" / "logs" / "config.json").read_text())["run"]
    run_b = json.loads((tmp_path / "b" / "logs" / "config.json").read_text())["run"]
    # every field of the object is recorded; only the scratch folder differs between runs
    assert set(CohortOptions.option_specs()) <= set(run_a)
    assert run_a["participant_label"] == ["02"] and run_a["prefetch"] == 0
    assert run_a["batch_voxels"] == 0  # resolved: NumPy, no batching
    assert {k: v for k, v in run_a.items() if k != "work_dir"} == {
        k: v for k, v in run_b.items() if k != "work_dir"
    }
    # a keyword given with the object overrides its field
    again = run_participants(root, tmp_path / "c", pipelines=FAKE, options=opts, prefetch=2)
    assert json.loads((tmp_path / "c" / "logs" / "config.json").read_text())["run"][
        "prefetch"
    ] == 2 and [r.job_id for r in again.results] == ["sub-02_dsc"]
    with pytest.raises(TypeError, match="unexpected keyword argument.*worker"):
        run_participants(root, tmp_path / "d", pipelines=FAKE, worker=2)
    with pytest.raises(InputError, match="--workers"):
        run_participants(root, tmp_path / "e", pipelines=FAKE, workers=0)
    assert not (tmp_path / "e").exists()  # refused before any output


def test_open_job_undoes_what_it_made(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01",))
    (job,) = find_jobs(root)
    out = tmp_path / "out"
    settings = JobSettings(out, {}, "no_such_module:run", work_dir=tmp_path / "w")
    staged = stage_inputs(job, tmp_path / "w")
    res = open_job(job, settings, staged)
    assert isinstance(res, JobResult) and res.status == "failed"
    assert "cannot be imported" in res.error
    assert not staged.folder.exists()  # the prefetched inputs are removed
    assert "FAILED" in (out / "logs" / "sub-01_dsc.log").read_text()
    ok = open_job(job, JobSettings(out, {}, fake_pipeline, work_dir=tmp_path / "w"))
    assert isinstance(ok, OpenJob)  # open: its scratch folders live until close()
    assert ok.tmp_out.is_dir() and ok.staged.folder.is_dir()
    ok.close()
    assert not ok.tmp_out.exists() and not ok.staged.folder.exists()


def _group_cli(monkeypatch, tmp_path, args, config_text=None):
    import gpuperf.cohort
    from gpuperf.cli.cohort import run_command

    seen = {}

    def fake_group_table(out_dir, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(
            table=Path(out_dir) / "t.tsv",
            stats_table=None,
            correlations_table=None,
            lesions_table=None,
            report=None,
            exit_code=0,
        )

    monkeypatch.setattr(gpuperf.cohort, "group_table", fake_group_table)
    app = typer.Typer()
    app.command("run")(run_command)
    app.command("other")(lambda: None)
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    argv = ["run", str(bids), str(tmp_path / "out"), "group", *args]
    if config_text is not None:
        cfg = tmp_path / "cohort.toml"
        cfg.write_text(config_text, encoding="utf-8")
        argv += ["--config", str(cfg)]
    return CliRunner().invoke(app, argv), seen


def test_group_flags_override_the_config_table(monkeypatch, tmp_path):
    config = '[group]\nreference_region = "NAWM"\nmask_descs = ["lesion", "NAWM"]\n'
    res, seen = _group_cli(
        monkeypatch,
        tmp_path,
        ["--mask-desc", "GM,WM", "--participant-label", "01", "--lesion-ring-mm", "2"],
        config,
    )
    assert res.exit_code == 0, res.output
    opts = seen["options"]
    assert isinstance(opts, GroupOptions)
    assert opts.mask_descs == ("GM", "WM")  # the flag wins
    assert opts.reference_region == "NAWM"  # from the configuration
    assert opts.lesion_ring_mm == 2.0 and opts.maps is None
    assert seen["participant_label"] == ("01",)


def test_group_config_keys_are_checked(monkeypatch, tmp_path):
    res, _ = _group_cli(monkeypatch, tmp_path, ["-q"], "[group]\nmask_desc = ['lesion']\n")
    assert res.exit_code == 2
    assert "group.mask_desc" in res.output and "mask_descs" in res.output
    assert "cohort.toml" in res.output and "Traceback" not in res.output
    res, _ = _group_cli(monkeypatch, tmp_path, ["--lesion-ring-mm", "-1"])
    assert res.exit_code == 2 and "--lesion-ring-mm" in res.output


def test_participant_flags_reach_run_participants_as_one_object(monkeypatch, tmp_path):
    import gpuperf.cohort
    from gpuperf.cli import app

    seen = {}

    def fake_run(bids_dir, out_dir, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(exit_code=0, failed=[], results=[])

    monkeypatch.setattr(gpuperf.cohort, "run_participants", fake_run)
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    argv = ["run", str(bids), str(tmp_path / "o"), "participant"]
    res = CliRunner().invoke(
        app, [*argv, "--gpus", "0,1", "--workers", "2", "--device", "cpu", "--no-report"]
    )
    assert res.exit_code == 0, res.output
    assert seen["options"] == CohortOptions(gpus=("0", "1"), workers=2, device="cpu", report=False)
    res = CliRunner().invoke(app, [*argv, "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output and "Traceback" not in res.output


@dataclass(frozen=True)
class A(Options):
    alpha: int = option(1, "Alpha", flag="--alpha")


@dataclass(frozen=True)
class B(Options):
    beta: str | None = option(None, "Beta", flag="--beta")
    names: tuple[str, ...] | None = option(None, "Names", flag="--name")


def test_options_command_stacks_two_options_objects():
    got = {}

    @options_command(B, name="b")
    @options_command(A)
    def cmd(x: int = typer.Option(0, "--x"), *, options: A, b: B) -> None:
        got.update(x=x, options=options, b=b)

    app = typer.Typer()
    app.command("cmd")(cmd)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(
        app, ["cmd", "--x", "3", "--alpha", "5", "--name", "p,q", "--name", "r"]
    )
    assert res.exit_code == 0, res.output
    assert got == {"x": 3, "options": A(alpha=5), "b": B(names=("p", "q", "r"))}
    help_text = CliRunner().invoke(app, ["cmd", "--help"]).output
    for flag in ("--x", "--alpha", "--beta", "--name"):
        assert flag in help_text
    assert "--options" not in help_text and "--b " not in help_text
