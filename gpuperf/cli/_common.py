"""Shared pieces of the command line: option types, the run-level flags and error handling.

The CLI is a thin shell: each command parses options, calls one public library function with
the same argument names, and turns :class:`gpuperf.errors.GpuperfError` into a one-line message
and exit status 2 (no traceback, no partial output: the library writes atomically).

The run-level flags (``--out``, ``--mask``, ``--prefix``, ``--device``, ``--memory-budget-mb``,
``--overwrite``, ``--quiet``, ``--report``) are the fields of
:class:`gpuperf.io.settings.RunSettings`: :func:`run_settings_command` adds them to a pipeline
command, and the single flags other commands share (:data:`QuietOption` ...) are made from the
same declarations.
"""

from __future__ import annotations

import errno
import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from gpuperf.cli._options import _parameter, options_command
from gpuperf.errors import GpuperfError
from gpuperf.io.settings import RunSettings
from gpuperf.options import specs

F = TypeVar("F", bound=Callable[..., Any])

#: How the fields of :class:`RunSettings` show on the command line beyond their declaration
#: (see :func:`gpuperf.cli._options.options_command`): ``--out`` is required, ``--quiet`` has
#: ``-q``, and the two switches have no ``--no-`` form.
RUN_FLAGS: dict[str, dict[str, Any]] = {
    "out_dir": {"default": ...},
    "quiet": {"decls": ("--quiet", "-q")},
    "overwrite": {"decls": ("--overwrite",)},
}


def run_settings_command(exclude: tuple[str, ...] = (), **cli: dict[str, Any]) -> Callable:
    """Decorator: the flags of :class:`RunSettings` (but those in ``exclude``) on a command,
    which receives them as the keyword-only argument ``run: RunSettings``.

    ``cli`` replaces a field's ``help`` or ``default`` for this command, e.g.
    ``mask_path={"help": "Brain mask (default: from M0)."}``.
    """
    flags = {name: {**RUN_FLAGS.get(name, {}), **cli.get(name, {})} for name in specs(RunSettings)}
    return options_command(RunSettings, exclude, name="run", cli=flags)


def _run_flag(name: str) -> Any:
    """The Typer parameter of the :class:`RunSettings` field ``name`` (its ``default`` is the
    ``typer.Option`` for a command's own parameter: ``quiet: bool = QuietOption``)."""
    return _parameter(specs(RunSettings)[name], RUN_FLAGS.get(name))


_device = _run_flag("device")
#: The choices of ``--device`` as a Typer type (for commands with their own ``--device``).
Device = _device.annotation
DeviceOption = _device.default
QuietOption = _run_flag("quiet").default
OverwriteOption = _run_flag("overwrite").default


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


def run_pipeline(
    run: Callable[..., Any], settings: RunSettings, *args: Any, **kwargs: Any
) -> tuple[Any, list[Path]]:
    """Run a file pipeline (``run_dsc``, ``run_asl``) with its command's run settings
    (:func:`gpuperf.io.stages.run_and_publish`), and publish its QC page unless
    ``--no-report``: (result, the page's paths)."""
    from gpuperf.io.stages import run_and_publish

    rep = reporter_for(settings.quiet)
    pages: list[Path] = []

    def publish(result: Any) -> None:
        from gpuperf.report import publish_result

        pages.extend(publish_result(result, overwrite=settings.overwrite, reporter=rep))

    result = run_and_publish(run, settings, *args, publish=publish, reporter=rep, **kwargs)
    return result, pages
