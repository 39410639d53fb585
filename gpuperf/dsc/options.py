"""Every DSC method option, declared once: :class:`DSCOptions`.

The command line (``gpuperf dsc``), the Python API (:class:`gpuperf.dsc.DSCModel`,
:func:`gpuperf.dsc.pipeline.run_dsc`), the cohort configuration (``[dsc]``) and the maps'
sidecars (``Parameters``) all derive from these fields (see :mod:`gpuperf.options`). Constants
are defined here or next to their method (thresholds in :mod:`gpuperf.dsc.deconvolution`, the
oSVD sweep and OI limit in :mod:`gpuperf.dsc.osvd`, the automatic-AIF cut-offs in
:mod:`gpuperf.dsc.aif`) and referenced, never typed again.

Run-level arguments that are not method options (input paths, output folder, prefix, device,
memory budget, overwrite policy, reporter) stay plain arguments of the functions.

References: kH = (1 - 0.45)/(1 - 0.25) (large- vs small-vessel haematocrit) and rho = 1.04 g/ml
(Rempp et al., Radiology 193:637, 1994); sSVD (Ostergaard et al., MRM 36:715, 1996); cSVD and
oSVD (Wu et al., MRM 50:164, 2003); Tikhonov (Calamante et al., MRM 50:1237, 2003).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpuperf.dsc import constants as C
from gpuperf.dsc.registry import CORRECTIONS, METHODS
from gpuperf.errors import InputError
from gpuperf.options import Options, option, positive

#: Haematocrit factor kH = (1 - 0.45) / (1 - 0.25) (Rempp 1994).
KH_DEFAULT = 0.733
#: Brain tissue density rho, g/ml (Rempp 1994).
RHO_DEFAULT = 1.04
#: A TE above this (s) is refused as milliseconds; a TR above :data:`TR_MAX_S` likewise.
TE_MAX_S = 1.0
TR_MAX_S = 20.0

#: Field metadata key: the name of the option in the maps' sidecar ``Parameters``.
_PARAM = "gpuperf.dsc.param"


def _opt(param: str, default: Any, help: str, **kw: Any) -> Any:
    """:func:`gpuperf.options.option` plus the option's sidecar ``Parameters`` key."""
    f = option(default, help, **kw)
    return dataclasses.field(default=f.default, metadata={**f.metadata, _PARAM: param})


