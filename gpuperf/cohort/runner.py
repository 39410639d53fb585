"""The participant stage: every series of a BIDS dataset through its pipeline.

Three ways to run the same jobs (:func:`gpuperf.cohort.jobs.run_job`), chosen by the arguments
of :func:`run_participants`:

- ``workers=1`` (default): jobs run in this process, one after another, while a thread pool
  decompresses and stages the next ``prefetch`` subjects (zlib releases the GIL, so reading the
  next subjects overlaps with computing the current one); with ``batch_voxels`` (automatic on
  a GPU), consecutive compatible ASL subjects are fitted in one backend call
  (:mod:`gpuperf.cohort.batching`);
- ``workers=N``: N local worker processes (``spawn``: safe with CUDA), each staging and computing
  its own subjects; the processes overlap each other's I/O and compute;
- ``scheduler=ADDRESS`` or ``cluster='slurm'``: Dask distributed. Tasks receive file paths
  (a :class:`~gpuperf.cohort.bids.Job`), never arrays; the output folder must be on a file
  system the workers share. ``cluster='slurm'`` starts one dask-jobqueue worker per GPU.

Whatever the mode, results are the same file for file: a job's output depends only on its
inputs and options.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf._version import __version__
from gpuperf.cohort.batching import auto_batch_voxels, run_batched
from gpuperf.cohort.bids import Job, find_jobs
from gpuperf.cohort.config import CohortConfig, check_pipeline_options, load_config
from gpuperf.cohort.jobs import (
    DEFAULT_PIPELINES,
    REPORT_OPTION,
    JobResult,
    JobSettings,
    Pipeline,
    Staged,
    fingerprint,
    is_complete,
    pipeline_name,
    remove_leftovers,
    resolve_pipeline,
    run_job,
    stage_inputs,
    wants_report,
    write_shared,
)
from gpuperf.cohort.options import CohortOptions
from gpuperf.errors import GpuperfError, InputError
from gpuperf.io.outputs import check_out_dir
from gpuperf.progress import Reporter, ensure_reporter

FAILURE_COLUMNS = ("subject", "session", "modality", "series", "error_type", "error", "log")
JOB_COLUMNS = (
    "job_id",
    "subject",
    "session",
    "modality",
    "status",
    "stage_s",
    "compute_s",
    "prepare_s",
    "write_s",
    "publish_s",
    "fit_s",
    "kernel_s",
    "report_s",
    "n_outputs",
    "error",
)


@dataclass
class CohortRun:
    """Outcome of a participant-stage run.

    Attributes
    ----------
    results : list of JobResult
        One per job, in job order.
    wall_s : float
        Wall-clock seconds of the whole run.
    out_dir : Path
    mode : str
        ``local``, ``processes(N)`` or ``dask``.
    """

    results: list[JobResult]
    wall_s: float
    out_dir: Path
    mode: str = "local"

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when every job is done or skipped, 1 when any failed."""
        return 1 if self.failed else 0


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    """``dataset_description.json`` of the derivatives (BIDS "Derived dataset" fields)."""
    src = {}
    try:
        src = json.loads((bids_dir / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        pass
    return {
        "Name": f"gpuperf perfusion maps of {src.get('Name', bids_dir.name)}",
        "BIDSVersion": src.get("BIDSVersion", "1.9.0"),
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "gpuperf",
                "Version": __version__,
                "Description": "GPU-accelerated voxelwise perfusion fitting (DSC and ASL)",
            }
        ],
        "SourceDatasets": [{"URL": bids_dir.resolve().as_uri()}],
    }


