"""BIDS ASL phantoms with known truth maps (``gpuperf simulate asl``).

A phantom is a small 3D grid whose CBF varies along x (10-100 ml/100g/min) and ATT along y
(0.5-2.2 s), surrounded by a one-voxel background border (M0 = 0, outside the mask). Signals
come from the model gpuperf fits (the float64 NumPy twin of the Buxton kinetic model) for
``kind='pcasl'`` and ``'pasl'``, and from the consensus single-PLD assumptions (label decaying
with T1 of blood, all label delivered: Alsop et al. 2015) for ``kind='single'``, so that
noise-free phantoms are recovered exactly by the matching method.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.asl import constants as K
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL
from gpuperf.io.outputs import OutputWriter

KINDS = ("pcasl", "pasl", "single")

#: Default timings of each phantom kind.
PCASL_PLDS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
PCASL_TAU_S = 1.8
PASL_TIS_S = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
PASL_TI1_S = 0.8
SINGLE_PLD_S = 1.8
#: Equilibrium M0 of tissue inside the phantom (signal units).
M0_TISSUE = 1000.0
#: Repetition time of the phantom's M0 scan (s): short, so the correction matters.
M0_TR_S = 4.0


def truth_grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth maps of a phantom: (cbf, att, mask), each of ``shape``; NaN/False on the border."""
    nx, ny, nz = shape
    cbf = np.full(shape, np.nan)
    att = np.full(shape, np.nan)
    mask = np.zeros(shape, dtype=bool)
    ix, iy = nx - 2, ny - 2
    cbf_line = np.linspace(10.0, 100.0, max(ix, 1))
    att_line = np.linspace(0.5, 2.2, max(iy, 1))
    cbf[1:-1, 1:-1, :] = cbf_line[:, None, None]
    att[1:-1, 1:-1, :] = att_line[None, :, None]
    mask[1:-1, 1:-1, :] = True
    return cbf, att, mask


def _affine(voxel_mm: float = 3.0) -> np.ndarray:
    return np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])


