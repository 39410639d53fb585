"""Every option of ASL quantification, declared once (:class:`ASLOptions`).

The command line (``gpuperf asl``), the Python API (:class:`gpuperf.asl.ASLModel`,
:func:`gpuperf.asl.run_asl`), the cohort configuration (section ``[asl]``) and the sidecars
derive from these declarations (see :mod:`gpuperf.options`). Defaults come from
:mod:`gpuperf.asl.constants` (Alsop et al., MRM 73:102, 2015); an option left at ``None`` is
taken from the BIDS sidecar (``LabelingEfficiency``, ``MagneticFieldStrength``,
``BackgroundSuppressionNumberPulses``) or from the labelling type. Sidecar values obey the same
ranges as the options they feed (:func:`check_sidecar`).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any

from gpuperf.asl import constants as K
from gpuperf.asl.registry import METHODS, method_choices
from gpuperf.errors import InputError
from gpuperf.options import Options, check_value, option, positive


@dataclass(frozen=True)
class ASLOptions(Options):
    """Method options of ASL quantification (one field per option; validated on construction).

    ``model="auto"`` picks the consensus formula for one PLD and the kinetic-model fit for
    several (:mod:`gpuperf.asl.kinetics`).
    """

    section = "asl"

    model: str = option(
        "auto",
        "Quantification method: auto (consensus formula for one PLD, kinetic-model fit for "
        "several) or a method of gpuperf.asl.kinetics",
        flag="--model",
        choices=method_choices,
    )
    t1_tissue_s: float = option(
        K.T1_TISSUE_S,
        "T1 of tissue (kinetic model, short-TR M0 correction)",
        flag="--t1-tissue",
        **positive(10, unit="s"),
    )
    t1_blood_s: float | None = option(
        None,
        "T1 of arterial blood (default from MagneticFieldStrength: 1.65 s at 3 T, 1.35 s at "
        "1.5 T; 1.65 s for arrays without a sidecar)",
        flag="--t1-blood",
        **positive(10, unit="s"),
    )
    lambda_: float = option(
        K.LAMBDA_ML_G,
        "Blood/brain partition coefficient",
        flag="--lambda",
        **positive(1.5, unit="ml/g"),
    )
    alpha: float | None = option(
        None,
        "Labelling efficiency (default: sidecar, else 0.85 pCASL, 0.68 CASL, 0.98 PASL)",
        flag="--alpha",
        **positive(1, unit="1"),
        sidecar="LabelingEfficiency",
    )
    bs_factor: float | None = option(
        None,
        "Background-suppression factor multiplying alpha (default: "
        f"{K.BS_EFFICIENCY_PER_PULSE:g} per BackgroundSuppressionNumberPulses, 1 without)",
        flag="--bs-factor",
        **positive(1, unit="1"),
    )
    arterial: bool = option(
        False, "Fit the macrovascular component (aBV, aBAT) too ((p)CASL)", flag="--arterial"
    )
    att_start_s: float | None = option(
        None,
        "Starting ATT of the kinetic-model fit (default 1.3 s (p)CASL, 0.7 s PASL)",
        flag="--att-start",
        unit="s",
        minimum=0,
    )
    cbf_bounds: tuple = option(
        K.CBF_BOUNDS, "Bounds of the CBF fit: lower,upper", flag="--cbf-bounds", unit="ml/100g/min"
    )
    att_bounds: tuple = option(
        K.ATT_BOUNDS, "Bounds of the ATT fit: lower,upper", flag="--att-bounds", unit="s", minimum=0
    )
    max_iter: int = option(
        K.MAX_ITER, "Trial steps per voxel of the kinetic-model fit", flag="--max-iter", minimum=1
    )
    ignore_slice_timing: bool = option(
        False,
        "Quantify every slice of a 2D readout at the nominal PLD, ignoring SliceTiming "
        "(for comparison only: upper slices are then biased by e^{-SliceTiming/T1b})",
        flag="--ignore-slice-timing",
    )
    m0_fwhm_mm: float = option(
        K.M0_FWHM_MM,
        "FWHM of a Gaussian smoothing of the voxelwise M0 inside the M0-positive region (0: none)",
        flag="--m0-fwhm",
        unit="mm",
        minimum=0,
        maximum=30,
    )
    m0_ref_tissue: str | None = option(
        None,
        "Tissue of the M0 reference region (with --m0-ref-mask)",
        flag="--m0-ref-tissue",
        choices=tuple(K.REFERENCE_TISSUES),
    )

    def _check(self) -> None:
        specs = self.option_specs()
        for name in ("cbf_bounds", "att_bounds"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                raise InputError(
                    None, specs[name].label, f"expected lower,upper with lower < upper; got {lo_hi}"
                )
        if self.arterial and self.model in METHODS and not METHODS[self.model].fits:
            raise InputError(
                None, specs["arterial"].label, "the arterial component needs the kinetic-model fit"
            )


def check_sidecar(name: str, value: Any, path: str | PathLike | None, field: str) -> Any:
    """Check a sidecar value that feeds option ``name`` with that option's rule.

    The message names the sidecar file and field (``LabelingEfficiency``), not the flag.
    """
    return check_value(ASLOptions.option_specs()[name], value, path, field)
