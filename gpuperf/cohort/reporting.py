"""Subject reports built in the background, overlapping the next subject's compute.

With reports on (the default, as for ``gpuperf dsc``/``asl``) a subject's time is read
(staging) + compute (pipeline) + report + publish. The report and the publish step need only
the subject's written files, so :func:`run_overlapped` hands them to a background worker and
starts the next subject's compute at once. At most ``depth`` subjects wait for their report,
so memory stays bounded; results come back in job order. A failure in the background is that
job's failure (:func:`gpuperf.cohort.jobs.finish_job` never raises; a worker process that dies
fails the job it held).

The worker is a **process** (:class:`ReportProcess`: one per run, started at once, its imports
overlapping the first compute; it opens no GPU) when the run has at least
:data:`PROCESS_MIN_JOBS` subjects to compute, the machine has a spare core and the pipelines
are named by ``"module:function"`` (the defaults): a thread would share the interpreter lock
with the next subject's compute, and on two cores the reports then set the pace. The process
also writes the subject's maps when it is idle by the time the subject is computed (a staged
pipeline on the NumPy backend stops after its compute stage,
:func:`gpuperf.cohort.jobs.compute_job`; otherwise they are written here: the two processes
share the work as their loads allow), and it computes the subject's numbers and
thumbnail for the cohort page (:func:`gpuperf.report.cohort.precompute_row`), so the page at
the end of the run reads no map again: the computing process reads, prepares and fits.
Otherwise (few subjects, one core, pipelines given as callables, as tests inject them) the
worker is a thread.

The done-marker is still written last, after the report is published with the maps: a run
killed while a report is drawn leaves that subject incomplete, and the next run redoes it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

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
    write_computed,
)
from gpuperf.errors import GpuperfError

#: Fewest subjects to compute for the report worker to be a process (starting one costs about
#: the imports of a report, ~0.3-0.5 s, paid once and overlapped with the first compute).
PROCESS_MIN_JOBS = 4


def _finish(oj: OpenJob, res: Any) -> JobResult:
    try:
        return finish_job(oj, res)
    finally:
        oj.close()


def worker_kind(settings: Mapping[str, JobSettings], n_jobs: int | None) -> str:
    """``"process"`` or ``"thread"``: the report worker :func:`run_overlapped` uses by default
    (see the module docstring)."""
    named = all(isinstance(s.pipeline, str) for s in settings.values())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    many = n_jobs is not None and n_jobs >= PROCESS_MIN_JOBS
    return "process" if named and many and (cores or 1) >= 2 else "thread"


class WorkerGone(GpuperfError):
    """The report worker process exited before returning a job's result."""


