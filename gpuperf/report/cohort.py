"""The cohort summary page: one row per subject, outliers flagged by robust z-scores."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from gpuperf._version import __version__
from gpuperf.errors import InputError, OutputExistsError
from gpuperf.io.outputs import atomic_write_bytes
from gpuperf.report import checks, figures
from gpuperf.report.collect import load_run
from gpuperf.report.html import box, esc, figure, fmt, img, page, table
from gpuperf.report.run import map_stats, report_path

#: |robust z| above this flags an outlier (Iglewicz & Hoaglin 1993, modified z-score).
OUTLIER_Z = 3.5
#: ... and only when the value also differs from the cohort median by more than this fraction of
#: it: with near-identical subjects the MAD is tiny and z alone would flag trivial differences.
OUTLIER_MIN_REL = 0.10
#: Fewest finite values in a column for outliers to be looked for.
MIN_SUBJECTS_FOR_OUTLIERS = 4

#: Key numbers computed from a run's maps by :func:`summarize_run` (name, map, statistic).
SUMMARY_VALUES = (
    ("CBF median", "cbf", "median"),
    ("CBV median", "cbv", "median"),
    ("MTT median", "mtt", "median"),
    ("Tmax median", "tmax", "median"),
    ("ATT median", "att", "median"),
)

ROW_FORMAT = """\
rows = [
    {
        "subject": "sub-01",            # required
        "status":  "ok",                # "ok" (default), "failed", "skipped", ... free text
        "out_dir": "derivatives/sub-01",  # optional: the subject's output folder ...
        "prefix":  "sub-01_dsc",        # ... and run prefix: thumbnail, numbers, report link
        "report":  "path/to/report.html",  # optional (default <out_dir>/<prefix>_report.html)
        "values":  {"GM CBF": 52.1},    # optional key numbers (override computed ones)
        "precomputed": {...},           # optional: precompute_row(out_dir, prefix), made
                                        # earlier (the maps are then not read again)
        "message": "why it failed",     # optional
    },
    ...
]"""


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Modified z-score ``0.6745 (x - median) / MAD`` (Iglewicz & Hoaglin 1993).

    When the MAD is zero (over half of the values equal) the mean absolute deviation is used,
    ``(x - median) / (1.253314 * meanAD)``; when that is zero too, every z is 0. NaN stays NaN.

    Parameters
    ----------
    values : sequence of float (n,)

    Returns
    -------
    ndarray (n,)
    """
    x = np.asarray(values, dtype=np.float64)
    z = np.full(x.shape, np.nan)
    fin = np.isfinite(x)
    if not fin.any():
        return z
    med = np.median(x[fin])
    dev = np.abs(x[fin] - med)
    mad = np.median(dev)
    if mad > 0:
        z[fin] = 0.6745 * (x[fin] - med) / mad
    else:
        mean_ad = dev.mean()
        z[fin] = (x[fin] - med) / (1.253314 * mean_ad) if mean_ad > 0 else 0.0
    return z


def summarize_run(out_dir: str | PathLike, prefix: str) -> dict[str, float]:
    """Key numbers of a run from its maps: medians in the mask, flagged share, mask volume.

    Returns a dict such as ``{"CBF median": 48.2, "flagged %": 1.3, "mask ml": 1350.0}``
    (only the maps present). Means in grey/white matter need a segmentation: pass them as a
    row's ``values``.
    """
    return _summary(load_run(out_dir, prefix))


def _summary(run: Any) -> dict[str, float]:
    """:func:`summarize_run` of a loaded run (:func:`gpuperf.report.collect.load_run`)."""
    out: dict[str, float] = {}
    for label, name, stat in SUMMARY_VALUES:
        m = run.maps.get(name)
        if m is None:
            continue
        sel = run.mask if run.mask is not None else np.ones(m.data.shape, bool)
        out[label] = map_stats(m.data[sel])[stat]
    flagged, total = checks.flagged_count(run)
    if total:
        out["flagged %"] = 100.0 * flagged / total
    out["mask ml"] = checks.mask_volume_ml(run)
    return out


