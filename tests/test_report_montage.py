"""Montages of the run report against a plain reference implementation, pixel for pixel.

:func:`gpuperf.report.figures.montage` shares what every map of a run has in common (the
orientation, the chosen slices, the mask outline, the pixel layout of the tiled image) and
colours a small index image; the reference below is the slice-by-slice drawing it replaced
(reorient, colour-map, up-scale and outline each slice, tile), so a changed pixel, colour,
slice, outline or number in ``info`` fails here.
"""

from __future__ import annotations

import io

import nibabel.orientations as nio
import numpy as np
import pytest

from gpuperf.report import figures, raster
from gpuperf.report.display import display_range


def _reference_ras(values, selected, affine, zooms_mm):
    """``values`` (float64) and ``selected`` (bool) reoriented to RAS+ with nibabel, and the
    voxel sizes in RAS order: the reorientation the report first did per image."""
    ornt = nio.io_orientation(affine)
    out = (
        nio.apply_orientation(np.asarray(values, dtype=np.float64), ornt),
        nio.apply_orientation(np.asarray(selected).astype(bool), ornt),
    )
    zooms = [1.0, 1.0, 1.0]
    for axis_in, (axis_out, _flip) in enumerate(ornt):
        zooms[int(axis_out)] = float(zooms_mm[axis_in])
    return out, zooms


