"""``gpuperf dsc`` and ``gpuperf simulate dsc``: thin shells over
:func:`gpuperf.dsc.pipeline.run_dsc` and :func:`gpuperf.dsc.simulate.write_phantom`.

Every method option of ``gpuperf dsc`` is a field of :class:`gpuperf.dsc.options.DSCOptions`
(flag, help, unit, range, choices from the method registry), and every run-level one (output
folder, mask, device, report ...) a field of :class:`gpuperf.io.settings.RunSettings`; this
module declares only the inputs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from gpuperf.cli._common import (
    OverwriteOption,
    QuietOption,
    fail,
    handle_errors,
    run_pipeline,
    run_settings_command,
)
from gpuperf.cli._options import options_command
from gpuperf.dsc.options import DSCOptions
from gpuperf.io.settings import RunSettings


@handle_errors
@options_command(DSCOptions)
@run_settings_command()
def dsc_command(
    series: Path = typer.Argument(..., help="4D DSC series (.nii/.nii.gz) with its JSON sidecar."),
    aif: str = typer.Option("auto", "--aif", help="'auto' (cluster-based selection)."),
    aif_mask: Path | None = typer.Option(None, "--aif-mask", help="AIF voxel mask (NIfTI)."),
    aif_curve: Path | None = typer.Option(
        None, "--aif-curve", help="AIF curve file (TSV/CSV/txt, dR2* in 1/s, last column)."
    ),
    ref_mask: Path | None = typer.Option(
        None, "--ref-mask", help="Reference mask for rCBF, rCBV, rMTT."
    ),
    *,
    run: RunSettings,
    options: DSCOptions,
) -> None:
    """CBF, CBV, MTT, Tmax and TTP maps from a DSC-MRI series."""
    from gpuperf.io.readahead import start_reading

    start_reading(
        series, "DSC series"
    )  # checked, then inflated while NumPy and the pipeline import
    from gpuperf.dsc.pipeline import run_dsc

    given = [x for x in (aif_mask, aif_curve) if x is not None]
    if len(given) > 1 or (given and aif != "auto"):
        fail("give only one of --aif auto, --aif-mask and --aif-curve")
    if aif != "auto":
        fail(f"--aif takes 'auto' (use --aif-mask or --aif-curve for files); got {aif!r}")
    aif_source = given[0] if given else "auto"
    result, pages = run_pipeline(
        run_dsc, run, series, options=options, aif=aif_source, ref_mask_path=ref_mask
    )
    outputs = list(result.outputs) + pages
    if not run.quiet:
        s = result.summary
        typer.echo(
            f"{s['voxels']} voxels ({s['flagged_input']} flagged) on {s['device']}: median CBF "
            f"{s['median_cbf']:.1f} ml/100g/min; {len(outputs)} files in {run.out_dir} "
            f"({s['elapsed_s']:.2f} s)"
        )


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
