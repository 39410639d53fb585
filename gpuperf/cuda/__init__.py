"""CUDA source handling: locate kernels, build them for the GPU (CuPy) or the CPU (g++).

- :mod:`gpuperf.cuda.source`: where the ``.cu``/``.cuh`` files live, and the lazy, per-device
  cache of compiled ``cupy.RawModule`` objects.
- :mod:`gpuperf.cuda.nvcc`: offline ``nvcc`` builds (PTX/cubin for sm_80/sm_90, no device
  needed) for the ``.f64`` lint and the register/spill report.
- :mod:`gpuperf.cuda.host`: the same kernel source built as host C++ with g++ and called through
  ctypes, so CI runs the exact CUDA code (indexing included) without a GPU.
"""

from gpuperf.cuda.source import get_module, kernel_dir, kernel_tree_hash, read_kernel

__all__ = ["get_module", "kernel_dir", "kernel_tree_hash", "read_kernel"]
