"""One table from a pytest-benchmark JSON file: rates, and ratios against baselines.

Each benchmark follows the ``extra_info`` convention of :mod:`gpuperf.benchmarks.conventions`
(``stage``, ``method``, ``backend``, ``device``, ``voxels``, and ``baseline`` for reference
implementations). A row's rate is ``voxels / median time``. For every gpuperf row (no
``baseline``), the ratio against a baseline row of the same ``stage`` and ``method`` measured in
the same run is ``rate(row) / rate(baseline)``: above 1, gpuperf is faster. Rates rather than
times are compared because slow voxel-loop baselines run on fewer voxels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf.benchmarks.conventions import REQUIRED_KEYS
from gpuperf.errors import InputError

#: Stage given to benchmarks that did not record the convention's keys (shown, not dropped).
UNLABELLED = "(unlabelled)"


@dataclass
class BenchRow:
    """One measured benchmark.

    Attributes
    ----------
    name : str
        pytest node name (``test_osvd[cupy]``).
    stage, method, backend, device : str
        From ``extra_info``.
    voxels : int or None
        Voxels per call; None when the benchmark did not record it.
    median_s : float
        Median wall time of one call (s).
    rounds : int
        Timed calls pytest-benchmark made.
    baseline : str or None
        Baseline name for reference implementations; None for gpuperf's own rows.
    baseline_version : str or None
    size : str or None
        ``laptop`` or ``brain``.
    variant : str or None
        What tells apart rows of the same stage, method and backend: ``extra_info['variant']``
        or else the pytest parameter id without the parts already shown (backend, method).
    ratios : dict
        ``{baseline label: rate(row) / rate(baseline)}`` (gpuperf rows only).
    problems : list of str
        Why the row is incomplete (missing keys), shown in the table.
    extra : dict
        The remaining ``extra_info`` keys (``frames``, ``note``, ...).
    """

    name: str
    stage: str
    method: str
    backend: str
    device: str
    voxels: int | None
    median_s: float
    rounds: int = 0
    baseline: str | None = None
    baseline_version: str | None = None
    size: str | None = None
    variant: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def voxels_per_s(self) -> float | None:
        """Voxels processed per second (None without ``voxels`` or with a zero time)."""
        if self.voxels is None or not (self.median_s > 0):
            return None
        return self.voxels / self.median_s

    @property
    def is_baseline(self) -> bool:
        return self.baseline is not None

    @property
    def label(self) -> str:
        """How a baseline is named in ratio columns: ``osipy``, ``svd_loop``, ..."""
        return self.baseline or self.backend

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["voxels_per_s"] = self.voxels_per_s
        return d


def load_benchmark_json(path: str | PathLike) -> dict[str, Any]:
    """Read a pytest-benchmark JSON file (``--benchmark-json``).

    Raises
    ------
    InputError
        When the file is missing, is not JSON, or has no ``benchmarks`` list.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file", "benchmark JSON not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, "file", f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("benchmarks"), list):
        raise InputError(path, "benchmarks", "expected pytest-benchmark JSON with a list")
    return dict(data)


def rows_from_json(data: Mapping[str, Any]) -> list[BenchRow]:
    """Turn pytest-benchmark JSON into rows (ratios not yet computed).

    Benchmarks that lack convention keys are kept with what is known and a ``problems`` note, so
    that a mislabelled benchmark is visible rather than silently dropped.
    """
    rows = []
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        stats = bench.get("stats") or {}
        problems = [f"missing extra_info[{k!r}]" for k in REQUIRED_KEYS if k not in info]
        voxels = info.pop("voxels", None)
        try:
            voxels = None if voxels is None else int(voxels)
        except (TypeError, ValueError):
            problems.append(f"voxels={voxels!r} is not an integer")
            voxels = None
        median = stats.get("median")
        if median is None:
            problems.append("no median in stats")
            median = math.nan
        baseline = info.pop("baseline", None)
        row = BenchRow(
            name=str(bench.get("name", "?")),
            stage=str(info.pop("stage", UNLABELLED)),
            method=str(info.pop("method", bench.get("name", "?"))),
            backend=str(info.pop("backend", "?")),
            device=str(info.pop("device", "?")),
            voxels=voxels,
            median_s=float(median),
            rounds=int(stats.get("rounds", 0) or 0),
            baseline=None if baseline in (None, "") else str(baseline),
            baseline_version=_opt_str(info.pop("baseline_version", None)),
            size=_opt_str(info.pop("size", None)),
            problems=problems,
            extra=info,
        )
        row.variant = _variant(info.pop("variant", None), bench.get("param"), row)
        rows.append(row)
    return rows


