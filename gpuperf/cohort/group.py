"""The group stage: one tidy table of regional perfusion values over the cohort.

Reads the maps of every *complete* job of a participant-stage run (from the jobs' done-markers,
so half-written subjects never enter the table) and summarises each map inside regions:

- per-subject masks in a derivatives folder,
  ``sub-XX/[ses-YY/]**/sub-XX_[ses-YY_]*desc-<name>_mask.nii.gz``
  (e.g. ``desc-lesion``, ``desc-NAWM``): one region per mask, named ``<name>``;
- a label atlas in the subjects' space: one image for everyone (``atlas``) or per-subject
  ``*_dseg.nii.gz`` files in the masks folder, with a BIDS lookup table (TSV with columns
  ``index`` and ``name``; ``atlas_labels`` or the ``*_dseg.tsv`` beside the image).

Relative values (e.g. rCBV, rCBF) divide a region's mean and median by those of a reference
region of the same subject, session, modality and map (normal-appearing white matter in the
multiple-sclerosis perfusion literature, e.g. Law et al., Radiology 2004).

Table columns (also described in the JSON sidecar written beside the TSV, as BIDS asks):
``subject, session, modality, region, map, units, mean, median, sd, n_voxels,
reference_region, rel_mean, rel_median``. Missing values are ``n/a``. Only finite map values
are counted (maps hold NaN where a voxel was outside the mask or failed its fit).

Beside it, when the data allow:

- ``group_lesions.tsv``: one row per subject x lesion x map (:mod:`gpuperf.cohort.lesions`),
  when a subject has a ``desc-<lesion_desc>`` mask;
- ``group_stats.tsv`` and ``group_correlations.tsv``: groups of ``participants.tsv`` against a
  reference group, and continuous participant columns against the values
  (:mod:`gpuperf.cohort.compare`), when a participants table with a group column is given.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.cohort import compare, lesions
from gpuperf.cohort.bids import MODALITIES, modality_tagged, parse_entities, strip_nifti
from gpuperf.cohort.jobs import MARKER_PREFIX
from gpuperf.cohort.options import GroupOptions
from gpuperf.errors import GpuperfError, InputError
from gpuperf.io.nifti import read_sidecar

COLUMNS = (
    "subject",
    "session",
    "modality",
    "region",
    "map",
    "units",
    "mean",
    "median",
    "sd",
    "n_voxels",
    "reference_region",
    "rel_mean",
    "rel_median",
)
#: The cohort table's columns (``gpuperf.cohort.GROUP_COLUMNS``).
GROUP_COLUMNS = COLUMNS
COLUMN_DESCRIPTIONS = {
    "subject": "Subject, as in participants.tsv ('sub-<label>': stays text in pandas).",
    "session": "Session ('ses-<label>'); n/a for datasets without sessions.",
    "modality": "Acquisition the map comes from: 'dsc' or 'asl'.",
    "region": "Region name: the desc of a per-subject mask, or an atlas label name.",
    "map": "Map name: the end of the map file name (cbf, cbv, mtt, tmax, att, ...).",
    "units": "Units of the map (from its JSON sidecar).",
    "mean": "Mean of the finite map values in the region.",
    "median": "Median of the finite map values in the region.",
    "sd": "Sample standard deviation (ddof=1) of the finite map values in the region.",
    "n_voxels": "Number of region voxels with a finite map value.",
    "reference_region": "Region the relative values refer to; n/a when none was given.",
    "rel_mean": "mean / mean of the reference region (same subject, session, modality, map).",
    "rel_median": "median / median of the reference region.",
}
LESION_COLUMNS = (
    "subject",
    "session",
    "modality",
    "lesion",
    "n_voxels",
    "volume_ml",
    "enhancing",
    "enhancing_fraction",
    "map",
    "units",
    "mean",
    "median",
    "n_finite",
    "rel_median",
    "ring_n_voxels",
    "ring_mean",
    "ring_median",
    "ring_rel_median",
    "reference_region",
)
LESION_DESCRIPTIONS = {
    "subject": "Subject ('sub-<label>').",
    "session": "Session ('ses-<label>'); n/a without sessions.",
    "modality": "Acquisition the map comes from: 'dsc' or 'asl'.",
    "lesion": "Lesion number: connected component (26-connectivity) of the lesion mask, or "
    "the label of a lesion label map.",
    "n_voxels": "Voxels of the lesion.",
    "volume_ml": "Lesion volume (ml).",
    "enhancing": "1 when the lesion overlaps the enhancing mask, 0 when not; n/a without one.",
    "enhancing_fraction": "Fraction of the lesion's voxels inside the enhancing mask.",
    "map": "Map name.",
    "units": "Units of the map.",
    "mean": "Mean of the finite map values in the lesion.",
    "median": "Median of the finite map values in the lesion.",
    "n_finite": "Lesion voxels with a finite map value.",
    "rel_median": "median / median of the reference region (same subject, session, map).",
    "ring_n_voxels": "Voxels of the perilesional ring with a finite map value (ring: voxels "
    "within ring_mm of the lesion that are in no lesion).",
    "ring_mean": "Mean of the map in the perilesional ring.",
    "ring_median": "Median of the map in the perilesional ring.",
    "ring_rel_median": "ring_median / median of the reference region.",
    "reference_region": "Region of the relative values; n/a when none.",
}
#: Mask names (``desc``) not used as regions unless asked for: AIF voxels are not tissue.
DEFAULT_EXCLUDED_MASKS = ("aif",)
#: Map names skipped by default: not perfusion quantities.
DEFAULT_EXCLUDED_MAPS = ("status", "mask", "aifmask", "aif", "threshold", "oi", "residual")


@dataclass
class GroupResult:
    """Outcome of :func:`group_table`.

    Attributes
    ----------
    table : Path
        The TSV.
    rows : list of dict
        The rows written.
    problems : list of (str, str)
        (subject/job, message) for subjects or regions that could not be used.
    lesions_table, stats_table, correlations_table : Path or None
        ``group_lesions.tsv``, ``group_stats.tsv``, ``group_correlations.tsv`` when written,
        with their rows in ``lesion_rows``, ``stats_rows``, ``correlation_rows``.
    report : Path or None
        ``group_report.html`` when written.
    """

    table: Path
    rows: list[dict[str, Any]]
    problems: list[tuple[str, str]] = field(default_factory=list)
    lesions_table: Path | None = None
    lesion_rows: list[dict[str, Any]] = field(default_factory=list)
    stats_table: Path | None = None
    stats_rows: list[dict[str, Any]] = field(default_factory=list)
    correlations_table: Path | None = None
    correlation_rows: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


def read_labels(path: str | PathLike) -> dict[int, str]:
    """A BIDS segmentation lookup table (TSV with columns ``index`` and ``name``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", "atlas label table does not exist")
    with open(p, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "index" not in rows[0] or "name" not in rows[0]:
        raise InputError(p, "columns", "expected a TSV with columns 'index' and 'name'")
    out = {}
    for i, r in enumerate(rows, start=2):
        try:
            out[int(r["index"])] = r["name"]
        except (TypeError, ValueError) as exc:
            raise InputError(p, "index", f"row {i}: not an integer: {r['index']!r}") from exc
    return out


def _subject_folder(root: Path, sub: str, ses: str | None) -> Path:
    folder = root / f"sub-{sub}"
    return folder / f"ses-{ses}" if ses else folder


def _subject_masks(
    masks_dir: Path | None,
    sub: str,
    ses: str | None,
    descs: Iterable[str] | None,
    modality: str,
) -> dict[str, Path]:
    if masks_dir is None:
        return {}
    folder = _subject_folder(masks_dir, sub, ses)
    if not folder.is_dir():
        return {}
    head = f"sub-{sub}_" + (f"ses-{ses}_" if ses else "")
    want = None if descs is None else set(descs)
    skip = () if descs is not None else DEFAULT_EXCLUDED_MASKS
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob(f"{head}*_mask.nii*")):
        desc = parse_entities(p.name)[0].get("desc")
        if desc and (want is None or desc in want) and desc not in skip:
            if _other_modality(p.name, modality):
                continue  # made for the other acquisition's grid
            if desc not in out or modality_tagged(p.name, modality):
                out[desc] = p
    return out


def _subject_atlas(masks_dir: Path | None, sub: str, ses: str | None, modality: str) -> Path | None:
    if masks_dir is None:
        return None
    folder = _subject_folder(masks_dir, sub, ses)
    head = f"sub-{sub}_" + (f"ses-{ses}_" if ses else "")
    hits = sorted(folder.rglob(f"{head}*_dseg.nii*")) if folder.is_dir() else []
    exact = [h for h in hits if modality_tagged(h.name, modality)]
    hits = exact or [h for h in hits if not _other_modality(h.name, modality)]
    return hits[0] if hits else None


def _other_modality(name: str, modality: str) -> bool:
    ents, _ = parse_entities(name)
    tags = {ents.get("acq", "").lower(), ents.get("space", "").lower()} & set(MODALITIES)
    return bool(tags) and modality not in tags


def _stats(values: np.ndarray) -> dict[str, Any]:
    n = int(values.size)
    if n == 0:
        return {"mean": np.nan, "median": np.nan, "sd": np.nan, "n_voxels": 0}
    v = values.astype(np.float64)
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "sd": float(v.std(ddof=1)) if n > 1 else np.nan,
        "n_voxels": n,
    }


