"""Exceptions raised by gpuperf.

Library code raises subclasses of :class:`GpuperfError`; the command line prints their message
(without a traceback) and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike


class GpuperfError(Exception):
    """Base class of every error gpuperf reports to the user."""

    exit_code = 2


class InputError(GpuperfError):
    """Bad input: names the file and the field (or property) that is wrong.

    Parameters
    ----------
    path : path-like or None
        The file the problem was found in (None for in-memory arrays).
    field : str
        The sidecar field, column, dimension or option concerned.
    message : str
        What was expected and what was found.
    """

    def __init__(self, path: str | PathLike | None, field: str, message: str) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.message = message
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{field}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str | None, str, str]]:
        # picklable (a subject's error crosses from the cohort's worker process)
        return type(self), (self.path, self.field, self.message)


class GPUUnavailableError(GpuperfError):
    """``device='gpu'`` was asked for but no usable CUDA device/CuPy is present."""


class OutputExistsError(GpuperfError):
    """An output file exists and ``overwrite`` was not given."""


@contextmanager
def about_file(path: str | PathLike, fields: tuple[str, ...] = ("signal",)) -> Iterator[None]:
    """Name ``path`` in the errors of the block that know no file.

    A plain :class:`GpuperfError` ("automatic AIF: no usable voxel") gets ``path`` in front;
    an :class:`InputError` without a file gets it when its field is one of ``fields`` (the
    series' own properties; a mask's shape stays the mask's problem).

    Examples
    --------
    >>> with about_file("sub-01_dsc.nii.gz"):  # doctest: +SKIP
    ...     data = model.prepare(signal)
    """
    try:
        yield
    except InputError as exc:
        if exc.path is None and exc.field in fields:
            raise InputError(path, exc.field, exc.message) from exc
        raise
    except GpuperfError as exc:
        if type(exc) is GpuperfError and not str(exc).startswith(str(path)):
            raise GpuperfError(f"{path}: {exc}") from exc
        raise