def _write_tsv(path: Path, columns: Sequence[str], rows: list[Mapping[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["n/a" if r.get(c) in (None, "") else r.get(c) for c in columns])
    write_shared(path, buf.getvalue())


def _local_results(
    jobs: list[Job], tasks: Mapping[str, JobSettings], settings: CohortOptions
) -> Iterator[JobResult]:
    """Run jobs in this process, staging the next ``settings.prefetch`` ones in threads; with
    ``settings.batch_voxels > 1``, consecutive compatible subjects are computed together
    (:mod:`gpuperf.cohort.batching`)."""
    todo: list[Job] = []
    for job in jobs:  # done jobs are reported at once and never staged
        task = tasks[job.modality]
        try:
            done = is_complete(job, task.out_dir, fingerprint(job, task.options, task.pipeline))
        except Exception:  # e.g. an input vanished: run_job reports it as this job's failure
            done = False
        if done:
            yield run_job(job, task)
        else:
            todo.append(job)
    if not todo:
        return
    batched = bool(settings.batch_voxels and settings.batch_voxels > 1)
    if not batched and any(wants_report(tasks[j.modality].options) for j in todo):
        from gpuperf.cohort.reporting import prepares_aside, run_overlapped, worker_kind

        # reports overlap the next compute, in a worker process when there are enough subjects;
        # that process also prepares subjects: it reads the gzipped series itself
        kind = worker_kind(tasks, len(todo))
        aside = kind == "process" and all(
            prepares_aside(resolve_pipeline(t.pipeline), t.options) for t in tasks.values()
        )
        staged = _staged_ahead(todo, settings.prefetch, settings.work_dir, inflate=not aside)
        yield from run_overlapped(staged, tasks, worker=kind)
        return
    staged = _staged_ahead(todo, settings.prefetch, settings.work_dir)
    if batched:
        yield from run_batched(staged, tasks, settings.batch_voxels)
    else:
        for job, inputs in staged:
            yield run_job(job, tasks[job.modality], inputs)


def _staged_ahead(
    todo: list[Job], prefetch: int, work_dir: str | PathLike | None, inflate: bool = True
) -> Iterator[tuple[Job, Staged | None]]:
    """Each job with its inputs staged by a thread pool ``prefetch`` jobs ahead (None when
    ``prefetch <= 0`` or staging failed: the job then stages, and reports, itself); ``inflate``
    as for :func:`gpuperf.cohort.jobs.stage_inputs`."""
    if prefetch <= 0:  # no read-ahead: each job stages its own inputs (for comparisons)
        for job in todo:
            yield job, None
        return
    pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="gpuperf-stage")
    pending: dict[int, Future] = {}

    def submit(i: int) -> None:
        if i < len(todo):
            pending[i] = pool.submit(stage_inputs, todo[i], work_dir, inflate=inflate)

    try:
        for i in range(prefetch + 1):
            submit(i)
        for i, job in enumerate(todo):
            fut = pending.pop(i)
            submit(i + prefetch + 1)
            try:
                staged = fut.result()
            except Exception:
                staged = None  # run_job stages again and reports the error as a failure
            yield job, staged
    finally:
        for fut in pending.values():
            fut.cancel()
        pool.shutdown(wait=True)
        for fut in pending.values():  # staged but never used (interrupted)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().cleanup()


def _crashed(
    job: Job,
    exc: BaseException,
    out_dir: Path | None = None,
    work_dir: str | PathLike | None = None,
) -> JobResult:
    """The result of a job whose worker died or whose task could not run at all; removes what
    the dead worker left (its hidden temporary outputs, its staged inputs)."""
    import shutil
    from concurrent.futures.process import BrokenProcessPool

    if out_dir is not None and (out_dir / job.out_subdir).is_dir():
        remove_leftovers(job, out_dir / job.out_subdir)
    if work_dir is not None:  # only a scratch folder of this run, never a shared one
        for p in Path(work_dir).glob(f"gpuperf-stage-{job.job_id}-*"):
            shutil.rmtree(p, ignore_errors=True)

    if isinstance(exc, BrokenProcessPool) or type(exc).__name__ == "KilledWorker":
        msg = (
            "the worker process running this series died (crash, segmentation fault or "
            f"out of memory): {type(exc).__name__}: {exc}"
        )
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return JobResult(
        job.job_id,
        job.subject,
        job.session,
        job.modality,
        str(job.series),
        "failed",
        error_type=type(exc).__name__,
        error=msg.replace("\n", " "),
    )


def _process_results(
    jobs: list[Job], tasks: Mapping[str, JobSettings], settings: CohortOptions
) -> Iterator[tuple[int, JobResult]]:
    """Run jobs in ``settings.workers`` processes, at most that many in flight (GPUs dealt
    from ``settings.gpus``).

    A worker that dies (segfault in a driver, the kernel's OOM killer) breaks a
    ``ProcessPoolExecutor``; the jobs then in flight are *suspects*. Each suspect is re-run
    alone in a fresh process, which identifies the culprit (reported failed) without failing
    the innocent ones, and the remaining jobs continue in a new pool.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    workers = settings.workers
    ctx = mp.get_context("spawn")
    pin = (ctx.Value("i", 0), settings.gpus) if settings.gpus else None
    init: dict[str, Any] = {"initializer": _worker_init, "initargs": (os.getpid(), pin)}

    def submit(pool: ProcessPoolExecutor, i: int) -> Future:
        return pool.submit(run_job, jobs[i], tasks[jobs[i].modality])

    def crashed(i: int, exc: BaseException) -> JobResult:
        return _crashed(jobs[i], exc, tasks[jobs[i].modality].out_dir, settings.work_dir)

    queue = list(range(len(jobs)))
    suspects: list[int] = []
    while queue or suspects:
        if suspects:  # alone in a fresh process: a second death convicts this job
            i = suspects.pop(0)
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx, **init) as solo:
                try:
                    yield i, submit(solo, i).result()
                except Exception as exc:
                    yield i, crashed(i, exc)
            continue
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **init)
        inflight: dict[Future, int] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < workers:
                    i = queue.pop(0)
                    inflight[submit(pool, i)] = i
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    i = inflight.pop(fut)
                    try:
                        yield i, fut.result()
                    except BrokenProcessPool:
                        broken = True
                        suspects.append(i)
                    except Exception as exc:  # e.g. the task could not be pickled
                        yield i, crashed(i, exc)
                if broken:
                    suspects.extend(inflight.values())
                    inflight.clear()
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


#: Seconds between two checks of the worker's parent (the watchdog thread).
WATCHDOG_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (the runner) ends, however it ends.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); a
    daemon thread checks the parent's pid as well (other systems, and a parent that died before
    the ``prctl``). A worker killed this way releases its GPU memory with its CUDA context,
    writes no done-marker, and its staged outputs stay in hidden temporary folders, which the
    next run removes.
    """
    import signal
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_S)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:  # the parent died while this process started
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="gpuperf-parent-watchdog", daemon=True).start()


