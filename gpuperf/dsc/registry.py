"""The registries of DSC methods: one line per deconvolution method (``--method``) and per
leakage correction (``--leakage``).

An entry names the class that implements it (``"module:Class"``, imported and instantiated on
first use, :class:`gpuperf.options.Registry`), so that :mod:`gpuperf.dsc.options` knows the
choices without importing NumPy. Adding a method: write the class (a
:class:`gpuperf.dsc.methods.Deconvolution`) and add its line here; code outside the package
calls :func:`gpuperf.dsc.methods.register` with an instance instead.
"""

from __future__ import annotations

from gpuperf.options import Registry

#: Name -> deconvolution method, in the order ``--help`` lists them.
METHODS = Registry(
    {
        "osvd": "gpuperf.dsc.methods:OSVD",
        "csvd": "gpuperf.dsc.methods:CSVD",
        "ssvd": "gpuperf.dsc.methods:SSVD",
        "tikhonov": "gpuperf.dsc.methods:Tikhonov",
        "parametric": "gpuperf.dsc.parametric:Parametric",
    }
)

#: Name -> leakage correction.
CORRECTIONS = Registry(
    {
        "none": "gpuperf.dsc.leakage:NoCorrection",
        "bsw": "gpuperf.dsc.leakage:BSW",
        "bidirectional": "gpuperf.dsc.leakage:Bidirectional",
    }
)