def precompute_row(out_dir: str | PathLike, prefix: str) -> dict[str, Any]:
    """A subject's numbers and thumbnail for the cohort page, from its maps, computed when its
    report is written (``gpuperf run`` does, in its report worker) instead of when the page is:
    ``{"values": {...}, "thumbnail": PNG bytes or None}``, or ``{"error": message}`` when the
    maps cannot be read. Pass it as a row's ``precomputed`` (:data:`ROW_FORMAT`)."""
    try:
        run = load_run(out_dir, prefix)  # once for the numbers and the thumbnail
        return {"values": _summary(run), "thumbnail": _thumbnail(run)}
    except Exception as exc:  # one unreadable subject must not hide the others
        return {"error": str(exc)}


def _thumbnail(run: Any) -> bytes | None:
    m = run.maps.get("cbf")
    if m is None:
        return None
    png, _ = figures.montage(
        m.data, run.mask, run.affine, run.zooms_mm, "cbf", m.units, max_slices=1, panel_px=96
    )
    return png


def write_cohort_report(
    out_dir: str | PathLike,
    rows: Sequence[Mapping[str, Any]],
    *,
    filename: str = "cohort_report.html",
    overwrite: bool = False,
    title: str = "gpuperf cohort report",
) -> Path:
    """Write the cohort summary page ``<out_dir>/<filename>``.

    One row per subject with a CBF thumbnail, key numbers, status and a relative link to the
    subject's report; a number whose robust z-score (:func:`robust_z`, over the subjects with
    status "ok") exceeds :data:`OUTLIER_Z` in magnitude, and that differs from the median of
    those subjects by more than :data:`OUTLIER_MIN_REL` of it, is flagged and its row
    highlighted.

    Parameters
    ----------
    out_dir : path-like
        Folder of the page (links to subject reports are relative to it).
    rows : sequence of dict
        See :data:`ROW_FORMAT`. A subject with ``out_dir`` and ``prefix`` gets its thumbnail,
        computed numbers (:func:`summarize_run`) and report link from its folder; unreadable
        folders are noted in the row, not raised.
    filename : str
    overwrite : bool
        Replace an existing page (otherwise an error).

    Returns
    -------
    Path
    """
    out_dir = Path(out_dir)
    target = out_dir / filename
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: cohort report exists; pass --overwrite to replace it")
    entries = []
    for i, row in enumerate(rows):
        if "subject" not in row:
            raise InputError(None, f"rows[{i}].subject", "every cohort row needs a subject")
        entries.append(_entry(out_dir, row))
    columns: list[str] = []
    for e in entries:
        columns += [k for k in e["values"] if k not in columns]
    ok = np.array([e["status"].lower() == "ok" for e in entries], dtype=bool)
    zs: dict[str, np.ndarray] = {}
    for col in columns:
        vals = np.array([_num(e["values"].get(col)) for e in entries])
        vals_ok = np.where(ok, vals, np.nan)
        if np.isfinite(vals_ok).sum() >= MIN_SUBJECTS_FOR_OUTLIERS:
            z = robust_z(vals_ok)
            med = np.nanmedian(vals_ok)
            small = np.abs(vals_ok - med) <= OUTLIER_MIN_REL * abs(med)
            zs[col] = np.where(small, 0.0, z)
        else:
            zs[col] = np.full(len(entries), np.nan)
    n_out = 0
    lines = [
        "<table>",
        "<tr><th>subject</th><th>CBF</th><th>status</th>"
        + "".join(f"<th>{esc(c)}</th>" for c in columns)
        + "<th>report</th><th>notes</th></tr>",
    ]
    for i, e in enumerate(entries):
        flags = [c for c in columns if np.isfinite(zs[c][i]) and abs(zs[c][i]) > OUTLIER_Z]
        n_out += bool(flags)
        cls = ' class="outlier"' if flags else ""
        thumb = img(e["thumb"], f"thumbnail {e['subject']}", width=96) if e["thumb"] else ""
        cells = [
            f"<td>{esc(e['subject'])}</td>",
            f"<td>{thumb}</td>",
            f"<td>{esc(e['status'])}</td>",
        ]
        for c in columns:
            v = e["values"].get(c)
            z = zs[c][i]
            if c in flags:
                cells.append(
                    f'<td class="num flag" title="robust z = {z:.1f}">{esc(fmt(v))}'
                    f" (z={z:.1f})</td>"
                )
            else:
                cells.append(f'<td class="num">{esc(fmt(v)) if v is not None else ""}</td>')
        link = (
            f'<a href="{esc(e["link"])}">report</a>'
            if e["link"]
            else '<span class="muted">none</span>'
        )
        notes = list(e["notes"]) + ([f"outlier: {', '.join(flags)}"] if flags else [])
        cells += [f"<td>{link}</td>", f"<td>{esc('; '.join(notes))}</td>"]
        lines.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    n_fail = int((~ok).sum())
    summary = [
        box(
            "warn" if n_fail else "ok",
            f"{len(entries)} subjects: {len(entries) - n_fail} ok, {n_fail} not ok",
        ),
        box(
            "warn" if n_out else "ok",
            f"{n_out} subject(s) with an outlying number (|robust z| &gt; {OUTLIER_Z:g} and more "
            f"than {100 * OUTLIER_MIN_REL:g}% from the median, over the ok subjects when at "
            f"least {MIN_SUBJECTS_FOR_OUTLIERS} have the number)",
        ),
    ]
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    html_text = page(
        title,
        "cohort",
        [*summary, *lines],
        subtitle=f"generated {esc(when)} by gpuperf {esc(__version__)}",
    )
    atomic_write_bytes(target, html_text.encode("utf-8"))
    return target


