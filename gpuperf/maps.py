"""The one table of output maps: name, units, description and how to show it.

``<prefix>_<name>.nii.gz`` and its sidecar take ``Units`` and ``Description`` from here
(:func:`get`), and the QC report takes the label, display range and colour map from the same
entry. A new map is one :func:`register` call (or one line in :data:`MAPS`) next to the code
that computes it; writing a map that is not in the table is an error, so a name cannot drift
between the writer, the sidecar and the report.

Display ranges are fixed so that a CBF of 60 ml/100g/min has the same colour in every report;
they apply only when a map's sidecar units equal the units the range was chosen for (relative
maps and unknown units get a range from the data).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapSpec:
    """One output map.

    Attributes
    ----------
    name : str
        The ``<name>`` of ``<prefix>_<name>.nii.gz``.
    units : str
        Units written to the sidecar ("1" for dimensionless, "a.u." for arbitrary units).
    description : str
        Sidecar ``Description`` (the formula or meaning, with its reference).
    label : str
        Short human name for the report ("CBF").
    vmin, vmax : float or None
        Fixed display range (in ``units``), or None for a range from the data.
    cmap : str
        Matplotlib colour map name.
    symmetric : bool
        Range from the data symmetric about zero (signed maps such as K2).
    categorical : bool
        Integer codes (status maps): no interpolation, discrete colour bar.
    """

    name: str
    units: str
    description: str
    label: str
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "viridis"
    symmetric: bool = False
    categorical: bool = False


_CBF = "ml/100g/min"

#: Map name -> spec, in the order the report shows them.
MAPS: dict[str, MapSpec] = {}


def register(spec: MapSpec) -> MapSpec:
    """Add a map to the table (re-registering an identical spec is allowed)."""
    old = MAPS.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"map {spec.name!r} is registered already with another spec")
    MAPS[spec.name] = spec
    return spec


def _relative(of: str, vmax: float, cmap: str) -> MapSpec:
    """``r<of>``: map ``<of>`` divided by its mean over the reference mask (dimensionless)."""
    quantity = of.upper()
    return MapSpec(
        f"r{of}",
        "1",
        f"{quantity} relative to the mean {quantity} of the reference mask",
        f"r{quantity}",
        0.0,
        vmax,
        cmap,
    )


def _diagnostic(
    name: str, units: str, description: str, label: str, vmax: float | None = None
) -> MapSpec:
    """A map that describes the computation rather than the tissue (standard errors,
    residuals, the threshold used): the cividis colour map, shown from 0 to ``vmax`` when
    given, else with a range from the data."""
    return MapSpec(name, units, description, label, None if vmax is None else 0.0, vmax, "cividis")


def _stderr(
    param: str, units: str, label: str, vmax: float | None = None, of: str | None = None
) -> MapSpec:
    """``<param>_stderr``: the standard error of a fitted map (``of`` names the quantity in
    the description; default its ``label``)."""
    return _diagnostic(
        f"{param}_stderr",
        units,
        f"Standard error of {of or label}",
        f"{label} standard error",
        vmax,
    )


for _spec in (
    # DSC (Ostergaard 1996; Wu 2003; Boxerman 2006)
    MapSpec("cbf", _CBF, "Cerebral blood flow", "CBF", 0.0, 100.0, "inferno"),
    MapSpec(
        "cbv",
        "ml/100g",
        "Cerebral blood volume: 100 (kH/rho) int C_t / int C_a",
        "CBV",
        0.0,
        8.0,
        "inferno",
    ),
    _relative("cbv", 6.0, "inferno"),
    _relative("cbf", 6.0, "inferno"),
    _relative("mtt", 3.0, "viridis"),
    _relative("att", 3.0, "viridis"),
    MapSpec(
        "mtt",
        "s",
        "Mean transit time: 60 CBV / CBF (central volume theorem)",
        "MTT",
        0.0,
        12.0,
        "viridis",
    ),
    MapSpec(
        "tmax",
        "s",
        "Time of the maximum of the deconvolved residue r(t), from the first frame",
        "Tmax",
        0.0,
        10.0,
        "magma",
    ),
    MapSpec("ttp", "s", "Time to peak of the tissue dR2* curve, from the first frame", "TTP"),
    MapSpec(
        "delay",
        "s",
        "Bolus arrival delay of the tissue relative to the AIF",
        "Bolus delay",
        0.0,
        10.0,
        "magma",
    ),
    MapSpec(
        "k2",
        "1/s",
        "BSW leakage K2 (>0: T1 leakage, <0: T2* leakage)",
        "K2 (leakage)",
        cmap="RdBu_r",
        symmetric=True,
    ),
    MapSpec(
        "kep",
        "1/s",
        "Efflux rate of the bidirectional leakage correction, K2 exp(-kep t) in the residue "
        "(Bjornerud et al., JCBFM 31:2041, 2011)",
        "kep (efflux)",
        0.0,
        0.05,
        "viridis",
    ),
    _diagnostic(
        "threshold",
        "1",
        "Relative SVD threshold used (fraction of s_max; mu/s_max for Tikhonov)",
        "SVD threshold",
    ),
    _diagnostic(
        "oi", "1", "Oscillation index (Wu 2003) of the chosen oSVD residue", "Oscillation index"
    ),
    # ASL (Alsop 2015; Buxton 1998)
    MapSpec("att", "s", "Arterial transit time", "ATT", 0.0, 3.0, "viridis"),
    MapSpec(
        "cbf_gm",
        _CBF,
        "Grey-matter CBF, partial-volume corrected (linear regression, Asllani et al. 2008)",
        "GM CBF (PVC)",
        0.0,
        100.0,
        "inferno",
    ),
    MapSpec(
        "cbf_wm",
        _CBF,
        "White-matter CBF, partial-volume corrected (linear regression, Asllani et al. 2008)",
        "WM CBF (PVC)",
        0.0,
        60.0,
        "inferno",
    ),
    MapSpec("abv", "%", "Arterial blood volume (macrovascular component)", "aBV", cmap="inferno"),
    MapSpec(
        "abat",
        "s",
        "Arterial bolus arrival time (macrovascular component)",
        "aBAT",
        0.0,
        3.0,
        "viridis",
    ),
    _stderr("cbf", _CBF, "CBF", 25.0),
    _stderr("att", "s", "ATT", 0.5),
    _stderr("abv", "%", "aBV"),
    _stderr("abat", "s", "aBAT"),
    _diagnostic(
        "residual", "a.u.", "RMS fit residual in signal units of the series", "Fit residual"
    ),
    # DSC --method parametric (Mouridsen et al., JCBFM 34:1511, 2014)
    MapSpec(
        "cth",
        "s",
        "Capillary transit-time heterogeneity: SD of the gamma transit-time distribution, "
        "MTT / sqrt(shape) (Jespersen & Ostergaard, JCBFM 32:264, 2012)",
        "CTH",
        0.0,
        8.0,
        "viridis",
    ),
    _stderr("mtt", "s", "MTT", 2.0),
    _stderr("delay", "s", "Delay", 1.0, of="the bolus delay"),
    _diagnostic(
        "chi2",
        "(1/s)^2",
        "Sum of squared residuals of the model fit (dR2* units squared)",
        "Fit chi2",
    ),
    MapSpec("s0", "a.u.", "Pre-bolus baseline signal S0", "S0 (baseline signal)", cmap="gray"),
    MapSpec("m0", "a.u.", "Equilibrium magnetisation M0 used for calibration", "M0", cmap="gray"),
    # every modality
    MapSpec(
        "status",
        "1",
        "Per-voxel status flags (bit field, 0 = OK; see gpuperf.status)",
        "Status flags",
        cmap="tab10",
        categorical=True,
    ),
):
    register(_spec)


def get(name: str) -> MapSpec:
    """The spec of a map; raises KeyError naming the known maps for an unknown name."""
    try:
        return MAPS[name]
    except KeyError:
        known = ", ".join(MAPS)
        raise KeyError(f"map {name!r} is not in gpuperf.maps.MAPS; known: {known}") from None


def order() -> tuple[str, ...]:
    """Map names in the order the report shows them."""
    return tuple(MAPS)
