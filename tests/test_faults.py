"""Fault injection (issue #15): kills at several points of a run, read-only and full output
locations, folders in the way, hostile prefixes, and the realistic mistakes that must give one
line and exit 2 or a warning -- never a traceback, a partial set or a mix of two runs.

Kills run the real CLI in a subprocess; ``GPUPERF_TEST_FAULT=<point>:<signal>`` makes it signal
itself at a known point of the commit (:func:`gpuperf.io.outputs._fault`), so no case races the
run's end. Everything else runs in-process through Typer's runner on an 8x8x2 phantom.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuperf.cli import app
from gpuperf.io import outputs
from gpuperf.io.qc import load_extra
from gpuperf.status import Status

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and permissions")

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(r, *needles: str) -> str:
    """Assert exit 2 with one error line (no traceback) containing ``needles``."""
    err = r.stderr
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    r = _cli(
        "simulate", "dsc", root / "ph", "--nx", "8", "--ny", "8", "--nz", "2", "--frames", "30",
        "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    clean = root / "clean"
    r = _cli("dsc", root / "ph" / "phantom_dsc.nii.gz", "--out", clean, "-q")
    assert r.exit_code == 0, r.output
    return {
        "root": root,
        "series": root / "ph" / "phantom_dsc.nii.gz",
        "sidecar": root / "ph" / "phantom_dsc.json",
        "names": sorted(p.name for p in clean.iterdir()),
    }


def _copy_series(phantom, folder: Path, name: str = "s") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(phantom["series"], folder / f"{name}.nii.gz")
    shutil.copy(phantom["sidecar"], folder / f"{name}.json")
    return folder / f"{name}.nii.gz"


def _assert_whole(out: Path) -> None:
    """Every file under a final name is complete; no hidden leftovers of gpuperf."""
    for p in out.iterdir():
        if p.name.startswith("."):
            continue
        if p.name.endswith(".nii.gz"):
            nib.load(p).get_fdata()
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npz":
            np.load(p).files  # noqa: B018 (reads the archive's directory)


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".gpuperf"))


# -- kills -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault,code",
    [("staged:KILL", -9), ("commit-5:KILL", -9), ("commit-5:INT", 130), ("report:INT", 130)],
)
def test_interrupted_run_is_whole_and_rerun_completes_the_set(phantom, tmp_path, fault, code):
    out = tmp_path / "out"
    env = {**os.environ, "GPUPERF_TEST_FAULT": fault}
    cmd = [sys.executable, "-m", "gpuperf", "dsc", str(phantom["series"]), "--out", str(out), "-q"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    final = [p for p in out.iterdir() if not p.name.startswith(".")]
    _assert_whole(out)
    expected_present = {"staged": 0, "commit-5": 5, "report": len(phantom["names"]) - 1}
    assert len(final) == expected_present[fault.split(":")[0]]
    assert _hidden(out)  # the journal (and, after SIGKILL, the staged folder) stay
    if code == 130:  # the message says what is really on disk
        total = len(phantom["names"])
        assert f"{len(final)} of {total} outputs of phantom_dsc are in" in r.stderr, r.stderr
        assert "re-run the same command" in r.stderr
    # the same command, without --overwrite, completes the set and cleans up
    r2 = _cli("dsc", phantom["series"], "--out", out, "-q")
    assert r2.exit_code == 0, r2.output
    assert sorted(p.name for p in out.iterdir()) == phantom["names"]
    _assert_whole(out)
    # complete now: a third run is refused as before
    _one_line_error(_cli("dsc", phantom["series"], "--out", out, "-q"), "output exists")


def test_interrupted_set_of_another_command_is_not_taken_over(phantom, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPUPERF_TEST_FAULT": "commit-3:KILL"}
    cmd = [sys.executable, "-m", "gpuperf", "dsc", str(phantom["series"]), "--out", str(out), "-q"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == -9
    r = _cli("dsc", phantom["series"], "--out", out, "--kh", "0.7", "-q")
    _one_line_error(r, "interrupted run with other inputs or parameters", "--overwrite")
    # --overwrite replaces the whole set: nothing of the killed run survives
    r = _cli("dsc", phantom["series"], "--out", out, "--kh", "0.7", "--overwrite", "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == phantom["names"]
    kh = {json.loads(p.read_text()).get("Parameters", {}).get("kH") for p in out.glob("*_cbf.json")}
    assert kh == {0.7}


def test_a_live_run_on_the_same_prefix_is_refused(phantom, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    journal = outputs.journal_path(out.resolve(), "phantom_dsc")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(journal)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = _cli("dsc", phantom["series"], "--out", out, "-q")
        _one_line_error(r, "another gpuperf run")
        assert [p.name for p in out.iterdir()] == [journal.name]
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"Prefix": "phantom_dsc", "Owner": {"Pid": os.getpid()}}).encode())
print("locked", flush=True)
time.sleep(60)
"""
assert fcntl  # the lock is POSIX flock


