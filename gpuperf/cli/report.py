"""``gpuperf report``: (re)generate the QC report(s) of an output folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from gpuperf.cli._common import OverwriteOption, QuietOption, handle_errors


class Modality(str, Enum):
    auto = "auto"
    dsc = "dsc"
    asl = "asl"


@handle_errors
def report_command(
    out_dir: Path = typer.Argument(..., help="Output folder of a gpuperf run (or of a cohort)."),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Run prefix (<prefix>_cbf.nii.gz); default: every run found."
    ),
    modality: Modality = typer.Option(
        Modality.auto, "--modality", help="dsc or asl; auto guesses from the files."
    ),
    mask: Path | None = typer.Option(
        None, "--mask", help="Analysis mask to outline (default: the run's mask, if any)."
    ),
    cohort: bool = typer.Option(
        False, "--cohort", help="Also write cohort_report.html over runs in sub-folders."
    ),
    overwrite: bool = OverwriteOption,
    quiet: bool = QuietOption,
) -> None:
    """Write <prefix>_report.html for the runs in OUT_DIR from their maps and sidecars."""
    from gpuperf.errors import InputError
    from gpuperf.report import find_runs, write_cohort_report, write_run_report

    if not out_dir.is_dir():
        raise InputError(out_dir, "folder", "output folder does not exist")
    folders = [out_dir]
    if cohort:
        folders += sorted({p.parent for p in out_dir.rglob("*_cbf.nii*")} - {out_dir})
    written, rows = [], []
    for folder in folders:
        runs = find_runs(folder)
        if prefix is not None:
            runs = [(p, m) for p, m in runs if p == prefix]
        for run_prefix, found_modality in runs:
            mod = found_modality if modality is Modality.auto else modality.value
            path = write_run_report(folder, run_prefix, mod, mask=mask, overwrite=overwrite)
            written.append(path)
            rows.append({"subject": run_prefix, "out_dir": folder, "prefix": run_prefix})
    if not written:
        which = f"prefix {prefix!r}" if prefix else "any run (<prefix>_cbf.nii.gz)"
        raise InputError(out_dir, "files", f"found no output of {which}")
    if cohort:
        written.append(write_cohort_report(out_dir, rows, overwrite=overwrite))
    if not quiet:
        for path in written:
            typer.echo(str(path))