def _map_name(path: Path, modality: str) -> str:
    """``sub-01_desc-dsc_cbf.nii.gz`` -> ``cbf``; ``..._desc-asl_cbf_stderr.nii.gz`` ->
    ``cbf_stderr`` (the runner's prefix ends in ``desc-<modality>``)."""
    stem = strip_nifti(path.name)
    tag = f"desc-{modality}_"
    return stem.split(tag, 1)[1] if tag in stem else stem.rsplit("_", 1)[-1]


def _default_map(name: str) -> bool:
    low = name.lower()
    return low not in DEFAULT_EXCLUDED_MAPS and not low.endswith(("_stderr", "_sd", "mask"))


def _load_regions(
    ref_img: Any,
    masks: dict[str, Path],
    atlas: Path | None,
    labels: dict[int, str] | None,
) -> dict[str, np.ndarray]:
    from gpuperf.io.nifti import check_same_grid, load_image

    regions: dict[str, np.ndarray] = {}
    for name, p in masks.items():
        m = load_image(p, ndim=(3,), role="region mask")
        check_same_grid(ref_img, m)
        regions[name] = np.nan_to_num(m.data, nan=0.0) > 0
    if atlas is not None:
        a = load_image(atlas, ndim=(3,), role="atlas")
        check_same_grid(ref_img, a)
        lab = np.rint(np.nan_to_num(a.data, nan=0.0)).astype(np.int64)
        if labels is None:
            tsv = atlas.with_name(strip_nifti(atlas.name) + ".tsv")
            labels = read_labels(tsv) if tsv.is_file() else None
        present = np.unique(lab[lab > 0])
        for idx in present:
            name = labels.get(int(idx), f"label-{idx}") if labels else f"label-{idx}"
            regions[name] = lab == idx
    return regions


