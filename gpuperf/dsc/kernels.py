"""Access to the DSC CUDA kernels: the CuPy module (GPU) and the host C++ build (tests).

Kernel source: ``kernels/dsc/osvd_select.cu`` (entry point) and ``kernels/dsc/osvd_select.cuh``
(per-voxel math). Physics modules call these helpers and never import CuPy themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OSVD_FILE = "dsc/osvd_select.cu"


def _ctype(dtype: Any) -> str:
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]


def osvd_expression(dtype: Any) -> str:
    """``osvd_select<float>`` or ``osvd_select<double>``."""
    return f"osvd_select<{_ctype(dtype)}>"


def osvd_signature(dtype: Any) -> Any:
    """Compiled signature of ``osvd_select<T>``: the one source of its launch arguments."""
    from gpuperf.cuda.signature import signature

    return signature(osvd_expression(dtype))


def osvd_kernel(dtype: Any) -> Any:
    """The ``osvd_select<float|double>`` CuPy kernel (compiled once per device)."""
    from gpuperf.cuda.source import get_module

    expr = f"osvd_select<{_ctype(dtype)}>"
    module = get_module("dsc/osvd_select", f'#include "{OSVD_FILE}"\n', [expr])
    return module.get_function(expr)


def osvd_host_library(dtype: Any) -> tuple[Any, str]:
    """Host C++ build of the same kernel source (for parity tests on machines without a GPU).

    Returns
    -------
    (library, launcher name)
    """
    from gpuperf.cuda.host import HostLauncher, build_host_library

    ct = _ctype(dtype)
    name = f"osvd_select_{'f32' if ct == 'float' else 'f64'}"
    launcher = HostLauncher(name, osvd_expression(dtype))
    return build_host_library(sources=[OSVD_FILE], launchers=[launcher]), name
