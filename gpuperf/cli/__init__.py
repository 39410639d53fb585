"""The ``gpuperf`` command line (Typer). Every command is a thin shell over a library function."""

from __future__ import annotations

import typer

from gpuperf._version import __version__

# No ImportError guards: a broken command module must fail loudly, not vanish from --help.
from gpuperf.cli import bench as _bench
from gpuperf.cli import cohort as _cohort
from gpuperf.cli import main as _main
from gpuperf.cli import report as _report
from gpuperf.cli._lazy import LazyCommand, LazyGroup


class _Root(LazyGroup):
    """``gpuperf``: ``dsc`` and ``asl`` load with their options (NumPy, the registries) only
    when they run or show their help (:mod:`gpuperf.cli._lazy`)."""

    lazy = {
        "dsc": LazyCommand(
            "gpuperf.cli.dsc",
            "dsc_command",
            "CBF, CBV, MTT, Tmax and TTP maps from a DSC-MRI series.",
        ),
        "asl": LazyCommand(
            "gpuperf.cli.asl", "asl_command", "Quantify CBF (and ATT) from a BIDS ASL series."
        ),
    }
    order = ("info", "demo", "dsc", "asl", "run", "report", "bench", "simulate")


class _Simulate(LazyGroup):
    """``gpuperf simulate``: the DSC and ASL phantom writers load as the commands above."""

    lazy = {
        "dsc": LazyCommand(
            "gpuperf.cli.dsc",
            "simulate_dsc_command",
            "Write a DSC phantom: 4D NIfTI + JSON sidecar, truth maps (CBF, CBV, MTT, delay, K2), "
            "brain and artery masks.",
        ),
        "asl": LazyCommand(
            "gpuperf.cli.asl",
            "simulate_asl_command",
            "Write a BIDS ASL phantom with truth CBF/ATT maps.",
        ),
    }
    order = ("dsc", "asl", "study")


app = typer.Typer(
    cls=_Root,
    name="gpuperf",
    help="GPU-accelerated voxelwise fitting for perfusion MRI (DSC and ASL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain Click help: Typer's Rich help imports rich.markdown and markdown-it (~0.2 s of a
    # 0.3 s start-up budget) for every --help
    rich_markup_mode=None,
)
simulate_app = typer.Typer(
    cls=_Simulate,
    help="Write digital phantoms with known truth maps.",
    no_args_is_help=True,
    rich_markup_mode=None,
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
app.command("run")(_cohort.run_command)
simulate_app.command("study")(_cohort.simulate_study_command)
app.command("report")(_report.report_command)
app.command("bench")(_bench.bench_command)


def main() -> None:
    """Console-script entry point."""
    app()
