"""Quality-control data a pipeline hands to its report: the ``<prefix>_qc.npz`` format.

Pipelines know things the written maps do not (a few voxels' curves, fitted curves, residues,
warnings, timings). They pass them as a small nested dict (:data:`EXTRA_FORMAT`), staged next to
the maps as ``<prefix>_qc.npz`` (:func:`stage_extra`), so that the report -- a consumer of
outputs, one layer up -- and a later ``gpuperf report`` can show them. :func:`pick_voxels`
chooses the voxels, the same way for every modality.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

#: The ``extra`` argument of :func:`gpuperf.report.write_run_report` (every key optional).
EXTRA_FORMAT = """\
extra = {
    "curves": {                     # a few voxels, k of them
        "time_s":   (T,)   sample times (DSC, s) or PLDs (ASL, s)
        "measured": (k, T) concentration (DSC: dR2*, 1/s) or dM/M0 (ASL);
                           the keys "concentration" and "delta_m" are accepted as aliases
        "fitted":   (k, T) or (k, F) model curve (with "fit_time_s" (F,) when F != T)
        "residue":  (k, T) DSC: deconvolved CBF * R(t) (same scale as "measured" / s)
        "voxels":   (k, 3) int voxel indices (i, j, k) of the curves
        "labels":   (k,)   str labels (default: the voxel indices)
        "units":    str    y-axis units of "measured"
    },
    "baseline_s": (start, end)      DSC pre-bolus baseline window, s
    "aif_voxels": (n, 3) int        voxels chosen for the AIF (when no AIF mask was written)
    "timings":    {step: seconds}   wall-clock time of pipeline steps
    "warnings":   [str, ...]        pipeline warnings shown at the top of the report
    "notes":      [str, ...]        free text shown under the parameters
}"""

_CURVE_ALIASES = {"concentration": "measured", "delta_m": "measured"}
#: CBF percentiles (inside the mask, status 0) of the voxels shown.
CURVE_PERCENTILES = (10, 50, 90)


def pick_voxels(
    cbf: np.ndarray,
    mask: np.ndarray,
    status: np.ndarray | None,
    percentiles: tuple[float, ...] = CURVE_PERCENTILES,
) -> tuple[np.ndarray, list[str]]:
    """Flat indices of voxels whose CBF is nearest to ``percentiles``, plus one flagged voxel.

    Parameters
    ----------
    cbf : ndarray (X, Y, Z)
    mask : ndarray of bool (X, Y, Z)
    status : ndarray (X, Y, Z) or None

    Returns
    -------
    flat_indices : ndarray of int (k,)
    labels : list of str (k,)
        Why each voxel was picked ("CBF p50", "flagged (status 8)").
    """
    flat = cbf.reshape(-1)
    ok = mask.reshape(-1) & np.isfinite(flat)
    if status is not None:
        st = status.reshape(-1)
        flagged = np.flatnonzero(mask.reshape(-1) & np.isfinite(st) & (st > 0))
        ok &= st == 0
    else:
        flagged = np.array([], dtype=np.int64)
    cand = np.flatnonzero(ok)
    idx: list[int] = []
    labels: list[str] = []
    if cand.size:
        values = flat[cand]
        for p in percentiles:
            target = np.percentile(values, p)
            i = int(cand[np.argmin(np.abs(values - target))])
            if i not in idx:
                idx.append(i)
                labels.append(f"CBF p{p:g}")
    if flagged.size:
        idx.append(int(flagged[0]))
        labels.append(f"flagged (status {int(status.reshape(-1)[flagged[0]])})")
    return np.asarray(idx, dtype=np.int64), labels


# -- extra QC arrays ------------------------------------------------------------------------


def normalize_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy ``extra`` with arrays as NumPy arrays and curve aliases resolved (see EXTRA_FORMAT)."""
    if not extra:
        return {}
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if key == "curves" and isinstance(value, Mapping):
            curves: dict[str, Any] = {}
            for ck, cv in value.items():
                ck = _CURVE_ALIASES.get(ck, ck)
                if ck in ("labels",):
                    curves[ck] = [str(s) for s in np.asarray(cv).ravel()]
                elif ck == "units":
                    curves[ck] = str(np.asarray(cv).item() if np.ndim(cv) == 0 else cv)
                else:
                    arr = np.asarray(cv)
                    if ck in ("measured", "fitted", "residue") and arr.ndim == 1:
                        arr = arr[None, :]
                    curves[ck] = arr
            out[key] = curves
        elif key in ("warnings", "notes"):
            out[key] = [str(s) for s in np.atleast_1d(np.asarray(value, dtype=object))]
        elif key == "timings" and isinstance(value, Mapping):
            out[key] = {str(k): float(v) for k, v in value.items()}
        elif key in ("baseline_s", "aif_voxels"):
            out[key] = np.asarray(value, dtype=np.float64 if key == "baseline_s" else np.int64)
        else:
            out[key] = value
    return out


