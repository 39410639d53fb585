"""The ASL file pipeline: BIDS series -> validated inputs -> samples -> fit -> maps with provenance.

``run_asl`` is what ``gpuperf asl`` calls: the method options are an
:class:`~gpuperf.asl.options.ASLOptions` (or its fields as keyword arguments), the rest are the
run's files and settings. The pipeline writes maps and QC data only; the caller (the CLI, the
cohort runner) publishes the HTML report from :class:`ASLRunResult`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf import maps as map_table
from gpuperf import status as st
from gpuperf.asl import constants as K
from gpuperf.asl.bids import ASLSeries, read_asl_series, slice_time_offsets
from gpuperf.asl.kinetics import METHODS
from gpuperf.asl.model import OK_FLAGS, STATUS_FLAGS, ASLFit, ASLModel
from gpuperf.asl.options import ASLOptions, check_sidecar
from gpuperf.asl.plausibility import check_asl_samples, check_asl_signal, publish_warnings
from gpuperf.asl.preprocess import (
    REFERENCE_TISSUES,
    difference_samples,
    readout_relaxation,
    reference_region_m0_blood,
    short_tr_factor,
    smooth_m0,
)
from gpuperf.backend import get_backend
from gpuperf.errors import GpuperfError, InputError
from gpuperf.io.nifti import gather, load_mask, nifti_stem, scatter, sidecar_path
from gpuperf.io.outputs import OutputWriter
from gpuperf.io.qc import pick_voxels, stage_extra
from gpuperf.io.stages import (
    PreparedRun,
    batch_groups,
    batch_note,
    expect_extra,
    staged_pipeline,
)
from gpuperf.progress import ensure_reporter
from gpuperf.provenance import provenance

#: Automatic mask: voxels whose M0 exceeds this fraction of the 99th M0 percentile.
AUTO_MASK_FRACTION = 0.1


@dataclass
class ASLRunResult:
    """What :func:`run_asl` produced.

    Attributes
    ----------
    outputs : dict of str -> Path
        Map name -> written NIfTI path (the caller adds ``report`` when it publishes one).
    summary : dict
        Voxel counts, method, median CBF/ATT, timings, constants.
    fit : ASLFit
    out_dir : Path
    prefix : str
    modality : str
        ``"asl"``.
    report_extra : dict
        Extra data for :func:`gpuperf.report.publish_run_report` (empty for ASL).
    mask_path : path-like or None
        The brain mask given, if any.
    """

    outputs: dict[str, Path]
    summary: dict[str, Any]
    fit: ASLFit | None = None
    constants: dict[str, Any] = field(default_factory=dict)
    out_dir: Path = Path(".")
    prefix: str = ""
    modality: str = "asl"
    report_extra: dict[str, Any] = field(default_factory=dict)
    mask_path: str | PathLike | None = None


def _default_prefix(asl_path: Path) -> str:
    name = nifti_stem(asl_path)
    return name[: -len("_asl")] if name.endswith("_asl") else name


def _voxel_m0(series: ASLSeries, t1_tissue_s: float) -> tuple[np.ndarray | None, dict]:
    """Voxelwise equilibrium M0 (3D) from the m0scan volumes, short-TR corrected."""
    if series.m0_image is not None:
        m0 = series.m0_image.data
        m0 = m0 if m0.ndim == 3 else m0.mean(axis=3)
    elif series.m0_type == "Included":
        m0 = series.image.data[..., series.indices("m0scan")].mean(axis=3)
    else:
        return None, {}
    factor = short_tr_factor(series.m0_tr_s, t1_tissue_s)
    info = {
        "M0Source": "m0scan volumes (averaged)",
        "M0RepetitionTimeSeconds": series.m0_tr_s,
        "ShortTRFactor": factor,
        "ShortTRT1Seconds": t1_tissue_s,
    }
    return (m0 / factor).astype(np.float32), info


@dataclass
class PreparedASL(PreparedRun):
    """One ASL series loaded, validated and reduced to the voxel block to fit.

    The first stage of :func:`run_asl` (:func:`prepare_asl`); :func:`compute_asl_batch` fills
    :attr:`fit` (for one or several subjects at once) and :func:`write_asl` writes the maps.
    The attributes shared by every pipeline are those of :class:`~gpuperf.io.stages.PreparedRun`.

    Attributes
    ----------
    model : ASLModel or None
        None for a series of precomputed ``cbf`` volumes (nothing to fit).
    deltam : ndarray (V, K) or None
        Difference signals of the voxels in :attr:`mask` (series signal units).
    m0 : float or ndarray (V,)
        M0 for the fit (tissue-equivalent, short-TR corrected), scalar for a reference region
        or ``M0Estimate``.
    data : ndarray (V, N) or None
        The series' voxels in the mask (precomputed ``cbf`` volumes; None otherwise: the
        difference samples are gathered from whole volumes, :attr:`deltam`).
    mask : ndarray of bool (X, Y, Z)
    fit : ASLFit or None
        Set by :func:`compute_asl_batch`.
    """

    asl_path: Path
    series: ASLSeries
    mask: np.ndarray
    data: np.ndarray | None
    names: list[str]
    sources: list[Path]
    model: ASLModel | None = None
    deltam: np.ndarray | None = None
    m0: Any = None
    constants: dict[str, Any] = field(default_factory=dict)
    fit: ASLFit | None = None
    pv: tuple[np.ndarray, np.ndarray] | None = None  # GM, WM fractions (partial-volume corr.)
    time_offset: np.ndarray | None = None  # (V,) slice-time offset of each voxel (2D), s
    ref: np.ndarray | None = None  # (V,) bool: reference region for rCBF/rATT
    notes: list[str] = field(default_factory=list)  # shown in the QC report

    @property
    def n_voxels(self) -> int:
        """Voxels to fit."""
        return int(self.mask.sum())

    @property
    def batch_key(self) -> tuple | None:
        """Subjects with equal keys can be fitted in one call (:meth:`ASLModel.fit_key`);
        None: nothing to fit (precomputed CBF volumes)."""
        return None if self.model is None else self.model.fit_key()


def prepare_asl(
    asl_path: str | PathLike,
    out_dir: str | PathLike,
    *,
    m0_path: str | PathLike | None = None,
    m0_ref_mask: str | PathLike | None = None,
    mask_path: str | PathLike | None = None,
    prefix: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    memory_budget: int | None = None,
    reporter: Any = None,
    extra_outputs: Sequence[str] = (),
    options: ASLOptions | None = None,
    pv_gm: str | PathLike | None = None,
    pv_wm: str | PathLike | None = None,
    ref_mask: str | PathLike | None = None,
    **option_kwargs: Any,
) -> PreparedASL:
    """Load and validate an ASL series: everything of :func:`run_asl` before the fit.

    Parameters are those of :func:`run_asl`. Raises the same errors, before any voxel is
    fitted (including :class:`~gpuperf.errors.OutputExistsError`).

    Returns
    -------
    PreparedASL
    """
    t_start = time.perf_counter()
    rep = ensure_reporter(reporter)
    asl_path = Path(asl_path)
    # None means "the default" for the keyword API (as before the options object)
    opts = ASLOptions.resolve(options, option_kwargs, "prepare_asl", none_is_default=True)
    m0_ref_tissue = opts.m0_ref_tissue
    if (m0_ref_mask is None) != (m0_ref_tissue is None):
        raise InputError(
            m0_ref_mask,
            "m0_ref_tissue",
            "reference-region calibration needs both --m0-ref-mask and --m0-ref-tissue",
        )
    backend = get_backend(device)
    series = read_asl_series(asl_path, m0_path)
    js = sidecar_path(asl_path)
    prefix = _default_prefix(asl_path) if prefix is None else prefix

    t1_tissue = opts.t1_tissue_s
    t1_blood = (
        K.t1_blood_for_field(series.field_strength_t, js)
        if opts.t1_blood_s is None
        else opts.t1_blood_s
    )
    lam = opts.lambda_
    if opts.alpha is not None:
        alpha_v, alpha_src = opts.alpha, "command line"
    elif series.labeling_efficiency is not None:
        alpha_v = check_sidecar("alpha", series.labeling_efficiency, js, "LabelingEfficiency")
        alpha_src = "LabelingEfficiency"
    else:
        alpha_v, alpha_src = K.ALPHA_BY_TYPE[series.labeling_type], "default (Alsop 2015)"
    if opts.bs_factor is not None:
        bs = opts.bs_factor
    else:
        bs = K.background_suppression_factor(series.background_suppression, series.bs_pulses)
    if opts.bs_factor is None and series.background_suppression and not series.bs_pulses:
        rep.warn(
            f"{js.name}: BackgroundSuppression is true but BackgroundSuppressionNumberPulses"
            " is missing: no background-suppression correction applied"
        )

    # ---- M0 --------------------------------------------------------------------------------
    m0_vox, m0_info = _voxel_m0(series, t1_tissue)
    if m0_vox is not None and opts.m0_fwhm_mm > 0:
        m0_vox = smooth_m0(m0_vox, opts.m0_fwhm_mm, series.image.zooms())
        m0_info["M0SmoothingFWHMmm"] = opts.m0_fwhm_mm
    if m0_vox is not None and series.m0_tr_s is None:
        rep.warn(
            "the M0 sidecar has no RepetitionTimePreparation/RepetitionTime: M0 is used without "
            "a short-TR correction"
        )
    image = series.image
    if mask_path is not None:
        mask = load_mask(mask_path, image)
    elif m0_vox is not None:
        finite = np.isfinite(m0_vox)
        top = np.percentile(m0_vox[finite], 99) if finite.any() else 0.0
        mask = finite & (m0_vox > AUTO_MASK_FRACTION * top)
        if not mask.any():
            raise InputError(
                series.m0_image.path if series.m0_image else asl_path,
                "M0",
                "no voxel has a positive M0: cannot build a mask",
            )
    else:
        mask = np.isfinite(image.data).all(axis=3)
    pv = _load_pv(pv_gm, pv_wm, image, rep)
    if m0_ref_mask is not None:
        if m0_vox is None:
            raise InputError(
                js,
                "M0Type",
                "reference-region calibration needs an M0 image (M0Type Separate/Included or --m0)",
            )
        ref = load_mask(m0_ref_mask, image, role="M0 reference mask")
        relax, relax_why = readout_relaxation(
            series.m0_sidecar.get("ScanningSequence", series.scanning_sequence)
            if series.m0_image is not None
            else series.scanning_sequence,
            series.m0_sidecar.get("PulseSequenceType", series.pulse_sequence_type)
            if series.m0_image is not None
            else series.pulse_sequence_type,
            series.m0_sidecar.get("MRAcquisitionType", series.acquisition_type)
            if series.m0_image is not None
            else series.acquisition_type,
        )
        m0b, ref_info = reference_region_m0_blood(
            m0_vox[ref] * short_tr_factor(series.m0_tr_s, t1_tissue),
            m0_ref_tissue,
            tr_s=series.m0_tr_s,
            te_s=series.m0_te_s,
            path=m0_ref_mask,
            relaxation=relax,
        )
        ref_info["EchoDecaySource"] = relax_why
        m0_for_fit: Any = lam * m0b  # the model divides by lambda: M0b = M0 / lambda
        m0_info = {
            "M0Source": "reference region",
            **ref_info,
            "ReferenceTissueTable": REFERENCE_TISSUES,
        }
    elif m0_vox is not None:
        m0_for_fit = gather(m0_vox, mask)
    elif series.m0_type == "Estimate":
        # BIDS: M0Estimate is the M0 of blood, so tissue-equivalent M0 = lambda * M0Estimate.
        m0_for_fit = lam * float(series.m0_estimate)
        m0_info = {"M0Source": "M0Estimate (M0 of blood)", "M0Estimate": series.m0_estimate}
    else:
        m0_for_fit = None  # M0Type Absent: only a series of cbf volumes can be used

    # ---- samples ---------------------------------------------------------------------------
    check_asl_signal(image.data, asl_path)  # all-zero / all-NaN: nothing to quantify
    types = series.volume_types
    has_diff = any(t in ("control", "label", "deltam") for t in types)
    data = None  # the series' voxels: only a series of cbf volumes uses them
    if not has_diff:
        with rep.status("gathering voxels"):
            data = gather(image.data, mask)
    common = {
        "asl_path": asl_path,
        "series": series,
        "backend": backend,
        "mask": mask,
        "data": data,
        "mask_path": mask_path,
        "reporter": reporter,
        "t_start": t_start,
    }
    if not has_diff:
        if pv is not None:
            raise InputError(
                series.path, "--pv-gm", "partial-volume correction needs control/label volumes"
            )
        if series.indices("cbf").size == 0:
            raise InputError(series.path, "volume_type", "no control, label, deltam or cbf volume")
        writer = OutputWriter(
            out_dir, prefix, reference=image, overwrite=overwrite, inputs=[series.path]
        )
        writer.expect(["cbf"])
        expect_extra(writer, extra_outputs)
        return PreparedASL(writer=writer, names=["cbf"], sources=[series.path], **common)
    if m0_for_fit is None:
        raise InputError(
            js,
            "M0Type",
            f"is {series.m0_type}: there is no M0 to calibrate with; pass --m0 or --m0-ref-mask",
        )
    with rep.status("gathering voxels"):  # the K difference volumes, not the T of the series
        samples = difference_samples(
            image.data, types, series.pld_s, series.tau_s, series.path, mask=mask
        )
    if np.any(~np.isfinite(samples.tau_s)):
        raise InputError(js, "LabelingDuration", "missing for some control/label volumes")

    notes: list[str] = []
    offsets_3d = slice_time_offsets(series)
    timing_info: dict[str, Any] = {"MRAcquisitionType": series.acquisition_type}
    if offsets_3d is not None and opts.ignore_slice_timing:
        rep.warn(
            f"{js.name}: SliceTiming ignored (--ignore-slice-timing): every slice is quantified "
            "at the nominal PLD"
        )
        timing_info["SliceTimingApplied"] = False
        offsets_3d = None
    elif offsets_3d is not None:
        st_s = series.slice_timing_s
        timing_info.update(
            SliceTimingApplied=True,
            SliceTimingSeconds=[float(v) for v in st_s],
            SliceEncodingDirection=series.slice_encoding_direction,
            EffectiveDelay=("TI + SliceTiming[k]" if series.is_pasl else "PLD + SliceTiming[k]"),
        )
        notes.append(
            f"2D readout: slice timing applied, effective delay "
            f"{'TI' if series.is_pasl else 'PLD'} + SliceTiming[k] "
            f"(SliceTiming {st_s.min():.3g} to {st_s.max():.3g} s over {st_s.size} slices)"
        )
    elif series.is_2d:
        rep.warn(
            f"{js.name}: MRAcquisitionType is 2D but there is no SliceTiming: every slice is "
            "quantified at the nominal PLD (later slices are read later: CBF is biased there)"
        )
        timing_info["SliceTimingApplied"] = False
        notes.append("2D readout without SliceTiming: slices quantified at the nominal PLD")
    else:
        timing_info["SliceTimingApplied"] = False
    time_offset = None if offsets_3d is None else gather(offsets_3d, mask).astype(np.float64)
    ref_vox = None
    if ref_mask is not None:
        ref_vox = gather(load_mask(ref_mask, image, role="reference mask"), mask)
        if not ref_vox.any():
            raise InputError(ref_mask, "ref_mask", "no voxel of the reference mask is in the mask")

    asl_model = ASLModel(
        series.labeling_type,
        samples.pld_s,
        samples.tau_s,
        options=opts.replace(t1_blood_s=t1_blood, alpha=alpha_v, bs_factor=bs),
        device=device,
        memory_budget=memory_budget,
    )
    names = asl_model.map_names()
    if pv is not None:
        names += ["cbf_gm", "cbf_wm"]
    if ref_vox is not None:
        names += ["rcbf"] + (["ratt"] if "att" in names else [])
    sources = [series.path] + ([series.m0_image.path] if series.m0_image is not None else [])
    writer = OutputWriter(
        out_dir,
        prefix,
        reference=image,
        overwrite=overwrite,
        inputs=sources
        + ([Path(mask_path)] if mask_path else [])
        + ([Path(pv_gm), Path(pv_wm)] if pv is not None else [])
        + ([Path(ref_mask)] if ref_mask is not None else []),
    )
    writer.expect(names)
    if METHODS[asl_model.method].fits or notes:
        writer.expect(["qc"], ext=".npz")
    expect_extra(writer, extra_outputs)
    warns = check_asl_samples(samples, series.is_pasl, js, asl_path)
    publish_warnings(warns, rep, writer if extra_outputs else None)
    constants = {
        "LabelingEfficiencySource": alpha_src,
        "T1BloodSource": "command line" if opts.t1_blood_s is not None else "MagneticFieldStrength",
        "MagneticFieldStrength": series.field_strength_t,
        "BackgroundSuppression": series.background_suppression,
        "BackgroundSuppressionNumberPulses": series.bs_pulses,
        "BackgroundSuppressionEfficiencyPerPulse": K.BS_EFFICIENCY_PER_PULSE,
        "BackgroundSuppressionFactorSource": "command line"
        if opts.bs_factor is not None
        else "BackgroundSuppression, BackgroundSuppressionNumberPulses",
        "M0Type": series.m0_type,
        # informational: scanners may average pairs before export, so no check against it
        "TotalAcquiredPairs": series.sidecar.get("TotalAcquiredPairs"),
        **m0_info,
        "SliceTiming": timing_info,
        "Samples": int(samples.deltam.shape[1]),
        "Voxels": int(mask.sum()),
        "StatusFlags": st.describe(STATUS_FLAGS),
        "ASLOptions": opts.to_parameters(),
    }
    if series.is_pasl:
        constants["BolusCutOffTechnique"] = series.bolus_cutoff_technique
    if ref_vox is not None:
        constants["ReferenceMask"] = str(ref_mask)
    if pv is not None:
        from gpuperf.asl import pvc

        constants["PartialVolumeCorrection"] = {
            "Method": "linear regression in a local kernel (Asllani et al., MRM 2008)",
            "KernelVoxels": list(pvc.KERNEL),
            "MinFraction": pvc.MIN_FRACTION,
            "GM": str(pv_gm),
            "WM": str(pv_wm),
        }
    return PreparedASL(
        writer=writer,
        names=names,
        sources=sources,
        model=asl_model,
        deltam=samples.deltam,
        m0=m0_for_fit,
        constants=constants,
        pv=pv,
        time_offset=time_offset,
        ref=ref_vox,
        notes=notes,
        **common,
    )


def compute_asl_batch(prepared: Sequence[PreparedASL], reporter: Any = None) -> None:
    """Fit one or several prepared series; sets each one's :attr:`PreparedASL.fit`.

    Series with the same :attr:`PreparedASL.batch_key` (same model, timings, constants,
    bounds, precision, device) are fitted by ONE call of :meth:`ASLModel.fit` over their
    concatenated voxels (one kernel launch per chunk instead of one per subject), then the
    maps are split back. The fit is voxelwise (each voxel's result depends only on its own
    ΔM/M0 and the model), so every subject's maps are bit-identical to fitting it alone.

    Parameters
    ----------
    prepared : sequence of PreparedASL
        From :func:`prepare_asl`; series without a model (precomputed CBF) are skipped.
    reporter : gpuperf.progress.Reporter, optional
        Fit progress (default: the reporter of a lone subject, none for a batch).

    Raises
    ------
    GpuperfError
        On a failure of the fit (then no subject of the call has a result).
    """
    for group in batch_groups(prepared):  # precomputed CBF (no model) has no key
        model = group[0].model
        progress = group[0].reporter if reporter is None and len(group) == 1 else reporter
        for p in group:
            ensure_reporter(p.reporter).log(
                f"ASL: {p.series.labeling_type}, {model.method}, {p.n_voxels} voxels, "
                f"{p.deltam.shape[1]} samples, backend {p.backend.name}"
                + batch_note(group, "fitted")
            )
        t_fit = time.perf_counter()
        if len(group) == 1:
            fits = [
                model.fit(
                    group[0].deltam,
                    group[0].m0,
                    reporter=progress,
                    time_offset_s=group[0].time_offset,
                )
            ]
        else:
            deltam = np.concatenate([p.deltam for p in group], axis=0)
            # a scalar M0 (reference region, M0Estimate) becomes a per-voxel column: the fit
            # casts both to the model's dtype, so the values are the same bits
            m0 = np.concatenate(
                [np.broadcast_to(np.asarray(p.m0, dtype=np.float64), (p.n_voxels,)) for p in group]
            )
            offsets = None
            if any(p.time_offset is not None for p in group):
                offsets = np.concatenate(
                    [
                        np.zeros(p.n_voxels) if p.time_offset is None else p.time_offset
                        for p in group
                    ]
                )
            whole = model.fit(deltam, m0, reporter=progress, time_offset_s=offsets)
            fits = split_fit(whole, [p.n_voxels for p in group])
        fit_s = time.perf_counter() - t_fit
        for p, f in zip(group, fits, strict=True):
            p.fit, p.fit_s, p.batch_size = f, fit_s, len(group)


def split_fit(fit: ASLFit, sizes: Sequence[int]) -> list[ASLFit]:
    """Cut a fit of concatenated voxels (V,) into consecutive fits of ``sizes`` voxels."""
    if sum(sizes) != fit.cbf.shape[0]:
        raise ValueError(f"sizes sum to {sum(sizes)}, the fit has {fit.cbf.shape[0]} voxels")
    edges = np.cumsum([0, *sizes])
    arrays = {
        f.name: getattr(fit, f.name)
        for f in fields(ASLFit)
        if isinstance(getattr(fit, f.name), np.ndarray)
    }
    return [
        replace(fit, **{k: v[a:b].copy() for k, v in arrays.items()}, extra=dict(fit.extra))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def write_asl(prep: PreparedASL) -> ASLRunResult:
    """Write the maps of a fitted :class:`PreparedASL` (last stage of :func:`run_asl`)."""
    writer, series, mask, backend = prep.writer, prep.series, prep.mask, prep.backend
    if prep.model is None:
        return _precomputed_cbf(prep)
    if prep.fit is None:
        raise GpuperfError(f"{prep.asl_path}: write_asl before compute_asl_batch")
    asl_model, fit, fit_s = prep.model, prep.fit, prep.fit_s
    try:
        constants = {**asl_model.constants(), **prep.constants}
        writer.provenance = provenance(backend, constants, sources=prep.sources)
        pvc_maps = _pvc_maps(prep) if prep.pv is not None else {}
        if prep.ref is not None:
            rel, rel_info = relative_maps(fit, prep.ref)
            pvc_maps.update({k: scatter(v, mask) for k, v in rel.items()})
            constants["ReferenceRegion"] = rel_info
            writer.provenance = provenance(backend, constants, sources=prep.sources)
        outputs: dict[str, Path] = {}
        for name in prep.names:
            if name in pvc_maps:
                outputs[name] = writer.add_map(name, pvc_maps[name])
                continue
            arr = getattr(fit, name)
            if arr is None:
                continue
            spec = map_table.get(name)
            if name == "status":
                outputs[name] = writer.add_map(
                    name,
                    scatter(arr, mask, fill=int(st.Status.OUTSIDE_MASK), dtype=st.DTYPE),
                    units=spec.units,
                    description=spec.description,
                    extra=st.sidecar_entry(STATUS_FLAGS),
                    dtype=st.DTYPE,
                )
                continue
            outputs[name] = writer.add_map(
                name, scatter(arr, mask), units=spec.units, description=spec.description
            )
        qc = _qc_curves(asl_model, fit, prep.deltam, prep.m0, mask, prep.time_offset)
        if prep.notes:
            qc = {**(qc or {}), "notes": list(prep.notes)}
        if qc is not None:
            qc["timings"] = {
                "fit": fit_s,
                "total_before_write": time.perf_counter() - prep.t_start,
            }
            outputs["qc"] = stage_extra(writer, qc)
        elapsed = time.perf_counter() - prep.t_start
        writer.commit(elapsed_s=elapsed)
        ok = np.isin(fit.status, OK_FLAGS)
        summary = {
            "method": asl_model.method,
            "labeling_type": series.labeling_type,
            "voxels": int(mask.sum()),
            "samples": int(prep.deltam.shape[1]),
            "converged": int(ok.sum()),
            "median_cbf": float(np.nanmedian(fit.cbf[ok])) if ok.any() else float("nan"),
            "fit_seconds": fit_s,
            "elapsed_seconds": elapsed,
            "backend": backend.name,
        }
        if prep.batch_size > 1:
            summary["fit_batch_subjects"] = prep.batch_size
        if fit.att is not None and ok.any():
            summary["median_att_s"] = float(np.nanmedian(fit.att[ok]))
        result = _result(prep, outputs, summary, fit, constants)
    except BaseException:
        writer.abort()  # nothing staged survives a failure or an interruption
        raise
    return result


def _result(prep: PreparedASL, outputs, summary, fit=None, constants=None) -> ASLRunResult:
    return ASLRunResult(
        outputs,
        summary,
        fit,
        constants or {},
        out_dir=prep.out_dir,
        prefix=prep.prefix,
        mask_path=prep.mask_path,
    )


run_asl = staged_pipeline(
    prepare_asl,
    compute_asl_batch,
    write_asl,
    name="run_asl",
    doc="""Quantify CBF (and ATT) from a BIDS ASL series and write the maps.

    Parameters
    ----------
    asl_path : path-like
        ``*_asl.nii.gz`` with ``*_asl.json`` and ``*_aslcontext.tsv`` beside it.
    out_dir : path-like
        Output folder.
    m0_path : path-like, optional
        M0 image overriding the sidecar's M0Type.
    m0_ref_mask : path-like, optional
        Reference-region mask: calibrate with one M0 of blood from this region instead of
        voxelwise (needs ``m0_ref_tissue``).
    mask_path : path-like, optional
        Brain mask; default: voxels with M0 above 10 % of its 99th percentile (all voxels when
        there is no voxelwise M0).
    prefix : str, optional
        Output prefix (default: the series name without ``_asl``).
    device : {'auto', 'cpu', 'gpu'}
    overwrite : bool
    memory_budget : int, optional
        Bytes per chunk.
    reporter : gpuperf.progress.Reporter, optional
    extra_outputs : sequence of str
        Files the caller will write next to the maps (``"report.html"``): checked against the
        overwrite policy before any work.
    options : ASLOptions, optional
        The method options (default ``ASLOptions()``).
    **option_kwargs
        Fields of :class:`~gpuperf.asl.options.ASLOptions` overriding ``options`` (``model``,
        ``t1_tissue_s``, ``t1_blood_s``, ``lambda_``, ``alpha``, ``bs_factor``, ``arterial``,
        ``m0_ref_tissue`` ...); None keeps the default. T1 of blood defaults from
        MagneticFieldStrength, alpha from LabelingEfficiency, else 0.85 pCASL / 0.68 CASL /
        0.98 PASL.
    pv_gm, pv_wm : path-like, optional
        Grey- and white-matter probability maps on the ASL grid: also write ``cbf_gm`` and
        ``cbf_wm``, partial-volume corrected by linear regression in a 5 x 5 x 1 kernel
        (Asllani et al. 2008; :func:`gpuperf.asl.pvc.lr_pvc`). Both or neither.
    ref_mask : path-like, optional
        Reference region (e.g. normal-appearing white matter, whole grey matter): also write
        ``rcbf`` (and ``ratt`` for the kinetic fit), CBF (ATT) over its mean in the region's
        converged voxels.

    Returns
    -------
    ASLRunResult
    """,
)


def relative_maps(fit: ASLFit, ref: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """rCBF (and rATT): the maps over their mean in the reference region's converged voxels.

    Relative CBF against normal-appearing white matter or whole grey matter is the
    normalisation MS perfusion studies report; it cancels the global calibration (M0,
    labelling efficiency) shared by all voxels of a subject.

    Parameters
    ----------
    fit : ASLFit (per-voxel arrays (V,))
    ref : (V,) bool, the reference region among the fitted voxels.

    Raises
    ------
    GpuperfError
        No converged voxel with a finite, positive value in the reference region.
    """
    ok = ref & np.isin(fit.status, OK_FLAGS)
    out, info = {}, {"Voxels": int(ref.sum()), "ConvergedVoxels": int(ok.sum())}
    for name, src in (("rcbf", fit.cbf), ("ratt", fit.att)):
        if src is None:
            continue
        vals = np.asarray(src, dtype=np.float64)[ok]
        vals = vals[np.isfinite(vals)]
        mean = float(vals.mean()) if vals.size else float("nan")
        if not mean > 0:
            raise GpuperfError(
                f"reference region: no converged voxel with a positive {name[1:].upper()} "
                "(cannot normalise)"
            )
        out[name] = (np.asarray(src, dtype=np.float64) / mean).astype(np.float32)
        info[f"Mean{name[1:].upper()}"] = mean
    return out, info


def _qc_curves(
    model: ASLModel, fit: ASLFit, deltam, m0, mask, time_offset=None
) -> dict[str, Any] | None:
    """A few voxels' measured dM/M0 and fitted curves (``gpuperf.report`` EXTRA_FORMAT)."""
    if not METHODS[model.method].fits:
        return None
    # the report's own choice (CBF nearest its 10/50/90th percentiles) among converged voxels
    picks, _ = pick_voxels(fit.cbf, np.isin(fit.status, OK_FLAGS), None)
    if picks.size == 0:
        return None
    m0v = np.broadcast_to(np.asarray(m0, dtype=np.float64), (deltam.shape[0],))[picks]
    order = np.argsort(model.pld_s, kind="stable")
    measured = (deltam[picks] / m0v[:, None])[:, order]
    fine_pld = np.linspace(0.0, float(model.pld_s.max()) * 1.1, 100)
    fine_tau = np.full(fine_pld.size, float(np.median(model.tau_s)))
    fine = model.with_samples(fine_pld, fine_tau)
    cols = [fit.cbf[picks], fit.att[picks]]
    if model.arterial:
        cols += [np.nan_to_num(fit.abv[picks]), np.nan_to_num(fit.abat[picks], nan=99.0)]
    params = np.stack(cols, 1).astype(np.float64)
    if time_offset is not None:  # each voxel's curve at its own slice's sample times
        from gpuperf.fit.models.buxton import slice_timed

        params = np.column_stack([params, np.asarray(time_offset)[picks]])
        fitted, _ = slice_timed(fine.kinetic_model).evaluate(
            np, params, fine.sample_times(), fine.consts()
        )
    else:
        fitted, _ = fine.kinetic_model.evaluate(np, params, fine.sample_times(), fine.consts())
    vox = np.argwhere(mask)[picks]
    return {
        "curves": {
            "time_s": model.pld_s[order],
            "measured": measured,
            "fitted": fitted,
            "fit_time_s": fine_pld,
            "voxels": vox,
            "labels": [f"CBF {fit.cbf[i]:.0f}, ATT {fit.att[i]:.2f} s" for i in picks],
            "units": "dM/M0",
        }
    }


