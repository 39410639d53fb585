"""Batched nonlinear least squares (Levenberg-Marquardt), one problem per voxel.

>>> from gpuperf.fit import fit_lm
>>> res = fit_lm("monoexp", t_s, signal, p0=[1000.0, 20.0])   # signal (V, N)
>>> res.params, res.stderr, res.status                          # (V, 2), (V, 2), (V,)
"""

from gpuperf.fit.lm import FitResult, FitStatus, fit_lm
from gpuperf.fit.models import MODELS, Model, get_model

__all__ = ["MODELS", "FitResult", "FitStatus", "Model", "fit_lm", "get_model"]
