"""A CuPy test double: the part of CuPy gpuperf uses, on the CPU, as strict as CuPy.

Installed as ``sys.modules["cupy"]`` by the ``emulated_gpu`` fixture (tests/conftest.py), it lets
CI run every CuPy code path without a GPU:

- :class:`ndarray` wraps a private NumPy array (the "device memory"). Implicit conversion to the
  host is refused as CuPy refuses it: ``np.asarray(a)``, ``np.<func>(a)`` and mixing with NumPy
  arrays (``a + np_array``) raise ``TypeError``; ``a.get()``/``cupy.asnumpy(a)`` are the way
  back, and ``get()`` keeps an F-ordered array F-ordered, as CuPy does. Reductions and integer
  indexing give 0-d arrays, not host scalars.
- ``cupy.<func>`` refuses NumPy arrays except in the upload functions (``asarray``, ``array``),
  which copy (device memory is never the caller's host buffer).
- Pinned host memory: ``cupy.cuda.alloc_pinned_memory(nbytes)`` gives a buffer for
  ``numpy.frombuffer``; ``ndarray.set(host)`` and ``ndarray.get(out=host)`` check what CuPy
  checks (a NumPy array of the same dtype and shape; a contiguous ``out``) and record whether
  the host side lies in pinned memory (``STATE.pinned_transfers``).
- :class:`RawModule`/:class:`RawKernel` build the CUDA source with g++ (gpuperf.cuda.host; FMA
  contraction on unless ``--fmad=false``, as NVRTC) and, on each launch, check the grid and block
  tuples (1-3 positive ints, at most 1024 threads a block) and every argument's count, dtype,
  width and contiguity against the kernel's *compiled* signature before running the host build.
  A Python ``int`` is passed by CuPy as 8 bytes and a ``float`` as a double, so they only fit
  ``long long``/``double`` parameters; anything else is an error here, as it is a misread there.

Settings for tests: :data:`STATE` (free/total device memory, whether NVRTC is "installed").
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

__version__ = "13.0.0+gpuperf-emulated"

STATE = SimpleNamespace(
    free_bytes=2 * 2**30,
    total_bytes=4 * 2**30,
    nvrtc=True,
    launches=[],  # (expression, grid, block) of every kernel launch
    uploads=[],  # (shape, nbytes) of every host -> device copy (cupy.asarray/array of NumPy)
    downloads=[],  # (shape, nbytes) of every device -> host copy (.get(), cupy.asnumpy)
    pinned_allocs=[],  # nbytes of every cupy.cuda.alloc_pinned_memory
    # ("up" | "down", shape, nbytes) of every copy whose host side is pinned memory
    pinned_transfers=[],
)

_HOST_MSG = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
    "NumPy array explicitly."
)


def _unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")


def _unwrap(x: Any, upload: bool = False) -> Any:
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        if upload:
            return x
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, upload) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, upload) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.dtype,)):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _call(fn: Any, args: tuple, kw: dict, upload: bool = False) -> Any:
    a = _unwrap(args, upload)
    k = _unwrap(kw, upload)
    with np.errstate(all="ignore"):  # CuPy never warns on inf/nan arithmetic
        return _wrap(fn(*a, **k))


# -- arrays --------------------------------------------------------------------------------------
_METHODS = {
    "astype", "reshape", "ravel", "flatten", "copy", "transpose", "swapaxes", "squeeze", "sum",
    "mean", "max", "min", "argmax", "argmin", "any", "all", "cumsum", "prod", "std", "var",
    "clip", "nonzero", "take", "fill", "item", "tolist", "view", "conj", "dot", "round",
    "repeat", "argsort", "sort",
}  # fmt: skip


class ndarray:  # noqa: N801  (CuPy's name)
    """A device array of the emulated GPU (see the module docstring)."""

    __array_priority__ = 1000

    def __init__(self, a: np.ndarray) -> None:
        object.__setattr__(self, "_a", a)

    # implicit host conversion: refused, as CuPy refuses it
    def __array__(self, *a: Any, **k: Any) -> Any:
        raise TypeError(_HOST_MSG)

    def __array_ufunc__(self, *a: Any, **k: Any) -> Any:
        raise TypeError(_HOST_MSG + " (a NumPy ufunc got a device array)")

    def __array_function__(self, func: Any, *a: Any, **k: Any) -> Any:
        raise TypeError(_HOST_MSG + f" (numpy.{func.__name__} got a device array)")

    # explicit transfers
    def get(
        self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True
    ) -> np.ndarray:
        a = self._a
        if out is not None:  # CuPy's checks of ``out``
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.dtype != a.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {a.dtype} array")
            if out.shape != a.shape:
                raise ValueError(f"Shape mismatch. Expected shape: {a.shape}, actual: {out.shape}")
            if not (out.flags.c_contiguous or out.flags.f_contiguous):
                raise RuntimeError("`out` cannot be a non-contiguous ndarray")
            _count("down", a, out)
            out[...] = a
            return out
        STATE.downloads.append((a.shape, a.nbytes))
        if a.flags.f_contiguous and not a.flags.c_contiguous:
            return np.array(a, order="F", copy=True)
        return np.array(a, order="C", copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        a = self._a
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != a.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {a.dtype} array")
        if arr.shape != a.shape:
            raise ValueError(f"Shape mismatch. Old shape: {a.shape}, new shape: {arr.shape}")
        if not (a.flags.c_contiguous or a.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        _count("up", arr, arr)
        a[...] = arr

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))

    def __getattr__(self, name: str) -> Any:
        if name not in _METHODS:
            raise AttributeError(f"emulated cupy.ndarray has no attribute {name!r}")
        fn = getattr(self._a, name)
        return lambda *a, **k: _call(fn, a, k)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __repr__(self) -> str:
        return f"emulated cupy.ndarray({self._a!r})"

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_unwrap(key, upload=True)])

    def __setitem__(self, key: Any, value: Any) -> None:
        with np.errstate(all="ignore"):
            self._a[_unwrap(key, upload=True)] = _unwrap(value)


def _binop(name: str):
    def op(self: ndarray, other: Any) -> Any:
        if isinstance(other, np.ndarray):
            raise _unsupported(other)
        with np.errstate(all="ignore"):
            res = getattr(self._a, name)(_unwrap(other))
        return NotImplemented if res is NotImplemented else _wrap(res)

    return op


def _iop(name: str):
    def op(self: ndarray, other: Any) -> Any:
        if isinstance(other, np.ndarray):
            raise _unsupported(other)
        with np.errstate(all="ignore"):
            getattr(self._a, name)(_unwrap(other))
        return self

    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
           "xor", "lshift", "rshift"):  # fmt: skip
    setattr(ndarray, f"__{_n}__", _binop(f"__{_n}__"))
    setattr(ndarray, f"__r{_n}__", _binop(f"__r{_n}__"))
    setattr(ndarray, f"__i{_n}__", _iop(f"__i{_n}__"))
for _n in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_n}__", _binop(f"__{_n}__"))
for _n in ("neg", "pos", "abs", "invert"):
    setattr(
        ndarray, f"__{_n}__", (lambda n: lambda self: _wrap(getattr(self._a, n)()))(f"__{_n}__")
    )
ndarray.__hash__ = None  # type: ignore[assignment]


# -- the cupy namespace --------------------------------------------------------------------------
_UPLOADS = {"asarray", "array", "asanyarray"}
_PASS = {"dtype", "newaxis", "nan", "inf", "pi", "e", "finfo", "iinfo", "result_type",
         "can_cast", "issubdtype", "promote_types"}  # fmt: skip


def _function(fn: Any, name: str) -> Any:
    def f(*a: Any, **k: Any) -> Any:
        if name in _UPLOADS:
            src = a[0] if a else k.get("a", k.get("obj"))
            if isinstance(src, ndarray):
                out = np.asarray(src._a, *_unwrap(a[1:]), **_unwrap(k))
                return src if out is src._a else ndarray(out)
            host = np.array(_unwrap(src, upload=True), *a[1:], **k)  # a copy: "device" memory
            STATE.uploads.append((host.shape, host.nbytes))
            return ndarray(host)
        return _call(fn, a, k)

    f.__name__ = name
    return f


def asnumpy(a: Any, stream: Any = None) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args: Any) -> Any:
    import sys

    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    obj = getattr(np, name)
    if name in _PASS or isinstance(obj, type):
        return obj
    if callable(obj):
        return _function(obj, name)
    return obj


class _Submodule:
    def __init__(self, mod: Any) -> None:
        self._mod = mod

    def __getattr__(self, name: str) -> Any:
        return _function(getattr(self._mod, name), name)


fft = _Submodule(np.fft)
linalg = _Submodule(np.linalg)


# -- cuda ------------------------------------------------------------------------------------------
class CUDADriverError(RuntimeError):
    pass


class _PinnedMemory(bytearray):
    """What ``cupy.cuda.alloc_pinned_memory`` returns: a host buffer (``numpy.frombuffer``)."""


def _alloc_pinned_memory(size: int) -> _PinnedMemory:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
        raise TypeError(f"alloc_pinned_memory takes a byte count, got {size!r}")
    STATE.pinned_allocs.append(int(size))
    return _PinnedMemory(int(size))


def _is_pinned(arr: np.ndarray) -> bool:
    """Whether a NumPy array's memory comes from :func:`_alloc_pinned_memory`."""
    base: Any = arr
    while base is not None:
        if isinstance(base, _PinnedMemory):
            return True
        base = (
            getattr(base, "base", None)
            if isinstance(base, np.ndarray)
            else getattr(base, "obj", None)
        )
    return False


