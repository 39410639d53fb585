"""DSC deconvolution and pipeline throughput (voxels per second), side by side in one run.

Problem (``--bench-size laptop``, the default): a whole brain of 150 000 voxels x 70 frames
(float32, TR 1.5 s, noisy exponential-residue curves with four CBF/MTT classes and bolus
delays 0-3 s). ``--bench-size brain``: 655 000 voxels x 60 frames (the H100 target).

Cases measured in the same run:

- gpuperf ``DSCModel.fit_concentration`` for oSVD, cSVD, sSVD and Tikhonov (GCV), on NumPy and
  (when a GPU is usable) CuPy: stage ``dsc.deconvolution``;
- ``svd_loop``: voxel-by-voxel oSVD (how the MATLAB toolboxes run), timed on
  ``sizes.baseline_voxels`` voxels and compared by rate (it has no batch effects);
- ``numpy_sweep``: a plain vectorised NumPy oSVD, one GEMM per threshold over the 2N circulant
  for all voxels at once (float64, on 30 000 voxels to bound its memory, compared by rate);
- ``osipy`` 0.1.4's oSVD (skipped when osipy is not importable);
- the whole file pipeline ``run_dsc`` (NIfTI series + mask in, every map, sidecar, AIF TSV
  written) with the automatic AIF: stage ``dsc.pipeline``, for ``.nii`` and ``.nii.gz`` input.

Run: ``python -m pytest bench/bench_dsc.py --benchmark-columns=median,rounds -s`` (or
``gpuperf bench``). Rates are in each benchmark's ``extra_info``; ``-s`` prints them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpuperf.benchmarks.baselines import (
    numpy_circulant_sweep,
    osipy_osvd,
    osipy_version,
    svd_loop,
)
from gpuperf.benchmarks.conventions import record, synced
from gpuperf.dsc import DSCModel
from gpuperf.dsc.simulate import aif_curve, phantom_arrays, tissue_curve

#: (voxels, frames, phantom grid for the pipeline case) per bench size.
DSC_SIZES = {
    "laptop": (150_000, 70, (68, 68, 48)),
    "brain": (655_000, 60, (120, 120, 66)),
}
TR_S = 1.5
TE_S = 0.03
SWEEP_VOXELS = 30_000
RATES: dict[str, float] = {}


@pytest.fixture(scope="module")
def dsc_size(bench_size):
    return DSC_SIZES[bench_size]


@pytest.fixture(scope="module")
def curves(dsc_size):
    n_vox, n_t, _ = dsc_size
    rng = np.random.default_rng(1)
    t = np.arange(n_t) * TR_S
    classes = [
        tissue_curve(t, f, m, d)
        for f, m in ((60, 4), (25, 4.8), (40, 6), (15, 8))
        for d in (0.0, 1.0, 2.0, 3.0)
    ]
    base = np.asarray(classes)[rng.integers(0, len(classes), n_vox)]
    conc = (base + rng.normal(0, 0.15, base.shape)).astype(np.float32)
    return conc, aif_curve(t), t


def _rate(benchmark, key, n_vox, **kw):
    rate = n_vox / benchmark.stats.stats.median
    RATES[key] = rate
    record(benchmark, voxels=n_vox, voxels_per_s=rate, **kw)
    print(f"\n{key}: {rate:,.0f} voxels/s ({benchmark.stats.stats.median:.3f} s)")
    return rate


@pytest.mark.parametrize("method", ["osvd", "csvd", "ssvd", "tikhonov"])
def test_deconvolution(benchmark, backend, curves, method):
    conc, aif, t = curves
    model = DSCModel(TE_S, TR_S, method, device="gpu" if backend.is_gpu else "cpu")
    model.fit_concentration(conc[:1000], aif)  # warm-up: kernel build, thread pool, FFT plans
    fit = benchmark.pedantic(
        synced(backend, model.fit_concentration), args=(conc, aif), rounds=3, iterations=1
    )
    assert np.isfinite(fit.cbf).mean() > 0.99
    _rate(
        benchmark,
        f"{method}/{backend.name}",
        conc.shape[0],
        stage="dsc.deconvolution",
        method=method,
        backend=backend,
        frames=conc.shape[1],
        note="float32; includes host<->device copies" if backend.is_gpu else "float32",
    )


def test_baseline_svd_loop(benchmark, curves, sizes):
    conc, aif, t = curves
    n = sizes.baseline_voxels
    benchmark.pedantic(svd_loop, args=(conc[:n], aif, TR_S, "osvd"), rounds=1, iterations=1)
    _rate(
        benchmark,
        "osvd/svd_loop",
        n,
        stage="dsc.deconvolution",
        method="osvd",
        backend="numpy",
        baseline="svd_loop",
        frames=conc.shape[1],
        note=f"timed on {n} voxels, rate extrapolated (float64)",
    )
    if "osvd/numpy" in RATES:
        print(f"oSVD NumPy / voxel loop: {RATES['osvd/numpy'] / RATES['osvd/svd_loop']:.0f}x")


def test_baseline_numpy_sweep(benchmark, curves):
    conc, aif, t = curves
    n = min(SWEEP_VOXELS, conc.shape[0])
    benchmark.pedantic(numpy_circulant_sweep, args=(conc[:n], aif, TR_S), rounds=1, iterations=1)
    _rate(
        benchmark,
        "osvd/numpy_sweep",
        n,
        stage="dsc.deconvolution",
        method="osvd",
        backend="numpy",
        baseline="numpy_sweep",
        frames=conc.shape[1],
        note=f"float64, {n} voxels, rate compared",
    )
    if "osvd/numpy" in RATES:
        print(f"oSVD NumPy / plain sweep: {RATES['osvd/numpy'] / RATES['osvd/numpy_sweep']:.1f}x")


def test_baseline_osipy(benchmark, curves):
    version = osipy_version()
    if version is None:
        pytest.skip("osipy is not installed (optional baseline)")
    conc, aif, t = curves
    benchmark.pedantic(osipy_osvd, args=(conc, aif, t), rounds=1, iterations=1)
    _rate(
        benchmark,
        "osvd/osipy",
        conc.shape[0],
        stage="dsc.deconvolution",
        method="osvd",
        backend="osipy",
        baseline="osipy",
        baseline_version=version,
        frames=conc.shape[1],
        note="osipy compute_perfusion_maps (oSVD): CBF, CBV, MTT, Tmax",
    )
    if "osvd/numpy" in RATES:
        print(f"oSVD NumPy / osipy: {RATES['osvd/numpy'] / RATES['osvd/osipy']:.1f}x")


@pytest.fixture(scope="module")
def series(tmp_path_factory, dsc_size):
    import nibabel as nib

    _, n_t, grid = dsc_size
    ph = phantom_arrays(shape=grid, n_frames=n_t, tr_s=TR_S, te_s=TE_S, noise_sd=0.005)
    d = tmp_path_factory.mktemp("dsc_bench")
    paths = {}
    for ext in (".nii", ".nii.gz"):
        p = d / f"sub-01{ext.replace('.', '_')}_dsc{ext}"
        nib.save(nib.Nifti1Image(ph["signal"], np.diag([2.0, 2.0, 2.0, 1.0])), p)
        p.with_name(p.name.split(".")[0] + ".json").write_text(
            json.dumps({"EchoTime": TE_S, "RepetitionTime": TR_S})
        )
        paths[ext] = p
    mask = d / "brainmask.nii.gz"
    nib.save(nib.Nifti1Image(ph["brain"].astype(np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), mask)
    return paths, mask, int(ph["brain"].sum()), n_t


@pytest.mark.parametrize(
    "ext,report",
    [(".nii", False), (".nii.gz", False), (".nii.gz", True)],
    ids=[".nii", ".nii.gz", ".nii.gz+report"],
)
def test_pipeline(benchmark, backend, series, tmp_path, ext, report):
    from gpuperf.dsc.pipeline import run_dsc

    paths, mask, n_brain, n_t = series
    device = "gpu" if backend.is_gpu else "cpu"
    kw = dict(mask_path=mask, method="osvd", device=device, overwrite=True)

    def run(path, out):  # what `gpuperf dsc` does: the maps, then (by default) the report
        from gpuperf.report import publish_result

        res = run_dsc(path, out, extra_outputs=("report.html",) if report else (), **kw)
        if report:
            publish_result(res, overwrite=True)
        return res

    run(paths[ext], tmp_path / "warm")  # warm-up (imports, kernel build)
    res = benchmark.pedantic(run, args=(paths[ext], tmp_path / "out"), rounds=3)
    assert res.summary["voxels"] == n_brain
    _rate(
        benchmark,
        f"pipeline{ext}{'+report' if report else ''}/{backend.name}",
        n_brain,
        stage="dsc.pipeline",
        method="osvd",
        backend=backend,
        frames=n_t,
        note=f"run_dsc: {ext} series + mask -> 10 maps + sidecars + AIF TSV/PNG, auto AIF"
        + (", + HTML QC report" if report else " (--no-report)"),
    )


def test_osvd_device_only(benchmark, curves):
    """oSVD on data already on the GPU (coefficient GEMM + selection kernel), synced: the
    device-time figure of the H100 target (655 000 x 60 in <= 20 ms with --bench-size brain)."""
    from gpuperf.backend import get_backend, gpu_status
    from gpuperf.dsc import osvd

    usable, detail = gpu_status()
    if not usable:
        pytest.skip(f"cupy backend: {detail}")
    backend = get_backend("gpu")
    conc, aif, t = curves
    plan = osvd.make_plan(aif, TR_S)
    dev = backend.asarray(conc)
    run = synced(backend, lambda c: osvd.osvd(c, aif, TR_S, xp=backend.xp, plan=plan)[0])
    run(dev[:1000])  # kernel build
    benchmark.pedantic(run, args=(dev,), rounds=5, iterations=1)
    _rate(
        benchmark,
        "osvd/cupy-device",
        conc.shape[0],
        stage="dsc.deconvolution",
        method="osvd",
        backend=backend,
        frames=conc.shape[1],
        note="data resident on the GPU; coefficient GEMM + osvd_select kernel only",
    )
