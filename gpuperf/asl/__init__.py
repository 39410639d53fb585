"""ASL: BIDS input, consensus single-PLD quantification and Buxton kinetic-model fits.

Public API: :class:`ASLModel` / :class:`ASLFit` (arrays in, maps out), :class:`ASLOptions`
(every method option), :func:`run_asl` (files in, maps with sidecars out),
:func:`read_asl_series`, :func:`write_phantom`; methods and signal models are registered in
:mod:`gpuperf.asl.kinetics`.
See ``docs/asl.md``.

The names are imported on first use (PEP 562), so ``import gpuperf.asl.options`` (what the
command line needs for its flags) does not load the reader, the pipeline or nibabel.
"""

from importlib import import_module

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

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpuperf.asl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
