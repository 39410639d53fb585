"""The DSC file pipeline: NIfTI series (+ sidecar) in, maps with provenance out.

load (series, sidecar, masks, AIF) -> validate -> :class:`DSCModel` fit on the chosen backend
-> :class:`gpuperf.io.outputs.OutputWriter` (atomic: nothing appears under a final name unless
the whole run succeeded).

The run is three stages, :func:`prepare_dsc` (everything before the per-voxel work),
:func:`compute_dsc_batch` (the deconvolution, of several subjects at once when their settings
allow) and :func:`write_dsc`; ``run_dsc`` is the three of them for one subject, and exposes
them as ``run_dsc.prepare/.compute/.write`` for the cohort runner's batching
(:mod:`gpuperf.cohort.batching`).
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.backend import get_backend
from gpuperf.dsc import status as st
from gpuperf.dsc.aif import read_aif_curve
from gpuperf.dsc.model import KH_DEFAULT, RHO_DEFAULT, DSCFit, DSCModel, PreparedDSC
from gpuperf.dsc.osvd import DEFAULT_OI_LIMIT, DEFAULT_THRESHOLDS
from gpuperf.dsc.signal import check_te_tr
from gpuperf.errors import GpuperfError
from gpuperf.io.nifti import (
    is_nifti,
    load_image,
    load_mask,
    nifti_stem,
    read_sidecar,
    sidecar_path,
)
from gpuperf.io.outputs import OutputWriter
from gpuperf.progress import Reporter, ensure_reporter
from gpuperf.provenance import provenance

MAP_SPECS = {
    "cbf": ("ml/100g/min", "Cerebral blood flow: 6000 (kH/rho) max_t r(t)"),
    "cbv": ("ml/100g", "Cerebral blood volume: 100 (kH/rho) int C_t / int C_a"),
    "mtt": ("s", "Mean transit time: 60 CBV / CBF (central volume theorem)"),
    "tmax": ("s", "Time of the maximum of the deconvolved residue r(t), from the first frame"),
    "ttp": ("s", "Time to peak of the tissue dR2* curve, from the first frame"),
    "k2": ("1/s", "BSW leakage K2 (>0: T1 leakage, <0: T2* leakage)"),
    "rcbv": ("1", "CBV relative to the mean CBV of the reference mask"),
    "threshold": ("1", "Relative SVD threshold used (fraction of s_max; mu/s_max for Tikhonov)"),
    "oi": ("1", "Oscillation index (Wu 2003) of the chosen oSVD residue"),
}


@dataclass
class PreparedDSCRun:
    """A DSC series loaded and validated by :func:`prepare_dsc`, ready to compute.

    Attributes
    ----------
    model : DSCModel
    data : gpuperf.dsc.model.PreparedDSC or None
        dR2*, masks and AIF (dropped once computed).
    writer : OutputWriter
        Checked (overwrite policy) before anything is computed; nothing is staged yet.
    fit : DSCFit or None
        Set by :func:`compute_dsc_batch`.
    fit_s : float
        Seconds of the fit (of the whole batch when computed with other subjects).
    """

    series_path: Path
    out_dir: Path
    shape3d: tuple
    backend: Any
    model: DSCModel
    data: PreparedDSC | None
    writer: OutputWriter
    aif_source: str
    mask_path: str | PathLike | None = None
    overwrite: bool = False
    report: bool = True
    reporter: Any = None
    t_start: float = 0.0
    fit: DSCFit | None = None
    fit_s: float = 0.0
    batch_size: int = 1
    aif_png: Any = None  # Future of the AIF plot's PNG bytes, drawn while the fit runs
    curves: dict | None = None  # a few voxels' curves for the QC report (``<prefix>_qc.npz``)
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
    """What :func:`run_dsc` wrote and a summary of the run."""

    outputs: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)


def prepare_dsc(
    series_path: str | PathLike,
    out_dir: str | PathLike,
    *,
    mask_path: str | PathLike | None = None,
    aif: str | PathLike = "auto",
    method: str = "osvd",
    leakage: str = "none",
    te_s: float | None = None,
    tr_s: float | None = None,
    baseline: int | None = None,
    kh: float = KH_DEFAULT,
    rho: float = RHO_DEFAULT,
    ref_mask_path: str | PathLike | None = None,
    threshold: float | None = None,
    osvd_thresholds: Any = DEFAULT_THRESHOLDS,
    oi_limit: float = DEFAULT_OI_LIMIT,
    mu: float | None = None,
    gamma_fit_aif: bool = False,
    prefix: str | None = None,
    device: str = "auto",
    memory_budget: int | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    report: bool = True,
) -> PreparedDSCRun:
    """Load and validate a DSC series: everything of :func:`run_dsc` before the deconvolution
    (masks, dR2*, bolus arrival, AIF selection, output checks).

    Parameters are those of :func:`run_dsc`; raises the same errors, before any voxel is
    deconvolved (including :class:`~gpuperf.errors.OutputExistsError`).

    Returns
    -------
    PreparedDSCRun
    """
    t0 = time.perf_counter()
    rep = ensure_reporter(reporter)
    series_path = Path(series_path)
    out_dir = Path(out_dir)
    backend = get_backend(device)
    img = load_image(series_path, ndim=(4,), role="DSC series")
    meta = read_sidecar(series_path)
    sc = sidecar_path(series_path)
    te = te_s if te_s is not None else meta.get("EchoTime")
    tr = tr_s if tr_s is not None else meta.get("RepetitionTime")
    te, tr = check_te_tr(te, tr, sc if (te_s is None or tr_s is None) else None)
    n_t = img.n_frames
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
        te,
        tr,
        method,
        threshold=threshold,
        osvd_thresholds=osvd_thresholds,
        oi_limit=oi_limit,
        mu=mu,
        leakage=leakage,
        kh=kh,
        rho=rho,
        baseline=baseline,
        device="gpu" if backend.is_gpu else "cpu",
        memory_budget=memory_budget,
    )
    names = ["cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "status"]
    if leakage == "bsw":
        names.append("k2")
    if ref is not None:
        names.append("rcbv")
    if aif_source == "auto":
        names.append("aifmask")
    params = {**model.parameters(), "AIF": aif_source, "GammaFitAIF": gamma_fit_aif}
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
    if report:
        writer.expect(["report"], ext=".html")
        writer.expect(["qc"], ext=".npz")
    rep.log(
        f"DSC {method} on {backend.device_name}: {series_path.name} "
        f"({img.shape3d} x {n_t} frames, TE {te} s, TR {tr} s)"
    )
    with rep.status("preparing"):
        data = model.prepare(
            img.data, aif=aif_arg, mask=mask, ref_mask=ref, gamma_fit_aif=gamma_fit_aif
        )
    # the AIF is final now: draw its plot on a side thread while the deconvolution runs
    aif_png = _plot_pool().submit(_aif_png, np.arange(n_t) * tr, np.array(data.aif))
    return PreparedDSCRun(
        aif_png=aif_png,
        series_path=series_path,
        out_dir=out_dir,
        shape3d=img.shape3d,
        backend=backend,
        model=model,
        data=data,
        writer=writer,
        aif_source=aif_source,
        mask_path=mask_path,
        overwrite=overwrite,
        report=report,
        reporter=reporter,
        t_start=t0,
    )


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
    groups: dict[tuple, list[PreparedDSCRun]] = {}
    for p in prepared:
        if p.data is None:  # computed already (its inputs were released then)
            continue
        groups.setdefault(p.batch_key, []).append(p)
    for group in groups.values():
        total = sum(p.n_voxels for p in group)
        for p in group:
            ensure_reporter(p.reporter).log(
                f"DSC: {p.model.method}, {p.n_voxels} voxels, {p.data.n_frames} frames, "
                f"backend {p.backend.name}"
                + (
                    f"; computed with {len(group) - 1} other series ({total} voxels in one call)"
                    if len(group) > 1
                    else ""
                )
            )
        t_fit = time.perf_counter()
        progress = ensure_reporter(group[0].reporter if len(group) == 1 else reporter)
        with progress.status("fitting"):
            fits = group[0].model.fit_batch([p.data for p in group])
        fit_s = time.perf_counter() - t_fit
        for p, f in zip(group, fits, strict=True):
            p.fit, p.fit_s, p.batch_size = f, fit_s, len(group)
            if p.report:  # while dR2* is still in memory: the report need not read it again
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
        for name in ("cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "k2", "rcbv"):
            data = getattr(fit, name)
            if data is None:
                continue
            units, desc = MAP_SPECS[name]
            writer.add_map(name, data, units, desc)
        writer.add_map(
            "status",
            fit.status,
            "1",
            "Per-voxel status flags (bit field, 0 = OK)",
            extra={"Flags": st.describe()},
            dtype=np.int32,
        )
        time_s = np.arange(n_t) * tr
        writer.add_tsv("aif", {"time_s": time_s, "dr2s_per_s": fit.aif})
        if prep.aif_source == "auto":
            am = np.zeros(prep.shape3d, dtype=np.uint8)
            am.reshape(-1)[fit.aif_voxels] = 1
            writer.add_map(
                "aifmask", am, "1", "Voxels averaged into the automatic AIF", dtype=np.uint8
            )
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
                    if k not in ("osvd_sets", "elapsed_s", "backend", "device")
                }
                or None,
                "OSVDThresholdSets": fit.info.get("osvd_sets"),
            },
            with_provenance=True,
        )
        _add_aif_plot(writer, prep.aif_png, time_s, fit.aif, rep)
        if prep.curves is not None:
            from gpuperf.io.qc import stage_extra

            stage_extra(writer, {"curves": prep.curves})
        elapsed = time.perf_counter() - prep.t_start
        outputs = writer.commit(elapsed_s=elapsed)
        if prep.report:
            from gpuperf.report import publish_run_report

            outputs += publish_run_report(
                out_dir,
                writer.prefix,
                "dsc",
                {"baseline_s": (0.0, (fit.n_baseline - 1) * tr)},
                mask=prep.mask_path,
                overwrite=prep.overwrite,
                reporter=rep,
            )
    flags = fit.status[fit.mask]
    cbf = fit.cbf[fit.mask]
    summary = {
        "voxels": int(fit.mask.sum()),
        "flagged_input": int(((flags & st.INPUT_FLAGS) != 0).sum()),
        "osvd_no_pass": int(((flags & st.OSVD_NO_PASS) != 0).sum()),
        "baseline_frames": fit.n_baseline,
        "frames": n_t,
        "aif_voxels": None if fit.aif_voxels is None else int(fit.aif_voxels.size),
        "median_cbf": float(np.nanmedian(cbf)) if np.isfinite(cbf).any() else float("nan"),
        "backend": backend.name,
        "device": backend.device_name,
        "fit_s": round(float(prep.fit_s), 4),
        "elapsed_s": round(time.perf_counter() - prep.t_start, 4),
    }
    if prep.batch_size > 1:
        summary["fit_batch_subjects"] = prep.batch_size
    rep.log(f"wrote {len(outputs)} files to {out_dir} in {summary['elapsed_s']:.2f} s")
    return DSCRunResult(outputs, summary)


def run_dsc(
    series_path: str | PathLike,
    out_dir: str | PathLike,
    *,
    mask_path: str | PathLike | None = None,
    aif: str | PathLike = "auto",
    method: str = "osvd",
    leakage: str = "none",
    te_s: float | None = None,
    tr_s: float | None = None,
    baseline: int | None = None,
    kh: float = KH_DEFAULT,
    rho: float = RHO_DEFAULT,
    ref_mask_path: str | PathLike | None = None,
    threshold: float | None = None,
    osvd_thresholds: Any = DEFAULT_THRESHOLDS,
    oi_limit: float = DEFAULT_OI_LIMIT,
    mu: float | None = None,
    gamma_fit_aif: bool = False,
    prefix: str | None = None,
    device: str = "auto",
    memory_budget: int | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    report: bool = True,
) -> DSCRunResult:
    """Run the DSC pipeline on a 4D NIfTI series and write the maps.

    Parameters
    ----------
    series_path : path-like
        4D DSC series; its BIDS-style JSON sidecar gives ``EchoTime`` and ``RepetitionTime``
        (seconds) unless ``te_s`` / ``tr_s`` are given.
    out_dir : path-like
        Output folder: ``<prefix>_{cbf,cbv,mtt,tmax,ttp,threshold,oi,status}.nii.gz`` (+ ``k2``
        with leakage correction, ``rcbv`` with a reference mask), each with a JSON sidecar;
        ``<prefix>_aif.tsv`` (time_s, dr2s_per_s), ``<prefix>_aif.png`` (when matplotlib is
        installed), and ``<prefix>_aifmask.nii.gz`` for ``aif='auto'``.
    mask_path : path-like, optional
        Brain mask; default automatic (see :func:`gpuperf.dsc.model.auto_brain_mask`).
    aif : 'auto' or path-like
        'auto' (Mouridsen-style, inside the mask), a NIfTI AIF mask, or a TSV/CSV/txt curve
        (dR2* in 1/s, one value per frame; last column).
    method, leakage, baseline, kh, rho, threshold, osvd_thresholds, oi_limit, mu :
        See :class:`gpuperf.dsc.DSCModel`.
    ref_mask_path : path-like, optional
        Reference region (e.g. NAWM) for rCBV.
    gamma_fit_aif : bool
        Fit a gamma-variate to the AIF (recirculation removed).
    prefix : str, optional
        Output file-name prefix (default: the series name without extension).
    device : {'auto', 'cpu', 'gpu'}
    overwrite : bool
        Replace existing outputs.
    reporter : Reporter, optional
        Progress/log lines (silent when None).
    report : bool
        Also write ``<prefix>_report.html``, the visual QC page (:mod:`gpuperf.report`).

    Returns
    -------
    DSCRunResult
    """
    prep = prepare_dsc(
        series_path,
        out_dir,
        mask_path=mask_path,
        aif=aif,
        method=method,
        leakage=leakage,
        te_s=te_s,
        tr_s=tr_s,
        baseline=baseline,
        kh=kh,
        rho=rho,
        ref_mask_path=ref_mask_path,
        threshold=threshold,
        osvd_thresholds=osvd_thresholds,
        oi_limit=oi_limit,
        mu=mu,
        gamma_fit_aif=gamma_fit_aif,
        prefix=prefix,
        device=device,
        memory_budget=memory_budget,
        overwrite=overwrite,
        reporter=reporter,
        report=report,
    )
    compute_dsc_batch([prep])
    return write_dsc(prep)


# The three stages, for callers that compute several subjects in one call (the cohort runner):
# ``run_dsc.prepare(...)`` has run_dsc's signature; see gpuperf.cohort.batching.
run_dsc.prepare = prepare_dsc  # type: ignore[attr-defined]
run_dsc.compute = compute_dsc_batch  # type: ignore[attr-defined]
run_dsc.write = write_dsc  # type: ignore[attr-defined]


def _report_curves(p: PreparedDSCRun) -> dict | None:
    """A few voxels' dR2* and deconvolved residues for the QC report (``EXTRA_FORMAT``).

    The voxels are those the report would pick (CBF near its 10/50/90th percentiles, one flagged
    voxel); their residues come from the run's own model on those rows, and the CBF so
    recomputed is shown beside the map's value as a check.
    """
    from gpuperf.io.qc import pick_voxels

    d, fit = p.data, p.fit
    cbf = np.asarray(fit.cbf).reshape(-1, order=d.order)[d.idx]
    status = np.asarray(fit.status).reshape(-1, order=d.order)[d.idx]
    rows, labels = pick_voxels(cbf, np.ones(cbf.shape, dtype=bool), status)
    if rows.size == 0:
        return None
    dr2s = d.backend.to_host(d.dr2s[d.backend.asarray(rows)]).astype(np.float64)
    sub = p.model.fit_concentration(dr2s, fit.aif, return_residue=True)
    ijk = np.unravel_index(d.idx[rows], d.spatial, order=d.order)
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


@functools.lru_cache(maxsize=1)
def _plot_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="gpuperf-aif-plot")


def _aif_png(time_s: np.ndarray, curve: np.ndarray) -> bytes | None:
    """PNG of the AIF curve, or None without matplotlib (object API: no pyplot, thread-safe)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot(time_s, curve, "o-", ms=3)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("dR2* (1/s)")
    ax.set_title("AIF")
    fig.subplots_adjust(left=0.16, bottom=0.16, right=0.97)  # cheaper than tight_layout
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _add_aif_plot(
    writer: OutputWriter,
    png: Any,
    time_s: np.ndarray,
    curve: np.ndarray,
    rep: Reporter,
) -> None:
    """Stage ``<prefix>_aif.png``: the plot drawn during the fit, or drawn now."""
    data = png.result() if png is not None else _aif_png(time_s, curve)
    if data is None:
        rep.log("matplotlib not installed: AIF plot skipped")
        return
    writer.add_file("aif", lambda path: path.write_bytes(data), ".png")
