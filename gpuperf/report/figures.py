"""Figures of the report, rendered with matplotlib into PNG bytes.

Figures are drawn on
:class:`matplotlib.figure.Figure` objects directly (no ``pyplot``), so no global state, GUI
backend or display is involved.

Slices are shown axial, reoriented to RAS+ (nibabel ``io_orientation``), in neurological
convention: the subject's right is on the right of the image, anterior at the top.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from gpuperf.report.display import display_range

#: Colour of in-mask voxels whose value is missing (NaN): failed fits stand out.
NAN_COLOUR = (1.0, 0.0, 1.0, 1.0)
MASK_COLOUR = "#00e5ff"
DPI = 80


def _figure(width_in: float, height_in: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def to_ras(
    data: np.ndarray, affine: np.ndarray, zooms_mm: tuple[float, ...]
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient a 3D array to the closest RAS+ voxel axes; returns (data, zooms in RAS order)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    out = nio.apply_orientation(data, ornt)
    zooms = [1.0, 1.0, 1.0]
    for axis_in, (axis_out, _flip) in enumerate(ornt):
        zooms[int(axis_out)] = float(zooms_mm[axis_in])
    return out, (zooms[0], zooms[1], zooms[2])


def pick_slices(mask_ras: np.ndarray, max_slices: int) -> list[int]:
    """Up to ``max_slices`` evenly spaced axial slices that hold mask voxels."""
    per_slice = mask_ras.reshape(-1, mask_ras.shape[2]).sum(axis=0)
    idx = np.flatnonzero(per_slice > 0)
    if idx.size == 0:
        idx = np.arange(mask_ras.shape[2])
    if idx.size <= max_slices:
        return [int(i) for i in idx]
    pos = np.linspace(0, idx.size - 1, max_slices).round().astype(int)
    return [int(i) for i in idx[np.unique(pos)]]


def montage(
    data: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    zooms_mm: tuple[float, ...],
    name: str,
    units: str,
    max_slices: int = 12,
    ncols: int = 6,
) -> tuple[bytes, dict[str, Any]]:
    """Axial montage of one map with a colour bar in physical units and the mask outline.

    Parameters
    ----------
    data : ndarray (X, Y, Z)
    mask : ndarray of bool (X, Y, Z) or None
    affine : ndarray (4, 4)
    zooms_mm : voxel size (3,)
    name, units : str
        Map name (selects the display range, see :mod:`gpuperf.report.display`) and units.

    Returns
    -------
    png : bytes
    info : dict
        ``vmin``, ``vmax``, ``fixed`` (range), ``below``/``above`` (fraction of finite mask
        voxels outside the range), ``nan`` (count of non-finite mask voxels), ``slices``.
    """
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if mask is None:
        mask = np.isfinite(data)
    d, (zx, zy, _) = to_ras(np.asarray(data, dtype=np.float64), affine, zooms_mm)
    m, _ = to_ras(mask.astype(bool), affine, zooms_mm)
    inside = d[m]
    finite = inside[np.isfinite(inside)]
    vmin, vmax, fixed, spec = display_range(name, units, inside)
    info: dict[str, Any] = {
        "vmin": vmin,
        "vmax": vmax,
        "fixed": fixed,
        "label": spec.label,
        "below": float((finite < vmin).mean()) if finite.size else 0.0,
        "above": float((finite > vmax).mean()) if finite.size else 0.0,
        "nan": int(inside.size - finite.size),
    }
    slices = pick_slices(m, max_slices)
    info["slices"] = slices
    ncols = min(ncols, len(slices))
    nrows = int(np.ceil(len(slices) / ncols))
    aspect = zy / zx
    panel_w = 1.7
    panel_h = panel_w * aspect * d.shape[1] / max(d.shape[0], 1)
    width_in, height_in = panel_w * ncols + 1.0, max(panel_h * nrows, 1.2) + 0.2
    # fixed margins, not constrained layout: the layout solver took ~70 % of a report's time
    fig = _figure(width_in, height_in, layout=None)
    right = 1.0 - 0.95 / width_in
    fig.subplots_adjust(
        left=0.01, right=right, bottom=0.02, top=1.0 - 0.2 / height_in, wspace=0.03, hspace=0.12
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    shown = np.where(m, d, np.nan)
    if spec.categorical:
        codes = np.unique(finite.astype(np.int64)) if finite.size else np.array([0])
        codes = codes[:20]
        base = colormaps["tab20"](np.linspace(0, 1, 20))
        colours = [(0.35, 0.35, 0.35, 1.0) if c == 0 else base[i % 20] for i, c in enumerate(codes)]
        cmap = ListedColormap(colours)
        lookup = np.searchsorted(codes, np.nan_to_num(shown, nan=-1).astype(np.int64))
        lookup = np.clip(lookup, 0, codes.size - 1).astype(np.float64)
        lookup[~np.isfinite(shown)] = np.nan
        shown = lookup
        norm = BoundaryNorm(np.arange(codes.size + 1) - 0.5, cmap.N)
        kwargs: dict[str, Any] = {"cmap": cmap, "norm": norm}
    else:
        cmap = colormaps[spec.cmap]
        kwargs = {"cmap": cmap, "vmin": vmin, "vmax": vmax}
    cmap = cmap.with_extremes(bad="black")  # outside the mask
    kwargs["cmap"] = cmap
    im = None
    for ax, k in zip(axes, slices, strict=False):
        sl = shown[:, :, k].T
        im = ax.imshow(sl, origin="lower", aspect=aspect, interpolation="nearest", **kwargs)
        bad = (m[:, :, k] & ~np.isfinite(d[:, :, k])).T
        if bad.any():
            overlay = np.zeros(bad.shape + (4,))
            overlay[bad] = NAN_COLOUR
            ax.imshow(overlay, origin="lower", aspect=aspect, interpolation="nearest")
        if m[:, :, k].any() and not m[:, :, k].all():
            ax.contour(
                m[:, :, k].T.astype(float),
                levels=[0.5],
                colors=MASK_COLOUR,
                linewidths=0.7,
                origin="lower",
            )
        ax.set_title(f"z={k}", fontsize=7, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(slices) :]:
        ax.set_axis_off()
    if len(slices):
        axes[0].text(0.02, 0.5, "L", color="white", fontsize=7, transform=axes[0].transAxes)
        axes[0].text(0.92, 0.5, "R", color="white", fontsize=7, transform=axes[0].transAxes)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (info["below"] > 0, info["above"] > 0), "both"
    )
    if im is not None:
        cax = fig.add_axes((right + 0.12 / width_in, 0.08, 0.12 / width_in, 0.84))
        cbar = fig.colorbar(im, cax=cax, extend="neither" if spec.categorical else extend)
        cbar.set_label(f"{spec.label} ({units})" if units else spec.label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
        if spec.categorical:
            cbar.set_ticks(np.arange(codes.size))
            cbar.set_ticklabels([str(c) for c in codes])
    return _png(fig), info


def thumbnail(
    data: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    zooms_mm: tuple[float, ...],
    name: str,
    units: str,
) -> bytes:
    """One axial slice (the one with most mask voxels), small, without axes, for cohort pages."""
    from matplotlib import colormaps

    if mask is None:
        mask = np.isfinite(data)
    d, (zx, zy, _) = to_ras(np.asarray(data, dtype=np.float64), affine, zooms_mm)
    m, _ = to_ras(mask.astype(bool), affine, zooms_mm)
    k = int(np.argmax(m.reshape(-1, m.shape[2]).sum(axis=0)))
    vmin, vmax, _, spec = display_range(name, units, d[m])
    cmap = colormaps[spec.cmap].with_extremes(bad="black")
    from matplotlib.figure import Figure

    h = 1.2 * (zy / zx) * d.shape[1] / max(d.shape[0], 1)
    fig = Figure(figsize=(1.2, max(h, 0.4)), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(
        np.where(m, d, np.nan)[:, :, k].T,
        origin="lower",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        aspect=zy / zx,
        interpolation="nearest",
    )
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="black")
    return buf.getvalue()


def aif_plot(
    time_s: np.ndarray,
    curve: np.ndarray,
    columns: tuple[str, str],
    baseline_s: np.ndarray | None = None,
    tissue_ttp_s: float | None = None,
) -> bytes:
    """The AIF against time with its baseline window shaded and its peak marked."""
    fig = _figure(6.0, 2.8)
    ax = fig.add_subplot()
    ax.plot(time_s, curve, "o-", ms=3, color="tab:red", label="AIF")
    if baseline_s is not None and np.size(baseline_s) == 2:
        ax.axvspan(float(baseline_s[0]), float(baseline_s[1]), color="0.85", label="baseline")
    if np.isfinite(curve).any():
        i = int(np.nanargmax(curve))
        ax.axvline(time_s[i], color="tab:red", ls=":", lw=1, label=f"AIF peak {time_s[i]:.1f} s")
    if tissue_ttp_s is not None and np.isfinite(tissue_ttp_s):
        ax.axvline(
            tissue_ttp_s,
            color="tab:blue",
            ls="--",
            lw=1,
            label=f"median tissue TTP {tissue_ttp_s:.1f} s",
        )
    xname = columns[0][:-2] if columns[0].endswith("_s") else columns[0]
    ax.set_xlabel(f"{xname} (s)")
    ax.set_ylabel(columns[1])
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    return _png(fig)


def voxels_on_slice(
    background: np.ndarray,
    chosen: np.ndarray,
    affine: np.ndarray,
    zooms_mm: tuple[float, ...],
    title: str,
) -> bytes:
    """The chosen (AIF) voxels in red on the axial slice that holds most of them."""
    b, (zx, zy, _) = to_ras(np.asarray(background, dtype=np.float64), affine, zooms_mm)
    c, _ = to_ras(chosen.astype(bool), affine, zooms_mm)
    k = int(np.argmax(c.reshape(-1, c.shape[2]).sum(axis=0)))
    fig = _figure(3.6, 3.6 * (zy / zx) * b.shape[1] / max(b.shape[0], 1) + 0.3)
    ax = fig.add_subplot()
    sl = b[:, :, k].T
    fin = sl[np.isfinite(sl)]
    lo, hi = np.percentile(fin, [2, 98]) if fin.size else (0.0, 1.0)
    ax.imshow(
        sl,
        origin="lower",
        cmap="gray",
        vmin=lo,
        vmax=hi if hi > lo else lo + 1,
        aspect=zy / zx,
        interpolation="nearest",
    )
    ys, xs = np.nonzero(c[:, :, k].T)
    ax.scatter(xs, ys, s=40, marker="s", facecolors="none", edgecolors="red", linewidths=1.5)
    ax.set_title(f"{title}: {int(c[:, :, k].sum())} of {int(c.sum())} voxels on z={k}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def curve_labels(curves: Mapping[str, Any], k: int) -> list[str]:
    if "labels" in curves and len(curves["labels"]) >= k:
        return [str(s) for s in curves["labels"][:k]]
    if "voxels" in curves:
        vox = np.asarray(curves["voxels"]).reshape(-1, 3)
        return [f"({a}, {b}, {c})" for a, b, c in vox[:k].tolist()]
    return [f"voxel {i + 1}" for i in range(k)]


def dsc_curves(curves: Mapping[str, Any], max_curves: int = 6) -> bytes:
    """Concentration curves (and fits) of a few voxels, and their residue functions."""
    t = np.asarray(curves["time_s"], dtype=np.float64)
    meas = np.asarray(curves["measured"], dtype=np.float64)[:max_curves]
    k = meas.shape[0]
    labels = curve_labels(curves, k)
    has_res = "residue" in curves
    fig = _figure(9.0 if has_res else 6.0, 3.0)
    axes = fig.subplots(1, 2 if has_res else 1, squeeze=False).ravel()
    colours = [f"C{i}" for i in range(k)]
    for i in range(k):
        axes[0].plot(t, meas[i], "o", ms=2.5, color=colours[i], label=labels[i])
    if "fitted" in curves:
        ft = np.asarray(curves.get("fit_time_s", t), dtype=np.float64)
        fitted = np.asarray(curves["fitted"], dtype=np.float64)[:k]
        for i in range(fitted.shape[0]):
            axes[0].plot(ft, fitted[i], "-", lw=1, color=colours[i])
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel(f"concentration ({curves.get('units', 'ΔR2*, 1/s')})")
    title = "tissue curves (dots) and fits (lines)" if "fitted" in curves else "tissue curves"
    axes[0].set_title(title, fontsize=8)
    axes[0].legend(fontsize=6)
    axes[0].grid(alpha=0.3)
    if has_res:
        res = np.asarray(curves["residue"], dtype=np.float64)[:k]
        dt = float(t[1] - t[0]) if t.size > 1 else 1.0
        rt = np.arange(res.shape[1]) * dt
        keep = rt <= t[-1] - t[0]  # circulant methods return 2T samples: show the first T
        rt, res = rt[keep], res[:, keep]
        for i in range(res.shape[0]):
            axes[1].plot(rt, res[i], "-", lw=1.2, color=colours[i], label=labels[i])
        axes[1].set_xlabel("lag (s)")
        axes[1].set_ylabel("r(t) = CBF · R(t) (1/s)")
        axes[1].set_title("deconvolved residue functions", fontsize=8)
        axes[1].grid(alpha=0.3)
    return _png(fig)


def asl_curves(curves: Mapping[str, Any], max_curves: int = 6) -> bytes:
    """ΔM against PLD with the fitted kinetic curve, one panel per voxel."""
    pld = np.asarray(curves["time_s"], dtype=np.float64)
    meas = np.asarray(curves["measured"], dtype=np.float64)[:max_curves]
    k = meas.shape[0]
    labels = curve_labels(curves, k)
    ncols = min(3, k)
    nrows = int(np.ceil(k / ncols))
    fig = _figure(3.0 * ncols, 2.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fitted = np.asarray(curves["fitted"], dtype=np.float64) if "fitted" in curves else None
    ft = np.asarray(curves.get("fit_time_s", pld), dtype=np.float64)
    for i in range(k):
        ax = axes[i]
        ax.plot(pld, meas[i], "o", ms=3.5, color="tab:blue", label="measured")
        if fitted is not None and i < fitted.shape[0]:
            order = np.argsort(ft)
            ax.plot(ft[order], fitted[i][order], "-", color="tab:orange", lw=1.2, label="fit")
        ax.set_title(labels[i], fontsize=8)
        ax.set_xlabel("PLD (s)", fontsize=7)
        ax.set_ylabel(f"ΔM ({curves.get('units', 'ΔM/M0')})", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    for ax in axes[k:]:
        ax.set_axis_off()
    return _png(fig)


def histogram(values: np.ndarray, name: str, units: str) -> bytes:
    """Histogram of a map inside the mask over its display range (counts beyond it noted)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    vmin, vmax, _, spec = display_range(name, units, v)
    fig = _figure(4.0, 2.6)
    ax = fig.add_subplot()
    ax.hist(np.clip(v, vmin, vmax), bins=50, range=(vmin, vmax), color="tab:blue")
    if v.size:
        med = float(np.median(v))
        ax.axvline(med, color="k", ls="--", lw=1, label=f"median {med:.3g}")
        ax.legend(fontsize=7)
    below, above = int((v < vmin).sum()), int((v > vmax).sum())
    note = f"\n{below} below, {above} above the range (in the end bins)" if below or above else ""
    ax.set_title(f"{spec.label}: {v.size} voxels{note}", fontsize=8)
    ax.set_xlabel(f"{spec.label} ({units})" if units else spec.label)
    ax.set_ylabel("voxels")
    ax.grid(alpha=0.3)
    return _png(fig)
