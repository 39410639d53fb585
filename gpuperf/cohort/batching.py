"""Fitting several small subjects in one backend call (the in-process runner's batching).

A GPU fit of one small subject is dominated by fixed costs (kernel launches, transfers,
synchronisations), not by its voxels; concatenating the voxels of several subjects and fitting
them in one call amortises them. A pipeline takes part when it exposes its three stages as
attributes (``run_asl`` and ``run_dsc`` do; see :mod:`gpuperf.asl.pipeline` and
:mod:`gpuperf.dsc.pipeline`):

- ``pipeline.prepare(series, out_dir, *, prefix, overwrite, reporter, **options)`` -> an object
  with ``batch_key`` (hashable; equal keys may be computed together; None: nothing to batch)
  and ``n_voxels``: loading and validation, everything before the heavy per-voxel work;
- ``pipeline.compute(list_of_prepared)``: the per-voxel work of all of them, in one call for
  equal keys, results stored on each prepared object;
- ``pipeline.write(prepared)`` -> what the pipeline itself returns: the subject's maps.

``pipeline(...)`` itself must be ``write`` of ``compute([prepare(...)])``, so a subject's
outputs are the same whether it was computed alone or in a batch (the fits are voxelwise).

:func:`run_batched` groups *consecutive* jobs of a modality whose prepared keys are equal (one
open group per modality, so alternating ASL and DSC jobs batch each on their own), up to a voxel
budget (jobs of a pipeline without stages run at once and do not break a group; a job of the
same modality with other settings closes its modality's group), and keeps the job contract of
:func:`gpuperf.cohort.jobs.run_job` (logs, done-markers, atomic publication, failure
isolation):

- a subject failing in ``prepare`` or ``write`` fails alone;
- if a batched ``compute`` fails, each subject of the batch is computed again alone, so only
  the culprit fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gpuperf.cohort.bids import Job
from gpuperf.cohort.jobs import (
    JobResult,
    JobSettings,
    OpenJob,
    Pipeline,
    Staged,
    fail_job,
    finish_job,
    has_stages,
    open_job,
    pipeline_name,
    resolve_pipeline,
    run_job,
)

#: Automatic batch budget on a GPU: bytes of free device memory counted per batched voxel
#: (generous: the fitters chunk their own work; this bounds what a batch holds on the host).
AUTO_BYTES_PER_VOXEL = 16 << 10
#: Automatic batch budget cap (voxels): a few dozen small subjects.
AUTO_MAX_VOXELS = 4_000_000


def is_batchable(pipeline: str | Pipeline) -> bool:
    """True when the pipeline exposes ``prepare``, ``compute`` and ``write`` stages."""
    try:
        fn = resolve_pipeline(pipeline)
    except Exception:
        return False
    return has_stages(fn)


def auto_batch_voxels(
    options: Mapping[str, Mapping[str, Any]], pipelines: Mapping[str, str | Pipeline]
) -> int:
    """The default voxel budget of a batch: 0 (off) on NumPy, where one vectorised call per
    subject already costs what the voxels cost; on a GPU a budget from its free memory.

    Parameters
    ----------
    options : mapping modality -> pipeline options (their ``device``)
    pipelines : mapping modality -> pipeline

    Returns
    -------
    int
        Voxels per batch (0: batching off).
    """
    from gpuperf.backend import get_backend

    budget = 0
    for modality, pipe in pipelines.items():
        if not is_batchable(pipe):
            continue
        try:
            backend = get_backend(str(options.get(modality, {}).get("device", "auto")))
            if backend.name != "cupy":
                continue
            free = int(backend.free_memory_bytes())
        except Exception:  # no usable GPU: the subjects' own runs report it
            continue
        budget = max(budget, min(AUTO_MAX_VOXELS, free // 2 // AUTO_BYTES_PER_VOXEL))
    return int(budget)


@dataclass
class _Member:
    oj: OpenJob
    prepared: Any
    key: Any
    n_voxels: int


def _log(member: _Member, message: str) -> None:
    member.oj.reporter.log(message)


def _compute(members: list[_Member]) -> Iterator[tuple[_Member, BaseException | None]]:
    """Compute ``members`` in one call; on failure each alone. Yields (member, error)."""
    fn = members[0].oj.fn
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        fn.compute([m.prepared for m in members])
    except Exception as exc:
        error = exc
    took = time.perf_counter() - t0
    if error is None or len(members) == 1:
        total = sum(m.n_voxels for m in members)
        for m in members:
            m.oj.compute_s += took / len(members)
            if len(members) > 1:
                _log(
                    m,
                    f"computed in a batch of {len(members)} series ({total} voxels) "
                    f"in {took:.3f} s",
                )
            yield m, error
        return
    failure = f"{type(error).__name__}: {error}".replace("\n", " ")
    for m in members:  # find the culprit: each one alone
        _log(m, f"the batch of {len(members)} series failed ({failure}); computing this one alone")
        t0 = time.perf_counter()
        try:
            fn.compute([m.prepared])
            alone: BaseException | None = None
        except Exception as exc:
            alone = exc
        m.oj.compute_s += time.perf_counter() - t0
        yield m, alone


def _flush(members: list[_Member]) -> Iterator[JobResult]:
    """Compute a group, write and publish each subject; closes every member."""
    if not members:
        return
    try:
        for m, error in _compute(members):
            try:
                if error is not None:
                    yield fail_job(m.oj, error)
                    continue
                t0 = time.perf_counter()
                try:
                    res = m.oj.fn.write(m.prepared)
                except Exception as exc:
                    yield fail_job(m.oj, exc)
                    continue
                m.oj.compute_s += time.perf_counter() - t0
                _log(m, f"pipeline finished in {m.oj.compute_s:.3f} s")
                yield finish_job(m.oj, res)
            finally:
                m.oj.close()
    finally:
        for m in members:  # interrupted: a closed job closes again harmlessly
            m.oj.close()
        members.clear()


def run_batched(
    pairs: Iterable[tuple[Job, Staged | None]],
    settings: Mapping[str, JobSettings],
    batch_voxels: int,
) -> Iterator[JobResult]:
    """Run jobs, computing consecutive compatible subjects together (one result per job).

    Parameters
    ----------
    pairs : iterable of (Job, Staged or None)
        Jobs in order, with their inputs staged ahead when available.
    settings : mapping modality -> JobSettings
        As for :func:`gpuperf.cohort.jobs.run_job`.
    batch_voxels : int
        Most voxels in one batch; a subject larger than that is computed alone.

    Yields
    ------
    JobResult
        One per job; a job may come out before the jobs of a batch opened ahead of it (of
        another modality, or of a pipeline without stages).
    """
    # one open group per pipeline (modality): a cohort's jobs alternate modalities
    # (sub-01_asl, sub-01_dsc, sub-02_asl, ...), and each modality batches on its own
    groups: dict[tuple, list[_Member]] = {}
    totals: dict[tuple, int] = {}
    try:
        for job, staged in pairs:
            task = settings[job.modality]
            pipe = task.pipeline
            if not is_batchable(pipe):  # run now; the open groups of other jobs stay open
                yield run_job(job, task, staged)
                continue
            oj = open_job(job, task, staged)
            if isinstance(oj, JobResult):  # skipped, or failed before computing
                yield oj
                continue
            try:
                args, kwargs = oj.call_args()
                t0 = time.perf_counter()
                prepared = oj.fn.prepare(*args, **kwargs)
                oj.compute_s = time.perf_counter() - t0
                key = prepared.batch_key
                n_vox = int(prepared.n_voxels)
            except Exception as exc:  # this subject alone fails
                try:
                    yield fail_job(oj, exc)
                finally:
                    oj.close()
                continue
            except BaseException:
                oj.close()
                raise
            stream = (job.modality, pipeline_name(pipe))
            member = _Member(oj, prepared, (*stream, key), n_vox)
            group = groups.setdefault(stream, [])
            fits = key is not None and group and member.key == group[0].key
            if group and not (fits and totals[stream] + n_vox <= batch_voxels):
                yield from _flush(group)
                totals[stream] = 0
            group.append(member)
            totals[stream] = totals.get(stream, 0) + n_vox
            if key is None or totals[stream] >= batch_voxels:
                yield from _flush(group)
                totals[stream] = 0
        for group in groups.values():
            yield from _flush(group)
    finally:
        for group in groups.values():
            for m in group:
                m.oj.close()


__all__ = ["AUTO_BYTES_PER_VOXEL", "auto_batch_voxels", "is_batchable", "run_batched"]
