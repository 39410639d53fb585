"""Reading a compressed series ahead, before NumPy, nibabel and the pipeline are imported.

``gpuperf dsc``/``asl`` call :func:`start_reading` as soon as their options are parsed and
checked: the input's existence is checked there (one line, exit 2), and a ``.nii.gz`` starts
inflating in a background thread while the command imports NumPy, nibabel, the fit engine and
the pipeline (ISA-L releases the GIL); :func:`gpuperf.io.nifti.load_image` then takes the bytes
(:func:`take_read_ahead`) instead of reading the file again. This module imports only the
standard library and :mod:`gpuperf.errors`.
"""

from __future__ import annotations

import os
import threading
from os import PathLike
from pathlib import Path

from gpuperf.errors import InputError


def gunzip_bytes(raw: bytes) -> bytes:
    """Inflate a (multi-member) gzip stream: ISA-L when installed (~2x zlib), else ``gzip``."""
    try:
        from isal import igzip
    except ImportError:  # zlib is the same data, slower
        import gzip

        return gzip.decompress(raw)
    return igzip.decompress(raw)


class _Inflating:
    """The bytes of one file being inflated on a thread (or the error it raised)."""

    def __init__(self, path: Path) -> None:
        self._done = threading.Event()
        self._data: bytes | None = None
        threading.Thread(
            target=self._run, args=(path,), name="gpuperf-read-ahead", daemon=True
        ).start()

    def _run(self, path: Path) -> None:
        try:
            self._data = gunzip_bytes(path.read_bytes())
        except BaseException:  # noqa: BLE001 - load_image reads again and reports its own error
            self._data = None
        finally:
            self._done.set()

    def result(self) -> bytes | None:
        self._done.wait()
        return self._data


#: Series being inflated ahead (:func:`read_ahead`), by (resolved path, size, mtime).
_READ_AHEAD: dict[tuple[str, int, int], _Inflating] = {}


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def require_file(path: str | PathLike, role: str) -> Path:
    """``path`` as a Path; InputError ``"<role> file does not exist"`` naming it otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file", f"{role} file does not exist")
    return p


def read_ahead(path: str | PathLike) -> None:
    """Start inflating a ``.nii.gz`` in a background thread; the next
    :func:`gpuperf.io.nifti.load_image` of the unchanged file takes the bytes instead of reading
    it again.

    What a command does before its first read (importing the pipeline, nibabel and the
    report, checking options) then overlaps the inflation: about 0.2-0.3 s of a whole-brain
    series on two cores. Anything unusual (no such file, another ending, a read error) is left
    to ``load_image``, which reads the file itself.
    """
    p = Path(path)
    key = _file_key(p) if p.name.endswith(".nii.gz") else None
    if key is None or key in _READ_AHEAD:
        return
    _READ_AHEAD[key] = _Inflating(p)


def start_reading(path: str | PathLike, role: str) -> Path:
    """A command's first step: the input must exist (:func:`require_file`); a ``.nii.gz``
    starts inflating (:func:`read_ahead`)."""
    p = require_file(path, role)
    read_ahead(p)
    return p


class _Ready:
    """Bytes inflated already (:func:`provide_read_ahead`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def result(self) -> bytes:
        return self._data


def provide_read_ahead(path: str | PathLike, data: bytes) -> None:
    """Hand the inflated bytes of the ``.nii.gz`` at ``path`` to its next
    :func:`gpuperf.io.nifti.load_image` (a cohort's read-ahead thread inflates the next
    subjects' series while the current one computes, and keeps them in memory rather than
    writing an inflated copy to read again). Keyed as :func:`read_ahead`: the file, through
    any symbolic link, unchanged."""
    key = _file_key(Path(path))
    if key is not None:
        _READ_AHEAD[key] = _Ready(data)


def drop_read_ahead(path: str | PathLike) -> None:
    """Forget the bytes read ahead for ``path``, if nobody took them (a job that failed before
    reading its series)."""
    key = _file_key(Path(path))
    if key is not None:
        _READ_AHEAD.pop(key, None)


def take_read_ahead(path: Path) -> bytes | None:
    """The inflated bytes of ``path`` from :func:`read_ahead` if the file is unchanged since
    (None otherwise: the caller reads the file)."""
    if not _READ_AHEAD:
        return None
    key = _file_key(path)
    job = _READ_AHEAD.pop(key, None) if key is not None else None
    return None if job is None else job.result()


# -- maps this process wrote, for its own report -------------------------------------------------
#: Most bytes of written maps kept (:func:`remember_written`), oldest dropped first.
WRITTEN_CAP = 256 * 2**20

#: The ``.nii`` bytes of ``.nii.gz`` files this process wrote, by the written file's identity,
#: with the last 8 bytes of the file (the gzip trailer: CRC-32 and size of the ``.nii`` bytes).
_WRITTEN: dict[tuple[int, int, int, int], tuple[bytes, bytes]] = {}
_WRITTEN_LOCK = threading.Lock()  # a cohort's report thread forgets while the next subject writes


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    # the file itself, through a rename (publishing a map renames it): device, inode, size and
    # modification time; a file written again or replaced has another
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_written(path: str | PathLike, raw: bytes, trailer: bytes) -> None:
    """Keep the uncompressed bytes ``raw`` of the ``.nii.gz`` this process has just written at
    ``path`` (``trailer``: the file's last 8 bytes), for :func:`recall_written`: the run's QC
    report reads every map it wrote back, and inflating them cost a DSC report about a third
    of its time. At most :data:`WRITTEN_CAP` bytes are kept; :func:`forget_written` drops
    them once the report is drawn."""
    key = _identity(Path(path))
    if key is None or len(raw) > WRITTEN_CAP or len(trailer) != 8:
        return
    with _WRITTEN_LOCK:
        _WRITTEN[key] = (trailer, raw)
        total = sum(len(v[1]) for v in _WRITTEN.values())
        while total > WRITTEN_CAP:
            total -= len(_WRITTEN.pop(next(iter(_WRITTEN)))[1])


def recall_written(path: str | PathLike) -> bytes | None:
    """The uncompressed bytes of ``path`` if this process wrote that very file, unchanged (see
    :func:`remember_written`), else None: the caller reads the file. The file's identity
    (device, inode, size, modification time) finds it, and its gzip trailer must match: a file
    written in its place within the clock's resolution, on a reused inode, is not taken for
    it."""
    if not _WRITTEN:
        return None
    path = Path(path)
    key = _identity(path)
    with _WRITTEN_LOCK:
        kept = None if key is None else _WRITTEN.get(key)
    if kept is None:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(-8, os.SEEK_END)
            tail = fh.read(8)
    except OSError:
        return None
    return kept[1] if tail == kept[0] else None


def forget_written() -> None:
    """Drop every written map kept (a cohort's worker, once a subject's report is drawn)."""
    with _WRITTEN_LOCK:
        _WRITTEN.clear()