def _ms_hint(value: Any, limit: float, field: str, label: str, where: Any = None) -> None:
    """Refuse a TE/TR that looks like milliseconds with the value in seconds in the message."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value > limit:
        raise InputError(
            where,
            label,
            f"{value:g} looks like milliseconds; {field} is in seconds (BIDS), "
            f"e.g. {value / 1000:g} for {value:g} ms",
        )


@dataclass(frozen=True)
class DSCOptions(Options):
    """The options of a DSC fit (validated on construction; see :mod:`gpuperf.options`).

    ``te_s`` / ``tr_s`` may be None where a BIDS sidecar supplies them (the file pipeline);
    :class:`gpuperf.dsc.DSCModel` needs both.
    """

    section = "dsc"

    method: str = _opt(
        "Method", "osvd", "Deconvolution method", flag="--method", choices=METHODS.names
    )
    leakage: str = _opt(
        "Leakage",
        "none",
        "Leakage correction (bsw: Boxerman-Schmainda-Weisskoff 2006; bidirectional: "
        "Bjornerud 2011, with efflux)",
        flag="--leakage",
        choices=CORRECTIONS.names,
    )
    te_s: float | None = _opt(
        "EchoTime",
        None,
        "Echo time",
        flag="--te",
        **positive(TE_MAX_S, unit="s"),
        sidecar="EchoTime",
    )
    tr_s: float | None = _opt(
        "RepetitionTime",
        None,
        "Frame interval",
        flag="--tr",
        **positive(TR_MAX_S, unit="s"),
        sidecar="RepetitionTime",
    )
    baseline: int | None = _opt(
        "Baseline",
        None,
        "Pre-bolus frames (default: detect the bolus arrival)",
        flag="--baseline",
        minimum=1,
    )
    skip: int = _opt(
        "SkipFrames",
        0,
        "Non-steady-state frames dropped from the start before anything else (S0 included)",
        flag="--skip",
        minimum=0,
    )
    discretisation: str = _opt(
        "Discretisation",
        "rectangle",
        "Convolution weights for sSVD and Tikhonov: rectangle (the toolboxes' default), "
        "trapezoid or volterra (Sourbron 2007); others refuse non-rectangle",
        flag="--discretisation",
        choices=C.DISCRETISATIONS,
    )
    leakage_tail_s: float = _opt(
        "LeakageTail",
        C.TAIL_S,
        "Bidirectional leakage: the residue tail fitted starts this long after Tmax",
        flag="--leakage-tail",
        **positive(unit="s"),
    )
    slice_timing: bool = _opt(
        "SliceTimingCorrection",
        True,
        "Correct Tmax/TTP to the AIF's slice time when the sidecar has SliceTiming (2D)",
        flag="--slice-timing",
    )
    kh: float = _opt(
        "kH",
        KH_DEFAULT,
        "Haematocrit factor (1 for relative maps)",
        flag="--kh",
        **positive(),
    )
    rho: float = _opt(
        "rho",
        RHO_DEFAULT,
        "Brain density (1 for relative maps)",
        flag="--rho",
        **positive(unit="g/ml"),
    )
    threshold: float | None = _opt(
        "Threshold",
        None,
        "SVD threshold, fraction of s_max (default per method: sSVD 0.2, cSVD 0.1)",
        flag="--threshold",
        **positive(1),
    )
    osvd_thresholds: tuple = _opt(
        "OSVDThresholds",
        C.DEFAULT_THRESHOLDS,
        "oSVD sweep, fractions of s_max: 'start:stop:step' or a comma-separated list",
        flag="--osvd-thresholds",
        **positive(1, max_inclusive=False),
    )
    oi_limit: float = _opt(
        "OILimit",
        C.DEFAULT_OI_LIMIT,
        "oSVD oscillation-index limit",
        flag="--oi-limit",
        **positive(),
    )
    mu: float | None = _opt(
        "TikhonovMu",
        None,
        "Tikhonov mu relative to s_max (default: GCV per voxel)",
        flag="--mu",
        minimum=0,
    )
    gamma_fit_aif: bool = _opt(
        "GammaFitAIF",
        False,
        "Fit a gamma-variate to the AIF (no recirculation)",
        flag="--gamma-fit-aif",
    )
    aif_auc_percentile: float = _opt(
        "AIF_auc_percentile",
        C.AUC_PERCENTILE,
        "Automatic AIF: candidates have an AUC above this percentile",
        flag="--aif-auc-percentile",
        unit="%",
        minimum=0,
        maximum=100,
        max_inclusive=False,
    )
    aif_roughness_percentile: float = _opt(
        "AIF_roughness_percentile",
        C.ROUGHNESS_PERCENTILE,
        "Automatic AIF: drop candidates rougher than this percentile",
        flag="--aif-roughness-percentile",
        **positive(100, unit="%"),
    )
    aif_clusters: int = _opt(
        "AIF_n_clusters",
        C.N_CLUSTERS,
        "Automatic AIF: k of the k-means",
        flag="--aif-clusters",
        minimum=1,
    )

    def __post_init__(self) -> None:
        _ms_hint(self.te_s, TE_MAX_S, "EchoTime", "--te")
        _ms_hint(self.tr_s, TR_MAX_S, "RepetitionTime", "--tr")
        super().__post_init__()

    def _check(self) -> None:
        if self.discretisation == "rectangle":  # every method's: no need to load the method
            return
        allowed = self.deconvolution.discretisations
        if self.discretisation not in allowed:
            raise InputError(
                None,
                "--discretisation",
                f"--method {self.method} takes {', '.join(allowed)}; found "
                f"{self.discretisation!r} (trapezoid/Volterra weights need a causal Toeplitz "
                "matrix: sSVD or Tikhonov)",
            )

    # -- derived ---------------------------------------------------------------------------
    @property
    def deconvolution(self) -> Any:
        """The registered method object (:mod:`gpuperf.dsc.methods`)."""
        from gpuperf.dsc.methods import get

        return get(self.method)

    @property
    def leakage_correction(self) -> Any:
        """The registered leakage correction (:mod:`gpuperf.dsc.leakage`)."""
        from gpuperf.dsc.leakage import get

        return get(self.leakage)

    @property
    def resolved_threshold(self) -> float | None:
        """``threshold``, or the method's default when None (None for methods without one)."""
        return self.deconvolution.default_threshold if self.threshold is None else self.threshold

    @property
    def aif_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gpuperf.dsc.aif.auto_aif`."""
        return {
            "auc_percentile": self.aif_auc_percentile,
            "roughness_percentile": self.aif_roughness_percentile,
            "n_clusters": self.aif_clusters,
        }

    def sidecar_parameters(self) -> dict[str, Any]:
        """The options under their sidecar ``Parameters`` names (the format of gpuperf <= 0.x,
        kept so that existing outputs and readers stay valid); the threshold is the one used."""
        out = {}
        for f in dataclasses.fields(self):
            key = f.metadata.get(_PARAM)
            if key is None:
                continue
            value = getattr(self, f.name)
            if f.name == "threshold":
                value = self.resolved_threshold
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> DSCOptions:
        """Rebuild the options of a run from its sidecar ``Parameters`` (absent or null keys
        keep their defaults; other keys are ignored), e.g. to recompute curves for a report."""
        names = cls.parameter_names()
        return cls(**{f: parameters[k] for f, k in names.items() if parameters.get(k) is not None})

    @classmethod
    def parameter_names(cls) -> dict[str, str]:
        """Field name -> sidecar ``Parameters`` key."""
        return {f.name: f.metadata[_PARAM] for f in dataclasses.fields(cls) if _PARAM in f.metadata}


def resolve_options(
    options: DSCOptions | None, values: Mapping[str, Any], caller: str = "DSC"
) -> DSCOptions:
    """``options`` (default :class:`DSCOptions()`) with the keyword ``values`` applied
    (:meth:`gpuperf.options.Options.resolve`)."""
    return DSCOptions.resolve(options, values, caller)
