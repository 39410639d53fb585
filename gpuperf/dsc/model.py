"""DSC-MRI model and fit in the DIPY idiom: ``DSCModel(...).fit(signal, aif=..., mask=...)``.

Quantities (Ostergaard et al., MRM 36:715 and 36:726, 1996; Rempp et al., Radiology 193:637,
1994), with ``r = (rho/kH) F R(t)`` the deconvolved residue in 1/s:

====== ================================================= ============
CBF    ``6000 * (kH/rho) * max_t r(t)``                   ml/100g/min
CBV    ``100 * (kH/rho) * int C_t / int C_a``              ml/100g
MTT    ``60 * CBV / CBF`` (central volume theorem)         s
Tmax   time of ``max_t r(t)``                              s
TTP    time of the peak of the tissue curve                s
====== ================================================= ============

kH = (1 - 0.45)/(1 - 0.25) = 0.733 and rho = 1.04 g/ml by default; both are applied to CBF
*and* CBV (so MTT does not depend on them); ``kh=1, rho=1`` gives the relative maps of the
OSIPI convention. Times are measured from the first frame.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuperf.backend import Backend, chunk_slices, get_backend
from gpuperf.dsc import deconvolution as dec
from gpuperf.dsc import osvd as osvd_mod
from gpuperf.dsc import status as st
from gpuperf.dsc.aif import AUC_PERCENTILE, N_CLUSTERS, ROUGHNESS_PERCENTILE, auto_aif
from gpuperf.dsc.leakage import bsw_correct
from gpuperf.dsc.signal import baseline_frames, check_te_tr, signal_to_dr2s
from gpuperf.errors import GpuperfError, InputError

METHODS = ("osvd", "csvd", "ssvd", "tikhonov")
LEAKAGE = ("none", "bsw")
KH_DEFAULT = 0.733
RHO_DEFAULT = 1.04
#: Automatic brain mask: mean signal above this fraction of its 98th percentile.
BRAIN_MASK_FRACTION = 0.2


def trapz(y: Any, dt_s: float, xp: Any = np) -> Any:
    """Trapezoidal integral along the last axis with spacing ``dt_s``."""
    return (y.sum(axis=-1) - 0.5 * (y[..., 0] + y[..., -1])) * dt_s


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
class DSCFit:
    """Maps of a DSC fit (3D arrays, NaN outside the mask, or (V,) for a (V, T) input).

    Attributes
    ----------
    cbf : ml/100g/min.   cbv : ml/100g.   mtt, tmax, ttp : s.
    k2 : 1/s (BSW leakage) or None.   rcbv : CBV / mean CBV in the reference mask, or None.
    threshold : the relative SVD threshold used per voxel (mu / s_max for Tikhonov).
    oi : oscillation index of the chosen oSVD residue (NaN for other methods).
    status : int32 flags (:mod:`gpuperf.dsc.status`).
    aif : (T,) AIF (dR2*, 1/s).   aif_voxels : flat indices (into the input grid) averaged.
    n_baseline : pre-bolus frames used for S0.   residue : (V, N) when asked for.
    """

    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    tmax: np.ndarray
    ttp: np.ndarray
    threshold: np.ndarray
    oi: np.ndarray
    status: np.ndarray
    aif: np.ndarray
    k2: np.ndarray | None = None
    rcbv: np.ndarray | None = None
    aif_voxels: np.ndarray | None = None
    n_baseline: int | None = None
    residue: np.ndarray | None = None
    mask: np.ndarray | None = None
    info: dict = field(default_factory=dict)


class DSCModel:
    """What a DSC fit needs that does not depend on the data.

    Parameters
    ----------
    te_s, tr_s : float
        Echo time and frame interval in seconds (a TE > 1 is refused as milliseconds).
    method : {'osvd', 'csvd', 'ssvd', 'tikhonov'}
    threshold : float, optional
        Relative SVD threshold for sSVD (default 0.2) or cSVD (0.1).
    osvd_thresholds : sequence of float
        oSVD sweep (default 0.05 .. 0.95 step 0.05).
    oi_limit : float
        oSVD oscillation-index limit (0.035).
    mu : float, optional
        Tikhonov mu relative to s_max; None chooses it per voxel by GCV.
    leakage : {'none', 'bsw'}
    kh, rho : float
        Haematocrit factor (0.733) and brain density (1.04 g/ml).
    baseline : int, optional
        Pre-bolus frames; None detects the bolus arrival.
    device : {'auto', 'cpu', 'gpu'}
    dtype : float32 (default) or float64.
    memory_budget : int, optional
        Bytes per chunk of voxels.
    aif_auc_percentile, aif_roughness_percentile, aif_clusters :
        Automatic-AIF options (:func:`gpuperf.dsc.aif.auto_aif`).
    """

    def __init__(
        self,
        te_s: float,
        tr_s: float,
        method: str = "osvd",
        *,
        threshold: float | None = None,
        osvd_thresholds: Any = osvd_mod.DEFAULT_THRESHOLDS,
        oi_limit: float = osvd_mod.DEFAULT_OI_LIMIT,
        mu: float | None = None,
        leakage: str = "none",
        kh: float = KH_DEFAULT,
        rho: float = RHO_DEFAULT,
        baseline: int | None = None,
        device: str = "auto",
        dtype: Any = np.float32,
        memory_budget: int | None = None,
        aif_auc_percentile: float = AUC_PERCENTILE,
        aif_roughness_percentile: float = ROUGHNESS_PERCENTILE,
        aif_clusters: int = N_CLUSTERS,
    ) -> None:
        self.te_s, self.tr_s = check_te_tr(te_s, tr_s)
        if method not in METHODS:
            raise InputError(None, "method", f"expected one of {METHODS}; got {method!r}")
        if leakage not in LEAKAGE:
            raise InputError(None, "leakage", f"expected one of {LEAKAGE}; got {leakage!r}")
        if not (kh > 0 and rho > 0):
            raise InputError(None, "kh/rho", f"must be positive; got kh={kh}, rho={rho}")
        if baseline is not None and baseline < 1:
            raise InputError(None, "baseline", f"needs at least 1 frame; got {baseline}")
        self.method = method
        default_thr = {"ssvd": dec.SSVD_THRESHOLD, "csvd": dec.CSVD_THRESHOLD}.get(method)
        self.threshold = default_thr if threshold is None else float(threshold)
        self.osvd_thresholds = tuple(float(x) for x in osvd_thresholds)
        self.oi_limit = float(oi_limit)
        self.mu = mu
        self.leakage = leakage
        self.kh, self.rho = float(kh), float(rho)
        self.baseline = baseline
        self.device = device
        self.dtype = np.dtype(dtype)
        self.memory_budget = memory_budget
        self.aif_options = {
            "auc_percentile": aif_auc_percentile,
            "roughness_percentile": aif_roughness_percentile,
            "n_clusters": aif_clusters,
        }

    def parameters(self) -> dict[str, Any]:
        """The options, for sidecars."""
        return {
            "EchoTime": self.te_s,
            "RepetitionTime": self.tr_s,
            "Method": self.method,
            "Threshold": self.threshold,
            "OSVDThresholds": list(self.osvd_thresholds),
            "OILimit": self.oi_limit,
            "TikhonovMu": self.mu,
            "Leakage": self.leakage,
            "kH": self.kh,
            "rho": self.rho,
            "Baseline": self.baseline,
            "dtype": self.dtype.name,
            **{f"AIF_{k}": v for k, v in self.aif_options.items()},
        }

    def fit_key(self) -> tuple:
        """Models with equal keys can compute their subjects in one call (:meth:`fit_batch`):
        everything the per-voxel work depends on (the AIF, the baseline and the TE are applied
        per subject before it)."""
        return (
            "dsc",
            self.tr_s,
            self.method,
            self.threshold,
            self.osvd_thresholds,
            self.oi_limit,
            self.mu,
            self.leakage,
            self.kh,
            self.rho,
            self.device,
            self.dtype.str,
            self.memory_budget,
        )

    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        signal: np.ndarray,
        aif: Any = "auto",
        mask: np.ndarray | None = None,
        ref_mask: np.ndarray | None = None,
        return_residue: bool = False,
        gamma_fit_aif: bool = False,
    ) -> DSCFit:
        """Fit raw DSC signal.

        Parameters
        ----------
        signal : ndarray (V, T) or (X, Y, Z, T)
            Magnitude signal (arbitrary units).
        aif : 'auto', ndarray (T,) or bool mask
            'auto' selects arterial voxels inside ``mask``; a 1D float array of length T is an
            AIF dR2* curve (1/s); a bool array of the spatial shape (or (V,)) is an AIF mask.
        mask : bool ndarray, optional
            Brain mask (spatial shape). Default: automatic for 4D input, every voxel for 2D.
        ref_mask : bool ndarray, optional
            Reference region (e.g. normal-appearing white matter) for rCBV.
        return_residue : bool
            Keep the (V, N) residues (memory: 4 V N bytes).
        gamma_fit_aif : bool
            Replace the AIF by its gamma-variate fit (recirculation removed).
        """
        return self.fit_batch(
            [self.prepare(signal, aif, mask, ref_mask, gamma_fit_aif)], return_residue
        )[0]

    def prepare(
        self,
        signal: np.ndarray,
        aif: Any = "auto",
        mask: np.ndarray | None = None,
        ref_mask: np.ndarray | None = None,
        gamma_fit_aif: bool = False,
    ) -> PreparedDSC:
        """Everything of :meth:`fit` before the per-voxel deconvolution: mask, dR2* (on the
        backend), bolus arrival, AIF. Parameters as for :meth:`fit`; raises its input errors."""
        t_start = time.perf_counter()
        signal = np.asarray(signal)
        if signal.ndim not in (2, 4):
            raise InputError(None, "signal", f"expected (V, T) or (X, Y, Z, T); got {signal.shape}")
        n_t = signal.shape[-1]
        if n_t < 4:
            raise InputError(None, "signal", f"need at least 4 frames; got {n_t}")
        spatial = signal.shape[:-1]
        # NIfTI data arrive Fortran-ordered: number the voxels in the array's own order so that
        # flattening is a view, not a copy of the whole series (C-order indices are reported)
        order = "F" if signal.flags.f_contiguous and not signal.flags.c_contiguous else "C"
        flat = signal.reshape(-1, n_t, order=order)
        if mask is None:
            if signal.ndim == 4:
                # the series mean: a bolus lowers a voxel's mean little (a few frames of many)
                mask = auto_brain_mask(flat.mean(axis=1)).reshape(spatial, order=order)
            else:
                mask = np.ones(spatial, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial:
            raise InputError(None, "mask", f"shape {mask.shape} does not match the data {spatial}")
        mflat = mask.reshape(-1, order=order)
        idx = np.flatnonzero(mflat)
        if idx.size == 0:
            raise InputError(None, "mask", "the mask is empty")
        ref_local = None
        if ref_mask is not None:
            ref = np.asarray(ref_mask, bool)
            if ref.shape != spatial:
                raise InputError(None, "ref_mask", f"shape {ref.shape} != the data's {spatial}")
            ref_local = ref.reshape(-1, order=order)[idx]
        block = np.ascontiguousarray(flat[idx], dtype=self.dtype)
        backend = get_backend(self.device)
        xp = backend.xp

        # bolus arrival on the mean of the usable voxels (one arrival for the whole volume)
        good = np.isfinite(block).all(axis=1) & (block > 0).all(axis=1)
        if self.baseline is not None:
            n_base = int(self.baseline)
        else:
            if not good.any():
                raise GpuperfError("no voxel in the mask has a finite, positive signal")
            n_base = baseline_frames(block, good)
        if n_base >= n_t - 2:
            raise InputError(None, "baseline", f"{n_base} baseline frames leave too few of {n_t}")
        dev_block = backend.asarray(block)
        dr2s, flags = signal_to_dr2s(dev_block, self.te_s, n_base, xp)
        flags_h = backend.to_host(flags)
        usable = flags_h == 0

        # AIF
        aif_vox_local = None
        if isinstance(aif, str):
            if aif != "auto":
                raise InputError(None, "aif", f"expected 'auto', a curve or a mask; got {aif!r}")
            dr2s_h = backend.to_host(dr2s)
            sel = auto_aif(dr2s_h, self.tr_s, usable, **self.aif_options)
            aif_curve, aif_vox_local = sel.curve, sel.voxels
        else:
            a = np.asarray(aif)
            if a.dtype == bool:
                am = a.reshape(-1, order=order if a.shape == spatial else "C")
                if am.size == flat.shape[0]:
                    am = am[idx]
                elif am.size != idx.size:
                    raise InputError(None, "aif", f"AIF mask has {a.shape}, the data {spatial}")
                aif_vox_local = np.flatnonzero(am & usable)
                if aif_vox_local.size == 0:
                    raise InputError(None, "aif", "no usable AIF-mask voxel inside the mask")
                aif_curve = backend.to_host(dr2s[xp.asarray(aif_vox_local)].mean(axis=0))
            else:
                aif_curve = a.astype(np.float64).reshape(-1)
                if aif_curve.size != n_t:
                    raise InputError(None, "aif", f"AIF has {aif_curve.size} samples, data {n_t}")
        aif_info: dict[str, Any] = {}
        if gamma_fit_aif:
            from gpuperf.dsc.aif import fit_gamma_aif

            aif_curve, aif_info = fit_gamma_aif(aif_curve, self.tr_s)
        aif_curve = np.asarray(aif_curve, np.float64)
        _check_aif(aif_curve, n_t, self.tr_s)
        return PreparedDSC(
            backend=backend,
            dr2s=dr2s,
            flags=flags,
            aif=aif_curve,
            aif_voxels=aif_vox_local,
            n_baseline=n_base,
            spatial=spatial,
            order=order,
            idx=idx,
            n_grid=flat.shape[0],
            mask=mask,
            ref=ref_local,
            usable=usable,
            aif_info=aif_info,
            t_start=t_start,
        )

    def fit_batch(
        self, prepared: Sequence[PreparedDSC], return_residue: bool = False
    ) -> list[DSCFit]:
        """Deconvolve several prepared subjects (each with its own AIF) in one call.

        All must have been prepared by models with this model's :meth:`fit_key` and have the
        same number of frames. oSVD runs the threshold selection of every subject's voxels as
        ONE kernel launch (a plan per AIF, :func:`gpuperf.dsc.osvd.select_cupy`); everything
        else is per subject and per chunk exactly as for a subject alone, so each subject's
        maps are bit-identical to :meth:`fit` of it alone.

        Returns
        -------
        list of DSCFit, one per prepared subject, in order.
        """
        if not prepared:
            return []
        if len({p.dr2s.shape[1] for p in prepared}) > 1:
            raise GpuperfError("fit_batch: subjects with different frame counts")
        fits = self._fit_dr2s_many(
            prepared[0].backend,
            [(p.dr2s, p.flags, p.aif, p.aif_voxels) for p in prepared],
            return_residue,
        )
        return [self._finish(p, f) for p, f in zip(prepared, fits, strict=True)]

    def _finish(self, p: PreparedDSC, fit: DSCFit) -> DSCFit:
        """Reference-region rCBV and the maps back onto the input grid."""
        spatial, order, idx = p.spatial, p.order, p.idx
        fit.n_baseline = p.n_baseline
        fit.info.update(p.aif_info)
        if p.ref is not None:
            fit.rcbv = self._rcbv(fit.cbv, p.ref, p.usable)
        for name in ("cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "k2", "rcbv"):
            vals = getattr(fit, name)
            if vals is not None:
                out = np.full(p.n_grid, np.nan, dtype=np.float32)
                out[idx] = vals
                setattr(fit, name, out.reshape(spatial, order=order))
        stat = np.zeros(p.n_grid, dtype=np.int32)
        stat[idx] = fit.status
        fit.status = stat.reshape(spatial, order=order)
        if p.aif_voxels is not None:  # flat C-order indices into the input grid
            fit.aif_voxels = np.sort(
                np.ravel_multi_index(
                    np.unravel_index(idx[p.aif_voxels], spatial, order=order), spatial
                )
            )
        fit.mask = p.mask
        fit.info["elapsed_s"] = time.perf_counter() - p.t_start
        fit.info["backend"] = p.backend.name
        fit.info["device"] = p.backend.device_name
        return fit

    def fit_concentration(
        self,
        conc: np.ndarray,
        aif: np.ndarray,
        return_residue: bool = False,
    ) -> DSCFit:
        """Fit concentration (or dR2*) curves directly: no signal conversion, no AIF search.

        Parameters
        ----------
        conc : ndarray (V, T)
        aif : ndarray (T,), same units as ``conc``.

        Returns
        -------
        DSCFit with (V,) maps.
        """
        backend = get_backend(self.device)
        c = backend.asarray(np.ascontiguousarray(conc, dtype=self.dtype))
        flags = backend.xp.zeros(c.shape[0], dtype=backend.xp.int32)
        bad = ~backend.xp.isfinite(c).all(axis=1)
        flags[bad] = st.NONFINITE_SIGNAL
        c[bad] = 0
        return self._fit_dr2s(
            backend, c, flags, np.asarray(aif, np.float64).reshape(-1), None, return_residue
        )

    # ------------------------------------------------------------------------------------------
    def _fit_dr2s(
        self,
        backend: Backend,
        dr2s: Any,
        flags: Any,
        aif: np.ndarray,
        aif_voxels: np.ndarray | None,
        return_residue: bool,
    ) -> DSCFit:
        return self._fit_dr2s_many(backend, [(dr2s, flags, aif, aif_voxels)], return_residue)[0]

    def _fit_dr2s_many(
        self, backend: Backend, items: Sequence[tuple], return_residue: bool
    ) -> list[DSCFit]:
        """Deconvolve subjects ``(dr2s (V, N), flags (V,), aif (N,), aif_voxels)``.

        Each subject is chunked as if alone; the oSVD chunks' coefficients are queued and their
        selection runs as one kernel launch for all queued chunks (:class:`_OSVDQueue`).
        """
        subjects = [self._start(backend, *it, return_residue) for it in items]
        if self.method == "osvd":
            total = sum(sub.v for sub in subjects)
            bytes_per_voxel = 4 * subjects[0].n * self.dtype.itemsize * 8
            # a launch holds at most what one chunk of the whole batch would hold
            launch_voxels = chunk_slices(
                total, bytes_per_voxel, self.memory_budget, backend, min_voxels=256
            )[0]
            queue = _OSVDQueue(backend, self.oi_limit, launch_voxels.stop - launch_voxels.start)
            for sub in subjects:
                for sl in sub.chunks:
                    queue.add(sub, sl, osvd_mod.coefficients(sub.dr2s[sl], sub.plan, backend.xp))
            queue.flush()
        else:
            for sub in subjects:
                self._deconvolve(backend, sub)
        return [self._end(backend, sub) for sub in subjects]

    def _start(
        self,
        backend: Backend,
        dr2s: Any,
        flags: Any,
        aif: np.ndarray,
        aif_voxels: np.ndarray | None,
        return_residue: bool,
    ) -> _Subject:
        """Per subject, before the deconvolution: leakage, CBV, TTP, the AIF's operator."""
        xp = backend.xp
        dt = self.tr_s
        v, n = dr2s.shape
        _check_aif(aif, n, dt)
        usable = backend.to_host(flags) == 0
        k2 = None
        if self.leakage == "bsw":
            cand = usable.copy()
            if aif_voxels is not None:
                cand[aif_voxels] = False
            dr2s, bsw = bsw_correct(dr2s, dt, cand, xp, backend.to_host)
            k2 = backend.to_host(bsw.k2).astype(np.float32)
        sub = _Subject(dr2s=dr2s, flags=flags, aif=aif, aif_voxels=aif_voxels, v=v, n=n, k2=k2)
        sub.cbv = 100.0 * (self.kh / self.rho) * trapz(dr2s, dt, xp) / trapz(aif, dt)
        sub.ttp = xp.argmax(dr2s, axis=1).astype(self.dtype) * dt
        sub.rmax = xp.empty(v, dtype=self.dtype)
        sub.tmax_i = xp.empty(v, dtype=xp.int32)
        sub.thr = xp.full(v, np.nan if self.threshold is None else self.threshold, dtype=self.dtype)
        sub.oi = xp.full(v, np.nan, dtype=self.dtype)
        sub.residue = xp.empty((v, n), dtype=self.dtype) if return_residue else None
        bytes_per_voxel = 4 * n * self.dtype.itemsize * (8 if self.method == "osvd" else 6)
        if self.method == "osvd":
            sub.plan = osvd_mod.make_plan(aif, dt, self.osvd_thresholds)
        elif self.method == "ssvd":
            sub.op = xp.asarray(
                dec.truncated_pinv(dec.toeplitz_matrix(aif, dt), self.threshold).T, dtype=self.dtype
            )
        elif self.method == "csvd":
            sub.op = xp.asarray(dec.csvd_operator(aif, dt, self.threshold), dtype=self.dtype)
        # >= 256 voxels a chunk: results are then bitwise independent of the chunk size
        sub.chunks = chunk_slices(v, bytes_per_voxel, self.memory_budget, backend, min_voxels=256)
        return sub

    def _deconvolve(self, backend: Backend, sub: _Subject) -> None:
        """sSVD, cSVD, Tikhonov: one operator (or GCV) per subject, chunk by chunk."""
        xp = backend.xp
        for sl in sub.chunks:
            c = sub.dr2s[sl]
            if self.method == "tikhonov":
                r, mu_rel = dec.tikhonov(c, sub.aif, self.tr_s, self.mu, xp)
                sub.thr[sl] = mu_rel
            else:
                r = c @ sub.op
            sub.tmax_i[sl] = xp.argmax(r, axis=1).astype(xp.int32)
            sub.rmax[sl] = r.max(axis=1)
            if sub.residue is not None:
                sub.residue[sl] = r

    def _end(self, backend: Backend, sub: _Subject) -> DSCFit:
        """Per subject, after the deconvolution: CBF, MTT, Tmax, status, host maps."""
        xp = backend.xp
        dt = self.tr_s
        rmax, flags, cbv = sub.rmax, sub.flags, sub.cbv
        cbf = 6000.0 * (self.kh / self.rho) * rmax
        flags |= xp.where(rmax > 0, 0, st.NONPOSITIVE_FLOW).astype(xp.int32)
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt = xp.where(rmax > 0, 60.0 * cbv / xp.where(rmax > 0, cbf, 1), np.nan)
        tmax = sub.tmax_i.astype(self.dtype) * dt
        h = backend.to_host
        status = h(flags).astype(np.int32)
        bad = (status & st.INPUT_FLAGS) != 0

        def out(a: Any) -> np.ndarray:
            arr = h(a).astype(np.float32)
            arr[bad] = np.nan
            return arr

        k2 = sub.k2
        return DSCFit(
            cbf=out(cbf),
            cbv=out(cbv),
            mtt=out(mtt),
            tmax=out(tmax),
            ttp=out(sub.ttp),
            threshold=out(sub.thr),
            oi=out(sub.oi),
            status=status,
            aif=sub.aif,
            k2=None if k2 is None else np.where(bad, np.nan, k2).astype(np.float32),
            aif_voxels=sub.aif_voxels,
            residue=None if sub.residue is None else h(sub.residue),
            info={"osvd_sets": None if sub.plan is None else sub.plan.set_threshold.tolist()},
        )

    @staticmethod
    def _rcbv(cbv: np.ndarray, ref: np.ndarray, usable: np.ndarray) -> np.ndarray:
        sel = ref & usable & np.isfinite(cbv)
        if not sel.any():
            raise InputError(None, "ref_mask", "no usable voxel of the reference mask in the mask")
        mean = float(np.mean(cbv[sel]))
        if mean <= 0:
            raise GpuperfError(f"mean CBV in the reference mask is {mean:.4g}: rCBV undefined")
        return (cbv / mean).astype(np.float32)


