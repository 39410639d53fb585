"""A simulated multiple-sclerosis ASL perfusion study with known effects
(``gpuperf simulate study``).

A BIDS dataset of controls and patients, single-PLD pCASL with a separate M0 scan (quantified
exactly by the consensus formula, Alsop et al. 2015), and a derivatives folder of masks as a
structural pipeline would give them on the ASL grid: ``desc-brain``, ``desc-NAWM``,
``desc-NAGM``, ``desc-lesion`` and ``desc-enhancing`` masks and ``label-GM`` / ``label-WM``
probabilistic segmentations (``*_probseg``).

Each slice runs from a cortex-like grey-matter band (x small) through a band of GM/WM mixtures
into white matter (x large); the position of the boundary moves with y, so the mixtures vary
in two directions (what the partial-volume regression needs). A voxel's CBF is
``P_GM CBF_GM + P_WM CBF_WM``, the rest of the voxel being CSF. The known effects:

- patients' grey- and white-matter CBF is ``1 + patient_effect`` (default -10 %) times the
  controls';
- patients have grey-matter atrophy: ``patient_gm_csf`` CSF in grey-matter voxels instead of
  ``control_gm_csf``, which lowers their uncorrected grey-matter CBF further (the confound that
  partial-volume correction removes);
- each patient has one enhancing lesion (CBF ``enhancing_ratio`` = 1.4 x NAWM) and one
  non-enhancing lesion (``nonenhancing_ratio`` = 0.8 x NAWM) in white matter;
- every subject's CBF is scaled by a factor ``1 + subject_sd z`` with ``z`` symmetric within a
  group (mean exactly 0), so group means carry exactly the effects above; in patients, EDSS
  is a decreasing function of ``z`` (perfusion tracks disability: r < 0).

``truth.json`` at the dataset root records every effect and tissue value.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.asl import constants as K
from gpuperf.cohort.options import StudyOptions
from gpuperf.errors import InputError, OutputExistsError

#: Labelling timings of the simulated acquisition (s).
PLD_S = 1.8
TAU_S = 1.8
M0_TISSUE = 1000.0
M0_TR_S = 6.0
VOXEL_MM = 3.0


@dataclass(frozen=True)
class StudyEffects:
    """Tissue values and effects of the simulated study (see the module docstring)."""

    gm_cbf: float = 60.0
    wm_cbf: float = 22.0
    patient_effect: float = -0.10
    enhancing_ratio: float = 1.4
    nonenhancing_ratio: float = 0.8
    control_gm_csf: float = 0.05
    patient_gm_csf: float = 0.15
    wm_csf: float = 0.03
    subject_sd: float = 0.04


def _fractions(
    shape: tuple[int, int, int], gm_csf: float, wm_csf: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P_GM, P_WM, brain) of one subject."""
    nx, ny, nz = shape
    x = np.arange(nx)[:, None, None].astype(float)
    y = np.arange(ny)[None, :, None].astype(float)
    edge = 0.3 * nx + 1.5 * np.sin(2 * np.pi * y / max(ny, 2))  # GM/WM boundary (voxels)
    width = 0.25 * nx  # mixtures span about a quarter of the slice
    t = np.clip((x - edge) / width + 0.5, 0.0, 1.0) * np.ones((1, 1, nz))  # 0: GM, 1: WM
    gm = (1 - t) * (1 - gm_csf)
    wm = t * (1 - wm_csf) + (1 - t) * 0.0
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, :] = True
    return np.where(brain, gm, 0.0), np.where(brain, wm, 0.0), brain


