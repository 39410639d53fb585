"""Running one series: staging its inputs, calling the pipeline, publishing, the done-marker.

Everything here works on file paths so that a job can run in this process, in a worker process,
or on a Dask worker on another machine sharing the file system.

Life of a job (:func:`run_job`):

0. **tidy**: remove the hidden ``.gpuperf-tmp-<job>-*`` files and folders a killed earlier run
   of the same job left (:func:`remove_leftovers`).
1. **fingerprint** (:func:`fingerprint`): SHA-256 over the inputs (size and modification time of
   every image, content of every sidecar/TSV, including inherited sidecars) and the parameters
   (pipeline, options, gpuperf version).
2. **skip** if the done-marker holds the same fingerprint and every output it lists is present
   with its recorded size (:func:`is_complete`).
3. **stage** (:func:`stage_inputs`): link the images into a scratch folder and write the
   *merged* (inherited) sidecar next to them, so that the pipeline, which reads the sidecar
   beside its input, sees the BIDS inheritance principle applied; the gzipped images are
   inflated now, into memory, for the pipeline's read of the link to take. Inflating is the
   slow part of reading, which is why the runner does it ahead in a thread pool.
4. **compute** into a hidden temporary folder inside the final folder.
5. **publish**: rewrite the staged paths in the sidecars' ``Sources`` back to the original
   files, drop the old done-marker, move each file into place (``os.replace``, atomic), and
   write the new done-marker last (atomically). A run killed at any point leaves no partial
   file under a final name, and no marker for a job whose outputs are incomplete.

:func:`run_job` is :func:`open_job` (steps 0-3 and the scratch folder), the pipeline call, and
:func:`finish_job` (step 5); :mod:`gpuperf.cohort.batching` uses the same pieces around the
stages of several pipelines computed together. What the jobs of a run share (output folder,
pipeline and options, overwrite policy, scratch space) is one :class:`JobSettings`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf._version import __version__
from gpuperf.cohort.bids import Job, inherited_sidecars, merged_sidecar, strip_nifti
from gpuperf.errors import GpuperfError, OutputExistsError
from gpuperf.io.outputs import TMP_PREFIX, atomic_write_bytes, discard_journals
from gpuperf.io.readahead import (
    drop_read_ahead,
    forget_written,
    gunzip_bytes,
    provide_read_ahead,
)
from gpuperf.io.stages import REPORT_OUTPUTS
from gpuperf.progress import Reporter
from gpuperf.provenance import jsonable

#: Prefix of a job's done-marker file, inside the job's output folder.
MARKER_PREFIX = ".gpuperf-done_"
#: Where the default pipelines live (``module:function``), resolved lazily in the worker.
DEFAULT_PIPELINES = {
    "dsc": "gpuperf.dsc.pipeline:run_dsc",
    "asl": "gpuperf.asl.pipeline:run_asl",
}

Pipeline = Callable[..., Any]


@dataclass
class JobResult:
    """What happened to one job (picklable, JSON-able).

    Attributes
    ----------
    status : {'done', 'skipped', 'failed'}
    stage_s, compute_s, publish_s : float
        Seconds spent decompressing/staging inputs, in the pipeline, and publishing outputs.
    prepare_s, write_s : float
        Of ``compute_s``, the seconds of a staged pipeline's ``prepare`` (reading and checking
        the inputs) and ``write`` (the maps) stages (0 for a pipeline without stages).
    prepared_aside : bool
        Whether the cohort's report worker process prepared the subject while the computing
        process computed the one before (:mod:`gpuperf.cohort.reporting`): ``prepare_s``
        then overlapped another subject's compute.
    fit_s, kernel_s, report_s : float
        Of ``compute_s``, the seconds in the fit (the pipeline's ``fit_s``/``fit_seconds``) and
        in the model's per-voxel stages, the fit included (``kernel_s``: DSC adds the
        conversion to dR2*, the bolus arrival and the AIF selection; else the fit); seconds
        drawing the QC report (0 without one).
    outputs : list of str
        Output files, relative to the output folder.
    error_type, error : str or None
        Exception class name and message of a failed job.
    cohort_row : dict
        With a report: the subject's numbers and thumbnail for the cohort page, computed with
        the report (``precomputed`` of :data:`gpuperf.report.cohort.ROW_FORMAT`), so that the
        page need not read every subject's maps again at the end of the run.
    """

    job_id: str
    subject: str
    session: str | None
    modality: str
    series: str
    status: str
    stage_s: float = 0.0
    compute_s: float = 0.0
    publish_s: float = 0.0
    fit_s: float = 0.0
    kernel_s: float = 0.0
    report_s: float = 0.0
    prepare_s: float = 0.0
    write_s: float = 0.0
    prepared_aside: bool = False
    outputs: list[str] = field(default_factory=list)
    error_type: str | None = None
    error: str | None = None
    log: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    cohort_row: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cohort_row")  # the cohort page's numbers and thumbnail (PNG bytes), not a column
        return d


def resolve_pipeline(spec: str | Pipeline) -> Pipeline:
    """A pipeline callable from itself or a ``"module:function"`` string."""
    if callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise GpuperfError(f"pipeline {spec!r} cannot be imported: {exc}") from exc


def pipeline_name(spec: str | Pipeline) -> str:
    if isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"


def write_shared(path: str | PathLike, data: bytes | str | Any, tag: str = "") -> None:
    """:func:`gpuperf.io.outputs.atomic_write_bytes` of bytes, text or JSON (anything else).

    ``tag`` (the job id) lets the next run of the same job remove a killed write's leftover.
    """
    if not isinstance(data, (bytes, str)):
        data = json.dumps(jsonable(data), indent=2) + "\n"
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data, tag=tag)


def remove_leftovers(job: Job, folder: Path) -> None:
    """Delete what a killed run of ``job`` left in ``folder`` (hidden temporary files/folders)."""
    for stale in folder.glob(f"{TMP_PREFIX}{job.job_id}-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# -- fingerprint and done-marker ---------------------------------------------------------------
def job_inputs(job: Job) -> list[Path]:
    """Every file whose change must make the job run again."""
    files = [job.series, *job.companions.values()]
    files += inherited_sidecars(job.series, job.bids_root)
    if "m0scan" in job.companions:
        files += inherited_sidecars(job.companions["m0scan"], job.bids_root)
    return sorted(set(files))


def fingerprint(job: Job, options: Mapping[str, Any], pipeline: str | Pipeline) -> str:
    """SHA-256 of the job's inputs and parameters (hex).

    Images enter through their size and modification time (hashing gigabytes of images on each
    re-run would cost as much as decompressing them); sidecars and TSVs through their content.
    """
    h = hashlib.sha256()
    params = {
        "pipeline": pipeline_name(pipeline),
        "options": options,
        "version": __version__,
        "prefix": job.prefix,
    }
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for f in job_inputs(job):
        rel = os.path.relpath(f, job.bids_root)
        h.update(rel.encode() + b"\0")
        if f.name.endswith((".json", ".tsv")):
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            st = f.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def marker_path(job: Job, out_dir: str | PathLike) -> Path:
    return Path(out_dir) / job.out_subdir / f"{MARKER_PREFIX}{job.job_id}.json"


def read_marker(job: Job, out_dir: str | PathLike) -> dict[str, Any] | None:
    p = marker_path(job, out_dir)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(job: Job, out_dir: str | PathLike, fp: str) -> bool:
    """True when the done-marker has fingerprint ``fp`` and all its outputs are intact."""
    marker = read_marker(job, out_dir)
    if not marker or marker.get("Fingerprint") != fp:
        return False
    for rel, size in marker.get("Outputs", {}).items():
        p = Path(out_dir) / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


# -- staging -----------------------------------------------------------------------------------
@dataclass
class Staged:
    """Inputs of a job made ready to read: linked images (gzipped ones inflated in memory)
    and merged sidecars.

    Attributes
    ----------
    folder : Path or None
        Scratch folder to delete afterwards (None when nothing needed staging).
    series : Path
        The path to give the pipeline.
    renames : dict of str to str
        Staged path -> original path, to restore provenance in the output sidecars.
    seconds : float
    inflated : list of Path
        Staged links whose inflated bytes wait in memory for the pipeline's read.
    """

    folder: Path | None
    series: Path
    renames: dict[str, str]
    seconds: float
    inflated: list[Path] = field(default_factory=list)

    def cleanup(self) -> None:
        for p in self.inflated:  # not read (the job failed or was skipped): free the memory
            drop_read_ahead(p)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _stage_image(
    src: Path, folder: Path, renames: dict[str, str], inflated: list[Path] | None
) -> Path:
    """A link to ``src`` in the staging folder; a ``.nii.gz`` is also inflated now, into memory
    (:func:`gpuperf.io.readahead.provide_read_ahead`: the pipeline's ``load_image`` of the link
    takes the bytes; ISA-L and zlib release the GIL, so prefetch threads overlap the compute),
    unless ``inflated`` is None (then the reader of the link inflates it)."""
    dst = folder / src.name
    os.symlink(src.resolve(), dst)
    renames[str(dst)] = str(src)
    if inflated is not None and src.name.endswith(".nii.gz"):
        try:
            data = gunzip_bytes(src.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            from gpuperf.errors import InputError

            raise InputError(src, "format", f"cannot decompress: {exc}") from exc
        provide_read_ahead(dst, data)
        inflated.append(dst)
    return dst


def stage_inputs(
    job: Job, work_dir: str | PathLike | None = None, *, inflate: bool = True
) -> Staged:
    """Link the job's series (and M0 scan) into a scratch folder, inflate the gzipped ones
    into memory (:func:`_stage_image`) and write their merged sidecars.

    Parameters
    ----------
    work_dir : path-like, optional
        Scratch space (default: the system temporary folder): links and sidecars only; the
        inflated series of the subjects being prefetched are held in memory.
    inflate : bool
        Inflate gzipped images now, in this process (default). False when another process
        may read them (the cohort's report worker prepares subjects too): its own read of the
        link inflates the file, and this process's copy would be wasted.
    """
    t0 = time.perf_counter()
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"gpuperf-stage-{job.job_id}-", dir=work_dir))
    renames: dict[str, str] = {}
    inflated: list[Path] = []
    keep = inflated if inflate else None
    try:
        series = _stage_image(job.series, folder, renames, keep)
        meta = merged_sidecar(job.series, job.bids_root)
        sc = folder / (strip_nifti(job.series.name) + ".json")
        sc.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        renames[str(sc)] = str(job.series.with_name(sc.name))
        if "aslcontext" in job.companions:
            src = job.companions["aslcontext"]
            shutil.copyfile(src, folder / src.name)
            renames[str(folder / src.name)] = str(src)
        if "m0scan" in job.companions:
            m0 = job.companions["m0scan"]
            _stage_image(m0, folder, renames, keep)
            m0meta = merged_sidecar(m0, job.bids_root)
            if m0meta:
                m0sc = folder / (strip_nifti(m0.name) + ".json")
                m0sc.write_text(json.dumps(m0meta, indent=2), encoding="utf-8")
                renames[str(m0sc)] = str(m0.with_name(m0sc.name))
    except BaseException:
        for p in inflated:
            drop_read_ahead(p)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    renames[str(folder)] = str(job.series.parent)
    return Staged(folder, series, renames, time.perf_counter() - t0, inflated)


def _field_sources(job: Job, exc: BaseException, staged: Staged) -> dict[str, str]:
    """For an error in a merged (staged) sidecar: the staged path -> the sidecar that really
    supplied the field (BIDS inheritance: a root-level file may hold it, not the subject's)."""
    path, field = getattr(exc, "path", None), getattr(exc, "field", None)
    if not path or not field or path not in staged.renames:
        return {}
    original = Path(staged.renames[path])
    for data in (job.series, job.companions.get("m0scan")):
        if data is None or original.name != strip_nifti(data.name) + ".json":
            continue
        keys = str(field).split("/")
        for js in reversed(inherited_sidecars(data, job.bids_root)):
            with contextlib.suppress(OSError, ValueError):
                obj = json.loads(js.read_text(encoding="utf-8"))
                if isinstance(obj, dict) and any(k in obj for k in keys):
                    return {path: str(js)}
    return {}


def _restore_paths(obj: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: _restore_paths(v, renames) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_paths(v, renames) for v in obj]
    if isinstance(obj, str):
        for staged in sorted(renames, key=len, reverse=True):
            if staged in obj:
                obj = obj.replace(staged, renames[staged])
        return obj
    return obj


# -- per-job log -------------------------------------------------------------------------------
class FileReporter(Reporter):
    """A :class:`~gpuperf.progress.Reporter` that appends to a job's log file."""

    def __init__(self, path: Path) -> None:
        super().__init__(quiet=True)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._fh.write(f"{stamp} {message}\n")
        self._fh.flush()

    def warn(self, message: str) -> None:
        self.log(f"warning: {message}")

    def close(self) -> None:
        self._fh.close()

    # picklable (an open job travels to the report worker process): the file is reopened there,
    # in append mode, so both processes' lines land whole in the one log
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


#: Option of a modality's configuration section that the runner, not the pipeline, acts on:
#: whether to write each subject's QC report (default on, as for ``gpuperf dsc``/``asl``).
REPORT_OPTION = "report"


def wants_report(options: Mapping[str, Any]) -> bool:
    """Whether a job with these options publishes its QC report (``report``, default True)."""
    return bool(options.get(REPORT_OPTION, True))


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def _pipeline_kwargs(job: Job, options: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k != REPORT_OPTION}
    if "mask" in job.companions and kwargs.get("mask_path") is None:
        kwargs["mask_path"] = job.companions["mask"]
    if (
        job.modality == "dsc"
        and "aif_mask" in job.companions
        and kwargs.get("aif", "auto") == "auto"
    ):
        kwargs["aif"] = job.companions["aif_mask"]
    if "pv_gm" in job.companions and "pv_wm" in job.companions and kwargs.get("pv_gm") is None:
        kwargs["pv_gm"], kwargs["pv_wm"] = job.companions["pv_gm"], job.companions["pv_wm"]
    return kwargs


def _result(job: Job, status: str, **kw: Any) -> JobResult:
    return JobResult(
        job.job_id, job.subject, job.session, job.modality, str(job.series), status, **kw
    )


@dataclass(frozen=True)
class JobSettings:
    """What the jobs of one modality in a run share: everything but the series.

    Picklable (a callable pipeline must be a module-level function): it travels with each job
    to a worker process or a Dask worker.

    Attributes
    ----------
    out_dir : Path
        The derivatives folder.
    options : mapping
        Keyword arguments of the pipeline (the configuration's section of the modality), and
        ``report``.
    pipeline : callable or ``"module:function"``
        ``pipeline(series_path, out_dir, *, prefix, overwrite, reporter, **options)`` returning
        an object with ``.outputs`` (paths) and ``.summary`` (dict) -- the contract of
        ``run_dsc`` and ``run_asl``.
    overwrite : bool
        Replace outputs of an earlier *complete* run made with other inputs or parameters
        (without it such a job fails, so results are never replaced by accident). Outputs of an
        incomplete run are always redone.
    work_dir : path-like, optional
        Scratch space for staged inputs (default: the system temporary folder).
    """

    out_dir: Path
    options: Mapping[str, Any]
    pipeline: str | Pipeline
    overwrite: bool = False
    work_dir: str | PathLike | None = None


@dataclass
class OpenJob:
    """A job past its checks and its staging, its scratch output folder made: ready to compute.

    Made by :func:`open_job`; the pipeline writes into :attr:`tmp_out`; :func:`finish_job`
    publishes; :meth:`close` (always) removes the scratch folders and closes the log.
    """

    job: Job
    settings: JobSettings
    fn: Pipeline
    fp: str
    reporter: FileReporter
    log_path: Path
    staged: Staged
    tmp_out: Path
    stage_s: float = 0.0
    compute_s: float = 0.0
    prepare_s: float = 0.0
    write_s: float = 0.0
    prepared_aside: bool = False

    @property
    def options(self) -> Mapping[str, Any]:
        return self.settings.options

    def call_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments of the pipeline (or of its ``prepare`` stage)."""
        kwargs = _pipeline_kwargs(self.job, self.options)
        if wants_report(self.options) and _accepts(self.fn, "extra_outputs"):
            kwargs["extra_outputs"] = REPORT_OUTPUTS  # the pipeline then saves its QC curves
        return (self.staged.series, self.tmp_out), {
            "prefix": self.job.prefix,
            "overwrite": True,
            "reporter": self.reporter,
            **kwargs,
        }

    def close(self) -> None:
        # journals this process opened there (its maps were written here and the report by
        # the worker process, which publishes): the set's marker, not the journal, guards it
        discard_journals(self.tmp_out)
        shutil.rmtree(self.tmp_out, ignore_errors=True)
        self.staged.cleanup()
        self.reporter.close()


def _failed(
    job: Job,
    exc: BaseException,
    log_path: Path,
    reporter: FileReporter | None,
    staged: Staged | None,
    stage_s: float = 0.0,
    compute_s: float = 0.0,
) -> JobResult:
    msg = str(exc) if isinstance(exc, GpuperfError) else f"{type(exc).__name__}: {exc}"
    if staged is not None:  # name the user's files, not the scratch copies
        msg = _restore_paths(msg, {**staged.renames, **_field_sources(job, exc, staged)})
    if reporter is not None:
        reporter.log(f"FAILED: {msg}\n{traceback.format_exc()}")
    return _result(
        job,
        "failed",
        stage_s=stage_s,
        compute_s=compute_s,
        error_type=type(exc).__name__,
        error=msg.replace("\n", " "),
        log=str(log_path),
    )


def open_job(job: Job, settings: JobSettings, staged: Staged | None = None) -> OpenJob | JobResult:
    """Steps 0-3 of a job (tidy, fingerprint, skip, stage) and its scratch output folder.

    Returns a :class:`JobResult` (``skipped`` or ``failed``, everything cleaned up) when there
    is nothing to compute, else an :class:`OpenJob` whose :meth:`OpenJob.close` the caller
    must call. Parameters are those of :func:`run_job`.
    """
    out_dir = Path(settings.out_dir)
    final_dir = out_dir / job.out_subdir
    log_path = out_dir / "logs" / f"{job.job_id}.log"
    reporter: FileReporter | None = None
    stage_s = 0.0
    with contextlib.ExitStack() as undo:  # what is made here, undone unless the job opens
        if staged is not None:
            undo.callback(staged.cleanup)
        try:
            reporter = FileReporter(log_path)
            undo.callback(reporter.close)
            reporter.log(
                f"=== {job.job_id}: {job.series} (gpuperf {__version__}, pid {os.getpid()})"
            )
            fn = resolve_pipeline(settings.pipeline)
            if final_dir.is_dir():
                remove_leftovers(job, final_dir)  # of a killed earlier run of this job
            fp = fingerprint(job, settings.options, settings.pipeline)
            if is_complete(job, out_dir, fp):
                reporter.log("complete for the same inputs and parameters: skipped")
                outputs = list((read_marker(job, out_dir) or {}).get("Outputs", {}))
                return _result(job, "skipped", outputs=outputs, log=str(log_path))
            old = read_marker(job, out_dir)
            if old is not None and old.get("Fingerprint") != fp and not settings.overwrite:
                raise OutputExistsError(
                    f"{final_dir}: outputs of a complete earlier run with other inputs or "
                    "parameters exist; pass --overwrite to replace them (or use another output "
                    "folder)"
                )
            final_dir.mkdir(parents=True, exist_ok=True)
            if staged is None:
                staged = stage_inputs(job, settings.work_dir)
                undo.callback(staged.cleanup)
            stage_s = staged.seconds
            reporter.log(f"inputs staged in {stage_s:.3f} s")
            tmp_out = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{job.job_id}-", dir=final_dir))
            undo.callback(shutil.rmtree, tmp_out, ignore_errors=True)
            oj = OpenJob(job, settings, fn, fp, reporter, log_path, staged, tmp_out, stage_s)
            undo.pop_all()  # open: OpenJob.close undoes it
            return oj
        except Exception as exc:
            return _failed(job, exc, log_path, reporter, staged, stage_s)


def _write_report(oj: OpenJob, res: Any) -> dict[str, Any]:
    """The subject's QC report, written into the scratch folder so that it is published with
    the maps (the pipelines return what the report needs; they do not draw it). Returns the
    subject's row of the cohort page (numbers and thumbnail), computed here, beside the
    report, rather than by reading every subject's maps again when the page is written."""
    if not wants_report(oj.options) or not hasattr(res, "report_extra"):
        return {}
    from gpuperf.report import publish_result
    from gpuperf.report.cohort import precompute_row

    publish_result(res, overwrite=True, reporter=oj.reporter)
    return precompute_row(res.out_dir, res.prefix)


def finish_job(oj: OpenJob, res: Any) -> JobResult:
    """Write the QC report, then publish what the pipeline wrote into ``oj.tmp_out`` (step 5);
    ``res`` is the pipeline's return value (or :class:`Computed`: its maps are written first).
    Returns the ``done`` result, or ``failed`` if writing or publishing fails."""
    try:
        res = write_computed(oj, res)
        t_report = time.perf_counter()
        try:
            cohort_row = _write_report(oj, res)
        finally:
            forget_written()  # the maps kept in memory for the report
        report_s = time.perf_counter() - t_report
        t0 = time.perf_counter()
        outputs = _publish(oj, res)
        publish_s = time.perf_counter() - t0
        oj.reporter.log(f"published {len(outputs)} files (report {report_s:.2f} s)")
        summary = dict(getattr(res, "summary", {}) or {})
        fit_s = summary.get("fit_s", summary.get("fit_seconds", 0.0))
        kernel_s = summary.get("kernel_s", fit_s)
        return _result(
            oj.job,
            "done",
            stage_s=oj.stage_s,
            compute_s=oj.compute_s,
            publish_s=publish_s,
            fit_s=float(fit_s) if isinstance(fit_s, (int, float)) else 0.0,
            kernel_s=float(kernel_s) if isinstance(kernel_s, (int, float)) else 0.0,
            report_s=report_s,
            prepare_s=oj.prepare_s,
            write_s=oj.write_s,
            prepared_aside=oj.prepared_aside,
            outputs=outputs,
            log=str(oj.log_path),
            summary=jsonable(summary, strict=True),
            cohort_row=cohort_row,
        )
    except Exception as exc:
        return fail_job(oj, exc)


def has_stages(fn: Any) -> bool:
    """Whether a pipeline exposes its ``prepare``, ``compute`` and ``write`` stages
    (:func:`gpuperf.io.stages.staged_pipeline`: ``run_dsc`` and ``run_asl`` do)."""
    return all(callable(getattr(fn, stage, None)) for stage in ("prepare", "compute", "write"))


@dataclass
class Computed:
    """A subject of a staged pipeline, prepared and computed on the NumPy backend, its maps
    not yet written: what :func:`compute_job` returns with ``write=False``, for
    :func:`finish_job` (in the cohort's report worker process) to write, report and publish.
    """

    prepared: Any


#: A hidden file in a job's scratch folder: whichever process creates it first (the computing
#: process or the cohort's report worker, :func:`claim_prepare`) prepares the subject.
PREPARE_CLAIM = ".prepare-claim"


def claim_prepare(oj: OpenJob) -> bool:
    """Claim the ``prepare`` stage of an open job for this process: True for the first caller
    of any process, False after (an exclusive create in the job's scratch folder), and False
    once the job is closed (its scratch folder removed)."""
    try:
        fd = os.open(oj.tmp_out / PREPARE_CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except (FileExistsError, FileNotFoundError):
        return False
    os.close(fd)
    return True


def prepare_job(oj: OpenJob) -> Any:
    """The ``prepare`` stage of a staged pipeline (:func:`has_stages`) on the job's staged
    inputs: everything before its ``compute`` (timed into ``prepare_s``)."""
    return _timed_prepare(oj, oj.fn.prepare)


def load_job(oj: OpenJob) -> Any:
    """The first part of a staged pipeline's ``prepare`` (``run.load``: reading and checking
    the inputs, :func:`gpuperf.io.stages.staged_pipeline`) on the job's staged inputs, timed
    into ``prepare_s``; ``run.finish_load`` of its result is the prepared subject."""
    return _timed_prepare(oj, oj.fn.load)


def _timed_prepare(oj: OpenJob, stage: Callable[..., Any]) -> Any:
    args, kwargs = oj.call_args()
    t0 = time.perf_counter()
    out = stage(*args, **kwargs)
    oj.prepare_s = time.perf_counter() - t0
    return out


def compute_job(oj: OpenJob, *, write: bool = True, prepared: Any = None) -> Any:
    """Step 4: call the pipeline on the staged inputs into the scratch folder (timed, logged);
    returns what the pipeline returns.

    With ``write=False`` a staged pipeline (:func:`has_stages`) on the NumPy backend stops
    before writing its maps and returns them :class:`Computed`; :func:`finish_job` writes
    them (its time is added to ``compute_s`` there). A GPU run writes here: its results are
    on the device, and a second process should not open the device. ``prepared``: the
    subject's ``prepare`` stage done already (:func:`prepare_job`, perhaps in another process);
    its ``prepare_s`` counts into ``compute_s``.
    """
    t0 = time.perf_counter()
    earlier = 0.0  # seconds of a prepare stage done before this call
    if prepared is None and (write or not has_stages(oj.fn)):
        args, kwargs = oj.call_args()
        res = oj.fn(*args, **kwargs)
    else:
        if prepared is None:
            prepared = prepare_job(oj)
        else:
            earlier = oj.prepare_s
        oj.fn.compute([prepared])
        backend = getattr(prepared, "backend", None)
        on_host = backend is not None and not backend.is_gpu
        if on_host and not write:
            res = Computed(prepared)
        else:
            t_write = time.perf_counter()
            res = oj.fn.write(prepared)
            oj.write_s = time.perf_counter() - t_write
    oj.compute_s = earlier + time.perf_counter() - t0
    if not isinstance(res, Computed):
        oj.reporter.log(f"pipeline finished in {oj.compute_s:.3f} s")
    return res


def write_computed(oj: OpenJob, res: Any) -> Any:
    """The pipeline's result of an open job: ``res`` itself, or, for :class:`Computed`, its
    maps written (timed into ``compute_s``, logged)."""
    if not isinstance(res, Computed):
        return res
    t0 = time.perf_counter()
    res = oj.fn.write(res.prepared)
    oj.write_s = time.perf_counter() - t0
    oj.compute_s += oj.write_s
    oj.reporter.log(f"pipeline finished in {oj.compute_s:.3f} s")
    return res


def fail_job(oj: OpenJob, exc: BaseException) -> JobResult:
    """The ``failed`` result of an open job (logged with its traceback)."""
    return _failed(oj.job, exc, oj.log_path, oj.reporter, oj.staged, oj.stage_s, oj.compute_s)


def run_job(job: Job, settings: JobSettings, staged: Staged | None = None) -> JobResult:
    """Run one series end to end; never raises for a bad subject (returns ``status='failed'``).

    Parameters
    ----------
    job : Job
    settings : JobSettings
        The output folder, pipeline, its options, the overwrite policy and the scratch space.
    staged : Staged, optional
        Inputs already staged by a prefetch thread (then deleted here).

    Returns
    -------
    JobResult
    """
    oj = open_job(job, settings, staged)
    if isinstance(oj, JobResult):
        return oj
    try:
        return finish_job(oj, compute_job(oj))
    except Exception as exc:
        return fail_job(oj, exc)
    finally:
        oj.close()


def _publish(oj: OpenJob, res: Any) -> list[str]:
    job, tmp_out, out_dir = oj.job, oj.tmp_out, Path(oj.settings.out_dir)
    final_dir = out_dir / job.out_subdir
    discard_journals(tmp_out)  # the done-marker, not the pipeline's journal, guards this set
    files = sorted(p for p in tmp_out.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise GpuperfError(f"{job.series}: the pipeline wrote no output")
    for p in files:  # before any rename: a folder in the way would leave a mixed set
        if (final_dir / p.name).is_dir() and not (final_dir / p.name).is_symlink():
            raise GpuperfError(f"{final_dir / p.name}: a folder is in the way of this output")
    # the pipeline saw staged inputs and a scratch output folder: name the real ones
    renames = {**oj.staged.renames, str(tmp_out): str(final_dir)}
    for p in files:
        if p.suffix == ".json":
            obj = json.loads(p.read_text(encoding="utf-8"))
            p.write_text(
                json.dumps(_restore_paths(obj, renames), indent=2) + "\n", encoding="utf-8"
            )
        elif p.suffix == ".html":  # the QC report quotes the same paths
            p.write_text(_restore_paths(p.read_text(encoding="utf-8"), renames), encoding="utf-8")
    # the old marker goes first: from here until the new one is written the job is incomplete
    with contextlib.suppress(FileNotFoundError):
        marker_path(job, out_dir).unlink()
    outputs: dict[str, int] = {}
    for p in files:
        final = final_dir / p.name
        size = p.stat().st_size
        os.replace(p, final)
        outputs[final.relative_to(out_dir).as_posix()] = size
    marker = {
        "JobId": job.job_id,
        "Subject": job.subject,
        "Session": job.session,
        "Modality": job.modality,
        "Series": str(job.series),
        "Fingerprint": oj.fp,
        "Pipeline": pipeline_name(oj.settings.pipeline),
        "Options": jsonable(dict(oj.options), strict=True),
        "Inputs": [str(p) for p in job_inputs(job)],
        "Outputs": outputs,
        "SoftwareVersion": __version__,
        "Finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_shared(marker_path(job, out_dir), marker, tag=job.job_id)
    return list(outputs)
