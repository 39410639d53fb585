"""Shared pieces of the command line: option types and error handling.

The CLI is a thin shell: each command parses options, calls one public library function with
the same argument names, and turns :class:`gpuperf.errors.GpuperfError` into a one-line message
and exit status 2 (no traceback, no partial output: the library writes atomically).
"""

from __future__ import annotations

import errno
import functools
import sys
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer

from gpuperf.errors import GpuperfError

F = TypeVar("F", bound=Callable[..., Any])


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


DeviceOption = typer.Option(
    Device.auto, "--device", help="auto: GPU when usable, else NumPy; gpu: fail if no GPU."
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars or log lines.")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace existing outputs.")
ReportOption = typer.Option(
    True, "--report/--no-report", help="Write <prefix>_report.html, the visual QC page."
)
MemoryOption = typer.Option(
    None, "--memory-budget-mb", help="Memory a chunk of voxels may use (default: automatic)."
)


def one_line(message: str) -> str:
    """``message`` on one line (a path or a sidecar value may hold a line break)."""
    lines = [ln.strip() for ln in str(message).splitlines()]
    return " ".join(ln for ln in lines if ln) or "(no message)"


def fail(message: str, code: int = 2) -> None:
    """Print an error to stderr on one line and exit with ``code``.

    The message is printed as text (``[...]`` in it, ``gpuperf[cuda12]``, is not markup), never
    wrapped; "error:" is bold red on a terminal only (Click strips styles otherwise). No Rich
    import: a bad flag or a missing input is reported before anything heavy loads.
    """
    typer.echo(typer.style("error: ", fg="red", bold=True) + one_line(message), err=True)
    raise typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: the file, then what went wrong."""
    where = exc.filename if exc.filename is not None else None
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        what += " (the disk is full)"
    elif exc.errno == errno.EROFS:
        what += " (read-only file system)"
    return f"{where}: {what}" if where else what


def _abort_outputs() -> None:
    """Drop staged outputs and release the journals (nothing to do when no writer was loaded:
    the command failed before it wrote anything)."""
    outputs = sys.modules.get("gpuperf.io.outputs")
    if outputs is not None:
        outputs.abort_staged()
        outputs.release_journals()


def handle_errors(fn: F) -> F:
    """Decorator: GpuperfError and OSError -> one line + exit 2; KeyboardInterrupt -> a line
    saying what is on disk + exit 130. NumPy floating-point warnings (``RuntimeWarning``) are
    silenced while the command runs, on every thread (NaN inputs are flagged in the status maps
    instead). Imports nothing heavy: a command checks its input before NumPy loads."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return fn(*args, **kwargs)
        except GpuperfError as exc:
            _abort_outputs()
            fail(str(exc), exc.exit_code)
        except OSError as exc:
            _abort_outputs()
            fail(os_error_message(exc), 2)
        except KeyboardInterrupt:
            outputs = sys.modules.get("gpuperf.io.outputs")
            summary = "no output was written under its final name"
            if outputs is not None:
                outputs.abort_staged()
                summary = outputs.interruption_summary()
            print(f"interrupted: {summary}", file=sys.stderr)
            if outputs is not None:
                outputs.release_journals()
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def reporter_for(quiet: bool):
    from gpuperf.progress import Reporter

    return Reporter(quiet=quiet)


def budget_bytes(memory_budget_mb: float | None) -> int | None:
    return None if memory_budget_mb is None else int(memory_budget_mb * 2**20)


def run_pipeline(
    run: Callable[..., Any],
    *args: Any,
    device: Device,
    memory_budget_mb: float | None,
    quiet: bool,
    overwrite: bool,
    report: bool,
    **kwargs: Any,
) -> tuple[Any, list[Path]]:
    """Run a file pipeline (``run_dsc``, ``run_asl``) with the run-level options every pipeline
    command takes, and publish its QC page with ``--report``: (result, the page's paths)."""
    from gpuperf.io.stages import run_and_publish

    rep = reporter_for(quiet)
    pages: list[Path] = []

    def publish(result: Any) -> None:
        from gpuperf.report import publish_result

        pages.extend(publish_result(result, overwrite=overwrite, reporter=rep))

    result = run_and_publish(
        run,
        *args,
        publish=publish if report else None,
        device=device.value,
        memory_budget=budget_bytes(memory_budget_mb),
        overwrite=overwrite,
        reporter=rep,
        **kwargs,
    )
    return result, pages
