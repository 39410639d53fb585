"""Provenance recorded in every JSON sidecar gpuperf writes."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

import numpy as np

from gpuperf._version import __version__
from gpuperf.backend import Backend


def jsonable(value: Any, strict: bool = False) -> Any:
    """Convert NumPy scalars/arrays, paths and tuples to plain JSON types.

    With ``strict``, anything else JSON cannot hold (an object, a type) becomes its ``str``.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, strict) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), strict)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PathLike):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if strict and not isinstance(value, (str, int, float, bool, type(None))):
        return str(value)
    return value


def provenance(
    backend: Backend,
    parameters: Mapping[str, Any] | None = None,
    elapsed_s: float | None = None,
    sources: Iterable[str | PathLike] = (),
) -> dict[str, Any]:
    """The provenance block shared by all sidecars of one run."""
    return {
        "SoftwareName": "gpuperf",
        "SoftwareVersion": __version__,
        "Backend": backend.name,
        "Device": backend.device_name,
        "ElapsedSeconds": None if elapsed_s is None else round(float(elapsed_s), 4),
        "Parameters": jsonable(dict(parameters or {})),
        "Sources": [str(s) for s in sources],
        "DateTime": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "Python": sys.version.split()[0],
        "NumPy": np.__version__,
        "Platform": platform.platform(terse=True),
    }
