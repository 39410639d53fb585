"""Registries of ASL signal models and quantification methods.

Two small registries, each entry one object and one line:

- :data:`KINETIC_MODELS`: the signal model of the difference signal for a labelling family:
  Buxton's general kinetic model (Buxton et al., MRM 40:383, 1998) for (p)CASL and for PASL,
  and the (p)CASL model with a macrovascular component (Chappell et al., MRM 63:1357, 2010).
  Each names its fitter model (:mod:`gpuperf.fit.models.buxton`, CUDA header + NumPy twin),
  its tissue-only counterpart and the consensus single-PLD formula of the family (Alsop et al.,
  MRM 73:102, 2015). :func:`kinetic_model_for` picks one for a labelling type.
- :data:`METHODS` (declared in :mod:`gpuperf.asl.registry`): how CBF is quantified from a
  model: ``whitepaper`` (closed-form consensus formula per sample, averaged) and ``gkm``
  (voxelwise Levenberg-Marquardt fit of CBF and ATT).
  ``ASLOptions.model``'s choices are ``auto`` plus these names.

Adding a method or a model: see ``docs/asl.md`` ("Adding a kinetic model").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gpuperf.asl import constants as K
from gpuperf.asl.fitting import fit_kinetic
from gpuperf.asl.quantify import whitepaper_pasl, whitepaper_pcasl
from gpuperf.asl.registry import METHODS, method_choices  # noqa: F401 - re-exported
from gpuperf.backend import get_backend
from gpuperf.fit.models import Model
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL, BUXTON_PCASL_ARTERIAL
from gpuperf.status import DTYPE as STATUS_DTYPE


@dataclass(frozen=True)
class KineticModel:
    """The signal model of one labelling family.

    Attributes
    ----------
    name, description : str
    labeling_types : tuple of str
        BIDS ``ArterialSpinLabelingType`` values it applies to.
    arterial : bool
        Whether it adds the macrovascular component (parameters aBV, aBAT).
    signal : gpuperf.fit.models.Model
        The fitter model (CUDA header and NumPy twin) of the whole signal.
    tissue : gpuperf.fit.models.Model
        The tissue-only model (CBF, ATT): the first stage of an arterial fit, kink refits.
    consensus : callable
        Closed-form single-PLD CBF of the family, ``f(dM/M0, pld, tau, *, t1_blood_s,
        lambda_, alpha)`` (:mod:`gpuperf.asl.quantify`).
    time_from_labelling_start : bool
        Sample time ``t = tau + PLD`` ((p)CASL) rather than ``t = TI`` (PASL).
    """

    name: str
    description: str
    labeling_types: tuple[str, ...]
    arterial: bool
    signal: Model
    tissue: Model
    consensus: Callable[..., Any]
    time_from_labelling_start: bool


BUXTON_CASL = KineticModel(
    "buxton-pcasl",
    "Buxton GKM, (p)CASL: tissue compartment (Buxton 1998; Alsop 2015)",
    ("PCASL", "CASL"),
    False,
    BUXTON_PCASL,
    BUXTON_PCASL,
    whitepaper_pcasl,
    True,
)
BUXTON_CASL_ARTERIAL = KineticModel(
    "buxton-pcasl-arterial",
    "Buxton GKM, (p)CASL, with a macrovascular component aBV on [aBAT, aBAT + tau)",
    ("PCASL", "CASL"),
    True,
    BUXTON_PCASL_ARTERIAL,
    BUXTON_PCASL,
    whitepaper_pcasl,
    True,
)
BUXTON_PULSED = KineticModel(
    "buxton-pasl",
    "Buxton GKM, PASL (QUIPSS II / Q2TIPS bolus of duration TI1)",
    ("PASL",),
    False,
    BUXTON_PASL,
    BUXTON_PASL,
    whitepaper_pasl,
    False,
)

#: name -> signal model; :func:`kinetic_model_for` takes the first that fits.
KINETIC_MODELS: dict[str, KineticModel] = {
    m.name: m for m in (BUXTON_CASL, BUXTON_CASL_ARTERIAL, BUXTON_PULSED)
}


def labeling_types() -> tuple[str, ...]:
    """Labelling types some registered model covers."""
    return tuple(dict.fromkeys(t for m in KINETIC_MODELS.values() for t in m.labeling_types))


def kinetic_model_for(labeling_type: str, arterial: bool = False) -> KineticModel | None:
    """The registered model of ``labeling_type`` (with the arterial component or not)."""
    for m in KINETIC_MODELS.values():
        if labeling_type in m.labeling_types and m.arterial == arterial:
            return m
    return None


class Method(Protocol):
    """A quantification method: one object, one line in :data:`METHODS`.

    ``quantify(model, y, reporter, offset=None)`` takes ``y = dM/M0`` of the valid voxels
    (V, K) and, for 2D readouts, each voxel's slice-time offset ``offset`` (V,) in s (its
    samples are read at ``PLD + offset``; PASL ``TI + offset``), and returns a dict of
    per-voxel arrays: every map of :meth:`map_names` but ``status``, plus
    ``status`` (:class:`gpuperf.status.Status` flags, int32) and optional ``_``-prefixed
    extras (``_n_iter``).
    """

    name: str
    description: str
    fits: bool  #: iterative fit (QC curves, ``n_iter``) rather than a closed form

    def map_names(self, model: Any) -> list[str]: ...

    def quantify(
        self, model: Any, y: np.ndarray, reporter: Any, offset: np.ndarray | None = None
    ) -> dict[str, Any]: ...

    def constants(self, model: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ConsensusFormula:
    """Consensus single-PLD formula per sample, then the mean over samples (Alsop 2015)."""

    name: str = "whitepaper"
    description: str = "consensus single-PLD formula (Alsop 2015), mean over samples"
    fits: bool = False

    def map_names(self, model: Any) -> list[str]:
        return ["cbf", "status"] + (["cbf_stderr"] if model.pld_s.size > 1 else [])

    def quantify(
        self, model: Any, y: np.ndarray, reporter: Any, offset: np.ndarray | None = None
    ) -> dict[str, Any]:
        backend = get_backend(model.device)
        yd = backend.asarray(y, dtype=np.float64)
        pld_eff = model.pld_s[None, :]
        if offset is not None:  # 2D readout: the slice's effective delay PLD + SliceTiming[k]
            pld_eff = pld_eff + np.asarray(offset, dtype=np.float64).reshape(-1, 1)
        pld = backend.asarray(pld_eff)
        tau = backend.asarray(model.tau_s[None, :])
        per_sample = model.kinetics.consensus(
            yd,
            pld,
            tau,
            t1_blood_s=model.t1_blood_s,
            lambda_=model.lambda_,
            alpha=model.alpha_effective,
        )
        n = y.shape[1]
        cbf = per_sample.mean(axis=1)
        stderr = (per_sample.std(axis=1, ddof=1) / np.sqrt(n)) if n > 1 else None
        return {
            "cbf": backend.to_host(cbf).astype(np.float32),
            "cbf_stderr": None if stderr is None else backend.to_host(stderr).astype(np.float32),
            "status": np.zeros(y.shape[0], dtype=STATUS_DTYPE),
        }

    def constants(self, model: Any) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class KineticFit:
    """Voxelwise Levenberg-Marquardt fit of the kinetic model (CBF, ATT; aBV, aBAT)."""

    name: str = "gkm"
    description: str = "Buxton general kinetic model fitted voxelwise (CBF, ATT)"
    fits: bool = True

    def map_names(self, model: Any) -> list[str]:
        names = ["cbf", "status", "att", "cbf_stderr", "att_stderr", "residual"]
        if model.arterial:
            names += ["abv", "abat", "abv_stderr", "abat_stderr"]
        return names

    def quantify(
        self, model: Any, y: np.ndarray, reporter: Any, offset: np.ndarray | None = None
    ) -> dict[str, Any]:
        return fit_kinetic(model, y, reporter, offset)

    def constants(self, model: Any) -> dict[str, Any]:
        d: dict[str, Any] = {
            "Model": model.kinetic_model.name,
            "T1TissueSeconds": model.t1_tissue_s,
            "SampleTimeDefinition": "t = LabelingDuration + PostLabelingDelay"
            if model.kinetics.time_from_labelling_start
            else "t = TI",
            "RepeatsFitted": "group means weighted by repeat count; chi2 and standard errors "
            "include the within-group sum of squares",
            "ATTStartSeconds": model.att_start_s,
            "CBFBounds": list(model.cbf_bounds),
            "ATTBoundsSeconds": list(model.att_bounds),
            "MaxIterations": model.max_iter,
            "FitPrecision": model.dtype.name,
        }
        if model.arterial:
            d["aBVBoundsPercent"] = list(K.ABV_BOUNDS)
            d["aBATBoundsSeconds"] = list(K.ABAT_BOUNDS)
        return d


def resolve_method(name: str, n_distinct_plds: int) -> str:
    """``auto``: the consensus formula for one PLD, the kinetic-model fit for several."""
    if name == "auto":
        return "whitepaper" if n_distinct_plds == 1 else "gkm"
    return name
