"""DSC-MRI: signal to dR2*, AIF, BSW leakage, sSVD/cSVD/oSVD/Tikhonov, CBF/CBV/MTT/Tmax/TTP.

Python API in the DIPY idiom::

    from gpuperf.dsc import DSCModel
    fit = DSCModel(te_s=0.03, tr_s=1.5, method="osvd").fit(signal_4d, aif="auto")
    fit.cbf, fit.cbv, fit.mtt, fit.tmax, fit.ttp, fit.status

and the file pipeline :func:`gpuperf.dsc.pipeline.run_dsc`; every option is a field of
:class:`gpuperf.dsc.options.DSCOptions`, every method an entry of :mod:`gpuperf.dsc.methods`.
"""

from gpuperf.dsc.model import DSCFit, DSCModel
from gpuperf.dsc.options import DSCOptions

__all__ = ["DSCFit", "DSCModel", "DSCOptions", "run_dsc"]


def __getattr__(name: str):
    if name == "run_dsc":  # lazy: the pipeline imports nibabel
        from gpuperf.dsc.pipeline import run_dsc

        return run_dsc
    raise AttributeError(name)
