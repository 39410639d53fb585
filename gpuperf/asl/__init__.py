"""ASL: BIDS input, consensus single-PLD quantification and Buxton kinetic-model fits.

Public API: :class:`ASLModel` / :class:`ASLFit` (arrays in, maps out), :class:`ASLOptions`
(every method option), :func:`run_asl` (files in, maps with sidecars out),
:func:`read_asl_series`, :func:`write_phantom`; methods and signal models are registered in
:mod:`gpuperf.asl.kinetics`.
See ``docs/asl.md``.

The names are imported on first use (PEP 562), so ``import gpuperf.asl.options`` (what the
command line needs for its flags) does not load the reader, the pipeline or nibabel.
"""

from gpuperf._lazy import lazy_attributes

#: Public name -> the module that defines it.
_LAZY = {
    "ASLFit": "gpuperf.asl.model",
    "ASLModel": "gpuperf.asl.model",
    "ASLOptions": "gpuperf.asl.options",
    "ASLRunResult": "gpuperf.asl.pipeline",
    "ASLSeries": "gpuperf.asl.bids",
    "read_asl_series": "gpuperf.asl.bids",
    "run_asl": "gpuperf.asl.pipeline",
    "write_phantom": "gpuperf.asl.simulate",
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
