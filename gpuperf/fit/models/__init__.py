"""Fit models: one C++ header + one NumPy twin each, and this registry (one line per model)."""

from __future__ import annotations

from gpuperf.cuda.catalog import register_instances
from gpuperf.errors import GpuperfError
from gpuperf.fit.models.base import Model
from gpuperf.fit.models.buxton import (
    BUXTON_PASL,
    BUXTON_PASL_SLICED,
    BUXTON_PCASL,
    BUXTON_PCASL_ARTERIAL,
    BUXTON_PCASL_ARTERIAL_SLICED,
    BUXTON_PCASL_SLICED,
)
from gpuperf.fit.models.dsc_gamma_residue import DSCGammaResidue
from gpuperf.fit.models.gammavar import GammaVar
from gpuperf.fit.models.monoexp import MonoExp

#: Registry: name -> model instance.
MODELS: dict[str, Model] = {
    "monoexp": MonoExp(),
    "gammavar": GammaVar(),
    "buxton_pcasl": BUXTON_PCASL,
    "buxton_pasl": BUXTON_PASL,
    "buxton_pcasl_arterial": BUXTON_PCASL_ARTERIAL,
    "buxton_pcasl_sliced": BUXTON_PCASL_SLICED,
    "buxton_pasl_sliced": BUXTON_PASL_SLICED,
    "buxton_pcasl_arterial_sliced": BUXTON_PCASL_ARTERIAL_SLICED,
    "dsc_gamma_residue": DSCGammaResidue(),
}


def register_kernels(models: dict[str, Model]) -> None:
    """Tell the kernel catalog which ``lm_fit<T, Model>`` instantiations exist (compile test,
    signatures, gpu_check); called on import for :data:`MODELS`."""
    for m in models.values():
        register_instances(
            "fit/lm_fit.cu",
            float32=(f"lm_fit<float, {m.cuda_struct}>",),
            float64=(f"lm_fit<double, {m.cuda_struct}>",),
            includes=(m.cuda_header,),
        )


register_kernels(MODELS)


def get_model(model: str | Model) -> Model:
    """Model instance from a registry name (or the instance itself)."""
    if isinstance(model, str):
        if model not in MODELS:
            raise GpuperfError(f"unknown fit model {model!r}; known: {', '.join(sorted(MODELS))}")
        return MODELS[model]
    return model


__all__ = ["MODELS", "GammaVar", "Model", "MonoExp", "get_model"]
