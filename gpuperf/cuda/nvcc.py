"""Offline ``nvcc`` builds of the kernels: PTX/cubin for a target architecture, no GPU needed.

Used by the tests and benchmarks to prove every kernel compiles for sm_80 (A100) and sm_90
(H100), that float32 instantiations contain no double-precision instruction (a stray ``0.5``
literal has been seen to make a fit kernel 14x slower), and to report registers and spills.

Templates are instantiated by appending one line per expression to the translation unit
(``static void* const gp_inst_0 = (void*)&lm_fit<float, MonoExp>;``): taking the address of a
``__global__`` template in host code makes nvcc emit its device code.
Outputs are cached under :func:`gpuperf.cuda.source.cache_dir` keyed by a hash of the source,
the kernel tree, the flags and the nvcc version, so repeated test runs are fast.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gpuperf.cuda.source import cache_dir, kernel_dir, kernel_tree_hash
from gpuperf.errors import GpuperfError

#: Architectures the project targets (A100, H100).
DEFAULT_ARCHS = ("sm_80", "sm_90")

_F64_RE = re.compile(r"\.f64\b")
_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS_RE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_REGS_RE = re.compile(r"Used (\d+) registers")


class NvccError(GpuperfError):
    """nvcc is missing or a kernel failed to compile (the message holds nvcc's output)."""


@lru_cache(maxsize=1)
def find_nvcc() -> str | None:
    """Path of ``nvcc``: ``$GPUPERF_NVCC``, then ``PATH``, then ``$CUDA_HOME/bin``,
    ``/usr/local/cuda/bin``; None when absent."""
    env = os.environ.get("GPUPERF_NVCC")
    if env and Path(env).is_file():
        return env
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


@lru_cache(maxsize=1)
def nvcc_version() -> str:
    """``nvcc --version`` text (part of the cache key)."""
    nvcc = _require_nvcc()
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


def _require_nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise NvccError("nvcc not found: set GPUPERF_NVCC or put the CUDA toolkit on PATH")
    return nvcc


def translation_unit(
    src: str | os.PathLike,
    instantiations: Sequence[str] = (),
    includes: Sequence[str] = (),
) -> str:
    """Source text to compile: ``includes`` lines, the kernel, then the instantiation lines.

    ``src`` is a path (absolute, or relative to :func:`~gpuperf.cuda.source.kernel_dir`) or the
    source text itself (anything containing a newline is taken as text).
    """
    if isinstance(src, str) and "\n" in src:
        body = src
    else:
        path = Path(src)
        if not path.is_absolute():
            path = kernel_dir() / path
        body = f'#include "{path.as_posix()}"\n'
    head = "".join(f'#include "{inc}"\n' for inc in includes)
    tail = "".join(
        f"static void* const gp_inst_{i} = (void*)&{expr};\n"
        for i, expr in enumerate(instantiations)
    )
    return head + body + tail


def _build(
    kind: str,
    src: str | os.PathLike,
    arch: str,
    defines: Mapping[str, object] | None,
    instantiations: Sequence[str],
    includes: Sequence[str],
    extra: Sequence[str],
) -> tuple[Path, str]:
    """Compile to ``kind`` ('ptx' | 'cubin'); returns (output path, ptxas/nvcc log)."""
    nvcc = _require_nvcc()
    tu = translation_unit(src, instantiations, includes)
    flags = [
        f"-{kind}",
        f"-arch={arch}",
        "-std=c++17",
        f"-I{kernel_dir()}",
        "-diag-suppress=177",  # the instantiation pointers are never referenced, by design
        *(f"-D{k}={v}" for k, v in sorted((defines or {}).items())),
        *extra,
    ]
    key = hashlib.sha256(
        "\0".join([tu, *flags, kernel_tree_hash(), nvcc_version()]).encode()
    ).hexdigest()[:32]
    out_dir = cache_dir("nvcc")
    out = out_dir / f"{key}.{kind}"
    log = out_dir / f"{key}.{kind}.log"
    if out.is_file() and log.is_file():
        return out, log.read_text()
    src_file = out_dir / f"{key}.{os.getpid()}.cu"
    tmp_out = out_dir / f"{key}.{os.getpid()}.{kind}"
    src_file.write_text(tu)
    try:
        proc = subprocess.run(
            [nvcc, *flags, "-o", str(tmp_out), str(src_file)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise NvccError(
                f"nvcc failed for {src} ({arch}, {', '.join(instantiations) or 'no templates'}):\n"
                + proc.stderr
                + proc.stdout
            )
        log.write_text(proc.stderr + proc.stdout)
        os.replace(tmp_out, out)  # atomic: concurrent test workers never see half a file
    finally:
        src_file.unlink(missing_ok=True)
        tmp_out.unlink(missing_ok=True)
    return out, log.read_text()


#: What :func:`compile_kernel` returns, by ``output``.
OUTPUTS = ("ptx", "cubin", "resources")


def compile_kernel(
    src: str | os.PathLike,
    arch: str = "sm_80",
    defines: Mapping[str, object] | None = None,
    instantiations: Sequence[str] = (),
    includes: Sequence[str] = (),
    *,
    output: str = "ptx",
) -> str | bytes | list[KernelResources]:
    """Compile a kernel file (or source text) for ``arch`` with nvcc (results cached).

    Parameters
    ----------
    src : str or path-like
        Kernel path (relative to the kernel folder, or absolute) or source text.
    arch : str
        e.g. ``"sm_80"``, ``"sm_90"``.
    defines : mapping, optional
        ``-DNAME=VALUE`` macros.
    instantiations : sequence of str
        Template kernels to emit, e.g. ``["lm_fit<float, MonoExp>"]``.
    includes : sequence of str
        Headers included before the kernel (e.g. the model headers), relative to the kernel
        folder.
    output : {'ptx', 'cubin', 'resources'}
        ``ptx``: the PTX text (str); ``cubin``: machine code for ``arch`` (bytes);
        ``resources``: registers, spills and stack per kernel (list of
        :class:`KernelResources`, from ``nvcc -cubin -Xptxas -v``).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    kind = "ptx" if output == "ptx" else "cubin"
    extra = () if kind == "ptx" else ("-Xptxas", "-v")
    out, log = _build(kind, src, arch, defines, instantiations, includes, extra)
    if output == "ptx":
        return out.read_text()
    if output == "cubin":
        return out.read_bytes()
    return parse_ptxas_log(log)


@dataclass(frozen=True)
class KernelResources:
    """ptxas report for one kernel entry point."""

    kernel: str  # demangled when c++filt is available
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int


def parse_ptxas_log(log: str) -> list[KernelResources]:
    """Parse ``-Xptxas -v`` output into one :class:`KernelResources` per entry function."""
    rows: list[KernelResources] = []
    current: dict | None = None
    for line in log.splitlines():
        m = _ENTRY_RE.search(line)
        if m:
            if current is not None and "registers" in current:
                rows.append(KernelResources(**current))
            current = {"kernel": demangle(m.group(1)), "arch": m.group(2)}
            current.update(stack_bytes=0, spill_stores=0, spill_loads=0)
            continue
        if current is None:
            continue
        m = _PROPS_RE.search(line)
        if m:
            current.update(
                stack_bytes=int(m.group(1)),
                spill_stores=int(m.group(2)),
                spill_loads=int(m.group(3)),
            )
        m = _REGS_RE.search(line)
        if m:
            current["registers"] = int(m.group(1))
    if current is not None and "registers" in current:
        rows.append(KernelResources(**current))
    return rows


def demangle(symbol: str) -> str:
    """C++ name of a mangled symbol via ``c++filt`` (the symbol itself when unavailable)."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return symbol
    proc = subprocess.run([cxxfilt, symbol], capture_output=True, text=True)
    return proc.stdout.strip() or symbol


def f64_lines(ptx: str) -> list[str]:
    """PTX instruction lines that use a double-precision (``.f64``) type.

    Comments and directives are ignored; register names such as ``%f64`` do not match.
    """
    hits = []
    for raw in ptx.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith("."):
            continue
        if _F64_RE.search(line):
            hits.append(line)
    return hits


def resource_table(archs: Sequence[str] = DEFAULT_ARCHS) -> list[KernelResources]:
    """Registers/spills of every catalogued kernel instantiation (see
    :mod:`gpuperf.cuda.catalog`) for each architecture; for benchmarks and the test log."""
    from gpuperf.cuda.catalog import kernel_catalog

    rows: list[KernelResources] = []
    for relpath, build in kernel_catalog().items():
        exprs = (*build.float32, *build.float64)
        for arch in archs:
            rows.extend(
                compile_kernel(
                    relpath, arch, build.defines, exprs, build.includes, output="resources"
                )
            )
    return rows


def format_resource_table(rows: Sequence[KernelResources]) -> str:
    """Plain-text table of :func:`resource_table` rows."""
    lines = [f"{'arch':6} {'regs':>5} {'spill st':>8} {'spill ld':>8} {'stack':>6}  kernel"]
    for r in rows:
        name = r.kernel.split("(")[0]
        lines.append(
            f"{r.arch:6} {r.registers:5d} {r.spill_stores:8d} {r.spill_loads:8d} "
            f"{r.stack_bytes:6d}  {name}"
        )
    return "\n".join(lines)
