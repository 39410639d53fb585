"""The registry of ASL quantification methods (``--model``): one line per method.

An entry names the class that implements it (``"module:Class"``, imported and instantiated on
first use, :class:`gpuperf.options.Registry`), so that :mod:`gpuperf.asl.options` knows the
choices without importing NumPy or the fit engine. A method is a
:class:`gpuperf.asl.kinetics.Method`; see ``docs/asl.md`` ("Adding a kinetic model").
"""

from __future__ import annotations

from gpuperf.options import Registry

#: Name -> quantification method (the CLI's ``--model`` choices are ``auto`` and these).
METHODS = Registry(
    {
        "whitepaper": "gpuperf.asl.kinetics:ConsensusFormula",
        "gkm": "gpuperf.asl.kinetics:KineticFit",
    }
)


def method_choices() -> tuple[str, ...]:
    """``auto`` and the registered methods (``ASLOptions.model``'s choices)."""
    return ("auto", *METHODS.names())
