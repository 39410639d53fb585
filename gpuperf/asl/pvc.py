"""Partial-volume correction of ASL CBF: linear regression in a local kernel.

A voxel's perfusion signal is the sum of its tissues' contributions, weighted by their
fractions (CSF contributes none):

    CBF_obs(v) = P_GM(v) CBF_GM(v) + P_WM(v) CBF_WM(v)

which has two unknowns per voxel. Asllani, Borogovac & Brown (MRM 2008;60:1362-1371) assume
CBF_GM and CBF_WM constant inside a small kernel around each voxel and solve the kernel's
equations by least squares:

    [CBF_GM, CBF_WM](v) = argmin_x sum_{k in kernel(v)} (CBF_obs(k) - P(k) . x)^2

Here the 2 x 2 normal equations of every voxel are assembled from box sums of the products
``P_GM^2, P_GM P_WM, P_WM^2, P_GM CBF, P_WM CBF`` (separable cumulative sums: no loop over
voxels) and solved in closed form. Where the kernel's fractions are (nearly) collinear, e.g.
a kernel of pure grey matter, the system has rank one and the minimum-norm solution along its
principal direction is used (the pseudo-inverse, as a least-squares solver would do).

Why linear regression and not BASIL's spatially regularised fit (Chappell et al., MRM 2011):
LR is linear and closed form, so it vectorises over the whole volume, runs on NumPy or CuPy
without iterations and applies to the CBF map of any ASL model (single- or multi-PLD), and it
is the method most PVC comparisons in MS and dementia cohorts use. Its cost is the kernel's
smoothing of each tissue's CBF (the price of the constant-in-kernel assumption); BASIL's
adaptive prior smooths less but needs the multi-PLD kinetic fit inside a variational Bayes
loop. Correcting the CBF map rather than the difference signal is equivalent for
single-PLD quantification (CBF is proportional to the difference signal voxel by voxel, given
the voxel's M0) and is what ExploreASL does.

The default kernel is 5 x 5 x 1 voxels, in-plane, as in Asllani et al. (2D multi-slice ASL
with thick slices); outputs are NaN where the voxel's own fraction of the tissue is below
``min_fraction`` (the tissue's CBF is not measured there) or no kernel voxel is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Kernel of the regression (voxels along x, y, z).
KERNEL = (5, 5, 1)
#: Tissue fraction below which a voxel gets no corrected value for that tissue.
MIN_FRACTION = 0.1
#: Kernels whose normal matrix has ``det / trace^2`` below this are treated as rank one.
RCOND = 1e-6


def _namespace(a: Any) -> Any:
    """NumPy for NumPy arrays, the array's own module otherwise (CuPy), without importing it."""
    mod = type(a).__module__.split(".")[0]
    if mod == "numpy":
        return np
    import importlib

    return importlib.import_module(mod)


def box_sum(a: Any, kernel: Sequence[int], xp: Any = np) -> Any:
    """Sum of ``a`` over a centred box of ``kernel`` voxels (odd sizes), zero outside the
    image: one padded cumulative sum per axis."""
    out = a
    for axis, k in enumerate(kernel):
        if k <= 1:
            continue
        if k % 2 == 0:
            raise ValueError(f"kernel sizes must be odd, got {tuple(kernel)}")
        h = k // 2
        pad = [(0, 0)] * out.ndim
        pad[axis] = (h + 1, h)
        c = xp.cumsum(xp.pad(out, pad), axis=axis)
        n = out.shape[axis]
        hi = [slice(None)] * out.ndim
        lo = [slice(None)] * out.ndim
        hi[axis] = slice(k, k + n)
        lo[axis] = slice(0, n)
        out = c[tuple(hi)] - c[tuple(lo)]
    return out


def lr_pvc(
    cbf: Any,
    pv_gm: Any,
    pv_wm: Any,
    mask: Any = None,
    *,
    kernel: Sequence[int] = KERNEL,
    min_fraction: float = MIN_FRACTION,
) -> tuple[Any, Any]:
    """Grey- and white-matter CBF by linear regression in a local kernel (Asllani et al. 2008).

    Parameters
    ----------
    cbf : ndarray (X, Y, Z)
        Uncorrected CBF (ml/100g/min); NaN voxels are left out of every kernel.
    pv_gm, pv_wm : ndarray (X, Y, Z)
        Grey- and white-matter fractions in [0, 1] on the grid of ``cbf``.
    mask : ndarray of bool (X, Y, Z), optional
        Voxels used and corrected (default: where ``cbf`` is finite).
    kernel : (int, int, int)
        Odd kernel sizes in voxels (default 5 x 5 x 1).
    min_fraction : float
        Outputs are NaN where the voxel's own fraction of that tissue is below this.

    Returns
    -------
    (cbf_gm, cbf_wm) : ndarray (X, Y, Z) float32
        CBF of pure grey and pure white matter (ml/100g/min), NaN outside the mask.
    """
    xp = _namespace(cbf)
    y = xp.asarray(cbf, dtype=xp.float64)
    g = xp.clip(xp.nan_to_num(xp.asarray(pv_gm, dtype=xp.float64)), 0.0, 1.0)
    w = xp.clip(xp.nan_to_num(xp.asarray(pv_wm, dtype=xp.float64)), 0.0, 1.0)
    if not (y.shape == g.shape == w.shape):
        raise ValueError(f"shapes differ: cbf {y.shape}, GM {g.shape}, WM {w.shape}")
    valid = xp.isfinite(y) if mask is None else (xp.asarray(mask, dtype=bool) & xp.isfinite(y))
    v = valid.astype(xp.float64)
    y0 = xp.where(valid, y, 0.0)
    gv, wv = g * v, w * v
    a = box_sum(gv * g, kernel, xp)
    b = box_sum(gv * w, kernel, xp)
    c = box_sum(wv * w, kernel, xp)
    u = box_sum(gv * y0, kernel, xp)
    s = box_sum(wv * y0, kernel, xp)
    tr = a + c
    det = a * c - b * b
    full = det > RCOND * tr * tr
    safe = xp.where(full, det, 1.0)
    x_gm = (c * u - b * s) / safe
    x_wm = (a * s - b * u) / safe
    # rank one: minimum-norm solution x = e (e . r) / lambda along the principal eigenvector
    half = (a - c) / 2
    lam = tr / 2 + xp.sqrt(half * half + b * b)
    e1, e2 = lam - c, b
    alt = xp.abs(e1) + xp.abs(e2) == 0  # b = 0 and lambda = c: the eigenvector is (0, 1)
    e1 = xp.where(alt, xp.where(c >= a, 0.0, 1.0), e1)
    e2 = xp.where(alt, xp.where(c >= a, 1.0, 0.0), e2)
    norm = xp.sqrt(e1 * e1 + e2 * e2)
    e1, e2 = e1 / norm, e2 / norm
    proj = (e1 * u + e2 * s) / xp.where(lam > 0, lam, 1.0)
    x_gm = xp.where(full, x_gm, e1 * proj)
    x_wm = xp.where(full, x_wm, e2 * proj)
    ok = valid & (tr > 0)
    out_gm = xp.where(ok & (g >= min_fraction), x_gm, xp.nan).astype(xp.float32)
    out_wm = xp.where(ok & (w >= min_fraction), x_wm, xp.nan).astype(xp.float32)
    return out_gm, out_wm
