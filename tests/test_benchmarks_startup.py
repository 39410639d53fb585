"""Start-up: what ``gpuperf --help`` and the commands import before any work starts.

The import chain of the command line must stay light (the time is measured in ``bench/``,
never asserted here): heavy libraries are imported where they are used.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "dask", "cupy", "scipy")


def _loaded(code: str) -> dict[str, bool]:
    """Which of HEAVY (and a few gpuperf modules) a fresh interpreter has after ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        "names = "
        + repr(
            HEAVY
            + (
                "nibabel",
                "gpuperf.report",
                "gpuperf.asl.pipeline",
                "gpuperf.dsc.pipeline",
                "gpuperf.asl.bids",
                "rich.markdown",
                "numpy",
                "gpuperf.cli.dsc",
                "gpuperf.cli.asl",
            )
        )
        + "\nprint(json.dumps({n: n in sys.modules for n in names}))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cli_import_loads_no_heavy_library():
    loaded = _loaded("import gpuperf.cli")
    assert not any(loaded[n] for n in HEAVY), loaded
    # the pipelines, the report and the ASL reader load when a command runs, not for --help
    for name in ("gpuperf.report", "gpuperf.asl.pipeline", "gpuperf.dsc.pipeline", "nibabel"):
        assert not loaded[name], name


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], []])
def test_help_renders_without_rich_markdown_or_numpy(argv):
    """``gpuperf --help`` lists ``dsc`` and ``asl`` without loading them (their options need
    NumPy and the method registries: gpuperf.cli._lazy)."""
    code = (
        f"import sys\nfrom gpuperf.cli import app\nsys.argv = ['gpuperf', *{argv!r}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
    )
    loaded = _loaded(code)
    assert not loaded["rich.markdown"] and not any(loaded[n] for n in HEAVY), loaded
    assert not loaded["numpy"], loaded
    assert not loaded["gpuperf.cli.dsc"] and not loaded["gpuperf.cli.asl"], loaded


def test_lazy_commands_match_their_functions():
    """The help a lazy group shows for a command before loading it is the command's own, and
    the loaded command is the function of its table entry."""
    import importlib

    import typer

    from gpuperf.cli import _Root, _Simulate, app

    root = typer.main.get_command(app)
    ctx = root.context_class(root)
    for group, table in ((root, _Root.lazy), (root.get_command(ctx, "simulate"), _Simulate.lazy)):
        for name, entry in table.items():
            cmd = group.get_command(ctx, name)
            assert cmd is not None and cmd.name == name
            fn = getattr(importlib.import_module(entry.module), entry.function)
            assert fn.__doc__.split("\n\n")[0].split() == entry.short_help.split(), name
            assert cmd.get_short_help_str(200) == entry.short_help, name


def test_command_help_is_that_of_the_eager_registration():
    """``gpuperf asl --help`` built lazily is the help of the command registered directly."""
    import typer
    from typer.testing import CliRunner

    from gpuperf.cli import app
    from gpuperf.cli.asl import asl_command

    runner = CliRunner()
    lazy_help = runner.invoke(app, ["asl", "--help"], prog_name="gpuperf").output
    eager = typer.Typer(rich_markup_mode=None, add_completion=False)
    eager.callback()(lambda: None)
    eager.command("asl")(asl_command)
    eager_help = runner.invoke(eager, ["asl", "--help"], prog_name="gpuperf").output
    assert "--t1-tissue" in lazy_help
    assert lazy_help == eager_help


@pytest.mark.parametrize("package", ["gpuperf.asl", "gpuperf.dsc"])
def test_package_names_resolve_lazily(package):
    """``import gpuperf.asl.options`` does not load the reader or the pipeline, and every name
    of the package's ``__all__`` still resolves (and is the object of its defining module)."""
    loaded = _loaded(f"import {package}.options")
    assert not loaded[f"{package}.pipeline"]
    code = (
        f"import importlib, {package} as p\n"
        "for n in p.__all__:\n"
        "    obj = getattr(p, n)\n"
        "    assert obj is getattr(importlib.import_module(p._LAZY[n]), n), n\n"
        "assert set(p.__all__) <= set(dir(p))\n"
        "try:\n    p.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise AssertionError('unknown names must raise AttributeError')\n"
    )
    _loaded(code)


def test_options_and_their_choices_load_without_numpy():
    """The options objects, their registry-derived choices and their validation import no
    NumPy (the registries import an entry on first lookup): a command checks its flags and
    starts reading its input before the heavy imports. A method lookup then does import."""
    loaded = _loaded(
        "from gpuperf.dsc.options import DSCOptions\n"
        "from gpuperf.asl.options import ASLOptions\n"
        "from gpuperf.options import specs\n"
        "assert 'parametric' in specs(DSCOptions)['method'].allowed()\n"
        "DSCOptions(method='csvd', leakage='bidirectional', te_s=0.03, tr_s=1.5)\n"
        "ASLOptions(model='gkm', m0_ref_tissue='csf')\n"
        "import gpuperf.io.readahead\n"
    )
    assert not loaded["numpy"] and not loaded["nibabel"], loaded
    loaded = _loaded(
        "from gpuperf.dsc.options import DSCOptions\n"
        "DSCOptions(method='ssvd', discretisation='trapezoid')\n"
    )
    assert loaded["numpy"], "a non-default discretisation is checked against the method"


@pytest.mark.parametrize(("command", "role"), [("dsc", "DSC series"), ("asl", "ASL series")])
def test_missing_input_is_reported_before_numpy_loads(tmp_path, command, role):
    """``gpuperf dsc|asl MISSING --out O`` parses and checks every option, then checks its
    input (one line, exit 2) before NumPy, nibabel, Rich or the pipeline are imported: the
    work (reading the series ahead) starts there."""
    missing = tmp_path / "missing.nii.gz"
    code = (
        "import sys\nfrom gpuperf.cli import app\n"
        f"sys.argv = ['gpuperf', {command!r}, {str(missing)!r}, '--out', {str(tmp_path)!r}]\n"
        "try:\n    app()\nexcept SystemExit as exc:\n"
        "    print('exit', exc.code, file=sys.stderr)\n"
    )
    probe = code + (
        "import json\nprint(json.dumps({n: n in sys.modules for n in "
        "('numpy', 'nibabel', 'rich', 'gpuperf.asl.pipeline', 'gpuperf.dsc.pipeline')}))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{role} file does not exist" in r.stderr and "exit 2" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 2, r.stderr  # the error line and the probe's exit line
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert not any(loaded.values()), loaded
