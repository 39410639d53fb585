"""The ``extra_info`` convention shared by the benchmarks under ``bench/`` and the table builder.

See ``bench/conftest.py`` for the full description of the keys. Benchmarks call :func:`record`
(also available as the ``record`` fixture) and wrap GPU calls with :func:`synced`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Environment variable holding the benchmark size ("laptop" or "brain").
SIZES_ENV = "GPUPERF_BENCH_SIZE"
#: Keys every benchmark must put in ``benchmark.extra_info``.
REQUIRED_KEYS = ("stage", "method", "backend", "device", "voxels")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes for one ``--size`` setting.

    Attributes
    ----------
    name : str
        ``"laptop"`` or ``"brain"``.
    voxels : int
        Voxels for gpuperf's vectorised / GPU code (brain: a 2 mm whole-brain mask, ~655 000).
    baseline_voxels : int
        Voxels for voxel-by-voxel loop baselines (rates are compared, not totals).
    frames : int
        DSC time frames.
    plds : int
        ASL post-labelling delays for multi-PLD fits.
    """

    name: str
    voxels: int
    baseline_voxels: int
    frames: int = 60
    plds: int = 6


SIZES = {
    "laptop": Sizes("laptop", voxels=20_000, baseline_voxels=500),
    "brain": Sizes("brain", voxels=655_000, baseline_voxels=2_000),
}


def synced(backend: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so that the call returns only after the device finished its work."""

    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        backend.synchronize()
        return out

    return call


def record(
    benchmark: Any,
    *,
    stage: str,
    method: str,
    voxels: int,
    backend: Any = "numpy",
    device: str | None = None,
    baseline: str | None = None,
    baseline_version: str | None = None,
    size: str | None = None,
    **extra: Any,
) -> None:
    """Fill ``benchmark.extra_info`` following the convention above.

    Parameters
    ----------
    benchmark : pytest-benchmark fixture
    stage, method : str
        See the module docstring.
    voxels : int
        Voxels (independent fits) per call of the benchmarked function.
    backend : gpuperf Backend or str
        A :class:`gpuperf.backend.Backend` (its name and device are recorded) or a string
        such as ``"scipy"`` / ``"osipy"`` for baselines.
    device : str, optional
        Defaults to the GPU's name for a CuPy Backend, else the CPU's model and core count.
    baseline : str, optional
        The baseline's name; leave None for gpuperf's own code.
    baseline_version : str, optional
    size : str, optional
        Defaults to the session size (``GPUPERF_BENCH_SIZE``).
    **extra
        Further JSON-serialisable keys (``frames``, ``note``, ...).
    """
    if isinstance(backend, str):
        backend_name = backend
        device = device or _cpu_device_name()
    else:
        backend_name = backend.name
        # CPU rows name the processor (model, cores), whichever library ran on it
        device = device or (backend.device_name if backend.is_gpu else _cpu_device_name())
    info = benchmark.extra_info
    info.update(
        stage=str(stage),
        method=str(method),
        backend=backend_name,
        device=device,
        voxels=int(voxels),
        size=size or os.environ.get(SIZES_ENV, "laptop"),
    )
    if baseline is not None:
        info["baseline"] = str(baseline)
    if baseline_version is not None:
        info["baseline_version"] = str(baseline_version)
    for key, value in extra.items():
        info[key] = value.item() if isinstance(value, np.generic) else value


def _cpu_device_name() -> str:
    from gpuperf.benchmarks.machine import cpu_description

    return cpu_description()