def rows_from_jobs(out_dir: str | PathLike, results: Sequence[Any]) -> list[dict[str, Any]]:
    """Cohort rows from job results (duck-typed ``gpuperf.cohort`` ``JobResult`` objects).

    Each result needs ``job_id``, ``status`` ("done", "skipped" or "failed"), ``outputs``
    (paths relative to ``out_dir``) and ``error``. A job's run is found from its
    ``*_cbf.nii.gz`` output; "done" and "skipped" jobs are "ok". A result's ``cohort_row``
    (:func:`precompute_row`, made with its report) becomes the row's ``precomputed``.
    """
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    for r in results:
        row: dict[str, Any] = {
            "subject": str(r.job_id),
            "status": "failed" if r.status == "failed" else "ok",
        }
        if getattr(r, "error", None):
            row["message"] = str(r.error)
        for rel in getattr(r, "outputs", []) or []:
            name = Path(str(rel)).name
            if name.endswith("_cbf.nii.gz"):
                row["out_dir"] = (out_dir / str(rel)).parent
                row["prefix"] = name[: -len("_cbf.nii.gz")]
                break
        if row.get("prefix") and getattr(r, "cohort_row", None):  # made with the report
            row["precomputed"] = r.cohort_row
        rows.append(row)
    return rows


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _entry(page_dir: Path, row: Mapping[str, Any]) -> dict[str, Any]:
    e: dict[str, Any] = {
        "subject": str(row["subject"]),
        "status": str(row.get("status", "ok")),
        "values": {},
        "thumb": None,
        "link": None,
        "notes": [],
    }
    if row.get("message"):
        e["notes"].append(str(row["message"]))
    report = Path(row["report"]) if row.get("report") else None
    if row.get("out_dir") and row.get("prefix"):
        sub_dir, prefix = Path(row["out_dir"]), str(row["prefix"])
        if report is None:
            report = report_path(sub_dir, prefix)
        pre = row.get("precomputed") or precompute_row(sub_dir, prefix)
        if "error" in pre:
            e["notes"].append(f"outputs unreadable: {pre['error']}")
        else:
            e["values"].update(pre["values"])
            e["thumb"] = pre["thumbnail"]
    e["values"].update(dict(row.get("values", {}) or {}))
    if report is not None:
        if report.exists():
            rel = Path(os.path.relpath(report.resolve(), page_dir.resolve())).as_posix()
            e["link"] = quote(rel)
        else:
            e["notes"].append("no report file")
    return e


