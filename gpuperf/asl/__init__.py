"""ASL: BIDS input, consensus single-PLD quantification and Buxton kinetic-model fits.

Public API: :class:`ASLModel` / :class:`ASLFit` (arrays in, maps out), :class:`ASLOptions`
(every method option), :func:`run_asl` (files in, maps with sidecars out),
:func:`read_asl_series`, :func:`write_phantom`; methods and signal models are registered in
:mod:`gpuperf.asl.kinetics`.
See ``docs/asl.md``.
"""

from gpuperf.asl.bids import ASLSeries, read_asl_series
from gpuperf.asl.model import ASLFit, ASLModel
from gpuperf.asl.options import ASLOptions
from gpuperf.asl.pipeline import ASLRunResult, run_asl
from gpuperf.asl.simulate import write_phantom

__all__ = [
    "ASLFit",
    "ASLModel",
    "ASLOptions",
    "ASLRunResult",
    "ASLSeries",
    "read_asl_series",
    "run_asl",
    "write_phantom",
]
