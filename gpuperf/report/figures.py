"""Figures of the report: map montages as colour-mapped PNGs, curves and histograms as SVG.

Images are arrays colour-mapped and encoded straight to PNG (:mod:`gpuperf.report.raster`),
plots are small SVG documents (:mod:`gpuperf.report.svg`): a run report draws no matplotlib
figure (matplotlib only supplies the colour maps). ``_figure``/``_png`` remain for the cohort
page's box plots, drawn once per cohort on :class:`matplotlib.figure.Figure` (no ``pyplot``).

Slices are shown axial, reoriented to RAS+ (nibabel ``io_orientation``), in neurological
convention: the subject's right is on the right of the image, anterior at the top.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from gpuperf import svg
from gpuperf.report import raster
from gpuperf.report.display import display_range

#: Colour of in-mask voxels whose value is missing (NaN): failed fits stand out.
NAN_COLOUR = (1.0, 0.0, 1.0, 1.0)
NAN_RGB = (255, 0, 255)
MASK_COLOUR = "#00e5ff"
MASK_RGB = (0, 229, 255)
DPI = 80


def _figure(width_in: float, height_in: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


@lru_cache(maxsize=16)
def _orientation(affine_bytes: bytes) -> np.ndarray:
    import nibabel.orientations as nio

    ornt = nio.io_orientation(np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4))
    ornt.setflags(write=False)
    return ornt


def orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel's ``io_orientation`` of ``affine`` (``(3, 2)``: RAS axis and flip of each voxel
    axis), computed once per affine: every map of a run shares it."""
    return _orientation(np.ascontiguousarray(affine, dtype=np.float64).tobytes())


