"""``gpuperf dsc`` and ``gpuperf simulate dsc``: thin shells over
:func:`gpuperf.dsc.pipeline.run_dsc` and :func:`gpuperf.dsc.simulate.write_phantom`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from gpuperf.cli._common import (
    Device,
    DeviceOption,
    MemoryOption,
    OverwriteOption,
    QuietOption,
    ReportOption,
    budget_bytes,
    fail,
    handle_errors,
    reporter_for,
)


class DSCMethod(str, Enum):
    osvd = "osvd"
    csvd = "csvd"
    ssvd = "ssvd"
    tikhonov = "tikhonov"


class Leakage(str, Enum):
    none = "none"
    bsw = "bsw"


@handle_errors
def dsc_command(
    series: Path = typer.Argument(..., help="4D DSC series (.nii/.nii.gz) with its JSON sidecar."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    mask: Path | None = typer.Option(None, "--mask", help="Brain mask (default: automatic)."),
    aif: str = typer.Option("auto", "--aif", help="'auto' (cluster-based selection)."),
    aif_mask: Path | None = typer.Option(None, "--aif-mask", help="AIF voxel mask (NIfTI)."),
    aif_curve: Path | None = typer.Option(
        None, "--aif-curve", help="AIF curve file (TSV/CSV/txt, dR2* in 1/s, last column)."
    ),
    method: DSCMethod = typer.Option(DSCMethod.osvd, "--method", help="Deconvolution."),
    leakage: Leakage = typer.Option(Leakage.none, "--leakage", help="BSW leakage correction."),
    te: float | None = typer.Option(None, "--te", help="Echo time, s (default: EchoTime)."),
    tr: float | None = typer.Option(None, "--tr", help="Frame interval, s (RepetitionTime)."),
    baseline: int | None = typer.Option(
        None, "--baseline", help="Pre-bolus frames (default: detect the bolus arrival)."
    ),
    kh: float = typer.Option(0.733, "--kh", help="Haematocrit factor (1 for relative maps)."),
    rho: float = typer.Option(1.04, "--rho", help="Brain density, g/ml (1 for relative maps)."),
    ref_mask: Path | None = typer.Option(None, "--ref-mask", help="Reference mask for rCBV."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="SVD threshold, fraction of s_max (sSVD 0.2, cSVD 0.1)."
    ),
    osvd_thresholds: str = typer.Option(
        "0.05:0.95:0.05",
        "--osvd-thresholds",
        help="oSVD sweep, fractions of s_max: 'start:stop:step' or a comma-separated list.",
    ),
    oi_limit: float = typer.Option(0.035, "--oi-limit", help="oSVD oscillation-index limit."),
    mu: float | None = typer.Option(
        None, "--mu", help="Tikhonov mu relative to s_max (default: GCV per voxel)."
    ),
    gamma_fit_aif: bool = typer.Option(
        False, "--gamma-fit-aif", help="Fit a gamma-variate to the AIF (no recirculation)."
    ),
    prefix: str | None = typer.Option(None, "--prefix", help="Output prefix."),
    device: Device = DeviceOption,
    memory_budget_mb: float | None = MemoryOption,
    quiet: bool = QuietOption,
    overwrite: bool = OverwriteOption,
    report: bool = ReportOption,
) -> None:
    """CBF, CBV, MTT, Tmax and TTP maps from a DSC-MRI series."""
    from gpuperf.dsc.pipeline import run_dsc

    given = [x for x in (aif_mask, aif_curve) if x is not None]
    if len(given) > 1 or (given and aif != "auto"):
        fail("give only one of --aif auto, --aif-mask and --aif-curve")
    if aif != "auto":
        fail(f"--aif takes 'auto' (use --aif-mask or --aif-curve for files); got {aif!r}")
    result = run_dsc(
        series,
        out,
        mask_path=mask,
        aif=given[0] if given else "auto",
        method=method.value,
        leakage=leakage.value,
        te_s=te,
        tr_s=tr,
        baseline=baseline,
        kh=kh,
        rho=rho,
        ref_mask_path=ref_mask,
        threshold=threshold,
        osvd_thresholds=parse_thresholds(osvd_thresholds),
        oi_limit=oi_limit,
        mu=mu,
        gamma_fit_aif=gamma_fit_aif,
        prefix=prefix,
        device=device.value,
        memory_budget=budget_bytes(memory_budget_mb),
        overwrite=overwrite,
        reporter=reporter_for(quiet),
        report=report,
    )
    if not quiet:
        s = result.summary
        typer.echo(
            f"{s['voxels']} voxels ({s['flagged_input']} flagged) on {s['device']}: median CBF "
            f"{s['median_cbf']:.1f} ml/100g/min; {len(result.outputs)} files in {out} "
            f"({s['elapsed_s']:.2f} s)"
        )


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``'0.05:0.95:0.05'`` (inclusive range) or ``'0.1,0.2,0.3'`` -> tuple of floats."""
    from gpuperf.errors import InputError

    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            n = int(round((stop - start) / step)) + 1
            return tuple(round(start + i * step, 10) for i in range(n))
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise InputError(
            None, "--osvd-thresholds", f"expected start:stop:step or a, b, c; got {text!r}"
        ) from exc


@handle_errors
def simulate_dsc_command(
    out: Path = typer.Argument(..., help="Output folder for the phantom."),
    nx: int = typer.Option(32, "--nx", help="Voxels along x."),
    ny: int = typer.Option(32, "--ny", help="Voxels along y."),
    nz: int = typer.Option(4, "--nz", help="Slices."),
    frames: int = typer.Option(60, "--frames", help="Frames."),
    tr: float = typer.Option(1.5, "--tr", help="Frame interval, s."),
    te: float = typer.Option(0.03, "--te", help="Echo time, s."),
    noise: float = typer.Option(0.005, "--noise", help="Noise SD as a fraction of brain S0."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    prefix: str = typer.Option("phantom", "--prefix", help="File-name prefix."),
    quiet: bool = QuietOption,
    overwrite: bool = OverwriteOption,
) -> None:
    """Write a DSC phantom: 4D NIfTI + JSON sidecar, truth maps (CBF, CBV, MTT, delay, K2),
    brain and artery masks."""
    from gpuperf.dsc.simulate import write_phantom

    paths = write_phantom(
        out,
        shape=(nx, ny, nz),
        n_frames=frames,
        tr_s=tr,
        te_s=te,
        noise_sd=noise,
        seed=seed,
        prefix=prefix,
        overwrite=overwrite,
    )
    if not quiet:
        typer.echo(f"DSC phantom: {paths['series']} (+ sidecar, truth maps, masks)")