def _count(direction: str, a: Any, host: np.ndarray) -> None:
    """Record one explicit copy of ``a`` ("up" or "down"), and whether ``host`` is pinned."""
    (STATE.uploads if direction == "up" else STATE.downloads).append((a.shape, a.nbytes))
    if _is_pinned(host):
        STATE.pinned_transfers.append((direction, a.shape, a.nbytes))


def _props(device: int = 0) -> dict[str, Any]:
    return {
        "name": b"Emulated GPU (gpuperf CuPy test double)",
        "major": 9,
        "minor": 0,
        "multiProcessorCount": 132,
        "clockRate": 1_980_000,
        "totalGlobalMem": STATE.total_bytes,
    }


class _Device:
    def __init__(self, device: int = 0) -> None:
        self.id = device

    @property
    def mem_info(self) -> tuple[int, int]:
        return STATE.free_bytes, STATE.total_bytes

    compute_capability = "90"

    def synchronize(self) -> None:
        pass

    def use(self) -> None:
        pass

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Stream:
    def synchronize(self) -> None:
        pass


class _Event:
    def __init__(self, *a: Any, **k: Any) -> None:
        self.t = 0.0

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def _nvrtc_version() -> tuple[int, int]:
    if not STATE.nvrtc:
        raise RuntimeError(
            "CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open shared "
            "object file: No such file or directory"
        )
    return (13, 0)


