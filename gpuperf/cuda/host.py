"""Build CUDA kernel *source* as host C++ (g++) and call it through ctypes.

CI has no GPU, yet the kernels must be tested: ``kernels/host_shim.h`` turns ``__global__``,
``__device__`` and ``__host__`` into plain C++ and provides thread-local ``threadIdx``,
``blockIdx``, ``blockDim`` and ``gridDim``; :func:`build_host_library` compiles the kernel file
plus one ``extern "C"`` launcher per kernel instantiation, and the launcher loops over the grid
and the block exactly as a CUDA launch would. Tests then compare this build of the very kernel
code with its NumPy twin.

Flags: ``g++ -O2 -std=c++17 -shared -fPIC -ffp-contract=off -pthread``. ``-ffp-contract=off``
stops g++ fusing ``a*b + c`` into FMAs, so float arithmetic rounds operation by operation as
NumPy's does. Libraries are cached under :func:`gpuperf.cuda.source.cache_dir` keyed by a hash
of the translation unit, the kernel tree, the flags and the compiler version; a second build
of the same code (also in a new process) only loads the ``.so``.

Example
-------
>>> launcher = HostLauncher(
...     "saxpy_f32", "saxpy<float>",
...     (("long long", "n"), ("float", "a"), ("const float*", "x"), ("float*", "y")))
>>> lib = build_host_library(sources=["my/saxpy.cu"], launchers=[launcher])
>>> lib.launch("saxpy_f32", grid=4, block=256, n_threads=1, args=(n, 2.0, x, y))
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.cuda.source import cache_dir, kernel_dir, kernel_tree_hash
from gpuperf.errors import GpuperfError

#: Compiler flags of every host build (see the module docstring for -ffp-contract=off).
HOST_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-pthread")

_LIBS: dict[str, HostLibrary] = {}
_LOCK = threading.Lock()


class HostBuildError(GpuperfError):
    """g++ is missing or the kernel source did not compile as host C++."""


@dataclass(frozen=True)
class HostLauncher:
    """An ``extern "C"`` entry point that launches one kernel instantiation on the CPU.

    Parameters
    ----------
    name : str
        Exported C symbol, e.g. ``"lm_fit_f32_MonoExp"``.
    kernel : str
        Kernel expression, e.g. ``"lm_fit<float, MonoExp>"``.
    params : tuple of (C type, name)
        The kernel's parameters in order, e.g. ``(("const float*", "y"), ("int", "n"))``.
        Pointers are passed as NumPy arrays (or None for a null pointer).
    """

    name: str
    kernel: str
    params: tuple[tuple[str, str], ...]

    def cpp(self) -> str:
        decl = ", ".join(f"{t} {n}" for t, n in self.params)
        names = ", ".join(n for _, n in self.params)
        sep = ", " if self.params else ""
        return (
            f'extern "C" void {self.name}(unsigned int gp_grid, unsigned int gp_block, '
            f"int gp_threads{sep}{decl}) {{\n"
            f"    gp_host_launch(dim3(gp_grid), dim3(gp_block), gp_threads, &{self.kernel}"
            f"{sep}{names});\n}}\n"
        )


_SCALARS: dict[str, Any] = {
    "int": ctypes.c_int,
    "unsigned int": ctypes.c_uint,
    "unsigned": ctypes.c_uint,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "bool": ctypes.c_bool,
}


def ctype_of(c_type: str) -> Any:
    """ctypes type for a C parameter type (every pointer is ``c_void_p``)."""
    t = " ".join(c_type.replace("const", " ").split())
    if "*" in t:
        return ctypes.c_void_p
    if t not in _SCALARS:
        raise HostBuildError(f"unsupported launcher parameter type {c_type!r}")
    return _SCALARS[t]


class HostLibrary:
    """A loaded host build; :meth:`launch` runs a kernel over a 1-D grid.

    Attributes
    ----------
    cdll : ctypes.CDLL
        The loaded library; other attributes are looked up on it, so the launchers can also be
        called directly as ``lib.<name>(grid, block, n_threads, *args)``.
    path : Path
        The cached shared object.
    """

    def __init__(self, path: Path, launchers: Sequence[HostLauncher]) -> None:
        self.path = path
        self.cdll = ctypes.CDLL(str(path))
        self._launchers = {ln.name: ln for ln in launchers}
        for ln in launchers:
            fn = getattr(self.cdll, ln.name)
            fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int] + [
                ctype_of(t) for t, _ in ln.params
            ]
            fn.restype = None

    def __getattr__(self, name: str) -> Any:
        if name == "cdll":  # not yet set (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.cdll, name)

    def launch(
        self, name: str, grid: int, block: int, args: Sequence[Any], n_threads: int = 1
    ) -> None:
        """Run launcher ``name`` over ``grid`` blocks of ``block`` threads.

        NumPy arrays must be C-contiguous (they are passed by address and written in place);
        None is a null pointer. ``n_threads`` host threads share the blocks.
        """
        ln = self._launchers[name]
        if len(args) != len(ln.params):
            raise HostBuildError(f"{name} takes {len(ln.params)} arguments, got {len(args)}")
        keep: list[Any] = []
        cargs: list[Any] = []
        for (c_type, pname), a in zip(ln.params, args, strict=True):
            if "*" in c_type:
                if a is None:
                    cargs.append(None)
                    continue
                if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
                    raise HostBuildError(f"{name}: argument {pname} must be a C-contiguous array")
                if "const" not in c_type and not a.flags.writeable:
                    raise HostBuildError(f"{name}: output {pname} is read-only")
                keep.append(a)
                cargs.append(a.ctypes.data)
            else:
                cargs.append(a)
        getattr(self.cdll, name)(int(grid), int(block), int(n_threads), *cargs)


@lru_cache(maxsize=1)
def find_cxx() -> str | None:
    """Host C++ compiler: ``$CXX``, else ``g++`` on PATH; None when absent."""
    env = os.environ.get("CXX")
    if env and shutil.which(env):
        return shutil.which(env)
    return shutil.which("g++")


@lru_cache(maxsize=1)
def _cxx_version() -> str:
    cxx = find_cxx()
    if cxx is None:
        return ""
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def build_host_library(
    code: str | None = None,
    *,
    sources: Sequence[str | os.PathLike] = (),
    launchers: Sequence[HostLauncher] = (),
    defines: Mapping[str, object] | None = None,
    include_dirs: Sequence[str | os.PathLike] = (),
) -> HostLibrary:
    """Compile kernel source as a host shared library and load it.

    Parameters
    ----------
    code : str, optional
        Extra source text placed after the included ``sources`` (e.g. model headers to include
        or a small test kernel).
    sources : sequence of path-like
        Kernel files (relative to the kernel folder, or absolute), ``#include``-d in order.
    launchers : sequence of HostLauncher
        ``extern "C"`` entry points to generate, one per kernel instantiation.
    defines : mapping, optional
        ``-DNAME=VALUE`` macros.
    include_dirs : sequence of path-like
        Extra ``-I`` folders (the kernel folder is always on the path).

    Returns
    -------
    HostLibrary
    """
    cxx = find_cxx()
    if cxx is None:
        raise HostBuildError("no host C++ compiler (g++) found: install g++ or set CXX")
    parts = ['#include "common.cuh"\n']
    for src in sources:
        path = Path(src)
        if not path.is_absolute():
            path = kernel_dir() / path
        parts.append(f'#include "{path.as_posix()}"\n')
    if code:
        parts.append(code + "\n")
    parts.extend(ln.cpp() for ln in launchers)
    tu = "".join(parts)
    flags = [
        *HOST_FLAGS,
        f"-I{kernel_dir()}",
        *(f"-I{Path(d)}" for d in include_dirs),
        *(f"-D{k}={v}" for k, v in sorted((defines or {}).items())),
    ]
    key = hashlib.sha256(
        "\0".join([tu, *flags, kernel_tree_hash(), _cxx_version()]).encode()
    ).hexdigest()[:32]
    with _LOCK:
        if key in _LIBS:
            return _LIBS[key]
        out_dir = cache_dir("host")
        out = out_dir / f"{key}.so"
        if not out.is_file():
            src_file = out_dir / f"{key}.{os.getpid()}.cpp"
            tmp = out_dir / f"{key}.{os.getpid()}.so"
            src_file.write_text(tu)
            try:
                proc = subprocess.run(
                    [cxx, *flags, "-x", "c++", str(src_file), "-o", str(tmp)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    raise HostBuildError(
                        "host build of kernel source failed:\n" + proc.stderr + proc.stdout
                    )
                os.replace(tmp, out)  # atomic for concurrent builders
            finally:
                src_file.unlink(missing_ok=True)
                tmp.unlink(missing_ok=True)
        lib = HostLibrary(out, launchers)
        _LIBS[key] = lib
        return lib
