"""Lesions one by one: connected components of a lesion mask, their perilesional rings, and
each lesion's map statistics (the rows of ``group_lesions.tsv``).

A lesion is a connected component of a binary lesion mask (26-connectivity by default: voxels
sharing a face, an edge or a corner belong to one lesion, as in FSL ``cluster``), or one label
of a lesion label map (an image with more than one positive value is read as labels, e.g. the
output of a lesion-segmentation tool that already separates confluent lesions).

The perilesional ring of a lesion is the set of voxels within ``ring_mm`` millimetres of it
(Euclidean distance on the voxel grid, voxel sizes from the header) that belong to *no*
lesion: a dilation by a ball of radius ``ring_mm`` minus the lesion mask. The tissue around
MS lesions is often abnormal before it becomes lesional; the ring is where that shows
(e.g. Wuerfel et al., Brain 2004, perfusion changes in normal-appearing tissue before
enhancement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Default radius of the perilesional ring (mm).
RING_MM = 3.0


@dataclass
class Lesions:
    """Lesions of one subject.

    Attributes
    ----------
    labels : ndarray of int (X, Y, Z)
        0 outside lesions, ``1..n`` inside (one value per lesion).
    ids : ndarray of int (n,)
        The lesion labels present, ascending.
    rings : list of tuple (slices, ndarray of bool)
        For each lesion, its ring as a boolean block and the slices of the block in the image.
    """

    labels: np.ndarray
    ids: np.ndarray
    rings: list[tuple[tuple[slice, ...], np.ndarray]]


def label_lesions(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Lesion labels of a mask: connected components (``scipy.ndimage.label``) of a binary
    mask, or the values of a label map (more than one distinct positive integer value).

    Parameters
    ----------
    mask : ndarray (X, Y, Z)
        Binary mask or label map (NaN counts as 0).
    connectivity : {1, 2, 3}
        1: faces (6-connectivity), 2: faces and edges (18), 3: also corners (26).

    Returns
    -------
    ndarray of int64 (X, Y, Z)
    """
    from scipy import ndimage

    data = np.nan_to_num(np.asarray(mask, dtype=np.float64), nan=0.0)
    values = np.unique(data[data > 0])
    if values.size > 1:
        return np.where(data > 0, np.rint(data), 0).astype(np.int64)
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, _ = ndimage.label(data > 0, structure=structure)
    return labels.astype(np.int64)


def find_lesions(
    mask: np.ndarray,
    zooms_mm: Sequence[float],
    *,
    ring_mm: float = RING_MM,
    connectivity: int = 3,
) -> Lesions:
    """Label the lesions of ``mask`` and build each lesion's perilesional ring.

    Parameters
    ----------
    mask : ndarray (X, Y, Z)
        Lesion mask or label map (see :func:`label_lesions`).
    zooms_mm : (3,) float
        Voxel sizes.
    ring_mm : float
        Ring radius: voxels at a Euclidean distance in (0, ``ring_mm``] mm from the lesion that
        are in no lesion. 0 gives empty rings.
    """
    from scipy import ndimage

    labels = label_lesions(mask, connectivity)
    ids = np.unique(labels[labels > 0])
    any_lesion = labels > 0
    zooms = np.asarray(zooms_mm, dtype=np.float64)[:3]
    margin = np.ceil(ring_mm / zooms).astype(int) + 1
    rings = []
    boxes = ndimage.find_objects(labels)
    for i in ids:
        box = boxes[i - 1]
        sl = tuple(
            slice(max(s.start - m, 0), min(s.stop + m, n))
            for s, m, n in zip(box, margin, labels.shape, strict=True)
        )
        lesion = labels[sl] == i
        if ring_mm > 0:
            dist = ndimage.distance_transform_edt(~lesion, sampling=zooms)
            ring = (dist <= ring_mm) & ~any_lesion[sl]
        else:
            ring = np.zeros_like(lesion)
        rings.append((sl, ring))
    return Lesions(labels, ids, rings)


def lesion_stats(
    values: np.ndarray, lesions: Lesions
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Mean, median and finite-voxel count of ``values`` in every lesion and every ring.

    Returns
    -------
    (lesion, ring) : dict of str to ndarray (n,)
        Keys ``mean``, ``median``, ``n_finite``; NaN where a lesion or ring has no finite value.
    """
    from scipy import ndimage

    finite = np.isfinite(values)
    lab = np.where(finite, lesions.labels, 0)
    ids = lesions.ids
    n_fin = ndimage.sum_labels(np.ones(values.shape), lab, ids).astype(np.int64)
    v = np.where(finite, values, 0.0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_fin > 0, ndimage.sum_labels(v, lab, ids) / np.maximum(n_fin, 1), np.nan)
    median = np.full(ids.size, np.nan)
    if ids.size:
        has = n_fin > 0
        if has.any():
            median[has] = ndimage.median(v, lab, ids[has])
    rmean = np.full(ids.size, np.nan)
    rmed = np.full(ids.size, np.nan)
    rn = np.zeros(ids.size, np.int64)
    for k, (sl, ring) in enumerate(lesions.rings):
        rv = values[sl][ring]
        rv = rv[np.isfinite(rv)].astype(np.float64)
        rn[k] = rv.size
        if rv.size:
            rmean[k], rmed[k] = rv.mean(), np.median(rv)
    return (
        {"mean": mean, "median": median, "n_finite": n_fin},
        {"mean": rmean, "median": rmed, "n_finite": rn},
    )


def lesion_sizes(lesions: Lesions, zooms_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(n_voxels, volume_ml) of every lesion."""
    counts = np.bincount(lesions.labels.ravel(), minlength=int(lesions.labels.max()) + 1)
    n = counts[lesions.ids].astype(np.int64)
    voxel_ml = float(np.prod(np.asarray(zooms_mm, dtype=np.float64)[:3])) / 1000.0
    return n, n * voxel_ml


def overlap_fraction(lesions: Lesions, other: np.ndarray) -> np.ndarray:
    """Fraction of each lesion's voxels inside the boolean mask ``other`` (e.g. enhancing)."""
    inside = np.bincount(
        lesions.labels.ravel(),
        weights=other.ravel().astype(np.float64),
        minlength=int(lesions.labels.max()) + 1,
    )
    total = np.bincount(lesions.labels.ravel(), minlength=int(lesions.labels.max()) + 1)
    return inside[lesions.ids] / np.maximum(total[lesions.ids], 1)
