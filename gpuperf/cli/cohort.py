"""``gpuperf run BIDS_DIR OUT_DIR {participant,group}``: the BIDS-App entry point.

A thin shell over :func:`gpuperf.cohort.run_participants` and
:func:`gpuperf.cohort.group_table`; every option is one of their arguments. List options take
repeated flags or comma/space separated values (``--participant-label 01,02`` or
``--participant-label 01 --participant-label 02``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from gpuperf.cli._common import Device, QuietOption, handle_errors, reporter_for


class AnalysisLevel(str, Enum):
    participant = "participant"
    group = "group"


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v for raw in values for v in raw.replace(",", " ").split() if v]
    return out or None


@handle_errors
def run_command(
    bids_dir: Path = typer.Argument(..., help="BIDS dataset root."),
    out_dir: Path = typer.Argument(..., help="Derivatives folder (created)."),
    analysis_level: AnalysisLevel = typer.Argument(
        ..., help="participant: fit every series; group: the cohort table."
    ),
    participant_label: list[str] = typer.Option(
        None, "--participant-label", help="Subjects to include (default all); without 'sub-'."
    ),
    session_label: list[str] = typer.Option(
        None, "--session-label", help="Sessions to include (default all); without 'ses-'."
    ),
    modality: list[str] = typer.Option(None, "--modality", help="asl and/or dsc (default both)."),
    config: Path = typer.Option(
        None, "--config", help="TOML or JSON file of method options (saved with the outputs)."
    ),
    dsc_pattern: str = typer.Option(
        None,
        "--dsc-pattern",
        help="Glob of DSC series under a subject/session folder (default perf/*_dsc.nii*).",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        help="Local worker processes (1: one process with read-ahead threads); "
        "with --cluster, the number of SLURM jobs (one GPU each).",
    ),
    gpus: list[str] = typer.Option(
        None,
        "--gpus",
        help="With --workers N: GPU ids dealt to the worker processes, one each (e.g. 0,1).",
    ),
    scheduler: str = typer.Option(
        None, "--scheduler", help="Address of a Dask scheduler to run the subjects on."
    ),
    cluster: str = typer.Option(
        None,
        "--cluster",
        help="'slurm': start Dask workers with dask-jobqueue (options in the "
        "config's \\[cluster] table).",
    ),
    device: Device = typer.Option(
        None, "--device", help="auto, cpu or gpu (default: the config's, else auto)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace outputs of complete runs made with other inputs or "
        "options (incomplete ones are always redone).",
    ),
    prefetch: int = typer.Option(2, "--prefetch", help="Subjects decompressed ahead."),
    batch_voxels: int = typer.Option(
        None,
        "--batch-voxels",
        help="Fit consecutive compatible subjects in one GPU call, up to N voxels per batch "
        "(0: one subject at a time). Default: automatic (on for the GPU, off on NumPy).",
    ),
    work_dir: Path = typer.Option(
        None, "--work-dir", help="Scratch folder for decompressed inputs (default: system tmp)."
    ),
    masks_dir: Path = typer.Option(
        None,
        "--masks-dir",
        help="group: derivatives folder with per-subject masks "
        "(*desc-<name>_mask.nii.gz) and/or atlases (*_dseg.nii.gz).",
    ),
    mask_desc: list[str] = typer.Option(
        None, "--mask-desc", help="group: only these mask names (e.g. lesion NAWM)."
    ),
    atlas: Path = typer.Option(None, "--atlas", help="group: label image in the subjects' space."),
    atlas_labels: Path = typer.Option(
        None, "--atlas-labels", help="group: TSV with columns index and name."
    ),
    reference_region: str = typer.Option(
        None, "--reference-region", help="group: region for relative values (e.g. NAWM)."
    ),
    maps: list[str] = typer.Option(
        None, "--map", help="group: map names to summarise (default: all perfusion maps)."
    ),
    participants: Path = typer.Option(
        None,
        "--participants",
        help="group: participants table (default BIDS_DIR/participants.tsv when present).",
    ),
    group_by: str = typer.Option(
        None, "--group-by", help="group: participants.tsv column of the groups (default group)."
    ),
    reference_group: str = typer.Option(
        None, "--reference-group", help="group: group compared against (default control)."
    ),
    covariate: list[str] = typer.Option(
        None, "--covariate", help="group: participants.tsv columns to adjust for (age,sex)."
    ),
    lesion_ring_mm: float = typer.Option(
        None, "--lesion-ring-mm", help="group: perilesional ring radius, mm (default 3)."
    ),
    report: bool | None = typer.Option(
        None,
        "--report/--no-report",
        help="participant: write each subject's QC report and the cohort page (default: on, "
        "or the configuration's 'report' key).",
    ),
    quiet: bool = QuietOption,
) -> None:
    """Process a BIDS dataset (BIDS-App interface): participant fits, group table."""
    from gpuperf.cohort import group_table, load_config, run_participants

    reporter = reporter_for(quiet)
    cfg = load_config(config)
    subjects, sessions, mods = _split(participant_label), _split(session_label), _split(modality)
    if analysis_level is AnalysisLevel.participant:
        run = run_participants(
            bids_dir,
            out_dir,
            participant_label=subjects,
            session_label=sessions,
            modality=mods,
            config=cfg,
            dsc_pattern=dsc_pattern,
            workers=workers,
            scheduler=scheduler,
            cluster=cluster,
            device=None if device is None else device.value,
            gpus=_split(gpus),
            overwrite=overwrite,
            prefetch=prefetch,
            batch_voxels=batch_voxels,
            work_dir=work_dir,
            reporter=reporter,
            report=report,
        )
        if run.exit_code:
            typer.echo(
                f"{len(run.failed)} of {len(run.results)} series failed; see "
                f"{out_dir / 'logs' / 'failures.tsv'}",
                err=True,
            )
        raise typer.Exit(run.exit_code)
    opts = dict(cfg.group)
    for key, value in (
        ("masks_dir", masks_dir),
        ("mask_descs", _split(mask_desc)),
        ("atlas", atlas),
        ("atlas_labels", atlas_labels),
        ("reference_region", reference_region),
        ("maps", _split(maps)),
        ("participants", participants),
        ("group_by", group_by),
        ("reference_group", reference_group),
        ("covariates", _split(covariate)),
        ("lesion_ring_mm", lesion_ring_mm),
    ):
        if value is not None:
            opts[key] = value
    if opts.get("participants") is None and (bids_dir / "participants.tsv").is_file():
        opts["participants"] = bids_dir / "participants.tsv"
    res = group_table(
        out_dir,
        participant_label=subjects,
        session_label=sessions,
        modality=mods,
        reporter=reporter,
        **opts,
    )
    for path in (
        res.table,
        res.stats_table,
        res.correlations_table,
        res.lesions_table,
        res.report,
    ):
        if path is not None:
            typer.echo(str(path))
    raise typer.Exit(res.exit_code)


@handle_errors
def simulate_study_command(
    out: Path = typer.Argument(..., help="Dataset folder to write (BIDS root)."),
    controls: int = typer.Option(4, "--controls", help="Control subjects."),
    patients: int = typer.Option(4, "--patients", help="Patient subjects."),
    noise_sd: float = typer.Option(0.2, "--noise", help="Noise SD (tissue M0 is 1000)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing study."),
) -> None:
    """Write a simulated MS perfusion study with known effects (see docs/ms-study.md)."""
    from gpuperf.cohort.study import simulate_study

    res = simulate_study(
        out,
        n_controls=controls,
        n_patients=patients,
        noise_sd=noise_sd,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"{res['root']}  (masks: {res['masks_dir']}, truth: {res['truth']})")
