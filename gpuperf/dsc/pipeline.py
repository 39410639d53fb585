"""The DSC file pipeline: NIfTI series (+ sidecar) in, maps with provenance out.

load (series, sidecar, masks, AIF) -> validate -> :class:`DSCModel` fit on the chosen backend
-> :class:`gpuperf.io.outputs.OutputWriter` (atomic: nothing appears under a final name unless
the whole run succeeded).

The run is three stages, :func:`prepare_dsc` (everything before the deconvolution),
:func:`compute_dsc_batch` (the deconvolution, of several subjects at once when their settings
allow) and :func:`write_dsc`; ``run_dsc`` is the three of them for one subject, and exposes
them as ``run_dsc.prepare/.compute/.write`` for the cohort runner's batching
(:mod:`gpuperf.cohort.batching`). ``prepare_dsc`` is :func:`load_dsc` (reading and checking,
which a cohort's report worker process may run for the next subject: ``run_dsc.load``) then
:func:`prepare_model` (the model's per-voxel stages: ``run_dsc.finish_load``).

The pipeline does not write the HTML report (the report layer sits above it): it returns what
the report needs (:class:`DSCRunResult`), and the caller (``gpuperf dsc``, the cohort runner)
publishes it. File names the caller will add (``extra_outputs``, e.g. ``"report.html"``) are
checked against the overwrite policy with the maps, before any work; when there are any, the
QC extras the report reads (``<prefix>_qc.npz``, :mod:`gpuperf.io.qc`) are written too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf import maps, svg
from gpuperf.backend import get_backend
from gpuperf.dsc.aif import read_aif_curve
from gpuperf.dsc.model import MAP_NAMES, DSCFit, DSCModel, PreparedDSC
from gpuperf.dsc.options import DSCOptions, resolve_options
from gpuperf.dsc.plausibility import check_dsc, publish_warnings
from gpuperf.dsc.signal import check_te_tr
from gpuperf.errors import GpuperfError, InputError, about_file
from gpuperf.io.nifti import (
    is_nifti,
    load_image,
    load_mask,
    nifti_stem,
    read_sidecar,
    sidecar_path,
)
from gpuperf.io.outputs import OutputWriter
from gpuperf.io.qc import pick_voxels, stage_extra
from gpuperf.io.stages import (
    PreparedRun,
    batch_groups,
    batch_note,
    expect_extra,
    staged_pipeline,
)
from gpuperf.progress import Reporter, ensure_reporter
from gpuperf.provenance import provenance
from gpuperf.status import INPUT_FLAGS, Status, sidecar_entry

#: Maps a reference mask adds.
RELATIVE_MAPS = ("rcbf", "rcbv", "rmtt")
#: BIDS SliceEncodingDirection -> spatial axis.
_SLICE_AXES = {"i": 0, "j": 1, "k": 2}

maps.register(
    maps.MapSpec(
        "aifmask",
        "1",
        "Voxels averaged into the automatic AIF",
        "AIF voxels",
        cmap="gray",
        categorical=True,
    )
)


@dataclass
class PreparedDSCRun(PreparedRun):
    """A DSC series loaded and validated by :func:`prepare_dsc`, ready to compute.

    The attributes shared by every pipeline are those of :class:`~gpuperf.io.stages.PreparedRun`.

    Attributes
    ----------
    model : DSCModel
    data : gpuperf.dsc.model.PreparedDSC or None
        dR2*, masks and AIF (dropped once computed).
    fit : DSCFit or None
        Set by :func:`compute_dsc_batch`.
    qc : bool
        Stage the QC extras (``<prefix>_qc.npz``) for a report the caller writes.
    """

    series_path: Path
    shape3d: tuple
    model: DSCModel
    data: PreparedDSC | None
    aif_source: str
    qc: bool = False
    fit: DSCFit | None = None
    curves: dict | None = None  # a few voxels' curves for the QC report (``<prefix>_qc.npz``)
    warnings: list[str] = field(default_factory=list)  # plausibility, for the QC report
    _n_voxels: int = field(init=False, repr=False)
    _key: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # kept: ``data`` is dropped after the compute
        self._n_voxels = self.data.n_voxels
        self._key = (self.model.fit_key(), self.data.n_frames)

    @property
    def n_voxels(self) -> int:
        """Voxels to deconvolve (in the mask)."""
        return self._n_voxels

    @property
    def batch_key(self) -> tuple:
        """Subjects with equal keys can be computed in one call (:meth:`DSCModel.fit_key` and
        the frame count; each subject keeps its own AIF)."""
        return self._key


@dataclass
class DSCRunResult:
    """What :func:`run_dsc` wrote, a summary of the run, and what its report needs.

    Attributes
    ----------
    outputs : list of Path
        Files written.
    summary : dict
        Voxel counts, median CBF, backend, timings.
    out_dir : Path
    prefix : str
        ``<prefix>_<map>.nii.gz``.
    modality : str
        ``"dsc"``.
    report_extra : dict
        The ``extra`` of :func:`gpuperf.report.publish_run_report` (``baseline_s``).
    mask_path : path-like or None
        The brain mask given (None: automatic).
    """

    outputs: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    prefix: str = ""
    modality: str = "dsc"
    report_extra: dict[str, Any] = field(default_factory=dict)
    mask_path: str | PathLike | None = None


@dataclass
class LoadedDSC:
    """A DSC series read and checked by :func:`load_dsc`: everything of :func:`prepare_dsc`
    but the model's per-voxel stages (:func:`prepare_model`). Picklable: a cohort's report
    worker process loads the next subject while the computing process computes this one.

    Attributes
    ----------
    signal : ndarray
        The series (x, y, z, t).
    aif : str or ndarray
        ``"auto"``, an AIF mask or an AIF curve.
    mask, ref_mask, slice_times : ndarray or None
        The brain and reference masks given, each voxel's slice time (s).
    """

    series_path: Path
    shape3d: tuple
    backend: Any
    model: DSCModel
    writer: OutputWriter
    aif_source: str
    mask_path: str | PathLike | None
    qc: bool
    reporter: Any
    t_start: float
    signal: np.ndarray
    aif: Any
    mask: np.ndarray | None
    ref_mask: np.ndarray | None
    slice_times: np.ndarray | None


def load_dsc(
    series_path: str | PathLike,
    out_dir: str | PathLike,
    *,
    options: DSCOptions | None = None,
    mask_path: str | PathLike | None = None,
    aif: str | PathLike = "auto",
    ref_mask_path: str | PathLike | None = None,
    prefix: str | None = None,
    device: str = "auto",
    memory_budget: int | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    extra_outputs: Sequence[str] = (),
    **option_values: Any,
) -> LoadedDSC:
    """Read and check a DSC series, its sidecar, masks and AIF, and the outputs: everything of
    :func:`prepare_dsc` before the model's per-voxel stages (:func:`prepare_model`).

    Parameters are those of :func:`run_dsc`; raises the same errors (including
    :class:`~gpuperf.errors.OutputExistsError`).

    Returns
    -------
    LoadedDSC
    """
    t0 = time.perf_counter()
    opts = resolve_options(options, option_values, "prepare_dsc")
    rep = ensure_reporter(reporter)
    series_path = Path(series_path)
    out_dir = Path(out_dir)
    backend = get_backend(device)
    # read-only: the series is only read (masks, dR2* into new arrays): no copy of its data
    img = load_image(series_path, ndim=(4,), role="DSC series", readonly=True)
    meta = read_sidecar(series_path)
    sc = sidecar_path(series_path)
    te = opts.te_s if opts.te_s is not None else meta.get("EchoTime")
    tr = opts.tr_s if opts.tr_s is not None else meta.get("RepetitionTime")
    te, tr = check_te_tr(te, tr, sc if (opts.te_s is None or opts.tr_s is None) else None)
    n_t = img.n_frames
    slice_times = None
    if opts.slice_timing and meta.get("SliceTiming") is not None:
        slice_times = slice_time_map(meta, img.shape3d, tr, sc)
    inputs: list[Path] = [series_path]
    mask = None
    if mask_path is not None:
        mask = load_mask(mask_path, img, role="brain mask")
        inputs.append(Path(mask_path))
    aif_arg: Any = "auto"
    aif_source = "auto"
    if str(aif) != "auto":
        ap = Path(aif)
        inputs.append(ap)
        if is_nifti(ap):
            aif_arg = load_mask(ap, img, role="AIF mask")
            aif_source = f"mask {ap}"
        else:
            aif_arg = read_aif_curve(ap, n_t)
            aif_source = f"curve {ap}"
    ref = None
    if ref_mask_path is not None:
        ref = load_mask(ref_mask_path, img, role="reference mask")
        inputs.append(Path(ref_mask_path))
    model = DSCModel(
        options=opts.replace(te_s=te, tr_s=tr),
        device="gpu" if backend.is_gpu else "cpu",
        memory_budget=memory_budget,
    )
    names = ["cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "status"]
    names += model.leakage_correction.maps
    names += model.deconvolution.map_names  # the method's own (parametric: cth, delay, ...)
    if ref is not None:
        names += RELATIVE_MAPS
    if aif_source == "auto":
        names.append("aifmask")
    params = {**model.parameters(), "AIF": aif_source}
    prov = provenance(backend, params, sources=[str(p) for p in inputs])
    writer = OutputWriter(
        out_dir,
        prefix or nifti_stem(series_path),
        reference=img,
        provenance=prov,
        overwrite=overwrite,
        inputs=inputs,
    )
    writer.expect(names)
    writer.expect(["aif"], ext=".tsv")
    writer.expect(["aif"], ext=".json")
    writer.expect(["aif"], ext=".svg")
    expect_extra(writer, extra_outputs)
    qc = bool(extra_outputs)
    if qc:
        writer.expect(["qc"], ext=".npz")
    rep.log(
        f"DSC {opts.method} on {backend.device_name}: {series_path.name} "
        f"({img.shape3d} x {n_t} frames, TE {te} s, TR {tr} s)"
    )
    return LoadedDSC(
        series_path=series_path,
        shape3d=img.shape3d,
        backend=backend,
        model=model,
        writer=writer,
        aif_source=aif_source,
        mask_path=mask_path,
        qc=qc,
        reporter=reporter,
        t_start=t0,
        signal=img.data,
        aif=aif_arg,
        mask=mask,
        ref_mask=ref,
        slice_times=slice_times,
    )


def prepare_model(loaded: LoadedDSC) -> PreparedDSCRun:
    """The model's per-voxel stages of a loaded series (the conversion to dR2*, the bolus
    arrival, the AIF selection: kernels on a GPU) and the plausibility checks (logged now,
    shown in the QC report)."""
    rep = ensure_reporter(loaded.reporter)
    with rep.status("preparing"), about_file(loaded.series_path):
        t_model = time.perf_counter()
        data = loaded.model.prepare(
            loaded.signal,
            aif=loaded.aif,
            mask=loaded.mask,
            ref_mask=loaded.ref_mask,
            slice_times_s=loaded.slice_times,
        )
        model_s = time.perf_counter() - t_model
        warnings = check_dsc(data, loaded.series_path)
        publish_warnings(warnings, rep)  # the report's copy is staged with the maps
    return PreparedDSCRun(
        series_path=loaded.series_path,
        shape3d=loaded.shape3d,
        backend=loaded.backend,
        model=loaded.model,
        data=data,
        writer=loaded.writer,
        aif_source=loaded.aif_source,
        mask_path=loaded.mask_path,
        qc=loaded.qc,
        reporter=loaded.reporter,
        t_start=loaded.t_start,
        model_s=model_s,
        warnings=list(warnings) if loaded.qc else [],
    )


@functools.wraps(load_dsc, assigned=("__module__", "__annotations__"))
def prepare_dsc(*args: Any, **kwargs: Any) -> PreparedDSCRun:
    """Load and validate a DSC series: everything of :func:`run_dsc` before the deconvolution
    (masks, dR2*, bolus arrival, AIF selection, output checks): :func:`load_dsc`, then
    :func:`prepare_model`.

    Parameters are those of :func:`run_dsc`; raises the same errors, before any voxel is
    deconvolved (including :class:`~gpuperf.errors.OutputExistsError`).

    Returns
    -------
    PreparedDSCRun
    """
    return prepare_model(load_dsc(*args, **kwargs))


prepare_dsc.__annotations__ = {**load_dsc.__annotations__, "return": PreparedDSCRun}


def slice_time_map(
    meta: dict, shape3d: tuple, tr_s: float, source: str | PathLike | None
) -> np.ndarray:
    """Acquisition time of every voxel's slice (s) from the sidecar's ``SliceTiming``.

    ``SliceEncodingDirection`` (i, j, k, default k; a trailing ``-`` lists the times in the
    reverse slice order, BIDS) gives the slice axis. Refused, naming the sidecar and the field:
    not a list of numbers, a length other than the slice count, negative or non-finite values,
    values of TR or more.
    """
    raw = meta.get("SliceTiming")
    direction = str(meta.get("SliceEncodingDirection", "k"))
    axis = _SLICE_AXES.get(direction.rstrip("-"))
    if axis is None:
        raise InputError(
            source, "SliceEncodingDirection", f"expected i, j or k (with -); found {direction!r}"
        )
    try:
        st = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        st = None
    if st is None or st.ndim != 1:
        raise InputError(source, "SliceTiming", f"expected a list of seconds; found {raw!r}")
    if st.size != shape3d[axis]:
        raise InputError(
            source,
            "SliceTiming",
            f"{st.size} values for {shape3d[axis]} slices along axis {'ijk'[axis]}",
        )
    if not np.all(np.isfinite(st)) or np.any(st < 0):
        raise InputError(source, "SliceTiming", "expected finite times >= 0 s; found a negative")
    if np.any(st >= tr_s):
        raise InputError(
            source,
            "SliceTiming",
            f"max {st.max():g} s is not below RepetitionTime {tr_s:g} s (milliseconds?)",
        )
    if direction.endswith("-"):
        st = st[::-1]
    shape = [1, 1, 1]
    shape[axis] = st.size
    return np.ascontiguousarray(np.broadcast_to(st.reshape(shape), shape3d))


def compute_dsc_batch(prepared: Sequence[PreparedDSCRun], reporter: Any = None) -> None:
    """Deconvolve one or several prepared series; sets each one's :attr:`PreparedDSCRun.fit`.

    Series with the same :attr:`PreparedDSCRun.batch_key` (same method, thresholds, OI limit,
    mu, leakage, kH, rho, TR, frame count, precision, device; each its own AIF) go through
    ONE :meth:`DSCModel.fit_batch` call: with oSVD the threshold selection of all their voxels
    is one kernel launch (a plan per AIF, a plan index per voxel). Every other step is per
    subject and per chunk as alone, and the selection is one thread per voxel, so each
    subject's maps are bit-identical to computing it alone.

    Parameters
    ----------
    prepared : sequence of PreparedDSCRun
        From :func:`prepare_dsc`.
    reporter : gpuperf.progress.Reporter, optional
        Fit status line (default: the reporter of a lone subject, none for a batch).

    Raises
    ------
    GpuperfError
        On a failure of the fit (then no subject of the call has a result).
    """
    for group in batch_groups(p for p in prepared if p.data is not None):  # None: computed
        for p in group:
            ensure_reporter(p.reporter).log(
                f"DSC: {p.model.method}, {p.n_voxels} voxels, {p.data.n_frames} frames, "
                f"backend {p.backend.name}" + batch_note(group, "computed")
            )
        t_fit = time.perf_counter()
        progress = ensure_reporter(group[0].reporter if len(group) == 1 else reporter)
        with progress.status("fitting"):
            fits = group[0].model.fit_batch([p.data for p in group])
        fit_s = time.perf_counter() - t_fit
        for p, f in zip(group, fits, strict=True):
            p.fit, p.fit_s, p.batch_size = f, fit_s, len(group)
            if p.qc:  # while dR2* is still in memory: the report need not read it again
                p.curves = _report_curves(p)
    for p in prepared:  # all computed: the device arrays are no longer needed (a failed call
        p.data = None  # keeps them, so that the runner can compute each subject again alone)


def write_dsc(prep: PreparedDSCRun) -> DSCRunResult:
    """Write the maps of a computed :class:`PreparedDSCRun` (last stage of :func:`run_dsc`)."""
    if prep.fit is None:
        raise GpuperfError(f"{prep.series_path}: write_dsc before compute_dsc_batch")
    rep = ensure_reporter(prep.reporter)
    fit, writer, backend = prep.fit, prep.writer, prep.backend
    tr, n_t, out_dir = prep.model.tr_s, fit.aif.size, prep.out_dir
    with writer:
        if prep.warnings:  # first: the extras' order of a run that staged them in prepare
            stage_extra(writer, {"warnings": list(prep.warnings)})
        for name in MAP_NAMES:
            data = getattr(fit, name)
            if data is None:
                continue
            spec = maps.get(name)
            writer.add_map(name, data, spec.units, spec.description)
        for name, data in fit.maps.items():  # the method's own maps (e.g. parametric: cth)
            spec = maps.get(name)
            writer.add_map(name, data, spec.units, spec.description)
        spec = maps.get("status")
        writer.add_map(
            "status",
            fit.status,
            spec.units,
            spec.description,
            extra=sidecar_entry(prep.model.status_flags),
            dtype=np.int32,
        )
        time_s = np.arange(n_t) * tr
        writer.add_tsv("aif", {"time_s": time_s, "dr2s_per_s": fit.aif})
        if prep.aif_source == "auto":
            am = np.zeros(prep.shape3d, dtype=np.uint8)
            am.reshape(-1)[fit.aif_voxels] = 1
            spec = maps.get("aifmask")
            writer.add_map("aifmask", am, spec.units, spec.description, dtype=np.uint8)
        aif_voxels_ijk = (
            []
            if fit.aif_voxels is None
            else np.stack(np.unravel_index(fit.aif_voxels, prep.shape3d), axis=1).tolist()
        )
        writer.add_json(
            "aif",
            {
                "Description": "Arterial input function used (dR2*, 1/s) and where it came from",
                "Source": prep.aif_source,
                "Units": "1/s",
                "VoxelsIJK": aif_voxels_ijk,
                "BaselineFrames": fit.n_baseline,
                "GammaVariateFit": {
                    k: v
                    for k, v in fit.info.items()
                    if k not in ("osvd_sets", "elapsed_s", "backend", "device", "AIFSliceTime_s")
                }
                or None,
                "SliceTime_s": fit.info.get("AIFSliceTime_s"),
                "OSVDThresholdSets": fit.info.get("osvd_sets"),
            },
            with_provenance=True,
        )
        plot = aif_svg(time_s, fit.aif)
        writer.add_file("aif", lambda path: path.write_bytes(plot), ".svg")
        if prep.curves is not None:
            stage_extra(writer, {"curves": prep.curves})
        elapsed = time.perf_counter() - prep.t_start
        outputs = writer.commit(elapsed_s=elapsed)
    flags = fit.status[fit.mask]
    cbf = fit.cbf[fit.mask]
    summary = {
        "voxels": int(fit.mask.sum()),
        "flagged_input": int(((flags & int(INPUT_FLAGS)) != 0).sum()),
        "osvd_no_pass": int(((flags & int(Status.OSVD_NO_PASS)) != 0).sum()),
        "baseline_frames": fit.n_baseline,
        "frames": n_t,
        "aif_voxels": None if fit.aif_voxels is None else int(fit.aif_voxels.size),
        "median_cbf": float(np.nanmedian(cbf)) if np.isfinite(cbf).any() else float("nan"),
        "backend": backend.name,
        "device": backend.device_name,
        "fit_s": round(float(prep.fit_s), 4),
        # the model's per-voxel stages: dR2*, bolus arrival, AIF selection, the fit
        "kernel_s": round(float(prep.model_s + prep.fit_s), 4),
        "elapsed_s": round(time.perf_counter() - prep.t_start, 4),
    }
    if prep.batch_size > 1:
        summary["fit_batch_subjects"] = prep.batch_size
    rep.log(f"wrote {len(outputs)} files to {out_dir} in {summary['elapsed_s']:.2f} s")
    return DSCRunResult(
        outputs,
        summary,
        out_dir=out_dir,
        prefix=writer.prefix,
        modality="dsc",
        report_extra={"baseline_s": (0.0, (fit.n_baseline - 1) * tr)},
        mask_path=prep.mask_path,
    )


run_dsc = staged_pipeline(
    prepare_dsc,
    compute_dsc_batch,
    write_dsc,
    name="run_dsc",
    load=load_dsc,  # the model's per-voxel stages are prepare_model, kept with the compute
    finish_load=prepare_model,
    doc="""Run the DSC pipeline on a 4D NIfTI series and write the maps.

    Parameters
    ----------
    series_path : path-like
        4D DSC series; its BIDS-style JSON sidecar gives ``EchoTime`` and ``RepetitionTime``
        (seconds) unless the options ``te_s`` / ``tr_s`` are given.
    out_dir : path-like
        Output folder: ``<prefix>_{cbf,cbv,mtt,tmax,ttp,threshold,oi,status}.nii.gz`` (+ ``k2``
        with leakage correction, ``kep`` with bidirectional leakage correction, ``rcbf``,
        ``rcbv``, ``rmtt`` with a reference mask), each with a JSON sidecar;
        ``<prefix>_aif.tsv`` (time_s, dr2s_per_s), ``<prefix>_aif.svg``, and
        ``<prefix>_aifmask.nii.gz`` for ``aif='auto'``.
    options : DSCOptions, optional
        The method options (:class:`gpuperf.dsc.options.DSCOptions`); keywords override it.
    mask_path : path-like, optional
        Brain mask; default automatic (see :func:`gpuperf.dsc.masking.auto_brain_mask`).
    aif : 'auto' or path-like
        'auto' (Mouridsen-style, inside the mask), a NIfTI AIF mask, or a TSV/CSV/txt curve
        (dR2* in 1/s, one value per frame; last column).
    ref_mask_path : path-like, optional
        Reference region (e.g. NAWM) for rCBF, rCBV and rMTT (each map over its mean there).
    prefix : str, optional
        Output file-name prefix (default: the series name without extension).
    device : {'auto', 'cpu', 'gpu'}
    memory_budget : int, optional
        Bytes a chunk of voxels may use.
    overwrite : bool
        Replace existing outputs.
    reporter : Reporter, optional
        Progress/log lines (silent when None).
    extra_outputs : sequence of str
        Files the caller will write next to the maps (``"report.html"``): checked against the
        overwrite policy now; when given, ``<prefix>_qc.npz`` (the report's QC curves) is
        written too.
    **option_values
        Fields of :class:`DSCOptions` (method, leakage, leakage_tail_s, discretisation, te_s,
        tr_s, baseline, skip, slice_timing, kh, rho, threshold, osvd_thresholds, oi_limit, mu,
        gamma_fit_aif, aif_auc_percentile, aif_roughness_percentile, aif_clusters). With
        ``slice_timing`` (default) a ``SliceTiming`` in the sidecar corrects Tmax and TTP to
        the AIF's slice time (:func:`slice_time_map`).

    Returns
    -------
    DSCRunResult
    """,
)


def _report_curves(p: PreparedDSCRun) -> dict | None:
    """A few voxels' dR2* and deconvolved residues for the QC report (``EXTRA_FORMAT``).

    The voxels are those the report would pick (CBF near its 10/50/90th percentiles, one flagged
    voxel); their residues come from the run's own model on those rows, and the CBF so
    recomputed is shown beside the map's value as a check.
    """
    d, fit = p.data, p.fit
    grid = d.grid
    cbf = grid.gather(np.asarray(fit.cbf))
    status = grid.gather(np.asarray(fit.status))
    rows, labels = pick_voxels(cbf, np.ones(cbf.shape, dtype=bool), status)
    if rows.size == 0:
        return None
    dr2s = d.backend.to_host(d.dr2s[d.backend.asarray(rows)]).astype(np.float64)
    sub = p.model.fit_concentration(dr2s, fit.aif, return_residue=True)
    ijk = np.unravel_index(grid.idx[rows], grid.spatial, order=grid.order)
    tr = p.model.tr_s
    curves = {
        "time_s": np.arange(dr2s.shape[1]) * tr,
        "measured": dr2s,
        "labels": [f"{lab} ({i}, {j}, {k})" for lab, i, j, k in zip(labels, *ijk, strict=True)],
        "units": "ΔR2*, 1/s",
        "cbf_map": cbf[rows].astype(np.float64),
        "cbf_recomputed": np.asarray(sub.cbf, np.float64).reshape(-1),
        "baseline_s": (0.0, (d.n_baseline - 1) * tr),
    }
    if sub.residue is not None:
        curves["residue"] = np.asarray(sub.residue, np.float64)
    return curves


def aif_svg(time_s: np.ndarray, curve: np.ndarray) -> bytes:
    """``<prefix>_aif.svg``: the AIF's dR2* against time, markers joined by a line
    (:mod:`gpuperf.svg`: no plotting library to import on the run's critical path)."""
    panel = svg.Panel(
        [svg.Series(np.asarray(time_s, float), np.asarray(curve, float), svg.BLUE, "both")],
        title="AIF",
        xlabel="time (s)",
        ylabel="dR2* (1/s)",
        legend=False,
    )
    return svg.figure([panel], 1, 500, 300)
