"""From ASL volumes to the samples a model sees: control - label differences and M0.

Steps (each a function, all vectorised over voxels):

1. :func:`difference_samples` -- pairwise control - label subtraction in acquisition order within
   each (PLD, tau) group, plus ``deltam`` volumes used as they are.
2. :func:`average_per_pld` -- mean over repeats of each (PLD, tau), for inspecting the data;
   the pipelines keep the repeats: the kinetic-model fit uses each one (its residual-based
   noise estimate has more degrees of freedom) and the single-PLD formula, linear in dM,
   averages its per-repeat values (:meth:`gpuperf.asl.model.ASLModel.fit`).
3. :func:`short_tr_factor`, :func:`reference_region_m0_blood` -- M0.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from gpuperf.asl.constants import REFERENCE_TISSUES, T2_BLOOD_S, T2STAR_BLOOD_S
from gpuperf.errors import InputError
from gpuperf.io.nifti import gather


def readout_relaxation(
    scanning_sequence: str | None, pulse_sequence_type: str | None, acquisition_type: str | None
) -> tuple[str, str]:
    """Which transverse relaxation weights the M0 echo: ``("T2", why)`` or ``("T2*", why)``.

    Spin-echo readouts (3D GRASE, FSE/TSE stacks of spirals, spin-echo EPI) refocus static
    dephasing, so the echo decays with T2; gradient-echo readouts (2D GRE-EPI, the usual 2D
    ASL readout) decay with T2* (Alsop et al. 2015; asl_calib --t2star). From the BIDS fields
    ``PulseSequenceType``, ``ScanningSequence`` (DICOM 0018,0020: SE, GR, EP, IR, RM) and,
    failing those, ``MRAcquisitionType`` (2D: GRE-EPI, 3D: GRASE/FSE).
    """
    pst = (pulse_sequence_type or "").lower().replace(" ", "")
    seq = {s.strip().upper() for s in (scanning_sequence or "").replace("/", "\\").split("\\")}
    if any(k in pst for k in ("grase", "fse", "tse", "spinecho", "rare")):
        return "T2", f"PulseSequenceType {pulse_sequence_type}: spin-echo readout"
    if "SE" in seq:
        return "T2", f"ScanningSequence {scanning_sequence}: spin echo"
    if "GR" in seq or "EP" in seq or "epi" in pst or "gre" in pst:
        why = (
            f"ScanningSequence {scanning_sequence}"
            if scanning_sequence
            else f"PulseSequenceType {pulse_sequence_type}"
        )
        return "T2*", f"{why}: gradient-echo readout"
    if (acquisition_type or "").upper() == "3D":
        return "T2", "MRAcquisitionType 3D (3D ASL readouts are GRASE or FSE: spin echo)"
    if (acquisition_type or "").upper() == "2D":
        return "T2*", "MRAcquisitionType 2D (2D ASL readouts are gradient-echo EPI)"
    return "T2", "readout unknown (no ScanningSequence/PulseSequenceType/MRAcquisitionType)"


def smooth_m0(m0: np.ndarray, fwhm_mm: float, voxel_mm: tuple[float, ...]) -> np.ndarray:
    """Gaussian smoothing of a voxelwise M0 (X, Y, Z), normalised inside its support.

    ``smooth(M0 * R) / smooth(R)`` with R the finite, positive M0 voxels: background does not
    leak in at the brain edge (normalised convolution). Voxels outside R keep their value.
    ``fwhm_mm`` 0 returns the input.
    """
    if fwhm_mm <= 0:
        return m0
    from scipy.ndimage import gaussian_filter

    sigma = [fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / float(v) for v in voxel_mm[:3]]
    region = np.isfinite(m0) & (m0 > 0)
    num = gaussian_filter(np.where(region, m0, 0.0).astype(np.float64), sigma, mode="constant")
    den = gaussian_filter(region.astype(np.float64), sigma, mode="constant")
    out = np.array(m0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[region] = num[region] / den[region]
    return out.astype(m0.dtype)


@dataclass
class DifferenceSamples:
    """Difference signals and their timing.

    Attributes
    ----------
    deltam : ndarray (V, K)
        Control - label (or deltam volumes), signal units of the series.
    pld_s : ndarray (K,)
    tau_s : ndarray (K,)
    source_volumes : list of tuple
        Volume indices each sample comes from ((control, label) or (deltam,)).
    """

    deltam: np.ndarray
    pld_s: np.ndarray
    tau_s: np.ndarray
    source_volumes: list[tuple[int, ...]]


def pair_control_label(
    volume_types: list[str], pld_s: np.ndarray, tau_s: np.ndarray, path: str | PathLike | None
) -> list[tuple[int, int]]:
    """Pair control and label volumes in acquisition order.

    Within each (PLD, tau) group the k-th control is paired with the k-th label, which handles
    control-first and label-first interleaving as well as blocked orders (all labels, then all
    controls). A group with unequal numbers of controls and labels is an error.

    Returns
    -------
    list of (control_index, label_index), ordered by the earlier volume of each pair.
    """
    pld_s = np.asarray(pld_s, dtype=np.float64)
    tau_s = np.asarray(tau_s, dtype=np.float64)
    groups: dict[tuple[float, float], dict[str, list[int]]] = {}
    for i, v in enumerate(volume_types):
        if v not in ("control", "label"):
            continue
        key = (round(float(pld_s[i]), 6), round(float(np.nan_to_num(tau_s[i], nan=-1.0)), 6))
        groups.setdefault(key, {"control": [], "label": []})[v].append(i)
    pairs = []
    for (pld, tau), g in groups.items():
        nc, nl = len(g["control"]), len(g["label"])
        if nc != nl:
            raise InputError(
                path,
                "volume_type",
                f"PLD {pld:g} s (tau {tau:g} s) has {nc} "
                f"control and {nl} label volumes; they must pair up",
            )
        pairs.extend(zip(g["control"], g["label"], strict=True))
    return sorted(pairs, key=lambda cl: min(cl))


def difference_samples(
    data: np.ndarray,
    volume_types: list[str],
    pld_s: np.ndarray,
    tau_s: np.ndarray,
    path: str | PathLike | None = None,
    mask: np.ndarray | None = None,
) -> DifferenceSamples:
    """Control - label differences and deltam volumes of gathered voxels.

    Parameters
    ----------
    data : ndarray (V, T), or (X, Y, Z, T) with ``mask``
        Gathered series (one row per voxel), or the whole series.
    volume_types : list of str (T,)
    pld_s, tau_s : ndarray (T,)
        Per-volume PLD (TI for PASL) and labelling/bolus duration, s.
    path : path-like, optional
        Named in errors.
    mask : ndarray of bool (X, Y, Z), optional
        With the whole series: the differences are taken between whole volumes (contiguous
        in a Fortran-ordered series, as NIfTI data are read) and only the K sample volumes
        are gathered (:func:`gpuperf.io.nifti.gather`), not the T of the series. The same
        subtractions of the same values: the samples are identical to gathering first.

    Returns
    -------
    DifferenceSamples
        Samples in acquisition order (of the pair's first volume).
    """
    pairs = pair_control_label(volume_types, pld_s, tau_s, path)
    entries: list[tuple[int, tuple[int, ...]]] = [(min(c, lab), (c, lab)) for c, lab in pairs]
    entries += [(i, (i,)) for i, v in enumerate(volume_types) if v == "deltam"]
    entries.sort()
    if not entries:
        raise InputError(
            path, "volume_type", "no control/label pair and no deltam volume: nothing to quantify"
        )
    src = [vols for _, vols in entries]
    first = [vols[0] for vols in src]
    paired = [k for k, vols in enumerate(src) if len(vols) == 2]
    if mask is not None:
        out_dtype = np.result_type(data.dtype, np.float32)
        volumes = np.empty((*mask.shape, len(src)), dtype=out_dtype, order="F")
        for k, vols in enumerate(src):
            if len(vols) == 2:
                np.subtract(data[..., vols[0]], data[..., vols[1]], out=volumes[..., k])
            else:
                volumes[..., k] = data[..., vols[0]]
        return DifferenceSamples(
            np.ascontiguousarray(gather(volumes, mask), dtype=np.float32),
            np.asarray(pld_s, dtype=np.float64)[first],
            np.asarray(tau_s, dtype=np.float64)[first],
            src,
        )
    # one take of the first volumes, one subtraction of the second (not a column at a time)
    deltam = np.take(data, first, axis=1)
    second = np.take(data, [src[k][1] for k in paired], axis=1)
    if len(paired) == len(src):
        np.subtract(deltam, second, out=deltam)
    elif paired:
        deltam[:, paired] = deltam[:, paired] - second
    return DifferenceSamples(
        np.ascontiguousarray(deltam, dtype=np.float32),
        np.asarray(pld_s, dtype=np.float64)[first],
        np.asarray(tau_s, dtype=np.float64)[first],
        src,
    )


def average_per_pld(
    deltam: np.ndarray, pld_s: np.ndarray, tau_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the repeats of each (PLD, tau).

    Returns
    -------
    mean : ndarray (V, U)
    pld_s, tau_s : ndarray (U,), sorted by PLD
    n_repeats : ndarray (U,) int
    """
    keys = np.round(np.stack([pld_s, np.nan_to_num(tau_s, nan=-1.0)], axis=1), 6)
    uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    onehot = np.zeros((deltam.shape[1], uniq.shape[0]), dtype=np.float64)
    onehot[np.arange(deltam.shape[1]), inverse] = 1.0 / counts[inverse]
    mean = (deltam.astype(np.float64) @ onehot).astype(np.float32)
    first = [int(np.flatnonzero(inverse == u)[0]) for u in range(uniq.shape[0])]
    return mean, pld_s[first], tau_s[first], counts


def short_tr_factor(tr_s: float | None, t1_s: float) -> float:
    """Saturation-recovery factor ``1 - exp(-TR/T1)`` of an M0 scan (1 when TR is unknown).

    An M0 scan with repetition time TR recovers to ``M0 (1 - e^{-TR/T1})`` (Alsop et al. 2015,
    "M0 acquired with short TR"); dividing by this factor restores the equilibrium M0. Applied for
    every known TR: for TR > 5 T1 the factor is > 0.993 and the correction is harmless.
    """
    if tr_s is None:
        return 1.0
    return float(-np.expm1(-tr_s / t1_s))


def reference_region_m0_blood(
    m0_ref_values: np.ndarray,
    tissue: str,
    *,
    tr_s: float | None,
    te_s: float | None,
    tissues: dict[str, dict[str, float]] | None = None,
    t2_blood_s: float | None = None,
    path: str | PathLike | None = None,
    relaxation: str = "T2",
) -> tuple[float, dict[str, Any]]:
    """M0 of arterial blood from a reference region (Chappell et al. 2010; Alsop et al. 2015).

    ``M0b = mean(M0_ref) / (1 - e^{-TR/T1_ref}) * e^{TE/T2_ref} / pc_ref * e^{-TE/T2_blood}``

    Parameters
    ----------
    m0_ref_values : ndarray (R,)
        M0 in the reference-region voxels (signal units).
    tissue : {'csf', 'wm', 'gm'}
    tr_s, te_s : float or None
        Repetition and echo time of the M0 scan (corrections skipped when None).
    tissues : dict, optional
        Overrides :data:`REFERENCE_TISSUES`.
    t2_blood_s : float, optional
        Blood T2 (or T2*); default :data:`T2_BLOOD_S` / :data:`T2STAR_BLOOD_S`.
    relaxation : {'T2', 'T2*'}
        The echo's decay (:func:`readout_relaxation`): T2 for spin echo, T2* for
        gradient echo / EPI.

    Returns
    -------
    m0_blood : float
    constants : dict
        Every value used (for the sidecars).
    """
    table = {**REFERENCE_TISSUES, **(tissues or {})}
    key = tissue.lower()
    if key not in table:
        raise InputError(
            path, "m0_ref_tissue", f"expected one of {', '.join(table)}, found {tissue!r}"
        )
    props = table[key]
    vals = np.asarray(m0_ref_values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0 or not vals.mean() > 0:
        raise InputError(
            path, "--m0-ref-mask", "the reference region has no voxel with a positive finite M0"
        )
    if relaxation not in ("T2", "T2*"):
        raise ValueError(f"relaxation must be 'T2' or 'T2*', got {relaxation!r}")
    star = relaxation == "T2*"
    t2_ref = props["t2star_s"] if star else props["t2_s"]
    if t2_blood_s is None:
        t2_blood_s = T2STAR_BLOOD_S if star else T2_BLOOD_S
    tr_corr = short_tr_factor(tr_s, props["t1_s"])
    te_corr = 1.0 if te_s is None else float(np.exp(te_s / t2_ref - te_s / t2_blood_s))
    m0b = float(vals.mean() / tr_corr * te_corr / props["pc"])
    used = {
        "ReferenceTissue": key,
        "ReferenceMeanM0": float(vals.mean()),
        "ReferenceVoxels": int(vals.size),
        "ReferenceT1Seconds": props["t1_s"],
        "EchoDecay": relaxation,
        ("ReferenceT2StarSeconds" if star else "ReferenceT2Seconds"): t2_ref,
        "ReferencePartitionCoefficient": props["pc"],
        ("BloodT2StarSeconds" if star else "BloodT2Seconds"): t2_blood_s,
        "ShortTRFactor": tr_corr,
        "EchoTimeFactor": te_corr,
        "M0Blood": m0b,
    }
    return m0b, used
