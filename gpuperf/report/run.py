"""The QC report of one DSC or ASL run: ``<prefix>_report.html``, built from the written outputs."""

from __future__ import annotations

import datetime as _dt
import os
import time
import traceback
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf._version import __version__
from gpuperf.errors import InputError, OutputExistsError
from gpuperf.io.outputs import atomic_write_bytes
from gpuperf.report import checks, figures
from gpuperf.report.collect import RunOutputs, load_extra, load_run, normalize_extra
from gpuperf.report.curves import dsc_curves_from_inputs
from gpuperf.report.display import ORDER, spec_for
from gpuperf.report.html import box, esc, figure, fmt, page, table

MODALITIES = ("dsc", "asl", "auto")

_PROVENANCE_KEYS = (
    "SoftwareName",
    "SoftwareVersion",
    "Backend",
    "Device",
    "ElapsedSeconds",
    "DateTime",
    "Python",
    "NumPy",
    "Platform",
)


def report_path(out_dir: str | PathLike, prefix: str) -> Path:
    """Where :func:`write_run_report` writes: ``<out_dir>/<prefix>_report.html``."""
    return Path(out_dir) / f"{prefix}_report.html"


def map_stats(values: np.ndarray) -> dict[str, float]:
    """Median, quartiles, 5th/95th percentiles, mean, finite and NaN counts of ``values``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    fin = v[np.isfinite(v)]
    if fin.size == 0:
        nan = float("nan")
        return {
            "median": nan,
            "q1": nan,
            "q3": nan,
            "p5": nan,
            "p95": nan,
            "mean": nan,
            "n": 0,
            "nan": int(v.size),
        }
    p5, q1, med, q3, p95 = np.percentile(fin, [5, 25, 50, 75, 95])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "p5": float(p5),
        "p95": float(p95),
        "mean": float(fin.mean()),
        "n": int(fin.size),
        "nan": int(v.size - fin.size),
    }


def ordered_maps(run: RunOutputs) -> list[str]:
    known = [n for n in ORDER if n in run.maps]
    return known + sorted(n for n in run.maps if n not in ORDER)


def _flatten_params(params: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(params, Mapping):
        rows: list[tuple[str, Any]] = []
        for k, v in params.items():
            rows += _flatten_params(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    return [(prefix, params)]


class _Builder:
    """Collects sections; a section that raises becomes an error box, not a failed report."""

    def __init__(self) -> None:
        self.body: list[str] = []
        self.nav: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def section(self, anchor: str, title: str, fn: Callable[[], list[str]]) -> None:
        try:
            parts = fn()
        except Exception as exc:  # a QC report must not lose a finished run
            msg = f"{type(exc).__name__}: {exc}"
            self.errors.append(f"{title}: {msg}")
            tb = traceback.format_exc(limit=3)
            parts = [
                box("gp-error", f"this section could not be drawn: {esc(msg)}<pre>{esc(tb)}</pre>")
            ]
        if not parts:
            return
        self.nav.append((anchor, title))
        self.body.append(f'<section id="{anchor}"><h2>{esc(title)}</h2>')
        self.body.extend(parts)
        self.body.append("</section>")


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
    Figures need matplotlib (extra ``plot``); without it the page has tables and warnings only
    and says so.

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
    """The report page of ``run`` as text, and the sections that failed (empty when all drew)."""
    t_start = time.perf_counter() if t_start is None else t_start
    have_mpl = figures.matplotlib_available()
    prov = run.provenance()
    b = _Builder()
    try:
        findings = checks.run_checks(run, modality, extra)
    except Exception as exc:  # as for sections: report the failure, keep the page
        findings = [checks.Finding("warning", "checks-failed", f"{type(exc).__name__}: {exc}")]
    curves = extra.get("curves")
    curves_note = "saved by the pipeline" if curves else "the pipeline passed none"
    if modality == "dsc" and not curves and have_mpl:
        try:
            curves, curves_note = dsc_curves_from_inputs(run)
        except Exception as exc:  # the inputs may have moved or changed since the run
            curves, curves_note = None, f"could not be recomputed ({type(exc).__name__}: {exc})"
    baseline_s = extra.get("baseline_s")
    if baseline_s is None and curves and "baseline_s" in curves:
        baseline_s = curves["baseline_s"]

    def warnings_section() -> list[str]:
        parts = []
        warn = [f for f in findings if f.level == "warning"]
        info = [f for f in findings if f.level != "warning"]
        if not warn:
            parts.append(box("ok", "no warnings"))
        parts += [box("warn", f"<b>warning</b> ({esc(f.code)}): {esc(f.message)}") for f in warn]
        parts += [box("info", esc(f.message)) for f in info]
        if not have_mpl:
            parts.append(
                box(
                    "info",
                    "matplotlib is not installed: figures are omitted "
                    "(install <code>gpuperf[plot]</code> and run "
                    "<code>gpuperf report</code> again)",
                )
            )
        return parts

    def run_section() -> list[str]:
        rows = [
            ("output folder", str(run.out_dir)),
            ("prefix", run.prefix),
            ("modality", modality.upper()),
        ]
        rows += [(k, prov[k]) for k in _PROVENANCE_KEYS if k in prov]
        if run.mask is not None:
            rows.append(
                (
                    "mask",
                    f"{int(run.mask.sum())} voxels, "
                    f"{checks.mask_volume_ml(run):.1f} ml; {run.mask_source}",
                )
            )
        rows.append(("voxel size (mm)", ", ".join(f"{z:g}" for z in run.zooms_mm)))
        rows.append(("grid", " x ".join(str(s) for s in run.shape or ())))
        parts = ["<h3>Run</h3>", table(rows)]
        params = _flatten_params(prov.get("Parameters", {}) or {})
        if params:
            parts += ["<h3>Parameters</h3>", table(params, header=("parameter", "value"))]
        timings = dict(extra.get("timings", {}))
        elapsed = {m.name: m.sidecar.get("ElapsedSeconds") for m in run.maps.values()}
        if len({v for v in elapsed.values() if v is not None}) > 1:
            timings.update({f"map {k}": v for k, v in elapsed.items() if v is not None})
        if timings:
            parts += [
                "<h3>Timings</h3>",
                table(
                    sorted(timings.items(), key=lambda kv: kv[0]),
                    header=("step", "seconds"),
                    numeric=(False, True),
                ),
            ]
        sources = prov.get("Sources") or []
        if sources:
            parts += [
                "<h3>Inputs</h3>",
                "<ul>" + "".join(f"<li><code>{esc(s)}</code></li>" for s in sources) + "</ul>",
            ]
        for note in extra.get("notes", []):
            parts.append(box("info", esc(note)))
        return parts

    def stats_section() -> list[str]:
        rows = []
        for name in ordered_maps(run):
            if spec_for(name).categorical:  # codes, summarised under "Fit status"
                continue
            m = run.maps[name]
            sel = run.mask if run.mask is not None else np.ones(m.data.shape, bool)
            s = map_stats(m.data[sel])
            rows.append(
                (
                    name,
                    m.units,
                    s["median"],
                    f"{fmt(s['q1'])} – {fmt(s['q3'])}",
                    f"{fmt(s['p5'])} – {fmt(s['p95'])}",
                    s["mean"],
                    s["n"],
                    s["nan"],
                    m.description,
                )
            )
        return [
            table(
                rows,
                header=(
                    "map",
                    "units",
                    "median",
                    "IQR",
                    "5–95%",
                    "mean",
                    "finite",
                    "NaN",
                    "description",
                ),
                numeric=(False, False, True, True, True, True, True, True, False),
            )
        ]

    def montage_section() -> list[str]:
        if not have_mpl:
            return []
        parts = [
            '<p class="caption">Axial slices, neurological convention (subject right on '
            "the right). Cyan: mask outline; magenta: mask voxels without a value (NaN); "
            "arrow ends on a colour bar: values beyond the display range.</p>"
        ]
        for name in ordered_maps(run):
            m = run.maps[name]
            png, info = figures.montage(
                m.data, run.mask, run.affine, run.zooms_mm, name, m.units, max_slices=max_slices
            )
            head = f"<b>{esc(info['label'])}</b> <code>{esc(m.path.name)}</code> — "
            if spec_for(name).categorical:
                cap = head + f"{esc(m.description)}. One colour per code (see Fit status)."
            else:
                rng = "fixed" if info["fixed"] else "auto (2–98th percentile in the mask)"
                cap = head + (
                    f"{esc(m.description)}. Range {fmt(info['vmin'])} to "
                    f"{fmt(info['vmax'])} {esc(m.units)} ({rng}); "
                    f"{100 * info['below']:.1f}% below, {100 * info['above']:.1f}% "
                    f"above; {info['nan']} NaN in the mask."
                )
            parts.append(f'<h3 id="map-{esc(name)}">{esc(info["label"])}</h3>')
            parts.append(figure(png, f"montage {name}", cap))
        return parts

    def status_section() -> list[str]:
        counts = checks.status_counts(run)
        if not counts:
            return []
        desc = checks.status_descriptions(run)
        total = sum(counts.values())
        rows = [
            (code, desc.get(code, "ok" if code == 0 else ""), n, f"{100 * n / total:.1f}%")
            for code, n in sorted(counts.items())
        ]
        parts = [
            f"<p>{total} mask voxels.</p>",
            table(
                rows,
                header=("status", "meaning", "voxels", "share"),
                numeric=(True, False, True, True),
            ),
        ]
        if checks.is_bitfield(desc, counts):
            codes = np.array(list(counts), dtype=np.int64)
            n = np.array(list(counts.values()), dtype=np.int64)
            bit_rows = [
                (bit, text, int(n[(codes & bit) != 0].sum()))
                for bit, text in sorted(desc.items())
                if bit > 0
            ]
            parts += [
                "<h3>Per flag (a voxel may carry several)</h3>",
                table(bit_rows, header=("bit", "meaning", "voxels"), numeric=(True, False, True)),
            ]
        return parts

    def aif_section() -> list[str]:
        parts = []
        if run.aif_curve is not None:
            peak = checks.aif_peak(run)
            ttp = checks.map_median(run, "ttp")
            rows = [("samples", run.aif_curve.size)]
            if peak:
                rows += [
                    ("peak time (s)", peak[0]),
                    ("peak value", float(np.nanmax(run.aif_curve))),
                    ("peak position", f"{100 * peak[1]:.0f}% of the acquisition"),
                ]
            if baseline_s is not None:
                rows.append(("baseline window (s)", [float(x) for x in baseline_s]))
            if have_mpl:
                parts.append(
                    figure(
                        figures.aif_plot(
                            run.aif_time_s,
                            run.aif_curve,
                            run.aif_columns,
                            baseline_s,
                            ttp if np.isfinite(ttp) else None,
                        ),
                        "AIF curve",
                        f"AIF from <code>{esc(run.prefix)}_aif.tsv</code>; grey: "
                        "baseline window; dashed blue: median tissue TTP.",
                    )
                )
            parts.append(table(rows))
        chosen = run.aif_mask
        if chosen is None and "aif_voxels" in extra and run.shape is not None:
            vox = np.asarray(extra["aif_voxels"], dtype=np.int64).reshape(-1, 3)
            chosen = np.zeros(run.shape, bool)
            chosen[vox[:, 0], vox[:, 1], vox[:, 2]] = True
        if chosen is not None and chosen.any() and have_mpl:
            bg_name = next((n for n in ("cbv", "s0", "cbf") if n in run.maps), None)
            bg = run.maps[bg_name].data if bg_name else chosen.astype(float)
            parts.append(
                figure(
                    figures.voxels_on_slice(bg, chosen, run.affine, run.zooms_mm, "AIF voxels"),
                    "AIF voxels",
                    f"AIF voxels (red) on the {bg_name or 'mask'} map.",
                )
            )
        return parts

    def curves_section() -> list[str]:
        if not have_mpl:
            return []
        if not curves or "measured" not in curves or "time_s" not in curves:
            return [box("info", f"no voxel curves: {esc(curves_note)}")]
        parts = []
        if modality == "dsc":
            parts.append(
                figure(
                    figures.dsc_curves(curves),
                    "voxel curves",
                    "Concentration curves of a few voxels with their deconvolved residue "
                    f"functions; {esc(curves_note)}.",
                )
            )
        else:
            parts.append(
                figure(
                    figures.asl_curves(curves),
                    "voxel curves",
                    f"ΔM against post-labelling delay with the fitted kinetic model; "
                    f"{esc(curves_note)}.",
                )
            )
        if "cbf_map" in curves and "cbf_recomputed" in curves:
            labels = figures.curve_labels(curves, len(curves["cbf_map"]))
            rows = list(zip(labels, curves["cbf_map"], curves["cbf_recomputed"], strict=False))
            parts.append(
                table(
                    rows,
                    header=("voxel", "CBF in the map", "CBF recomputed"),
                    numeric=(False, True, True),
                )
            )
        return parts

    def histogram_section() -> list[str]:
        if not have_mpl:
            return []
        parts = []
        for name in ("cbf", "att", "abv", "abat"):
            m = run.maps.get(name)
            if m is None:
                continue
            sel = run.mask if run.mask is not None else np.isfinite(m.data)
            parts.append(figure(figures.histogram(m.data[sel], name, m.units), f"histogram {name}"))
        return parts

    def files_section() -> list[str]:
        files = [m.path.name for m in run.maps.values()] + [p.name for p in run.other_files]
        files += [p.name for p in run.mask_files]
        if run.aif_curve is not None:
            files.append(f"{run.prefix}_aif.tsv")
        return [
            "<ul>" + "".join(f"<li><code>{esc(f)}</code></li>" for f in sorted(files)) + "</ul>"
        ]

    b.section("warnings", "Warnings", warnings_section)
    b.section("run", "Run, parameters and timings", run_section)
    b.section("stats", "Map statistics in the mask", stats_section)
    if modality == "dsc":
        b.section("aif", "Arterial input function", aif_section)
        b.section("curves", "Voxel curves and residue functions", curves_section)
    else:
        b.section("histograms", "Histograms", histogram_section)
        b.section("curves", "ΔM against PLD", curves_section)
    b.section("status", "Fit status", status_section)
    b.section("maps", "Maps", montage_section)
    b.section("files", "Files read", files_section)
    nav = "<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in b.nav) + "</nav>"
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (
        f"{modality.upper()} run report — generated {esc(when)} by gpuperf "
        f"{esc(__version__)} in {time.perf_counter() - t_start:.1f} s"
    )
    title = f"gpuperf {modality.upper()} report: {run.prefix}"
    return page(title, "run", [nav, *b.body], subtitle=subtitle), b.errors


__all__ = ["build_run_html", "map_stats", "report_path", "spec_for", "write_run_report"]


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