def _check_aif(aif: np.ndarray, n: int, dt_s: float) -> None:
    if aif.size != n:
        raise InputError(None, "aif", f"AIF has {aif.size} samples, the data {n}")
    if not np.all(np.isfinite(aif)) or trapz(aif, dt_s) <= 0:
        raise GpuperfError("the AIF is not finite or has no positive area under the curve")


@dataclass
class PreparedDSC:
    """One subject ready for :meth:`DSCModel.fit_batch` (from :meth:`DSCModel.prepare`).

    Attributes
    ----------
    backend : Backend
    dr2s : backend array (V, N)
        dR2* (1/s) of the voxels in the mask.
    flags : backend int32 array (V,)
        Input status flags (:mod:`gpuperf.dsc.status`).
    aif : ndarray (N,)
        AIF dR2* (1/s), float64.
    aif_voxels : ndarray or None
        Indices into the V voxels averaged into the AIF.
    n_baseline : int
    spatial, order, idx, n_grid : the input grid, its flattening order, the mask's flat
        indices in that order, the number of grid points.
    mask : ndarray of bool (spatial)
    ref : ndarray of bool (V,) or None
        Reference region for rCBV.
    usable : ndarray of bool (V,)
    aif_info : dict
        Gamma-variate fit of the AIF, when asked for.
    t_start : float
        perf_counter() at the start of :meth:`DSCModel.prepare`.
    """

    backend: Any
    dr2s: Any
    flags: Any
    aif: np.ndarray
    aif_voxels: np.ndarray | None
    n_baseline: int
    spatial: tuple
    order: str
    idx: np.ndarray
    n_grid: int
    mask: np.ndarray
    ref: np.ndarray | None
    usable: np.ndarray
    aif_info: dict
    t_start: float

    @property
    def n_voxels(self) -> int:
        return int(self.idx.size)

    @property
    def n_frames(self) -> int:
        return int(self.dr2s.shape[1])


