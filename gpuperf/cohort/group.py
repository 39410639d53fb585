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
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.cohort.bids import MODALITIES, modality_tagged, parse_entities, strip_nifti
from gpuperf.cohort.jobs import MARKER_PREFIX
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
    """

    table: Path
    rows: list[dict[str, Any]]
    problems: list[tuple[str, str]] = field(default_factory=list)

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
    masks_dir: str | PathLike | None = None,
    mask_descs: list[str] | None = None,
    atlas: str | PathLike | None = None,
    atlas_labels: str | PathLike | None = None,
    reference_region: str | None = None,
    maps: list[str] | None = None,
    participant_label: list[str] | None = None,
    session_label: list[str] | None = None,
    modality: list[str] | None = None,
    table_name: str = "group_perfusion",
    reporter: Any = None,
) -> GroupResult:
    """Write the cohort table ``<out_dir>/<table_name>.tsv`` (+ ``.json`` column descriptions).

    Parameters
    ----------
    out_dir : path-like
        The derivatives folder of a participant-stage run.
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
    participant_label, session_label, modality : list of str, optional
        Restrict the table.

    Returns
    -------
    GroupResult
        ``problems`` lists subjects or regions skipped (grid mismatch, unreadable file,
        missing reference region); ``exit_code`` is 1 when there are any.
    """
    from gpuperf.io.nifti import load_image
    from gpuperf.io.outputs import OutputWriter
    from gpuperf.progress import ensure_reporter

    rep = ensure_reporter(reporter)
    out_dir = Path(out_dir)
    mdir = None if masks_dir is None else Path(masks_dir)
    atlas_p = None if atlas is None else Path(atlas)
    labels = None if atlas_labels is None else read_labels(atlas_labels)
    if mdir is None and atlas_p is None:
        raise InputError(
            None, "regions", "give masks_dir (per-subject masks/atlases) and/or an atlas"
        )
    if mdir is not None and not mdir.is_dir():
        raise InputError(mdir, "masks_dir", "folder does not exist")
    subs = None if not participant_label else {s.removeprefix("sub-") for s in participant_label}
    sess = None if not session_label else {s.removeprefix("ses-") for s in session_label}
    markers = sorted(out_dir.glob(f"sub-*/**/{MARKER_PREFIX}*.json"))
    if not markers:
        raise GpuperfError(
            f"{out_dir}: no completed participant-stage job (run the 'participant' level first)"
        )
    rows: list[dict[str, Any]] = []
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
            regions = _load_regions(
                first, _subject_masks(mdir, sub, ses, mask_descs, mod), s_atlas, labels
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
    if not rows:
        raise GpuperfError(f"{out_dir}: no row for the group table; problems: {problems}")
    cols = {c: [("n/a" if r[c] is None else r[c]) for r in rows] for c in COLUMNS}
    writer = OutputWriter(out_dir, "", overwrite=True)
    with writer:
        table = writer.add_tsv(table_name, cols)
        writer.add_json(table_name, {c: {"Description": d} for c, d in COLUMN_DESCRIPTIONS.items()})
        writer.commit()
    for job, msg in problems:
        rep.log(f"[yellow]group:[/] {job}: {msg}")
    return GroupResult(table, rows, problems)
