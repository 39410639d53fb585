"""Shared pieces of the command line: option types and error handling.

The CLI is a thin shell: each command parses options, calls one public library function with
the same argument names, and turns :class:`gpuperf.errors.GpuperfError` into a one-line message
and exit status 2 (no traceback, no partial output: the library writes atomically).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
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


def fail(message: str, code: int = 2) -> None:
    """Print an error to stderr and exit with ``code``."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Decorator: GpuperfError -> message + exit 2; KeyboardInterrupt -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GpuperfError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted: no output was written under its final name", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def reporter_for(quiet: bool):
    from gpuperf.progress import Reporter

    return Reporter(quiet=quiet)


def budget_bytes(memory_budget_mb: float | None) -> int | None:
    return None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
