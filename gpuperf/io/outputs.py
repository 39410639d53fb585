"""Atomic writing of a run's outputs, and the commit protocol that makes a set of them whole.

A run's files are written into a hidden temporary folder inside the output folder and moved to
their final names (``os.replace``, atomic on one file system) only when the whole run has
succeeded, so every file under a final name is whole. A set of files cannot be renamed at once,
so the commit is journalled:

1. before any rename, every final name is checked (exists without ``overwrite``, a folder in the
   way, an input of the run) -- nothing is renamed when one check fails;
2. the journal ``.gpuperf-journal-<hash of prefix>.json`` is written into the output folder: the
   run's fingerprint (prefix, parameters, sources), its owner (host, pid) and every final name
   of the set, including names declared with :meth:`OutputWriter.expect` that another step
   writes later (the QC report);
3. the files are renamed; the journal is deleted when the last name of the set is in place (the
   report's :func:`atomic_write_bytes` settles it).

The journal is locked (``flock``) by its owner while it is open. A journal that is not locked
marks an interrupted set: a re-run with the same fingerprint treats the names it lists as its
own leftovers (it replaces them without ``--overwrite`` and removes those it does not write
again: two runs never mix); a run with another fingerprint is refused unless ``overwrite``. A
locked journal belongs to a live run: another run on the same prefix is refused. Hidden
temporary folders and files of killed runs (their owner process is gone) are removed by the next
run writing into the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf import maps
from gpuperf.errors import GpuperfError, InputError, OutputExistsError
from gpuperf.io.nifti import LoadedImage, sidecar_path
from gpuperf.io.readahead import remember_written
from gpuperf.provenance import jsonable

#: Prefix of every temporary file and folder gpuperf writes next to its outputs.
TMP_PREFIX = ".gpuperf-tmp-"
#: Prefix of the journal of an interrupted commit (see the module docstring).
JOURNAL_PREFIX = ".gpuperf-journal-"
#: File in a temporary folder naming the process that owns it.
OWNER_FILE = ".owner.json"
#: Tag of the temporary files of :func:`atomic_write_bytes` (``.gpuperf-tmp-gppid<pid>-*``).
PID_TAG = "gppid"
#: Longest file name most file systems accept (bytes, NAME_MAX).
NAME_MAX = 255


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any thread of ours
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _pid_tag() -> str:
    return f"{PID_TAG}{os.getpid()}"


#: lstat errors that mean "nothing there" (those ``Path.exists`` ignores).
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _lstat(path: Path) -> os.stat_result | None:
    """``os.lstat(path)``, None when nothing is there (a dangling link is there)."""
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise


def atomic_write_bytes(path: str | PathLike, data: bytes, tag: str = "") -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the usual ``0o666 & ~umask`` mode (``mkstemp`` alone gives 0600). ``tag``
    names the temporary file ``.gpuperf-tmp-<tag>-*`` so that a later run can find and remove
    the leftover of a killed one.
    """
    path = Path(path)
    if _OPEN:
        _fault("report")
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = tag or _pid_tag()  # a later run removes it once this process is gone
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{tag}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        if path.is_dir() and not path.is_symlink():
            raise GpuperfError(f"{path}: a folder is in the way of this output")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _settle(path)


def gzip_bytes(raw: bytes) -> bytes:
    """Deflate at level 1 (nibabel's default for .nii.gz): ISA-L when installed, ~4x zlib.

    The gzip header's time stamp is 0, as nibabel writes it: equal maps give equal files
    (reruns and cohort workers are compared byte for byte).
    """
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.compress(raw, compresslevel=1, mtime=0)
    return igzip.compress(raw, compresslevel=1, mtime=0)


