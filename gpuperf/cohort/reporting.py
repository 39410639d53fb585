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
import functools
import io
import itertools
import os
import pickle
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gpuperf.cohort.bids import Job
from gpuperf.cohort.jobs import (
    JobResult,
    JobSettings,
    OpenJob,
    Staged,
    claim_prepare,
    compute_job,
    fail_job,
    finish_job,
    has_stages,
    load_job,
    open_job,
    prepare_job,
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


class _Pickler(pickle.Pickler):
    """Pickles with some objects left out by reference (``ids``: ``id(obj)`` -> a name): the
    receiving end has its own copies and puts them in their place (:class:`_Unpickler`). A
    job's log reporter (no second handle on the log), and what the worker loaded and kept
    (only what the computing process made goes back)."""

    def __init__(self, file: BinaryIO, ids: Mapping[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ids = ids

    def persistent_id(self, obj: Any) -> str | None:  # noqa: D102
        return self._ids.get(id(obj)) if self._ids else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, objects: Mapping[str, Any]) -> None:
        super().__init__(file)
        self._objects = objects

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        try:
            return self._objects[pid]
        except KeyError:  # pragma: no cover - only the sender's own names come here
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}") from None


def _write_frame(stream: BinaryIO, data: bytes) -> None:
    """One message of the protocol: its length (8 bytes, little-endian), then its bytes."""
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next message :func:`_write_frame` wrote, None at the end of the stream."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    return stream.read(struct.unpack("<Q", head)[0])


def _dumps(obj: Any, by_name: Mapping[str, Any] | None = None) -> bytes:
    """Pickle ``obj`` with the objects of ``by_name`` left out by name."""
    buf = io.BytesIO()
    _Pickler(buf, {id(v): k for k, v in (by_name or {}).items()}).dump(obj)
    return buf.getvalue()


def _loads(data: bytes, by_name: Mapping[str, Any] | None = None) -> Any:
    return _Unpickler(io.BytesIO(data), by_name or {}).load()


#: Attribute values too small to be worth sending by reference.
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _kept_objects(loaded: Any) -> dict[str, Any]:
    """The attributes of a subject the worker loaded (:meth:`ReportProcess.prepare`), by
    name: both ends hold them, so they cross back by reference."""
    try:
        attrs = vars(loaded)
    except TypeError:  # no __dict__: the whole subject goes back
        return {}
    return {f"loaded.{k}": v for k, v in attrs.items() if not isinstance(v, _PLAIN)}


class ReportProcess:
    """One worker process that prepares subjects ahead and finishes open jobs
    (:func:`gpuperf.cohort.jobs.finish_job`), in the order they are submitted.

    It is ``python -m gpuperf.cohort.reporting``, fed length-prefixed pickles of requests on
    its standard input and answering length-prefixed pickles on its standard output; a thread
    here resolves the futures. Not :mod:`multiprocessing`: its ``spawn`` imports the caller's
    main script again in the child, which fails (or runs the script twice) for a script
    without an ``if __name__ == "__main__"`` guard. The open job's log file is reopened in the
    worker (in append mode; lines stay whole), and the caller's copy removes the scratch folders
    once the result is back. The worker never opens a GPU (``GPUPERF_DISABLE_GPU`` is set in its
    environment): it is sent only subjects computed on the CPU to prepare.

    Requests: ``("prepare", token, oj)`` (:meth:`prepare`), ``("finish", token, oj, body)``
    (:meth:`submit`) and ``("forget", token)`` (:meth:`forget`).
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
            env={**os.environ, "GPUPERF_DISABLE_GPU": "1"},
        )
        for pipe in (self._proc.stdin, self._proc.stdout):  # a subject's maps in one write
            _widen(pipe)
        # each request's future, with how to read its answer
        self._pending: deque[tuple[Future[Any], Callable[[bytes], Any]]] = deque()
        self._lock = threading.Lock()
        self.alive = True
        self._tokens = itertools.count()
        self._reader = threading.Thread(target=self._read, name="gpuperf-report-reader")
        self._reader.daemon = True
        self._reader.start()

    def _send(self, request: tuple[Any, ...], decode: Callable[[bytes], Any] | None) -> Future[Any]:
        """Send one request; its answer resolves the returned future through ``decode`` (None:
        a request without an answer)."""
        fut: Future[Any] = Future()
        try:
            data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # e.g. a pipeline's result that does not pickle: not sent
            raise WorkerGone(f"cannot send this job to the report worker process: {exc}") from exc
        with self._lock:
            if not self.alive:
                raise WorkerGone("the report worker process has exited")
            if decode is not None:
                self._pending.append((fut, decode))
        try:
            assert self._proc.stdin is not None
            _write_frame(self._proc.stdin, data)
        except (OSError, ValueError) as exc:  # a broken pipe: the reader fails what is pending
            raise WorkerGone(f"the report worker process has exited ({exc})") from exc
        return fut

    def prepare(self, oj: OpenJob) -> Ahead:
        """Ask the worker to load an open job's subject
        (:func:`gpuperf.cohort.jobs.load_job`) when it gets to it, unless this process has
        claimed it by then (:func:`gpuperf.cohort.jobs.claim_prepare`): see :meth:`Ahead.take`.
        Raises :class:`WorkerGone` if the worker has exited."""
        token = next(self._tokens)
        by_name = {"reporter": oj.reporter}
        fut = self._send(("prepare", token, oj), functools.partial(_loads, by_name=by_name))
        return Ahead(token, fut)

    def submit(self, oj: OpenJob, res: Any, ahead: Ahead | None = None) -> Future[JobResult]:
        """Send one open job to the worker to finish; raises :class:`WorkerGone` if it has
        exited or the job does not pickle (then the caller finishes the job itself).

        ``ahead``: the job was sent to :meth:`prepare` (the worker frees what it kept of it);
        when the worker loaded the subject, what ``res`` shares with what it loaded crosses by
        reference (:func:`_kept_objects`): the fit and what the model stages made go back,
        not the inputs."""
        token = None if ahead is None else ahead.token
        try:
            body = _dumps(res, ahead.kept if ahead is not None else None)
        except Exception as exc:  # e.g. a pipeline's result that does not pickle: not sent
            raise WorkerGone(f"cannot send this job to the report worker process: {exc}") from exc
        return self._send(("finish", token, oj, body), pickle.loads)

    def forget(self, ahead: Ahead) -> None:
        """Tell the worker to drop what it kept of a subject it prepared and will not finish
        (it failed here, or this process finishes it); no answer."""
        with contextlib.suppress(WorkerGone):  # gone: nothing kept
            self._send(("forget", ahead.token), None)

    def _read(self) -> None:
        out = self._proc.stdout
        assert out is not None
        while (payload := _read_frame(out)) is not None:
            with self._lock:
                fut, decode = self._pending.popleft()
            try:
                fut.set_result(decode(payload))
            except Exception as exc:  # pragma: no cover - a truncated answer
                fut.set_exception(exc)
        code = self._proc.wait()
        with self._lock:
            self.alive = False
            pending, self._pending = list(self._pending), deque()
        for fut, _decode in pending:
            fut.set_exception(WorkerGone(f"the report worker process exited (code {code})"))

    def shutdown(self) -> None:
        """Let the worker finish what it holds, then end it."""
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._proc.wait()
        self._reader.join()


def _widen(pipe: Any) -> None:
    """Grow a pipe's buffer to 1 MiB (Linux; the default 64 KiB makes a writer wait for the
    reader at every 64 KiB, and the reader's thread shares its process's interpreter lock
    with a report being drawn)."""
    import fcntl

    with contextlib.suppress(OSError, ValueError, AttributeError):
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)


class Ahead:
    """A subject sent to the worker to prepare (:meth:`ReportProcess.prepare`)."""

    def __init__(self, token: int, fut: Future[Any]) -> None:
        self.token = token
        self._fut = fut
        #: What the worker loaded and keeps (:func:`_kept_objects`), as :meth:`take` returned
        #: it (before ``run.finish_load`` and the compute add to it).
        self.kept: dict[str, Any] = {}

    def take(self, oj: OpenJob) -> Any:
        """The subject the worker loaded (``run.load``: the caller runs ``run.finish_load``),
        waiting for it if the worker has claimed it, else None: the caller has claimed it now
        and prepares it itself (also when the worker died holding it). A failure of the
        worker's ``load`` is raised here, as the caller's own would be. The worker's
        ``prepare_s`` is set on ``oj``."""
        if claim_prepare(oj):
            return None
        try:
            answer = self._fut.result()
        except WorkerGone:
            return None
        if answer[0] == "error":
            raise answer[1]
        if answer[0] != "prepared":  # it did not pickle there: prepared here
            return None
        _kind, loaded, oj.prepare_s = answer
        oj.prepared_aside = True
        self.kept = _kept_objects(loaded)
        return loaded


def _prepare_answer(oj: OpenJob) -> tuple[Any, ...]:
    """The worker's answer to a prepare request: ``("skipped",)`` when the caller claimed the
    subject first, ``("prepared", loaded, seconds)`` (``run.load``), or ``("error",
    exception)``."""
    import traceback

    if not claim_prepare(oj):
        return ("skipped",)
    try:
        loaded = load_job(oj)
    except Exception as exc:
        oj.reporter.log(f"prepare failed in the report worker process:\n{traceback.format_exc()}")
        try:  # the caller raises it as its own: it must come back whole
            pickle.loads(pickle.dumps(exc))
        except Exception:
            text = str(exc) if isinstance(exc, GpuperfError) else f"{type(exc).__name__}: {exc}"
            exc = GpuperfError(text)
        return ("error", exc)
    return ("prepared", loaded, oj.prepare_s)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The worker's loop (:class:`ReportProcess`): answer each request it is sent, in order;
    returns at the end of its input. A thread takes the requests off the pipe as they come,
    so the sender never waits on a full pipe while a report is drawn."""
    import queue
    import threading

    inbox: queue.Queue[bytes | None] = queue.Queue()

    def take() -> None:
        while True:
            frame = _read_frame(stdin)
            inbox.put(frame)
            if frame is None:
                return

    def answer(data: bytes) -> None:
        _write_frame(stdout, data)

    threading.Thread(target=take, name="gpuperf-report-inbox", daemon=True).start()
    kept: dict[int, tuple[OpenJob, Any]] = {}  # prepared here, by token, until finished
    while (blob := inbox.get()) is not None:
        request = pickle.loads(blob)
        if request[0] == "forget":
            mine = kept.pop(request[1], None)
            if mine is not None:
                mine[0].reporter.close()
            continue
        if request[0] == "prepare":
            _kind, token, oj = request
            reply = _prepare_answer(oj)
            try:
                data = _dumps(reply, {"reporter": oj.reporter})
            except Exception:  # a prepared subject that does not pickle: the caller prepares it
                reply, data = ("skipped",), _dumps(("skipped",))
            if reply[0] == "prepared":
                kept[token] = (oj, reply[1])
            else:
                oj.reporter.close()
            answer(data)
            continue
        _kind, token, oj, body = request
        mine = kept.pop(token, None) if token is not None else None
        try:
            try:
                res = _loads(body, _kept_objects(mine[1]) if mine is not None else {})
            except Exception as exc:  # pragma: no cover - what the caller sent is whole
                result = fail_job(oj, exc)
            else:
                result = finish_job(oj, res)
        finally:
            oj.reporter.close()  # the caller's copy removes the scratch folders
            if mine is not None:
                mine[0].reporter.close()
        answer(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def prepares_aside(fn: Any, options: Mapping[str, Any]) -> bool:
    """Whether the report worker process may load the subjects of a pipeline with these
    options (``run.load``; the computing process runs ``run.finish_load``, the model stages of
    DSC, and the compute): a staged pipeline with these two parts
    (:func:`gpuperf.io.stages.staged_pipeline`) computed on the CPU (the worker opens no GPU),
    with a report (the worker exists for those)."""
    if not has_stages(fn) or not all(callable(getattr(fn, a, None)) for a in _SPLIT):
        return False
    if not wants_report(options):
        return False
    device = options.get("device", "auto")
    if device == "cpu":
        return True
    if device != "auto":
        return False
    from gpuperf.backend import gpu_status

    return not gpu_status()[0]


#: The two parts of a staged pipeline's ``prepare`` (:func:`gpuperf.io.stages.staged_pipeline`).
_SPLIT = ("load", "finish_load")


def run_overlapped(
    staged_jobs: Iterable[tuple[Job, Staged | None]],
    settings: Mapping[str, JobSettings],
    depth: int = 1,
    worker: str = "thread",
) -> Iterator[JobResult]:
    """:func:`gpuperf.cohort.jobs.run_job` of each job, with the report and publish step of a
    subject (:func:`~gpuperf.cohort.jobs.finish_job`) in a background worker while the next
    subject computes; a worker process also prepares the next subject (reads and checks its
    inputs) while this one computes, when it is free first.

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
    jobs = iter(staged_jobs)
    # every job opened, in job order: a result, or a job to compute or waiting for its report
    order: deque[_Entry] = deque()
    todo: deque[_Entry] = deque()  # opened, not computed yet (the next one prepared aside)
    lookahead = 2 if proc is not None else 1
    exhausted = False  # every job opened

    def open_more() -> None:
        nonlocal exhausted
        for job, staged in jobs:
            oj = open_job(job, settings[job.modality], staged)
            entry = _Entry(result=oj) if isinstance(oj, JobResult) else _Entry(oj=oj)
            order.append(entry)
            if entry.oj is not None:
                todo.append(entry)
                if (
                    proc is not None
                    and proc.alive
                    and prepares_aside(entry.oj.fn, entry.oj.options)
                ):
                    with contextlib.suppress(WorkerGone):
                        entry.ahead = proc.prepare(entry.oj)
                if len(todo) >= lookahead:
                    return
        exhausted = True

    def finished(entry: _Entry) -> JobResult:
        if entry.result is not None:
            return entry.result
        oj, fut = entry.oj, entry.fut
        assert oj is not None and fut is not None
        if not entry.remote:
            return fut.result()  # _finish closed the job
        try:
            return fut.result()
        except WorkerGone as exc:  # died holding it: no done-marker, so a re-run redoes it
            return fail_job(oj, exc)
        finally:
            oj.close()  # the scratch folders (the worker published what it kept)

    def submit(entry: _Entry, res: Any, busy: bool) -> None:
        oj = entry.oj
        assert oj is not None
        if busy and exhausted and not todo:  # the last subject, while the worker is busy: this
            entry.fut = thread.submit(_finish, oj, res)  # process has nothing else to do
            forget(entry)
            return
        if proc is not None and proc.alive:
            with contextlib.suppress(WorkerGone):  # gone, or not sendable: the thread takes it
                entry.fut = proc.submit(oj, res, entry.ahead)
                entry.remote = True
                return
        entry.fut = thread.submit(_finish, oj, res)

    def forget(entry: _Entry) -> None:
        if proc is not None and entry.ahead is not None and entry.oj is not None:
            if entry.oj.prepared_aside:  # the worker keeps it
                proc.forget(entry.ahead)

    def drain(waiting_max: int) -> Iterator[JobResult]:
        """Results from the front of the job order: those that are there, and the oldest
        reports until at most ``waiting_max`` wait."""
        while order and order[0] is not (todo[0] if todo else None):
            front = order[0]
            waiting = sum(e.fut is not None for e in order)
            if front.result is None and front.fut is not None and waiting <= waiting_max:
                if not front.fut.done():
                    return
            order.popleft()
            front.result = finished(front)
            yield front.result

    try:
        while True:
            open_more()
            if not todo:
                break
            entry = todo.popleft()
            oj = entry.oj
            assert oj is not None
            remote = proc is not None and proc.alive and wants_report(oj.options)
            prepared = None
            try:
                loaded = entry.ahead.take(oj) if entry.ahead is not None else None
                if loaded is not None:
                    t_model = time.perf_counter()
                    prepared = oj.fn.finish_load(loaded)  # the model stages: here
                    oj.prepare_s += time.perf_counter() - t_model
                elif remote and has_stages(oj.fn):
                    prepared = prepare_job(oj)
                res = compute_job(oj, write=not remote, prepared=prepared)
                busy = any(e.remote and not e.fut.done() for e in order if e.fut)
                if remote and busy:
                    res = write_computed(oj, res)  # the worker is still busy: write here
            except Exception as exc:
                entry.result = fail_job(oj, exc)
                oj.close()
                forget(entry)
                yield from drain(0)
                continue
            except BaseException:  # an interrupt: remove this job's scratch, as run_job does
                oj.close()
                raise
            if not wants_report(oj.options):  # nothing slow left: publish here
                yield from drain(0)
                entry.result = _finish(oj, res)
                yield from drain(0)
                continue
            submit(entry, res, remote and busy)
            yield from drain(depth)
        yield from drain(0)
    finally:
        thread.shutdown(wait=True, cancel_futures=True)
        if proc is not None:
            proc.shutdown()
        for entry in order:  # interrupted: what never came back leaves no scratch
            if entry.oj is not None and entry.result is None:
                entry.oj.close()  # (again, for a thread that finished it: harmless)


@dataclass
class _Entry:
    """One opened job of :func:`run_overlapped`: its result, or the open job with its
    prepare request (``ahead``) and, once computed, the future of its report."""

    oj: OpenJob | None = None
    result: JobResult | None = None
    ahead: Ahead | None = None
    fut: Future[JobResult] | None = None
    remote: bool = False


__all__ = [
    "PROCESS_MIN_JOBS",
    "Ahead",
    "prepares_aside",
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
    # every answer is sent and every file it wrote is closed (the logs; maps and reports are
    # published by rename): skip the interpreter's teardown (~0.2 s the caller would wait)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
