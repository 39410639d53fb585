"""DSC demo: simulate a phantom, run the pipeline on it, compare the maps with the truth."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.progress import Reporter, ensure_reporter


def run_demo(
    out_dir: str | PathLike,
    device: str = "auto",
    reporter: Reporter | None = None,
    publish: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Write a noisy phantom under ``out_dir/phantom``, fit it (oSVD, BSW, automatic AIF)
    into ``out_dir/maps`` and summarise the error against the truth.

    ``publish(result)``, when given, is called with the pipeline's result once the maps are
    written (``gpuperf demo`` passes :func:`gpuperf.report.publish_result`: the QC page).

    Returns
    -------
    dict
        Median relative CBF/CBV/MTT errors in non-leaky tissue, K2 medians of the two leaky
        blocks, how many AIF voxels are truly arterial, elapsed seconds, backend.
    """
    import nibabel as nib

    from gpuperf.backend import get_backend
    from gpuperf.dsc.pipeline import run_dsc
    from gpuperf.dsc.simulate import K2_VALUES, write_phantom
    from gpuperf.io.settings import RunSettings
    from gpuperf.io.stages import run_and_publish

    get_backend(device)  # fail before writing anything when the device is unusable
    rep = ensure_reporter(reporter)
    out = Path(out_dir)
    paths = write_phantom(out / "phantom", overwrite=True)
    rep.log(f"DSC phantom written to {out / 'phantom'}")
    settings = RunSettings(out_dir=out / "maps", device=device, overwrite=True)
    res = run_and_publish(
        run_dsc,
        settings,
        paths["series"],
        method="osvd",
        leakage="bsw",
        reporter=reporter,
        publish=publish,
    )

    def load(p: Path) -> np.ndarray:
        return np.asarray(nib.load(str(p)).dataobj, dtype=np.float64)

    prefix = res.outputs[0].name.split("_cbf")[0] if res.outputs else "phantom_dsc"
    maps = {k: load(out / "maps" / f"{prefix}_{k}.nii.gz") for k in ("cbf", "cbv", "mtt", "k2")}
    truth = {k: load(paths[f"truth_{k}"]) for k in ("cbf", "cbv", "mtt", "k2")}
    k2_true = truth["k2"]
    tissue = np.isfinite(truth["cbf"]) & (k2_true == 0)
    summary: dict[str, Any] = {}
    for k in ("cbf", "cbv", "mtt"):
        rel = maps[k][tissue] / truth[k][tissue] - 1.0
        summary[f"{k}_median_rel_error"] = float(np.nanmedian(rel))
    for val in K2_VALUES:
        sel = np.isclose(k2_true, val)
        summary[f"k2_true_{val:+g}_median"] = float(np.nanmedian(maps["k2"][sel]))
    aifmask = load(out / "maps" / f"{prefix}_aifmask.nii.gz") > 0
    artery = load(paths["arterymask"]) > 0
    summary["aif_voxels"] = int(aifmask.sum())
    summary["aif_voxels_arterial"] = int((aifmask & artery).sum())
    summary["elapsed_s"] = res.summary["elapsed_s"]
    summary["backend"] = res.summary["backend"]
    return summary
