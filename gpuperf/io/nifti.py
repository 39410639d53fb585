"""Reading NIfTI images and masks; gathering masked voxels into a voxel x time block and back.

Data are never changed silently: NIfTI scaling (scl_slope/scl_inter) is applied as the format
defines, orientation is kept as stored, and the only conversion is to float32 (or bool for masks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.errors import InputError
from gpuperf.io.readahead import gunzip_bytes, require_file, take_read_ahead

#: Largest affine difference (mm) still treated as the same grid.
AFFINE_ATOL_MM = 1e-3

#: NIfTI file-name endings, longest first.
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | PathLike) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz``."""
    return Path(path).name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | PathLike) -> str:
    """The file name without its NIfTI ending: ``sub-01_asl.nii.gz`` -> ``sub-01_asl``
    (other names are returned whole)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(path: str | PathLike) -> Path:
    """The BIDS JSON sidecar next to an image: ``x.nii.gz`` -> ``x.json``."""
    p = Path(path)
    return p.with_name(nifti_stem(p) + ".json")


def read_sidecar(path: str | PathLike, required: bool = False) -> dict[str, Any]:
    """Read the JSON sidecar of an image (``{}`` when absent and not ``required``)."""
    sc = sidecar_path(path)
    if not sc.exists():
        if required:
            raise InputError(sc, "file", f"the JSON sidecar of {Path(path).name} does not exist")
        return {}
    try:
        with open(sc, encoding="utf-8") as fh:
            meta = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(sc, "JSON", f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(
            sc, "JSON", f"expected an object at top level, found {type(meta).__name__}"
        )
    return meta


@dataclass
class LoadedImage:
    """An image as read from disk.

    Attributes
    ----------
    path : Path
    data : ndarray, float32, shape (X, Y, Z) or (X, Y, Z, T)
    affine : ndarray (4, 4)
    header : nibabel.Nifti1Header
        A copy of the file's header, used as the template for output maps.
    """

    path: Path
    data: np.ndarray
    affine: np.ndarray
    header: Any

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])  # type: ignore[return-value]

    @property
    def n_frames(self) -> int:
        return 1 if self.data.ndim == 3 else int(self.data.shape[3])

    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in self.header.get_zooms())

    def grid(self) -> ImageGrid:
        """The image without its voxels: what an output writer needs of a reference."""
        return ImageGrid(self.path, tuple(self.data.shape), self.affine, self.header)


@dataclass(frozen=True)
class ImageGrid:
    """The grid of a :class:`LoadedImage` (path, shape, affine, header) without its voxels:
    the reference an :class:`~gpuperf.io.outputs.OutputWriter` carries to another process."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    header: Any

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(self.shape[:3])  # type: ignore[return-value]

    @property
    def n_frames(self) -> int:
        return 1 if len(self.shape) == 3 else int(self.shape[3])

    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in self.header.get_zooms())


