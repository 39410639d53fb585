"""The ASL file pipeline: BIDS series -> validated inputs -> samples -> fit -> maps with provenance.

``run_asl`` is what ``gpuperf asl`` calls; every CLI option is one of its arguments.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.asl import constants as K
from gpuperf.asl.bids import ASLSeries, read_asl_series
from gpuperf.asl.model import STATUS_MEANINGS, ASLFit, ASLModel
from gpuperf.asl.preprocess import (
    REFERENCE_TISSUES,
    difference_samples,
    reference_region_m0_blood,
    short_tr_factor,
)
from gpuperf.backend import get_backend
from gpuperf.errors import GpuperfError, InputError
from gpuperf.io.nifti import gather, load_mask, nifti_stem, scatter, sidecar_path
from gpuperf.io.outputs import OutputWriter
from gpuperf.progress import ensure_reporter
from gpuperf.provenance import provenance

MODELS = ("auto", "whitepaper", "gkm")
#: Automatic mask: voxels whose M0 exceeds this fraction of the 99th M0 percentile.
AUTO_MASK_FRACTION = 0.1


@dataclass
class ASLRunResult:
    """What :func:`run_asl` produced.

    Attributes
    ----------
    outputs : dict of str -> Path
        Map name -> written NIfTI path.
    summary : dict
        Voxel counts, method, median CBF/ATT, timings, constants.
    fit : ASLFit
    """

    outputs: dict[str, Path]
    summary: dict[str, Any]
    fit: ASLFit | None = None
    constants: dict[str, Any] = field(default_factory=dict)


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
class PreparedASL:
    """One ASL series loaded, validated and reduced to the voxel block to fit.

    The first stage of :func:`run_asl` (:func:`prepare_asl`); :func:`compute_asl_batch` fills
    :attr:`fit` (for one or several subjects at once) and :func:`write_asl` writes the maps.

    Attributes
    ----------
    model : ASLModel or None
        None for a series of precomputed ``cbf`` volumes (nothing to fit).
    deltam : ndarray (V, K) or None
        Difference signals of the voxels in :attr:`mask` (series signal units).
    m0 : float or ndarray (V,)
        M0 for the fit (tissue-equivalent, short-TR corrected), scalar for a reference region
        or ``M0Estimate``.
    data : ndarray (V, N)
        The series' voxels in the mask (used for precomputed ``cbf`` volumes).
    mask : ndarray of bool (X, Y, Z)
    writer : OutputWriter
        Checked (overwrite policy) before anything is computed; nothing is staged yet.
    fit : ASLFit or None
        Set by :func:`compute_asl_batch`.
    fit_s : float
        Seconds of the fit (of the whole batch when fitted with other subjects).
    """

    asl_path: Path
    out_dir: Path
    prefix: str
    series: ASLSeries
    backend: Any
    mask: np.ndarray
    data: np.ndarray
    writer: OutputWriter
    names: list[str]
    sources: list[Path]
    model: ASLModel | None = None
    deltam: np.ndarray | None = None
    m0: Any = None
    constants: dict[str, Any] = field(default_factory=dict)
    mask_path: str | PathLike | None = None
    overwrite: bool = False
    report: bool = True
    reporter: Any = None
    t_start: float = 0.0
    fit: ASLFit | None = None
    fit_s: float = 0.0
    batch_size: int = 1
    pv: tuple[np.ndarray, np.ndarray] | None = None  # GM, WM fractions (partial-volume corr.)

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
    m0_ref_tissue: str | None = None,
    mask_path: str | PathLike | None = None,
    model: str = "auto",
    t1_tissue_s: float | None = None,
    t1_blood_s: float | None = None,
    lambda_: float | None = None,
    alpha: float | None = None,
    arterial: bool = False,
    prefix: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    memory_budget: int | None = None,
    reporter: Any = None,
    report: bool = True,
    pv_gm: str | PathLike | None = None,
    pv_wm: str | PathLike | None = None,
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
    if model not in MODELS:
        raise InputError(None, "model", f"expected one of {', '.join(MODELS)}, found {model!r}")
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

    t1_tissue = K.T1_TISSUE_S if t1_tissue_s is None else float(t1_tissue_s)
    t1_blood = (
        K.t1_blood_for_field(series.field_strength_t, js)
        if t1_blood_s is None
        else float(t1_blood_s)
    )
    lam = K.LAMBDA_ML_G if lambda_ is None else float(lambda_)
    if alpha is not None:
        alpha_v, alpha_src = float(alpha), "command line"
    elif series.labeling_efficiency is not None:
        alpha_v, alpha_src = series.labeling_efficiency, "LabelingEfficiency"
    else:
        alpha_v, alpha_src = K.ALPHA_BY_TYPE[series.labeling_type], "default (Alsop 2015)"
    bs = K.background_suppression_factor(series.background_suppression, series.bs_pulses)
    if series.background_suppression and not series.bs_pulses:
        rep.warn(
            f"{js.name}: BackgroundSuppression is true but BackgroundSuppressionNumberPulses"
            " is missing: no background-suppression correction applied"
        )

    # ---- M0 --------------------------------------------------------------------------------
    m0_vox, m0_info = _voxel_m0(series, t1_tissue)
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
        m0b, ref_info = reference_region_m0_blood(
            m0_vox[ref] * short_tr_factor(series.m0_tr_s, t1_tissue),
            m0_ref_tissue,
            tr_s=series.m0_tr_s,
            te_s=series.m0_te_s,
            path=m0_ref_mask,
        )
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
    types = series.volume_types
    has_diff = any(t in ("control", "label", "deltam") for t in types)
    with rep.status("gathering voxels"):
        data = gather(image.data, mask)
    common = {
        "asl_path": asl_path,
        "out_dir": Path(out_dir),
        "prefix": prefix,
        "series": series,
        "backend": backend,
        "mask": mask,
        "data": data,
        "mask_path": mask_path,
        "overwrite": overwrite,
        "report": report,
        "reporter": reporter,
        "t_start": t_start,
    }
    if not has_diff:
        if pv is not None:
            raise InputError(
                series.path, "pv_gm", "partial-volume correction needs control/label volumes"
            )
        if series.indices("cbf").size == 0:
            raise InputError(series.path, "volume_type", "no control, label, deltam or cbf volume")
        writer = OutputWriter(
            out_dir, prefix, reference=image, overwrite=overwrite, inputs=[series.path]
        )
        writer.expect(["cbf"])
        return PreparedASL(writer=writer, names=["cbf"], sources=[series.path], **common)
    if m0_for_fit is None:
        raise InputError(
            js,
            "M0Type",
            f"is {series.m0_type}: there is no M0 to calibrate with; pass --m0 or --m0-ref-mask",
        )
    samples = difference_samples(data, types, series.pld_s, series.tau_s, series.path)
    if np.any(~np.isfinite(samples.tau_s)):
        raise InputError(js, "LabelingDuration", "missing for some control/label volumes")

    asl_model = ASLModel(
        series.labeling_type,
        samples.pld_s,
        samples.tau_s,
        method=model,
        t1_tissue_s=t1_tissue,
        t1_blood_s=t1_blood,
        lambda_=lam,
        alpha=alpha_v,
        bs_factor=bs,
        arterial=arterial,
        device=device,
        memory_budget=memory_budget,
    )
    names = ["cbf", "status"]
    if asl_model.method == "gkm":
        names += ["att", "cbf_stderr", "att_stderr", "residual"]
        if arterial:
            names += ["abv", "abat", "abv_stderr", "abat_stderr"]
    elif samples.pld_s.size > 1:
        names += ["cbf_stderr"]
    if pv is not None:
        names += ["cbf_gm", "cbf_wm"]
    sources = [series.path] + ([series.m0_image.path] if series.m0_image is not None else [])
    writer = OutputWriter(
        out_dir,
        prefix,
        reference=image,
        overwrite=overwrite,
        inputs=sources
        + ([Path(mask_path)] if mask_path else [])
        + ([Path(pv_gm), Path(pv_wm)] if pv is not None else []),
    )
    writer.expect(names)
    if asl_model.method == "gkm":
        writer.expect(["qc"], ext=".npz")
    if report:
        writer.expect(["report"], ext=".html")
    constants = {
        "LabelingEfficiencySource": alpha_src,
        "T1BloodSource": "command line" if t1_blood_s is not None else "MagneticFieldStrength",
        "MagneticFieldStrength": series.field_strength_t,
        "BackgroundSuppression": series.background_suppression,
        "BackgroundSuppressionNumberPulses": series.bs_pulses,
        "BackgroundSuppressionEfficiencyPerPulse": K.BS_EFFICIENCY_PER_PULSE,
        "M0Type": series.m0_type,
        # informational: scanners may average pairs before export, so no check against it
        "TotalAcquiredPairs": series.sidecar.get("TotalAcquiredPairs"),
        **m0_info,
        "Samples": int(samples.deltam.shape[1]),
        "Voxels": int(mask.sum()),
        "StatusCodes": STATUS_MEANINGS,
    }
    if series.is_pasl:
        constants["BolusCutOffTechnique"] = series.bolus_cutoff_technique
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
    groups: dict[tuple, list[PreparedASL]] = {}
    for p in prepared:
        if p.batch_key is not None:
            groups.setdefault(p.batch_key, []).append(p)
    for group in groups.values():
        model = group[0].model
        progress = group[0].reporter if reporter is None and len(group) == 1 else reporter
        for p in group:
            ensure_reporter(p.reporter).log(
                f"ASL: {p.series.labeling_type}, {model.method}, {p.n_voxels} voxels, "
                f"{p.deltam.shape[1]} samples, backend {p.backend.name}"
                + (
                    f"; fitted with {len(group) - 1} other series "
                    f"({sum(q.n_voxels for q in group)} voxels in one call)"
                    if len(group) > 1
                    else ""
                )
            )
        t_fit = time.perf_counter()
        if len(group) == 1:
            fits = [model.fit(group[0].deltam, group[0].m0, reporter=progress)]
        else:
            deltam = np.concatenate([p.deltam for p in group], axis=0)
            # a scalar M0 (reference region, M0Estimate) becomes a per-voxel column: the fit
            # casts both to the model's dtype, so the values are the same bits
            m0 = np.concatenate(
                [np.broadcast_to(np.asarray(p.m0, dtype=np.float64), (p.n_voxels,)) for p in group]
            )
            whole = model.fit(deltam, m0, reporter=progress)
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
    rep = ensure_reporter(prep.reporter)
    asl_model, fit, fit_s = prep.model, prep.fit, prep.fit_s
    try:
        constants = {**asl_model.constants(), **prep.constants}
        writer.provenance = provenance(backend, constants, sources=prep.sources)
        descr = {
            "cbf": ("ml/100g/min", "Cerebral blood flow"),
            "att": ("s", "Arterial transit time"),
            "cbf_stderr": ("ml/100g/min", "Standard error of CBF"),
            "att_stderr": ("s", "Standard error of ATT"),
            "residual": ("a.u.", "RMS fit residual in signal units of the ASL series"),
            "abv": ("%", "Arterial blood volume (macrovascular component)"),
            "abat": ("s", "Arterial bolus arrival time (macrovascular component)"),
            "abv_stderr": ("%", "Standard error of aBV"),
            "abat_stderr": ("s", "Standard error of aBAT"),
            "cbf_gm": ("ml/100g/min", "Grey-matter CBF, partial-volume corrected (LR)"),
            "cbf_wm": ("ml/100g/min", "White-matter CBF, partial-volume corrected (LR)"),
        }
        pvc_maps = _pvc_maps(prep) if prep.pv is not None else {}
        outputs: dict[str, Path] = {}
        for name in prep.names:
            if name == "status":
                status = np.full(mask.shape, -1, dtype=np.int16)
                status[mask] = fit.status
                outputs[name] = writer.add_map(
                    "status",
                    status,
                    units="code",
                    dtype=np.int16,
                    description="Fit status: "
                    + "; ".join(f"{k} {v}" for k, v in STATUS_MEANINGS.items()),
                )
                continue
            if name in pvc_maps:
                units, desc = descr[name]
                outputs[name] = writer.add_map(name, pvc_maps[name], units=units, description=desc)
                continue
            arr = getattr(fit, name)
            if arr is None:
                continue
            units, desc = descr[name]
            full = np.full(mask.shape, np.nan, dtype=np.float32)
            full[mask] = arr
            outputs[name] = writer.add_map(name, full, units=units, description=desc)
        qc = _qc_curves(asl_model, fit, prep.deltam, prep.m0, mask)
        if qc is not None:
            try:
                from gpuperf.io.qc import stage_extra
            except ImportError:  # pragma: no cover - the report package is optional here
                stage_extra = None
            if stage_extra is not None:
                qc["timings"] = {
                    "fit": fit_s,
                    "total_before_write": time.perf_counter() - prep.t_start,
                }
                outputs["qc"] = stage_extra(writer, qc)
        elapsed = time.perf_counter() - prep.t_start
        writer.commit(elapsed_s=elapsed)
        ok = (fit.status == 0) | (fit.status == 4)
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
        result = ASLRunResult(outputs, summary, fit, constants)
    except BaseException:
        writer.abort()  # nothing staged survives a failure or an interruption
        raise
    if prep.report:
        from gpuperf.report import publish_run_report

        for path in publish_run_report(
            prep.out_dir,
            prep.prefix,
            "asl",
            mask=prep.mask_path,
            overwrite=prep.overwrite,
            reporter=rep,
        ):
            result.outputs["report"] = path
    return result


def run_asl(
    asl_path: str | PathLike,
    out_dir: str | PathLike,
    *,
    m0_path: str | PathLike | None = None,
    m0_ref_mask: str | PathLike | None = None,
    m0_ref_tissue: str | None = None,
    mask_path: str | PathLike | None = None,
    model: str = "auto",
    t1_tissue_s: float | None = None,
    t1_blood_s: float | None = None,
    lambda_: float | None = None,
    alpha: float | None = None,
    arterial: bool = False,
    prefix: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    memory_budget: int | None = None,
    reporter: Any = None,
    report: bool = True,
    pv_gm: str | PathLike | None = None,
    pv_wm: str | PathLike | None = None,
) -> ASLRunResult:
    """Quantify CBF (and ATT) from a BIDS ASL series and write the maps.

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
    m0_ref_tissue : {'csf', 'wm', 'gm'}, optional
        Tissue of the reference region (T1, T2 and partition coefficient in
        :data:`gpuperf.asl.preprocess.REFERENCE_TISSUES`).
    mask_path : path-like, optional
        Brain mask; default: voxels with M0 above 10 % of its 99th percentile (all voxels when
        there is no voxelwise M0).
    model : {'auto', 'whitepaper', 'gkm'}
        ``auto``: consensus formula for one PLD, kinetic-model fit for several.
    t1_tissue_s, t1_blood_s, lambda_, alpha : float, optional
        Override defaults and sidecar values (T1 of blood defaults from MagneticFieldStrength,
        alpha from LabelingEfficiency, else 0.85 pCASL / 0.68 CASL / 0.98 PASL).
    arterial : bool
        Fit the macrovascular component (aBV, aBAT) too ((p)CASL kinetic model).
    prefix : str, optional
        Output prefix (default: the series name without ``_asl``).
    device : {'auto', 'cpu', 'gpu'}
    overwrite : bool
    memory_budget : int, optional
        Bytes per chunk.
    reporter : gpuperf.progress.Reporter, optional
    report : bool
        Also write ``<prefix>_report.html``, the visual QC page (:mod:`gpuperf.report`).
    pv_gm, pv_wm : path-like, optional
        Grey- and white-matter probability maps on the ASL grid: also write ``cbf_gm`` and
        ``cbf_wm``, partial-volume corrected by linear regression in a 5 x 5 x 1 kernel
        (Asllani et al. 2008; :func:`gpuperf.asl.pvc.lr_pvc`). Both or neither.

    Returns
    -------
    ASLRunResult
    """
    prep = prepare_asl(
        asl_path,
        out_dir,
        m0_path=m0_path,
        m0_ref_mask=m0_ref_mask,
        m0_ref_tissue=m0_ref_tissue,
        mask_path=mask_path,
        model=model,
        t1_tissue_s=t1_tissue_s,
        t1_blood_s=t1_blood_s,
        lambda_=lambda_,
        alpha=alpha,
        arterial=arterial,
        prefix=prefix,
        device=device,
        overwrite=overwrite,
        memory_budget=memory_budget,
        reporter=reporter,
        report=report,
        pv_gm=pv_gm,
        pv_wm=pv_wm,
    )
    compute_asl_batch([prep])
    return write_asl(prep)


# The three stages, for callers that fit several subjects in one call (the cohort runner):
# ``run_asl.prepare(...)`` has run_asl's signature; see gpuperf.cohort.jobs (batching).
run_asl.prepare = prepare_asl  # type: ignore[attr-defined]
run_asl.compute = compute_asl_batch  # type: ignore[attr-defined]
run_asl.write = write_asl  # type: ignore[attr-defined]


def _qc_curves(model: ASLModel, fit: ASLFit, deltam, m0, mask) -> dict[str, Any] | None:
    """A few voxels' measured dM/M0 and fitted curves (``gpuperf.report`` EXTRA_FORMAT)."""
    if model.method != "gkm":
        return None
    from gpuperf.io.qc import pick_voxels

    # the report's own choice (CBF nearest its 10/50/90th percentiles) among converged voxels
    picks, _ = pick_voxels(fit.cbf, np.isin(fit.status, (0, 4)), None)
    if picks.size == 0:
        return None
    m0v = np.broadcast_to(np.asarray(m0, dtype=np.float64), (deltam.shape[0],))[picks]
    order = np.argsort(model.pld_s, kind="stable")
    measured = (deltam[picks] / m0v[:, None])[:, order]
    fine_pld = np.linspace(0.0, float(model.pld_s.max()) * 1.1, 100)
    fine_tau = np.full(fine_pld.size, float(np.median(model.tau_s)))
    fine = ASLModel(
        model.labeling_type,
        fine_pld,
        fine_tau,
        t1_tissue_s=model.t1_tissue_s,
        t1_blood_s=model.t1_blood_s,
        lambda_=model.lambda_,
        alpha=model.alpha,
        bs_factor=model.bs_factor,
        arterial=model.arterial,
        method="gkm",
    )
    cols = [fit.cbf[picks], fit.att[picks]]
    if model.arterial:
        cols += [np.nan_to_num(fit.abv[picks]), np.nan_to_num(fit.abat[picks], nan=99.0)]
    fitted, _ = fine.kinetic_model.evaluate(
        np, np.stack(cols, 1).astype(np.float64), fine.sample_times(), fine.consts()
    )
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
            units="ml/100g/min",
            description="Mean of the series' precomputed cbf volumes",
        )
    }
    elapsed = time.perf_counter() - prep.t_start
    writer.commit(elapsed_s=elapsed)
    return ASLRunResult(
        out, {"method": "precomputed", "voxels": int(prep.mask.sum()), "elapsed_seconds": elapsed}
    )
