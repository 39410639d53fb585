"""Published ASL constants and the rules that pick them (Alsop et al., MRM 73:102, 2015).

Every value gpuperf uses is listed here with its source and recorded in the output sidecars.
"""

from __future__ import annotations

from os import PathLike

from gpuperf.errors import InputError

#: Brain/blood water partition coefficient (ml/g), Herscovitch & Raichle 1985; Alsop 2015.
LAMBDA_ML_G = 0.9
#: T1 of grey matter used as T1 tissue in the kinetic model (s), 3 T (Alsop 2015; BASIL).
T1_TISSUE_S = 1.3
#: T1 of arterial blood by field strength (T -> s), Alsop 2015 (Lu et al. 2004 at 3 T).
T1_BLOOD_BY_FIELD_S = {1.5: 1.35, 3.0: 1.65}
#: Labelling efficiency by ASL type (Alsop 2015: pCASL 0.85, PASL 0.98; CASL 0.68).
ALPHA_BY_TYPE = {"PCASL": 0.85, "CASL": 0.68, "PASL": 0.98}
#: Fraction of the label left after each background-suppression inversion pulse. REFERENCE.md and
#: Garcia et al. (MRM 54:366, 2005) give ~0.95 per pulse (Alsop 2015 quotes 0.75-0.95 for
#: typical 2-4 pulse schemes); override with ``bs_efficiency_per_pulse`` when it is measured.
BS_EFFICIENCY_PER_PULSE = 0.95
#: Starting ATT of the kinetic-model fit (s), as in the reference tools (BASIL).
ATT_START_S = {"PCASL": 1.3, "CASL": 1.3, "PASL": 0.7}
#: Fit bounds: CBF (ml/100g/min) and ATT (s).
CBF_BOUNDS = (0.0, 300.0)
ATT_BOUNDS = (0.0, 5.0)
#: Bounds of the optional arterial component: aBV (%) and aBAT (s).
ABV_BOUNDS = (0.0, 10.0)
ABAT_BOUNDS = (0.0, 5.0)

#: Tissue properties for reference-region calibration (3 T). T1 and T2 in s; ``pc`` is the
#: tissue/blood water partition coefficient (water content of the tissue over that of blood,
#: 0.87 ml/ml), as used by BASIL/oxford_asl ``asl_calib`` (Chappell et al., MRM 2010; Herscovitch
#: and Raichle, JCBFM 1985 for the partition coefficients). Literature approximations: override
#: them when your protocol has better values.
#: ``t2star_s``: T2* for gradient-echo / EPI readouts, the values oxford_asl's ``asl_calib
#: --t2star`` uses at 3 T (CSF 400 ms, WM 50 ms, GM 60 ms; blood 50 ms: the constant below).
REFERENCE_TISSUES: dict[str, dict[str, float]] = {
    "csf": {"t1_s": 4.3, "t2_s": 0.750, "t2star_s": 0.400, "pc": 1.15},
    "wm": {"t1_s": 1.0, "t2_s": 0.050, "t2star_s": 0.050, "pc": 0.82},
    "gm": {"t1_s": 1.3, "t2_s": 0.100, "t2star_s": 0.060, "pc": 0.98},
}
#: T2 of arterial blood at 3 T (s), for the echo-time correction of reference-region M0.
T2_BLOOD_S = 0.150
#: T2* of arterial blood at 3 T (s) (asl_calib --t2star).
T2STAR_BLOOD_S = 0.050


def t1_blood_for_field(field_strength_t: float | None, path: str | PathLike | None = None) -> float:
    """T1 of arterial blood (s) for a field strength (T): 1.65 s at 3 T, 1.35 s at 1.5 T.

    Raises
    ------
    InputError
        Field strength missing or not 1.5/3 T (pass ``t1_blood_s`` explicitly then).
    """
    if field_strength_t is None:
        raise InputError(
            path,
            "MagneticFieldStrength",
            "missing: needed to choose T1 of blood; add it to the sidecar or pass --t1-blood",
        )
    for b0, t1 in T1_BLOOD_BY_FIELD_S.items():
        if abs(field_strength_t - b0) < 0.2:
            return t1
    raise InputError(
        path,
        "MagneticFieldStrength",
        f"{field_strength_t} T has no published "
        "default T1 of blood here (1.5 T and 3 T do); pass --t1-blood",
    )


def background_suppression_factor(
    background_suppression: bool,
    n_pulses: int | None,
    efficiency_per_pulse: float = BS_EFFICIENCY_PER_PULSE,
) -> float:
    """Multiplicative loss of labelling efficiency from background suppression.

    ``efficiency_per_pulse ** n_pulses`` (1 without background suppression). With background
    suppression but an unknown number of pulses, 1 is returned and the caller should warn.
    """
    if not background_suppression or not n_pulses:
        return 1.0
    return float(efficiency_per_pulse**n_pulses)


#: Default FWHM (mm) of the Gaussian smoothing of a voxelwise M0: none. M0 is acquired with the
#: ASL readout on the same grid, so dividing dM by M0 voxel by voxel cancels coil sensitivity
#: and readout T2/T2* weighting exactly, and its SNR (no subtraction) is far above that of dM;
#: smoothing would trade a negligible noise gain for partial-volume bias at the brain edge
#: (CSF/skull), which needs erosion and extrapolation to undo. The reference tools differ:
#: ExploreASL treats M0 as a smooth bias field and smooths it strongly after masking and
#: extrapolation; oxford_asl/BASIL's voxelwise calibration works on the M0 image with an edge
#: correction (docs/asl.md; neither reproduced here). Use --m0-fwhm for noisy M0 scans
#: (e.g. a single low-resolution M0 volume); the smoothing is normalised inside the M0 region.
M0_FWHM_MM = 0.0

#: Iteration limit of the kinetic-model fit. Smooth optima converge in 5-20 trials; what runs
#: longer is almost always creeping towards a kink of the model, which is finished explicitly
#: (see ``ASLModel._snap_kinks``), so a higher limit only costs time.
MAX_ITER = 50
