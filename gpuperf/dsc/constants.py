"""Published defaults of DSC quantification that options declare (:mod:`gpuperf.dsc.options`),
defined once here so that the options import without NumPy; the modules that use them
(:mod:`gpuperf.dsc.aif`, :mod:`~gpuperf.dsc.osvd`, :mod:`~gpuperf.dsc.leakage`,
:mod:`~gpuperf.dsc.deconvolution`) take them from here."""

from __future__ import annotations

#: Automatic AIF (Mouridsen et al., MRM 55:524, 2006): candidates have an AUC above this
#: percentile, the rougher ones above :data:`ROUGHNESS_PERCENTILE` are dropped, then k-means.
AUC_PERCENTILE = 90.0
ROUGHNESS_PERCENTILE = 75.0
N_CLUSTERS = 5

#: Wu (2003) oSVD sweep: 5 % .. 95 % of s_max in steps of 5 %.
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: Oscillation-index limit of the reference toolboxes.
DEFAULT_OI_LIMIT = 0.035

#: Quadratures of the convolution integral (:func:`gpuperf.dsc.deconvolution.toeplitz_matrix`);
#: ``rectangle`` is the toolboxes' (and the default, taken by every method).
DISCRETISATIONS = ("rectangle", "trapezoid", "volterra")

#: Bidirectional leakage: the residue tail fitted starts this long after Tmax (s); the option
#: ``DSCOptions.leakage_tail_s``.
TAIL_S = 30.0
