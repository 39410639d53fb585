"""DSC-MRI: signal to dR2*, AIF, BSW leakage, sSVD/cSVD/oSVD/Tikhonov, CBF/CBV/MTT/Tmax/TTP.

Python API in the DIPY idiom::

    from gpuperf.dsc import DSCModel
    fit = DSCModel(te_s=0.03, tr_s=1.5, method="osvd").fit(signal_4d, aif="auto")
    fit.cbf, fit.cbv, fit.mtt, fit.tmax, fit.ttp, fit.status

and the file pipeline :func:`gpuperf.dsc.pipeline.run_dsc`; every option is a field of
:class:`gpuperf.dsc.options.DSCOptions`, every method an entry of :mod:`gpuperf.dsc.methods`.
The names are imported on first use (PEP 562): ``import gpuperf.dsc.options`` (what the command
line needs for its flags) does not load the model, the pipeline or nibabel.
"""

from gpuperf._lazy import lazy_attributes

#: Public name -> the module that defines it.
_LAZY = {
    "DSCFit": "gpuperf.dsc.model",
    "DSCModel": "gpuperf.dsc.model",
    "DSCOptions": "gpuperf.dsc.options",
    "run_dsc": "gpuperf.dsc.pipeline",
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
