"""Arterial input function: automatic selection, external curves, gamma-variate fit.

Automatic selection follows Mouridsen et al., MRM 55:524 (2006):

1. candidates: usable voxels inside the brain mask whose area under the dR2* curve is above
   the ``auc_percentile`` (90th) percentile;
2. k-means (k = 5) on the unit-area curves; keep the cluster whose mean curve has the earliest
   first moment (ties: highest peak);
3. inside that cluster, drop the roughest ``100 - roughness_percentile`` % (roughness =
   integral of the squared second derivative of the unit-area curve) and cluster once more.
   Mouridsen cut roughness before clustering; with little noise, however, the roughest
   unit-area curves *are* the narrow arterial ones, so a cut there removes the very voxels
   sought. Cutting inside the arterial cluster keeps its purpose (drop noisy curves);
4. the AIF is the mean dR2* curve of the voxels kept; their indices are reported.

The gamma-variate ``A (t - t0)^a exp(-(t - t0)/b)`` (Thompson et al., Circ Res 14:502, 1964)
removes recirculation; its first moment (mean transit time of the bolus) is ``t0 + (a + 1) b``,
not ``a b`` (that is the time of the peak after t0).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.dsc.constants import AUC_PERCENTILE, N_CLUSTERS, ROUGHNESS_PERCENTILE
from gpuperf.errors import GpuperfError, InputError

KMEANS_ITERATIONS = 30
#: Fraction of voxels allowed to change cluster in the last k-means iteration.
KMEANS_TOLERANCE = 1e-3
_trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 (NumPy < 2)

#: Fewest voxels an automatic AIF averages when that many candidates exist.
MIN_AIF_VOXELS = 3


@dataclass
class AIFSelection:
    """Result of :func:`auto_aif`.

    Attributes
    ----------
    curve : ndarray (T,)
        Mean dR2* (1/s) of the chosen voxels.
    voxels : ndarray of int
        Indices (into the V voxels given) of the voxels averaged.
    n_candidates : int
        Voxels left after the AUC and roughness cut-offs.
    """

    curve: np.ndarray
    voxels: np.ndarray
    n_candidates: int


def first_moment(curves: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``sum t c / sum c`` per row (s)."""
    num = curves @ t
    den = curves.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.inf)


def _kmeans(x: np.ndarray, k: int, order_key: np.ndarray) -> np.ndarray:
    """Deterministic Lloyd k-means; initial centres at quantiles of ``order_key``."""
    k = min(k, x.shape[0])
    srt = np.argsort(order_key, kind="stable")
    init = srt[np.linspace(0, x.shape[0] - 1, k).round().astype(int)]
    centres = x[init].copy()
    labels = np.zeros(x.shape[0], dtype=np.intp)
    for it in range(KMEANS_ITERATIONS):
        # |x|^2 is the same for every centre, so the argmin needs only -2 x.c + |c|^2
        d2 = (centres * centres).sum(1)[None, :] - 2 * (x @ centres.T)
        new = d2.argmin(axis=1)
        # converged when (almost) no voxel changes cluster: the chosen cluster is then settled
        if it > 0 and np.count_nonzero(new != labels) <= KMEANS_TOLERANCE * labels.size:
            break
        labels = new
        # cluster means: sort by label, sum contiguous runs (a (k, n) @ (n, T) GEMM is slow
        # in OpenBLAS for this shape)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=k)
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(x[order], starts, axis=0)
        centres[filled] = sums / counts[filled, None]
    return labels


def _pick_cluster(curves: np.ndarray, labels: np.ndarray, t: np.ndarray) -> np.ndarray:
    best, best_key = None, None
    for j in np.unique(labels):
        members = np.flatnonzero(labels == j)
        mean = curves[members].mean(axis=0)
        key = (float(first_moment(mean[None, :], t)[0]), -float(mean.max()))
        if best_key is None or key < best_key:
            best, best_key = members, key
    return best