def _reference_montage(data, mask, affine, zooms_mm, name, units, max_slices=12, ncols=6,
                       panel_px=raster.PANEL_PX):  # fmt: skip
    """(RGB image, info) of a montage drawn slice by slice, as the report first drew it."""
    if mask is None:
        mask = np.isfinite(data)
    (d, m), zooms = _reference_ras(data, mask, affine, zooms_mm)
    inside = d[m]
    finite = inside[np.isfinite(inside)]
    vmin, vmax, fixed, spec = display_range(name, units, inside)
    below = float((finite < vmin).mean()) if finite.size else 0.0
    above = float((finite > vmax).mean()) if finite.size else 0.0
    info = {"vmin": vmin, "vmax": vmax, "fixed": fixed, "label": spec.label, "below": below,
            "above": above, "nan": int(inside.size - finite.size)}  # fmt: skip
    slices = figures.pick_slices(m, max_slices)
    ncols = max(1, min(ncols, len(slices)))
    info.update(slices=slices, ncols=ncols, nrows=-(-len(slices) // ncols))
    ends = {(False, False): "neither", (True, False): "min", (False, True): "max"}
    info["extend"] = ends.get((below > 0, above > 0), "both")
    sx, sy = raster.scale_factors(d.shape[0], d.shape[1], zooms[1] / zooms[0], panel_px)
    if spec.categorical:
        codes = (np.unique(finite.astype(np.int64)) if finite.size else np.array([0]))[:20]
        colours = [(89, 89, 89) if c == 0 else raster.tab20()[i % 20] for i, c in enumerate(codes)]
        table = np.array(colours, np.uint8)
        info["legend"] = [(int(c), raster.hex_colour(t)) for c, t in zip(codes, table, strict=True)]
        info["extend"] = "neither"
    else:
        table = raster.lut(spec.cmap)
        info["colours"] = [raster.hex_colour(c) for c in table[:: max(1, len(table) // 32)]]
        info["colours"].append(raster.hex_colour(table[-1]))
    panels = []
    for k in slices:
        sl, mk = d[:, ::-1, k].T, m[:, ::-1, k].T  # rows: anterior at the top
        rgb = np.zeros(sl.shape + (3,), np.uint8)
        for (r, c), v in np.ndenumerate(sl):
            if not mk[r, c]:
                continue  # black
            if not np.isfinite(v):
                rgb[r, c] = figures.NAN_RGB
            elif spec.categorical:
                rgb[r, c] = table[min(np.searchsorted(codes, int(v)), len(codes) - 1)]
            else:
                span = vmax - vmin if vmax > vmin else 1.0
                i = int(np.clip(np.round((v - vmin) / span * (len(table) - 1)), 0, len(table) - 1))
                rgb[r, c] = table[i]
        p = np.repeat(np.repeat(rgb, sy, axis=0), sx, axis=1)
        if mk.any() and not mk.all():
            big = np.repeat(np.repeat(mk, sy, axis=0), sx, axis=1)
            pad = np.pad(big, 1, mode="edge")
            inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
            p[big & ~inner] = figures.MASK_RGB
        panels.append(p)
    if not panels:
        return np.zeros((sy, sx, 3), np.uint8), info
    h, w, gap = panels[0].shape[0], panels[0].shape[1], raster.GAP_PX
    nrows = info["nrows"]
    out = np.full((nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        r, q = divmod(i, ncols)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = p
    return out, info


def _decode(png: bytes) -> np.ndarray:
    import matplotlib.image as mpimg

    return np.round(mpimg.imread(io.BytesIO(png))[..., :3] * 255).astype(np.uint8)


def _oblique_affine() -> np.ndarray:
    """Axes swapped and flipped, rotated 20 degrees, anisotropic voxels, shifted."""
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    perm = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0.0]])  # voxel axes: -S... (x->-A etc.)
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag([1.5, 2.5, 3.0])
    affine[:3, 3] = (-30.0, 12.0, 7.5)
    return affine


def _phantom(shape, seed):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = sum(g**2 for g in grids) < 0.9
    mask[..., 0] = False  # an empty slice
    mask[: shape[0] // 2, :, 1] = True  # a slice whose mask touches the border
    mask[:, :, -1] = True  # a full slice: no outline
    data = rng.gamma(2.0, 30.0, shape)
    data[rng.random(shape) < 0.05] = np.nan  # failed voxels, in and outside the mask
    data[rng.random(shape) < 0.02] = np.inf
    return data.astype(np.float32), mask


CASES = [
    ("cbf", "ml/100g/min", {}),  # fixed range, values beyond both ends
    ("cbf", "a.u.", {}),  # auto range from percentiles
    ("k2", "1/s", {}),  # symmetric auto range
    ("foo_stderr", "", {"max_slices": 4, "ncols": 3}),  # unknown map, fewer slices
    ("cbf", "ml/100g/min", {"max_slices": 1, "panel_px": 96}),  # the cohort thumbnail
    ("mtt", "s", {"ncols": 4, "panel_px": 50}),
]


@pytest.mark.parametrize(("name", "units", "kw"), CASES)
@pytest.mark.parametrize("oblique", [False, True])
def test_montage_matches_slice_by_slice_reference(name, units, kw, oblique):
    shape = (23, 19, 11)
    data, mask = _phantom(shape, seed=len(name) + 7 * oblique)
    data[mask & (data > 150)] -= 300  # negative values too (below a fixed range's start)
    affine = _oblique_affine() if oblique else np.diag([2.0, 2.0, 3.5, 1.0])
    zooms = (1.5, 2.5, 3.0) if oblique else (2.0, 2.0, 3.5)
    want_img, want_info = _reference_montage(data, mask, affine, zooms, name, units, **kw)
    png, info = figures.montage(data, mask, affine, zooms, name, units, **kw)
    assert info == want_info
    np.testing.assert_array_equal(_decode(png), want_img)
    # the layout shared by every map of a run gives the same image
    layout = figures.montage_layout(mask, affine, zooms, **kw)
    png2, info2 = figures.montage(data, mask, affine, zooms, name, units, layout=layout, **kw)
    assert png2 == png and info2 == info


def test_montage_categorical_and_without_mask():
    shape = (12, 14, 6)
    data, mask = _phantom(shape, seed=3)
    codes = np.where(np.isfinite(data), np.floor(data / 40.0), np.nan).astype(np.float32)
    codes[0, 0, 2] = 2**12  # a code beyond the first 20 shown
    for m in (mask, None):
        for name, units in (("status", ""), ("cbf", "ml/100g/min")):
            want_img, want_info = _reference_montage(codes, m, _oblique_affine(), (1, 2, 3),
                                                     name, units)  # fmt: skip
            png, info = figures.montage(codes, m, _oblique_affine(), (1, 2, 3), name, units)
            assert info == want_info
            np.testing.assert_array_equal(_decode(png), want_img)


def test_montage_of_an_empty_or_constant_map():
    shape = (8, 9, 4)
    mask = np.zeros(shape, bool)
    for data in (np.full(shape, np.nan, np.float32), np.full(shape, 3.0, np.float32)):
        for m in (mask, mask | True):
            want_img, want_info = _reference_montage(data, m, np.eye(4), (1, 1, 1), "x", "")
            png, info = figures.montage(data, m, np.eye(4), (1, 1, 1), "x", "")
            assert info == want_info
            np.testing.assert_array_equal(_decode(png), want_img)


def test_layout_of_another_grid_is_refused():
    mask = np.ones((8, 8, 3), bool)
    layout = figures.montage_layout(mask, np.eye(4), (1, 1, 1))
    with pytest.raises(ValueError, match="layout"):
        figures.montage(np.zeros((8, 8, 4)), None, np.eye(4), (1, 1, 1), "x", "", layout=layout)


def test_indexed_when_256_colours_suffice_else_rgb():
    """A montage is an indexed-colour PNG when its colours (map, black, magenta, outline, gaps)
    fit a 256-entry palette, RGB otherwise; the pixels are the reference's either way."""
    shape = (40, 36, 6)
    data, mask = _phantom(shape, seed=5)
    ramp = np.linspace(-10.0, 110.0, data.size).reshape(shape).astype(np.float32)
    ramp[~np.isfinite(data)] = np.nan  # every level of the colour map, NaN, outline, gaps
    for values, colour_type in ((ramp, 2), (np.round(ramp / 10) * 10, 3)):
        want_img, want_info = _reference_montage(values, mask, np.eye(4), (1, 1, 1), "cbf",
                                                 "ml/100g/min")  # fmt: skip
        png, info = figures.montage(values, mask, np.eye(4), (1, 1, 1), "cbf", "ml/100g/min")
        assert png[25] == colour_type  # IHDR colour type: 2 RGB, 3 indexed
        assert info == want_info
        np.testing.assert_array_equal(_decode(png), want_img)


def test_palette_shares_equal_colours_only_to_fit_and_refuses_more_than_256():
    colours = np.array([(0, 0, 0), (9, 9, 9), (0, 0, 0), (255, 0, 255)], np.uint8)
    index, table = raster.palette(colours, np.array([True, False, True, True]))
    assert table[index[[0, 2, 3]]].tolist() == [[0, 0, 0], [0, 0, 0], [255, 0, 255]]
    assert len(table) == 3  # three used entries fit: no need to share
    many = np.stack([np.arange(300) % 256, np.arange(300) // 256, np.zeros(300)], 1)
    many = many.astype(np.uint8)
    assert raster.palette(many, np.ones(300, bool)) is None  # 300 distinct colours
    used = np.arange(300) < 256
    index, table = raster.palette(many, used)
    np.testing.assert_array_equal(table[index[used]], many[used])
    many[256:] = many[:44]  # 300 entries, 256 distinct colours: equal ones share an entry
    index, table = raster.palette(many, np.ones(300, bool))
    assert len(table) == 256
    np.testing.assert_array_equal(table[index], many)


def _reference_voxels_on_slice(background, chosen, affine, zooms_mm):
    """The AIF voxels' figure as an RGB image, drawn as the report first drew it."""
    (b, c), zooms = _reference_ras(background, chosen, affine, zooms_mm)
    k = int(np.argmax(c.reshape(-1, c.shape[2]).sum(axis=0)))
    sl = b[:, ::-1, k].T
    fin = sl[np.isfinite(sl)]
    lo, hi = np.percentile(fin, [2, 98]) if fin.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    grey = np.clip(np.where(np.isfinite(sl), (sl - lo) / (hi - lo), 0.0) * 255, 0, 255)
    sx, sy = raster.scale_factors(b.shape[0], b.shape[1], zooms[1] / zooms[0], panel_px=288)
    img = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    img = np.repeat(np.repeat(img, sy, axis=0), sx, axis=1)
    sel = c[:, ::-1, k].T
    grown = np.zeros_like(sel)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(sel, dy, axis=0), dx, axis=1)
    big = np.repeat(np.repeat(grown, sy, axis=0), sx, axis=1)
    ring = raster.outline(big)
    ring |= raster.outline(big & ~ring)
    img[ring] = (255, 0, 0)
    return img


@pytest.mark.parametrize("levels", [None, 40])
def test_aif_voxels_figure_matches_reference(levels):
    """Indexed (few grey levels) or RGB (every level and red): the same pixels."""
    data, _ = _phantom((30, 26, 7), seed=11)
    if levels:
        data = np.round(data / levels) * levels
    else:  # every grey level on every slice
        data[np.isfinite(data)] = np.arange(data.size)[np.isfinite(data).ravel()] % 780
    chosen = np.zeros(data.shape, bool)
    chosen[[3, 4, 20, 25], [5, 5, 12, 0], [2, 2, 2, 4]] = True  # one at the border
    for affine, zooms in ((np.eye(4), (1, 1, 1)), (_oblique_affine(), (1.5, 2.5, 3.0))):
        want = _reference_voxels_on_slice(data, chosen, affine, zooms)
        png = figures.voxels_on_slice(data, chosen, affine, zooms, "AIF voxels")
        if zooms == (1, 1, 1):  # 30 x 26 voxels a slice: all 256 grey levels when not rounded
            assert png[25] == (3 if levels else 2)
        np.testing.assert_array_equal(_decode(png), want)
