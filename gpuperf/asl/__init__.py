"""ASL: BIDS input, consensus single-PLD quantification and Buxton kinetic-model fits.

Public API: :class:`ASLModel` / :class:`ASLFit` (arrays in, maps out), :func:`run_asl` (files
in, maps with sidecars out), :func:`read_asl_series`, :func:`write_phantom`.
See ``docs/asl.md``.
"""

from gpuperf.asl.bids import ASLSeries, read_asl_series
from gpuperf.asl.model import ASLFit, ASLModel
from gpuperf.asl.pipeline import ASLRunResult, run_asl
from gpuperf.asl.simulate import write_phantom

__all__ = [
    "ASLFit",
    "ASLModel",
    "ASLRunResult",
    "ASLSeries",
    "read_asl_series",
    "run_asl",
    "write_phantom",
]