# -- the group page (written by the group stage) ------------------------------------------------
#: Columns of the group statistics table (``gpuperf.cohort.compare`` writes it).
STATS_COLUMNS = (
    "modality",
    "session",
    "map",
    "region",
    "measure",
    "group",
    "reference_group",
    "n",
    "n_reference",
    "mean",
    "mean_reference",
    "difference",
    "relative_difference",
    "ci_low",
    "ci_high",
    "effect_size",
    "p_value",
    "covariates",
    "adjusted_difference",
    "adjusted_ci_low",
    "adjusted_ci_high",
    "adjusted_p_value",
)
#: Statistics-table columns the group page leaves out (the TSV has them all).
_NOT_ON_PAGE = (
    "reference_group",
    "difference",
    "covariates",
    "adjusted_ci_low",
    "adjusted_ci_high",
)
#: Statistics-table columns shown on the group page.
GROUP_PAGE_STATS = tuple(c for c in STATS_COLUMNS if c not in _NOT_ON_PAGE)


def group_outliers(values: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Subjects whose value is an outlier *within its group*: ``{subject: robust z}``.

    Same rule as the cohort page: ``|robust z| > OUTLIER_Z`` and more than
    ``OUTLIER_MIN_REL`` from the group median, in groups of at least
    ``MIN_SUBJECTS_FOR_OUTLIERS`` subjects with a finite value.
    """
    out: dict[str, float] = {}
    for g in sorted(set(groups.get(s, "") for s in values)):
        subs = [s for s in values if groups.get(s, "") == g]
        v = np.array([_num(values[s]) for s in subs])
        if np.isfinite(v).sum() < MIN_SUBJECTS_FOR_OUTLIERS:
            continue
        z = robust_z(v)
        med = np.nanmedian(v)
        for s, zi, vi in zip(subs, z, v, strict=True):
            if (
                np.isfinite(zi)
                and abs(zi) > OUTLIER_Z
                and abs(vi - med) > OUTLIER_MIN_REL * abs(med)
            ):
                out[s] = float(zi)
    return out


def _strip_box(
    panels: Sequence[tuple[str, Mapping[str, Sequence[float]], Sequence[tuple[str, float]]]],
    ylabel: str,
    title: str,
) -> bytes:
    """One panel per region: a box per group with the subjects' values as jittered points;
    outliers (given per group as (group, value)) are drawn as red crosses."""
    n = len(panels)
    fig = figures._figure(min(2.2 * n + 0.6, 14.0), 2.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    rng = np.random.default_rng(0)  # deterministic jitter: identical pages for identical data
    for ax, (region, by_group, flagged) in zip(axes, panels, strict=True):
        names = list(by_group)
        data = [np.asarray([_num(v) for v in by_group[g]], dtype=float) for g in names]
        data = [d[np.isfinite(d)] for d in data]
        ax.boxplot(data, widths=0.5, showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.plot(i + rng.uniform(-0.12, 0.12, d.size), d, "o", ms=3, alpha=0.7, color="tab:blue")
        for g, v in flagged:
            if g in names:
                ax.plot(names.index(g) + 1, v, "x", color="red", ms=7, mew=2)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=7)
        ax.set_title(region, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return figures._png(fig)


def write_group_report(
    out_dir: str | PathLike,
    rows: Sequence[Mapping[str, Any]],
    groups: Mapping[str, str],
    *,
    stats_rows: Sequence[Mapping[str, Any]] = (),
    lesion_rows: Sequence[Mapping[str, Any]] = (),
    filename: str = "group_report.html",
    title: str = "gpuperf group report",
) -> Path:
    """Write the group page ``<out_dir>/<filename>`` (replaced when it exists).

    Parameters
    ----------
    out_dir : path-like
    rows : sequence of dict
        Rows of the group table (``subject, session, modality, region, map, units, mean,
        rel_mean, reference_region``, ...).
    groups : dict of str to str
        ``{"sub-01": "control", ...}``; subjects missing from it are in group "n/a".
    stats_rows, lesion_rows : sequence of dict
        Rows of ``group_stats.tsv`` and ``group_lesions.tsv``.

    Returns
    -------
    Path

    Notes
    -----
    Per modality x map: strip/box plots of the region means per group (and of the values
    relative to the reference region); subjects outlying within their group
    (:func:`group_outliers`) are drawn as red crosses and listed. Lesions: the lesion and
    perilesional-ring medians relative to the reference region, enhancing vs non-enhancing.
    """
    out_dir = Path(out_dir)
    target = out_dir / filename
    body: list[str] = []
    series: dict[tuple, dict[str, dict[str, float]]] = {}
    units: dict[tuple, str] = {}
    for r in rows:
        for measure in ("mean", "rel_mean"):
            v = _num(r.get(measure))
            if measure == "rel_mean" and not r.get("reference_region"):
                continue
            key = (r["modality"], r.get("session"), r["map"], measure)
            series.setdefault(key, {}).setdefault(r["region"], {})[r["subject"]] = v
            units[key] = "relative" if measure == "rel_mean" else str(r.get("units", ""))
    flagged_lines = []
    plots = []
    for key in sorted(series, key=lambda k: tuple(str(x) for x in k)):
        mod, ses, mp, measure = key
        panels = []
        for region, values in sorted(series[key].items()):
            by_group: dict[str, list[float]] = {}
            for s, v in sorted(values.items()):
                by_group.setdefault(groups.get(s, "n/a"), []).append(v)
            outl = group_outliers(values, groups)
            for s, z in outl.items():
                flagged_lines.append(
                    f"{s} ({groups.get(s, 'n/a')}): {mod} {mp} {measure} in {region} = "
                    f"{fmt(values[s])} (robust z {z:.1f})"
                )
            panels.append((region, by_group, [(groups.get(s, "n/a"), values[s]) for s in outl]))
        if panels:
            what = "relative to the reference region" if measure == "rel_mean" else units[key]
            name = f"{mod} {mp}" + (f" {ses}" if ses else "")
            plots.append(
                figure(
                    _strip_box(panels, what, f"{name}: region {measure} per subject"),
                    f"{name} {measure} per group",
                )
            )
    body.append(
        box(
            "warn" if flagged_lines else "ok",
            f"{len(flagged_lines)} value(s) outlying within their group (|robust z| &gt; "
            f"{OUTLIER_Z:g} and more than {100 * OUTLIER_MIN_REL:g}% from the group median)",
        )
    )
    if flagged_lines:
        body.append("<ul>" + "".join(f"<li>{esc(t)}</li>" for t in flagged_lines) + "</ul>")
    if stats_rows:
        body.append("<h2>Group comparisons</h2>")
        body.append(
            '<p class="muted">Welch 95% CI and p value; effect size: Hedges\' g; adjusted: '
            "OLS with the covariates. All rows are in group_stats.tsv.</p>"
        )
        body.append(
            table(
                [[r.get(c) for c in GROUP_PAGE_STATS] for r in stats_rows],
                header=GROUP_PAGE_STATS,
                numeric=[
                    c not in ("modality", "session", "map", "region", "measure", "group")
                    for c in GROUP_PAGE_STATS
                ],
            )
        )
    body.append("<h2>Region values per group</h2>")
    body += plots
    if lesion_rows:
        body.append("<h2>Lesions</h2>")
        body += _lesion_section(lesion_rows)
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    html_text = page(
        title, "cohort", body, subtitle=f"generated {esc(when)} by gpuperf {esc(__version__)}"
    )
    atomic_write_bytes(target, html_text.encode("utf-8"))
    return target


def _lesion_section(lesion_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    by_map: dict[tuple, dict[str, list[float]]] = {}
    for r in lesion_rows:
        kind = {1: "enhancing", 0: "non-enhancing"}.get(_enh(r.get("enhancing")), "lesion")
        d = by_map.setdefault((r["modality"], r["map"]), {})
        d.setdefault(kind, []).append(_num(r.get("rel_median")))
        d.setdefault("ring", []).append(_num(r.get("ring_rel_median")))
    summary = []
    for (mod, mp), d in sorted(by_map.items()):
        for kind, v in d.items():
            a = np.asarray(v, dtype=float)
            a = a[np.isfinite(a)]
            summary.append([mod, mp, kind, a.size, float(np.median(a)) if a.size else np.nan])
    out.append(
        '<p class="muted">Lesion and perilesional-ring medians relative to the reference '
        "region (1 = as the reference). All rows are in group_lesions.tsv.</p>"
    )
    out.append(
        table(
            summary,
            header=("modality", "map", "lesions", "n", "median of rel_median"),
            numeric=[False, False, False, True, True],
        )
    )
    for (mod, mp), d in sorted(by_map.items()):
        png = _strip_box([("lesions", d, [])], "median / reference", f"{mod} {mp}: lesions")
        out.append(figure(png, f"{mod} {mp} lesion ratios"))
    return out


def _enh(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
