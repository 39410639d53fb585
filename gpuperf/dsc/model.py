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
        fit = self._fit_dr2s(
            backend, dr2s, flags, np.asarray(aif_curve, np.float64), aif_vox_local, return_residue
        )
        fit.n_baseline = n_base
        fit.info.update(aif_info)
        if ref_mask is not None:
            ref = np.asarray(ref_mask, bool)
            if ref.shape != spatial:
                raise InputError(None, "ref_mask", f"shape {ref.shape} != the data's {spatial}")
            fit.rcbv = self._rcbv(fit.cbv, ref.reshape(-1, order=order)[idx], usable)
        # back onto the input grid
        for name in ("cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "k2", "rcbv"):
            vals = getattr(fit, name)
            if vals is not None:
                out = np.full(flat.shape[0], np.nan, dtype=np.float32)
                out[idx] = vals
                setattr(fit, name, out.reshape(spatial, order=order))
        stat = np.zeros(flat.shape[0], dtype=np.int32)
        stat[idx] = fit.status
        fit.status = stat.reshape(spatial, order=order)
        if aif_vox_local is not None:  # flat C-order indices into the input grid
            fit.aif_voxels = np.sort(
                np.ravel_multi_index(
                    np.unravel_index(idx[aif_vox_local], spatial, order=order), spatial
                )
            )
        fit.mask = mask
        fit.info["elapsed_s"] = time.perf_counter() - t_start
        fit.info["backend"] = backend.name
        fit.info["device"] = backend.device_name
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
        xp = backend.xp
        dt = self.tr_s
        v, n = dr2s.shape
        if aif.size != n:
            raise InputError(None, "aif", f"AIF has {aif.size} samples, the data {n}")
        if not np.all(np.isfinite(aif)) or trapz(aif, dt) <= 0:
            raise GpuperfError("the AIF is not finite or has no positive area under the curve")
        usable = backend.to_host(flags) == 0
        k2 = None
        if self.leakage == "bsw":
            cand = usable.copy()
            if aif_voxels is not None:
                cand[aif_voxels] = False
            dr2s, bsw = bsw_correct(dr2s, dt, cand, xp, backend.to_host)
            k2 = backend.to_host(bsw.k2).astype(np.float32)
        scale = self.kh / self.rho
        cbv = 100.0 * scale * trapz(dr2s, dt, xp) / trapz(aif, dt)
        ttp = xp.argmax(dr2s, axis=1).astype(self.dtype) * dt

        rmax = xp.empty(v, dtype=self.dtype)
        tmax_i = xp.empty(v, dtype=xp.int32)
        thr = xp.full(v, np.nan if self.threshold is None else self.threshold, dtype=self.dtype)
        oi = xp.full(v, np.nan, dtype=self.dtype)
        residue = xp.empty((v, n), dtype=self.dtype) if return_residue else None
        bytes_per_voxel = 4 * n * self.dtype.itemsize * (8 if self.method == "osvd" else 6)
        plan = None
        op = None
        if self.method == "osvd":
            plan = osvd_mod.make_plan(aif, dt, self.osvd_thresholds)
        elif self.method == "ssvd":
            op = xp.asarray(
                dec.truncated_pinv(dec.toeplitz_matrix(aif, dt), self.threshold).T, dtype=self.dtype
            )
        elif self.method == "csvd":
            op = xp.asarray(dec.csvd_operator(aif, dt, self.threshold), dtype=self.dtype)
        # >= 256 voxels a chunk: results are then bitwise independent of the chunk size
        for sl in chunk_slices(v, bytes_per_voxel, self.memory_budget, backend, min_voxels=256):
            c = dr2s[sl]
            if self.method == "osvd":
                res, plan, coef = osvd_mod.osvd(
                    c, aif, dt, xp=xp, plan=plan, oi_limit=self.oi_limit
                )
                rmax[sl] = res.rmax
                tmax_i[sl] = res.tmax_index
                thr[sl] = xp.asarray(plan.set_threshold, dtype=self.dtype)[res.set_index]
                oi[sl] = res.oi
                flags[sl] |= xp.where(res.passed, 0, st.OSVD_NO_PASS).astype(xp.int32)
                if residue is not None:
                    residue[sl] = osvd_mod.residue(coef, plan, res.set_index, xp)
                continue
            if self.method == "tikhonov":
                r, mu_rel = dec.tikhonov(c, aif, dt, self.mu, xp)
                thr[sl] = mu_rel
            else:
                r = c @ op
            tmax_i[sl] = xp.argmax(r, axis=1).astype(xp.int32)
            rmax[sl] = r.max(axis=1)
            if residue is not None:
                residue[sl] = r
        cbf = 6000.0 * scale * rmax
        flags |= xp.where(rmax > 0, 0, st.NONPOSITIVE_FLOW).astype(xp.int32)
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt = xp.where(rmax > 0, 60.0 * cbv / xp.where(rmax > 0, cbf, 1), np.nan)
        tmax = tmax_i.astype(self.dtype) * dt
        h = backend.to_host
        status = h(flags).astype(np.int32)
        bad = (status & st.INPUT_FLAGS) != 0

        def out(a: Any) -> np.ndarray:
            arr = h(a).astype(np.float32)
            arr[bad] = np.nan
            return arr

        return DSCFit(
            cbf=out(cbf),
            cbv=out(cbv),
            mtt=out(mtt),
            tmax=out(tmax),
            ttp=out(ttp),
            threshold=out(thr),
            oi=out(oi),
            status=status,
            aif=aif,
            k2=None if k2 is None else np.where(bad, np.nan, k2).astype(np.float32),
            aif_voxels=aif_voxels,
            residue=None if residue is None else h(residue),
            info={"osvd_sets": None if plan is None else plan.set_threshold.tolist()},
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
