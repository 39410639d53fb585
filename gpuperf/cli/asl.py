"""``gpuperf asl`` and ``gpuperf simulate asl``: thin shells over :func:`gpuperf.asl.run_asl`
and :func:`gpuperf.asl.simulate.write_phantom`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from gpuperf.asl.options import ASLOptions
from gpuperf.cli._common import (
    Device,
    DeviceOption,
    MemoryOption,
    OverwriteOption,
    QuietOption,
    ReportOption,
    handle_errors,
    run_pipeline,
)
from gpuperf.cli._options import options_command


class PhantomKind(str, Enum):
    pcasl = "pcasl"
    pasl = "pasl"
    single = "single"


@handle_errors
@options_command(ASLOptions)
def asl_command(
    asl: Path = typer.Argument(..., help="BIDS *_asl.nii.gz (with _asl.json, _aslcontext.tsv)."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    m0: Path | None = typer.Option(None, "--m0", help="M0 image (overrides the sidecar M0Type)."),
    m0_ref_mask: Path | None = typer.Option(
        None, "--m0-ref-mask", help="Reference-region mask for one M0 of blood."
    ),
    mask: Path | None = typer.Option(None, "--mask", help="Brain mask (default: from M0)."),
    prefix: str | None = typer.Option(None, "--prefix", help="Output prefix."),
    device: Device = DeviceOption,
    memory_budget_mb: float | None = MemoryOption,
    quiet: bool = QuietOption,
    overwrite: bool = OverwriteOption,
    report: bool = ReportOption,
    pv_gm: Path | None = typer.Option(
        None, "--pv-gm", help="GM probability map on the ASL grid: also write cbf_gm/cbf_wm."
    ),
    pv_wm: Path | None = typer.Option(
        None, "--pv-wm", help="WM probability map on the ASL grid (with --pv-gm)."
    ),
    ref_mask: Path | None = typer.Option(
        None, "--ref-mask", help="Reference region (e.g. NAWM, whole GM): also write rCBF/rATT."
    ),
    *,
    options: ASLOptions,
) -> None:
    """Quantify CBF (and ATT) from a BIDS ASL series."""
    from gpuperf.io.readahead import start_reading

    start_reading(asl, "ASL series")  # checked, then inflated while NumPy and the pipeline import
    from gpuperf.asl.pipeline import run_asl

    result, pages = run_pipeline(
        run_asl,
        asl,
        out,
        device=device,
        memory_budget_mb=memory_budget_mb,
        quiet=quiet,
        overwrite=overwrite,
        report=report,
        m0_path=m0,
        m0_ref_mask=m0_ref_mask,
        mask_path=mask,
        prefix=prefix,
        options=options,
        pv_gm=pv_gm,
        pv_wm=pv_wm,
        ref_mask=ref_mask,
    )
    for path in pages:
        result.outputs["report"] = path
    if not quiet:
        s = result.summary
        typer.echo(
            f"{s.get('method')}: {s.get('voxels')} voxels in {s.get('elapsed_seconds', 0):.2f} s"
            f" ({s.get('backend', '')}); median CBF {s.get('median_cbf', float('nan')):.1f} "
            "ml/100g/min"
            + (f", median ATT {s['median_att_s']:.2f} s" if "median_att_s" in s else "")
        )
        for name, path in result.outputs.items():
            typer.echo(f"  {name}: {path}")


@handle_errors
def simulate_asl_command(
    out: Path = typer.Argument(..., help="Folder for the phantom."),
    kind: PhantomKind = typer.Option(PhantomKind.pcasl, "--kind", help="Phantom kind."),
    noise_sd: float = typer.Option(0.0, "--noise", help="Noise SD (M0 is 1000)."),
    repeats: int = typer.Option(2, "--repeats", help="Control/label pairs per PLD."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    quiet: bool = QuietOption,
    overwrite: bool = OverwriteOption,
) -> None:
    """Write a BIDS ASL phantom with truth CBF/ATT maps."""
    from gpuperf.asl.simulate import write_phantom

    paths = write_phantom(
        out, kind.value, noise_sd=noise_sd, repeats=repeats, seed=seed, overwrite=overwrite
    )
    if not quiet:
        typer.echo(f"{kind.value} phantom: {paths['asl']}")