cuda = SimpleNamespace(
    runtime=SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDevice=lambda: 0,
        getDeviceProperties=_props,
        runtimeGetVersion=lambda: 13000,
        driverGetVersion=lambda: 13000,
    ),
    nvrtc=SimpleNamespace(getVersion=_nvrtc_version),
    Device=_Device,
    Stream=_Stream,
    alloc_pinned_memory=_alloc_pinned_memory,
    Event=_Event,
    get_current_stream=lambda: _Stream(),
    get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t),
    driver=SimpleNamespace(CUDADriverError=CUDADriverError),
)


# -- kernels ---------------------------------------------------------------------------------------
class RawModule:
    """``cupy.RawModule``: the source built with g++ (see the module docstring)."""

    def __init__(
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        options: tuple = (),
        backend: str = "nvrtc",
        name_expressions: Any = None,
        **_: Any,
    ) -> None:
        if code is None:
            raise TypeError("the emulated RawModule needs code=")
        self.code = code
        self.options = tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        self._lib: Any = None
        self._names: dict[str, str] = {}

    def compile(self, log_stream: Any = None) -> None:
        from gpuperf.cuda.host import HostLauncher, build_host_library, fma_flags

        _nvrtc_version()
        includes, defines, fmad = [], {}, True
        for opt in self.options:
            if not isinstance(opt, str):
                raise TypeError(f"NVRTC options must be str, got {opt!r}")
            if opt.startswith("-I"):
                includes.append(opt[2:])
            elif opt.startswith("-D"):
                k, _, v = opt[2:].partition("=")
                defines[k] = v or "1"
            elif opt.replace(" ", "") in ("--fmad=false", "-fmad=false"):
                fmad = False
        self._names = {e: "gp_emu_" + re.sub(r"\W+", "_", e) for e in self.name_expressions}
        launchers = [HostLauncher(n, e) for e, n in self._names.items()]
        self._lib = build_host_library(
            code=self.code,
            launchers=launchers,
            defines=defines,
            include_dirs=includes,
            extra_flags=fma_flags() if fmad else (),
        )

    def get_function(self, name: str) -> RawKernel:
        if self._lib is None:
            self.compile()
        if name not in self._names:
            raise CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        return RawKernel(_module=self, _expr=name)


