"""The run settings of a file pipeline: what one subject's run needs besides its inputs and
method options, declared once.

:class:`RunSettings` holds the output folder, the brain mask, the prefix, the device, the memory
budget, the overwrite policy, ``quiet`` and ``report``. The run-level flags of ``gpuperf dsc``
and ``gpuperf asl`` derive from its declarations (:func:`gpuperf.cli._common.run_settings_command`),
and :func:`gpuperf.io.stages.run_and_publish` hands it to ``run_dsc``/``run_asl`` as their keyword
arguments (:meth:`RunSettings.pipeline_arguments`).

This module imports no NumPy: ``gpuperf --help`` builds the shared flags from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuperf.errors import InputError
from gpuperf.options import Options, option

#: The values of ``device`` (those of :func:`gpuperf.backend.get_backend`, which imports NumPy;
#: ``tests/test_cli_run_settings.py`` holds the two together).
DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class RunSettings(Options):
    """How one subject's file pipeline runs, apart from its inputs and method options: the same
    for ``run_dsc`` and ``run_asl``, their commands and the demos.

    Each field is declared once here (default, help, flag); ``gpuperf dsc`` and ``gpuperf asl``
    take their run-level flags from these declarations, and :meth:`pipeline_arguments` gives
    the keyword arguments of the pipelines. Construction validates every value (an
    :class:`~gpuperf.errors.InputError` names the flag).

    Attributes
    ----------
    out_dir : path-like
        Output folder (required: None raises :class:`~gpuperf.errors.InputError`).
    mask_path : path-like or None
        Brain mask; None: the pipeline's automatic mask (DSC: from the signal, ASL: from M0).
    prefix : str or None
        ``<prefix>_<map>.nii.gz``; None: from the input's file name.
    device : {'auto', 'cpu', 'gpu'}
        See :func:`gpuperf.backend.get_backend`.
    memory_budget_mb : float or None
        Memory one chunk of voxels may use, in MiB; None: automatic.
    quiet : bool
        No progress bars or log lines.
    overwrite : bool
        Replace existing outputs.
    report : bool
        Publish the QC page ``<prefix>_report.html`` (when the caller gives a ``publish``).
    """

    out_dir: Path | None = option(None, "Output folder.", flag="--out", kind="path")
    mask_path: Path | None = option(
        None, "Brain mask (default: automatic).", flag="--mask", kind="path"
    )
    prefix: str | None = option(None, "Output prefix.", flag="--prefix", kind="str")
    device: str = option(
        "auto",
        "auto: GPU when usable, else NumPy; gpu: fail if no GPU.",
        flag="--device",
        choices=DEVICES,
    )
    memory_budget_mb: float | None = option(
        None, "Memory a chunk of voxels may use (default: automatic).", flag="--memory-budget-mb"
    )
    quiet: bool = option(False, "No progress bars or log lines.", flag="--quiet")
    overwrite: bool = option(False, "Replace existing outputs.", flag="--overwrite")
    report: bool = option(True, "Write <prefix>_report.html, the visual QC page.", flag="--report")

    def _check(self) -> None:
        if self.out_dir is None:
            raise InputError(None, "--out", "an output folder is required")

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``run_dsc``/``run_asl`` (and their ``prepare`` stages) that
        these settings stand for: ``out_dir``, ``mask_path``, ``prefix``, ``device``,
        ``overwrite`` and ``memory_budget`` (in bytes)."""
        names = ("out_dir", "mask_path", "prefix", "device", "overwrite")
        arguments = {name: getattr(self, name) for name in names}
        mb = self.memory_budget_mb
        arguments["memory_budget"] = None if mb is None else int(mb * 2**20)
        return arguments
