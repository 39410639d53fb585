"""Finding the perfusion series of a BIDS dataset, with the inheritance principle for sidecars.

A BIDS dataset stores one subject (and optionally one session) per folder:
``sub-<label>/[ses-<label>/]perf/sub-<label>_[ses-<label>_]..._asl.nii.gz``. ASL follows the
specification (section "Arterial Spin Labeling perfusion data"); DSC has no suffix yet, so the
convention in use is ``perf/*_dsc.nii.gz`` listed in ``.bidsignore`` (``dsc_pattern`` changes it).

Sidecar metadata follow the *inheritance principle* (BIDS specification, "The Inheritance
Principle"): a JSON file with the same suffix whose entities are a subset of the data file's
entities applies to it when it sits in the data file's folder or any parent folder up to the
dataset root; the more specific (deeper, then more entities) file wins key by key.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf.errors import InputError
from gpuperf.io.nifti import NIFTI_SUFFIXES, nifti_stem

#: Modalities the cohort runner knows and the default glob (relative to the subject or session
#: folder) that finds each one's series.
DEFAULT_PATTERNS = {"asl": "perf/*_asl.nii*", "dsc": "perf/*_dsc.nii*"}
MODALITIES = tuple(DEFAULT_PATTERNS)

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
_NIFTI = NIFTI_SUFFIXES
strip_nifti = nifti_stem  # ``sub-01_asl.nii.gz`` -> ``sub-01_asl``


def parse_entities(name: str) -> tuple[dict[str, str], str]:
    """Entities and suffix of a BIDS file name.

    Examples
    --------
    >>> parse_entities("sub-01_ses-2_acq-ep_dsc.nii.gz")
    ({'sub': '01', 'ses': '2', 'acq': 'ep'}, 'dsc')
    """
    stem = strip_nifti(name)
    if stem.endswith((".json", ".tsv")):
        stem = stem.rsplit(".", 1)[0]
    parts = stem.split("_")
    entities: dict[str, str] = {}
    suffix = ""
    for i, part in enumerate(parts):
        m = _ENTITY.match(part)
        if m:
            entities[m.group(1)] = m.group(2)
        elif i == len(parts) - 1:
            suffix = part
    return entities, suffix


def inherited_sidecars(data_path: str | PathLike, bids_root: str | PathLike) -> list[Path]:
    """JSON sidecars that apply to ``data_path``, least specific first.

    Parameters
    ----------
    data_path : path-like
        A data file inside ``bids_root``.
    bids_root : path-like
        The dataset root (where ``dataset_description.json`` is).

    Returns
    -------
    list of Path
        Applicable sidecars ordered root -> data folder, and within a folder by the number of
        entities (fewer first), so that later files override earlier ones.
    """
    data_path = Path(data_path)
    root = Path(bids_root).resolve()
    entities, suffix = parse_entities(data_path.name)
    folder = data_path.parent.resolve()
    levels = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        levels.append(folder)
    found: list[Path] = []
    for level in reversed(levels):
        cands = []
        for js in level.glob(f"*{suffix}.json"):
            ents, suf = parse_entities(js.name)
            if suf != suffix:
                continue
            if all(entities.get(k) == v for k, v in ents.items()):
                cands.append((len(ents), js.name, js))
        found.extend(p for _, _, p in sorted(cands))
    return found


def merged_sidecar(data_path: str | PathLike, bids_root: str | PathLike) -> dict[str, Any]:
    """Metadata of ``data_path`` after applying the inheritance principle.

    Raises
    ------
    InputError
        A contributing sidecar is not a JSON object (names the file).
    """
    meta: dict[str, Any] = {}
    for js in inherited_sidecars(data_path, bids_root):
        try:
            obj = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(js, "JSON", f"cannot read sidecar: {exc}") from exc
        if not isinstance(obj, dict):
            raise InputError(js, "JSON", f"expected an object, found {type(obj).__name__}")
        meta.update(obj)
    return meta


@dataclass(frozen=True)
class Job:
    """One series to process: what a worker needs, as file paths only.

    Attributes
    ----------
    subject, session : str, str or None
        Labels without the ``sub-``/``ses-`` prefix.
    modality : {'asl', 'dsc'}
    series : Path
        The 4D series.
    bids_root : Path
    companions : dict of str to Path
        Extra inputs by role: ``aslcontext``, ``m0scan`` (ASL), ``mask`` (brain mask),
        ``aif_mask`` (DSC) when found.
    """

    subject: str
    session: str | None
    modality: str
    series: Path
    bids_root: Path
    companions: dict[str, Path] = field(default_factory=dict, hash=False, compare=False)

    @property
    def stem(self) -> str:
        return strip_nifti(self.series.name)

    @property
    def job_id(self) -> str:
        """Name of the job (logs, markers): the series' entities plus the modality, e.g.
        ``sub-01_ses-1_dsc``; :func:`find_jobs` refuses two series with the same outputs."""
        entities, suffix = parse_entities(self.series.name)
        base = "_".join(f"{k}-{v}" for k, v in entities.items())
        return f"{base}_{self.modality}" if suffix != self.modality else self.stem

    @property
    def prefix(self) -> str:
        """Output prefix: the series' entities plus ``desc-<modality>`` (ASL and DSC maps of one
        subject share suffixes such as ``cbf``)."""
        entities, _ = parse_entities(self.series.name)
        base = "_".join(f"{k}-{v}" for k, v in entities.items() if k != "desc")
        return f"{base}_desc-{self.modality}"

    @property
    def out_subdir(self) -> Path:
        """``sub-XX/[ses-YY/]perf`` inside the derivatives folder."""
        p = Path(f"sub-{self.subject}")
        if self.session:
            p = p / f"ses-{self.session}"
        return p / "perf"


def _labels(values: list[str] | None, prefix: str) -> set[str] | None:
    if not values:
        return None
    return {v[len(prefix) :] if v.startswith(prefix) else v for v in values}


def _find_mask(masks_dir: Path | None, job: Job, desc: str, suffix: str = "mask") -> Path | None:
    """``<masks_dir>/sub-XX/[ses-YY/]**/sub-XX_[ses-YY_]*desc-<desc>_mask.nii*`` (``desc`` may
    be another entity, ``label-GM``, with ``suffix`` ``probseg``)."""
    if "-" not in desc:
        desc = f"desc-{desc}"
    if masks_dir is None:
        return None
    folder = masks_dir / f"sub-{job.subject}"
    if job.session:
        folder = folder / f"ses-{job.session}"
    if not folder.is_dir():
        return None
    head = f"sub-{job.subject}_" + (f"ses-{job.session}_" if job.session else "")
    hits = sorted(
        p
        for p in folder.rglob(f"{head}*{desc}_{suffix}.nii*")
        if p.name.endswith(_NIFTI) and _acq_compatible(p.name, job.series.name)
    )
    if len(hits) > 1:
        # prefer a mask made for this acquisition (``acq-dsc``/``space-asl`` ...)
        exact = [h for h in hits if modality_tagged(h.name, job.modality)]
        hits = exact or hits
    return hits[0] if hits else None


def modality_tagged(name: str, modality: str) -> bool:
    """True when a derivative's ``acq`` or ``space`` entity names ``modality``."""
    ents, _ = parse_entities(name)
    return modality in (ents.get("acq", "").lower(), ents.get("space", "").lower())