def to_ras(
    data: np.ndarray, affine: np.ndarray, zooms_mm: tuple[float, ...]
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient a 3D array to the closest RAS+ voxel axes; returns (data, zooms in RAS order)."""
    import nibabel.orientations as nio

    ornt = orientation(affine)
    out = nio.apply_orientation(data, ornt)
    zooms = [1.0, 1.0, 1.0]
    for axis_in, (axis_out, _flip) in enumerate(ornt):
        zooms[int(axis_out)] = float(zooms_mm[axis_in])
    return out, (zooms[0], zooms[1], zooms[2])


def pick_slices(mask_ras: np.ndarray, max_slices: int) -> list[int]:
    """Up to ``max_slices`` evenly spaced axial slices that hold mask voxels; one slice is
    the one with most mask voxels (a cohort page's thumbnail)."""
    per_slice = mask_ras.reshape(-1, mask_ras.shape[2]).sum(axis=0)
    if max_slices == 1:
        return [int(np.argmax(per_slice))]
    idx = np.flatnonzero(per_slice > 0)
    if idx.size == 0:
        idx = np.arange(mask_ras.shape[2])
    if idx.size <= max_slices:
        return [int(i) for i in idx]
    pos = np.linspace(0, idx.size - 1, max_slices).round().astype(int)
    return [int(i) for i in idx[np.unique(pos)]]


@dataclass(frozen=True)
class MontageLayout:
    """What the montages of all maps of a run share (:func:`montage_layout`, once per run).

    The maps of a run share their grid, orientation and mask, hence the slices shown, the
    panels' size and place and the mask outline. A map's montage is then one colour per voxel
    of those slices, gathered into the image's distinct pixel rows (:attr:`columns`), each
    copied to the rows that repeat it (:attr:`rows`: the vertical up-scaling), and the outline
    drawn over them (:attr:`edge`).

    Attributes
    ----------
    shape : tuple of int
        Grid of the maps as stored (a map of another grid is refused).
    slices : list of int
        Axial slices shown (:func:`pick_slices`), in RAS+ voxel indices.
    ncols, nrows : int
    voxels : ndarray of intp (X * Y * S,)
        The voxels of the slices shown, ``(X, Y, S)`` in RAS+ (C order), as flat (C-order)
        indices into a map of :attr:`shape`.
    outside : ndarray of intp
        Which of :attr:`voxels` lie outside the mask.
    columns : ndarray of intp (D, W) or None
        The distinct pixel rows: for each pixel, the voxel of the ``(X, Y, S)`` slices it shows
        (C-order index) or ``X * Y * S + 1`` (between panels); the last row lies between
        panels. None when no slice is shown (the image is then one black panel).
    rows : ndarray of intp (H,)
        The row of :attr:`columns` each pixel row of the image repeats.
    edge : (ndarray of intp, ndarray of intp)
        Rows and columns of the mask outline's pixels.
    panel : (int, int)
        Height and width of one panel in pixels.
    gaps : bool
        Whether the image has pixels between (or in place of missing) panels.
    """

    shape: tuple[int, ...]
    slices: list[int]
    ncols: int
    nrows: int
    voxels: np.ndarray
    outside: np.ndarray
    columns: np.ndarray | None
    rows: np.ndarray
    edge: tuple[np.ndarray, np.ndarray]
    panel: tuple[int, int]
    gaps: bool


def montage_layout(
    mask: np.ndarray,
    affine: np.ndarray,
    zooms_mm: tuple[float, ...],
    max_slices: int = 12,
    ncols: int = 6,
    panel_px: int = raster.PANEL_PX,
) -> MontageLayout:
    """The layout of the montages over ``mask`` (arguments as :func:`montage`): the slices,
    the integer up-scaling (voxel aspect kept, :func:`gpuperf.report.raster.scale_factors`),
    the one-pixel mask outline of each panel (:func:`gpuperf.report.raster.outline`, drawn
    on slices the mask neither misses nor fills) and the panels' grid (``raster.GAP_PX`` apart,
    ``ncols`` to a row).
    """
    import nibabel.orientations as nio

    m, (zx, zy, _) = to_ras(np.asarray(mask, dtype=bool), affine, zooms_mm)
    slices = pick_slices(m, max_slices)
    ncols = max(1, min(ncols, len(slices)))
    nrows = -(-len(slices) // ncols)
    nx, ny, ns = m.shape[0], m.shape[1], len(slices)
    sx, sy = raster.scale_factors(nx, ny, zy / zx, panel_px)
    inside = m[:, :, slices]
    grid = nio.apply_orientation(np.arange(m.size).reshape(np.shape(mask)), orientation(affine))
    gap, h, w = raster.GAP_PX, ny * sy, nx * sx
    between = inside.size + 1
    columns = np.full((nrows * ny + 1, ncols * w + (ncols - 1) * gap), between)
    rows = np.full(nrows * h + (nrows - 1) * gap, nrows * ny)
    edge = np.zeros((rows.size, columns.shape[1]), bool)
    # pixel (r, c) of the panel of slice j shows voxel (c // sx, ny - 1 - r // sy, j): anterior
    # at the top, the subject's right on the right (neurological convention)
    voxel = (np.arange(w) // sx)[None, :] * (ny * ns) + (ny - 1 - np.arange(ny))[:, None] * ns
    # the outline of each panel (none on a slice the mask fills or misses)
    panels = np.repeat(np.repeat(inside[:, ::-1].transpose(2, 1, 0), sy, axis=1), sx, axis=2)
    outlines = raster.outline(panels)
    for j in range(ns):
        r, q = divmod(j, ncols)
        columns[r * ny : (r + 1) * ny, q * (w + gap) : q * (w + gap) + w] = voxel + j
        edge[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = outlines[j]
    for r in range(nrows):
        rows[r * (h + gap) : r * (h + gap) + h] = r * ny + np.arange(h) // sy
    return MontageLayout(
        tuple(mask.shape),
        slices,
        ncols,
        nrows,
        grid[:, :, slices].ravel(),
        np.flatnonzero(~inside),
        columns if ns else None,
        rows,
        np.nonzero(edge),
        (sy, sx),
        ns > 1 and (gap > 0 or ns < ncols * nrows),
    )


def montage(
    data: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    zooms_mm: tuple[float, ...],
    name: str,
    units: str,
    max_slices: int = 12,
    ncols: int = 6,
    panel_px: int = raster.PANEL_PX,
    layout: MontageLayout | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Axial montage of one map: colour-mapped slices with the mask outline, as one PNG.

    The slices are colour-mapped arrays encoded straight to PNG (:mod:`gpuperf.report.raster`);
    slice labels, the colour bar in physical units and the legend of categorical maps are HTML
    the caller draws from ``info`` (:func:`gpuperf.report.sections.montage_html`).

    Parameters
    ----------
    data : ndarray (X, Y, Z)
    mask : ndarray of bool (X, Y, Z) or None
    affine : ndarray (4, 4)
    zooms_mm : voxel size (3,)
    name, units : str
        Map name (selects the display range, see :mod:`gpuperf.report.display`) and units.
    max_slices, ncols : int
        Slices shown (:func:`pick_slices`; 1: the slice with most mask voxels) and columns.
    panel_px : int
        Approximate width of one slice in pixels (96 for the cohort page's thumbnails).
    layout : MontageLayout, optional
        :func:`montage_layout` of this ``mask``, ``affine``, ``zooms_mm``, ``max_slices``,
        ``ncols`` and ``panel_px``, shared by the maps of a run (made here when not given).

    Returns
    -------
    png : bytes
    info : dict
        ``vmin``, ``vmax``, ``fixed`` (range), ``label``, ``below``/``above`` (fraction of
        finite mask voxels outside the range), ``nan`` (count of non-finite mask voxels),
        ``slices``, ``ncols``, ``nrows``, ``extend`` ("neither", "min", "max", "both"),
        ``colours`` (colour-bar stops, ``#rrggbb``) or, for categorical maps, ``legend``
        (``[(code, #rrggbb), ...]``).
    """
    if mask is None:
        mask = np.isfinite(data)
    if layout is None:
        layout = montage_layout(mask, affine, zooms_mm, max_slices, ncols, panel_px)
    elif tuple(np.shape(data)) != layout.shape:
        raise ValueError(f"montage layout of a {layout.shape} grid for a {np.shape(data)} map")
    values = np.asarray(data)
    inside = values[np.asarray(mask, dtype=bool)].astype(np.float64)  # statistics: any order
    finite = inside[np.isfinite(inside)]
    vmin, vmax, fixed, spec = display_range(name, units, finite)
    info: dict[str, Any] = {
        "vmin": vmin,
        "vmax": vmax,
        "fixed": fixed,
        "label": spec.label,
        "below": float((finite < vmin).mean()) if finite.size else 0.0,
        "above": float((finite > vmax).mean()) if finite.size else 0.0,
        "nan": int(inside.size - finite.size),
    }
    info["slices"] = list(layout.slices)
    info["ncols"], info["nrows"] = layout.ncols, layout.nrows
    info["extend"] = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (info["below"] > 0, info["above"] > 0), "both"
    )
    sub = values.reshape(-1)[layout.voxels].astype(np.float64)  # the slices shown, RAS+
    fin = np.isfinite(sub)
    if spec.categorical:
        codes = np.unique(finite.astype(np.int64)) if finite.size else np.array([0])
        codes = codes[:20]
        base = raster.tab20()
        table = np.array(
            [(89, 89, 89) if c == 0 else base[i % 20] for i, c in enumerate(codes)], np.uint8
        )
        idx = np.searchsorted(codes, np.where(fin, sub, -1).astype(np.int64))
        idx = np.clip(idx, 0, codes.size - 1)
        info["legend"] = [(int(c), raster.hex_colour(t)) for c, t in zip(codes, table, strict=True)]
        info["extend"] = "neither"
    else:
        table = raster.lut(spec.cmap)
        span = vmax - vmin if vmax > vmin else 1.0
        scaled = np.where(fin, (sub - vmin) / span, 0.0) * (table.shape[0] - 1)
        idx = np.clip(np.round(scaled), 0, table.shape[0] - 1).astype(np.intp)
        info["colours"] = list(_colour_stops(spec.cmap))
    if layout.columns is None:
        return raster.png_bytes(np.zeros((*layout.panel, 3), np.uint8)), info
    # a colour code per voxel of the slices shown, then the codes of the outline and gaps
    k, n = table.shape[0], sub.size
    code = np.empty(n + 2, np.intp)
    code[:n] = idx
    code[:n][~fin] = k + 1  # in the mask without a value: magenta
    code[layout.outside] = k  # outside the mask: black
    code[n:] = (k + 2, k + 3)
    colours = np.concatenate([table, [(0, 0, 0), NAN_RGB, MASK_RGB, (255, 255, 255)]])
    return _draw(layout, colours.astype(np.uint8), code), info


@lru_cache(maxsize=32)
def _colour_stops(cmap: str) -> tuple[str, ...]:
    """About 33 colours of colour map ``cmap`` (``#rrggbb``), first to last: a colour bar."""
    table = raster.lut(cmap)
    stops = [raster.hex_colour(c) for c in table[:: max(1, table.shape[0] // 32)]]
    return (*stops, raster.hex_colour(table[-1]))


def _draw(layout: MontageLayout, colours: np.ndarray, code: np.ndarray) -> bytes:
    """The montage PNG of the voxel colour codes ``code`` (``colours[code]``; the last two
    are the outline's and the gaps'): indexed colours when 256 entries suffice, else RGB."""
    n, (h, w) = code.size - 2, (layout.rows.size, layout.columns.shape[1])
    used = np.bincount(code[:n], minlength=colours.shape[0]) > 0
    used[code[n]] = layout.edge[0].size > 0
    used[code[n + 1]] = layout.gaps
    pal = raster.palette(colours, used)
    if pal is not None:
        small = pal[0][code]
        scan = raster.scanlines(h, w, 1)
        np.take(np.take(small, layout.columns), layout.rows, axis=0, out=scan[:, 1:])
        scan.reshape(-1)[layout.edge[0] * (w + 1) + 1 + layout.edge[1]] = small[n]
        return raster.encode_png(scan, w, 1, palette=pal[1])
    rgb = np.take(colours, code, axis=0).view("V3")[:, 0]  # one 3-byte item per code
    scan = raster.scanlines(h, w)
    pixels = scan[:, 1:].view("V3")
    np.take(np.take(rgb, layout.columns), layout.rows, axis=0, out=pixels)
    pixels[layout.edge] = rgb[n]
    return raster.encode_png(scan, w)


def aif_plot(
    time_s: np.ndarray,
    curve: np.ndarray,
    columns: tuple[str, str],
    baseline_s: np.ndarray | None = None,
    tissue_ttp_s: float | None = None,
) -> bytes:
    """The AIF against time (SVG) with its baseline window shaded and its peak marked."""
    t = np.asarray(time_s, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    xname = columns[0][:-2] if columns[0].endswith("_s") else columns[0]
    p = svg.Panel(
        [svg.Series(t, c, svg.RED, "both", "AIF")], xlabel=f"{xname} (s)", ylabel=columns[1]
    )
    if baseline_s is not None and np.size(baseline_s) == 2:
        p.spans.append((float(baseline_s[0]), float(baseline_s[1]), "#d9d9d9", "baseline"))
    if np.isfinite(c).any():
        i = int(np.nanargmax(c))
        p.vlines.append((float(t[i]), svg.RED, "2,2", f"AIF peak {t[i]:.1f} s"))
    if tissue_ttp_s is not None and np.isfinite(tissue_ttp_s):
        p.vlines.append(
            (float(tissue_ttp_s), svg.BLUE, "5,3", f"median tissue TTP {tissue_ttp_s:.1f} s")
        )
    return svg.figure([p], 1, 480, 224)


def voxels_on_slice(
    background: np.ndarray,
    chosen: np.ndarray,
    affine: np.ndarray,
    zooms_mm: tuple[float, ...],
    title: str,
) -> bytes:
    """The chosen (AIF) voxels as red squares on the axial slice that holds most of them (PNG;
    the caller's caption says which slice: :func:`voxels_slice`)."""
    b, (zx, zy, _) = to_ras(np.asarray(background, dtype=np.float64), affine, zooms_mm)
    c, _ = to_ras(chosen.astype(bool), affine, zooms_mm)
    k = int(np.argmax(c.reshape(-1, c.shape[2]).sum(axis=0)))
    sl = b[:, ::-1, k].T
    fin = sl[np.isfinite(sl)]
    lo, hi = np.percentile(fin, [2, 98]) if fin.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    grey = np.clip(np.where(np.isfinite(sl), (sl - lo) / (hi - lo), 0.0) * 255, 0, 255)
    sx, sy = raster.scale_factors(b.shape[0], b.shape[1], zy / zx, panel_px=288)
    code = raster.upscale(grey.astype(np.uint8).astype(np.intp), sx, sy)  # grey level 0-255
    # a red square around each chosen voxel (one voxel of margin, two pixels thick), as the
    # scatter markers of the matplotlib figure were: a single voxel stays visible
    sel = c[:, ::-1, k].T
    grown = np.zeros_like(sel)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(sel, dy, axis=0), dx, axis=1)
    big = raster.upscale(grown, sx, sy)
    ring = raster.outline(big)
    ring |= raster.outline(big & ~ring)
    code[ring] = 256  # red
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return raster.png_of_codes(np.concatenate([levels, [(255, 0, 0)]]), code)


def voxels_slice(chosen: np.ndarray, affine: np.ndarray, zooms_mm: tuple[float, ...]) -> str:
    """Caption text of :func:`voxels_on_slice`: how many chosen voxels lie on the slice shown."""
    c, _ = to_ras(chosen.astype(bool), affine, zooms_mm)
    per = c.reshape(-1, c.shape[2]).sum(axis=0)
    k = int(np.argmax(per))
    return f"{int(per[k])} of {int(c.sum())} voxels on z={k}"


def curve_labels(curves: Mapping[str, Any], k: int) -> list[str]:
    if "labels" in curves and len(curves["labels"]) >= k:
        return [str(s) for s in curves["labels"][:k]]
    if "voxels" in curves:
        vox = np.asarray(curves["voxels"]).reshape(-1, 3)
        return [f"({a}, {b}, {c})" for a, b, c in vox[:k].tolist()]
    return [f"voxel {i + 1}" for i in range(k)]


def dsc_curves(curves: Mapping[str, Any], max_curves: int = 6) -> bytes:
    """Concentration curves (and fits) of a few voxels, and their residue functions (SVG)."""
    t = np.asarray(curves["time_s"], dtype=np.float64)
    meas = np.asarray(curves["measured"], dtype=np.float64)[:max_curves]
    k = meas.shape[0]
    labels = curve_labels(curves, k)
    colours = [svg.CYCLE[i % len(svg.CYCLE)] for i in range(k)]
    units = curves.get("units", "ΔR2*, 1/s")
    title = "tissue curves (dots) and fits (lines)" if "fitted" in curves else "tissue curves"
    left = svg.Panel(title=title, xlabel="time (s)", ylabel=f"concentration ({units})")
    left.series += [
        svg.Series(t, meas[i], colours[i], "markers", labels[i], marker=1.8) for i in range(k)
    ]
    if "fitted" in curves:
        ft = np.asarray(curves.get("fit_time_s", t), dtype=np.float64)
        fitted = np.asarray(curves["fitted"], dtype=np.float64)[:k]
        left.series += [svg.Series(ft, f, colours[i], "line") for i, f in enumerate(fitted)]
    panels = [left]
    if "residue" in curves:
        res = np.asarray(curves["residue"], dtype=np.float64)[:k]
        dt = float(t[1] - t[0]) if t.size > 1 else 1.0
        rt = np.arange(res.shape[1]) * dt
        keep = rt <= t[-1] - t[0]  # circulant methods return 2T samples: show the first T
        right = svg.Panel(
            title="deconvolved residue functions",
            xlabel="lag (s)",
            ylabel="r(t) = CBF · R(t) (1/s)",
            legend=False,
        )
        right.series += [svg.Series(rt[keep], r[keep], colours[i]) for i, r in enumerate(res)]
        panels.append(right)
    return svg.figure(panels, 2, 360, 240)


def asl_curves(curves: Mapping[str, Any], max_curves: int = 6) -> bytes:
    """ΔM against PLD with the fitted kinetic curve, one panel per voxel (SVG)."""
    pld = np.asarray(curves["time_s"], dtype=np.float64)
    meas = np.asarray(curves["measured"], dtype=np.float64)[:max_curves]
    k = meas.shape[0]
    labels = curve_labels(curves, k)
    fitted = np.asarray(curves["fitted"], dtype=np.float64) if "fitted" in curves else None
    ft = np.asarray(curves.get("fit_time_s", pld), dtype=np.float64)
    order = np.argsort(ft)
    panels = []
    for i in range(k):
        p = svg.Panel(
            [svg.Series(pld, meas[i], svg.BLUE, "markers", "measured", marker=2.6)],
            title=labels[i],
            xlabel="PLD (s)",
            ylabel=f"ΔM ({curves.get('units', 'ΔM/M0')})",
            legend=i == 0,
        )
        if fitted is not None and i < fitted.shape[0]:
            p.series.append(svg.Series(ft[order], fitted[i][order], svg.ORANGE, "line", "fit"))
        panels.append(p)
    return svg.figure(panels, 3, 260, 190)


def histogram(values: np.ndarray, name: str, units: str) -> bytes:
    """Histogram of a map inside the mask over its display range (counts beyond it noted; SVG)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    vmin, vmax, _, spec = display_range(name, units, v)
    counts, edges = np.histogram(np.clip(v, vmin, vmax), bins=50, range=(vmin, vmax))
    below, above = int((v < vmin).sum()), int((v > vmax).sum())
    note = f"; {below} below, {above} above the range (end bins)" if below or above else ""
    p = svg.Panel(
        title=f"{spec.label}: {v.size} voxels{note}",
        xlabel=f"{spec.label} ({units})" if units else spec.label,
        ylabel="voxels",
        bars=(edges, counts),
    )
    if v.size:
        med = float(np.median(v))
        p.vlines.append((med, "#000000", "4,3", f"median {med:.3g}"))
    return svg.figure([p], 1, 340, 220)
