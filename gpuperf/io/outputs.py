"""Atomic writing of a run's outputs.

A run's files are written into a hidden temporary folder inside the output folder and moved to
their final names (``os.replace``, atomic on one file system) only when the whole run has
succeeded. A failure or an interruption therefore leaves no partial file under a final name and
never touches an existing output. Existing outputs are replaced only with ``overwrite=True``,
and a run may never write over one of its own inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf import maps
from gpuperf.errors import GpuperfError, OutputExistsError
from gpuperf.io.nifti import LoadedImage, sidecar_path
from gpuperf.provenance import jsonable

#: Prefix of every temporary file and folder gpuperf writes next to its outputs.
TMP_PREFIX = ".gpuperf-tmp-"


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any thread of ours
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | PathLike, data: bytes, tag: str = "") -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the usual ``0o666 & ~umask`` mode (``mkstemp`` alone gives 0600). ``tag``
    names the temporary file ``.gpuperf-tmp-<tag>-*`` so that a later run can find and remove
    the leftover of a killed one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{tag}-" if tag else TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    # -- names -------------------------------------------------------------------------------
    def path_for(self, name: str, ext: str = ".nii.gz") -> Path:
        """Final path of output ``name`` (``<prefix>_<name><ext>``; ``name`` may carry the ext)."""
        base = f"{self.prefix}_{name}" if self.prefix else name
        return self.out_dir / (base if Path(name).suffix else base + ext)

    def _check_target(self, final: Path) -> None:
        if final.resolve() in self._inputs:
            raise GpuperfError(f"{final}: refusing to write over an input of this run")
        if final.exists() and not self.overwrite:
            raise OutputExistsError(
                f"{final}: output exists; pass --overwrite (overwrite=True) to replace it"
            )

    def expect(self, names: Iterable[str], ext: str = ".nii.gz") -> None:
        """Check, before computing, that outputs ``names`` may be written."""
        for name in names:
            final = self.path_for(name, ext)
            self._check_target(final)
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
        tmp = self._tmp / final.name
        self._pending = [(t, f) for t, f in self._pending if f != final]
        self._pending.append((tmp, final))
        return tmp

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
        import nibabel as nib

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
        header = self.reference.header.copy()
        header.set_data_dtype(dtype)
        img = nib.Nifti1Image(data, self.reference.affine, header=header)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["descrip"] = f"gpuperf {name}".encode()[:79]
        if data.ndim == 3:
            img.header.set_intent("none")
        if tmp.name.endswith(".gz"):
            tmp.write_bytes(gzip_bytes(img.to_bytes()))
        else:
            img.to_filename(str(tmp))
        sidecar = {"Units": units, "Description": description, **dict(extra or {})}
        self._sidecars[sidecar_path(final)] = sidecar
        return final

    def add_json(self, name: str, obj: Mapping[str, Any], with_provenance: bool = False) -> Path:
        final = self.path_for(name, ".json")
        tmp = self._stage(final)
        payload = {**dict(obj), **(self.provenance if with_provenance else {})}
        tmp.write_text(json.dumps(jsonable(payload), indent=2) + "\n", encoding="utf-8")
        return final

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

    def add_file(self, name: str, write: Callable[[Path], None], ext: str) -> Path:
        """Stage a file produced by ``write(tmp_path)`` (e.g. a matplotlib ``savefig``)."""
        final = self.path_for(name, ext)
        tmp = self._stage(final)
        write(tmp)
        return final

    # -- publishing --------------------------------------------------------------------------
    def commit(self, elapsed_s: float | None = None) -> list[Path]:
        """Write the sidecars and move every staged file to its final name."""
        if self._tmp is None:
            self._committed = True
            return []
        prov = dict(self.provenance)
        if elapsed_s is not None:
            prov["ElapsedSeconds"] = round(float(elapsed_s), 4)
        for final, sidecar in self._sidecars.items():
            tmp = self._stage(final)
            tmp.write_text(
                json.dumps(jsonable({**sidecar, **prov}), indent=2) + "\n", encoding="utf-8"
            )
        for _tmp, final in self._pending:  # re-check: something may have appeared meanwhile
            self._check_target(final)
        done = []
        for tmp, final in self._pending:
            os.replace(tmp, final)
            done.append(final)
        self._cleanup()
        self._committed = True
        return done

    def abort(self) -> None:
        """Drop everything staged; final names are untouched."""
        self._cleanup()
        self._pending.clear()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else repr(float(v))
    return str(v)
