"""The sections of a run's QC report: module-level functions over a small context.

Each section is ``fn(ctx) -> list of HTML fragments`` (empty: the section is left out). The
modality's list of sections is :data:`SECTIONS`; :func:`gpuperf.report.run.build_run_html`
draws them in order, and a section that raises becomes an error box instead of a lost report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuperf import maps, status
from gpuperf.report import checks, figures
from gpuperf.report.collect import RunOutputs
from gpuperf.report.html import box, esc, figure, fmt, table

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


@dataclass
class ReportContext:
    """What every section may read.

    Attributes
    ----------
    run : RunOutputs
        The run's written outputs.
    modality : {"dsc", "asl"}
    extra : mapping
        QC data of the pipeline (:data:`gpuperf.io.qc.EXTRA_FORMAT`).
    findings : list of checks.Finding
    curves : dict or None
        Voxel curves (saved by the pipeline, or recomputed from the inputs for DSC).
    curves_note : str
        Where the curves came from (or why there are none).
    baseline_s : (start, end) or None
        DSC pre-bolus window.
    max_slices : int
        Most axial slices per montage.
    """

    run: RunOutputs
    modality: str
    extra: Mapping[str, Any]
    findings: list = field(default_factory=list)
    curves: dict | None = None
    curves_note: str = ""
    baseline_s: Any = None
    max_slices: int = 12

    @property
    def prov(self) -> dict[str, Any]:
        return self.run.provenance()


def ordered_maps(run: RunOutputs) -> list[str]:
    """The run's maps in the order of :mod:`gpuperf.maps` (unknown maps last, sorted)."""
    order = maps.order()
    known = [n for n in order if n in run.maps]
    return known + sorted(n for n in run.maps if n not in order)


def _categorical(name: str) -> bool:
    spec = maps.MAPS.get(name)
    return bool(spec and spec.categorical)


