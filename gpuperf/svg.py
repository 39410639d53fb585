"""Light line plots and histograms as SVG (no plotting library): the report's curves and the
DSC pipeline's ``<prefix>_aif.svg``.

The browser draws the text and lines, so a plot costs a few hundred lines of string formatting
instead of a matplotlib import (about 0.9 s with its dependencies), figure layout and
rasterisation. Pages embed the SVG as a ``data:image/svg+xml`` URI (allowed by the page's
``img-src data:`` policy). It sits at the bottom of the layers (NumPy only), beside
:mod:`gpuperf.maps`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: matplotlib's "tab10" cycle (C0..C9), so colours read as they did in the figures.
CYCLE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
RED, BLUE, ORANGE = "#d62728", "#1f77b4", "#ff7f0e"
FONT = "system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


@dataclass
class Series:
    """One curve: ``style`` is "line", "markers" or "both"; ``dash`` an SVG dash array."""

    x: np.ndarray
    y: np.ndarray
    colour: str = BLUE
    style: str = "line"
    label: str = ""
    width: float = 1.2
    marker: float = 2.2
    dash: str = ""


@dataclass
class Panel:
    """One set of axes: curves, vertical lines ``(x, colour, dash, label)``, shaded x spans
    ``(x0, x1, colour, label)``, histogram bars ``(edges, counts)``."""

    series: list[Series] = field(default_factory=list)
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    vlines: list[tuple[float, str, str, str]] = field(default_factory=list)
    spans: list[tuple[float, float, str, str]] = field(default_factory=list)
    bars: tuple[np.ndarray, np.ndarray] | None = None
    legend: bool = True


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 x 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_text(v: float) -> str:
    return f"{v:.4g}" if v != 0 else "0"


def _limits(values: list[np.ndarray], pad: float = 0.05) -> tuple[float, float]:
    fin = [v[np.isfinite(v)] for v in values if np.size(v)]
    fin = [v for v in fin if v.size]
    if not fin:
        return 0.0, 1.0
    lo = float(min(v.min() for v in fin))
    hi = float(max(v.max() for v in fin))
    if hi <= lo:
        return lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    d = (hi - lo) * pad
    return lo - d, hi + d


def _esc(s: str) -> str:
    return html.escape(str(s), quote=True)


def _panel(p: Panel, x0: float, y0: float, w: float, h: float) -> list[str]:
    """SVG elements of one panel whose outer box is (x0, y0, w, h) in pixels."""
    left, right, top, bottom = 52.0, 8.0, 18.0 if p.title else 8.0, 34.0
    ax, ay, aw, ah = x0 + left, y0 + top, w - left - right, h - top - bottom
    xs = [s.x for s in p.series] + [np.asarray([v[0] for v in p.vlines], float)]
    xs += [np.asarray([v for s in p.spans for v in s[:2]], float)]
    ys = [s.y for s in p.series]
    if p.bars is not None:
        xs.append(np.asarray(p.bars[0], float))
        ys.append(np.asarray([0.0, float(np.max(p.bars[1], initial=1.0))]))
    xlo, xhi = _limits(xs, pad=0.0 if p.bars is not None else 0.03)
    ylo, yhi = _limits(ys, pad=0.06)
    if p.bars is not None:
        ylo = 0.0

    def px(v):
        return ax + (np.asarray(v, float) - xlo) / (xhi - xlo) * aw

    def py(v):
        return ay + ah - (np.asarray(v, float) - ylo) / (yhi - ylo) * ah

    out = [f'<rect x="{ax:.1f}" y="{ay:.1f}" width="{aw:.1f}" height="{ah:.1f}" fill="#fff"/>']
    for a, b, colour, _ in p.spans:
        xa, xb = float(px(max(a, xlo))), float(px(min(b, xhi)))
        out.append(
            f'<rect x="{xa:.1f}" y="{ay:.1f}" width="{max(xb - xa, 0):.1f}" height="{ah:.1f}" '
            f'fill="{colour}"/>'
        )

    def grid_line(x1, y1, x2, y2, t, tx, ty, anchor):
        """A grid line across the axes at tick ``t``, and its label at (tx, ty)."""
        out.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            'stroke="#000" stroke-opacity="0.12"/>'
        )
        out.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" '
            f'font-size="9">{_tick_text(t)}</text>'
        )

    for t in nice_ticks(xlo, xhi):
        x = float(px(t))
        grid_line(x, ay, x, ay + ah, t, x, ay + ah + 12, "middle")
    for t in nice_ticks(ylo, yhi):
        y = float(py(t))
        grid_line(ax, y, ax + aw, y, t, ax - 3, y + 3, "end")
    if p.bars is not None:
        edges, counts = (np.asarray(v, float) for v in p.bars)
        xl, xr, yt = px(edges[:-1]), px(edges[1:]), py(counts)
        out += [
            f'<rect x="{a:.1f}" y="{t:.1f}" width="{max(b - a - 0.3, 0.3):.1f}" '
            f'height="{ay + ah - t:.1f}" fill="{BLUE}"/>'
            for a, b, t in zip(xl.tolist(), xr.tolist(), yt.tolist(), strict=True)
        ]
    for s in p.series:
        x, y = np.asarray(s.x, float), np.asarray(s.y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        pts_x, pts_y = px(x[ok]).tolist(), py(y[ok]).tolist()
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        if s.style in ("line", "both") and len(pts_x) > 1:
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(pts_x, pts_y, strict=True))
            out.append(
                f'<polyline points="{pts}" fill="none" stroke="{s.colour}" '
                f'stroke-width="{s.width}"{dash}/>'
            )
        if s.style in ("markers", "both"):
            out += [
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="{s.marker}" fill="{s.colour}"/>'
                for a, b in zip(pts_x, pts_y, strict=True)
            ]
    for v, colour, dash, _ in p.vlines:
        if math.isfinite(v):
            x = float(px(v))
            d = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{x:.1f}" y1="{ay:.1f}" x2="{x:.1f}" y2="{ay + ah:.1f}" '
                f'stroke="{colour}" stroke-width="1"{d}/>'
            )
    out.append(
        f'<rect x="{ax:.1f}" y="{ay:.1f}" width="{aw:.1f}" height="{ah:.1f}" '
        'fill="none" stroke="#444" stroke-width="0.8"/>'
    )
    if p.title:
        out.append(
            f'<text x="{ax + aw / 2:.1f}" y="{y0 + 12:.1f}" text-anchor="middle" '
            f'font-size="10">{_esc(p.title)}</text>'
        )
    if p.xlabel:
        out.append(
            f'<text x="{ax + aw / 2:.1f}" y="{ay + ah + 27:.1f}" text-anchor="middle" '
            f'font-size="10">{_esc(p.xlabel)}</text>'
        )
    if p.ylabel:
        cx, cy = x0 + 11, ay + ah / 2
        out.append(
            f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle" font-size="10" '
            f'transform="rotate(-90 {cx:.1f} {cy:.1f})">{_esc(p.ylabel)}</text>'
        )
    entries = [(s.label, s.colour, s.style, s.dash) for s in p.series if s.label]
    entries += [(lab, c, "span", "") for _, _, c, lab in p.spans if lab]
    entries += [(lab, c, "line", d) for _, c, d, lab in p.vlines if lab]
    if p.legend and entries:
        lx, ly = ax + aw - 6, ay + 6
        width = 24 + 5.6 * max(len(e[0]) for e in entries)
        out.append(
            f'<rect x="{lx - width:.1f}" y="{ly:.1f}" width="{width:.1f}" '
            f'height="{12 * len(entries) + 4:.1f}" fill="#fff" fill-opacity="0.85" '
            'stroke="#ccc"/>'
        )
        for i, (lab, colour, style, dash) in enumerate(entries):
            yy = ly + 10 + 12 * i
            sx = lx - width + 4
            if style == "markers":
                out.append(f'<circle cx="{sx + 7:.1f}" cy="{yy - 3:.1f}" r="2.2" fill="{colour}"/>')
            elif style == "span":
                out.append(
                    f'<rect x="{sx:.1f}" y="{yy - 7:.1f}" width="14" height="8" fill="{colour}"/>'
                )
            else:
                d = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(
                    f'<line x1="{sx:.1f}" y1="{yy - 3:.1f}" x2="{sx + 14:.1f}" '
                    f'y2="{yy - 3:.1f}" stroke="{colour}" stroke-width="1.5"{d}/>'
                )
            out.append(f'<text x="{sx + 18:.1f}" y="{yy:.1f}" font-size="9">{_esc(lab)}</text>')
    return out


def figure(panels: Sequence[Panel], ncols: int, panel_w: float, panel_h: float) -> bytes:
    """An SVG document with ``panels`` in a grid of ``ncols`` columns (sizes in pixels)."""
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    w, h = ncols * panel_w, nrows * panel_h
    body: list[str] = []
    for i, p in enumerate(panels):
        r, c = divmod(i, ncols)
        body += _panel(p, c * panel_w, r * panel_h, panel_w, panel_h)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="{FONT}">'
        f'<rect width="{w:.0f}" height="{h:.0f}" fill="#fff"/>'
    )
    return (head + "".join(body) + "</svg>").encode("utf-8")
