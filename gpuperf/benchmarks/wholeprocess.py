"""Whole-process runs for ``bench/bench_cli.py``: what a user's command costs, start to finish.

gpuperf's rows time ``gpuperf dsc``/``asl`` (default: with the report, and ``--no-report``) and
``gpuperf --help`` as fresh processes. The osipy rows time a fresh process that does what a
script around osipy 0.1.4 does for the same files: read the series (nibabel), make the voxel
block, run osipy, write the maps (nibabel, gzip). So both sides pay interpreter start-up,
imports, reading and writing.

Run as ``python -m gpuperf.benchmarks.wholeprocess osipy-dsc SERIES MASK OUT`` or
``... osipy-asl SERIES MASK OUT``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run_process(args: list[str], timeout_s: float = 1800.0) -> float:
    """Run ``args`` as a fresh process (stdout discarded); seconds it took. Raises on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def gpuperf_command(*args: str) -> list[str]:
    """``gpuperf ...`` run by this interpreter (the checkout being benchmarked)."""
    return [sys.executable, "-m", "gpuperf", *args]


def _save(out: Path, name: str, values: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    vol = np.full(mask.shape, np.nan, np.float32)
    vol[mask] = values
    nib.save(nib.Nifti1Image(vol, affine), out / f"osipy_{name}.nii.gz")


def osipy_dsc(series: Path, mask_path: Path, out: Path, te_s: float, baseline: int = 5) -> None:
    """osipy's oSVD on a DSC series: dR2* = -ln(S / S0) / TE (S0 the mean of the first
    ``baseline`` frames), the AIF as the mean of the 20 voxels with the highest peak dR2*
    (osipy 0.1.4 has no automatic AIF), maps written as NIfTI."""
    import json

    import nibabel as nib

    from gpuperf.benchmarks.baselines import osipy_osvd

    img = nib.load(series)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    tr = float(
        json.loads(series.with_name(series.name.split(".")[0] + ".json").read_text())[
            "RepetitionTime"
        ]
    )
    sig = data[mask].astype(np.float64)
    s0 = sig[:, :baseline].mean(axis=1, keepdims=True)
    dr2s = -np.log(np.clip(sig, 1e-6, None) / np.clip(s0, 1e-6, None)) / te_s
    top = np.argsort(dr2s.max(axis=1))[-20:]
    aif = dr2s[top].mean(axis=0)
    maps = osipy_osvd(dr2s, aif, np.arange(sig.shape[1]) * tr)
    out.mkdir(parents=True, exist_ok=True)
    for name, v in maps.items():
        _save(out, name, v, mask, img.affine)


def osipy_asl(series: Path, mask_path: Path, out: Path) -> None:
    """osipy's multi-PLD pCASL fit on a BIDS ASL series: the series read with gpuperf's BIDS
    reader (control - label averaged per PLD, as osipy expects one ΔM per PLD), osipy's
    ``quantify_multi_pld``, maps written as NIfTI."""
    import nibabel as nib

    from gpuperf.asl.bids import read_asl_series
    from gpuperf.benchmarks.baselines import osipy_asl_fit

    s = read_asl_series(series)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    block = np.asarray(s.image.data, dtype=np.float64)[mask]  # (V, T) volumes
    kinds = np.asarray([v.lower() for v in s.volume_types])
    plds = np.asarray(s.pld_s, dtype=np.float64)
    levels = np.unique(plds[kinds == "label"])
    mean = np.stack(
        [
            block[:, (kinds == "control") & (plds == p)].mean(axis=1)
            - block[:, (kinds == "label") & (plds == p)].mean(axis=1)
            for p in levels
        ],
        axis=1,
    )
    m0img = np.asarray(s.m0_image.data, dtype=np.float64)
    m0 = (m0img.mean(axis=3) if m0img.ndim == 4 else m0img)[mask]
    tau = float(np.asarray(s.tau_s, dtype=np.float64)[kinds == "label"][0])
    maps = osipy_asl_fit(mean, m0, levels, tau)
    out.mkdir(parents=True, exist_ok=True)
    affine = nib.load(series).affine
    for name, v in maps.items():
        _save(out, name, v, mask, affine)


def main(argv: list[str]) -> int:
    kind, series, mask, out = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3])
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if kind == "osipy-dsc":
        osipy_dsc(series, mask, out, te_s=float(argv[4]) if len(argv) > 4 else 0.03)
    elif kind == "osipy-asl":
        osipy_asl(series, mask, out)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


# -- the whole-brain-sized inputs of bench/bench_cli.py and bench/bench_report.py ------------------
DSC_GRID, DSC_FRAMES, TR_S, TE_S = (68, 68, 48), 80, 1.5, 0.03
ASL_SIDE, ASL_VOXELS, ASL_REPEATS = 66, 200_000, 6


def write_dsc_inputs(folder: Path) -> tuple[Path, Path, int]:
    """A DSC phantom series (``sub-01_dsc.nii.gz`` + sidecar) and its brain mask in ``folder``;
    returns (series, mask, brain voxels)."""
    import json

    import nibabel as nib

    from gpuperf.dsc.simulate import phantom_arrays

    folder = Path(folder)
    ph = phantom_arrays(
        shape=DSC_GRID, n_frames=DSC_FRAMES, tr_s=TR_S, te_s=TE_S, noise_sd=0.005, seed=5
    )
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    series = folder / "sub-01_dsc.nii.gz"
    nib.save(nib.Nifti1Image(ph["signal"], aff), series)
    (folder / "sub-01_dsc.json").write_text(json.dumps({"EchoTime": TE_S, "RepetitionTime": TR_S}))
    mask = folder / "brainmask.nii.gz"
    nib.save(nib.Nifti1Image(ph["brain"].astype(np.uint8), aff), mask)
    return series, mask, int(ph["brain"].sum())


def write_asl_inputs(folder: Path) -> dict:
    """A multi-PLD pCASL phantom of about ``ASL_VOXELS`` brain voxels with ``ASL_REPEATS``
    repeats (:func:`gpuperf.asl.simulate.write_phantom`'s paths)."""
    from gpuperf.asl.simulate import write_phantom

    nz = -(-ASL_VOXELS // ((ASL_SIDE - 2) ** 2))
    return write_phantom(
        Path(folder), "pcasl", shape=(ASL_SIDE, ASL_SIDE, nz), repeats=ASL_REPEATS,
        noise_sd=1.0, seed=3,
    )  # fmt: skip