def _acq_compatible(mask_name: str, series_name: str) -> bool:
    """A mask with entities (other than desc) that contradict the series' does not apply."""
    m, _ = parse_entities(mask_name)
    s, _ = parse_entities(series_name)
    skip = ("desc", "space", "label")
    return all(
        s.get(k, v) == v
        for k, v in m.items()
        if k not in skip and not (k == "acq" and v.lower() in MODALITIES)
    )


def find_jobs(
    bids_dir: str | PathLike,
    *,
    participant_label: list[str] | None = None,
    session_label: list[str] | None = None,
    modality: list[str] | None = None,
    dsc_pattern: str | None = None,
    asl_pattern: str | None = None,
    masks_dir: str | PathLike | None = None,
    brain_mask_desc: str = "brain",
    aif_mask_desc: str = "aif",
) -> list[Job]:
    """Every series to process in a BIDS dataset, sorted by subject, session, modality, name.

    Parameters
    ----------
    bids_dir : path-like
        Dataset root.
    participant_label, session_label : list of str, optional
        Restrict to these labels (with or without the ``sub-``/``ses-`` prefix).
    modality : list of {'asl', 'dsc'}, optional
        Default: both.
    dsc_pattern, asl_pattern : str, optional
        Globs relative to the subject (or session) folder; defaults in :data:`DEFAULT_PATTERNS`.
    masks_dir : path-like, optional
        A derivatives folder with per-subject masks ``*desc-<brain_mask_desc>_mask.nii.gz``
        (brain) and ``*desc-<aif_mask_desc>_mask.nii.gz`` (DSC AIF); subjects without a brain
        mask get the pipeline's automatic one, DSC subjects without an AIF mask automatic AIF
        selection.

    Raises
    ------
    InputError
        ``bids_dir`` is not a folder, a label or modality is unknown, or nothing matched.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise InputError(root, "bids_dir", "BIDS dataset folder does not exist")
    mods = list(modality or MODALITIES)
    for m in mods:
        if m not in MODALITIES:
            raise InputError(
                None, "modality", f"unknown modality {m!r}; expected one of {MODALITIES}"
            )
    patterns = dict(DEFAULT_PATTERNS)
    if dsc_pattern:
        patterns["dsc"] = dsc_pattern
    if asl_pattern:
        patterns["asl"] = asl_pattern
    subjects = _labels(participant_label, "sub-")
    sessions = _labels(session_label, "ses-")
    present = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
    if subjects is not None:
        missing = sorted(subjects - set(present))
        if missing:
            raise InputError(
                root, "participant_label", f"no folder for subject(s) {missing} in {root}"
            )
    mdir = None if masks_dir is None else Path(masks_dir)
    jobs: list[Job] = []
    for sub in present:
        if subjects is not None and sub not in subjects:
            continue
        sub_dir = root / f"sub-{sub}"
        ses_dirs = sorted(p for p in sub_dir.glob("ses-*") if p.is_dir())
        units = [(p.name[4:], p) for p in ses_dirs] or [(None, sub_dir)]
        for ses, folder in units:
            if sessions is not None and ses not in sessions:
                continue
            for mod in mods:
                for series in sorted(folder.glob(patterns[mod])):
                    if not series.name.endswith(_NIFTI) or not fnmatch.fnmatch(
                        series.relative_to(folder).as_posix(), patterns[mod]
                    ):
                        continue
                    job = Job(sub, ses, mod, series, root)
                    job.companions.update(_companions(job, mdir, brain_mask_desc, aif_mask_desc))
                    jobs.append(job)
    seen: dict[Any, Path] = {}
    for job in jobs:  # two series must never share output names, logs or done-markers
        for key in ((job.out_subdir, job.prefix), job.job_id):
            if key in seen:
                raise InputError(
                    job.series,
                    "name",
                    f"gives the same output names ({job.prefix}_*, job {job.job_id}) as "
                    f"{seen[key]}; narrow the pattern or rename one of them (BIDS names carry "
                    "their sub- and ses- entities)",
                )
            seen[key] = job.series
    if not jobs:
        raise InputError(
            root,
            "series",
            f"no {'/'.join(mods)} series found (patterns "
            f"{', '.join(patterns[m] for m in mods)}; labels {sorted(subjects or [])})",
        )
    return jobs


def _companions(job: Job, masks_dir: Path | None, brain_desc: str, aif_desc: str) -> dict:
    out: dict[str, Path] = {}
    base = job.stem[: -len("_asl")] if job.stem.endswith("_asl") else job.stem
    if job.modality == "asl":
        ctx = job.series.with_name(base + "_aslcontext.tsv")
        if ctx.exists():
            out["aslcontext"] = ctx
        for ext in _NIFTI:
            m0 = job.series.with_name(base + "_m0scan" + ext)
            if m0.exists():
                out["m0scan"] = m0
                break
    mask = _find_mask(masks_dir, job, brain_desc)
    if mask is not None:
        out["mask"] = mask
    if job.modality == "asl":  # partial-volume correction: *_label-GM_probseg, *_label-WM_probseg
        for tissue in ("GM", "WM"):
            pv = _find_mask(masks_dir, job, f"label-{tissue}", suffix="probseg")
            if pv is not None:
                out[f"pv_{tissue.lower()}"] = pv
    if job.modality == "dsc":
        aif = _find_mask(masks_dir, job, aif_desc)
        if aif is not None:
            out["aif_mask"] = aif
    return out
