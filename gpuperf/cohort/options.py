"""The settings of a cohort run, declared once (:mod:`gpuperf.options`).

- :class:`CohortOptions`: the participant stage (which series, where and how they run):
  the keywords of :func:`gpuperf.cohort.run_participants`, the flags of ``gpuperf run`` and the
  ``run`` table of the saved ``logs/config.json``;
- :class:`GroupOptions`: the group stage: the keywords of :func:`gpuperf.cohort.group_table`,
  the ``[group]`` table of the cohort configuration, and the group flags of ``gpuperf run``
  (a flag given overrides the configuration's key);
- :class:`StudyOptions`: the simulated MS study of ``gpuperf simulate study``.

This module imports only :mod:`gpuperf.options` (``gpuperf --help`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gpuperf.errors import InputError
from gpuperf.io.settings import DEVICES
from gpuperf.options import Options, option, positive


@dataclass(frozen=True)
class CohortOptions(Options):
    """How a participant-stage run selects and runs its series (see :mod:`gpuperf.cohort.runner`).

    Every field is a keyword of :func:`gpuperf.cohort.run_participants` and a flag of
    ``gpuperf run``; list fields take sequences or comma/space separated strings
    (``participant_label="01,02"``).
    """

    section: ClassVar[str] = "run"

    participant_label: tuple[str, ...] | None = option(
        None, "Subjects to include (default all); without 'sub-'", flag="--participant-label"
    )
    session_label: tuple[str, ...] | None = option(
        None, "Sessions to include (default all); without 'ses-'", flag="--session-label"
    )
    modality: tuple[str, ...] | None = option(
        None, "asl and/or dsc (default both)", flag="--modality"
    )
    dsc_pattern: str | None = option(
        None,
        "Glob of DSC series under a subject/session folder (default perf/*_dsc.nii*)",
        flag="--dsc-pattern",
    )
    workers: int = option(
        1,
        "Local worker processes (1: one process with read-ahead threads); "
        "with --cluster, the number of SLURM jobs (one GPU each)",
        flag="--workers",
        minimum=1,
    )
    gpus: tuple[str, ...] | None = option(
        None,
        "With --workers N: GPU ids dealt to the worker processes, one each (e.g. 0,1)",
        flag="--gpus",
    )
    scheduler: str | None = option(
        None, "Address of a Dask scheduler to run the subjects on", flag="--scheduler"
    )
    cluster: str | None = option(
        None,
        "'slurm': start Dask workers with dask-jobqueue (options in the "
        "config's \\[cluster] table)",
        flag="--cluster",
        choices=("slurm",),
    )
    device: str | None = option(
        None,
        "auto, cpu or gpu (default: the config's, else auto)",
        flag="--device",
        choices=DEVICES,
    )
    overwrite: bool = option(
        False,
        "Replace outputs of complete runs made with other inputs or "
        "options (incomplete ones are always redone)",
        flag="--overwrite",
    )
    prefetch: int = option(2, "Subjects decompressed ahead", flag="--prefetch", minimum=0)
    batch_voxels: int | None = option(
        None,
        "Fit consecutive compatible subjects in one GPU call, up to N voxels per batch "
        "(0: one subject at a time). Default: automatic (on for the GPU, off on NumPy)",
        flag="--batch-voxels",
        minimum=0,
    )
    work_dir: Path | None = option(
        None,
        "Scratch folder for staged inputs (default: system tmp)",
        flag="--work-dir",
    )
    report: bool | None = option(
        None,
        "participant: write each subject's QC report and the cohort page (default: on, "
        "or the configuration's 'report' key)",
        flag="--report",
    )

    @property
    def local(self) -> bool:
        """True when the jobs run in this process (no worker processes, no Dask)."""
        return not (self.scheduler or self.cluster) and self.workers == 1


@dataclass(frozen=True)
class GroupOptions(Options):
    """The regions, maps and group comparisons of the cohort table
    (:func:`gpuperf.cohort.group_table`; the ``[group]`` table of the configuration)."""

    section: ClassVar[str] = "group"

    masks_dir: Path | None = option(
        None,
        "group: derivatives folder with per-subject masks "
        "(*desc-<name>_mask.nii.gz) and/or atlases (*_dseg.nii.gz)",
        flag="--masks-dir",
    )
    mask_descs: tuple[str, ...] | None = option(
        None,
        "group: only these mask names (e.g. lesion NAWM)",
        flag="--mask-desc",
    )
    atlas: Path | None = option(None, "group: label image in the subjects' space", flag="--atlas")
    atlas_labels: Path | None = option(
        None, "group: TSV with columns index and name", flag="--atlas-labels"
    )
    reference_region: str | None = option(
        None, "group: region for relative values (e.g. NAWM)", flag="--reference-region"
    )
    maps: tuple[str, ...] | None = option(
        None, "group: map names to summarise (default: all perfusion maps)", flag="--map"
    )
    participants: Path | None = option(
        None,
        "group: participants table (default BIDS_DIR/participants.tsv when present)",
        flag="--participants",
    )
    group_by: str | None = option(
        None, "group: participants.tsv column of the groups (default group)", flag="--group-by"
    )
    reference_group: str | None = option(
        None, "group: group compared against (default control)", flag="--reference-group"
    )
    covariates: tuple[str, ...] | None = option(
        None, "group: participants.tsv columns to adjust for (age,sex)", flag="--covariate"
    )
    lesion_ring_mm: float | None = option(
        None,
        "group: perilesional ring radius (default 3)",
        flag="--lesion-ring-mm",
        **positive(unit="mm"),
    )
    table_name: str = option("group_perfusion", "File name (without .tsv) of the cohort table")
    lesion_desc: str = option("lesion", "Mask name of the lesion mask or lesion label map")
    enhancing_desc: str = option("enhancing", "Mask name of the enhancing-lesion mask")
    report: bool = option(True, "Write group_report.html")


@dataclass(frozen=True)
class StudyOptions(Options):
    """The simulated MS perfusion study (:func:`gpuperf.cohort.study.simulate_study`)."""

    n_controls: int = option(4, "Control subjects", flag="--controls")
    n_patients: int = option(4, "Patient subjects", flag="--patients")
    noise_sd: float = option(0.2, "Noise SD (tissue M0 is 1000)", flag="--noise", minimum=0)
    seed: int = option(0, "Random seed", flag="--seed")
    repeats: int = option(4, "Control/label pairs", minimum=1)

    def _check(self) -> None:
        if self.n_controls < 2 or self.n_patients < 2:
            raise InputError(None, "--controls/--patients", "at least 2 subjects per group")


__all__ = ["CohortOptions", "GroupOptions", "StudyOptions"]
