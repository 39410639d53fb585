"""Per-voxel status flags of the DSC pipeline (bit field, 0 = fitted normally).

Bad voxels never stop a run: they are flagged here and their maps are NaN (input problems)
or kept but marked (fit problems), so that a user can see *why* a voxel is missing.
"""

from __future__ import annotations

#: Everything went as planned.
OK = 0
#: At least one frame of the signal is <= 0: ln(S/S0) is undefined there.
NONPOSITIVE_SIGNAL = 1
#: At least one frame is NaN or infinite.
NONFINITE_SIGNAL = 2
#: The pre-bolus baseline S0 is not a usable positive number.
NO_BASELINE = 4
#: oSVD: no threshold gave an oscillation index below the limit; the highest threshold is used.
OSVD_NO_PASS = 8
#: The deconvolved residue has no positive maximum (CBF <= 0), so MTT is undefined (NaN).
NONPOSITIVE_FLOW = 16

#: Flags that make every map of the voxel NaN (the input itself is unusable).
INPUT_FLAGS = NONPOSITIVE_SIGNAL | NONFINITE_SIGNAL | NO_BASELINE

DESCRIPTIONS = {
    NONPOSITIVE_SIGNAL: "signal <= 0 in at least one frame",
    NONFINITE_SIGNAL: "signal NaN or infinite in at least one frame",
    NO_BASELINE: "no usable pre-bolus baseline (S0 <= 0 or not finite)",
    OSVD_NO_PASS: "oSVD: no threshold met the oscillation-index limit (highest threshold used)",
    NONPOSITIVE_FLOW: "residue maximum <= 0: CBF <= 0 and MTT undefined",
}


def describe() -> dict[str, str]:
    """Bit value -> meaning, for the JSON sidecar of the status map."""
    return {str(bit): text for bit, text in DESCRIPTIONS.items()}
