"""The run-level options (:class:`gpuperf.io.settings.RunSettings`), declared once: the flags of
``gpuperf dsc``/``asl``, the keyword arguments of ``run_dsc``/``run_asl`` and the demos derive
from that declaration (issue #14, item 2)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gpuperf.cli._common import RUN_FLAGS, Device, run_settings_command
from gpuperf.cli._options import options_command
from gpuperf.errors import InputError
from gpuperf.io.settings import DEVICES, RunSettings
from gpuperf.io.stages import REPORT_OUTPUTS, run_and_publish
from gpuperf.options import Options, option, specs

runner = CliRunner()


def _help(command: str) -> str:
    from gpuperf.cli import app

    out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).output
    return re.sub(r"\s+", " ", out)


def test_devices_are_the_backends():
    from gpuperf.backend import DEVICES as BACKEND_DEVICES

    assert DEVICES == tuple(BACKEND_DEVICES)
    assert [d.value for d in Device] == list(DEVICES)


def test_settings_validate_naming_the_flag():
    with pytest.raises(InputError, match="--device"):
        RunSettings(out_dir="o", device="tpu")
    with pytest.raises(InputError, match="--overwrite"):
        RunSettings(out_dir="o", overwrite="yes")
    with pytest.raises(InputError, match="--memory-budget-mb"):
        RunSettings(out_dir="o", memory_budget_mb=float("nan"))
    with pytest.raises(InputError, match="--out.*output folder"):
        RunSettings(device="cpu")


@pytest.mark.parametrize(
    "pipeline", ["gpuperf.dsc.pipeline:run_dsc", "gpuperf.asl.pipeline:run_asl"]
)
def test_pipeline_arguments_are_keywords_of_the_pipelines(pipeline):
    import importlib

    module, name = pipeline.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    settings = RunSettings(out_dir="o", mask_path="m.nii", prefix="p", memory_budget_mb=1.5)
    args = settings.pipeline_arguments()
    assert set(args) <= set(params), set(args) - set(params)
    assert args == {
        "out_dir": "o",
        "mask_path": "m.nii",
        "prefix": "p",
        "device": "auto",
        "overwrite": False,
        "memory_budget": int(1.5 * 2**20),
    }
    assert RunSettings(out_dir="o").pipeline_arguments()["memory_budget"] is None


def test_asl_inputs_are_keywords_of_run_asl():
    from gpuperf.asl.pipeline import run_asl
    from gpuperf.cli.asl import ASLInputs

    params = inspect.signature(run_asl).parameters
    assert set(specs(ASLInputs)) <= set(params)
    assert not set(specs(ASLInputs)) & set(specs(RunSettings))


@pytest.mark.parametrize("command", ["dsc", "asl"])
def test_commands_show_every_run_flag_once(command):
    text = _help(command)
    for name, spec in specs(RunSettings).items():
        assert text.count(f"{spec.flag} ") == 1, spec.flag
        if name != "mask_path":
            assert spec.help in text, spec.help
    assert "-q, --quiet" in text and "--report / --no-report" in text
    assert "--no-quiet" not in text and "--no-overwrite" not in text
    assert "--out <path> Output folder. [required]" in text
    mask = "from M0" if command == "asl" else "automatic"
    assert f"--mask <path> Brain mask (default: {mask})." in text


def _recording_run(calls: list):
    def run(*args, **kwargs):
        calls.append((args, kwargs))
        return "result"

    return run


@pytest.mark.parametrize("report", [True, False])
def test_run_and_publish_hands_the_settings_to_the_pipeline(report):
    calls: list = []
    published: list = []
    settings = RunSettings(out_dir="o", device="cpu", overwrite=True, report=report)
    result = run_and_publish(
        _recording_run(calls), settings, "series.nii", publish=published.append, kh=0.7
    )
    assert result == "result"
    ((args, kwargs),) = calls
    assert args == ("series.nii",)
    assert kwargs == {
        **settings.pipeline_arguments(),
        "reporter": None,
        "extra_outputs": REPORT_OUTPUTS if report else (),
        "kh": 0.7,
    }
    assert published == (["result"] if report else [])


@dataclass(frozen=True)
class Toy(Options):
    gain: float = option(1.0, "Gain", flag="--gain")


_seen: list = []


@options_command(Toy)
@run_settings_command(exclude=("report",))
def _toy_command(src: Path = typer.Argument(...), *, run: RunSettings, options: Toy) -> None:
    _seen.append((src, run, options))


def test_cli_builds_the_settings_from_the_flags(tmp_path):
    """The flags reach the command as one RunSettings; --out is required."""
    app = typer.Typer(add_completion=False)
    app.command()(_toy_command)
    _seen.clear()
    argv = ["in.nii", "--out", str(tmp_path), "-q", "--overwrite", "--device", "cpu"]
    r = runner.invoke(app, [*argv, "--memory-budget-mb", "2", "--gain", "3"])
    assert r.exit_code == 0, r.output
    ((src, run, options),) = _seen
    assert src == Path("in.nii") and options == Toy(gain=3.0)
    assert run == RunSettings(
        out_dir=tmp_path, device="cpu", quiet=True, overwrite=True, memory_budget_mb=2.0
    )
    r = runner.invoke(app, ["in.nii"])
    assert r.exit_code == 2 and "--out" in r.output
    r = runner.invoke(app, ["in.nii", "--out", "o", "--no-report"])
    assert r.exit_code == 2  # excluded: not a flag of this command
    assert set(RUN_FLAGS) <= set(specs(RunSettings))


def test_settings_module_imports_no_numpy():
    """The command line builds its flags from RunSettings: gpuperf.io.settings stays light."""
    code = "import sys, gpuperf.io.settings; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
