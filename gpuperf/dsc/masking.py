"""The voxel grid of a DSC fit: brain mask (given or automatic), gather and scatter.

The maps of a fit are computed on the ``V`` voxels of the mask and put back on the input grid;
:class:`VoxelGrid` remembers how (the grid's shape, the flattening order, the mask's indices)
and gathers/scatters through :func:`gpuperf.io.nifti.gather` / :func:`~gpuperf.io.nifti.scatter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpuperf.errors import GpuperfError, InputError
from gpuperf.io.nifti import gather, scatter
from gpuperf.status import Status

#: Automatic brain mask: mean signal above this fraction of its 98th percentile.
BRAIN_MASK_FRACTION = 0.2


def auto_brain_mask(mean_signal: np.ndarray) -> np.ndarray:
    """Brain mask from the mean signal of the series: ``S > 0.2 * percentile98(S)``.

    T2*-weighted EPI background is dark, so a fraction of a robust maximum separates head from
    air; a user mask is better where the scalp or large sinuses matter.
    """
    s0 = np.where(np.isfinite(mean_signal), mean_signal, 0.0)
    pos = s0[s0 > 0]
    if pos.size == 0:
        raise GpuperfError("automatic brain mask: no voxel has a positive baseline signal")
    return s0 > BRAIN_MASK_FRACTION * np.percentile(pos, 98)


@dataclass
class VoxelGrid:
    """Where the ``V`` fitted voxels lie on the input grid.

    Attributes
    ----------
    spatial : tuple
        Spatial shape of the input ((X, Y, Z) or (V0,)).
    order : {'C', 'F'}
        Flattening order: that of the input array, so that flattening a Fortran-ordered NIfTI
        series is a view (indices reported outside are C-order).
    mask : ndarray of bool (spatial)
    idx : ndarray (V,)
        Flat indices (in ``order``) of the mask's voxels.
    """

    spatial: tuple
    order: str
    mask: np.ndarray
    idx: np.ndarray
    #: Status of the grid's voxels outside the mask (spatial int32; None: all OUTSIDE_MASK):
    #: the automatic mask drops voxels with a NaN/Inf frame (NONFINITE_INPUT) or a negative
    #: mean signal (NONPOSITIVE_INPUT), and the status map says so.
    outside: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def for_signal(cls, signal: np.ndarray, mask: np.ndarray | None) -> VoxelGrid:
        """The grid of a (V, T) or (X, Y, Z, T) signal; ``mask`` None: automatic for 4D input
        (:func:`auto_brain_mask` of the series mean), every voxel for 2D input."""
        spatial = signal.shape[:-1]
        outside = None
        order = "F" if signal.flags.f_contiguous and not signal.flags.c_contiguous else "C"
        if mask is None:
            if signal.ndim == 4:
                # the series mean: a bolus lowers a voxel's mean little (a few frames of many)
                flat = signal.reshape(-1, signal.shape[-1], order=order)
                with np.errstate(invalid="ignore", over="ignore"):
                    mean = flat.mean(axis=1)
                mask = auto_brain_mask(mean).reshape(spatial, order=order)
                outside = np.full(mean.shape, int(Status.OUTSIDE_MASK), dtype=np.int32)
                outside[~np.isfinite(mean)] = int(Status.NONFINITE_INPUT)
                outside[np.isfinite(mean) & (mean < 0)] = int(Status.NONPOSITIVE_INPUT)
                outside = outside.reshape(spatial, order=order)
            else:
                mask = np.ones(spatial, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial:
            raise InputError(None, "mask", f"shape {mask.shape} does not match the data {spatial}")
        idx = np.flatnonzero(mask.reshape(-1, order=order))
        if idx.size == 0:
            raise InputError(None, "mask", "the mask is empty")
        return cls(spatial, order, mask, idx, outside)

    @property
    def n_grid(self) -> int:
        """Grid points (voxels of the input)."""
        return int(self.mask.size)

    def gather(self, data: np.ndarray) -> np.ndarray:
        """The mask's voxels of ``data`` (spatial or spatial + (T,)), as (V,) or (V, T)."""
        return gather(data, self.mask, order=self.order)

    def scatter(self, values: np.ndarray, fill: float = np.nan, dtype: object = np.float32):
        """(V,) values back on the grid, ``fill`` outside the mask."""
        return scatter(values, self.mask, fill=fill, order=self.order, dtype=dtype)

    def scatter_status(self, values: np.ndarray) -> np.ndarray:
        """(V,) status flags back on the grid; outside the mask :attr:`outside` (int32)."""
        out = self.scatter(values, fill=int(Status.OUTSIDE_MASK), dtype=np.int32)
        if self.outside is not None:
            out[~self.mask] = self.outside[~self.mask]
        return out

    def local(self, other: np.ndarray, field: str) -> np.ndarray:
        """A second bool mask (spatial shape) restricted to the fitted voxels, (V,)."""
        other = np.asarray(other, dtype=bool)
        if other.shape != self.spatial:
            raise InputError(None, field, f"shape {other.shape} != the data's {self.spatial}")
        return self.gather(other)

    def local_or_flat(self, other: np.ndarray, field: str) -> np.ndarray:
        """A bool mask given on the grid (spatial or flat) or on the fitted voxels, as (V,)."""
        a = np.asarray(other, dtype=bool)
        flat = a.reshape(-1, order=self.order if a.shape == self.spatial else "C")
        if flat.size == self.n_grid:
            return flat[self.idx]
        if flat.size != self.idx.size:
            raise InputError(None, field, f"{field} mask has {a.shape}, the data {self.spatial}")
        return flat

    def c_indices(self, local: np.ndarray) -> np.ndarray:
        """Sorted flat C-order grid indices of fitted voxels ``local`` (indices into V)."""
        ijk = np.unravel_index(self.idx[local], self.spatial, order=self.order)
        return np.sort(np.ravel_multi_index(ijk, self.spatial))