def write_phantom(
    out_dir: str | PathLike,
    kind: str = "pcasl",
    *,
    shape: tuple[int, int, int] = (22, 22, 2),
    repeats: int = 2,
    noise_sd: float = 0.0,
    seed: int = 0,
    alpha: float | None = None,
    t1_tissue_s: float = K.T1_TISSUE_S,
    field_strength_t: float = 3.0,
    label_first: bool = False,
    subject: str = "phantom",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a BIDS ASL phantom and its truth maps.

    Parameters
    ----------
    out_dir : path-like
        Folder to write into (created).
    kind : {'pcasl', 'pasl', 'single'}
        Multi-PLD pCASL (M0Type Separate), multi-TI PASL with QUIPSS II (M0Type Included), or
        single-PLD pCASL (M0Type Separate).
    shape : (int, int, int)
        Grid, including a one-voxel background border.
    repeats : int
        Control/label pairs per PLD.
    noise_sd : float
        Gaussian noise SD added to every control and label volume (signal units; M0 is 1000).
    seed : int
    alpha : float, optional
        Labelling efficiency written to ``LabelingEfficiency`` (default: the type's default).
    label_first : bool
        Acquire label before control in each pair (pairing must not depend on it).

    Returns
    -------
    dict
        Paths: ``asl``, ``asl_json``, ``aslcontext``, ``m0`` (or None), ``mask``, ``truth_cbf``,
        ``truth_att``; and ``plds_s``, ``kind``.
    """
    import nibabel as nib

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(out_dir)
    base = f"sub-{subject}"
    paths = {
        "asl": out / f"{base}_asl.nii.gz",
        "asl_json": out / f"{base}_asl.json",
        "aslcontext": out / f"{base}_aslcontext.tsv",
        "mask": out / f"{base}_mask.nii.gz",
        "truth_cbf": out / f"{base}_truth-cbf.nii.gz",
        "truth_att": out / f"{base}_truth-att.nii.gz",
    }
    if kind != "pasl":
        paths["m0"] = out / f"{base}_m0scan.nii.gz"
        paths["m0_json"] = out / f"{base}_m0scan.json"
    # all files or none, existing ones only with overwrite (the pipelines' writer)
    writer = OutputWriter(out, "", overwrite=overwrite)
    writer.expect([p.name for p in paths.values()], ext="")

    rng = np.random.default_rng(seed)
    ltype = "PASL" if kind == "pasl" else "PCASL"
    alpha = K.ALPHA_BY_TYPE[ltype] if alpha is None else float(alpha)
    t1b = K.t1_blood_for_field(field_strength_t)
    lam = K.LAMBDA_ML_G
    cbf, att, mask = truth_grid(shape)
    cbf_v, att_v = cbf[mask], att[mask]
    if kind == "pcasl":
        plds = np.array(PCASL_PLDS_S)
        tau = np.full(plds.size, PCASL_TAU_S)
        x = np.stack([tau + plds, tau], axis=1)
        dm_m0, _ = BUXTON_PCASL.evaluate(
            np, np.stack([cbf_v, att_v], 1), x, (t1_tissue_s, t1b, lam, alpha)
        )
    elif kind == "pasl":
        plds = np.array(PASL_TIS_S)
        tau = np.full(plds.size, PASL_TI1_S)
        dm_m0, _ = BUXTON_PASL.evaluate(
            np,
            np.stack([cbf_v, att_v], 1),
            np.stack([plds, tau], 1),
            (t1_tissue_s, t1b, lam, alpha),
        )
    else:
        plds = np.array([SINGLE_PLD_S])
        tau = np.array([PCASL_TAU_S])
        f = cbf_v / 6000.0
        # Consensus assumptions (Alsop 2015): all label delivered, decaying with T1 of blood.
        dm_m0 = 2 * alpha * t1b * (f[:, None] / lam) * np.exp(-plds / t1b) * -np.expm1(-tau / t1b)
    m0 = np.zeros(shape)
    m0[mask] = M0_TISSUE
    # Control = M0 (no background suppression), label = control - dM; dM = M0 * dm_m0.
    vols, types, pld_list, tau_list = [], [], [], []
    n_pld = plds.size
    for _rep in range(repeats):
        for k in range(n_pld):
            ctrl = m0.copy()
            lab = m0.copy()
            lab[mask] -= M0_TISSUE * dm_m0[:, k]
            pair = (
                [("label", lab), ("control", ctrl)]
                if label_first
                else [("control", ctrl), ("label", lab)]
            )
            for vt, vol in pair:
                vols.append(vol)
                types.append(vt)
                pld_list.append(float(plds[k]))
                tau_list.append(float(tau[k]))
    m0_stored = M0_TISSUE * -np.expm1(-M0_TR_S / t1_tissue_s)
    if kind == "pasl":  # M0 included at the start of the series
        m0vol = np.where(mask, m0_stored, 0.0)
        vols = [m0vol, m0vol] + vols
        types = ["m0scan", "m0scan"] + types
        pld_list = [0.0, 0.0] + pld_list
        tau_list = [PASL_TI1_S, PASL_TI1_S] + tau_list
    series = np.stack(vols, axis=-1)
    if noise_sd > 0:
        series = series + rng.normal(0.0, noise_sd, series.shape)
    aff = _affine()
    staged = {"asl": nib.Nifti1Image(series.astype(np.float32), aff)}
    meta: dict[str, Any] = {
        "ArterialSpinLabelingType": ltype,
        "MagneticFieldStrength": field_strength_t,
        "PostLabelingDelay": pld_list if n_pld > 1 or kind == "pasl" else float(plds[0]),
        "BackgroundSuppression": False,
        "LabelingEfficiency": alpha,
        "TotalAcquiredPairs": repeats * n_pld,
        "RepetitionTimePreparation": M0_TR_S,
        "SimulatedBy": "gpuperf.asl.simulate.write_phantom",
        "SimulatedNoiseSD": noise_sd,
        "SimulatedT1TissueSeconds": t1_tissue_s,
    }
    if kind == "pasl":
        meta.update(
            {
                "M0Type": "Included",
                "BolusCutOffFlag": True,
                "BolusCutOffTechnique": "QUIPSSII",
                "BolusCutOffDelayTime": PASL_TI1_S,
            }
        )
    else:
        meta.update({"M0Type": "Separate", "LabelingDuration": PCASL_TAU_S})
    if "m0" in paths:
        m0img = np.where(mask, m0_stored, 0.0)
        if noise_sd > 0:
            m0img = m0img + rng.normal(0.0, noise_sd, m0img.shape)
        staged["m0"] = nib.Nifti1Image(m0img.astype(np.float32), aff)
    staged["mask"] = nib.Nifti1Image(mask.astype(np.uint8), aff)
    staged["truth_cbf"] = nib.Nifti1Image(cbf.astype(np.float32), aff)
    staged["truth_att"] = nib.Nifti1Image(att.astype(np.float32), aff)
    with writer:
        for key, img in staged.items():
            writer.add_image(paths[key].name, img)
        writer.add_json(paths["asl_json"].name, meta)
        context = "volume_type\n" + "\n".join(types) + "\n"
        writer.add_file(paths["aslcontext"].name, lambda tmp: tmp.write_text(context), "")
        if "m0" in paths:
            writer.add_json(paths["m0_json"].name, {"RepetitionTimePreparation": M0_TR_S})
        writer.commit()
    result: dict[str, Any] = {k: v for k, v in paths.items()}
    result.setdefault("m0", None)
    result["plds_s"] = plds.tolist()
    result["kind"] = kind
    return result
