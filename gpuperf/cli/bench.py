"""``gpuperf bench``: run the benchmark suite and print one table (or run the accuracy benchmark).

A thin shell over :mod:`gpuperf.benchmarks` (``runner.run_suite``, ``table.build_rows``,
``results.update_results``, ``accuracy.run_accuracy``).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from gpuperf.cli._common import OverwriteOption, handle_errors


class BenchSize(str, Enum):
    laptop = "laptop"
    brain = "brain"


@handle_errors
def bench_command(
    size: BenchSize = typer.Option(
        BenchSize.laptop,
        "--size",
        help="laptop: minutes on a laptop CPU; brain: a 2 mm whole brain (~6.5e5 voxels).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON only."),
    accuracy: bool = typer.Option(
        False, "--accuracy", help="Run the method-accuracy benchmark (TSV + PNG) instead."
    ),
    keyword: str | None = typer.Option(
        None, "-k", help="pytest -k expression selecting benchmarks (e.g. 'osvd and not osipy')."
    ),
    update_results: bool = typer.Option(
        False,
        "--update-results",
        help="Store this run (with --accuracy: into bench/results/accuracy) and regenerate "
        "bench/RESULTS.md.",
    ),
    out: Path = typer.Option(
        Path("gpuperf-accuracy"), "--out", help="Folder for --accuracy outputs (TSV, PNG)."
    ),
    accuracy_voxels: int = typer.Option(
        500, "--accuracy-voxels", min=2, help="Noisy voxels per condition for --accuracy."
    ),
    bench_dir: Path | None = typer.Option(
        None, "--bench-dir", help="The benchmark folder (default: bench/ of the checkout)."
    ),
    overwrite: bool = OverwriteOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Echo pytest's output."),
) -> None:
    """Benchmark gpuperf against baselines measured in the same run, and print one table."""
    from rich.console import Console

    stream = sys.stderr if json_out else sys.stdout
    # Piped output keeps the full table (rich would squeeze it into 80 columns).
    console = Console(stderr=json_out, width=None if stream.isatty() else 180)
    if accuracy:
        from gpuperf.benchmarks.accuracy import run_accuracy

        bench = None
        if update_results:  # the accuracy outputs RESULTS.md links to live in the checkout
            from gpuperf.benchmarks import results as results_mod
            from gpuperf.benchmarks.runner import find_bench_dir

            bench = find_bench_dir(bench_dir)
            out = bench / "results" / results_mod.ACCURACY_DIR
            overwrite = True
        summary = run_accuracy(
            out,
            voxels_per_condition=accuracy_voxels,
            overwrite=overwrite,
            console=None if json_out else console,
        )
        if bench is not None:
            md, _ = results_mod.update_results(None, bench)
            if not json_out:
                console.print(f"regenerated {md}", highlight=False)
        if json_out:
            import json

            from gpuperf.provenance import jsonable

            typer.echo(json.dumps(jsonable(summary), indent=2))
        return

    from gpuperf.benchmarks import results as results_mod
    from gpuperf.benchmarks.runner import run_suite
    from gpuperf.benchmarks.table import build_rows, to_json, to_rich

    argv = " ".join(sys.argv[1:]) if sys.argv and Path(sys.argv[0]).name == "gpuperf" else None
    command = f"gpuperf {argv}" if argv else None
    if not json_out:
        console.print(
            f"running the benchmark suite (size {size.value}; the full laptop suite takes a few "
            "minutes, -v shows pytest's progress) ...",
            highlight=False,
        )
    run = run_suite(
        size=size.value,
        keyword=keyword,
        bench_dir=bench_dir,
        command=command,
        stream=sys.stderr if verbose else None,
    )
    rows = build_rows(run.data)
    failed = run.returncode not in (0,)
    extra = _versions()
    if run.load_average is not None:
        extra["load average (1 min) before/after"] = "{:.2f} / {:.2f}".format(*run.load_average)
    record = results_mod.make_run_record(
        run.data, rows, run.command, repo=run.bench_dir.parent, extra=extra
    )
    if json_out:
        meta = {k: v for k, v in record.items() if k != "rows"}
        meta["pytest_returncode"] = run.returncode
        typer.echo(to_json(rows, meta))
    else:
        console.print(to_rich(rows, title=f"gpuperf bench ({size.value})"))
        if failed:
            from rich.markup import escape

            tail = escape("\n".join(run.output.splitlines()[-15:]))
            console.print(
                f"[yellow]pytest exited {run.returncode}: some benchmarks failed and are "
                f"missing from the table[/]\n{tail}",
                highlight=False,
            )
    if update_results:
        if failed:
            from gpuperf.errors import GpuperfError

            raise GpuperfError("not updating RESULTS.md from a run with failed benchmarks")
        md, run_file = results_mod.update_results(record, run.bench_dir)
        if not json_out:
            console.print(f"stored {run_file}; regenerated {md}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _versions() -> dict[str, str]:
    """Versions worth recording with a run (gpuperf, NumPy, CuPy and osipy when present)."""
    from importlib import metadata

    import numpy

    from gpuperf._version import __version__

    out = {"gpuperf": __version__, "numpy": numpy.__version__}
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "osipy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
