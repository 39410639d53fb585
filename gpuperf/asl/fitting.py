"""The voxelwise kinetic-model fit of ASL (method ``gkm``): start, fit, kinks, arterial part.

Buxton's general kinetic model (Buxton et al., MRM 40:383, 1998) is fitted for CBF and ATT by
the batched Levenberg-Marquardt fitter :func:`gpuperf.fit.fit_lm` (CUDA kernel or NumPy twin);
optima at a kink of the model are finished by :mod:`gpuperf.asl.kinks`, the macrovascular
component by :mod:`gpuperf.asl.arterial`.

Repeats as sufficient statistics: the repeats of one (PLD, tau) are replaced by their mean,
fitted with a weight equal to their count. ``sum_k (y_k - f)^2 = sum_u n_u (ybar_u - f_u)^2
+ SSW`` with ``SSW`` the within-group sum of squares, which does not depend on the parameters,
so the least-squares estimates are those of the per-repeat fit; ``chi2`` (hence sigma^2 and the
standard errors, ``sigma^2 = chi2 / (N - P_free)`` with N the number of repeats) adds SSW back.
A 7-PLD x 6-repeat series is fitted on 7 samples instead of 42.

2D readouts: a voxel of slice k is read ``SliceTiming[k]`` later; its offset ``dt`` is passed
per voxel and held fixed in the slice-timed variant of the model
(:class:`gpuperf.fit.models.buxton.SliceTimed`), so one launch fits every slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuperf.asl.arterial import fit_arterial
from gpuperf.asl.kinks import snap_kinks
from gpuperf.backend import NUMPY_BACKEND, Backend, get_backend
from gpuperf.fit import fit_lm
from gpuperf.fit.models import Model
from gpuperf.fit.models.buxton import slice_timed
from gpuperf.status import DTYPE as STATUS_DTYPE
from gpuperf.status import Status


def repeat_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of the fitter abscissa ``x`` (N, 2) and how the samples map onto them.

    Groups are in the order of their first sample, so data without repeats keep their order
    (and the fit its floating-point order).

    Returns
    -------
    xu : (U, 2) distinct ``(t, tau)`` rows
    inverse : (N,) int, group of each sample
    counts : (U,) int, repeats per group
    """
    keys = np.round(np.asarray(x, dtype=np.float64), 9)
    _, first, inverse, counts = np.unique(
        keys, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.argsort(first, kind="stable")  # sorted group -> rank by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    inverse = rank[inverse.reshape(-1)]
    return np.asarray(x, dtype=np.float64)[first[order]], inverse, counts[order]


#: Voxels per block of :func:`group_means`: its float64 temporaries stay in cache and the
#: (V, N) x (N, U) product stays below OpenBLAS's threading threshold (whole-array calls were
#: 5x slower on 2 cores); each voxel's numbers do not depend on the block.
GROUP_BLOCK = 1024


def group_means(y: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> tuple[Any, Any]:
    """Means (V, U) of the samples of each group and the within-group sum of squares (V,)."""
    n_vox, n = y.shape
    onehot = np.zeros((n, counts.size))
    onehot[np.arange(n), inverse] = 1.0
    ybar = np.empty((n_vox, counts.size))
    ssw = np.empty(n_vox)
    for a in range(0, n_vox, GROUP_BLOCK):
        y64 = np.asarray(y[a : a + GROUP_BLOCK], dtype=np.float64)
        yb = np.divide(y64 @ onehot, counts, out=ybar[a : a + GROUP_BLOCK])
        d = y64 - yb[:, inverse]
        ssw[a : a + GROUP_BLOCK] = np.einsum("ij,ij->i", d, d)
    return ybar, ssw


def initial_params(model: Any, y: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Starting values (V, P): ATT at ``att_start_s`` and CBF from a linear least-squares
    scale of the model at that ATT (the signal is nearly linear in CBF); ``offset`` (V,) is
    each voxel's slice-time offset (s)."""
    x = model.sample_times()
    lo, hi = model.cbf_bounds
    n_vox = y.shape[0]
    extra = [0.0, 0.0] if model.arterial else []
    if offset is None:
        ref = np.array([[50.0, model.att_start_s, *extra]])
        g, _ = model.kinetic_model.evaluate(np, ref, x, model.consts())
        g = g[0]
        gg = float(g @ g)
        cbf0 = 50.0 * (y.astype(np.float64) @ g) / gg if gg > 0 else np.full(n_vox, 50.0)
    else:
        ref = np.tile([50.0, model.att_start_s, *extra, 0.0], (n_vox, 1))
        ref[:, -1] = offset
        g, _ = slice_timed(model.kinetic_model).evaluate(np, ref, x, model.consts())
        gg = (g * g).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cbf0 = np.where(gg > 0, 50.0 * (y.astype(np.float64) * g).sum(axis=1) / gg, 50.0)
    span = hi - lo
    cbf0 = np.clip(np.nan_to_num(cbf0, nan=50.0), lo + 1e-3 * span, hi - 1e-3 * span)
    cols = [cbf0, np.full(n_vox, model.att_start_s)]
    if model.arterial:
        cols += [np.full(n_vox, 0.5), np.full(n_vox, 0.5 * model.att_start_s)]
    return np.stack(cols, axis=1).astype(model.dtype)


class GroupedFit:
    """The data of one kinetic fit in sufficient statistics, and the fitter call over them.

    Attributes
    ----------
    x : (U, 2) distinct sample times; weights : (U,) repeat counts
    ybar : (V, U) group means; ssw : (V,) within-group sum of squares
    n_samples : int, the number of repeats N (degrees of freedom N - P_free)
    offset : (V,) or None, slice-time offsets (s)
    """

    def __init__(self, model: Any, y: np.ndarray, offset: np.ndarray | None, common: dict):
        xu, inverse, counts = repeat_groups(model.sample_times())
        ybar, ssw = group_means(y, inverse, counts)
        self.x, self.weights = xu, counts.astype(np.float64)
        self.ybar, self.ssw = ybar.astype(model.dtype), ssw
        self.n_samples = y.shape[1]
        self.offset = offset
        self.common = common
        device = common.get("device", "auto")
        #: Where the fits run: on CuPy the group means (and offsets) stay on the device for
        #: every fit of this data (tissue fit, kinks, each start of the arterial multi-start).
        self.backend: Backend = NUMPY_BACKEND if device in ("cpu", "host") else get_backend(device)
        self._resident: dict[str, Any] = {}

    def resident(self, name: str) -> Any:
        """``ybar`` or ``offset`` on the fit's backend, uploaded on first use (host arrays on
        NumPy)."""
        if name not in self._resident:
            self._resident[name] = self.backend.asarray(getattr(self, name))
        return self._resident[name]

    def _rows(self, name: str, rows: Any) -> Any:
        """Rows ``rows`` (None: all) of the resident ``name``."""
        a = self.resident(name)
        if rows is None:
            return a
        return a[self.backend.asarray(rows) if self.backend.is_gpu else rows]

    def fit(self, mdl: Model, p0, lower, upper, fixed=None, rows=None, **kw) -> tuple:
        """``fit_lm`` of ``mdl`` on the group means (the voxels ``rows``, default all), with
        the slice-time offset appended (fixed) when there is one. ``p0`` (V, P) is a host
        array or, on the CuPy backend, a device array (see :func:`fit_arterial`); the group
        means are the resident copy (:meth:`resident`): they go up once for all fits.

        Returns params (V, P) float64 (offset column removed), chi2 (V,) of the repeats
        (``SSW`` added), status, n_iter and stderr (V, P): the fitter's standard errors of the
        means rescaled to ``sigma^2 = chi2 / (N - P_free)`` (a factor of exactly 1 without
        repeats), or :meth:`stderr` where the means leave no degrees of freedom.
        """
        sel = slice(None) if rows is None else rows
        on_device = self.backend.is_device_array(p0)
        if not on_device:
            p0 = np.asarray(p0, dtype=np.float64)
        n_par = p0.shape[1]
        fixed = np.zeros(n_par, dtype=bool) if fixed is None else np.asarray(fixed, bool)
        lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        if self.offset is not None:
            mdl = slice_timed(mdl)
            if on_device:
                off = self._rows("offset", rows)
                p0 = self.backend.xp.concatenate([p0, off[:, None]], axis=1)
            else:
                p0 = np.concatenate([p0, self.offset[sel, None]], axis=1)
            lower, upper = np.append(lower, -np.inf), np.append(upper, np.inf)
            fixed = np.append(fixed, True)
        r = fit_lm(
            mdl,
            self.x,
            self._rows("ybar", rows),
            p0,
            lower=lower,
            upper=upper,
            fixed=fixed,
            weights=self.weights,
            **{**self.common, **kw},
        )
        params = np.asarray(r.params, dtype=np.float64)[:, :n_par]
        chi2_w = np.asarray(r.chi2, dtype=np.float64)
        chi2 = chi2_w + self.ssw[sel]
        status = np.asarray(r.status, dtype=STATUS_DTYPE)
        se_w = np.asarray(r.stderr, dtype=np.float64)[:, :n_par]
        n_free = int((~fixed[:n_par]).sum())
        dof_w, dof = self.x.shape[0] - n_free, self.n_samples - n_free
        failed = (status & int(Status.FIT_FAILED)) != 0
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.sqrt((chi2 / max(dof, 1)) / (chi2_w / max(dof_w, 1)))
        direct = (dof_w > 0) & (chi2_w > 0) & np.isfinite(factor)
        stderr = se_w * factor[:, None]
        redo = ~direct & ~failed & np.isfinite(params).all(axis=1)
        if redo.any():
            idx = np.flatnonzero(redo)
            free = np.tile(~fixed[:n_par], (idx.size, 1))
            rows_all = np.arange(self.ybar.shape[0])[sel][idx]
            stderr[idx] = self.stderr(mdl_base(mdl), params[idx], free, chi2[idx], rows=rows_all)
        stderr[~direct & ~redo] = np.where(fixed[:n_par], 0.0, np.nan)
        return params, chi2, status, np.asarray(r.n_iter), stderr

    def stderr(self, mdl: Model, params, free, chi2, rows=None) -> np.ndarray:
        """Standard errors (V, P): ``sqrt(diag((J^T W J)^-1) chi2 / (N - P_free))`` over the
        parameters with ``free`` (V, P) bool, J at ``params`` on the distinct sample times, W
        the repeat counts (so J^T W J is the per-repeat J^T J); 0 for the others; NaN where
        the matrix is singular, the parameters not finite or ``N <= P_free``."""
        sel = slice(None) if rows is None else rows
        p = np.asarray(params, dtype=np.float64)
        n_vox, n_par = p.shape
        se = np.where(free, np.nan, 0.0)
        good = np.isfinite(p).all(axis=1) & np.isfinite(chi2)
        if not good.any():
            return se
        pe = np.nan_to_num(p[good])
        if self.offset is not None:
            mdl = slice_timed(mdl)
            pe = np.concatenate([pe, self.offset[sel][good, None]], axis=1)
        _, jac = mdl.evaluate(np, pe, self.x, self.common["consts"])
        jac = jac[..., :n_par] * np.asarray(free[good], dtype=np.float64)[:, None, :]
        a = np.matmul(jac.transpose(0, 2, 1), jac * self.weights[None, :, None])
        # fixed parameters: identity rows/columns, so they do not couple into the inverse
        eye = np.eye(n_par)[None] * (~np.asarray(free[good]))[:, :, None]
        a = a + eye
        det = np.linalg.det(a)
        n_free = np.asarray(free[good]).sum(axis=1)
        dof = self.n_samples - n_free
        ok = np.isfinite(det) & (det > 0) & (dof > 0)
        dinv = np.full((a.shape[0], n_par), np.nan)
        if ok.any():
            dinv[ok] = np.diagonal(np.linalg.inv(a[ok]), axis1=1, axis2=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            s2 = np.where(dof > 0, chi2[good] / np.maximum(dof, 1), np.nan)
            val = np.sqrt(np.where(dinv >= 0, dinv, np.nan) * s2[:, None])
        se_good = np.where(free[good], val, 0.0)
        se[good] = se_good
        return se


def mdl_base(mdl: Model) -> Model:
    """The model without its slice-time offset (:class:`SliceTimed` wraps ``base``)."""
    return getattr(mdl, "base", mdl)


def fit_kinetic(
    model: Any, y: np.ndarray, reporter: Any = None, offset: np.ndarray | None = None
) -> dict[str, Any]:
    """Fit ``y = dM/M0`` (V, K) of valid voxels; returns the per-voxel maps, ``status``
    (:class:`gpuperf.status.Status` flags) and ``_n_iter``.

    ``offset`` (V,), optional: each voxel's slice-time offset (s), added to every sample time
    (2D readouts: ``SliceTiming`` of its slice).
    """
    n_vox, n = y.shape
    if n_vox == 0:
        empty = np.zeros(0, dtype=np.float32)
        res = {
            "cbf": empty,
            "att": empty,
            "cbf_stderr": empty,
            "att_stderr": empty,
            "residual": empty,
            "status": np.zeros(0, STATUS_DTYPE),
            "_n_iter": np.zeros(0),
        }
        if model.arterial:
            res.update(abv=empty, abat=empty, abv_stderr=empty, abat_stderr=empty)
        return res
    if offset is not None:
        offset = np.asarray(offset, dtype=np.float64).reshape(n_vox)
    p0 = initial_params(model, y, offset)
    common = {
        "consts": model.consts(),
        "max_iter": model.max_iter,
        "dtype": model.dtype,
        "device": model.device,
        "memory_budget": model.memory_budget,
        "reporter": reporter,
    }
    data = GroupedFit(model, y, offset, common)
    lower = np.array([model.cbf_bounds[0], model.att_bounds[0]])
    upper = np.array([model.cbf_bounds[1], model.att_bounds[1]])
    params, chi2, status, n_iter, stderr = data.fit(model.kinetics.tissue, p0[:, :2], lower, upper)
    snap_kinks(model, data, params, stderr, chi2, status)
    if model.arterial:
        params, stderr, chi2, status, n_iter = fit_arterial(
            model, data, params, stderr, chi2, status, n_iter
        )
    res = {
        "cbf": params[:, 0],
        "att": params[:, 1],
        "cbf_stderr": stderr[:, 0],
        "att_stderr": stderr[:, 1],
        "residual": np.sqrt(chi2 / n).astype(np.float32),
        "status": status,
        "_n_iter": n_iter,
    }
    if model.arterial:
        res.update(
            abv=params[:, 2],
            abat=params[:, 3],
            abv_stderr=stderr[:, 2],
            abat_stderr=stderr[:, 3],
        )
    return res