def _worker_init(parent_pid: int, pin: tuple[Any, tuple[str, ...]] | None) -> None:
    """Worker-process initializer: die with the runner; pin a GPU (see :func:`_pin_gpu`)."""
    die_with_parent(parent_pid)
    if pin is not None:
        _pin_gpu(*pin)


def _pin_gpu(counter: Any, gpus: tuple[str, ...]) -> None:
    """Worker-process initializer: the i-th worker sees only GPU ``gpus[i % len(gpus)]``.

    Runs before the worker imports CuPy, so ``CUDA_VISIBLE_DEVICES`` takes effect.
    """
    import os

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])


def dask_client(
    scheduler: str | None = None,
    cluster: str | None = None,
    workers: int = 1,
    cluster_options: Mapping[str, Any] | None = None,
):
    """A ``distributed.Client`` for a scheduler address or a new SLURM cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    cluster : {'slurm'}, optional
        Start workers through ``dask_jobqueue.SLURMCluster``: one single-threaded worker per
        SLURM job, each job asking for one GPU (``--gres=gpu:1`` unless ``cluster_options``
        says otherwise), ``workers`` jobs.
    cluster_options : mapping, optional
        Keyword arguments of ``SLURMCluster`` (queue, account, walltime, memory, ...).

    Raises
    ------
    GpuperfError
        Dask (or dask-jobqueue) is not installed: ``pip install 'gpuperf[cluster]'``.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise GpuperfError(
            "running on a Dask scheduler or cluster needs the 'distributed' package: "
            "pip install 'gpuperf[cluster]'"
        ) from exc
    if scheduler:
        return Client(scheduler), None
    if cluster == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise GpuperfError(
                "--cluster slurm needs the 'dask-jobqueue' package: pip install 'gpuperf[cluster]'"
            ) from exc
        opts: dict[str, Any] = {
            "cores": 1,
            "processes": 1,
            "memory": "16GB",
            "job_extra_directives": ["--gres=gpu:1"],
        }
        opts.update(cluster_options or {})
        slurm = SLURMCluster(**opts)
        slurm.scale(jobs=max(1, workers))
        return Client(slurm), slurm
    raise InputError(None, "cluster", f"unknown cluster kind {cluster!r}; expected 'slurm'")


def _dask_results(
    client, jobs: list[Job], tasks: Mapping[str, JobSettings]
) -> Iterator[tuple[int, JobResult]]:
    from distributed import as_completed

    futs = [
        client.submit(
            run_job,
            job,
            tasks[job.modality],
            pure=False,
            key=f"gpuperf-{job.job_id}-{time.time_ns()}",
        )
        for job in jobs
    ]
    index = {f.key: i for i, f in enumerate(futs)}
    try:
        for fut in as_completed(futs):
            i = index[fut.key]
            try:
                res = fut.result()
            except Exception as exc:  # KilledWorker after Dask's retries, lost data, ...
                # (the scratch space is the worker's)
                res = _crashed(jobs[i], exc, tasks[jobs[i].modality].out_dir)
            yield i, res
    except BaseException:
        client.cancel(futs)
        raise


def run_participants(
    bids_dir: str | PathLike,
    out_dir: str | PathLike,
    *,
    config: CohortConfig | str | PathLike | None = None,
    pipelines: Mapping[str, str | Pipeline] | None = None,
    reporter: Reporter | None = None,
    options: CohortOptions | None = None,
    **settings: Any,
) -> CohortRun:
    """Process every selected series of a BIDS dataset (BIDS-App ``participant`` level).

    Parameters
    ----------
    bids_dir, out_dir : path-like
        The BIDS dataset and the derivatives folder (created).
    config : CohortConfig or path-like, optional
        Options (see :mod:`gpuperf.cohort.config`); saved as ``logs/config.json``.
    pipelines : mapping, optional
        Pipeline per modality (callable or ``"module:function"``); default ``run_dsc`` and
        ``run_asl``. The injection point used by tests.
    reporter : Reporter, optional
        One progress bar over subjects plus one line per subject.
    options : CohortOptions, optional
        Which series and how they run (:class:`gpuperf.cohort.options.CohortOptions`, the
        flags of ``gpuperf run``); each field may be given as a keyword instead:
    participant_label, session_label : list of str, optional
        Subjects/sessions to run (default: all).
    modality : list of {'asl', 'dsc'}, optional
        Default: both.
    dsc_pattern : str, optional
        Glob for DSC series relative to the subject/session folder (overrides the config).
    workers : int
        Local worker processes (1: this process, with prefetch threads); with ``cluster``, the
        number of SLURM jobs.
    scheduler : str, optional
        Dask scheduler address; ``cluster='slurm'`` starts one instead.
    device : {'auto', 'cpu', 'gpu'}, optional
        Passed to the pipelines (overrides the config's ``device``).
    gpus : sequence of str, optional
        With ``workers > 1``: GPU ids (``CUDA_VISIBLE_DEVICES`` values) dealt round-robin to
        the worker processes, one GPU per worker (e.g. ``["0", "1"]`` with ``workers=2``).
    overwrite : bool
        Replace outputs of complete earlier runs made with other inputs or parameters.
    prefetch : int
        Subjects staged (decompressed) ahead of the one computing (``workers=1``); 0 turns
        read-ahead off.
    work_dir : path-like, optional
        Where this run's scratch folder for staged inputs (``gpuperf-run-*``, removed at
        the end) is made; default: the system temporary folder. On Dask, each worker's own
        temporary folder (or ``work_dir`` if it exists there).
    batch_voxels : int, optional
        With ``workers=1``: compute consecutive compatible subjects (same pipeline, model and
        constants; see :mod:`gpuperf.cohort.batching`) in one backend call, up to this many
        voxels per batch; 0 or 1: one subject at a time. Default: automatic, on for a GPU
        backend with a budget from its free memory, off on NumPy (nothing to gain). Outputs
        are the same either way. Worker processes and Dask run one subject per call.
    report : bool, optional
        Write each subject's QC report next to its maps (overrides the configuration's
        ``report`` key of each modality; default on) and the cohort page.

    Returns
    -------
    CohortRun
        ``exit_code`` is non-zero if any subject failed. Failures are also listed in
        ``logs/failures.tsv`` and every job's status in ``logs/jobs.tsv``.
    """
    t_start = time.perf_counter()
    run_opts = CohortOptions.resolve(options, settings, "run_participants")
    rep = ensure_reporter(reporter)
    bids_dir = Path(bids_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "OUT_DIR", "exists and is not a folder")
    if out_dir.resolve() == bids_dir.resolve() or bids_dir.resolve() in out_dir.resolve().parents:
        if not out_dir.resolve().is_relative_to(bids_dir.resolve() / "derivatives"):
            raise InputError(
                out_dir,
                "OUT_DIR",
                "output folder must not be inside the BIDS dataset (except under derivatives/)",
            )
    cfg = config if isinstance(config, CohortConfig) else load_config(config)
    inputs = dict(cfg.inputs)
    if run_opts.dsc_pattern:
        inputs["dsc_pattern"] = run_opts.dsc_pattern
    jobs = find_jobs(
        bids_dir,
        participant_label=run_opts.participant_label,
        session_label=run_opts.session_label,
        modality=run_opts.modality,
        **inputs,
    )
    pipes = {m: (pipelines or {}).get(m, DEFAULT_PIPELINES[m]) for m in ("dsc", "asl")}
    options_of: dict[str, dict[str, Any]] = {"dsc": dict(cfg.dsc), "asl": dict(cfg.asl)}
    for m in options_of:
        if run_opts.device is not None:
            options_of[m]["device"] = run_opts.device
        if run_opts.report is not None:
            options_of[m][REPORT_OPTION] = run_opts.report
    for m in sorted({j.modality for j in jobs}):  # fail now, not once per subject
        check_pipeline_options(options_of[m], resolve_pipeline(pipes[m]), cfg.source, m)
    if not run_opts.local or not jobs:  # worker processes and Dask compute one subject a call
        run_opts = run_opts.replace(batch_voxels=0)
    elif run_opts.batch_voxels is None:
        run_opts = run_opts.replace(batch_voxels=auto_batch_voxels(options_of, pipes))
    check_out_dir(out_dir, flag="OUT_DIR")  # creates it; refuses a read-only or virtual file system
    write_shared(out_dir / "dataset_description.json", dataset_description(bids_dir))
    effective = cfg.to_dict()
    effective.update(
        inputs=inputs,
        dsc=options_of["dsc"],
        asl=options_of["asl"],
        run={
            "bids_dir": str(bids_dir.resolve()),
            **run_opts.to_parameters(),
            "gpuperf": __version__,
            "pipelines": {m: pipeline_name(p) for m, p in pipes.items()},
        },
    )
    stamp = time.strftime("%Y%m%dT%H%M%S")
    write_shared(out_dir / "logs" / "config.json", effective)
    write_shared(out_dir / "logs" / f"config_{stamp}.json", effective)

    results: list[JobResult | None] = [None] * len(jobs)
    mode = "local"
    dask = bool(run_opts.scheduler or run_opts.cluster)
    cleanup = contextlib.ExitStack()
    if not dask:
        # one scratch folder per run, removed at the end whatever happened (a worker killed
        # mid-job cannot clean its staged inputs); Dask workers use their own local space
        if run_opts.work_dir is not None:
            Path(run_opts.work_dir).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="gpuperf-run-", dir=run_opts.work_dir))
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        run_opts = run_opts.replace(work_dir=scratch)
    tasks = {
        m: JobSettings(out_dir, options_of[m], pipes[m], run_opts.overwrite, run_opts.work_dir)
        for m in pipes
    }

    def iterate() -> Iterator[tuple[int, JobResult]]:
        nonlocal mode
        if dask:
            mode = "dask"
            client, slurm = dask_client(
                run_opts.scheduler, run_opts.cluster, run_opts.workers, cfg.cluster
            )
            if slurm is not None:
                cleanup.callback(slurm.close)
            cleanup.callback(client.close)
            yield from _dask_results(client, jobs, tasks)
        elif run_opts.workers > 1:
            mode = f"processes({run_opts.workers})"
            yield from _process_results(jobs, tasks, run_opts)
        else:
            order = {j.job_id: i for i, j in enumerate(jobs)}
            for r in _local_results(jobs, tasks, run_opts):
                yield order[r.job_id], r

    with cleanup:
        for i, res in rep.track(iterate(), total=len(jobs), description="subjects"):
            results[i] = res
            if res.status == "failed":
                rep.log(f"[red]failed[/] {res.job_id}: {res.error}")
            else:
                took = res.stage_s + res.compute_s + res.publish_s
                rep.log(f"{res.status} {res.job_id}" + (f" ({took:.2f} s)" if took else ""))
    done = [r for r in results if r is not None]
    run = CohortRun(done, time.perf_counter() - t_start, out_dir, mode)
    _write_tsv(
        out_dir / "logs" / "failures.tsv", FAILURE_COLUMNS, [r.to_dict() for r in run.failed]
    )
    _write_tsv(
        out_dir / "logs" / "jobs.tsv",
        JOB_COLUMNS,
        [
            {
                **r.to_dict(),
                "n_outputs": len(r.outputs),
                **{k: round(getattr(r, k), 4) for k in JOB_COLUMNS if k.endswith("_s")},
            }
            for r in done
        ],
    )
    try:  # the cohort QC page: one row per subject, outliers flagged
        from gpuperf.report import rows_from_jobs, write_cohort_report

        if run_opts.report is not False:
            write_cohort_report(out_dir, rows_from_jobs(out_dir, done), overwrite=True)
    except Exception as exc:  # maps and logs are already safe; never fail the run for the page
        rep.warn(f"cohort report not written: {type(exc).__name__}: {exc}")
    rep.log(
        f"{run.count('done')} done, {run.count('skipped')} skipped, {len(run.failed)} failed "
        f"in {run.wall_s:.1f} s ({mode})"
    )
    for r in run.failed:
        rep.log(f"[red]FAILED[/] {r.job_id}: {r.error} (log: {r.log})")
    return run


__all__ = ["CohortRun", "dask_client", "dataset_description", "run_participants"]
