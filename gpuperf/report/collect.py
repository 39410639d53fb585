"""Reading a run's written outputs back for the QC report.

The report is built from what a run wrote (maps, sidecars, the AIF table and masks), never from
pipeline internals, so it can be regenerated later from the folder alone (``gpuperf report``).
Everything here is tolerant: a missing or unreadable file leaves its entry out and adds a note.

Extra QC arrays (voxel curves, fitted curves, residue functions) that only the pipeline knows
are passed as a small nested dict (see :data:`EXTRA_FORMAT`) and may be saved next to the maps
as ``<prefix>_qc.npz`` with :func:`save_extra` / :func:`stage_extra`, so that a regenerated
report shows them too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.errors import InputError
from gpuperf.io.nifti import nifti_stem, sidecar_path
from gpuperf.io.qc import (  # noqa: F401 - re-exported: the report's public names
    EXTRA_FORMAT,
    extra_to_npz_bytes,
    load_extra,
    normalize_extra,
    save_extra,
    stage_extra,
)
from gpuperf.status import Status

_MASK_NAMES = ("mask", "brainmask", "brain_mask")
_AIF_MASK_NAMES = ("aif_mask", "aifmask", "aif_voxels")


@dataclass
class MapInfo:
    """One written map: its data (float32, as stored) and its JSON sidecar."""

    name: str
    path: Path
    data: np.ndarray
    sidecar: dict[str, Any]

    @property
    def units(self) -> str:
        return str(self.sidecar.get("Units", ""))

    @property
    def description(self) -> str:
        return str(self.sidecar.get("Description", self.name))


@dataclass
class RunOutputs:
    """What a run left in its output folder.

    Attributes
    ----------
    maps : dict name -> MapInfo
        3D maps ``<prefix>_<name>.nii.gz`` (4D files are skipped), masks excluded.
    mask : ndarray of bool (X, Y, Z) or None
        Brain/analysis mask: the one given, else a written ``<prefix>_mask`` file, else a mask
        named in the sidecars' ``Sources`` (when it exists on the same grid and every voxel
        with a value lies inside it), else the voxels with a finite non-zero value in a map or
        a positive status.
    mask_source : str
        Where the mask came from (shown in the report).
    aif_time_s, aif_curve : ndarray (T,) or None
        From ``<prefix>_aif.tsv`` (first column time in s, second the curve).
    aif_columns : (str, str)
        Header of the AIF table's time and curve columns.
    aif_mask : ndarray of bool or None
        Voxels chosen for the AIF (``<prefix>_aifmask`` / ``_aif_mask``).
    zooms_mm : tuple of 3 float
    affine : ndarray (4, 4)
    other_files : list of Path
        4D images of the run (listed, not shown).
    mask_files : list of Path
        Mask images of the run (brain and AIF masks).
    notes : list of str
        Files that were present but unreadable.
    """

    out_dir: Path
    prefix: str
    maps: dict[str, MapInfo] = field(default_factory=dict)
    mask: np.ndarray | None = None
    mask_source: str = "none"
    aif_time_s: np.ndarray | None = None
    aif_curve: np.ndarray | None = None
    aif_columns: tuple[str, str] = ("time", "curve")
    aif_mask: np.ndarray | None = None
    zooms_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    other_files: list[Path] = field(default_factory=list)
    mask_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...] | None:
        for m in self.maps.values():
            return m.data.shape
        return None

    def provenance(self) -> dict[str, Any]:
        """The provenance block of the run: the first sidecar that has one."""
        for m in self.maps.values():
            if "SoftwareVersion" in m.sidecar or "Parameters" in m.sidecar:
                return m.sidecar
        return {}


def find_runs(out_dir: str | PathLike) -> list[tuple[str, str]]:
    """Runs in an output folder: ``[(prefix, modality), ...]`` sorted by prefix.

    A run is recognised by its ``<prefix>_cbf.nii.gz`` map; the modality is ``"dsc"`` when the
    run has DSC-only outputs (``_aif.tsv``, ``_cbv``, ``_mtt``, ``_tmax``) and ``"asl"``
    otherwise.
    """
    return [(prefix, detect_modality(out_dir, prefix)) for prefix in _run_prefixes(out_dir)]


def _run_prefixes(out_dir: str | PathLike) -> list[str]:
    """Prefixes of the runs in ``out_dir`` (those of their ``<prefix>_cbf.nii.gz``), sorted."""
    return [nifti_stem(p)[: -len("_cbf")] for p in sorted(Path(out_dir).glob("*_cbf.nii*"))]


def detect_modality(out_dir: str | PathLike, prefix: str) -> str:
    """``"dsc"`` or ``"asl"`` from the files a run wrote (see :func:`find_runs`)."""
    out_dir = Path(out_dir)
    dsc_marks = ("aif.tsv", "cbv.nii.gz", "mtt.nii.gz", "tmax.nii.gz", "cbv.nii", "mtt.nii")
    if any((out_dir / f"{prefix}_{m}").exists() for m in dsc_marks):
        return "dsc"
    return "asl"


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(data as float32, affine, zooms) of a NIfTI file, as ``nibabel.load`` gives them."""
    try:
        loaded = _load_nifti1_gz(Path(path))
    except Exception:  # noqa: BLE001 - nibabel's full reader says what is wrong with the file
        loaded = None
    if loaded is None:
        from gpuperf.io.nifti import open_nifti  # .nii.gz inflated in one ISA-L call

        img = open_nifti(Path(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine, zooms = img.affine, img.header.get_zooms()
    else:
        data, affine, zooms = loaded
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    zooms3 = tuple(float(z) for z in zooms[:3])
    return data, np.asarray(affine, dtype=np.float64), zooms3  # type: ignore[return-value]


def _load_nifti1_gz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]] | None:
    """A single-file NIfTI-1 ``.nii.gz`` read as :func:`nibabel.load` reads it (the header
    checked and fixed by nibabel on load, the data through nibabel's array proxy with the
    header's scaling, the best affine), without building the image object: a report reads
    every map of a run, and the image's construction (header copies and checks) cost twice
    the inflation. None for any other file (read by :func:`gpuperf.io.nifti.open_nifti`)."""
    if not path.name.endswith(".nii.gz"):
        return None
    import io

    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy

    from gpuperf.io.readahead import gunzip_bytes, recall_written

    raw = recall_written(path) or gunzip_bytes(path.read_bytes())  # a map this process wrote
    sizeof_hdr = raw[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")  # 348, either byte order
    if len(raw) < 352 or not sizeof_hdr or raw[344:348] != b"n+1\x00":
        return None  # NIfTI-2, a header of a pair, or too short: nibabel's reader
    hdr = nib.Nifti1Header(raw[:348])
    data = np.asarray(np.asanyarray(ArrayProxy(io.BytesIO(raw), hdr), dtype=np.float32))
    return data, hdr.get_best_affine(), hdr.get_zooms()


def _read_json(path: Path) -> dict[str, Any]:
    try:  # a missing file too: OSError
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def read_aif_tsv(path: str | PathLike) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Read an AIF table: first column time (s), second column the curve.

    Returns ``(time_s (T,), curve (T,), (time column name, curve column name))``; ``n/a``
    entries become NaN.
    """
    path = Path(path)
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 2:
        raise InputError(path, "rows", "expected a header row and at least one data row")
    header = lines[0].split("\t")
    if len(header) < 2:
        raise InputError(path, "columns", f"expected at least 2 columns, found {header}")
    rows = []
    for ln in lines[1:]:
        cells = ln.split("\t")
        try:
            rows.append([float("nan") if c == "n/a" else float(c) for c in cells[:2]])
        except ValueError as exc:
            raise InputError(path, header[1], f"non-numeric entry in {ln!r}") from exc
    arr = np.asarray(rows, dtype=np.float64)
    return arr[:, 0], arr[:, 1], (header[0], header[1])


def load_run(
    out_dir: str | PathLike, prefix: str, mask: str | PathLike | None = None
) -> RunOutputs:
    """Read every output of run ``prefix`` in ``out_dir`` (tolerant of missing files).

    Parameters
    ----------
    out_dir : path-like
    prefix : str
        File-name prefix of the run (``<prefix>_cbf.nii.gz`` ...).
    mask : path-like, optional
        Analysis mask to outline and to compute statistics in (see :class:`RunOutputs`).

    Raises
    ------
    InputError
        When the folder holds no map of this prefix at all.
    """
    out_dir = Path(out_dir)
    run = RunOutputs(out_dir=out_dir, prefix=prefix)
    pat = re.compile(re.escape(prefix) + r"_(.+)$")
    masks: dict[str, tuple[np.ndarray, Path]] = {}
    # another run whose prefix extends this one ("sub-01" and "sub-01_dsc") is not ours
    longer = [p for p in _run_prefixes(out_dir) if p.startswith(prefix + "_")]
    for p in sorted(out_dir.glob(f"{glob_escape(prefix)}_*.nii*")):
        m = pat.match(nifti_stem(p))
        if not m or p.name.startswith(".") or any(p.name.startswith(o + "_") for o in longer):
            continue
        name = m.group(1)
        try:
            data, affine, zooms = _load_nifti(p)
        except Exception as exc:  # nibabel raises many types for corrupt files
            run.notes.append(f"{p.name}: unreadable ({exc})")
            continue
        if data.ndim != 3:
            run.other_files.append(p)
            continue
        if name in _MASK_NAMES or name in _AIF_MASK_NAMES:
            masks[name] = (data, p)
            run.mask_files.append(p)
            continue
        run.maps[name] = MapInfo(name, p, data, _read_json(sidecar_path(p)))
        run.affine, run.zooms_mm = affine, zooms
    if not run.maps and not masks:
        raise InputError(out_dir, "files", f"no map named {prefix}_<name>.nii.gz in this folder")
    if not run.maps:
        first = next(iter(masks.values()))[1]
        _, run.affine, run.zooms_mm = _load_nifti(first)
    shape = run.shape or next(iter(masks.values()))[0].shape
    for name in _AIF_MASK_NAMES:
        if name in masks and masks[name][0].shape == shape:
            run.aif_mask = masks[name][0] > 0
            break
    _choose_mask(run, masks, shape, mask)
    aif = out_dir / f"{prefix}_aif.tsv"
    if aif.exists():
        try:
            run.aif_time_s, run.aif_curve, run.aif_columns = read_aif_tsv(aif)
        except InputError as exc:
            run.notes.append(str(exc))
    return run


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a literal file-name part."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def _choose_mask(
    run: RunOutputs,
    masks: Mapping[str, tuple[np.ndarray, Path]],
    shape: tuple[int, ...],
    explicit: str | PathLike | None,
) -> None:
    candidates: list[tuple[Path, str]] = []
    if explicit is not None:
        candidates.append((Path(explicit), "given"))
    for name in _MASK_NAMES:
        if name in masks:
            candidates.append((masks[name][1], "written by the run"))
    for src in run.provenance().get("Sources", []) or []:
        sp = Path(str(src))
        if "mask" in sp.name.lower() and "aif" not in sp.name.lower():
            candidates.append((sp, "input of the run (sidecar Sources)"))
    valued = np.zeros(shape, dtype=bool)  # where the run wrote a value: must lie in the mask
    for m in run.maps.values():
        if m.name != "status":
            valued |= np.isfinite(m.data) & (m.data != 0)
    for path, how in candidates:
        if not path.exists():
            if how == "given":
                raise InputError(path, "file", "mask file does not exist")
            continue
        try:
            data, _, _ = _load_nifti(path)
        except Exception as exc:
            run.notes.append(f"{path}: mask unreadable ({exc})")
            continue
        if data.shape != tuple(shape[:3]):
            if how == "given":
                raise InputError(path, "shape", f"mask {data.shape} differs from the maps {shape}")
            continue
        cand = data > 0
        if how != "given" and valued.any() and (valued & ~cand).sum() > 0.01 * valued.sum():
            continue  # not the analysis mask (a reference region, say): values lie outside it
        run.mask = cand
        run.mask_source = f"{path.name} ({how})"
        return
    if run.maps:
        # Maps are NaN outside the analysis mask, where the status is OUTSIDE_MASK; flagged
        # voxels inside it may be NaN too but carry another flag.
        st = run.maps.get("status")
        flagged = False
        if st is not None:
            code = np.where(np.isfinite(st.data), st.data, 0).astype(np.int64)
            flagged = (code > 0) & ((code & int(Status.OUTSIDE_MASK)) == 0)
        run.mask = valued | flagged
        run.mask_source = "voxels with a value in the maps (no mask file found)"