def load_image(
    path: str | PathLike,
    ndim: tuple[int, ...] = (3, 4),
    role: str = "image",
    readonly: bool = False,
) -> LoadedImage:
    """Load a 3D or 4D NIfTI file as float32.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz``.
    ndim : tuple of int
        Accepted dimensionalities; trailing singleton dimensions beyond 3 are dropped first.
    role : str
        What the file is for ("series", "mask", ...), used in error messages.
    readonly : bool
        The caller never writes into the data: a ``.nii.gz`` holding native float32 without
        scaling is then returned as a read-only view of the inflated bytes (the values
        ``get_fdata`` gives, without copying a whole-brain series once more).
    """

    p = require_file(path, role)
    if not is_nifti(p):
        raise InputError(p, "format", f"expected a NIfTI file (.nii or .nii.gz) for the {role}")
    try:
        img, raw = _open_nifti(p)
        stored = np.dtype(img.get_data_dtype())
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(p, "format", f"cannot read {role} as NIfTI: {exc}") from exc
    if stored.kind == "c" or stored.fields is not None:
        # a cast to float32 would silently drop the imaginary part (or mangle RGB triplets)
        raise InputError(
            p,
            "datatype",
            f"the {role} holds {stored.name} values; gpuperf needs real magnitude images "
            "(take the magnitude, e.g. abs(), before fitting)",
        )
    try:
        view = _float32_view(img, raw) if readonly and raw is not None else None
        data = np.asarray(img.get_fdata(dtype=np.float32)) if view is None else view
    except Exception as exc:
        raise InputError(p, "format", f"cannot read {role} as NIfTI: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in ndim:
        want = " or ".join(f"{d}D" for d in ndim)
        raise InputError(p, "dim", f"expected a {want} {role}, found shape {data.shape}")
    return LoadedImage(p, data, np.asarray(img.affine, dtype=np.float64), img.header.copy())


def _float32_view(img: Any, raw: bytes) -> np.ndarray | None:
    """The data of ``img`` (read from ``raw``) as a read-only array over those bytes when they
    are stored as native float32 without scaling; None otherwise (``get_fdata`` converts).

    Where the data start, their type, scaling, shape and order are those nibabel's own array
    proxy reads them with (the header's ``vox_offset`` can be 0 in a single file).
    """
    proxy = img.dataobj
    try:
        offset, stored, order = int(proxy.offset), np.dtype(proxy.dtype), proxy.order
        slope, inter = float(proxy.slope), float(proxy.inter)
        shape = tuple(int(n) for n in proxy.shape)
    except (AttributeError, TypeError, ValueError):
        return None
    if stored != np.dtype(np.float32) or not stored.isnative or (slope, inter) != (1.0, 0.0):
        return None
    count = int(np.prod(shape))
    if offset + count * stored.itemsize > len(raw):
        return None  # truncated: nibabel's reader reports it
    return np.frombuffer(raw, dtype=stored, count=count, offset=offset).reshape(shape, order=order)


def open_nifti(path: Path) -> Any:
    """``nibabel.load``, with ``.nii.gz`` inflated in one call rather than through ``gzip.open``
    (:func:`_open_nifti` without the bytes)."""
    return _open_nifti(path)[0]


def _open_nifti(path: Path) -> tuple[Any, bytes | None]:
    """``nibabel.load``, with ``.nii.gz`` inflated in one call rather than through ``gzip.open``;
    also the inflated bytes (None for ``.nii``).

    Why: inflating dominates reading a compressed whole-brain series (0.35 s of a 1 s DSC run
    for 62 MB); one ISA-L call halves it. The bytes are the same, so is the image.
    """
    import nibabel as nib

    if not path.name.endswith(".nii.gz"):
        return nib.load(str(path)), None
    raw = take_read_ahead(path)
    if raw is None:
        raw = gunzip_bytes(path.read_bytes())
    # the header size (first 4 bytes, either byte order) tells NIfTI-2 (540) from NIfTI-1
    # (348): parsing a NIfTI-2 header as NIfTI-1 raises before its size could be checked
    nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    return cls.from_bytes(raw), raw


def check_same_grid(a: LoadedImage, b: LoadedImage) -> None:
    """Raise :class:`InputError` naming both files unless ``a`` and ``b`` share one voxel grid."""
    if a.shape3d != b.shape3d:
        raise InputError(
            b.path,
            "shape",
            f"grid {b.shape3d} does not match {a.path.name} {a.shape3d}: both images must share "
            f"one voxel grid (resample {b.path.name} to {a.path} first)",
        )
    if not np.allclose(a.affine, b.affine, atol=AFFINE_ATOL_MM):
        raise InputError(
            b.path,
            "affine",
            f"affine differs from that of {a.path} (max difference "
            f"{np.abs(a.affine - b.affine).max():.4g} mm): both images must share one voxel grid",
        )


def load_mask(path: str | PathLike, reference: LoadedImage, role: str = "mask") -> np.ndarray:
    """Load a 3D mask on the grid of ``reference``; voxels > 0 are inside (NaN is outside).

    Returns
    -------
    ndarray of bool, shape reference.shape3d
    """
    m = load_image(path, ndim=(3,), role=role)
    check_same_grid(reference, m)
    mask = np.nan_to_num(m.data, nan=0.0) > 0
    if not mask.any():
        raise InputError(m.path, "voxels", f"{role} is empty (no voxel > 0)")
    return mask


#: Frames per block of :func:`gather` from a Fortran-ordered series (measured best: 12-16).
GATHER_FRAMES = 16


def gather(data: np.ndarray, mask: np.ndarray, order: str = "C") -> np.ndarray:
    """Masked voxels of an array as a C-contiguous block.

    Parameters
    ----------
    data : ndarray, shape ``mask.shape`` or ``mask.shape + (T,)``
    mask : ndarray of bool
    order : {'C', 'F'}
        How the voxels are numbered: ``'F'`` follows a Fortran-ordered array (NIfTI data as
        nibabel returns them), so that flattening it is a view, not a copy of the series.

    Returns
    -------
    ndarray, shape (V,) or (V, T), voxels in ``np.flatnonzero(mask.reshape(-1, order=order))``
    order.
    """
    if data.shape[: mask.ndim] != mask.shape:
        raise ValueError(f"data shape {data.shape} does not match mask shape {mask.shape}")
    if order == "C":
        if data.ndim == mask.ndim + 1 and data.flags.f_contiguous and not data.flags.c_contiguous:
            # a Fortran-ordered series (as nibabel returns it): each frame is contiguous, so
            # take the voxels frame by frame and transpose once (40 % faster than data[mask],
            # which walks the series with the frame stride); the same values in the same order
            # frames a few at a time: each (k, V) block and its transposed copy stay in cache
            # (40 % faster again than one take and one transpose of the whole series)
            idx = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
            frames = data.reshape(mask.size, -1, order="F").T  # (T, X*Y*Z), a view
            out = np.empty((idx.size, frames.shape[0]), dtype=data.dtype)
            for t in range(0, frames.shape[0], GATHER_FRAMES):
                out[:, t : t + GATHER_FRAMES] = np.take(frames[t : t + GATHER_FRAMES], idx, 1).T
            return out
        return np.ascontiguousarray(data[mask])
    flat = data.reshape((mask.size,) + data.shape[mask.ndim :], order=order)
    return np.ascontiguousarray(flat[np.flatnonzero(mask.reshape(-1, order=order))])


def scatter(
    values: np.ndarray,
    mask: np.ndarray,
    fill: float = np.nan,
    order: str = "C",
    dtype: object = np.float32,
) -> np.ndarray:
    """Put per-voxel ``values`` (V,) or (V, K) back on the grid; outside the mask is ``fill``.

    ``order`` is that of the :func:`gather` that produced the voxels; ``dtype`` that of the
    result (float32 maps; int32 for status maps).
    """
    values = np.asarray(values)
    if order == "C":
        out = np.full(mask.shape + values.shape[1:], fill, dtype=dtype)
        out[mask] = values
        return out
    out = np.full((mask.size,) + values.shape[1:], fill, dtype=dtype)
    out[np.flatnonzero(mask.reshape(-1, order=order))] = values
    return out.reshape(mask.shape + values.shape[1:], order=order)
