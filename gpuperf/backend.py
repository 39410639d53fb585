"""Compute backends: NumPy on the CPU, CuPy on an NVIDIA GPU.

Physics modules never import CuPy: they ask :func:`get_backend` for a :class:`Backend` and use
its ``xp`` namespace (``numpy`` or ``cupy``) plus the few helpers here. Voxel data are processed
in bounded chunks (:func:`chunk_slices`) so that a whole-brain series never has to fit in device
memory at once; every algorithm is per-voxel, so results do not depend on the chunk size.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from gpuperf.errors import GpuperfError, GPUUnavailableError

#: Devices accepted by every public function and CLI command.
DEVICES = ("auto", "cpu", "gpu")

#: Default host-memory budget for one chunk on the NumPy backend (bytes). Laptop friendly.
DEFAULT_CPU_BUDGET_BYTES = 512 * 2**20
#: Fraction of the free device memory a chunk may use on the CuPy backend.
GPU_BUDGET_FRACTION = 0.5
#: Host <-> device copies of at least this many bytes go through page-locked (pinned) host
#: memory on the CuPy backend (:meth:`Backend.asarray`, :meth:`Backend.to_host`); smaller ones
#: are latency-bound and take CuPy's plain path.
PINNED_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class Backend:
    """A compute backend.

    Attributes
    ----------
    name : {'numpy', 'cupy'}
    xp : module
        ``numpy`` or ``cupy``.
    device_name : str
        Human-readable device ("CPU (NumPy)" or the GPU's name), recorded in sidecars.
    """

    name: str
    xp: ModuleType
    device_name: str

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # pickled by name (a module does not pickle): a prepared run travels to the cohort's
        # report worker process, which gets the same backend back
        return get_backend, ("gpu" if self.is_gpu else "cpu",)

    def is_device_array(self, a: Any) -> bool:
        """Whether ``a`` is an array in this backend's device memory (always False on NumPy)."""
        return self.is_gpu and isinstance(a, self.xp.ndarray)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Move ``a`` to this backend (no copy when it is already there with that dtype).

        On CuPy a host array of at least :data:`PINNED_MIN_BYTES` is converted straight into a
        pinned buffer and copied from there (one host pass; the DMA reads page-locked memory).
        """
        if not self.is_gpu or self.is_device_array(a):
            return self.xp.asarray(a, dtype=dtype)
        host = np.asarray(a)
        dt = host.dtype if dtype is None else np.dtype(dtype)
        if host.size * dt.itemsize < PINNED_MIN_BYTES:
            return self.xp.asarray(host, dtype=dt)
        staged = self.pinned_empty(host.shape, dt)
        staged[...] = host  # the dtype conversion, if any, happens in this one pass
        out = self.xp.empty(host.shape, dtype=dt)
        out.set(staged)
        # the copy is asynchronous from pinned memory: finish it before the buffer is reused
        self.synchronize()
        return out

    def to_host(self, a: Any) -> np.ndarray:
        """Return ``a`` as a NumPy array on the host (C order for copies into pinned memory).

        On CuPy an array of at least :data:`PINNED_MIN_BYTES` comes down into a fresh pinned
        buffer (CuPy's pinned-memory pool; it returns there when the array is freed).
        """
        if self.is_gpu and not isinstance(a, np.ndarray):
            if a.nbytes < PINNED_MIN_BYTES:
                return a.get()
            out = self.pinned_empty(a.shape, a.dtype)
            a.get(out=out)
            return out
        return np.asarray(a)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised C-order host array in page-locked memory on CuPy (from its pinned
        pool), a plain NumPy array on the NumPy backend."""
        dt = np.dtype(dtype)
        if not self.is_gpu:
            return np.empty(shape, dtype=dt)
        count = int(np.prod(shape, dtype=np.int64))
        mem = self.xp.cuda.alloc_pinned_memory(max(count * dt.itemsize, 1))
        return np.frombuffer(mem, dt, count).reshape(shape)

    def free_memory_bytes(self) -> int:
        """Free memory a chunk may draw on: device memory for CuPy, a fixed budget for NumPy."""
        if self.is_gpu:
            free, _total = self.xp.cuda.Device().mem_info
            return int(free)
        return DEFAULT_CPU_BUDGET_BYTES

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on the CPU); needed for honest timings."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def as_dict(self) -> dict[str, str]:
        return {"Backend": self.name, "Device": self.device_name}


NUMPY_BACKEND = Backend("numpy", np, "CPU (NumPy)")


#: A one-line kernel that proves NVRTC compiles and the device runs what it compiled.
_PROBE_KERNEL = 'extern "C" __global__ void gpuperf_probe(int* out) { out[threadIdx.x] = 42; }'

#: What a failing probe step most likely lacks (matched in the error text, lower case).
_MISSING = (
    ("nvrtc", "NVRTC (CUDA's runtime compiler) is missing: install cupy-cuda13x[ctk] "
              "(or cupy-cuda12x[ctk]), or a CUDA toolkit"),
    ("cublas", "cuBLAS is missing: install cupy-cuda13x[ctk] (or cupy-cuda12x[ctk])"),
    ("cufft", "cuFFT is missing: install cupy-cuda13x[ctk] (or cupy-cuda12x[ctk])"),
)  # fmt: skip


def _probe(cupy: Any) -> None:
    """Compile and launch a one-line kernel, run a tiny matmul and FFT; raise on any failure."""
    out = cupy.zeros(32, dtype=cupy.int32)
    try:
        kernel = cupy.RawKernel(_PROBE_KERNEL, "gpuperf_probe")
        kernel((1,), (32,), (out,))
    except Exception as exc:
        raise RuntimeError(f"kernel compile/launch (NVRTC) failed: {exc}") from exc
    if int((out == 42).sum()) != 32:
        raise RuntimeError("the probe kernel ran but wrote wrong values")
    m = np.arange(16, dtype=np.float32).reshape(4, 4)
    try:
        a = cupy.asarray(m)
        ok = float((a @ a).sum()) == float((m @ m).sum())
    except Exception as exc:
        raise RuntimeError(f"matmul (cuBLAS) failed: {exc}") from exc
    if not ok:
        raise RuntimeError("matmul (cuBLAS) gave a wrong result")
    try:
        spec = cupy.fft.rfft(cupy.ones(8, dtype=cupy.float32))
        ok = abs(float(spec[0].real) - 8.0) < 1e-5
    except Exception as exc:
        raise RuntimeError(f"FFT (cuFFT) failed: {exc}") from exc
    if not ok:
        raise RuntimeError("FFT (cuFFT) gave a wrong result")


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """Whether a CUDA device is usable through CuPy: it is there, NVRTC compiles and launches
    a kernel, and cuBLAS and cuFFT run (a tiny matmul and FFT).

    Returns
    -------
    (usable, detail) : (bool, str)
        ``detail`` is the GPU name and free memory when usable, else the reason it is not,
        naming the missing piece (e.g. ``cupy-cuda13x[ctk]`` for NVRTC).
        Setting ``GPUPERF_DISABLE_GPU=1`` reports the GPU as unusable (for tests and CI).
    """
    if os.environ.get("GPUPERF_DISABLE_GPU", "") not in ("", "0"):
        return False, "disabled by GPUPERF_DISABLE_GPU"
    try:
        import cupy
    except ImportError as exc:  # the common case on a laptop
        return False, f"CuPy is not installed ({exc.msg}); install gpuperf[cuda12] or [cuda13]"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "CuPy found no CUDA device"
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        free, total = cupy.cuda.Device(0).mem_info
        cc = f"{props['major']}.{props['minor']}"
    except Exception as exc:  # driver missing, no device, broken install: all mean "no GPU"
        return False, f"CUDA device unusable: {type(exc).__name__}: {exc}"
    try:
        _probe(cupy)
    except Exception as exc:
        text = str(exc.__cause__ or exc).lower()
        hint = next((h for key, h in _MISSING if key in text), None)
        detail = f"{name} found, but {exc}"
        return False, detail + (f" -- {hint}" if hint else "")
    return True, f"{name} (compute {cc}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"


def get_backend(device: str = "auto") -> Backend:
    """Return the backend for ``device``.

    Parameters
    ----------
    device : {'auto', 'cpu', 'gpu'}
        ``auto`` takes the GPU when one is usable and NumPy otherwise; ``gpu`` without a usable
        GPU raises :class:`GPUUnavailableError` (never a silent fallback); ``cpu`` is NumPy.
    """
    if device not in DEVICES:
        raise GpuperfError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cpu":
        return NUMPY_BACKEND
    usable, detail = gpu_status()
    if not usable:
        if device == "gpu":
            raise GPUUnavailableError(f"--device gpu asked for, but no GPU is usable: {detail}")
        return NUMPY_BACKEND
    import cupy

    return Backend("cupy", cupy, detail.split(" (compute")[0])


def chunk_slices(
    n_voxels: int,
    bytes_per_voxel: int,
    memory_budget: int | None = None,
    backend: Backend | None = None,
    min_voxels: int = 1,
) -> list[slice]:
    """Split ``n_voxels`` into contiguous chunks that fit a memory budget.

    Parameters
    ----------
    n_voxels : int
        Number of voxels to process.
    bytes_per_voxel : int
        Peak working memory one voxel needs (inputs, temporaries and outputs), in bytes.
    memory_budget : int, optional
        Bytes a chunk may use. Default: half the free GPU memory on CuPy,
        :data:`DEFAULT_CPU_BUDGET_BYTES` on NumPy.
    backend : Backend, optional
        Used for the automatic budget (NumPy when omitted).
    min_voxels : int
        Smallest chunk (the budget is exceeded rather than go below it). Algorithms built on
        BLAS use it: OpenBLAS takes other code paths, with other rounding, for tiny matrices,
        while from a few hundred rows up a row's result does not depend on the chunk.

    Returns
    -------
    list of slice
        Covering ``range(n_voxels)`` in order; at least one voxel per chunk.
    """
    if n_voxels <= 0:
        return []
    if memory_budget is None:
        backend = backend or NUMPY_BACKEND
        free = backend.free_memory_bytes()
        memory_budget = int(free * GPU_BUDGET_FRACTION) if backend.is_gpu else free
    if memory_budget <= 0:
        raise GpuperfError(f"memory budget must be positive; got {memory_budget} bytes")
    per_chunk = max(1, int(min_voxels), int(memory_budget // max(1, int(bytes_per_voxel))))
    slices = [slice(s, min(s + per_chunk, n_voxels)) for s in range(0, n_voxels, per_chunk)]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start < min_voxels:
        slices[-2:] = [slice(slices[-2].start, n_voxels)]  # no chunk below the floor
    return slices