def _load_pv(
    pv_gm: str | PathLike | None, pv_wm: str | PathLike | None, image: Any, rep: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """GM and WM fractions on the grid of ``image`` (None without them)."""
    if pv_gm is None and pv_wm is None:
        return None
    if pv_gm is None or pv_wm is None:
        raise InputError(pv_gm or pv_wm, "pv_gm/pv_wm", "give both --pv-gm and --pv-wm")
    from gpuperf.io.nifti import check_same_grid, load_image

    out = []
    for path, tissue in ((pv_gm, "GM"), (pv_wm, "WM")):
        img = load_image(path, ndim=(3,), role=f"{tissue} probability map")
        check_same_grid(image, img)
        d = np.nan_to_num(np.asarray(img.data, dtype=np.float64), nan=0.0)
        if d.size and (d.min() < -0.01 or d.max() > 1.01):
            rep.warn(
                f"{Path(path).name}: {tissue} fractions outside [0, 1] "
                f"({d.min():.3g} to {d.max():.3g}); clipped to [0, 1]"
            )
        out.append(np.clip(d, 0.0, 1.0))
    return out[0], out[1]


def _pvc_maps(prep: PreparedASL) -> dict[str, np.ndarray]:
    """``cbf_gm`` and ``cbf_wm`` of a fitted series (:func:`gpuperf.asl.pvc.lr_pvc`)."""
    from gpuperf.asl.pvc import lr_pvc

    assert prep.pv is not None and prep.fit is not None
    cbf = np.full(prep.mask.shape, np.nan)
    cbf[prep.mask] = prep.fit.cbf
    gm, wm = lr_pvc(cbf, prep.pv[0], prep.pv[1], prep.mask)
    return {"cbf_gm": gm, "cbf_wm": wm}


def _precomputed_cbf(prep: PreparedASL) -> ASLRunResult:
    """A series of ``cbf`` volumes only: their mean is written as the CBF map (no model)."""
    series, writer = prep.series, prep.writer
    idx = series.indices("cbf")
    cbf = prep.data[:, idx].mean(axis=1)
    writer.provenance = provenance(
        prep.backend,
        {"Method": "mean of cbf volumes (precomputed)", "CBFVolumes": idx.tolist()},
        sources=[series.path],
    )
    out = {
        "cbf": writer.add_map(
            "cbf",
            scatter(cbf, prep.mask),
            units=map_table.get("cbf").units,
            description="Mean of the series' precomputed cbf volumes",
        )
    }
    elapsed = time.perf_counter() - prep.t_start
    writer.commit(elapsed_s=elapsed)
    return _result(
        prep,
        out,
        {"method": "precomputed", "voxels": int(prep.mask.sum()), "elapsed_seconds": elapsed},
    )