def map_stats(values: np.ndarray) -> dict[str, float]:
    """Median, quartiles, 5th/95th percentiles, mean, finite and NaN counts of ``values``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    fin = v[np.isfinite(v)]
    nan = float("nan")
    if fin.size == 0:
        stats = dict.fromkeys(("median", "q1", "q3", "p5", "p95", "mean"), nan)
        return {**stats, "n": 0, "nan": int(v.size)}
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


def _flatten_params(params: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(params, Mapping):
        rows: list[tuple[str, Any]] = []
        for k, v in params.items():
            rows += _flatten_params(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    return [(prefix, params)]


def warnings_section(ctx: ReportContext) -> list[str]:
    _run, _extra = ctx.run, ctx.extra
    parts = []
    warn = [f for f in ctx.findings if f.level == "warning"]
    info = [f for f in ctx.findings if f.level != "warning"]
    if not warn:
        parts.append(box("ok", "no warnings"))
    parts += [box("warn", f"<b>warning</b> ({esc(f.code)}): {esc(f.message)}") for f in warn]
    parts += [box("info", esc(f.message)) for f in info]
    return parts


def run_section(ctx: ReportContext) -> list[str]:
    run, extra = ctx.run, ctx.extra
    rows = [
        ("output folder", str(run.out_dir)),
        ("prefix", run.prefix),
        ("modality", ctx.modality.upper()),
    ]
    rows += [(k, ctx.prov[k]) for k in _PROVENANCE_KEYS if k in ctx.prov]
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
    params = _flatten_params(ctx.prov.get("Parameters", {}) or {})
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
    sources = ctx.prov.get("Sources") or []
    if sources:
        parts += [
            "<h3>Inputs</h3>",
            "<ul>" + "".join(f"<li><code>{esc(s)}</code></li>" for s in sources) + "</ul>",
        ]
    for note in extra.get("notes", []):
        parts.append(box("info", esc(note)))
    return parts


def stats_section(ctx: ReportContext) -> list[str]:
    run, _extra = ctx.run, ctx.extra
    rows = []
    for name in ordered_maps(run):
        if _categorical(name):  # codes, summarised under "Fit status"
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


def montage_section(ctx: ReportContext) -> list[str]:
    run, _extra = ctx.run, ctx.extra
    parts = [
        '<p class="caption">Axial slices, neurological convention (subject right on '
        "the right). Cyan: mask outline; magenta: mask voxels without a value (NaN); "
        "arrow ends on a colour bar: values beyond the display range.</p>"
    ]
    mask = run.mask
    layout = None  # the slices, panels and mask outline every map shares: made once
    for name in ordered_maps(run):
        m = run.maps[name]
        mk = np.isfinite(m.data) if mask is None else mask
        if layout is None or mask is None:
            layout = figures.montage_layout(mk, run.affine, run.zooms_mm, ctx.max_slices)
        png, info = figures.montage(
            m.data, mk, run.affine, run.zooms_mm, name, m.units, ctx.max_slices, layout=layout
        )
        labels, bar = montage_html(info, m.units)
        head = f"<b>{esc(info['label'])}</b> <code>{esc(m.path.name)}</code> — "
        if _categorical(name):
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
        parts.append(figure(png, f"montage {name}", cap, above=labels, beside=bar))
    return parts


def montage_html(info: Mapping[str, Any], units: str) -> tuple[str, str]:
    """HTML drawn over and beside a montage PNG (:func:`gpuperf.report.figures.montage`):
    the slice labels (``z=k``) and L/R on the first panel, placed in percent of the image so
    they follow its scaling; the colour bar in physical units (a CSS gradient, arrow ends when
    values lie beyond the range) or, for categorical maps, the legend of codes."""
    ncols, nrows = max(int(info["ncols"]), 1), max(int(info["nrows"]), 1)
    labels = []
    for i, k in enumerate(info["slices"]):
        r, c = divmod(i, ncols)
        left, top = 100.0 * c / ncols, 100.0 * r / nrows
        labels.append(f'<span class="gp-lab" style="left:{left:.2f}%;top:{top:.2f}%">z={k}</span>')
    if info["slices"]:
        mid = 50.0 / nrows
        labels.append(f'<span class="gp-lab" style="left:0;top:{mid:.2f}%">L</span>')
        labels.append(
            f'<span class="gp-lab" style="left:{100.0 / ncols - 3.0:.2f}%;top:{mid:.2f}%">R</span>'
        )
    label = f"{info['label']} ({units})" if units else str(info["label"])
    if "legend" in info:
        items = "".join(
            f'<div><span class="gp-sw" style="background:{c}"></span>{esc(code)}</div>'
            for code, c in info["legend"]
        )
        return "".join(labels), f'<div class="gp-leg"><b>{esc(label)}</b>{items}</div>'
    stops = ",".join(info["colours"][::-1])
    up = "▲ " if info["extend"] in ("max", "both") else ""
    down = "▼ " if info["extend"] in ("min", "both") else ""
    bar = (
        '<div class="gp-cbar">'
        f'<div class="gp-ramp" style="background:linear-gradient({stops})"></div>'
        f'<div class="gp-ticks"><span>{up}{esc(fmt(info["vmax"]))}</span>'
        f"<span>{esc(fmt((info['vmin'] + info['vmax']) / 2))}</span>"
        f"<span>{down}{esc(fmt(info['vmin']))}</span></div>"
        f'<div class="gp-unit">{esc(label)}</div></div>'
    )
    return "".join(labels), bar


def status_section(ctx: ReportContext) -> list[str]:
    """Voxels per status value and per flag (:mod:`gpuperf.status`)."""
    counts = checks.status_counts(ctx.run)
    if not counts:
        return []
    total = sum(counts.values())
    rows = [
        (code, status.names(code), n, f"{100 * n / total:.1f}%")
        for code, n in sorted(counts.items())
    ]
    codes = np.array(list(counts), dtype=np.int64)
    n = np.array(list(counts.values()), dtype=np.int64)
    bit_rows = [
        (int(flag), flag.name, text, int(n[(codes & int(flag)) != 0].sum()))
        for flag, text in status.DESCRIPTIONS.items()
        if ((codes & int(flag)) != 0).any()
    ]
    parts = [
        f"<p>{total} mask voxels; flags of <code>gpuperf.status</code> (0: processed "
        "normally).</p>",
        table(
            rows, header=("status", "flags", "voxels", "share"), numeric=(True, False, True, True)
        ),
    ]
    if bit_rows:
        parts += [
            "<h3>Per flag (a voxel may carry several)</h3>",
            table(
                bit_rows,
                header=("bit", "flag", "meaning", "voxels"),
                numeric=(True, False, False, True),
            ),
        ]
    return parts


def aif_section(ctx: ReportContext) -> list[str]:
    run, extra = ctx.run, ctx.extra
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
        if ctx.baseline_s is not None:
            rows.append(("baseline window (s)", [float(x) for x in ctx.baseline_s]))
        parts.append(
            figure(
                figures.aif_plot(
                    run.aif_time_s,
                    run.aif_curve,
                    run.aif_columns,
                    ctx.baseline_s,
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
    if chosen is not None and chosen.any():
        bg_name = next((n for n in ("cbv", "s0", "cbf") if n in run.maps), None)
        bg = run.maps[bg_name].data if bg_name else chosen.astype(float)
        parts.append(
            figure(
                figures.voxels_on_slice(bg, chosen, run.affine, run.zooms_mm, "AIF voxels"),
                "AIF voxels",
                f"AIF voxels (red outline) on the {bg_name or 'mask'} map: "
                f"{esc(figures.voxels_slice(chosen, run.affine, run.zooms_mm))}.",
            )
        )
    return parts


def curves_section(ctx: ReportContext) -> list[str]:
    _run, _extra = ctx.run, ctx.extra
    if not ctx.curves or "measured" not in ctx.curves or "time_s" not in ctx.curves:
        return [box("info", f"no voxel curves: {esc(ctx.curves_note)}")]
    parts = []
    if ctx.modality == "dsc":
        parts.append(
            figure(
                figures.dsc_curves(ctx.curves),
                "voxel curves",
                "Concentration curves of a few voxels with their deconvolved residue "
                f"functions; {esc(ctx.curves_note)}.",
            )
        )
    else:
        parts.append(
            figure(
                figures.asl_curves(ctx.curves),
                "voxel curves",
                f"ΔM against post-labelling delay with the fitted kinetic model; "
                f"{esc(ctx.curves_note)}.",
            )
        )
    if "cbf_map" in ctx.curves and "cbf_recomputed" in ctx.curves:
        labels = figures.curve_labels(ctx.curves, len(ctx.curves["cbf_map"]))
        rows = list(zip(labels, ctx.curves["cbf_map"], ctx.curves["cbf_recomputed"], strict=False))
        parts.append(
            table(
                rows,
                header=("voxel", "CBF in the map", "CBF recomputed"),
                numeric=(False, True, True),
            )
        )
    return parts


def histogram_section(ctx: ReportContext) -> list[str]:
    run, _extra = ctx.run, ctx.extra
    parts = []
    for name in ("cbf", "att", "abv", "abat"):
        m = run.maps.get(name)
        if m is None:
            continue
        sel = run.mask if run.mask is not None else np.isfinite(m.data)
        parts.append(figure(figures.histogram(m.data[sel], name, m.units), f"histogram {name}"))
    return parts


def files_section(ctx: ReportContext) -> list[str]:
    run, _extra = ctx.run, ctx.extra
    files = [m.path.name for m in run.maps.values()] + [p.name for p in run.other_files]
    files += [p.name for p in run.mask_files]
    if run.aif_curve is not None:
        files.append(f"{run.prefix}_aif.tsv")
    return ["<ul>" + "".join(f"<li><code>{esc(f)}</code></li>" for f in sorted(files)) + "</ul>"]


Section = tuple[str, str, Callable[[ReportContext], list[str]]]


def _page(*middle: Section) -> list[Section]:
    """A modality's sections, in page order: the common ones around its own (``middle``)."""
    return [
        ("warnings", "Warnings", warnings_section),
        ("run", "Run, parameters and timings", run_section),
        ("stats", "Map statistics in the mask", stats_section),
        *middle,
        ("status", "Fit status", status_section),
        ("maps", "Maps", montage_section),
        ("files", "Files read", files_section),
    ]


#: Sections of each modality's report, in page order: (anchor, title, function).
SECTIONS: dict[str, list[Section]] = {
    "dsc": _page(
        ("aif", "Arterial input function", aif_section),
        ("curves", "Voxel curves and residue functions", curves_section),
    ),
    "asl": _page(
        ("histograms", "Histograms", histogram_section),
        ("curves", "ΔM against PLD", curves_section),
    ),
}
