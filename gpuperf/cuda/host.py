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
>>> lib = build_host_library(sources=["my/saxpy.cu"],
...                          launchers=[HostLauncher("saxpy_f32", "saxpy<float>")])
>>> lib.launch("saxpy_f32", grid=4, block=256, n_threads=1, strict=True,
...            args=(np.int64(n), np.float32(2.0), x, y))
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

    The launcher takes its arguments as CUDA's ``cuLaunchKernel`` does (an array of pointers to
    the values, each read with the width of the kernel's own parameter type), and a companion
    ``<name>__signature`` returns the parameter types as the compiler sees them, so the
    Python side needs no hand-written parameter list (:mod:`gpuperf.cuda.signature`).

    Parameters
    ----------
    name : str
        Exported C symbol, e.g. ``"lm_fit_f32_MonoExp"``.
    kernel : str
        Kernel expression, e.g. ``"lm_fit<float, MonoExp>"``.
    params : tuple of (C type, name), optional
        Expected parameters; when given, the library refuses to load if the compiled types
        differ (a check only: launches use the compiled signature).
    """

    name: str
    kernel: str
    params: tuple[tuple[str, str], ...] | None = None

    def cpp(self) -> str:
        return (
            f'extern "C" void {self.name}(unsigned int gx, unsigned int gy, unsigned int gz, '
            "unsigned int bx, unsigned int by, unsigned int bz, int gp_threads, void** args) {\n"
            f"    gp_host_launch_packed(dim3(gx, gy, gz), dim3(bx, by, bz), gp_threads, "
            f"&{self.kernel}, args);\n}}\n"
            f'extern "C" const char* {self.name}__signature(void) {{\n'
            f"    return gp_signature(&{self.kernel});\n}}\n"
        )


def _stored_names(expr: str, types: Sequence[str]) -> list[str]:
    """Parameter names from the stored signature table (``arg<i>`` for an expression it does
    not know); a table whose types differ from the compiled ones is stale: refuse."""
    from gpuperf.cuda.signature import SignatureError, signature

    try:
        sig = signature(expr)
    except SignatureError:
        return [f"arg{i}" for i in range(len(types))]
    stored = [p.ctype for p in sig.params]
    if stored != list(types):
        raise HostBuildError(
            f"stored signature of {expr} {stored} differs from the compiled {list(types)}: "
            "run python bench/update_kernel_signatures.py"
        )
    return list(sig.names)


def dim3_of(v: int | Sequence[int], what: str) -> tuple[int, int, int]:
    """``(x, y, z)`` of a grid or block given as an int or a 1-3 tuple."""
    t = (int(v),) if np.isscalar(v) else tuple(int(x) for x in v)  # type: ignore[union-attr]
    if not 1 <= len(t) <= 3 or any(x < 0 for x in t):
        raise HostBuildError(f"{what} must be 1 to 3 non-negative integers; got {v!r}")
    return (t + (1, 1))[:3]  # type: ignore[return-value]


class HostLibrary:
    """A loaded host build; :meth:`launch` runs a kernel over a grid as CUDA would.

    Attributes
    ----------
    cdll : ctypes.CDLL
        The loaded library.
    path : Path
        The cached shared object.
    """

    def __init__(self, path: Path, launchers: Sequence[HostLauncher]) -> None:
        from gpuperf.cuda.signature import KernelSignature, Param, normalize_ctype

        self.path = path
        self.cdll = ctypes.CDLL(str(path))
        self._signatures: dict[str, KernelSignature] = {}
        for ln in launchers:
            fn = getattr(self.cdll, ln.name)
            fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_int, ctypes.c_void_p]
            fn.restype = None
            sig_fn = getattr(self.cdll, ln.name + "__signature")
            sig_fn.restype = ctypes.c_char_p
            sig_fn.argtypes = []
            types = [t for t in sig_fn().decode().split(";") if t]
            if ln.params is not None:
                declared = [normalize_ctype(t) for t, _ in ln.params]
                if declared != types:
                    raise HostBuildError(
                        f"{ln.name}: declared parameters {declared} differ from the compiled "
                        f"{ln.kernel}: {types}"
                    )
                names = [n for _, n in ln.params]
            else:
                names = _stored_names(ln.kernel, types)
            self._signatures[ln.name] = KernelSignature(
                ln.kernel, tuple(Param(n, t) for n, t in zip(names, types, strict=True))
            )

    def __getattr__(self, name: str) -> Any:
        if name == "cdll":  # not yet set (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.cdll, name)

    def signature_types(self, name: str) -> tuple[str, ...]:
        """Compiled parameter types of launcher ``name`` (``("const float*", "int", ...)``)."""
        return tuple(p.ctype for p in self._signatures[name].params)

    def launch(
        self,
        name: str,
        grid: int | Sequence[int],
        block: int | Sequence[int],
        args: Sequence[Any],
        n_threads: int = 1,
        strict: bool = False,
    ) -> None:
        """Run launcher ``name`` over ``grid`` blocks of ``block`` threads (ints or 1-3 tuples).

        Arrays must be C-contiguous NumPy arrays of the pointee's dtype (passed by address and
        written in place); None is a null pointer. Scalars must be NumPy scalars of the
        parameter's dtype; with ``strict=False`` Python numbers are converted as well (with
        ``strict=True``, as gpuperf's own launches run, they are refused: CuPy would pass them
        with the wrong width). ``n_threads`` host threads share the blocks.
        """
        from gpuperf.cuda.signature import SignatureError, check_argument

        sig = self._signatures[name]
        if len(args) != len(sig.params):
            raise HostBuildError(f"{name} takes {len(sig.params)} arguments, got {len(args)}")
        keep: list[Any] = []
        ptrs: list[int] = []
        for p, a in zip(sig.params, args, strict=True):
            if p.is_pointer:
                if a is not None and not isinstance(a, np.ndarray):
                    raise HostBuildError(f"{name}: argument {p.name} must be a NumPy array")
                if a is not None and not a.flags.c_contiguous:
                    raise HostBuildError(f"{name}: argument {p.name} must be a C-contiguous array")
                if a is not None and not p.is_const and not a.flags.writeable:
                    raise HostBuildError(f"{name}: output {p.name} is read-only")
            elif not isinstance(a, np.generic) and not strict:
                a = np.asarray(a, dtype=p.dtype)[()]
            try:
                check_argument(sig.expr, p, a)
            except SignatureError as exc:
                raise HostBuildError(f"{name}: {exc}") from None
            if p.is_pointer:
                slot: Any = ctypes.c_void_p(None if a is None else a.ctypes.data)
                ptrs.append(ctypes.addressof(slot))
            else:
                slot = np.array(a)  # a private, aligned copy of the value
                ptrs.append(slot.ctypes.data)
            keep.append((a, slot))
        packed = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        g, b = dim3_of(grid, "grid"), dim3_of(block, "block")
        if 0 in g or 0 in b:
            raise HostBuildError(
                f"{name}: empty launch (grid {g}, block {b}); CUDA refuses it, guard the caller"
            )
        getattr(self.cdll, name)(*g, *b, int(n_threads), packed)


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
    extra_flags: Sequence[str] = (),
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
    extra_flags : sequence of str
        Compiler flags after :data:`HOST_FLAGS` (``-ffp-contract=fast -mfma`` lets g++ fuse
        multiply-adds as a GPU does: the emulated device's default, see ``fma_flags``).

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
        *extra_flags,
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


@lru_cache(maxsize=1)
def fma_flags() -> tuple[str, ...]:
    """g++ flags that fuse ``a*b + c`` into FMAs like nvcc/NVRTC's default ``--fmad=true``;
    empty when this CPU has no FMA unit (the build then rounds every operation)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            has_fma = any(line.startswith("flags") and " fma " in f"{line} " for line in fh)
    except OSError:
        has_fma = False
    return ("-ffp-contract=fast", "-mfma") if has_fma else ()