def auto_aif(
    dr2s: np.ndarray,
    dt_s: float,
    usable: np.ndarray | None = None,
    auc_percentile: float = AUC_PERCENTILE,
    roughness_percentile: float = ROUGHNESS_PERCENTILE,
    n_clusters: int = N_CLUSTERS,
    xp: Any = np,
    to_host: Any = np.asarray,
) -> AIFSelection:
    """Mouridsen-2006-style automatic AIF (see the module docstring).

    Parameters
    ----------
    dr2s : array (V, T)
        dR2* curves (1/s) of the voxels inside the mask, on ``xp`` (NumPy or CuPy).
    dt_s : float
        Frame interval (s).
    usable : ndarray (V,) bool, optional
        Voxels allowed (status OK).
    auc_percentile, roughness_percentile : float
        Cut-offs in percent.
    n_clusters : int
        k of the k-means.
    xp, to_host : module, callable
        The array module of ``dr2s`` and the copy to the host. On the GPU only the areas (V,)
        and the candidates' curves (above the ``auc_percentile`` percentile of the area: 10 %
        of the voxels by default) come down; clustering runs on the host on those.
    """
    if xp is np:
        dr2s = np.asarray(dr2s)
    v, n_t = dr2s.shape
    t = np.arange(n_t) * dt_s
    allowed = np.ones(v, bool) if usable is None else np.asarray(usable, bool)
    cand = np.flatnonzero(allowed)
    if cand.size == 0:
        raise GpuperfError("automatic AIF: no usable voxel inside the mask")
    # trapezoid area in the data's dtype over all voxels; float64 only for the candidates
    auc = to_host((dr2s.sum(axis=1) - 0.5 * (dr2s[:, 0] + dr2s[:, -1])) * dt_s)[cand]
    cand = cand[auc >= np.percentile(auc, auc_percentile)]
    curves = to_host(dr2s[xp.asarray(cand)]).astype(np.float64)
    area = _trapz(curves, dx=dt_s, axis=1)
    cand, curves, area = cand[area > 0], curves[area > 0], area[area > 0]
    if cand.size == 0:
        raise GpuperfError("automatic AIF: no voxel with a positive area under the curve")
    norm = (curves / area[:, None]).astype(np.float32)  # shapes only: float32 halves traffic
    rough = (np.diff(norm, n=2, axis=1) ** 2).sum(axis=1) / dt_s**3
    chosen = np.arange(cand.size)
    n_cand = cand.size
    for rnd in range(2):  # Mouridsen: cluster, keep the earliest cluster, cluster it again
        if rnd == 1 and chosen.size > MIN_AIF_VOXELS:
            # roughness cut inside the arterial cluster (see module docstring for why here)
            keep = rough[chosen] <= np.percentile(rough[chosen], roughness_percentile)
            if keep.sum() >= MIN_AIF_VOXELS:
                chosen = chosen[keep]
        if chosen.size <= max(MIN_AIF_VOXELS, n_clusters):
            break
        sub = norm[chosen]
        labels = _kmeans(sub, n_clusters, first_moment(sub, t))
        picked = _pick_cluster(sub, labels, t)
        if picked.size < MIN_AIF_VOXELS:
            break
        chosen = chosen[picked]
    # cand ascends, so its sorted subset is cand[sorted chosen]: the AIF from the candidates'
    # float64 curves (the same rows of dr2s, in the same order)
    chosen = np.sort(chosen)
    return AIFSelection(curves[chosen].mean(axis=0), cand[chosen], int(n_cand))


def read_aif_curve(path: str | PathLike, n_frames: int) -> np.ndarray:
    """Read an external AIF (dR2*, 1/s, one value per frame) from a TSV/CSV/txt file.

    One column (the curve) or two or more (the last column is the curve, the first the time,
    as gpuperf writes ``*_aif.tsv``). A non-numeric first row is a header.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file", "AIF curve file does not exist")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        parts = [x for x in line.replace(",", " ").replace("\t", " ").split() if x]
        if not parts:
            continue
        try:
            rows.append([float(x) if x != "n/a" else np.nan for x in parts])
        except ValueError as exc:
            if i == 0 and not rows:
                continue  # header
            raise InputError(p, f"line {i + 1}", f"expected numbers, found {line!r}") from exc
    if not rows or len({len(r) for r in rows}) != 1:
        raise InputError(p, "columns", "expected one or more numeric columns of equal length")
    arr = np.asarray(rows, dtype=np.float64)
    curve = arr[:, -1]
    if curve.size != n_frames:
        raise InputError(p, "length", f"AIF has {curve.size} values, the series {n_frames} frames")
    if not np.all(np.isfinite(curve)):
        raise InputError(p, "values", "AIF curve contains NaN or infinite values")
    return curve


def gamma_variate(t: np.ndarray, amplitude: float, t0: float, a: float, b: float) -> np.ndarray:
    """``A (t - t0)^a exp(-(t - t0)/b)`` for t > t0, else 0."""
    x = np.clip(np.asarray(t, np.float64) - t0, 0.0, None)
    return amplitude * x**a * np.exp(-x / b)


def gamma_variate_first_moment(t0: float, a: float, b: float) -> float:
    """First moment ``t0 + (a + 1) b`` (s) of the gamma-variate; ``t0 + a b`` is only its peak."""
    return t0 + (a + 1.0) * b


def fit_gamma_aif(curve: np.ndarray, dt_s: float, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """Fit a gamma-variate to the first pass of an AIF (recirculation removed).

    Uses the engine's batched Levenberg-Marquardt (:func:`gpuperf.fit.fit_lm`, model
    ``gammavar``). Samples after the first return below 30 % of the peak are given zero weight,
    so the recirculation bump does not bias the fit.

    Returns
    -------
    fitted : ndarray (T,)
        The gamma-variate on the frame times.
    params : dict
        ``A, t0, a, b`` and the first moment (s).
    """
    try:
        from gpuperf.fit import MODELS, fit_lm
    except ImportError as exc:
        raise GpuperfError(
            "the gamma-variate AIF fit needs gpuperf.fit, which is not "
            "available in this installation"
        ) from exc
    y = np.asarray(curve, dtype=np.float64)
    t = np.arange(y.size) * dt_s
    peak = int(np.argmax(y))
    after = np.flatnonzero(y[peak:] < 0.3 * y[peak])
    stop = peak + (int(after[0]) if after.size else y.size - peak)
    weights = np.zeros_like(y)
    weights[: stop + 1] = 1.0
    p0 = np.asarray(MODELS["gammavar"].initial_guess(t, y[None, :]), dtype=np.float64)
    res = fit_lm(
        "gammavar",
        t,
        y[None, :],
        p0.reshape(1, -1),
        weights=weights[None, :],
        dtype=np.float64,
        device=device,
    )
    amp, t0, a, b = (float(v) for v in np.asarray(res.params).reshape(-1)[:4])
    fitted = gamma_variate(t, amp, t0, a, b)
    return fitted, {
        "A": amp,
        "t0_s": t0,
        "a": a,
        "b_s": b,
        "first_moment_s": gamma_variate_first_moment(t0, a, b),
        "status": int(np.asarray(res.status).reshape(-1)[0]),
    }
