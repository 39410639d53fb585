"""The three stages of a file pipeline and the one-subject run over them.

A file pipeline (``run_dsc``, ``run_asl``) is ``prepare`` (load and check everything, before any
voxel is computed), ``compute`` (the per-voxel work of one or several prepared subjects in one
call) and ``write`` (the maps of one computed subject). :func:`staged_pipeline` builds the
one-subject run from the three: it takes ``prepare``'s signature and exposes the stages as
``run.prepare``, ``run.compute`` and ``run.write`` for the cohort runner, which computes several
subjects in one call (:mod:`gpuperf.cohort.batching`).

:func:`run_and_publish` runs a pipeline with its :class:`~gpuperf.io.settings.RunSettings` (the
output folder, mask, device ... declared once) and publishes the caller's QC page.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from gpuperf.io.outputs import OutputWriter
from gpuperf.io.settings import RunSettings

P = ParamSpec("P")
Prep = TypeVar("Prep")
R = TypeVar("R")


class Batchable(Protocol):
    """A prepared subject: subjects with equal keys are computed in one call; None: nothing to
    compute."""

    @property
    def batch_key(self) -> Hashable | None: ...


B = TypeVar("B", bound=Batchable)

#: Files publishing a run's QC page adds next to its maps (``<prefix>_report.html``).
REPORT_OUTPUTS = ("report.html",)


@dataclass(kw_only=True)
class PreparedRun:
    """What a pipeline's ``prepare`` stage returns, as far as the stages share it.

    A modality's prepared series (``PreparedDSCRun``, ``PreparedASL``) adds its inputs, its
    model and its ``fit``, and defines ``n_voxels`` and ``batch_key``.

    Attributes
    ----------
    backend : gpuperf.backend.Backend
    writer : OutputWriter
        Checked (overwrite policy) before anything is computed; nothing is staged yet. It
        holds the output folder, the prefix and the overwrite policy (:attr:`out_dir`,
        :attr:`prefix`, :attr:`overwrite`).
    mask_path : path-like or None
        The brain mask given (None: automatic).
    reporter : gpuperf.progress.Reporter or None
    t_start : float
        ``time.perf_counter()`` when the run started.
    fit_s : float
        Seconds of the fit (of the whole batch when computed with other subjects).
    model_s : float
        Seconds of the model's per-voxel stages before the fit, in ``prepare`` (DSC: the
        conversion to dR2*, the bolus arrival and the AIF selection); with :attr:`fit_s`, the
        run's kernel time (what runs as kernels on a GPU).
    batch_size : int
        Subjects computed in that one call.
    """

    backend: Any
    writer: OutputWriter
    mask_path: str | PathLike | None = None
    reporter: Any = None
    t_start: float = 0.0
    fit_s: float = 0.0
    model_s: float = 0.0
    batch_size: int = 1

    @property
    def out_dir(self) -> Path:
        """The output folder (the writer's)."""
        return self.writer.out_dir

    @property
    def prefix(self) -> str:
        """``<prefix>_<map>.nii.gz`` (the writer's)."""
        return self.writer.prefix

    @property
    def overwrite(self) -> bool:
        """Whether existing outputs may be replaced (the writer's policy)."""
        return self.writer.overwrite


def staged_pipeline(
    prepare: Callable[P, Prep],
    compute: Callable[[Sequence[Prep]], None],
    write: Callable[[Prep], R],
    *,
    name: str,
    doc: str,
    load: Callable[P, Any] | None = None,
    finish_load: Callable[[Any], Prep] | None = None,
) -> Callable[P, R]:
    """``run(*args, **kwargs)`` = ``write(p)`` after ``compute([p])``, ``p = prepare(...)``.

    Parameters
    ----------
    prepare, compute, write : callable
        The stages; ``run`` has ``prepare``'s signature and annotations (with ``write``'s
        return annotation), so that callers reading them (``inspect.signature``,
        ``typing.get_type_hints``: the cohort configuration's checks) see ``prepare``'s.
    name, doc : str
        ``run``'s name (in ``prepare``'s module) and docstring.
    load, finish_load : callable, optional
        ``prepare`` in two parts when it runs per-voxel model stages too (kernels on a GPU):
        ``load`` (``prepare``'s signature) reads and checks the inputs, ``finish_load(loaded)``
        runs the model stages; ``prepare(...)`` must equal ``finish_load(load(...))``.
        Default: ``prepare`` reads and checks only (``load = prepare``, ``finish_load`` returns
        its argument). A cohort's report worker process runs ``run.load`` of the next subject
        beside the current subject's compute; the computing process runs
        ``run.finish_load`` (the kernels belong to it) and ``compute``. ``load``'s result, and
        the prepared subject, must pickle, and ``finish_load`` and ``compute`` set attributes
        rather than change what ``load`` returned in place (only the new objects go back).

    Returns
    -------
    callable
        ``run``, with the attributes ``prepare``, ``compute`` and ``write``.
    """

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        prepared = prepare(*args, **kwargs)
        compute([prepared])
        return write(prepared)

    functools.update_wrapper(run, prepare)  # module, annotations; __wrapped__ for their globals
    run.__name__ = run.__qualname__ = name
    run.__doc__ = doc
    returns = inspect.signature(write).return_annotation
    run.__annotations__ = {**prepare.__annotations__, "return": returns}
    run.__signature__ = inspect.signature(prepare).replace(  # type: ignore[attr-defined]
        return_annotation=returns
    )
    run.prepare = prepare  # type: ignore[attr-defined]
    run.compute = compute  # type: ignore[attr-defined]
    run.write = write  # type: ignore[attr-defined]
    run.load = load or prepare  # type: ignore[attr-defined]
    run.finish_load = finish_load or _loaded  # type: ignore[attr-defined]
    return run


def _loaded(prepared: Any) -> Any:
    """``finish_load`` of a pipeline whose ``prepare`` only reads and checks."""
    return prepared


def run_and_publish(
    run: Callable[..., R],
    settings: RunSettings,
    *args: Any,
    publish: Callable[[R], Any] | None = None,
    reporter: Any = None,
    **kwargs: Any,
) -> R:
    """``run(*args, **settings.pipeline_arguments(), reporter=reporter, **kwargs)``, then
    ``publish(result)`` when given and ``settings.report`` (the caller's QC page: the report
    layer sits above the pipelines). With a page to publish its file is checked against the
    overwrite policy with the maps, before any work (``extra_outputs``).

    Parameters
    ----------
    run : callable
        A file pipeline (``run_dsc``, ``run_asl``).
    settings : RunSettings
        The output folder, mask, device, memory budget, overwrite policy and ``report``.
    *args, **kwargs
        The pipeline's inputs and method options (``options=``).
    publish : callable, optional
        Called with the result once the maps are written.
    reporter : gpuperf.progress.Reporter, optional
        Progress and log lines (default: none).
    """
    if not settings.report:
        publish = None
    result = run(
        *args,
        **settings.pipeline_arguments(),
        reporter=reporter,
        extra_outputs=REPORT_OUTPUTS if publish is not None else (),
        **kwargs,
    )
    if publish is not None:
        from gpuperf.io.readahead import forget_written

        try:
            publish(result)
        finally:
            forget_written()  # the maps kept in memory for the page
    return result


def expect_extra(writer: OutputWriter, extra_outputs: Iterable[str]) -> None:
    """Check the caller's extra files (``"report.html"`` -> ``<prefix>_report.html``) against
    the overwrite policy before any work, like the maps (``GpuperfError`` for a name without
    an extension)."""
    from gpuperf.errors import GpuperfError

    for name in extra_outputs:
        stem, dot, ext = str(name).partition(".")
        if not stem or not dot:
            raise GpuperfError(f"extra output {name!r}: expected a name with an extension")
        writer.expect([stem], ext="." + ext)
        writer.keep_for_report = True  # the caller's page reads the maps back


def batch_groups(prepared: Iterable[B]) -> list[list[B]]:
    """The subjects that can be computed in one call, grouped by ``batch_key`` in first-seen
    order (subjects whose key is None are left out)."""
    groups: dict[Hashable, list[B]] = {}
    for p in prepared:
        if p.batch_key is not None:
            groups.setdefault(p.batch_key, []).append(p)
    return list(groups.values())


def batch_note(group: Sequence[Any], verb: str) -> str:
    """The log line's tail for a subject computed with others (empty for a lone subject):
    ``"; fitted with 2 other series (3000 voxels in one call)"``."""
    if len(group) == 1:
        return ""
    total = sum(p.n_voxels for p in group)
    return f"; {verb} with {len(group) - 1} other series ({total} voxels in one call)"
