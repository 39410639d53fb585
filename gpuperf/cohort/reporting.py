"""Subject reports built in the background, overlapping the next subject's compute.

With reports on (the default, as for ``gpuperf dsc``/``asl``) a subject's time is read
(staging) + compute (pipeline) + report + publish. The report and the publish step need only
the subject's written files, so :func:`run_overlapped` hands them to one background thread and
starts the next subject's compute at once: on a machine with a spare core the report costs
(almost) no wall time. At most ``depth`` subjects wait for their report, so memory stays
bounded; results come back in job order. A failure in the background is that job's failure
(:func:`gpuperf.cohort.jobs.finish_job` never raises).

The done-marker is still written last, after the report is published with the maps: a run
killed while a report is drawn leaves that subject incomplete, and the next run redoes it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from gpuperf.cohort.bids import Job
from gpuperf.cohort.jobs import (
    JobResult,
    JobSettings,
    OpenJob,
    Staged,
    compute_job,
    fail_job,
    finish_job,
    open_job,
    wants_report,
)


def _finish(oj: OpenJob, res: Any) -> JobResult:
    try:
        return finish_job(oj, res)
    finally:
        oj.close()


def run_overlapped(
    staged_jobs: Iterable[tuple[Job, Staged | None]],
    settings: Mapping[str, JobSettings],
    depth: int = 1,
) -> Iterator[JobResult]:
    """:func:`gpuperf.cohort.jobs.run_job` of each job, with the report and publish step of a
    subject (:func:`~gpuperf.cohort.jobs.finish_job`) in a background thread while the next
    subject computes.

    Parameters
    ----------
    staged_jobs : iterable of (Job, Staged or None)
        Jobs with their inputs staged ahead (``gpuperf.cohort.runner._staged_ahead``).
    settings : mapping modality -> JobSettings
        As for :func:`gpuperf.cohort.jobs.run_job`.
    depth : int
        Most subjects waiting for their report (1: the report of subject i overlaps the
        compute of subject i + 1).

    Yields
    ------
    JobResult
        In job order.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuperf-report")
    waiting: deque[Future[JobResult]] = deque()
    try:
        for job, staged in staged_jobs:
            oj = open_job(job, settings[job.modality], staged)
            if isinstance(oj, JobResult):  # skipped, or failed before the pipeline
                while waiting:  # keep job order
                    yield waiting.popleft().result()
                yield oj
                continue
            try:
                res = compute_job(oj)
            except Exception as exc:
                result = fail_job(oj, exc)
                oj.close()
                while waiting:
                    yield waiting.popleft().result()
                yield result
                continue
            except BaseException:  # an interrupt: remove this job's scratch, as run_job does
                oj.close()
                raise
            if not wants_report(oj.options):  # nothing slow left: publish here
                while waiting:
                    yield waiting.popleft().result()
                yield _finish(oj, res)
                continue
            waiting.append(pool.submit(_finish, oj, res))
            while len(waiting) > depth:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()
    finally:
        pool.shutdown(wait=True)


__all__ = ["run_overlapped"]