class RawKernel:
    """``cupy.RawKernel``: ``RawKernel(code, name, options=...)`` or from a :class:`RawModule`."""

    def __init__(
        self,
        code: str | None = None,
        name: str | None = None,
        options: tuple = (),
        *,
        _module: RawModule | None = None,
        _expr: str | None = None,
        **_: Any,
    ) -> None:
        if _module is None:
            _module = RawModule(code=code, options=options, name_expressions=[name])
            _expr = name
        self._module = _module
        self.name = _expr

    def __call__(
        self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0, stream: Any = None
    ) -> None:
        from gpuperf.cuda.signature import check_argument

        mod = self._module
        if mod._lib is None:
            mod.compile()
        g = _dims(grid, "grid", (2**31 - 1, 65535, 65535))
        b = _dims(block, "block", (1024, 1024, 64))
        if b[0] * b[1] * b[2] > 1024:
            raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: more than 1024 threads in a block")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel arguments must be a tuple, got {type(args).__name__}")
        launcher = mod._names[self.name]
        sig = mod._lib._signatures[launcher]
        if len(args) != len(sig.params):
            raise TypeError(f"{self.name} takes {len(sig.params)} arguments, got {len(args)}")
        host_args = []
        for p, a in zip(sig.params, args, strict=True):
            if isinstance(a, np.ndarray):
                raise _unsupported(a)
            if p.is_pointer:
                if a is not None and not isinstance(a, ndarray):
                    raise TypeError(f"{self.name}: {p.name} ({p.ctype}) got {type(a).__name__}")
                check_argument(self.name, p, a)
                host_args.append(None if a is None else a._a)
                continue
            # what CuPy passes: NumPy scalars as they are; Python int/float/bool as 8/8/1 bytes
            passed = a
            if isinstance(a, bool):
                passed = np.bool_(a)
            elif isinstance(a, int):
                passed = np.int64(a)
            elif isinstance(a, float):
                passed = np.float64(a)
            check_argument(self.name, p, passed)
            host_args.append(passed)
        STATE.launches.append((self.name, g, b))
        mod._lib.launch(launcher, g, b, host_args, n_threads=2, strict=True)


def _dims(v: Any, what: str, limits: tuple[int, int, int]) -> tuple[int, int, int]:
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3:
        raise TypeError(f"{what} must be a tuple of 1 to 3 ints, got {v!r}")
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        raise TypeError(f"{what} must hold ints, got {v!r}")
    t = tuple(int(x) for x in v) + (1,) * (3 - len(v))
    if any(x < 1 for x in t) or any(x > m for x, m in zip(t, limits, strict=True)):
        raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: invalid {what} {v!r}")
    return t  # type: ignore[return-value]


class ElementwiseKernel:
    def __init__(self, *a: Any, **k: Any) -> None:
        raise NotImplementedError("ElementwiseKernel is not emulated")
