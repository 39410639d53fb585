"""Top-level commands: info and demo."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import typer

from gpuperf._version import __version__
from gpuperf.cli._common import (
    Device,
    DeviceOption,
    OverwriteOption,
    QuietOption,
    handle_errors,
    reporter_for,
)


@handle_errors
def info_command() -> None:
    """Versions, backends, and the GPU (name and free memory) or why it is unusable."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gpuperf.backend import gpu_status
    from gpuperf.cuda.nvcc import find_nvcc

    usable, detail = gpu_status()
    table = Table(show_header=False, box=None)
    table.add_row("gpuperf", __version__)
    table.add_row("python", f"{sys.version.split()[0]} ({platform.platform(terse=True)})")
    import numpy

    table.add_row("numpy", numpy.__version__)
    try:
        import nibabel

        table.add_row("nibabel", nibabel.__version__)
    except ImportError:
        table.add_row("nibabel", "missing")
    try:
        import cupy

        table.add_row("cupy", cupy.__version__)
    except ImportError:
        table.add_row("cupy", "not installed")
    table.add_row("backend numpy", "available")
    # Text: no markup, so "gpuperf[cuda12]" in the reason prints as written
    table.add_row("backend cupy", Text(("available: " if usable else "unavailable: ") + detail))
    nvcc = find_nvcc()
    table.add_row("nvcc", str(nvcc) if nvcc else "not found (only needed for kernel tests)")
    Console().print(table)


@handle_errors
def demo_command(
    out: Path = typer.Option(Path("gpuperf-demo"), "--out", help="Folder for phantoms and maps."),
    device: Device = DeviceOption,
    quiet: bool = QuietOption,
    overwrite: bool = OverwriteOption,
) -> None:
    """Simulate DSC and ASL phantoms, fit them, and compare the maps with the truth."""
    from rich.console import Console
    from rich.table import Table

    from gpuperf.backend import get_backend

    get_backend(device.value)  # --device gpu without a GPU fails here, before any work
    from gpuperf.asl.demo import run_demo as run_asl_demo
    from gpuperf.dsc.demo import run_demo as run_dsc_demo
    from gpuperf.report import publish_result

    reporter = reporter_for(quiet)
    console = Console()
    if out.exists() and any(out.iterdir()) and not overwrite:
        from gpuperf.errors import OutputExistsError

        raise OutputExistsError(f"{out}: demo folder exists and is not empty; pass --overwrite")
    rows = []
    for name, run in (("DSC", run_dsc_demo), ("ASL", run_asl_demo)):
        t0 = time.perf_counter()
        summary = run(
            out / name.lower(),
            device=device.value,
            reporter=reporter,
            publish=lambda res: publish_result(res, overwrite=True, reporter=reporter),
        )
        rows.append((name, summary, time.perf_counter() - t0))
    if not quiet:
        for name, summary, elapsed in rows:
            table = Table(title=f"{name} demo ({elapsed:.2f} s)")
            table.add_column("quantity")
            table.add_column("value")
            for k, v in summary.items():
                table.add_row(str(k), f"{v:.4g}" if isinstance(v, float) else str(v))
            console.print(table)
        console.print(f"maps written under [bold]{out}[/]")
