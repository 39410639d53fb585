"""``gpuperf asl`` and ``gpuperf simulate asl``: thin shells over :func:`gpuperf.asl.run_asl`
and :func:`gpuperf.asl.simulate.write_phantom`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from gpuperf.asl.options import ASLOptions
from gpuperf.cli._common import (
    OverwriteOption,
    QuietOption,
    handle_errors,
    run_pipeline,
    run_settings_command,
)
from gpuperf.cli._options import options_command
from gpuperf.io.settings import RunSettings
from gpuperf.options import Options, option


def _file(flag: str, help: str) -> Any:
    """An optional input file of ``gpuperf asl`` (default None: not given)."""
    return option(None, help, flag=flag, kind="path")


@dataclass(frozen=True)
class ASLInputs(Options):
    """The optional input files of ``gpuperf asl``: each field is the keyword argument of
    :func:`gpuperf.asl.run_asl` of that name (``tests/test_cli_run_settings.py`` checks it),
    and its flag."""

    m0_path: Path | None = _file("--m0", "M0 image (overrides the sidecar M0Type).")
    m0_ref_mask: Path | None = _file("--m0-ref-mask", "Reference-region mask for one M0 of blood.")
    pv_gm: Path | None = _file(
        "--pv-gm", "GM probability map on the ASL grid: also write cbf_gm/cbf_wm."
    )
    pv_wm: Path | None = _file("--pv-wm", "WM probability map on the ASL grid (with --pv-gm).")
    ref_mask: Path | None = _file(
        "--ref-mask", "Reference region (e.g. NAWM, whole GM): also write rCBF/rATT."
    )


class PhantomKind(str, Enum):
    pcasl = "pcasl"
    pasl = "pasl"
    single = "single"


@handle_errors
@options_command(ASLOptions)
@options_command(ASLInputs, name="inputs")
@run_settings_command(mask_path={"help": "Brain mask (default: from M0)."})
def asl_command(
    asl: Path = typer.Argument(..., help="BIDS *_asl.nii.gz (with _asl.json, _aslcontext.tsv)."),
    *,
    run: RunSettings,
    inputs: ASLInputs,
    options: ASLOptions,
) -> None:
    """Quantify CBF (and ATT) from a BIDS ASL series."""
    from gpuperf.io.readahead import start_reading

    start_reading(asl, "ASL series")  # checked, then inflated while NumPy and the pipeline import
    from gpuperf.asl.pipeline import run_asl

    result, pages = run_pipeline(run_asl, run, asl, options=options, **inputs.to_parameters())
    for path in pages:
        result.outputs["report"] = path
    if not run.quiet:
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