def test_stale_temp_files_of_dead_processes_are_removed(phantom, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale_dir = out / f"{outputs.TMP_PREFIX}abc"
    stale_dir.mkdir()
    (stale_dir / outputs.OWNER_FILE).write_text(
        json.dumps({**outputs.owner_record(), "Pid": int(dead)})
    )
    (out / f"{outputs.TMP_PREFIX}{outputs.PID_TAG}{dead}-x").write_text("partial")
    mine = out / f"{outputs.TMP_PREFIX}{outputs.PID_TAG}{os.getpid()}-y"  # a live owner: left alone
    mine.write_text("in use")
    r = _cli("dsc", phantom["series"], "--out", out, "-q", "--no-report")
    assert r.exit_code == 0, r.output
    assert _hidden(out) == [mine.name]


# -- output locations --------------------------------------------------------------------------
def test_folder_in_the_way_stops_before_any_rename(phantom, tmp_path):
    out = tmp_path / "out"
    (out / "phantom_dsc_mtt.nii.gz").mkdir(parents=True)
    _one_line_error(_cli("dsc", phantom["series"], "--out", out, "-q"), "a folder is in the way")
    assert [p.name for p in out.iterdir()] == ["phantom_dsc_mtt.nii.gz"]


@pytest.mark.parametrize("prefix", ["../escaped", "sub/x", "a" * 250, "..", ".hidden"])
def test_hostile_prefixes_are_refused_before_the_fit(phantom, tmp_path, prefix):
    out = tmp_path / "out"
    r = _cli("dsc", phantom["series"], "--out", out, "--prefix", prefix, "-q")
    _one_line_error(r, "--prefix")
    assert not any(tmp_path.rglob("*.nii.gz"))


def test_out_equal_to_the_input_or_a_file(phantom, tmp_path):
    series = _copy_series(phantom, tmp_path / "in")
    _one_line_error(_cli("dsc", series, "--out", series, "-q"), "--out", "input")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(_cli("dsc", series, "--out", afile, "-q"), "--out", "not a folder")
    _one_line_error(
        _cli("run", tmp_path / "in", afile, "participant", "-q"), "OUT_DIR", "not a folder"
    )


def _read_only_folder(path: Path):
    """A folder nobody may write into: a mode for users, a read-only tmpfs for root."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        return lambda: path.chmod(0o700)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip("root without mount: no way to make a read-only folder")
    return lambda: subprocess.run(["umount", str(path)], check=True)


def test_read_only_output_location(phantom, tmp_path):
    ro = tmp_path / "ro"
    undo = _read_only_folder(ro)
    try:
        r = _cli("dsc", phantom["series"], "--out", ro / "sub", "-q")
        _one_line_error(r, "--out")
        r = _cli("dsc", phantom["series"], "--out", ro, "-q")
        _one_line_error(r, "--out", "cannot write here")
        assert list(ro.iterdir()) == []
    finally:
        undo()


def test_full_disk_is_one_line_and_leaves_nothing(phantom, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = Path.write_bytes

    def full(self, data):
        if outputs.TMP_PREFIX in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    r = _cli("dsc", phantom["series"], "--out", out, "-q")
    _one_line_error(r, str(out), "the disk is full")
    assert list(out.iterdir()) == []


def test_os_errors_and_brackets_print_one_plain_line(capsys):
    import typer

    from gpuperf.cli._common import handle_errors

    @handle_errors
    def boom():
        raise PermissionError(errno.EACCES, "Permission denied", "/data/scan[run1]/x.nii")

    with pytest.raises(typer.Exit) as exc:
        boom()
    assert exc.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: /data/scan[run1]/x.nii: Permission denied"

    @handle_errors
    def gpu():
        from gpuperf.errors import GPUUnavailableError

        raise GPUUnavailableError("no GPU: install gpuperf[cuda12] or [cuda13]\nsecond line")

    with pytest.raises(typer.Exit):
        gpu()
    err = capsys.readouterr().err
    assert err.strip() == "error: no GPU: install gpuperf[cuda12] or [cuda13] second line"


# -- realistic mistakes ------------------------------------------------------------------------
def _edit_sidecar(series: Path, **fields) -> None:
    sc = series.with_name(series.name.replace(".nii.gz", ".json"))
    meta = json.loads(sc.read_text())
    meta.update(fields)
    sc.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--threshold", "2"], ["--threshold"]),
        (["--mu", "-1"], ["--mu"]),
        (["--oi-limit", "-1"], ["--oi-limit"]),
        (["--te", "-0.03"], ["--te"]),
        (["--osvd-thresholds", "0.1:0.3:0"], ["--osvd-thresholds"]),
        (["--osvd-thresholds", "0.1:inf:0.1"], ["--osvd-thresholds"]),
    ],
)
def test_bad_flags_name_the_flag(phantom, tmp_path, args, needles):
    r = _cli("dsc", phantom["series"], "--out", tmp_path / "o", *args, "-q")
    line = _one_line_error(r, *needles)
    assert ".json" not in line  # a flag's value is not blamed on the sidecar
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("value", [True, "0.03"])
def test_echo_time_must_be_a_number(phantom, tmp_path, value):
    series = _copy_series(phantom, tmp_path / "in")
    _edit_sidecar(series, EchoTime=value)
    _one_line_error(_cli("dsc", series, "--out", tmp_path / "o", "-q"), "s.json", "EchoTime")


def test_complex_series_is_refused_naming_the_file(phantom, tmp_path):
    img = nib.load(phantom["series"])
    data = img.get_fdata().astype(np.complex64) * (1 + 0.5j)
    series = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), series)
    shutil.copy(phantom["sidecar"], tmp_path / "c.json")
    _one_line_error(_cli("dsc", series, "--out", tmp_path / "o", "-q"), str(series), "complex")


def _series_with(phantom, tmp_path, fn) -> Path:
    img = nib.load(phantom["series"])
    data = fn(img.get_fdata().astype(np.float32))
    series = tmp_path / "in" / "s.nii.gz"
    series.parent.mkdir()
    nib.save(nib.Nifti1Image(data, img.affine), series)
    shutil.copy(phantom["sidecar"], tmp_path / "in" / "s.json")
    return series


def test_no_bolus_is_an_error(phantom, tmp_path):
    rng = np.random.default_rng(1)

    def flat(d):
        return d[..., :3].mean(-1, keepdims=True) * (1 + 0.01 * rng.standard_normal(d.shape))

    series = _series_with(phantom, tmp_path, flat)
    _one_line_error(_cli("dsc", series, "--out", tmp_path / "o", "-q"), "s.nii.gz", "no contrast")


def test_no_bolus_in_the_brain_is_a_warning_in_log_and_report(phantom, tmp_path):
    artery = nib.load(phantom["root"] / "ph" / "phantom_arterymask.nii.gz").get_fdata() > 0
    rng = np.random.default_rng(2)

    def brain_flat(d):
        flat = d[..., :3].mean(-1, keepdims=True) * (1 + 0.01 * rng.standard_normal(d.shape))
        flat[artery] = d[artery]
        return flat

    series = _series_with(phantom, tmp_path, brain_flat)
    out = tmp_path / "o"
    r = _cli("dsc", series, "--out", out)
    assert r.exit_code == 0, r.output
    assert "no bolus in the brain" in " ".join(r.stderr.split())
    assert any("no bolus" in w for w in load_extra(out / "s_qc.npz")["warnings"])
    assert "no bolus in the brain" in (out / "s_report.html").read_text()


def test_status_flags_voxels_dropped_for_bad_signal(phantom, tmp_path):
    def spoil(d):
        d[0, 0, 0, 3] = np.nan
        d[1, 0, 0, 4] = np.inf
        d[2, 0, 0, :] = -5.0
        return d

    series = _series_with(phantom, tmp_path, spoil)
    r = _cli("dsc", series, "--out", tmp_path / "o", "-q", "--no-report")
    assert r.exit_code == 0, r.output
    assert "RuntimeWarning" not in r.stderr and "Traceback" not in r.stderr
    status = nib.load(tmp_path / "o" / "s_status.nii.gz").get_fdata().astype(int)
    assert status[0, 0, 0] == Status.NONFINITE_INPUT
    assert status[1, 0, 0] == Status.NONFINITE_INPUT
    assert status[2, 0, 0] == Status.NONPOSITIVE_INPUT


# -- ASL ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asl(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("asl")
    for kind in ("single", "pasl"):
        r = _cli("simulate", "asl", root / kind, "--kind", kind, "-q")
        assert r.exit_code == 0, r.output
    return {k: root / k / "sub-phantom_asl.nii.gz" for k in ("single", "pasl")}


def _asl_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src.parent, dst)
    return dst / src.name


def test_asl_swapped_label_control_warns(asl, tmp_path):
    series = _asl_copy(asl["single"], tmp_path / "a")
    ctx = series.with_name("sub-phantom_aslcontext.tsv")
    swap = {"control": "label", "label": "control"}
    ctx.write_text("\n".join(swap.get(x, x) for x in ctx.read_text().split("\n")))
    out = tmp_path / "o"
    r = _cli("asl", series, "--out", out)
    assert r.exit_code == 0, r.output
    assert "control and label look swapped" in " ".join(r.stderr.split())
    assert "look swapped" in (out / "sub-phantom_report.html").read_text()


@pytest.mark.parametrize("fill,needle", [(np.nan, "NaN"), (0.0, "zero")])
def test_asl_empty_series_is_an_error(asl, tmp_path, fill, needle):
    series = _asl_copy(asl["single"], tmp_path / "a")
    img = nib.load(series)
    nib.save(nib.Nifti1Image(np.full(img.shape, fill, np.float32), img.affine), series)
    _one_line_error(_cli("asl", series, "--out", tmp_path / "o", "-q"), str(series), needle)


@pytest.mark.parametrize("order", ["C", "F"])
def test_asl_signal_check_scans_every_block(monkeypatch, order):
    """The all-NaN / all-zero check stops at the first block with a finite non-zero value but
    still finds one in the last block, and tells NaN from zero."""
    from gpuperf.asl import plausibility
    from gpuperf.errors import InputError

    monkeypatch.setattr(plausibility, "SIGNAL_CHECK_BLOCK", 7)
    data = np.zeros((4, 5, 3, 2), np.float32, order=order)
    data.reshape(-1, order="A")[-1] = 2.0  # the last value in memory order
    plausibility.check_asl_signal(data, "x.nii.gz")
    data[...] = np.nan
    data.reshape(-1, order="A")[-1] = 0.0
    with pytest.raises(InputError, match="zero"):
        plausibility.check_asl_signal(data, "x.nii.gz")
    data[...] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        plausibility.check_asl_signal(data, "x.nii.gz")


def test_pasl_ti1_beyond_every_ti_names_the_field(asl, tmp_path):
    series = _asl_copy(asl["pasl"], tmp_path / "a")
    _edit_sidecar(series, BolusCutOffDelayTime=3.5)
    r = _cli("asl", series, "--out", tmp_path / "o", "-q")
    _one_line_error(r, "sub-phantom_asl.json", "BolusCutOffDelayTime")


def test_asl_alpha_out_of_range(asl, tmp_path):
    _one_line_error(_cli("asl", asl["single"], "--out", tmp_path / "o", "--alpha", "2"), "--alpha")


# -- cohort ------------------------------------------------------------------------------------
def test_cohort_config_values_are_checked_before_any_subject(tmp_path):
    from test_cohort_support import make_bids

    root = make_bids(tmp_path / "bids", subjects=("01",))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dsc]\nmethod = "nonsense"\n')
    r = _cli("run", root, tmp_path / "out", "participant", "--config", cfg, "-q")
    _one_line_error(r, "c.toml", "dsc.method", "nonsense")
    assert not (tmp_path / "out" / "sub-01").exists()


def test_inherited_field_is_blamed_on_the_file_that_holds_it(tmp_path):
    from test_cohort_support import make_bids

    from gpuperf.cohort import run_participants

    root = make_bids(tmp_path / "bids", subjects=("01",))
    (root / "dsc.json").write_text(json.dumps({"EchoTime": True, "RepetitionTime": 1.5}))
    run = run_participants(root, tmp_path / "out")
    (res,) = run.results
    assert res.status == "failed"
    assert res.error.startswith(f"{root / 'dsc.json'}: EchoTime"), res.error


def test_interrupt_drops_staged_folders_of_uncommitted_writers(tmp_path):
    """Ctrl-C during a fit: the staged folder (e.g. early QC warnings) goes; nothing else."""
    w = outputs.OutputWriter(tmp_path, "x")
    w.add_json("a", {"k": 1})
    done = outputs.OutputWriter(tmp_path, "y")
    done.add_json("b", {"k": 2})
    done.commit()
    assert len(_hidden(tmp_path)) == 1
    outputs.abort_staged()
    assert _hidden(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y_b.json"]
