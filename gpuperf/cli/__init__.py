"""The ``gpuperf`` command line (Typer). Every command is a thin shell over a library function."""

from __future__ import annotations

import importlib

import typer

from gpuperf._version import __version__
from gpuperf.cli import main as _main

app = typer.Typer(
    name="gpuperf",
    help="GPU-accelerated voxelwise fitting for perfusion MRI (DSC and ASL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
simulate_app = typer.Typer(
    help="Write digital phantoms with known truth maps.", no_args_is_help=True
)
app.add_typer(simulate_app, name="simulate")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpuperf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """GPU-accelerated voxelwise fitting for perfusion MRI (DSC and ASL)."""


app.command("info")(_main.info_command)
app.command("demo")(_main.demo_command)

try:  # the method commands are registered when their modules are present
    from gpuperf.cli import dsc as _dsc

    app.command("dsc")(_dsc.dsc_command)
    simulate_app.command("dsc")(_dsc.simulate_dsc_command)
except ImportError:  # pragma: no cover - only during development
    pass
try:
    from gpuperf.cli import asl as _asl

    app.command("asl")(_asl.asl_command)
    simulate_app.command("asl")(_asl.simulate_asl_command)
except ImportError:  # pragma: no cover
    pass

simulate_app.command("study")(importlib.import_module("gpuperf.cli.cohort").simulate_study_command)
for _module, _name, _attr in (
    ("gpuperf.cli.cohort", "run", "run_command"),
    ("gpuperf.cli.report", "report", "report_command"),
    ("gpuperf.cli.bench", "bench", "bench_command"),
):
    try:
        import importlib

        app.command(_name)(getattr(importlib.import_module(_module), _attr))
    except ImportError:  # pragma: no cover
        pass


def main() -> None:
    """Console-script entry point."""
    app()
