"""``gpuperf run BIDS_DIR OUT_DIR {participant,group}``: the BIDS-App entry point.

A thin shell over :func:`gpuperf.cohort.run_participants` and
:func:`gpuperf.cohort.group_table`: the flags are the fields of
:class:`~gpuperf.cohort.options.CohortOptions` and :class:`~gpuperf.cohort.options.GroupOptions`
(:func:`gpuperf.cli._options.options_command`). List options take repeated flags or comma/space
separated values (``--participant-label 01,02`` or
``--participant-label 01 --participant-label 02``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from gpuperf.cli._common import QuietOption, handle_errors, reporter_for
from gpuperf.cli._options import options_command
from gpuperf.cohort.options import CohortOptions, GroupOptions, StudyOptions


class AnalysisLevel(str, Enum):
    participant = "participant"
    group = "group"


@handle_errors
@options_command(GroupOptions, name="group")
@options_command(CohortOptions)
def run_command(
    bids_dir: Path = typer.Argument(..., help="BIDS dataset root."),
    out_dir: Path = typer.Argument(..., help="Derivatives folder (created)."),
    analysis_level: AnalysisLevel = typer.Argument(
        ..., help="participant: fit every series; group: the cohort table."
    ),
    config: Path = typer.Option(
        None, "--config", help="TOML or JSON file of method options (saved with the outputs)."
    ),
    quiet: bool = QuietOption,
    *,
    options: CohortOptions,
    group: GroupOptions,
) -> None:
    """Process a BIDS dataset (BIDS-App interface): participant fits, group table."""
    from gpuperf.cohort import group_table, load_config, run_participants

    reporter = reporter_for(quiet)
    cfg = load_config(config)
    if analysis_level is AnalysisLevel.participant:
        run = run_participants(bids_dir, out_dir, config=cfg, reporter=reporter, options=options)
        if run.exit_code:
            typer.echo(
                f"{len(run.failed)} of {len(run.results)} series failed; see "
                f"{out_dir / 'logs' / 'failures.tsv'}",
                err=True,
            )
        raise typer.Exit(run.exit_code)
    # the configuration's [group] table, then the group flags given
    settings = GroupOptions.from_mapping(cfg.group, cfg.source).replace(**group.changed())
    if settings.participants is None and (bids_dir / "participants.tsv").is_file():
        settings = settings.replace(participants=bids_dir / "participants.tsv")
    res = group_table(
        out_dir,
        participant_label=options.participant_label,
        session_label=options.session_label,
        modality=options.modality,
        reporter=reporter,
        options=settings,
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
@options_command(StudyOptions)
def simulate_study_command(
    out: Path = typer.Argument(..., help="Dataset folder to write (BIDS root)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing study."),
    *,
    options: StudyOptions,
) -> None:
    """Write a simulated MS perfusion study with known effects (see docs/ms-study.md)."""
    from gpuperf.cohort.study import simulate_study

    res = simulate_study(out, overwrite=overwrite, options=options)
    typer.echo(f"{res['root']}  (masks: {res['masks_dir']}, truth: {res['truth']})")
