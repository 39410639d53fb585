# CUDA sources of gpuperf, shipped as package data ``gpuperf.kernels``.