def _flatten(extra: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in normalize_extra(extra).items():
        if isinstance(value, Mapping):
            if key == "timings":
                flat["timings/names"] = np.asarray(list(value), dtype=str)
                flat["timings/seconds"] = np.asarray(list(value.values()), dtype=np.float64)
                continue
            for ck, cv in value.items():
                flat[f"{key}/{ck}"] = np.asarray(
                    cv, dtype=str if ck in ("labels", "units") else None
                )
        elif isinstance(value, list):
            flat[key] = np.asarray(value, dtype=str)
        else:
            flat[key] = np.asarray(value)
    return flat


def extra_to_npz_bytes(extra: Mapping[str, Any]) -> bytes:
    """Serialise ``extra`` (EXTRA_FORMAT) into ``.npz`` bytes (no pickled objects)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **_flatten(extra))
    return buf.getvalue()


def save_extra(path: str | PathLike, extra: Mapping[str, Any]) -> Path:
    """Write ``extra`` to ``path`` (``<prefix>_qc.npz``) atomically."""
    from gpuperf.io.outputs import atomic_write_bytes

    atomic_write_bytes(path, extra_to_npz_bytes(extra))
    return Path(path)


def stage_extra(writer: Any, extra: Mapping[str, Any]) -> Path:
    """Stage ``extra`` as ``<prefix>_qc.npz`` in an :class:`~gpuperf.io.OutputWriter`.

    It is then published with the maps by ``writer.commit()``, and ``gpuperf report`` finds it.
    """
    # several stages may stage extras (plausibility warnings, then curves): merge them
    merged = dict(getattr(writer, "qc_extra", None) or {})
    for key, value in normalize_extra(extra).items():
        if key in ("warnings", "notes") and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    writer.qc_extra = merged
    payload = extra_to_npz_bytes(merged)
    return writer.add_file("qc", lambda tmp: Path(tmp).write_bytes(payload), ".npz")


def publish_warnings(warnings: Sequence[str], reporter: Any = None, writer: Any = None) -> None:
    """Show plausibility ``warnings`` in the log and, with a ``writer`` (a run that draws a
    report), stage them as the extras' ``warnings`` (shown at the top of the report)."""
    if not warnings:
        return
    if reporter is not None:
        for w in warnings:
            reporter.warn(w)
    if writer is not None:
        stage_extra(writer, {"warnings": list(warnings)})


def load_extra(path: str | PathLike) -> dict[str, Any]:
    """Read a ``<prefix>_qc.npz`` written by :func:`save_extra` back into EXTRA_FORMAT."""
    with np.load(path, allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    extra: dict[str, Any] = {}
    for key, value in flat.items():
        if "/" in key:
            group, sub = key.split("/", 1)
            extra.setdefault(group, {})[sub] = value
        else:
            extra[key] = value
    timings = extra.get("timings")
    if isinstance(timings, dict) and "names" in timings:
        extra["timings"] = dict(
            zip(timings["names"].tolist(), timings["seconds"].tolist(), strict=False)
        )
    return normalize_extra(extra)
