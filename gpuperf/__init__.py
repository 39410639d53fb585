"""gpuperf: GPU-accelerated voxelwise fitting for perfusion MRI.

DSC-MRI deconvolution (sSVD, cSVD, oSVD, Tikhonov, BSW leakage correction) and ASL
quantification (consensus single-PLD, Buxton kinetic-model fits), each with a CuPy kernel
and a NumPy twin. See ``docs/ARCHITECTURE.md`` for how the pieces fit.
"""

from gpuperf._version import __version__

__all__ = ["__version__"]
