"""Assembling self-contained HTML pages.

Pages embed their figures as ``data:`` URIs and their CSS/JS inline; a Content-Security-Policy
forbids every network request, so a report opens from disk, offline, years later, and cannot
leak anything when opened. A small inline script records, once the page has loaded, how many
images decoded (``naturalWidth > 0``) in ``#gp-image-status`` (used by the browser test).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:0 16px 40px;color:#222;font-size:14px}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:18px;border-bottom:1px solid #ccc;
padding-bottom:2px;margin-top:28px}h3{font-size:15px;margin:18px 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 8px;
text-align:left;vertical-align:top;font-size:13px}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fdecea;border-left:5px solid #d93025;padding:6px 10px;margin:4px 0}
.info{background:#eef4fb;border-left:5px solid #5b8dd6;padding:6px 10px;margin:4px 0}
.ok{background:#e8f5e9;border-left:5px solid #2e7d32;padding:6px 10px;margin:4px 0}
.gp-error{background:#fff3e0;border-left:5px solid #ef6c00;padding:6px 10px;margin:4px 0}
.caption{color:#555;font-size:12px;margin:2px 0 10px}figure{margin:8px 0}
img{max-width:100%;height:auto}nav a{margin-right:12px;white-space:nowrap}.muted{color:#777}
tr.outlier td{background:#fff8e1}td.flag{background:#ffd8a8;font-weight:600}
code{font-size:12px}
.gp-fig{display:flex;align-items:stretch;gap:10px}.gp-pic{position:relative;line-height:0}
.gp-pic img{image-rendering:pixelated}.gp-lab{position:absolute;color:#fff;font-size:10px;
line-height:1;padding:1px 3px;pointer-events:none}.gp-cbar{display:flex;gap:4px;
align-items:stretch;font-size:11px;min-height:120px}.gp-ramp{width:14px;border:1px solid #999}
.gp-ticks{display:flex;flex-direction:column;justify-content:space-between}
.gp-unit{writing-mode:vertical-rl;transform:rotate(180deg);text-align:center;color:#333}
.gp-leg{font-size:11px;line-height:1.5}.gp-sw{display:inline-block;width:10px;height:10px;
margin-right:4px;border:1px solid #777;vertical-align:middle}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var ok = 0, broken = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (im.complete && im.naturalWidth > 0) { ok++; } else { broken.push(im.alt || String(i)); }
  }
  var el = document.getElementById('gp-image-status');
  el.setAttribute('data-total', String(document.images.length));
  el.setAttribute('data-ok', String(ok));
  el.setAttribute('data-broken', broken.join('|'));
  el.setAttribute('data-done', 'true');
});
"""


def esc(value: Any) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Compact text for a table cell (numbers with ``digits`` significant digits)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.{digits}g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)) and len(value) <= 8:
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def img(png: bytes, alt: str, width: int | None = None) -> str:
    """An ``<img>`` with the PNG (or SVG document) embedded as a base64 data URI."""
    mime = "image/svg+xml" if png[:4] == b"<svg" else "image/png"
    uri = f"data:{mime};base64," + base64.b64encode(png).decode("ascii")
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{w}>'


def figure(png: bytes, alt: str, caption: str = "", above: str = "", beside: str = "") -> str:
    """A figure: the image, trusted HTML ``above`` it (positioned labels) and ``beside`` it
    (a colour bar), and the caption."""
    cap = f'<figcaption class="caption">{caption}</figcaption>' if caption else ""
    pic = img(png, alt)
    if above or beside:
        pic = f'<div class="gp-fig"><div class="gp-pic">{pic}{above}</div>{beside}</div>'
    return f"<figure>{pic}{cap}</figure>"


def table(
    rows: Iterable[Sequence[Any]],
    header: Sequence[str] | None = None,
    numeric: Sequence[bool] | None = None,
    raw: bool = False,
) -> str:
    """A table; cells are escaped unless ``raw`` (then they are trusted HTML)."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if numeric and i < len(numeric) and numeric[i] else ""
            text = cell if raw else esc(fmt(cell))
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def box(kind: str, text: str) -> str:
    """A coloured message box: kind is "warn", "info", "ok" or "gp-error"."""
    return f'<div class="{kind}">{text}</div>'


def page(title: str, kind: str, body: Sequence[str], subtitle: str = "") -> str:
    """The whole document: ``kind`` ("run" or "cohort") is recorded on ``<body>``."""
    sub = f'<p class="muted">{subtitle}</p>' if subtitle else ""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>",
            f"<style>{_CSS}</style></head>",
            f'<body data-gpuperf-report="{esc(kind)}">',
            f"<h1>{esc(title)}</h1>{sub}",
            *body,
            '<div id="gp-image-status" hidden></div>',
            f"<script>{_SCRIPT}</script>",
            "</body></html>",
            "",
        ]
    )