def atomic_write_json(path: str | PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def _fault(point: str) -> None:
    """Fault injection for tests (``tests/test_faults.py``): ``GPUPERF_TEST_FAULT=<point>:<SIG>``
    sends signal ``SIG`` (KILL, INT, TERM) to this process when the run reaches ``point``:
    ``staged`` (all files staged, nothing renamed), ``commit-<n>`` (after n renames),
    ``report`` (maps published, report not yet written)."""
    spec = os.environ.get("GPUPERF_TEST_FAULT")
    if not spec or spec.rpartition(":")[0] != point:
        return
    import signal

    os.kill(os.getpid(), getattr(signal, "SIG" + spec.rpartition(":")[2]))


# -- ownership of hidden files ---------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """Start time of process ``pid`` (Linux ``/proc``; None elsewhere): guards against reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_record() -> dict[str, Any]:
    """Who owns a hidden file: host, pid and (on Linux) the process start time."""
    pid = os.getpid()
    return {"Host": socket.gethostname(), "Pid": pid, "Start": _own_start_time(pid)}


@functools.lru_cache(maxsize=4)
def _own_start_time(pid: int) -> str | None:
    """This process's start time (keyed by pid: a forked child reads its own)."""
    return _start_time(pid)


def owner_alive(owner: Mapping[str, Any]) -> bool:
    """Whether the process of ``owner`` (see :func:`owner_record`) may still run.

    A process on another host (a shared file system) is assumed alive.
    """
    if owner.get("Host") != socket.gethostname():
        return True
    try:
        pid = int(owner["Pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return False
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = owner.get("Start")
    return start is None or _start_time(pid) in (None, start)


def sweep_stale(folder: str | PathLike) -> list[Path]:
    """Remove the hidden temporary folders and files of killed gpuperf runs in ``folder``.

    Only what names a dead owner is removed: folders with an :data:`OWNER_FILE`, files
    ``.gpuperf-tmp-gppid<pid>-*`` of :func:`atomic_write_bytes`. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    try:
        entries = list(folder.glob(f"{TMP_PREFIX}*"))
    except OSError:
        return removed
    for entry in entries:
        owner: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError):
            if entry.is_dir() and not entry.is_symlink():
                owner = json.loads((entry / OWNER_FILE).read_text(encoding="utf-8"))
            elif entry.name.startswith(f"{TMP_PREFIX}{PID_TAG}"):
                tag = entry.name[len(TMP_PREFIX) + len(PID_TAG) :].split("-", 1)[0]
                owner = {"Host": host, "Pid": int(tag)}
        if not isinstance(owner, dict) or owner_alive(owner):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


# -- the commit journal ------------------------------------------------------------------------
try:  # POSIX advisory locks; without them (Windows) the owner's pid decides
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Journals this process holds open: journal path -> (locked descriptor, journal content).
_OPEN: dict[Path, tuple[int, dict[str, Any]]] = {}


def journal_path(out_dir: str | PathLike, prefix: str) -> Path:
    """The journal of ``prefix``'s set in ``out_dir`` (hashed: any prefix length fits)."""
    digest = hashlib.sha256(prefix.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(out_dir) / f"{JOURNAL_PREFIX}{digest}.json"


def _locked_elsewhere(path: Path) -> bool:
    """Whether another process holds ``path``'s lock (its run is alive)."""
    if path in _OPEN:
        return True
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def read_journal(path: str | PathLike) -> dict[str, Any] | None:
    """The journal at ``path`` (None when absent or unreadable: an empty one is being written)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _write_journal(fd: int, obj: Mapping[str, Any], sync: bool = True) -> None:
    data = (json.dumps(jsonable(dict(obj)), indent=2) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    if sync:
        os.fsync(fd)


def _close_journal(path: Path, remove: bool) -> None:
    fd, _obj = _OPEN.pop(path, (None, None))
    if remove:
        path.unlink(missing_ok=True)
    if fd is not None:
        os.close(fd)


def _settle(final: Path) -> None:
    """``final`` is in place: tick it off the open journal of its folder (if it lists it)."""
    if not _OPEN:
        return
    parent = final.parent.resolve()
    for jpath, (fd, obj) in list(_OPEN.items()):
        if jpath.parent != parent or final.name not in obj.get("Pending", []):
            continue
        obj["Pending"] = [n for n in obj["Pending"] if n != final.name]
        if obj["Pending"]:
            _write_journal(fd, obj)
        else:
            _close_journal(jpath, remove=True)


def interruption_summary() -> str:
    """What an interrupted process leaves on disk, for the interruption message of the CLI."""
    if not _OPEN:
        return "no output was written under its final name"
    parts = []
    for jpath, (_fd, obj) in _OPEN.items():
        names = obj.get("Files", [])
        present = sum((jpath.parent / n).exists() for n in names)
        parts.append(
            f"{present} of {len(names)} outputs of {obj.get('Prefix') or 'the run'} are in "
            f"{jpath.parent}; re-run the same command to complete the set"
        )
    return "; ".join(parts)


#: Writers of this process with a staged folder not yet committed (see :func:`abort_staged`).
_STAGING: weakref.WeakSet[OutputWriter] = weakref.WeakSet()


def abort_staged() -> None:
    """Drop the staged folders of every uncommitted writer of this process (an interrupted
    command cleans up after itself; final names are untouched)."""
    for writer in list(_STAGING):
        if not writer._committed:
            writer.abort()


def release_journals() -> None:
    """Close this process's open journals, leaving them on disk (e.g. after a failed report):
    the set is incomplete and the next run of the same command completes it."""
    for jpath in list(_OPEN):
        _close_journal(jpath, remove=False)


def discard_journals(folder: str | PathLike) -> None:
    """Remove the journals in ``folder`` that this process holds (a cohort's scratch folder,
    whose publication has its own marker)."""
    folder = Path(folder).resolve()
    for jpath in list(_OPEN):
        if jpath.parent == folder:
            _close_journal(jpath, remove=True)


# -- output locations --------------------------------------------------------------------------
def check_prefix(prefix: str) -> None:
    """A prefix is a plain file-name part: no path separator, no ``..``, no control character."""
    bad = None
    if "/" in prefix or "\\" in prefix or os.sep in prefix:
        bad = "a path separator"
    elif ".." in prefix:
        bad = "'..'"
    elif any(ord(c) < 32 for c in prefix):
        bad = "a control character"
    elif prefix.startswith("."):
        bad = "a leading '.' (hidden files)"
    if bad:
        raise InputError(
            None, "--prefix", f"must be a file-name part without {bad}, found {prefix!r}"
        )


def check_out_dir(
    out_dir: str | PathLike, inputs: Iterable[str | PathLike] = (), flag: str = "--out"
) -> None:
    """Check that ``out_dir`` can be a run's output folder: not a file, not an input, writable.

    A missing folder is created (with its parents): creating it and writing a probe file into
    it is the only test that read-only mounts and virtual file systems (``/proc``) do not fool.
    """
    out = Path(out_dir)
    resolved = out.resolve()
    for inp in inputs:
        if Path(inp).resolve() == resolved:
            raise InputError(out, flag, "is an input of this run; choose an output folder")
    if out.exists() and not out.is_dir():
        raise InputError(out, flag, "exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, flag, f"cannot create the folder ({exc.strerror})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_pid_tag()}-", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise InputError(out, flag, f"cannot write here ({exc.strerror})") from None


def _naming_out_dir(method: Callable[..., Any]) -> Callable[..., Any]:
    """An OSError of a write (disk full, read-only, quota) becomes a GpuperfError naming the file
    or, when the OS names none, the output folder."""

    @functools.wraps(method)
    def wrapper(self: OutputWriter, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            where = exc.filename if exc.filename is not None else self.out_dir
            what = exc.strerror or type(exc).__name__
            if exc.errno == errno.ENOSPC:
                what += " (the disk is full)"
            raise GpuperfError(f"{where}: cannot write the outputs: {what}") from exc

    return wrapper


def map_image(reference: LoadedImage, name: str, data: np.ndarray) -> Any:
    """The NIfTI image of map ``name``: ``data`` (already of its output dtype) on the grid of
    ``reference``, with its header (affine, units, orientation codes, extensions), the dtype
    of ``data``, no scaling, ``descrip`` "gpuperf <name>" and, for a 3D map, no intent."""
    import nibabel as nib

    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, reference.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = _descrip(name)
    if data.ndim == 3:
        img.header.set_intent("none")
    return img


def _descrip(name: str) -> bytes:
    return f"gpuperf {name}".encode()[:79]


#: Where the NIfTI-1 header keeps ``descrip`` (byte offset, length); the rest of a map's header
#: depends on the reference, the dtype and the shape only.
_DESCRIP_AT = 148
_DESCRIP_LEN = 80


class NiftiTemplate:
    """The bytes before the voxels of the ``.nii`` files of maps of one dtype and shape.

    nibabel's header work for a map (copying the reference header, checking and fixing it,
    the qform/sform from the affine, the extensions, the offset of the data) depends on the
    reference, the dtype and the shape, never on the values: :meth:`build` lets nibabel write
    one such map, and :meth:`render` gives the bytes nibabel writes for any map of that kind
    (its ``descrip`` in place, the values in Fortran order in the header's byte order).
    ``tests/test_core_io.py`` compares the two byte for byte.
    """

    def __init__(self, head: bytes, dtype: np.dtype) -> None:
        self.head = head
        self.dtype = dtype

    @classmethod
    def build(cls, reference: LoadedImage, name: str, data: np.ndarray) -> NiftiTemplate | None:
        """The template of maps like ``data`` (its dtype and shape) on ``reference``; None
        when nibabel's file does not have the layout :meth:`render` assumes."""
        import nibabel as nib

        raw = map_image(reference, name, np.zeros(data.shape, dtype=data.dtype)).to_bytes()
        written = nib.Nifti1Header(raw[: nib.Nifti1Header.sizeof_hdr])  # as in the file
        dtype = np.dtype(written.get_data_dtype())
        size = int(np.prod(data.shape, dtype=np.int64)) * dtype.itemsize
        head = raw[: len(raw) - size]
        ours = _descrip(name).ljust(_DESCRIP_LEN, b"\0")
        if (
            dtype.newbyteorder("=") != data.dtype.newbyteorder("=")
            or len(head) != int(written["vox_offset"])
            or head[_DESCRIP_AT : _DESCRIP_AT + _DESCRIP_LEN] != ours
            or raw[len(head) :] != bytes(size)
        ):
            return None
        return cls(head, dtype)

    def with_dtype(self, dtype: Any) -> NiftiTemplate:
        """The template of maps of the same shape stored as ``dtype``: the header's
        ``datatype`` and ``bitpix`` are all that ``set_data_dtype`` changes, and nibabel's
        checks and its writing of an unscaled map do not depend on them."""
        import nibabel as nib

        size = nib.Nifti1Header.sizeof_hdr
        header = nib.Nifti1Header(self.head[:size], check=False)  # its byte order guessed
        header.set_data_dtype(dtype)
        return NiftiTemplate(
            header.binaryblock + self.head[size:], np.dtype(header.get_data_dtype())
        )

    def render(self, name: str, data: np.ndarray) -> bytes:
        """The ``.nii`` bytes of map ``name`` with values ``data`` (of the template's shape)."""
        descrip = _descrip(name).ljust(_DESCRIP_LEN, b"\0")
        return b"".join(
            (
                self.head[:_DESCRIP_AT],
                descrip,
                self.head[_DESCRIP_AT + _DESCRIP_LEN :],
                np.asarray(data, dtype=self.dtype).tobytes(order="F"),
            )
        )


class OutputWriter:
    """Collects a run's outputs and publishes them together.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created if needed).
    prefix : str
        File-name prefix: maps are ``<prefix>_<name>.nii.gz``.
    reference : LoadedImage, optional
        Image whose affine and header the maps take (float32, scaling reset).
    provenance : dict, optional
        Block merged into every JSON sidecar (see :func:`gpuperf.provenance.provenance`).
    overwrite : bool
        Replace existing outputs; without it an existing output is an error raised *before*
        any computation when the names are declared with :meth:`expect`.
    inputs : iterable of path-like
        Files the run reads; writing to any of them is refused.

    Examples
    --------
    >>> with OutputWriter(out, "sub-01", reference=img, provenance=prov) as w:  # doctest: +SKIP
    ...     w.add_map("cbf", cbf, units="ml/100g/min", description="Cerebral blood flow")
    ...     paths = w.commit(elapsed_s=1.2)
    """

    def __init__(
        self,
        out_dir: str | PathLike,
        prefix: str,
        reference: LoadedImage | None = None,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        inputs: Iterable[str | PathLike] = (),
    ) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.reference = reference
        self.provenance = dict(provenance or {})
        self.overwrite = overwrite
        self._inputs = {Path(p).resolve() for p in inputs}
        self._tmp: Path | None = None
        self._pending: list[tuple[Path, Path]] = []  # (temporary file, final path)
        self._sidecars: dict[Path, dict[str, Any]] = {}
        self._committed = False
        #: QC extras staged so far (:func:`gpuperf.io.qc.stage_extra` merges into it).
        self.qc_extra: dict[str, Any] = {}
        #: Keep the uncompressed bytes of the maps written, for the run's report to read back
        #: (:func:`gpuperf.io.readahead.remember_written`; set when a report is expected).
        self.keep_for_report = False
        self._expected: set[str] = set()  # final names declared with expect()
        self._leftovers: set[str] | None = None  # names of this run's own interrupted set
        self._foreign: dict[str, Any] | None = None  # journal of an interrupted other run
        self._resolved_dir: Path | None = None  # out_dir.resolve(), once it exists
        self._input_names: set[str] = set()  # names of the inputs inside _resolved_dir
        #: (reference, dtype, shape) -> the NIfTI template of such maps (None: nibabel writes
        #: each one)
        self._templates: dict[tuple[int, str, tuple[int, ...]], NiftiTemplate | None] = {}
        check_prefix(prefix)

    def __getstate__(self) -> dict[str, Any]:
        # pickled (a computed run travels to the cohort's report worker, which writes its
        # maps): the reference goes without its voxels, only the grid the maps are written on
        state = dict(vars(self))
        if isinstance(self.reference, LoadedImage):
            state["reference"] = self.reference.grid()
        state["_templates"] = {}  # a cache keyed by the reference's id: rebuilt where used
        return state

    # -- the output folder -------------------------------------------------------------------
    @property
    def journal(self) -> Path:
        """This set's journal (see the module docstring)."""
        return journal_path(self.out_dir.resolve(), self.prefix)

    @property
    def is_staging_area(self) -> bool:
        """Whether the output folder is itself a hidden temporary folder of gpuperf
        (:data:`TMP_PREFIX`: a caller's staging area, e.g. the cohort runner's scratch folder,
        published under the caller's own marker or removed whole when its process dies): its
        journal is then not forced to disk (``fsync``), which only a power loss would need and
        after which the folder is discarded anyway."""
        return self.out_dir.name.startswith(TMP_PREFIX)

    def fingerprint(self) -> str:
        """What makes two runs "the same command": prefix, parameters and sources."""
        key = {
            "Prefix": self.prefix,
            "Parameters": self.provenance.get("Parameters"),
            "Sources": [str(Path(s).resolve()) for s in self.provenance.get("Sources", [])],
        }
        return hashlib.sha256(json.dumps(jsonable(key), sort_keys=True).encode()).hexdigest()

    def _prepare(self) -> None:
        """Once, before the first check: the output folder may be written, stale temporary
        files of killed runs go, and an interrupted set of the same command is recognised."""
        if self._leftovers is not None:
            return
        check_out_dir(self.out_dir, self._inputs)
        self._leftovers = set()
        if not self.out_dir.is_dir():
            return
        sweep_stale(self.out_dir)
        jpath = self.journal
        if jpath in _OPEN:  # an earlier run of this process left it open (no report drawn)
            _close_journal(jpath, remove=False)
        if not jpath.exists():
            return
        if _locked_elsewhere(jpath):
            owner = (read_journal(jpath) or {}).get("Owner", {})
            raise GpuperfError(
                f"{self.out_dir}: another gpuperf run (pid {owner.get('Pid', '?')}) is writing "
                f"outputs with prefix {self.prefix!r} now; wait for it or use another --out"
            )
        old = read_journal(jpath)
        if old is None or old.get("Prefix") != self.prefix:
            return
        if old.get("Fingerprint") == self.fingerprint():
            self._leftovers = {str(n) for n in old.get("Files", [])}
        else:
            self._foreign = old

    def _check_target(self, final: Path) -> None:
        self._prepare()
        if len(final.name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise InputError(
                None,
                "--prefix",
                f"too long: output name {final.name[:40]}... has "
                f"{len(final.name.encode('utf-8', 'surrogateescape'))} bytes (at most {NAME_MAX})",
            )
        # one lstat answers "a link?", "a folder?" and "there?" (pathlib asks each apart)
        st = _lstat(final)
        is_link = st is not None and stat.S_ISLNK(st.st_mode)
        if self._is_input(final, is_link):
            raise GpuperfError(f"{final}: refusing to write over an input of this run")
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise GpuperfError(f"{final}: a folder is in the way of this output")
        if st is not None and not self.overwrite:
            if final.name in (self._leftovers or ()):
                return  # this command's own interrupted set: completed by this run
            why = ""
            if self._foreign is not None and final.name in self._foreign.get("Files", []):
                why = " (left by an interrupted run with other inputs or parameters)"
            raise OutputExistsError(
                f"{final}: output exists{why}; pass --overwrite (overwrite=True) to replace it"
            )

    def _is_input(self, final: Path, is_link: bool) -> bool:
        """Whether ``final`` (a symbolic link when ``is_link``) resolves to an input of the run.

        For a file of the output folder the folder is resolved once (a resolve walks every
        component, dozens of ``lstat`` calls per output) and compared with the folders of the
        inputs; the name itself is resolved only when it is a symbolic link."""
        if not self._inputs:
            return False
        if is_link or final.parent != self.out_dir:
            return final.resolve() in self._inputs
        if self._resolved_dir is None:
            self._resolved_dir = self.out_dir.resolve()
            self._input_names = {p.name for p in self._inputs if p.parent == self._resolved_dir}
        return final.name in self._input_names

    # -- names -------------------------------------------------------------------------------
    def path_for(self, name: str, ext: str = ".nii.gz") -> Path:
        """Final path of output ``name`` (``<prefix>_<name><ext>``; ``name`` may carry the ext)."""
        base = f"{self.prefix}_{name}" if self.prefix else name
        return self.out_dir / (base if Path(name).suffix else base + ext)

    def expect(self, names: Iterable[str], ext: str = ".nii.gz") -> None:
        """Check, before computing, that outputs ``names`` may be written."""
        for name in names:
            final = self.path_for(name, ext)
            self._check_target(final)
            self._expected.add(final.name)
            if ext == ".nii.gz":
                self._check_target(sidecar_path(final))

    # -- staging -----------------------------------------------------------------------------
    def _stage(self, final: Path) -> Path:
        self._check_target(final)
        if self._committed:
            raise GpuperfError("OutputWriter already committed")
        if self._tmp is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.out_dir))
            (self._tmp / OWNER_FILE).write_text(json.dumps(owner_record()), encoding="utf-8")
            _STAGING.add(self)
        tmp = self._tmp / final.name
        self._pending = [(t, f) for t, f in self._pending if f != final]
        self._pending.append((tmp, final))
        return tmp

    def _map_bytes(self, name: str, data: np.ndarray) -> bytes:
        """The ``.nii`` bytes of map ``name``: those of :func:`map_image`, from a template per
        dtype and shape (:class:`NiftiTemplate`: nibabel builds and checks one header per
        kind of map of the run, not one per map)."""
        key = (id(self.reference), data.dtype.str, data.shape)
        if key not in self._templates:
            # another dtype's template of this shape differs in the dtype fields only
            like = [t for k, t in self._templates.items() if t and k[::2] == key[::2]]
            self._templates[key] = (
                like[0].with_dtype(data.dtype)
                if like
                else NiftiTemplate.build(self.reference, name, data)
            )
        template = self._templates[key]
        if template is None:  # a header the template cannot reproduce: nibabel itself
            return map_image(self.reference, name, data).to_bytes()
        return template.render(name, data)

    @_naming_out_dir
    def add_map(
        self,
        name: str,
        data: np.ndarray,
        units: str | None = None,
        description: str | None = None,
        extra: Mapping[str, Any] | None = None,
        dtype: Any = np.float32,
    ) -> Path:
        """Stage a 3D (or 4D) map with its JSON sidecar; returns the final NIfTI path.

        ``units`` and ``description`` default to the map's entry in :mod:`gpuperf.maps` (a map
        missing from the table needs both).
        """
        if units is None or description is None:
            spec = maps.get(name)
            units = spec.units if units is None else units
            description = spec.description if description is None else description
        if self.reference is None:
            raise GpuperfError("OutputWriter needs a reference image to write maps")
        data = np.asarray(data, dtype=dtype)
        if data.shape[:3] != self.reference.shape3d:
            raise ValueError(f"map {name!r} shape {data.shape} != grid {self.reference.shape3d}")
        final = self.path_for(name, ".nii.gz")
        tmp = self._stage(final)
        if tmp.name.endswith(".gz"):
            raw = self._map_bytes(name, data)
            packed = gzip_bytes(raw)
            tmp.write_bytes(packed)
            if self.keep_for_report:  # the run's report reads it back: no inflate then
                remember_written(tmp, raw, packed[-8:])
        else:
            map_image(self.reference, name, data).to_filename(str(tmp))
        sidecar = {"Units": units, "Description": description, **dict(extra or {})}
        self._sidecars[sidecar_path(final)] = sidecar
        return final

    @_naming_out_dir
    def add_json(self, name: str, obj: Mapping[str, Any], with_provenance: bool = False) -> Path:
        final = self.path_for(name, ".json")
        tmp = self._stage(final)
        prov = self.provenance if with_provenance else {}
        tmp.write_text(merged_json(obj, prov, _dump(prov)) + "\n", encoding="utf-8")
        return final

    @_naming_out_dir
    def add_tsv(self, name: str, columns: Mapping[str, Iterable[Any]]) -> Path:
        """Stage a TSV with one column per mapping entry (header row first)."""
        final = self.path_for(name, ".tsv")
        tmp = self._stage(final)
        cols = {k: list(v) for k, v in columns.items()}
        n = {len(v) for v in cols.values()}
        if len(n) > 1:
            raise ValueError(
                f"TSV columns of unequal length: { {k: len(v) for k, v in cols.items()} }"
            )
        rows = ["\t".join(cols)]
        for i in range(n.pop() if n else 0):
            rows.append("\t".join(_fmt(cols[k][i]) for k in cols))
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return final

    def add_image(self, filename: str, img: Any) -> Path:
        """Stage a ready nibabel image under ``filename`` (``.nii`` or ``.nii.gz``), as it is:
        no header template, no sidecar (phantoms and other inputs gpuperf makes)."""
        raw = img.to_bytes()
        return self.add_file(
            filename,
            lambda tmp: tmp.write_bytes(gzip_bytes(raw) if filename.endswith(".gz") else raw),
            "",
        )

    @_naming_out_dir
    def add_file(self, name: str, write: Callable[[Path], None], ext: str) -> Path:
        """Stage a file produced by ``write(tmp_path)`` (e.g. a matplotlib ``savefig``)."""
        final = self.path_for(name, ext)
        tmp = self._stage(final)
        write(tmp)
        return final

    # -- publishing --------------------------------------------------------------------------
    @_naming_out_dir
    def commit(self, elapsed_s: float | None = None) -> list[Path]:
        """Write the sidecars and move every staged file to its final name (journalled: see the
        module docstring). Names declared with :meth:`expect` but not staged stay pending in the
        journal until they are written with :func:`atomic_write_bytes`."""
        if self._tmp is None:
            self._committed = True
            return []
        prov = dict(self.provenance)
        if elapsed_s is not None:
            prov["ElapsedSeconds"] = round(float(elapsed_s), 4)
        prov_text = _dump(prov)  # once: every sidecar ends with the same block
        for _tmp, final in self._pending:  # re-check: something may have appeared meanwhile
            self._check_target(final)
        for final, sidecar in self._sidecars.items():  # checked as they are staged
            tmp = self._stage(final)
            tmp.write_text(merged_json(sidecar, prov, prov_text) + "\n", encoding="utf-8")
        staged = {final.name for _t, final in self._pending}
        later = sorted(self._expected - staged)
        own_old = sorted((self._leftovers or set()) - staged - set(later))
        files = sorted(staged | set(later) | set(own_old))
        jpath = self.journal
        fd = self._open_journal(jpath)
        record = {
            "Prefix": self.prefix,
            "Fingerprint": self.fingerprint(),
            "Owner": owner_record(),
            "Files": files,
            "Pending": files,
        }
        try:
            _write_journal(fd, record, sync=not self.is_staging_area)
            _OPEN[jpath] = (fd, record)
            for name in later:  # written later by this run: an old copy must not survive it
                if name in (self._leftovers or ()):
                    (self.out_dir / name).unlink(missing_ok=True)
            _fault("staged")
            done = []
            for tmp, final in self._pending:
                os.replace(tmp, final)
                done.append(final)
                _fault(f"commit-{len(done)}")
            for name in own_old:  # the interrupted set had them, this one does not
                (self.out_dir / name).unlink(missing_ok=True)
            record["Pending"] = later
            if later:
                _write_journal(fd, record, sync=not self.is_staging_area)
            else:
                _close_journal(jpath, remove=True)
        except BaseException:
            if jpath not in _OPEN:
                os.close(fd)
            # else the set is incomplete: the journal stays (open, so that the interruption
            # message can say what is on disk; the next writer of this prefix takes it over)
            raise
        self._cleanup()
        self._committed = True
        return done

    def _open_journal(self, jpath: Path) -> int:
        """Create (or take over) and lock the journal; refuse if a live run holds it."""
        if jpath in _OPEN:
            _close_journal(jpath, remove=False)
        fd = os.open(jpath, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise GpuperfError(
                    f"{self.out_dir}: another gpuperf run is writing outputs with prefix "
                    f"{self.prefix!r} now; wait for it or use another --out"
                ) from None
        return fd

    def abort(self) -> None:
        """Drop everything staged; final names are untouched."""
        self._cleanup()
        self._pending.clear()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            try:  # after a commit only the owner file is left: two calls, not a tree walk
                (self._tmp / OWNER_FILE).unlink()
                self._tmp.rmdir()
            except OSError:
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()


def _dump(obj: Mapping[str, Any]) -> str:
    return json.dumps(jsonable(obj), indent=2)


def merged_json(first: Mapping[str, Any], second: Mapping[str, Any], second_text: str) -> str:
    """``json.dumps(jsonable({**first, **second}), indent=2)``, given ``second_text``, the
    dump of ``second``: the text of a sidecar whose provenance block (``second``) is dumped
    once per run rather than once per file.

    With ``indent`` the top-level members of an object are written one per line, each
    independently of the others, so the dump of a merge of two objects without a common key
    is the first dump's members, a comma, and the second's. With a common key (the second
    one's value at the first one's place) the merge is dumped whole.
    """
    if not second:
        return _dump(first)
    if not first:
        return second_text
    head = jsonable(first)
    if any(str(k) in head for k in second):
        return _dump({**first, **second})
    return json.dumps(head, indent=2)[:-2] + "," + second_text[1:]


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else repr(float(v))
    return str(v)
