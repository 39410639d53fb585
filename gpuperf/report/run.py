"""The QC report of one DSC or ASL run: ``<prefix>_report.html``, built from the written outputs."""

from __future__ import annotations

import datetime as _dt
import os
import time
import traceback
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf._version import __version__
from gpuperf.errors import InputError, OutputExistsError
from gpuperf.io.outputs import atomic_write_bytes
from gpuperf.report import checks
from gpuperf.report.collect import RunOutputs, load_extra, load_run, normalize_extra
from gpuperf.report.curves import dsc_curves_from_inputs
from gpuperf.report.html import box, esc, page
from gpuperf.report.sections import SECTIONS, ReportContext, map_stats  # noqa: F401

MODALITIES = ("dsc", "asl", "auto")


def report_path(out_dir: str | PathLike, prefix: str) -> Path:
    """Where :func:`write_run_report` writes: ``<out_dir>/<prefix>_report.html``."""
    return Path(out_dir) / f"{prefix}_report.html"


def write_run_report(
    out_dir: str | PathLike,
    prefix: str,
    modality: str = "auto",
    extra: Mapping[str, Any] | None = None,
    *,
    mask: str | PathLike | None = None,
    overwrite: bool = False,
    max_slices: int = 12,
) -> Path:
    """Write the self-contained QC report of one run, ``<out_dir>/<prefix>_report.html``.

    The report is built from the files the run wrote (maps and JSON sidecars, ``_aif.tsv``,
    masks, ``<prefix>_qc.npz``), so it can be regenerated at any time (``gpuperf report``).

    Parameters
    ----------
    out_dir : path-like
        The run's output folder.
    prefix : str
        The run's file-name prefix.
    modality : {"dsc", "asl", "auto"}
        Selects the modality's sections and checks; "auto" guesses from the files.
    extra : dict, optional
        QC arrays only the pipeline has (voxel curves, residue functions, baseline window,
        timings, warnings): see :data:`gpuperf.report.collect.EXTRA_FORMAT`. Merged over
        ``<prefix>_qc.npz`` (what the pipeline saved) when that exists.
    mask : path-like, optional
        Analysis mask (default: the run's mask file, or its input mask, else derived).
    overwrite : bool
        Replace an existing report (an existing report is otherwise an error).
    max_slices : int
        Most axial slices per montage.

    Returns
    -------
    Path
        The report written (atomically: a failed write leaves no partial file).

    Raises
    ------
    InputError
        No map of ``prefix`` in ``out_dir``, or an unknown modality.
    OutputExistsError
        The report exists and ``overwrite`` is False.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if modality not in MODALITIES:
        raise InputError(None, "modality", f"expected one of {MODALITIES}, found {modality!r}")
    target = report_path(out_dir, prefix)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: report exists; pass --overwrite to replace it")
    run = load_run(out_dir, prefix, mask=mask)
    if modality == "auto":
        from gpuperf.report.collect import detect_modality

        modality = detect_modality(out_dir, prefix)
    qc = out_dir / f"{prefix}_qc.npz"  # what the pipeline saved; ``extra`` adds to or overrides it
    extra = normalize_extra({**(load_extra(qc) if qc.exists() else {}), **dict(extra or {})})
    html_text, _errors = build_run_html(run, modality, extra, max_slices=max_slices, t_start=t0)
    atomic_write_bytes(target, html_text.encode("utf-8"))
    return target


def build_run_html(
    run: RunOutputs,
    modality: str,
    extra: Mapping[str, Any],
    max_slices: int = 12,
    t_start: float | None = None,
) -> tuple[str, list[str]]:
    """The report page of ``run`` as text, and the sections that failed (empty when all drew).

    The sections are :data:`gpuperf.report.sections.SECTIONS` of the modality; one that raises
    becomes an error box (a QC report must not lose a finished run).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    try:
        findings = checks.run_checks(run, modality, extra)
    except Exception as exc:  # as for sections: report the failure, keep the page
        findings = [checks.Finding("warning", "checks-failed", f"{type(exc).__name__}: {exc}")]
    curves = extra.get("curves")
    curves_note = "saved by the pipeline" if curves else "the pipeline passed none"
    if modality == "dsc" and not curves:
        try:
            curves, curves_note = dsc_curves_from_inputs(run)
        except Exception as exc:  # the inputs may have moved or changed since the run
            curves, curves_note = None, f"could not be recomputed ({type(exc).__name__}: {exc})"
    baseline_s = extra.get("baseline_s")
    if baseline_s is None and curves and "baseline_s" in curves:
        baseline_s = curves["baseline_s"]
    ctx = ReportContext(run, modality, extra, findings, curves, curves_note, baseline_s, max_slices)
    body: list[str] = []
    nav: list[tuple[str, str]] = []
    errors: list[str] = []
    for anchor, title, fn in SECTIONS[modality]:
        try:
            parts = fn(ctx)
        except Exception as exc:  # a QC report must not lose a finished run
            msg = f"{type(exc).__name__}: {exc}"
            errors.append(f"{title}: {msg}")
            tb = traceback.format_exc(limit=3)
            parts = [
                box("gp-error", f"this section could not be drawn: {esc(msg)}<pre>{esc(tb)}</pre>")
            ]
        if parts:
            nav.append((anchor, title))
            body += [f'<section id="{anchor}"><h2>{esc(title)}</h2>', *parts, "</section>"]
    nav_html = "<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav) + "</nav>"
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (
        f"{modality.upper()} run report — generated {esc(when)} by gpuperf "
        f"{esc(__version__)} in {time.perf_counter() - t_start:.1f} s"
    )
    title = f"gpuperf {modality.upper()} report: {run.prefix}"
    return page(title, "run", [nav_html, *body], subtitle=subtitle), errors


__all__ = ["build_run_html", "map_stats", "report_path", "write_run_report"]


def publish_run_report(
    out_dir: str | os.PathLike,
    prefix: str,
    modality: str,
    extra: dict | None = None,
    *,
    mask: str | os.PathLike | None = None,
    overwrite: bool = False,
    reporter=None,
) -> list[Path]:
    """Write a run's report after its maps were published, as the pipelines do.

    A report that cannot be drawn never costs the user the maps: the failure is reported as a
    warning and an empty list is returned; otherwise ``[report path]``.
    """
    try:
        return [write_run_report(out_dir, prefix, modality, extra, mask=mask, overwrite=overwrite)]
    except Exception as exc:  # the maps are already safe; say why the report is missing
        if reporter is not None:
            reporter.warn(f"QC report not written: {type(exc).__name__}: {exc}")
        return []
