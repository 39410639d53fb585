"""Colour-mapped arrays straight to PNG: the report's images without a plotting library.

A montage used to be a matplotlib figure with one axes per slice, titles, a contour per slice
and a colour bar; drawing and laying those out was most of a report's time. Here a slice is a
colour lookup (a 256-entry table sampled once per colour map), an integer up-scaling (nearest
neighbour, the voxel aspect kept), the mask outline as the in-mask pixels next to an outside
pixel, and a PNG written directly (RFC 2083: IHDR, PLTE, one IDAT, IEND; filter 0), with
indexed colours when 256 palette entries hold the image's colours (:func:`palette`), RGB
otherwise, deflated by ISA-L or zlib (:func:`deflate`). Labels, colour bars and legends are HTML
around the image (:mod:`gpuperf.report.sections`).
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np

#: Pixels per panel side a slice is scaled to (about; integer factors only).
PANEL_PX = 136
#: Pixels between panels of a montage.
GAP_PX = 3


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """Encode an ``(H, W, 3)`` or ``(H, W, 4)`` uint8 image as PNG (8-bit RGB or RGBA); zlib
    ``level`` 1: five times faster than 6 on montages, about 7 % larger."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected (H, W, 3|4) uint8, got {a.shape}")
    h, w, c = a.shape
    rows = scanlines(h, w, c)
    rows[:, 1:] = a.reshape(h, w * c)
    return encode_png(rows, w, c, level)


def scanlines(h: int, w: int, c: int = 3) -> np.ndarray:
    """An ``(h, 1 + w * c)`` uint8 buffer of PNG scan lines, each starting with its filter
    type 0 (None); the caller writes the pixels into ``[:, 1:]`` (:func:`encode_png`)."""
    rows = np.empty((h, 1 + w * c), np.uint8)
    rows[:, 0] = 0
    return rows