class ReportProcess:
    """One worker process that finishes open jobs (:func:`gpuperf.cohort.jobs.finish_job`) in
    the order they are submitted.

    It is ``python -m gpuperf.cohort.reporting``, fed length-prefixed pickles of
    ``(OpenJob, result)`` on its standard input and answering ``JobResult`` pickles on its
    standard output; a thread here resolves the futures. Not :mod:`multiprocessing`: its
    ``spawn`` imports the caller's main script again in the child, which fails (or runs the
    script twice) for a script without an ``if __name__ == "__main__"`` guard. The open job's
    log file is reopened in the worker (in append mode; lines stay whole), and the caller's
    copy removes the scratch folders once the result is back.
    """

    #: Arguments of the Python interpreter that runs the worker (None: :meth:`command`).
    COMMAND: tuple[str, ...] | None = None

    @staticmethod
    def command() -> tuple[str, ...]:
        """``python -m gpuperf.cohort.reporting`` with this gpuperf importable: its folder is
        appended to the worker's ``sys.path`` (last: it shadows nothing), as when the caller
        imported gpuperf from a checkout or a path it added itself."""
        import gpuperf

        root = str(Path(gpuperf.__file__).resolve().parent.parent)
        launch = (
            f"import runpy, sys; sys.path.append({root!r}); "
            "runpy.run_module('gpuperf.cohort.reporting', run_name='__main__', alter_sys=True)"
        )
        return ("-c", launch)

    def __init__(self) -> None:
        import subprocess
        import sys
        import threading

        self._proc = subprocess.Popen(
            [sys.executable, *(self.COMMAND or self.command())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pending: deque[Future[JobResult]] = deque()
        self._lock = threading.Lock()
        self.alive = True
        self._reader = threading.Thread(target=self._read, name="gpuperf-report-reader")
        self._reader.daemon = True
        self._reader.start()

    def submit(self, oj: OpenJob, res: Any) -> Future[JobResult]:
        """Send one open job to the worker; raises :class:`WorkerGone` if it has exited or the
        job does not pickle (then the caller finishes the job itself)."""
        fut: Future[JobResult] = Future()
        try:
            data = pickle.dumps((oj, res), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # e.g. a pipeline's result that does not pickle: not sent
            raise WorkerGone(f"cannot send this job to the report worker process: {exc}") from exc
        with self._lock:
            if not self.alive:
                raise WorkerGone("the report worker process has exited")
            self._pending.append(fut)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self._proc.stdin.flush()
        except OSError as exc:  # a broken pipe: the reader fails what is pending
            raise WorkerGone(f"the report worker process has exited ({exc})") from exc
        return fut

    def _read(self) -> None:
        out = self._proc.stdout
        assert out is not None
        while True:
            head = out.read(8)
            if len(head) < 8:
                break
            payload = out.read(struct.unpack("<Q", head)[0])
            with self._lock:
                fut = self._pending.popleft()
            try:
                fut.set_result(pickle.loads(payload))
            except Exception as exc:  # pragma: no cover - a truncated answer
                fut.set_exception(exc)
        code = self._proc.wait()
        with self._lock:
            self.alive = False
            pending, self._pending = list(self._pending), deque()
        for fut in pending:
            fut.set_exception(WorkerGone(f"the report worker process exited (code {code})"))

    def shutdown(self) -> None:
        """Let the worker finish what it holds, then end it."""
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._proc.wait()
        self._reader.join()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The worker's loop (:class:`ReportProcess`): finish each open job it is sent, answer
    its result; returns at the end of its input. A thread takes the jobs off the pipe as they
    come, so the sender never waits on a full pipe while a report is drawn."""
    import queue
    import threading

    inbox: queue.Queue[bytes | None] = queue.Queue()

    def take() -> None:
        while True:
            head = stdin.read(8)
            if len(head) < 8:
                inbox.put(None)
                return
            inbox.put(stdin.read(struct.unpack("<Q", head)[0]))

    threading.Thread(target=take, name="gpuperf-report-inbox", daemon=True).start()
    while (blob := inbox.get()) is not None:
        oj, res = pickle.loads(blob)
        try:
            result = finish_job(oj, res)
        finally:
            oj.reporter.close()  # the caller's copy removes the scratch folders
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(struct.pack("<Q", len(data)) + data)
        stdout.flush()


def run_overlapped(
    staged_jobs: Iterable[tuple[Job, Staged | None]],
    settings: Mapping[str, JobSettings],
    depth: int = 1,
    worker: str = "thread",
) -> Iterator[JobResult]:
    """:func:`gpuperf.cohort.jobs.run_job` of each job, with the report and publish step of a
    subject (:func:`~gpuperf.cohort.jobs.finish_job`) in a background worker while the next
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
    worker : {"thread", "process"}
        The background worker (:func:`worker_kind` chooses for a run).

    Yields
    ------
    JobResult
        In job order.
    """
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuperf-report")
    proc = ReportProcess() if worker == "process" else None  # starts now: imports overlap
    # (open job, its future, whether the worker process holds it)
    waiting: deque[tuple[OpenJob, Future[JobResult], bool]] = deque()

    def result(oj: OpenJob, fut: Future[JobResult], remote: bool) -> JobResult:
        if not remote:
            return fut.result()  # _finish closed the job
        try:
            return fut.result()
        except WorkerGone as exc:  # died holding it: no done-marker, so a re-run redoes it
            return fail_job(oj, exc)
        finally:
            oj.close()  # the scratch folders (the worker published what it kept)

    def submit(oj: OpenJob, res: Any) -> tuple[OpenJob, Future[JobResult], bool]:
        if proc is not None and proc.alive:
            with contextlib.suppress(WorkerGone):  # gone, or not sendable: the thread takes it
                return oj, proc.submit(oj, res), True
        return oj, thread.submit(_finish, oj, res), False

    def drain(keep: int = 0) -> Iterator[JobResult]:
        while len(waiting) > keep:
            yield result(*waiting.popleft())

    try:
        for job, staged in staged_jobs:
            oj = open_job(job, settings[job.modality], staged)
            if isinstance(oj, JobResult):  # skipped, or failed before the pipeline
                yield from drain()  # keep job order
                yield oj
                continue
            remote = proc is not None and proc.alive and wants_report(oj.options)
            try:
                res = compute_job(oj, write=not remote)
                if remote and any(r and not f.done() for _oj, f, r in waiting):
                    res = write_computed(oj, res)  # the worker is still busy: write here
            except Exception as exc:
                failed = fail_job(oj, exc)
                oj.close()
                yield from drain()
                yield failed
                continue
            except BaseException:  # an interrupt: remove this job's scratch, as run_job does
                oj.close()
                raise
            if not wants_report(oj.options):  # nothing slow left: publish here
                yield from drain()
                yield _finish(oj, res)
                continue
            waiting.append(submit(oj, res))
            yield from drain(depth)
        yield from drain()
    finally:
        thread.shutdown(wait=True, cancel_futures=True)
        if proc is not None:
            proc.shutdown()
        for oj, _fut, _remote in waiting:  # interrupted: what never came back leaves no scratch
            oj.close()  # (again, for a thread that finished it: closing twice is harmless)


__all__ = [
    "PROCESS_MIN_JOBS",
    "ReportProcess",
    "WorkerGone",
    "run_overlapped",
    "serve",
    "worker_kind",
]


if __name__ == "__main__":  # the worker process of ReportProcess
    import signal
    import sys
    import warnings

    # Ctrl-C reaches the whole process group: the caller handles it (it closes our input, we
    # finish the job we hold, whole, and end), so no traceback from here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore", RuntimeWarning)  # as the CLI does (all-NaN slices, ...)
    _answers = os.fdopen(os.dup(1), "wb")  # the protocol's channel; prints go to stderr
    os.dup2(2, 1)
    serve(sys.stdin.buffer, _answers)
