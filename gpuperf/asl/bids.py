"""Reading a BIDS ASL series: ``*_asl.nii.gz`` + ``*_asl.json`` + ``*_aslcontext.tsv``
(+ ``*_m0scan.nii.gz`` / ``.json``).

Follows the BIDS specification, section "Arterial Spin Labeling perfusion data". Everything is
validated here, once, and every problem is an :class:`~gpuperf.errors.InputError` that names the
file and the field: later stages can trust an :class:`ASLSeries`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.asl.options import check_sidecar
from gpuperf.errors import InputError
from gpuperf.io.nifti import LoadedImage, check_same_grid, load_image, read_sidecar, sidecar_path

#: Volume types that carry data gpuperf uses; ``noRF`` and ``n/a`` volumes are skipped.
USED_VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf")
IGNORED_VOLUME_TYPES = ("norf", "n/a")
LABELING_TYPES = ("CASL", "PCASL", "PASL")
M0_TYPES = ("Separate", "Included", "Estimate", "Absent")
BOLUS_CUTOFF_TECHNIQUES = ("QUIPSS", "QUIPSSII", "Q2TIPS")


def _strip(path: Path, suffix: str) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if not name.endswith(suffix):
        return name
    return name[: -len(suffix)]


def aslcontext_path(asl_path: str | PathLike) -> Path:
    """``sub-01_asl.nii.gz`` -> ``sub-01_aslcontext.tsv``."""
    p = Path(asl_path)
    return p.with_name(_strip(p, "_asl") + "_aslcontext.tsv")


def m0scan_path(asl_path: str | PathLike) -> Path:
    """``sub-01_asl.nii.gz`` -> ``sub-01_m0scan.nii.gz`` (or ``.nii`` when that exists)."""
    p = Path(asl_path)
    base = _strip(p, "_asl") + "_m0scan"
    gz = p.with_name(base + ".nii.gz")
    plain = p.with_name(base + ".nii")
    return plain if (not gz.exists() and plain.exists()) else gz


def read_aslcontext(path: str | PathLike) -> list[str]:
    """Volume types (lower case, one per volume) from an ``_aslcontext.tsv``."""
    p = Path(path)
    if not p.exists():
        raise InputError(
            p, "file", "the _aslcontext.tsv that must accompany the ASL series does not exist"
        )
    with open(p, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(p, "volume_type", "file is empty; expected a header 'volume_type'")
    header = [c.strip() for c in rows[0]]
    if "volume_type" not in header:
        raise InputError(p, "volume_type", f"no 'volume_type' column in header {header}")
    col = header.index("volume_type")
    types = []
    for i, row in enumerate(rows[1:], start=2):
        if col >= len(row):
            raise InputError(p, "volume_type", f"row {i} has no volume_type value")
        v = row[col].strip()
        if v.lower() not in USED_VOLUME_TYPES + IGNORED_VOLUME_TYPES:
            raise InputError(
                p,
                "volume_type",
                f"row {i}: unknown volume type {v!r}; expected "
                f"one of control, label, m0scan, deltam, cbf, noRF, n/a",
            )
        types.append(v.lower())
    return types


@dataclass
class ASLSeries:
    """A validated BIDS ASL series.

    Attributes
    ----------
    image : LoadedImage
        The 4D series (X, Y, Z, T), float32.
    sidecar : dict
        ``*_asl.json``.
    volume_types : list of str, length T
        Lower-case volume types from ``*_aslcontext.tsv``.
    labeling_type : {'CASL', 'PCASL', 'PASL'}
    pld_s : ndarray (T,)
        PostLabelingDelay per volume (s); for PASL this is the inversion time TI.
    tau_s : ndarray (T,)
        Labelling duration (CASL/PCASL) or bolus duration TI1 (PASL, from
        BolusCutOffDelayTime) per volume (s); NaN where not defined.
    m0_type : {'Separate', 'Included', 'Estimate', 'Absent'}
    m0_estimate : float or None
        ``M0Estimate`` (M0Type Estimate).
    m0_image : LoadedImage or None
        The separate ``*_m0scan`` image (M0Type Separate) on the same grid.
    m0_sidecar : dict
    m0_tr_s : float or None
        RepetitionTimePreparation of the M0 volumes (s), for the short-TR correction.
    m0_te_s : float or None
        EchoTime of the M0 volumes (s), for reference-region T2 corrections.
    field_strength_t : float or None
    labeling_efficiency : float or None
    background_suppression : bool
    bs_pulses : int or None
    bolus_cutoff_technique : str or None
    acquisition_type : str or None
        ``MRAcquisitionType`` ('2D', '3D').
    slice_timing_s : ndarray (n_slices,) or None
        ``SliceTiming`` indexed by slice position along :attr:`slice_axis` (a negative
        ``SliceEncodingDirection`` is reversed here); validated against the image.
    slice_axis : int
        Voxel axis of the slices (``SliceEncodingDirection`` i/j/k; default k = 2).
    slice_encoding_direction : str
    scanning_sequence, pulse_sequence_type : str or None
        ``ScanningSequence`` and ``PulseSequenceType`` (readout: T2 or T2* of M0).
    """

    image: LoadedImage
    sidecar: dict[str, Any]
    volume_types: list[str]
    labeling_type: str
    pld_s: np.ndarray
    tau_s: np.ndarray
    m0_type: str
    m0_estimate: float | None = None
    m0_image: LoadedImage | None = None
    m0_sidecar: dict[str, Any] = field(default_factory=dict)
    m0_tr_s: float | None = None
    m0_te_s: float | None = None
    field_strength_t: float | None = None
    labeling_efficiency: float | None = None
    background_suppression: bool = False
    bs_pulses: int | None = None
    bolus_cutoff_technique: str | None = None
    acquisition_type: str | None = None
    slice_timing_s: np.ndarray | None = None
    slice_axis: int = 2
    slice_encoding_direction: str = "k"
    scanning_sequence: str | None = None
    pulse_sequence_type: str | None = None

    @property
    def is_2d(self) -> bool:
        """A 2D (slice-by-slice) readout: MRAcquisitionType 2D, or SliceTiming without it."""
        if self.acquisition_type is not None:
            return self.acquisition_type.upper() == "2D"
        return self.slice_timing_s is not None

    @property
    def path(self) -> Path:
        return self.image.path

    @property
    def is_pasl(self) -> bool:
        return self.labeling_type == "PASL"

    def indices(self, kind: str) -> np.ndarray:
        """Volume indices of one type, in acquisition order."""
        return np.array([i for i, v in enumerate(self.volume_types) if v == kind], dtype=int)


def _number(meta: dict, key: str, path: Path, *, required: bool = False) -> float | None:
    if key not in meta or meta[key] is None:
        if required:
            raise InputError(path, key, "required field is missing")
        return None
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(path, key, f"expected a number, found {v!r}")
    if not np.isfinite(v):
        raise InputError(path, key, f"expected a finite number, found {v!r}")
    return float(v)


def _per_volume(meta: dict, key: str, path: Path, n_vol: int, *, required: bool) -> np.ndarray:
    """A field that is a number or one number per volume -> (T,) float64 (NaN if absent)."""
    if key not in meta or meta[key] is None:
        if required:
            raise InputError(path, key, "required field is missing")
        return np.full(n_vol, np.nan)
    v = meta[key]
    if isinstance(v, bool):
        raise InputError(path, key, f"expected a number or an array, found {v!r}")
    if isinstance(v, (int, float)):
        out = np.full(n_vol, float(v))
    elif isinstance(v, list):
        if len(v) != n_vol:
            raise InputError(
                path,
                key,
                f"has {len(v)} values but the series has {n_vol} "
                f"volumes; give one number or one value per volume",
            )
        try:
            out = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(path, key, f"expected numbers, found {v!r}") from exc
    else:
        raise InputError(path, key, f"expected a number or an array, found {v!r}")
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise InputError(path, key, "values must be finite and >= 0 (seconds)")
    if np.any(out > 30):
        raise InputError(
            path,
            key,
            f"values up to {out.max():g}: expected seconds (BIDS), these look like milliseconds",
        )
    return out


def read_asl_series(asl_path: str | PathLike, m0_path: str | PathLike | None = None) -> ASLSeries:
    """Load and validate a BIDS ASL series.

    Parameters
    ----------
    asl_path : path-like
        ``*_asl.nii.gz``; ``*_asl.json`` and ``*_aslcontext.tsv`` must sit beside it.
    m0_path : path-like, optional
        An M0 image to use instead of what ``M0Type`` says (overrides the sidecar). Without it,
        M0Type ``Separate`` reads ``*_m0scan.nii.gz`` beside the series.

    Returns
    -------
    ASLSeries

    Raises
    ------
    InputError
        Missing or inconsistent files or fields (named in the message).
    """
    asl_path = Path(asl_path)
    # read-only: the pipeline only reads the series (differences, M0 volumes, checks)
    image = load_image(asl_path, ndim=(3, 4), role="ASL series", readonly=True)
    meta = read_sidecar(asl_path, required=True)
    js = sidecar_path(asl_path)
    ctx_path = aslcontext_path(asl_path)
    types = read_aslcontext(ctx_path)
    n_vol = image.n_frames
    if len(types) != n_vol:
        raise InputError(
            ctx_path,
            "volume_type",
            f"lists {len(types)} volumes but "
            f"{asl_path.name} has {n_vol}: one row per volume is required",
        )
    if image.data.ndim == 3:
        image.data = image.data[..., None]

    ltype = meta.get("ArterialSpinLabelingType")
    if ltype is None:
        raise InputError(
            js, "ArterialSpinLabelingType", "required field is missing (CASL, PCASL or PASL)"
        )
    ltype = str(ltype).upper()
    if ltype not in LABELING_TYPES:
        raise InputError(
            js,
            "ArterialSpinLabelingType",
            f"expected CASL, PCASL or PASL, found {meta['ArterialSpinLabelingType']!r}",
        )

    uses_pld = any(t in ("control", "label", "deltam", "cbf") for t in types)
    pld = _per_volume(meta, "PostLabelingDelay", js, n_vol, required=uses_pld)

    technique = None
    if ltype == "PASL":
        flag = meta.get("BolusCutOffFlag")
        if flag is None:
            raise InputError(
                js,
                "BolusCutOffFlag",
                "required for PASL (true for QUIPSS II / Q2TIPS bolus cut-off)",
            )
        if not flag:
            raise InputError(
                js,
                "BolusCutOffFlag",
                "is false: without a bolus cut-off (QUIPSS "
                "II / Q2TIPS) the PASL bolus duration TI1 is unknown and CBF cannot "
                "be quantified",
            )
        technique = meta.get("BolusCutOffTechnique")
        if technique is None:
            raise InputError(js, "BolusCutOffTechnique", "required when BolusCutOffFlag is true")
        technique = str(technique)
        if technique.upper().replace(" ", "") not in BOLUS_CUTOFF_TECHNIQUES:
            raise InputError(
                js,
                "BolusCutOffTechnique",
                f"expected QUIPSS, QUIPSSII or Q2TIPS, found {technique!r}",
            )
        if technique.upper().replace(" ", "") == "QUIPSS":
            raise InputError(
                js,
                "BolusCutOffTechnique",
                "QUIPSS (QUIPSS I) is not supported: its signal scales with TI2 - TI1 of the "
                "imaging-slice saturation, a model gpuperf does not implement; quantifying it "
                "as QUIPSS II would be wrong (QUIPSSII and Q2TIPS are supported)",
            )
        delay = meta.get("BolusCutOffDelayTime")
        if delay is None:
            raise InputError(
                js,
                "BolusCutOffDelayTime",
                "required when BolusCutOffFlag is true (it gives the bolus duration TI1)",
            )
        # Q2TIPS gives [start, end] of the saturation train: TI1 is its start (BIDS spec).
        if isinstance(delay, list):
            if not delay or not all(isinstance(d, (int, float)) for d in delay):
                raise InputError(js, "BolusCutOffDelayTime", f"expected numbers, found {delay!r}")
            ti1 = float(delay[0])
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
            ti1 = float(delay)
        else:
            raise InputError(js, "BolusCutOffDelayTime", f"expected a number, found {delay!r}")
        if not 0 < ti1 < 30:
            raise InputError(js, "BolusCutOffDelayTime", f"expected seconds > 0, found {ti1}")
        tau = np.full(n_vol, ti1)
    else:
        tau = _per_volume(meta, "LabelingDuration", js, n_vol, required=uses_pld)

    m0_type = meta.get("M0Type")
    if m0_type is None:
        raise InputError(
            js, "M0Type", "required field is missing (Separate, Included, Estimate or Absent)"
        )
    matches = [t for t in M0_TYPES if t.lower() == str(m0_type).lower()]
    if not matches:
        raise InputError(
            js, "M0Type", f"expected Separate, Included, Estimate or Absent, found {m0_type!r}"
        )
    m0_type = matches[0]
    n_m0_vols = types.count("m0scan")
    if m0_type == "Included" and n_m0_vols == 0:
        raise InputError(ctx_path, "volume_type", "M0Type is Included but no volume is m0scan")
    if m0_type != "Included" and n_m0_vols and m0_path is None:
        raise InputError(
            js,
            "M0Type",
            f"is {m0_type} but _aslcontext.tsv lists {n_m0_vols} "
            "m0scan volume(s); set M0Type to Included",
        )

    bs = meta.get("BackgroundSuppression")
    if bs is None:
        raise InputError(js, "BackgroundSuppression", "required field is missing (true/false)")
    if not isinstance(bs, bool):
        raise InputError(js, "BackgroundSuppression", f"expected true or false, found {bs!r}")
    n_pulses = meta.get("BackgroundSuppressionNumberPulses")
    if n_pulses is not None and (
        isinstance(n_pulses, bool) or not isinstance(n_pulses, int) or n_pulses < 0
    ):
        raise InputError(
            js,
            "BackgroundSuppressionNumberPulses",
            f"expected a non-negative integer, found {n_pulses!r}",
        )
    # the same range rule as --alpha, which it feeds
    eff = check_sidecar("alpha", _number(meta, "LabelingEfficiency", js), js, "LabelingEfficiency")
    b0 = _number(meta, "MagneticFieldStrength", js)

    timing, axis, direction = _slice_timing(meta, js, image.data.shape[:3])
    acq = meta.get("MRAcquisitionType")
    if acq is not None and str(acq).upper() not in ("2D", "3D"):
        raise InputError(js, "MRAcquisitionType", f"expected 2D or 3D, found {acq!r}")

    series = ASLSeries(
        image=image,
        sidecar=meta,
        volume_types=types,
        labeling_type=ltype,
        pld_s=pld,
        tau_s=tau,
        m0_type=m0_type,
        field_strength_t=b0,
        labeling_efficiency=eff,
        background_suppression=bs,
        bs_pulses=n_pulses,
        bolus_cutoff_technique=technique,
        acquisition_type=None if acq is None else str(acq).upper(),
        slice_timing_s=timing,
        slice_axis=axis,
        slice_encoding_direction=direction,
        scanning_sequence=_text(meta.get("ScanningSequence")),
        pulse_sequence_type=_text(meta.get("PulseSequenceType")),
    )
    _attach_m0(series, js, m0_path, asl_path)
    return series


def _text(v: Any) -> str | None:
    """A sidecar string field (lists, e.g. ScanningSequence ['SE', 'EP'], joined with '\\')."""
    if v is None:
        return None
    if isinstance(v, list):
        return "\\".join(str(x) for x in v)
    return str(v)


def _slice_timing(
    meta: dict, path: Path, shape: tuple[int, ...]
) -> tuple[np.ndarray | None, int, str]:
    """``SliceTiming`` (s) per slice position along the slice axis, validated.

    BIDS: one entry per slice, in the order of ``SliceEncodingDirection`` (default ``k``; a
    trailing ``-`` means the first entry is the last slice along the axis). Returns
    ``(timing or None, axis, direction)``.
    """
    direction = meta.get("SliceEncodingDirection", "k")
    if not isinstance(direction, str) or direction not in ("i", "j", "k", "i-", "j-", "k-"):
        raise InputError(
            path, "SliceEncodingDirection", f"expected i, j, k, i-, j- or k-, found {direction!r}"
        )
    axis = "ijk".index(direction[0])
    v = meta.get("SliceTiming")
    if v is None:
        return None, axis, direction
    if (
        not isinstance(v, list)
        or not v
        or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v)
    ):
        raise InputError(path, "SliceTiming", "expected a list of numbers (s), one per slice")
    t = np.asarray(v, dtype=np.float64)
    n_slices = shape[axis]
    if t.size != n_slices:
        raise InputError(
            path,
            "SliceTiming",
            f"has {t.size} entries but the image has {n_slices} slices along "
            f"{direction[0]} (SliceEncodingDirection {direction}): one entry per slice",
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise InputError(path, "SliceTiming", "entries must be finite and >= 0 (seconds)")
    if np.any(t > 30):
        raise InputError(
            path,
            "SliceTiming",
            f"entries up to {t.max():g}: expected seconds (BIDS), these look like milliseconds",
        )
    if direction.endswith("-"):
        t = t[::-1].copy()
    return t, axis, direction


def slice_time_offsets(series: ASLSeries) -> np.ndarray | None:
    """Per-voxel readout delay (X, Y, Z) in s: ``SliceTiming`` of each voxel's slice.

    None for 3D readouts and for series without ``SliceTiming`` (every voxel then at its
    nominal PLD). A voxel of slice k has effective delay ``PLD + SliceTiming[k]`` ((p)CASL;
    PASL ``TI + SliceTiming[k]``); multiband is already expressed by the list (slices read
    together share a time).
    """
    if series.slice_timing_s is None or not series.is_2d:
        return None
    shape = series.image.data.shape[:3]
    view = [1, 1, 1]
    view[series.slice_axis] = shape[series.slice_axis]
    return np.broadcast_to(series.slice_timing_s.reshape(view), shape)


def _tr_of(meta: dict, path: Path, idx: np.ndarray | None = None) -> float | None:
    """RepetitionTimePreparation (or RepetitionTime) in s; per-volume arrays are indexed."""
    for key in ("RepetitionTimePreparation", "RepetitionTime"):
        v = meta.get(key)
        if v is None:
            continue
        if isinstance(v, list):
            arr = np.asarray(v, dtype=np.float64)
            if idx is not None and arr.size > int(np.max(idx, initial=0)):
                arr = arr[idx]
            if np.ptp(arr) > 1e-6:
                raise InputError(
                    path,
                    key,
                    "M0 volumes have different repetition times; "
                    "average them yourself or pass --m0",
                )
            v = float(arr[0])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise InputError(path, key, f"expected a positive number of seconds, found {v!r}")
        if v > 100:
            raise InputError(path, key, f"{v} looks like milliseconds; BIDS uses seconds")
        return float(v)
    return None


def _echo_time(meta: dict, path: Path) -> float | None:
    """EchoTime (s); multi-echo lists give their first echo."""
    te = meta.get("EchoTime")
    if isinstance(te, list) and te:
        te = te[0]
    if te is None:
        return None
    if isinstance(te, bool) or not isinstance(te, (int, float)) or not te >= 0:
        raise InputError(
            path, "EchoTime", f"expected a non-negative number of seconds, found {te!r}"
        )
    if te > 1:
        raise InputError(path, "EchoTime", f"{te} looks like milliseconds; BIDS uses seconds")
    return float(te)


def _load_m0_image(series: ASLSeries, path: str | PathLike, role: str) -> None:
    """Attach a separate M0 image (on the series' grid) with its sidecar's TR and TE."""
    img = load_image(path, ndim=(3, 4), role=role)
    check_same_grid(series.image, img)
    series.m0_image = img
    series.m0_sidecar = read_sidecar(path)
    series.m0_tr_s = _tr_of(series.m0_sidecar, sidecar_path(path))
    series.m0_te_s = _echo_time(series.m0_sidecar, sidecar_path(path))


def _attach_m0(series: ASLSeries, js: Path, m0_path, asl_path: Path) -> None:
    meta = series.sidecar
    if m0_path is not None:
        _load_m0_image(series, m0_path, role="M0 image")
        series.m0_type = "Separate"
        return
    if series.m0_type == "Separate":
        p = m0scan_path(asl_path)
        if not p.exists():
            raise InputError(
                js,
                "M0Type",
                f"is Separate but {p.name} does not exist beside the series (or pass --m0)",
            )
        _load_m0_image(series, p, role="M0 scan")
    elif series.m0_type == "Included":
        series.m0_tr_s = _tr_of(meta, js, series.indices("m0scan"))
        series.m0_te_s = _echo_time(meta, js)
    elif series.m0_type == "Estimate":
        est = _number(meta, "M0Estimate", js, required=True)
        if not est > 0:
            raise InputError(js, "M0Estimate", f"must be positive, found {est}")
        series.m0_estimate = est