def encode_png(
    rows: np.ndarray, w: int, c: int = 3, level: int = 1, palette: np.ndarray | None = None
) -> bytes:
    """PNG (RFC 2083: IHDR, PLTE when indexed, one IDAT, IEND) of the scan lines ``rows``
    (:func:`scanlines`) of a ``w`` pixels wide 8-bit RGB (``c`` 3), RGBA (4) or, with a
    ``palette`` (``(k, 3)`` uint8, ``k`` <= 256), indexed-colour image (``c`` 1)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    kind = 3 if palette is not None else 6 if c == 4 else 2
    ihdr = struct.pack(">IIBBBBB", w, rows.shape[0], 8, kind, 0, 0, 0)
    plte = b"" if palette is None else chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + plte
        + chunk(b"IDAT", deflate(np.ascontiguousarray(rows, dtype=np.uint8), level))
        + chunk(b"IEND", b"")
    )


def png_of_codes(colours: np.ndarray, codes: np.ndarray) -> bytes:
    """PNG of the image ``colours[codes]`` (``colours`` ``(k, 3)`` uint8, ``codes`` ``(H, W)``
    integers): indexed colours when 256 palette entries suffice (:func:`palette`), else RGB."""
    h, w = codes.shape
    pal = palette(colours, np.bincount(codes.ravel(), minlength=len(colours)) > 0)
    if pal is None:
        rows = scanlines(h, w)
        rows[:, 1:] = np.take(colours, codes, axis=0).reshape(h, -1)
        return encode_png(rows, w)
    rows = scanlines(h, w, 1)
    rows[:, 1:] = pal[0][codes]
    return encode_png(rows, w, 1, palette=pal[1])


def deflate(data: bytes | np.ndarray, level: int = 1) -> bytes:
    """A zlib stream (RFC 1950) of ``data``: ISA-L when installed (as the maps' ``.nii.gz``,
    :func:`gpuperf.io.outputs.gzip_bytes`), five times faster than zlib at level 1 on montages
    and about 10 % larger; zlib otherwise. Either decodes to the same pixels."""
    try:
        from isal import isal_zlib
    except ImportError:
        isal_zlib = None
    if isal_zlib is None or level > 3:  # ISA-L's levels are 0-3
        return zlib.compress(data, level)
    return isal_zlib.compress(data, level)


def palette(colours: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """An indexed-colour palette of the ``used`` entries of ``colours`` (``(k, 3)`` uint8;
    ``used``: bool ``(k,)``): ``(index of each entry in the palette as uint8, palette)``; when
    more than 256 entries are used, equal colours share one; None when more than 256 distinct
    colours are used.

    An indexed PNG holds one byte per pixel instead of three: a third of the data to deflate
    and about two thirds of the file, the same pixels."""
    colours = np.asarray(colours, np.uint8)
    entries = np.flatnonzero(used)
    index = np.zeros(colours.shape[0], np.uint8)
    if entries.size <= 256:
        index[entries] = np.arange(entries.size)
        return index, colours[entries]
    rgb = colours.astype(np.uint32)
    key = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    keys, inverse = np.unique(key[entries], return_inverse=True)
    if keys.size > 256:
        return None
    index[entries] = inverse.ravel()
    return index, np.stack([keys >> 16, (keys >> 8) & 255, keys & 255], axis=1).astype(np.uint8)


@lru_cache(maxsize=32)
def lut(cmap_name: str, n: int = 256) -> np.ndarray:
    """``(n, 3)`` uint8 colours of matplotlib's colour map ``cmap_name``.

    The colour maps of the map table come from :mod:`gpuperf.report.colortables` (the same
    numbers, stored: a report needs no matplotlib import, 0.2 s); others are sampled here."""
    from gpuperf.report.colortables import LUTS

    if n == 256 and cmap_name in LUTS:
        return np.frombuffer(bytes.fromhex(LUTS[cmap_name]), np.uint8).reshape(n, 3).copy()
    return sample_colormap(cmap_name, n)


def sample_colormap(cmap_name: str, n: int = 256) -> np.ndarray:
    """``(n, 3)`` uint8 colours of matplotlib's colour map ``cmap_name`` at ``n`` points."""
    from matplotlib import colormaps

    rgba = colormaps[cmap_name](np.linspace(0.0, 1.0, n))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def hex_colour(rgb) -> str:
    """``#rrggbb`` of a 0-255 RGB triple."""
    r, g, b = (int(x) for x in np.asarray(rgb)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def scale_factors(nx: int, ny: int, aspect: float, panel_px: int = PANEL_PX) -> tuple[int, int]:
    """Integer up-scaling (sx, sy) of an ``nx`` x ``ny`` slice whose pixels are ``aspect``
    (y size / x size) times as tall as wide, to about ``panel_px`` pixels across."""
    sx = max(1, int(round(panel_px / max(nx, ny * aspect, 1))))
    sy = max(1, int(round(sx * aspect)))
    return sx, sy


def upscale(a: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """Nearest-neighbour up-scaling of the first two axes (rows by ``sy``, columns by ``sx``)."""
    return np.repeat(np.repeat(a, sy, axis=0), sx, axis=1)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside
    only where the mask touches it): a one-pixel mask outline. A stack of images (``mask`` with
    more than two axes) gets the outline of each image (the last two axes)."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    interior = p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return m & ~interior


def tile(panels: list[np.ndarray], ncols: int, gap: int = GAP_PX, fill: int = 255) -> np.ndarray:
    """Panels (same shape, ``(h, w, 3)``) in a grid of ``ncols`` columns, ``gap`` pixels apart."""
    h, w, c = panels[0].shape
    nrows = -(-len(panels) // ncols)
    out = np.full((nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap, c), fill, np.uint8)
    for i, p in enumerate(panels):
        r, q = divmod(i, ncols)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = p
    return out


def tab20() -> np.ndarray:
    """matplotlib's categorical "tab20" colours, ``(20, 3)`` uint8 (stored, as :func:`lut`)."""
    from gpuperf.report.colortables import TAB20

    return np.frombuffer(bytes.fromhex(TAB20), np.uint8).reshape(20, 3).copy()
