"""Kernel sources and the lazily built, per-device cache of CuPy modules.

CUDA code lives in real ``.cu``/``.cuh`` files under the top-level ``kernels/`` folder, shipped
as the package data ``gpuperf.kernels`` (cuCIM style). Kernels include each other relative to
that folder (``#include "common.cuh"``, ``#include "models/monoexp.cuh"``).

This module and :mod:`gpuperf.backend` are the only places that import CuPy, and only inside
:func:`get_module`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from gpuperf.errors import GpuperfError

#: Suffixes that make up the kernel tree (hashed into every cache key).
KERNEL_SUFFIXES = (".cu", ".cuh", ".h")

_MODULES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def kernel_dir() -> Path:
    """Folder holding the CUDA sources (contains ``common.cuh``).

    The installed package data ``gpuperf.kernels`` when present, else ``<repo>/kernels`` (an
    editable install or a plain checkout).
    """
    candidates: list[Path] = []
    try:
        # `kernels/` has no __init__.py: gpuperf.kernels is a namespace package, for which
        # importlib.resources.files() returns a MultiplexedPath whose str() is not a path;
        # the spec's search locations are plain folders.
        spec = importlib.util.find_spec("gpuperf.kernels")
        if spec is not None and spec.submodule_search_locations:
            candidates.extend(Path(p) for p in spec.submodule_search_locations)
        elif spec is not None:
            candidates.append(Path(str(resources.files("gpuperf.kernels"))))
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "kernels")
    for path in candidates:
        if (path / "common.cuh").is_file():
            return path
    raise GpuperfError(
        "CUDA kernel sources not found (looked for common.cuh in "
        + ", ".join(str(p) for p in candidates)
        + "); reinstall gpuperf"
    )


def read_kernel(relpath: str | os.PathLike) -> str:
    """Text of a kernel file; ``relpath`` is relative to :func:`kernel_dir` (``fit/lm_fit.cu``)."""
    path = kernel_dir() / Path(relpath)
    if not path.is_file():
        raise GpuperfError(f"kernel source {relpath} not found under {kernel_dir()}")
    return path.read_text(encoding="utf-8")


_TREE_HASH: dict[Path, tuple[tuple, str]] = {}


def kernel_tree_hash() -> str:
    """SHA-256 over every kernel source file (path and content).

    Part of every compile-cache key: a header edit must invalidate kernels that include it,
    which hashing the top-level source alone would miss.
    """
    root = kernel_dir()
    paths = sorted(p for p in root.rglob("*") if p.suffix in KERNEL_SUFFIXES)
    # called on every launch path: re-read the sources only when a file's stat changed
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    cached = _TREE_HASH.get(root)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    _TREE_HASH[root] = (stamp, h.hexdigest())
    return _TREE_HASH[root][1]


def cache_dir(kind: str) -> Path:
    """Writable folder for build products of ``kind`` (``host``, ``nvcc``).

    ``$GPUPERF_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gpuperf`` (or ``~/.cache/gpuperf``),
    falling back to the system temporary folder when that is not writable.
    """
    base = os.environ.get("GPUPERF_CACHE_DIR")
    roots = [Path(base)] if base else []
    xdg = os.environ.get("XDG_CACHE_HOME")
    roots.append((Path(xdg) if xdg else Path.home() / ".cache") / "gpuperf")
    roots.append(
        Path(tempfile.gettempdir()) / f"gpuperf-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    for root in roots:
        path = root / kind
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return path
        except OSError:
            continue
    raise GpuperfError(f"no writable cache folder for {kind} builds (tried {roots})")


def get_module(
    code_key: str,
    source: str,
    name_expressions: Sequence[str],
    options: Sequence[str] = (),
) -> Any:
    """A compiled ``cupy.RawModule``, built on first use and cached per device.

    Parameters
    ----------
    code_key : str
        Short name of the source (e.g. ``"fit/lm_fit"``), part of the cache key.
    source : str
        Complete CUDA translation unit (typically ``#include`` lines plus :func:`read_kernel`
        text); ``-I<kernel_dir>`` is added, so it may include any kernel header.
    name_expressions : sequence of str
        Template instantiations to compile, e.g. ``["lm_fit<float, MonoExp>"]``; fetch them with
        ``module.get_function(expr)``.
    options : sequence of str
        Extra NVRTC options.

    Returns
    -------
    cupy.RawModule
    """
    import cupy  # lazily: the NumPy backend must work without CuPy

    device_id = cupy.cuda.runtime.getDevice()
    tree = kernel_tree_hash()
    key = (device_id, code_key, source, tuple(name_expressions), tuple(options), tree)
    with _LOCK:
        module = _MODULES.get(key)
        if module is None:
            # CuPy's on-disk cache hashes the source text and options but not included headers:
            # the tree hash as a macro makes a header edit a new cache entry.
            opts = (
                "--std=c++17",
                f"-I{kernel_dir()}",
                f"-DGPUPERF_KERNEL_TREE=0x{tree[:15]}",
                *options,
            )
            module = cupy.RawModule(
                code=source, options=opts, name_expressions=list(name_expressions)
            )
            module.compile()
            _MODULES[key] = module
    return module