@dataclass
class _Subject:
    """Working state of one subject inside :meth:`DSCModel._fit_dr2s_many`."""

    dr2s: Any
    flags: Any
    aif: np.ndarray
    aif_voxels: np.ndarray | None
    v: int
    n: int
    k2: np.ndarray | None = None
    cbv: Any = None
    ttp: Any = None
    rmax: Any = None
    tmax_i: Any = None
    thr: Any = None
    oi: Any = None
    residue: Any = None
    plan: osvd_mod.OSVDPlan | None = None
    op: Any = None
    chunks: list = field(default_factory=list)


class _OSVDQueue:
    """oSVD chunks waiting for their threshold selection (possibly of several subjects).

    On a GPU the queued chunks' coefficients are padded to a common width and selected by ONE
    ``osvd_select`` launch with a plan index per voxel; the kernel is one thread per voxel, so
    each voxel's outputs do not depend on what else is in the launch. On NumPy each chunk is
    selected by :func:`gpuperf.dsc.osvd.select_numpy` as it would be alone (its BLAS blocks
    make a voxel's bits depend on its neighbours, so chunks are not merged there), unless
    :attr:`host_kernel` is set: then NumPy arrays go through the GPU path with the kernel
    source built as host C++ (:func:`gpuperf.dsc.osvd.select_host`; tests without a GPU).
    """

    #: Test hook: on NumPy, merge chunks and run the kernel source on the host.
    host_kernel = False

    def __init__(self, backend: Backend, oi_limit: float, launch_voxels: int) -> None:
        self.backend = backend
        self.oi_limit = oi_limit
        self.launch_voxels = max(1, int(launch_voxels))
        self.pending: list[tuple[_Subject, slice, Any]] = []
        self.n_pending = 0

    def add(self, sub: _Subject, sl: slice, coef: Any) -> None:
        if self.backend.xp is np and not self.host_kernel:
            self._store(sub, sl, coef, osvd_mod.select_numpy(coef, sub.plan, self.oi_limit))
            return
        self.pending.append((sub, sl, coef))
        self.n_pending += coef.shape[0]
        if self.n_pending >= self.launch_voxels:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        xp = self.backend.xp
        pending, self.pending, self.n_pending = self.pending, [], 0
        subs = list(dict.fromkeys(id(p[0]) for p in pending))
        plans = {id(p[0]): p[0].plan for p in pending}
        plan_list = [plans[k] for k in subs]
        if len(pending) == 1:
            coef, index = pending[0][2], None
        else:
            m_max = max(c.shape[1] for _, _, c in pending)
            total = sum(c.shape[0] for _, _, c in pending)
            coef = xp.zeros((total, m_max), dtype=pending[0][2].dtype)
            index = np.empty(total, dtype=np.int32)
            at = 0
            for sub, _, c in pending:
                coef[at : at + c.shape[0], : c.shape[1]] = c
                index[at : at + c.shape[0]] = subs.index(id(sub))
                at += c.shape[0]
        select = osvd_mod.select_host if xp is np else osvd_mod.select_cupy
        res = select(
            coef,
            plan_list if index is not None else plan_list[0],
            self.oi_limit,
            plan_index=index,
        )
        at = 0
        for sub, sl, c in pending:
            part = slice(at, at + c.shape[0])
            at = part.stop
            self._store(
                sub,
                sl,
                c,
                osvd_mod.OSVDResult(*(getattr(res, f)[part] for f in _RESULT_FIELDS)),
            )

    def _store(self, sub: _Subject, sl: slice, coef: Any, res: osvd_mod.OSVDResult) -> None:
        xp = self.backend.xp
        sub.rmax[sl] = res.rmax
        sub.tmax_i[sl] = res.tmax_index
        sub.thr[sl] = xp.asarray(sub.plan.set_threshold, dtype=sub.thr.dtype)[res.set_index]
        sub.oi[sl] = res.oi
        sub.flags[sl] |= xp.where(res.passed, 0, st.OSVD_NO_PASS).astype(xp.int32)
        if sub.residue is not None:
            sub.residue[sl] = osvd_mod.residue(coef, sub.plan, res.set_index, xp)


_RESULT_FIELDS = ("rmax", "tmax_index", "set_index", "oi", "passed")
