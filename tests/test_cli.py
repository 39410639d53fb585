"""The command line: version, info, and errors as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from gpuperf import __version__
from gpuperf.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_info_reports_backends():
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0, r.output
    assert "backend numpy" in r.output and "backend cupy" in r.output
    from gpuperf.backend import gpu_status

    usable, detail = gpu_status()
    if not usable and "gpuperf[cuda12]" in detail:  # the reason is printed as written
        assert "gpuperf[cuda12]" in r.output.replace("\n", " ")


def test_gpu_without_gpu_is_exit_2_not_fallback(tmp_path):
    env = {"GPUPERF_DISABLE_GPU": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuperf",
            "demo",
            "--out",
            str(tmp_path / "d"),
            "--device",
            "gpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no GPU is usable" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").rglob("*.nii.gz"))


def test_unknown_command_fails():
    r = runner.invoke(app, ["no-such-command"])
    assert r.exit_code != 0