def group_table(
    out_dir: str | PathLike,
    *,
    participant_label: Sequence[str] | None = None,
    session_label: Sequence[str] | None = None,
    modality: Sequence[str] | None = None,
    reporter: Any = None,
    options: GroupOptions | None = None,
    **settings: Any,
) -> GroupResult:
    """Write the cohort table ``<out_dir>/<table_name>.tsv`` (+ ``.json`` column descriptions).

    Parameters
    ----------
    out_dir : path-like
        The derivatives folder of a participant-stage run.
    participant_label, session_label, modality : list of str, optional
        Restrict the table.
    reporter : Reporter, optional
    options : GroupOptions, optional
        The settings below (:class:`gpuperf.cohort.options.GroupOptions`, the ``[group]``
        table of the configuration); each may be given as a keyword instead.
    masks_dir : path-like, optional
        Derivatives folder with per-subject masks (``*desc-<name>_mask.nii.gz``) and/or
        per-subject atlases (``*_dseg.nii.gz``), on the grid of the subject's maps.
    mask_descs : list of str, optional
        Only these mask names (default: every mask found except ``desc-aif``).
    atlas, atlas_labels : path-like, optional
        One label image for all subjects (already in the subjects' space) and its lookup table.
    reference_region : str, optional
        Region for relative values (e.g. ``"NAWM"``).
    maps : list of str, optional
        Map names to summarise (default: every 3D map except status/mask maps).
    participants : path-like, optional
        BIDS ``participants.tsv``; with it, ``group_stats.tsv`` (when it has the ``group_by``
        column) and ``group_correlations.tsv`` (when it has continuous columns) are written.
    group_by : str, optional
        participants.tsv column of the groups (default ``group`` when that column exists).
    reference_group : str, optional
        Group the others are compared with (default ``control`` when present, else the first
        group in sorted order, with a warning).
    covariates : list of str, optional
        participants.tsv columns (e.g. ``age``, ``sex``) of the adjusted difference, an OLS
        model ``value ~ 1 + group + covariates`` (text columns are dummy-coded).
    lesion_desc, enhancing_desc : str
        Mask names of the lesion mask (or lesion label map) and of the enhancing-lesion mask;
        subjects with a lesion mask get rows in ``group_lesions.tsv``.
    lesion_ring_mm : float, optional
        Radius of the perilesional ring (mm; default 3), see :mod:`gpuperf.cohort.lesions`.
    table_name : str
        The table's file name without ``.tsv`` (default ``group_perfusion``).
    report : bool
        Write ``group_report.html`` (per-group plots, statistics, lesion ratios, outliers).

    Returns
    -------
    GroupResult
        ``problems`` lists subjects or regions skipped (grid mismatch, unreadable file,
        missing reference region); ``exit_code`` is 1 when there are any.
    """
    from gpuperf.io.nifti import load_image
    from gpuperf.io.outputs import OutputWriter
    from gpuperf.progress import ensure_reporter

    opts = GroupOptions.resolve(options, settings, "group_table")
    ring_mm = lesions.RING_MM if opts.lesion_ring_mm is None else opts.lesion_ring_mm
    reference_region, maps, covariates = opts.reference_region, opts.maps, opts.covariates
    rep = ensure_reporter(reporter)
    out_dir = Path(out_dir)
    mdir = None if opts.masks_dir is None else Path(opts.masks_dir)
    atlas_p = None if opts.atlas is None else Path(opts.atlas)
    labels = None if opts.atlas_labels is None else read_labels(opts.atlas_labels)
    if mdir is None and atlas_p is None:
        raise InputError(
            None, "regions", "give masks_dir (per-subject masks/atlases) and/or an atlas"
        )
    if mdir is not None and not mdir.is_dir():
        raise InputError(mdir, "masks_dir", "folder does not exist")
    part = None if opts.participants is None else compare.read_participants(opts.participants)
    group_by, reference_group = opts.group_by, opts.reference_group
    if part is not None:
        group_by, reference_group = _groups(part, group_by, reference_group, rep)
    elif group_by or reference_group or covariates:
        raise InputError(None, "participants", "group comparisons need a participants.tsv")
    subs = None if not participant_label else {s.removeprefix("sub-") for s in participant_label}
    sess = None if not session_label else {s.removeprefix("ses-") for s in session_label}
    markers = sorted(out_dir.glob(f"sub-*/**/{MARKER_PREFIX}*.json"))
    if not markers:
        raise GpuperfError(
            f"{out_dir}: no completed participant-stage job (run the 'participant' level first)"
        )
    rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for mk in rep.track(markers, total=len(markers), description="group"):
        try:
            marker = json.loads(mk.read_text(encoding="utf-8"))
            sub, ses, mod = marker["Subject"], marker.get("Session"), marker["Modality"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append((mk.name, f"unreadable done-marker: {exc}"))
            continue
        if (subs is not None and sub not in subs) or (sess is not None and ses not in sess):
            continue
        if modality and mod not in modality:
            continue
        job = marker.get("JobId", mk.name)
        map_files = []
        for rel in marker.get("Outputs", {}):
            p = out_dir / rel
            if not p.name.endswith(".nii.gz"):
                continue
            name = _map_name(p, mod)
            if (maps is None and _default_map(name)) or (maps is not None and name in maps):
                map_files.append((name, p))
        if not map_files:
            problems.append((job, "no map to summarise"))
            continue
        try:
            first = load_image(map_files[0][1], role="map")
            s_atlas = atlas_p or _subject_atlas(mdir, sub, ses, mod)
            s_masks = _subject_masks(mdir, sub, ses, opts.mask_descs, mod)
            regions = _load_regions(first, s_masks, s_atlas, labels)
            les = _subject_lesions(
                first, mdir, sub, ses, mod, opts.lesion_desc, opts.enhancing_desc, ring_mm
            )
        except GpuperfError as exc:
            problems.append((job, str(exc)))
            continue
        if not regions:
            problems.append((job, "no region mask or atlas found for this subject"))
            continue
        if reference_region and reference_region not in regions:
            problems.append((job, f"reference region {reference_region!r} not found"))
        for name, p in map_files:
            img = first if p == map_files[0][1] else load_image(p, role="map")
            if img.data.ndim != 3:
                continue
            units = read_sidecar(p).get("Units", "n/a")
            finite = np.isfinite(img.data)
            stats = {r: _stats(img.data[m & finite]) for r, m in regions.items()}
            ref = stats.get(reference_region) if reference_region else None
            for region, st in stats.items():
                row = {
                    "subject": f"sub-{sub}",
                    "session": f"ses-{ses}" if ses else None,
                    "modality": mod,
                    "region": region,
                    "map": name,
                    "units": units,
                    **st,
                    "reference_region": reference_region if ref else None,
                    "rel_mean": np.nan,
                    "rel_median": np.nan,
                }
                if ref:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        row["rel_mean"] = float(np.float64(st["mean"]) / ref["mean"])
                        row["rel_median"] = float(np.float64(st["median"]) / ref["median"])
                rows.append(row)
            if les is not None:
                lesion_rows += _lesion_rows(les, img.data, ref, reference_region, row, first)
    if not rows:
        raise GpuperfError(f"{out_dir}: no row for the group table; problems: {problems}")
    res = GroupResult(out_dir / f"{opts.table_name}.tsv", rows, problems, lesion_rows=lesion_rows)
    if part is not None:
        missing = sorted({r["subject"] for r in rows} - set(part))
        if missing:
            problems.append(("participants.tsv", f"no row for {', '.join(missing)}"))
        if group_by is not None and reference_group is not None:
            res.stats_rows = compare.compare_groups(
                rows, part, group_by, reference_group, covariates or ()
            )
        variables = compare.numeric_columns(part, skip=[group_by or "", *(covariates or [])])
        res.correlation_rows = compare.correlate(rows, part, variables, group_by)
    writer = OutputWriter(out_dir, "", overwrite=True)
    with writer:
        _add_table(writer, opts.table_name, rows, COLUMNS, COLUMN_DESCRIPTIONS)
        if lesion_rows:
            res.lesions_table = _add_table(
                writer, "group_lesions", lesion_rows, LESION_COLUMNS, LESION_DESCRIPTIONS
            )
        if res.stats_rows:
            res.stats_table = _add_table(
                writer,
                "group_stats",
                res.stats_rows,
                compare.STATS_COLUMNS,
                compare.STATS_DESCRIPTIONS,
            )
        if res.correlation_rows:
            res.correlations_table = _add_table(
                writer,
                "group_correlations",
                res.correlation_rows,
                compare.CORR_COLUMNS,
                compare.CORR_DESCRIPTIONS,
            )
        writer.commit()
    if opts.report:
        from gpuperf.report.cohort import write_group_report

        groups = {s: rec.get(group_by, "n/a") for s, rec in (part or {}).items() if group_by}
        res.report = write_group_report(
            out_dir,
            rows,
            groups,
            stats_rows=res.stats_rows,
            lesion_rows=lesion_rows,
        )
    for job, msg in problems:
        rep.log(f"[yellow]group:[/] {job}: {msg}")
    return res


def _add_table(
    writer: Any,
    name: str,
    rows: list[dict[str, Any]],
    columns: tuple[str, ...],
    descriptions: dict[str, str],
) -> Path:
    cols = {c: [("n/a" if r.get(c) is None else r[c]) for r in rows] for c in columns}
    path = writer.add_tsv(name, cols)
    writer.add_json(name, {c: {"Description": d} for c, d in descriptions.items()})
    return path


def _groups(
    part: dict[str, dict[str, str]], group_by: str | None, reference: str | None, rep: Any
) -> tuple[str | None, str | None]:
    """Resolve the group column and the reference group (defaults: ``group``, ``control``)."""
    has = {c for rec in part.values() for c in rec}
    if group_by is None:
        if "group" not in has:
            return None, None
        group_by = "group"
    if group_by not in has:
        raise InputError(None, "group_by", f"{group_by!r} is not a column of participants.tsv")
    levels = sorted({rec.get(group_by, "") for rec in part.values()} - {"", "n/a"})
    if reference is None:
        if "control" in levels:
            reference = "control"
        elif levels:
            reference = levels[0]
            rep.warn(f"group: no 'control' group in {group_by!r}; reference group {reference!r}")
        else:
            return group_by, None
    elif reference not in levels:
        raise InputError(
            None, "reference_group", f"{reference!r} is not a value of {group_by!r}: {levels}"
        )
    return group_by, reference


def _subject_lesions(
    ref_img: Any,
    masks_dir: Path | None,
    sub: str,
    ses: str | None,
    modality: str,
    lesion_desc: str,
    enhancing_desc: str,
    ring_mm: float,
) -> tuple[lesions.Lesions, np.ndarray | None] | None:
    """The subject's lesions (and enhancing mask), or None without a lesion mask."""
    from gpuperf.io.nifti import check_same_grid, load_image

    found = _subject_masks(masks_dir, sub, ses, [lesion_desc, enhancing_desc], modality)
    if lesion_desc not in found:
        return None
    m = load_image(found[lesion_desc], ndim=(3,), role="lesion mask")
    check_same_grid(ref_img, m)
    les = lesions.find_lesions(m.data, ref_img.zooms()[:3], ring_mm=ring_mm)
    enh = None
    if enhancing_desc in found:
        e = load_image(found[enhancing_desc], ndim=(3,), role="enhancing mask")
        check_same_grid(ref_img, e)
        enh = np.nan_to_num(e.data, nan=0.0) > 0
    return les, enh


def _lesion_rows(
    found: tuple[lesions.Lesions, np.ndarray | None],
    data: np.ndarray,
    ref: dict[str, Any] | None,
    reference_region: str | None,
    row: dict[str, Any],
    ref_img: Any,
) -> list[dict[str, Any]]:
    les, enh = found
    if les.ids.size == 0:
        return []
    n_vox, vol = lesions.lesion_sizes(les, ref_img.zooms()[:3])
    frac = lesions.overlap_fraction(les, enh) if enh is not None else None
    inside, ring = lesions.lesion_stats(data, les)
    ref_med = np.float64(ref["median"]) if ref else np.nan
    out = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, lid in enumerate(les.ids):
            out.append(
                {
                    "subject": row["subject"],
                    "session": row["session"],
                    "modality": row["modality"],
                    "lesion": int(lid),
                    "n_voxels": int(n_vox[k]),
                    "volume_ml": float(vol[k]),
                    "enhancing": None if frac is None else int(frac[k] > 0),
                    "enhancing_fraction": np.nan if frac is None else float(frac[k]),
                    "map": row["map"],
                    "units": row["units"],
                    "mean": float(inside["mean"][k]),
                    "median": float(inside["median"][k]),
                    "n_finite": int(inside["n_finite"][k]),
                    "rel_median": float(inside["median"][k] / ref_med),
                    "ring_n_voxels": int(ring["n_finite"][k]),
                    "ring_mean": float(ring["mean"][k]),
                    "ring_median": float(ring["median"][k]),
                    "ring_rel_median": float(ring["median"][k] / ref_med),
                    "reference_region": reference_region if ref else None,
                }
            )
    return out
