"""Voxel curves for a DSC report recomputed from the run's input series.

When a run did not save its voxel curves (``extra["curves"]``), the report can still show a few:
it reads the input series named in the sidecars' ``Sources``, picks voxels at low, median and
high CBF (and one flagged voxel when there is one), and runs the pipeline's own code on them
(:func:`gpuperf.dsc.signal.signal_to_dr2s` and :class:`gpuperf.dsc.DSCModel` with the run's
parameters and its written AIF). No formula is re-implemented here. The CBF recomputed for each
curve is shown next to the map's value, which also checks the maps against their inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.io.qc import CURVE_PERCENTILES, pick_voxels  # noqa: F401 - re-exported
from gpuperf.report.collect import RunOutputs


def voxel_curves(
    values: np.ndarray,
    time_s: np.ndarray,
    measured: np.ndarray,
    *,
    status: np.ndarray | None = None,
    fitted: np.ndarray | None = None,
    fit_time_s: np.ndarray | None = None,
    residue: np.ndarray | None = None,
    voxels: np.ndarray | None = None,
    units: str = "",
) -> dict[str, Any]:
    """``extra["curves"]`` for a report from a pipeline's per-voxel arrays (mask order).

    Picks the voxels of :func:`pick_voxels` (``values`` nearest its 10/50/90th percentiles among
    voxels with status 0, plus one flagged voxel) and keeps only their rows.

    Parameters
    ----------
    values : ndarray (V,)
        The quantity that ranks the voxels (CBF).
    time_s : ndarray (T,)
        Sample times (DSC) or PLDs (ASL), s.
    measured : ndarray (V, T)
        Concentration (DSC) or ΔM/M0 (ASL).
    status : ndarray (V,), optional
    fitted : ndarray (V, T) or (V, F), optional
        Model curves (with ``fit_time_s`` (F,) when F != T).
    residue : ndarray (V, N), optional
        DSC deconvolved residues.
    voxels : ndarray (V, 3), optional
        Voxel indices (i, j, k) for the labels.
    units : str
        Units of ``measured``.

    Returns
    -------
    dict
        Ready for ``write_run_report(..., extra={"curves": ...})``.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    ones = np.ones(values.shape, dtype=bool)
    st = None if status is None else np.asarray(status).reshape(-1)
    idx, labels = pick_voxels(values, ones, st)
    if voxels is not None:
        vox = np.asarray(voxels).reshape(-1, 3)[idx].tolist()
        labels = [f"{lab} ({a}, {b}, {c})" for lab, (a, b, c) in zip(labels, vox, strict=True)]
    curves: dict[str, Any] = {
        "time_s": np.asarray(time_s, dtype=np.float64),
        "measured": np.asarray(measured)[idx],
        "labels": labels,
    }
    if units:
        curves["units"] = units
    if fitted is not None:
        curves["fitted"] = np.asarray(fitted)[idx]
        if fit_time_s is not None:
            curves["fit_time_s"] = np.asarray(fit_time_s, dtype=np.float64)
    if residue is not None:
        curves["residue"] = np.asarray(residue)[idx]
    return curves


def _series_path(run: RunOutputs) -> Path | None:
    for src in run.provenance().get("Sources", []) or []:
        p = Path(str(src))
        if p.exists() and p.name.endswith((".nii", ".nii.gz")) and "mask" not in p.name:
            return p
    return None


def dsc_curves_from_inputs(run: RunOutputs) -> tuple[dict[str, Any] | None, str]:
    """Recompute a few DSC voxel curves; returns ``(curves or None, note for the report)``.

    ``curves`` follows ``EXTRA_FORMAT["curves"]`` with ``measured`` = dR2* (1/s), ``residue``
    = the deconvolved CBF-scaled residue, and extra entries ``cbf_map`` / ``cbf_recomputed``
    (ml/100g/min) for each voxel.
    """
    params = run.provenance().get("Parameters", {}) or {}
    series = _series_path(run)
    if series is None:
        return None, "the input series named in the sidecars (Sources) is not reachable"
    if "cbf" not in run.maps or run.mask is None or run.aif_curve is None:
        return None, "no CBF map, mask or AIF table to choose and deconvolve voxels with"
    te, tr = params.get("EchoTime"), params.get("RepetitionTime")
    if te is None or tr is None:
        return None, "the run's parameters lack EchoTime/RepetitionTime"
    from gpuperf.dsc.model import DSCModel
    from gpuperf.dsc.signal import baseline_frames, signal_to_dr2s
    from gpuperf.io.nifti import load_image

    img = load_image(series, ndim=(4,), role="DSC series")
    if img.shape3d != run.mask.shape or img.n_frames != run.aif_curve.size:
        return None, f"{series.name} does not match the maps' grid or the AIF length"
    st = run.maps.get("status")
    idx, labels = pick_voxels(run.maps["cbf"].data, run.mask, None if st is None else st.data)
    if idx.size == 0:
        return None, "no voxel with a CBF value to show"
    ijk = np.unravel_index(idx, run.mask.shape)
    labels = [f"{lab} ({i}, {j}, {k})" for lab, i, j, k in zip(labels, *ijk, strict=True)]
    flat = img.data.reshape(-1, img.n_frames)
    n_base = params.get("Baseline")
    if n_base is None:  # the run detected it on the whole mask: do the same
        brain = flat[run.mask.reshape(-1)]
        pos = (brain > 0).all(axis=1) & np.isfinite(brain).all(axis=1)
        n_base = baseline_frames(brain[pos]) if pos.any() else 1
    n_base = int(n_base)
    block = flat[idx].astype(np.float32)
    dr2s, _ = signal_to_dr2s(block, float(te), n_base, np)
    keys = {
        "threshold": "Threshold",
        "osvd_thresholds": "OSVDThresholds",
        "oi_limit": "OILimit",
        "mu": "TikhonovMu",
        "leakage": "Leakage",
        "kh": "kH",
        "rho": "rho",
    }
    kwargs = {k: params[v] for k, v in keys.items() if params.get(v) is not None}
    model = DSCModel(
        float(te),
        float(tr),
        str(params.get("Method", "osvd")),
        baseline=n_base,
        device="cpu",
        **kwargs,
    )
    fit = model.fit(block, aif=np.asarray(run.aif_curve, np.float64), return_residue=True)
    time_s = np.arange(img.n_frames) * float(tr)
    cbf_map = run.maps["cbf"].data.reshape(-1)[idx]
    curves = {
        "time_s": time_s,
        "measured": np.asarray(dr2s, np.float64),
        "labels": labels,
        "units": "ΔR2*, 1/s",
        "cbf_map": cbf_map,
        "cbf_recomputed": np.asarray(fit.cbf, np.float64).reshape(-1),
        "baseline_s": (0.0, (n_base - 1) * float(tr)),
    }
    if fit.residue is not None:
        curves["residue"] = np.asarray(fit.residue, np.float64)
    note = (
        f"recomputed from {series.name} with the run's parameters ({n_base} baseline "
        "frames) and its written AIF"
    )
    return curves, note