def _variant(explicit: Any, param: Any, row: BenchRow) -> str | None:
    if explicit not in (None, ""):
        return str(explicit)
    if param in (None, ""):
        return None
    shown = {row.backend, row.method, row.baseline}
    rest = [t for t in str(param).split("-") if t and t not in shown]
    return "-".join(rest) or None


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def compute_ratios(rows: Sequence[BenchRow]) -> list[BenchRow]:
    """Fill ``ratios`` of every gpuperf row against the baselines of its (stage, method).

    Baseline labels are the baseline names; when one name occurs more than once for the same
    (stage, method) (e.g. parametrised), the pytest name is appended to keep them apart.
    Returns the same rows (modified in place) for chaining.
    """
    baselines: dict[tuple[str, str], list[BenchRow]] = {}
    for r in rows:
        if r.is_baseline and r.voxels_per_s is not None:
            baselines.setdefault((r.stage, r.method), []).append(r)
    for r in rows:
        r.ratios = {}
        if r.is_baseline or r.voxels_per_s is None:
            continue
        group = baselines.get((r.stage, r.method), [])
        names = [b.label for b in group]
        for b in group:
            label = b.label if names.count(b.label) == 1 else f"{b.label} [{b.name}]"
            r.ratios[label] = r.voxels_per_s / b.voxels_per_s
    return list(rows)


def build_rows(data: Mapping[str, Any]) -> list[BenchRow]:
    """Rows with ratios, sorted by stage, method, then gpuperf rows before baselines."""
    rows = compute_ratios(rows_from_json(data))
    return sorted(rows, key=lambda r: (r.stage, r.method, r.is_baseline, r.backend, r.name))


# -- formatting --------------------------------------------------------------------------------
def format_time(seconds: float) -> str:
    """``1.23 ms``-style rendering of a duration in seconds."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_rate(rate: float | None) -> str:
    """Voxels/s with an SI suffix (``1.2 M``)."""
    if rate is None or not math.isfinite(rate):
        return "n/a"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.3g} {suffix}"
    return f"{rate:.3g}"


def format_ratios(ratios: Mapping[str, float]) -> str:
    """``osipy ×12.3, svd_loop ×4,800`` (empty for none)."""
    return ", ".join(f"{k} ×{_ratio(v)}" for k, v in ratios.items())


def _ratio(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


COLUMNS = (
    "stage",
    "method",
    "backend",
    "device",
    "voxels",
    "median time",
    "voxels/s",
    "vs baselines",
)


def table_cells(row: BenchRow) -> list[str]:
    """The cells of one row, in :data:`COLUMNS` order."""
    backend = row.backend
    if row.is_baseline:
        version = f" {row.baseline_version}" if row.baseline_version else ""
        backend = f"baseline {row.baseline}{version} ({row.backend})"
    ratio = format_ratios(row.ratios)
    if row.problems:
        ratio = (ratio + "; " if ratio else "") + "; ".join(row.problems)
    return [
        row.stage,
        row.method if not row.variant else f"{row.method} [{row.variant}]",
        backend,
        row.device,
        "n/a" if row.voxels is None else f"{row.voxels:,}",
        format_time(row.median_s),
        format_rate(row.voxels_per_s),
        ratio,
    ]


def to_markdown(rows: Iterable[BenchRow]) -> str:
    """A GitHub-flavoured Markdown table of the rows."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in table_cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_rich(rows: Iterable[BenchRow], title: str | None = None):
    """A :class:`rich.table.Table` of the rows (for the terminal)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=None if title is None else escape(title))
    for c in COLUMNS:
        justify = "right" if c in ("voxels", "median time", "voxels/s") else "left"
        table.add_column(c, justify=justify)
    for r in rows:
        # cells are plain text: "[serial]" must not be read as rich markup
        table.add_row(*(escape(c) for c in table_cells(r)))
    return table


def to_json(rows: Iterable[BenchRow], meta: Mapping[str, Any] | None = None) -> str:
    """Machine-readable form: ``{"meta": {...}, "rows": [...]}`` (NaN written as null)."""
    from gpuperf.provenance import jsonable

    payload = {"meta": dict(meta or {}), "rows": [r.as_dict() for r in rows]}
    return json.dumps(jsonable(payload), indent=2, allow_nan=False)