def _lesions(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(enhancing, non-enhancing) boolean masks: two 2 x 2 x 2 blocks in white matter."""
    nx, ny, nz = shape
    enh = np.zeros(shape, bool)
    non = np.zeros(shape, bool)
    z = slice(0, min(2, nz))
    x1, x2 = nx - 7, nx - 4
    enh[x1 : x1 + 2, 2:4, z] = True
    non[x2 : x2 + 2, ny - 5 : ny - 3, z] = True
    return enh, non


def _dm_over_m0(cbf: np.ndarray, alpha: float, t1b: float) -> np.ndarray:
    """Single-PLD pCASL difference signal of ``cbf`` (consensus assumptions, Alsop 2015)."""
    f = cbf / 6000.0
    return (
        2 * alpha * t1b * (f / K.LAMBDA_ML_G) * math.exp(-PLD_S / t1b) * -math.expm1(-TAU_S / t1b)
    )


def simulate_study(
    out_dir: str | PathLike,
    *,
    shape: tuple[int, int, int] = (24, 16, 3),
    effects: StudyEffects | None = None,
    overwrite: bool = False,
    options: StudyOptions | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Write the simulated study (BIDS dataset + ``derivatives/masks``).

    Parameters
    ----------
    out_dir : path-like
        Dataset root (created). Refused when it holds a ``participants.tsv`` unless
        ``overwrite``.
    shape : (int, int, int)
        ASL grid (3 mm voxels), including a one-voxel background border in x and y.
    effects : StudyEffects, optional
        Tissue values and effects (defaults: the issue's study).
    options : StudyOptions, optional
        ``n_controls``, ``n_patients`` (subjects per group, at least 2 each), ``repeats``
        (control/label pairs), ``noise_sd`` (Gaussian noise SD of every control and label
        volume; M0 of tissue is 1000) and ``seed``
        (:class:`gpuperf.cohort.options.StudyOptions`), or the same as keywords.

    Returns
    -------
    dict
        ``root``, ``masks_dir``, ``participants`` (path), ``truth`` (path) and ``effects``.
    """
    import nibabel as nib
    from scipy import ndimage

    opts = StudyOptions.resolve(options, settings, "simulate_study")
    n_controls, n_patients, noise_sd = opts.n_controls, opts.n_patients, opts.noise_sd
    repeats, seed = opts.repeats, opts.seed
    eff = effects or StudyEffects()
    if shape[0] < 16 or shape[1] < 10 or shape[2] < 1:
        raise InputError(None, "shape", f"must be at least (16, 10, 1), got {shape}")
    root = Path(out_dir)
    if (root / "participants.tsv").exists() and not overwrite:
        raise OutputExistsError(f"{root}: a study exists; pass overwrite=True to replace it")
    masks = root / "derivatives" / "masks"
    rng = np.random.default_rng(seed)
    alpha = K.ALPHA_BY_TYPE["PCASL"]
    t1b = K.t1_blood_for_field(3.0)
    aff = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])

    def z_scores(n: int) -> np.ndarray:
        z = np.linspace(-1.0, 1.0, n) * math.sqrt(3.0)  # mean 0, SD about 1
        return rng.permutation(z)

    subjects = [("control", z) for z in z_scores(n_controls)]
    subjects += [("patient", z) for z in z_scores(n_patients)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "gpuperf simulated MS study", "BIDSVersion": "1.9.0"}, indent=2)
    )
    (masks).mkdir(parents=True, exist_ok=True)
    (masks / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "masks of the simulated MS study",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "gpuperf.cohort.study"}],
            },
            indent=2,
        )
    )
    lines = ["participant_id\tgroup\tage\tsex\tedss"]
    for i, (group, z) in enumerate(subjects, start=1):
        sub = f"{i:02d}"
        patient = group == "patient"
        scale = (1 + eff.subject_sd * z) * (1 + eff.patient_effect if patient else 1.0)
        gm_csf = eff.patient_gm_csf if patient else eff.control_gm_csf
        gm, wm, brain = _fractions(shape, gm_csf, eff.wm_csf)
        cbf = gm * eff.gm_cbf * scale + wm * eff.wm_cbf * scale
        enh, non = _lesions(shape) if patient else (np.zeros(shape, bool),) * 2
        cbf = np.where(enh, eff.enhancing_ratio * cbf, cbf)
        cbf = np.where(non, eff.nonenhancing_ratio * cbf, cbf)
        lesion = enh | non
        # NAWM: (nearly) pure WM, away from lesions (a 3 mm ring excluded, as raters do)
        near = ndimage.binary_dilation(lesion)
        nawm = brain & (wm >= 0.9) & ~lesion & ~near
        nagm = brain & (gm >= 0.5) & ~lesion
        m0 = np.where(brain, M0_TISSUE, 0.0)
        dm = M0_TISSUE * _dm_over_m0(cbf, alpha, t1b) * brain
        vols, types = [], []
        for _ in range(repeats):
            vols += [m0 + rng.normal(0, noise_sd, shape), m0 - dm + rng.normal(0, noise_sd, shape)]
            types += ["control", "label"]
        perf = root / f"sub-{sub}" / "perf"
        perf.mkdir(parents=True, exist_ok=True)
        head = perf / f"sub-{sub}"
        series = np.stack(vols, axis=-1).astype(np.float32)
        nib.Nifti1Image(series, aff).to_filename(f"{head}_asl.nii.gz")
        meta = {
            "ArterialSpinLabelingType": "PCASL",
            "MagneticFieldStrength": 3.0,
            "PostLabelingDelay": PLD_S,
            "LabelingDuration": TAU_S,
            "BackgroundSuppression": False,
            "LabelingEfficiency": alpha,
            "M0Type": "Separate",
            "TotalAcquiredPairs": repeats,
            "RepetitionTimePreparation": M0_TR_S,
            "SimulatedBy": "gpuperf.cohort.study.simulate_study",
        }
        Path(f"{head}_asl.json").write_text(json.dumps(meta, indent=2))
        Path(f"{head}_aslcontext.tsv").write_text("volume_type\n" + "\n".join(types) + "\n")
        m0_stored = m0 * -math.expm1(-M0_TR_S / K.T1_TISSUE_S)
        m0img = m0_stored + rng.normal(0, noise_sd, shape) * brain
        nib.Nifti1Image(m0img.astype(np.float32), aff).to_filename(f"{head}_m0scan.nii.gz")
        Path(f"{head}_m0scan.json").write_text(
            json.dumps({"RepetitionTimePreparation": M0_TR_S}, indent=2)
        )
        anat = masks / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for desc, m in (
            ("brain", brain),
            ("NAWM", nawm),
            ("NAGM", nagm),
            ("lesion", lesion),
            ("enhancing", enh),
        ):
            if desc in ("lesion", "enhancing") and not patient:
                continue
            img = nib.Nifti1Image(m.astype(np.uint8), aff)
            img.to_filename(str(anat / f"sub-{sub}_desc-{desc}_mask.nii.gz"))
        for label, p in (("GM", gm), ("WM", wm)):
            img = nib.Nifti1Image(p.astype(np.float32), aff)
            img.to_filename(str(anat / f"sub-{sub}_label-{label}_probseg.nii.gz"))
        age = int(rng.integers(25, 55))
        sex = "F" if rng.uniform() < 0.6 else "M"
        edss = f"{max(0.0, round((3.0 - 1.5 * z) * 2) / 2):.1f}" if patient else "n/a"
        lines.append(f"sub-{sub}\t{group}\t{age}\t{sex}\t{edss}")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    (root / "participants.json").write_text(
        json.dumps(
            {
                "group": {"Description": "control or patient (multiple sclerosis)"},
                "age": {"Description": "age", "Units": "year"},
                "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
                "edss": {"Description": "Expanded Disability Status Scale (patients)"},
            },
            indent=2,
        )
    )
    truth = {
        **asdict(eff),
        "n_controls": n_controls,
        "n_patients": n_patients,
        "shape": list(shape),
        "noise_sd": noise_sd,
        "repeats": repeats,
        "seed": seed,
        "note": "group means of the subject factors are exactly 1; see gpuperf.cohort.study",
    }
    (root / "truth.json").write_text(json.dumps(truth, indent=2))
    (root / ".bidsignore").write_text("truth.json\n")
    return {
        "root": root,
        "masks_dir": masks,
        "participants": root / "participants.tsv",
        "truth": root / "truth.json",
        "effects": eff,
    }
