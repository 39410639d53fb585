"""Visual quality-control reports: one self-contained HTML page per run and per cohort.

Reports are built from a run's written outputs (maps, sidecars, AIF table, masks and the
optional ``<prefix>_qc.npz``), so they are decoupled from the pipelines and can be regenerated
with ``gpuperf report``. See ``docs/report.md``.
"""

from gpuperf.report.cohort import robust_z, rows_from_jobs, summarize_run, write_cohort_report
from gpuperf.report.collect import (
    EXTRA_FORMAT,
    find_runs,
    load_extra,
    load_run,
    save_extra,
    stage_extra,
)
from gpuperf.report.curves import voxel_curves
from gpuperf.report.run import publish_result, publish_run_report, report_path, write_run_report

__all__ = [
    "EXTRA_FORMAT",
    "find_runs",
    "load_extra",
    "load_run",
    "publish_result",
    "publish_run_report",
    "report_path",
    "robust_z",
    "rows_from_jobs",
    "save_extra",
    "stage_extra",
    "summarize_run",
    "voxel_curves",
    "write_cohort_report",
    "write_run_report",
]
