"""Whole-cohort processing: BIDS discovery, participant runs (local, processes, Dask), group table.

The BIDS-App interface ``gpuperf run BIDS_DIR OUT_DIR {participant,group}`` is a thin shell over
:func:`run_participants` and :func:`group_table`. See ``docs/cohort.md``.
"""

from gpuperf.cohort.bids import Job, find_jobs, inherited_sidecars, merged_sidecar
from gpuperf.cohort.config import CohortConfig, load_config
from gpuperf.cohort.group import COLUMNS as GROUP_COLUMNS
from gpuperf.cohort.group import GroupResult, group_table
from gpuperf.cohort.jobs import JobResult, fingerprint, is_complete, run_job, stage_inputs
from gpuperf.cohort.runner import CohortRun, dask_client, dataset_description, run_participants

__all__ = [
    "GROUP_COLUMNS",
    "CohortConfig",
    "CohortRun",
    "GroupResult",
    "Job",
    "JobResult",
    "dask_client",
    "dataset_description",
    "find_jobs",
    "fingerprint",
    "group_table",
    "inherited_sidecars",
    "is_complete",
    "load_config",
    "merged_sidecar",
    "run_job",
    "run_participants",
    "stage_inputs",
]
