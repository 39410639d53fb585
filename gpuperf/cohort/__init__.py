"""Whole-cohort processing: BIDS discovery, participant runs (local, processes, Dask), group table.

The BIDS-App interface ``gpuperf run BIDS_DIR OUT_DIR {participant,group}`` is a thin shell over
:func:`run_participants` and :func:`group_table`, whose settings are the fields of
:class:`CohortOptions` and :class:`GroupOptions`. See ``docs/cohort.md``.

The names are imported on first use (PEP 562): ``import gpuperf.cohort.options`` (what the
command line needs for its flags) does not load NumPy, nibabel or the runner.
"""

from gpuperf._lazy import lazy_attributes

#: Public name -> the module that defines it.
_LAZY = {
    "GROUP_COLUMNS": "gpuperf.cohort.group",
    "CohortConfig": "gpuperf.cohort.config",
    "CohortOptions": "gpuperf.cohort.options",
    "CohortRun": "gpuperf.cohort.runner",
    "GroupOptions": "gpuperf.cohort.options",
    "GroupResult": "gpuperf.cohort.group",
    "Job": "gpuperf.cohort.bids",
    "JobResult": "gpuperf.cohort.jobs",
    "JobSettings": "gpuperf.cohort.jobs",
    "dask_client": "gpuperf.cohort.runner",
    "dataset_description": "gpuperf.cohort.runner",
    "find_jobs": "gpuperf.cohort.bids",
    "fingerprint": "gpuperf.cohort.jobs",
    "group_table": "gpuperf.cohort.group",
    "inherited_sidecars": "gpuperf.cohort.bids",
    "is_complete": "gpuperf.cohort.jobs",
    "load_config": "gpuperf.cohort.config",
    "merged_sidecar": "gpuperf.cohort.bids",
    "run_job": "gpuperf.cohort.jobs",
    "run_participants": "gpuperf.cohort.runner",
    "stage_inputs": "gpuperf.cohort.jobs",
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
