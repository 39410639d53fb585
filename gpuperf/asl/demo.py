"""ASL demo: simulate a multi-PLD pCASL phantom, fit it, compare with the truth."""

from __future__ import annotations

import time
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np


def run_demo(
    out_dir: str | PathLike,
    device: str = "auto",
    reporter: Any = None,
    publish: Callable[[Any], Any] | None = None,
) -> dict:
    """Write a noisy multi-PLD pCASL phantom under ``out_dir/phantom``, fit it with the Buxton
    kinetic model into ``out_dir/maps`` and summarise the errors against the truth maps.

    ``publish(result)``, when given, is called with the pipeline's result once the maps are
    written (``gpuperf demo`` passes :func:`gpuperf.report.publish_result`: the QC page).

    Returns
    -------
    dict
        ``voxels``, ``cbf_median_error_percent``, ``att_median_error_s`` (median absolute
        errors over converged voxels, status 0 or AT_KINK), ``converged_fraction``, ``fit_seconds``,
        ``elapsed_seconds``, ``backend``.
    """
    import nibabel as nib

    from gpuperf.asl.model import OK_FLAGS
    from gpuperf.asl.pipeline import run_asl
    from gpuperf.asl.simulate import write_phantom
    from gpuperf.io.settings import RunSettings
    from gpuperf.io.stages import run_and_publish

    t0 = time.perf_counter()
    out = Path(out_dir)
    ph = write_phantom(
        out / "phantom", "pcasl", shape=(34, 34, 4), repeats=4, noise_sd=1.0, seed=1, overwrite=True
    )
    settings = RunSettings(
        out_dir=out / "maps", mask_path=ph["mask"], device=device, overwrite=True
    )
    res = run_and_publish(run_asl, settings, ph["asl"], reporter=reporter, publish=publish)
    mask = np.asarray(nib.load(str(ph["mask"])).dataobj) > 0
    cbf_t = np.asarray(nib.load(str(ph["truth_cbf"])).dataobj)[mask]
    att_t = np.asarray(nib.load(str(ph["truth_att"])).dataobj)[mask]
    cbf = np.asarray(nib.load(str(res.outputs["cbf"])).dataobj)[mask]
    att = np.asarray(nib.load(str(res.outputs["att"])).dataobj)[mask]
    status = np.asarray(nib.load(str(res.outputs["status"])).dataobj)[mask]
    ok = np.isin(status, OK_FLAGS)  # converged, or converged at a kink of the model
    return {
        "voxels": int(mask.sum()),
        "converged_fraction": float(ok.mean()),
        "cbf_median_error_percent": float(np.median(np.abs(cbf[ok] / cbf_t[ok] - 1)) * 100),
        "att_median_error_s": float(np.median(np.abs(att[ok] - att_t[ok]))),
        "fit_seconds": float(res.summary["fit_seconds"]),
        "elapsed_seconds": time.perf_counter() - t0,
        "backend": res.summary["backend"],
    }
