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

The options live in :class:`gpuperf.dsc.options.DSCOptions`; the deconvolution methods in the
registry :mod:`gpuperf.dsc.methods`, the leakage corrections in :mod:`gpuperf.dsc.leakage`, the
voxel grid (mask, gather, scatter) in :mod:`gpuperf.dsc.masking`. This module is the order of
the steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuperf.backend import Backend, chunk_slices, get_backend
from gpuperf.dsc.aif import auto_aif
from gpuperf.dsc.masking import BRAIN_MASK_FRACTION, VoxelGrid, auto_brain_mask
from gpuperf.dsc.methods import MIN_CHUNK_VOXELS, Subject
from gpuperf.dsc.options import KH_DEFAULT, RHO_DEFAULT, DSCOptions, resolve_options
from gpuperf.dsc.signal import baseline_frames, check_te_tr, signal_to_dr2s
from gpuperf.errors import GpuperfError, InputError
from gpuperf.status import INPUT_FLAGS, Status

__all__ = [
    "BRAIN_MASK_FRACTION",
    "KH_DEFAULT",
    "RHO_DEFAULT",
    "DSCFit",
    "DSCModel",
    "PreparedDSC",
    "auto_brain_mask",
    "trapz",
]

#: Compatibility names: the registry (:mod:`gpuperf.dsc.methods`) is the source.
_Subject = Subject


#: Option names readable as model attributes (``model.kh``).
_OPTION_NAMES = frozenset(DSCOptions.parameter_names())

#: Flags of every DSC status map (a method adds its own, e.g. oSVD's OSVD_NO_PASS).
_STATUS_FLAGS = (
    Status.NONPOSITIVE_INPUT,
    Status.NONFINITE_INPUT,
    Status.NO_BASELINE,
    Status.OUTSIDE_MASK,
)


def trapz(y: Any, dt_s: float, xp: Any = np) -> Any:
    """Trapezoidal integral along the last axis with spacing ``dt_s``."""
    return (y.sum(axis=-1) - 0.5 * (y[..., 0] + y[..., -1])) * dt_s


@dataclass
class DSCFit:
    """Maps of a DSC fit (3D arrays, NaN outside the mask, or (V,) for a (V, T) input).

    Attributes
    ----------
    cbf : ml/100g/min.   cbv : ml/100g.   mtt, tmax, ttp : s.
    k2 : 1/s (leakage) or None.   kep : efflux rate, 1/s (bidirectional leakage) or None.
    rcbf, rcbv, rmtt : CBF, CBV, MTT over their means in the reference mask, or None.
    threshold : the relative SVD threshold used per voxel (mu / s_max for Tikhonov).
    oi : oscillation index of the chosen oSVD residue (NaN for other methods).
    status : int32 :class:`gpuperf.status.Status` flags (``OUTSIDE_MASK`` outside the mask).
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
    kep: np.ndarray | None = None
    rcbf: np.ndarray | None = None
    rcbv: np.ndarray | None = None
    rmtt: np.ndarray | None = None
    aif_voxels: np.ndarray | None = None
    n_baseline: int | None = None
    residue: np.ndarray | None = None
    mask: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    #: Extra maps of the method (e.g. parametric: cth, delay, stderr, chi2), as the maps above.
    maps: dict = field(default_factory=dict)


class DSCModel:
    """What a DSC fit needs that does not depend on the data.

    ``DSCModel(te_s, tr_s, method, **options)`` and ``DSCModel(options=DSCOptions(...))`` are
    the same model (keywords given with ``options`` override it).

    Parameters
    ----------
    te_s, tr_s : float
        Echo time and frame interval in seconds (a TE > 1 is refused as milliseconds).
    method : str
        A registered deconvolution method (:func:`gpuperf.dsc.methods.names`: osvd, csvd,
        ssvd, tikhonov).
    options : DSCOptions, optional
        Every method option (:class:`gpuperf.dsc.options.DSCOptions`); ``te_s``/``tr_s`` must
        be set there or given here.
    device : {'auto', 'cpu', 'gpu'}
    dtype : float32 (default) or float64.
    memory_budget : int, optional
        Bytes per chunk of voxels.
    **option_values
        Any field of :class:`DSCOptions` (threshold, osvd_thresholds, oi_limit, mu, leakage,
        leakage_tail_s, discretisation, kh, rho, baseline, skip, slice_timing, gamma_fit_aif,
        aif_auc_percentile, aif_roughness_percentile, aif_clusters).
    """

    def __init__(
        self,
        te_s: float | None = None,
        tr_s: float | None = None,
        method: str | None = None,
        *,
        options: DSCOptions | None = None,
        device: str = "auto",
        dtype: Any = np.float32,
        memory_budget: int | None = None,
        **option_values: Any,
    ) -> None:
        given = {"te_s": te_s, "tr_s": tr_s, "method": method}
        values = {**{k: v for k, v in given.items() if v is not None}, **option_values}
        opts = resolve_options(options, values, "DSCModel")
        te, tr = check_te_tr(opts.te_s, opts.tr_s)
        if not _same_floats((opts.te_s, opts.tr_s), (te, tr)):
            opts = opts.replace(te_s=te, tr_s=tr)
        #: The options (validated; te_s and tr_s set).
        self.options: DSCOptions = opts
        self.deconvolution = self.options.deconvolution
        self.leakage_correction = self.options.leakage_correction
        self.device = device
        self.dtype = np.dtype(dtype)
        self.memory_budget = memory_budget
        self._plan_memo: tuple[tuple, Any] | None = None  # the last AIF's plan (_plan)

    def __getattr__(self, name: str) -> Any:
        # model.method, model.kh, model.tr_s ...: the options, read-only (threshold: the one
        # used, i.e. the method's default when the option is None)
        opts = self.__dict__.get("options")
        if opts is not None and name in _OPTION_NAMES:
            return opts.resolved_threshold if name == "threshold" else getattr(opts, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def status_flags(self) -> tuple[Status, ...]:
        """The flags this model's status maps can carry (for the status map's sidecar)."""
        return (*_STATUS_FLAGS, *self.deconvolution.flags, Status.NONPOSITIVE_FLOW)

    def parameters(self) -> dict[str, Any]:
        """The options, for sidecars (:meth:`DSCOptions.sidecar_parameters` and the dtype)."""
        return {**self.options.sidecar_parameters(), "dtype": self.dtype.name}

    def fit_key(self) -> tuple:
        """Models with equal keys can compute their subjects in one call (:meth:`fit_batch`):
        everything the per-voxel work depends on (the AIF, the baseline and the TE are applied
        per subject before it)."""
        o = self.options
        return (
            "dsc",
            o.tr_s,
            o.method,
            o.resolved_threshold,
            o.osvd_thresholds,
            o.oi_limit,
            o.mu,
            o.leakage,
            o.leakage_tail_s,
            o.discretisation,
            o.kh,
            o.rho,
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
        gamma_fit_aif: bool | None = None,
        slice_times_s: Any = None,
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
        gamma_fit_aif : bool, optional
            Replace the AIF by its gamma-variate fit (recirculation removed) for the
            deconvolution; CBV keeps the measured AIF's area (see :meth:`prepare`). Default the
            option ``gamma_fit_aif``.
        slice_times_s : array, optional
            2D readouts: acquisition time of each slice after the volume starts (BIDS
            ``SliceTiming``, s), (Z,) along the third axis of a 4D signal, or (V,) for a
            (V, T) signal. Tmax and TTP are then taken relative to the AIF's slice time (the
            mean slice time of the AIF voxels; 0 for an external AIF curve). Ignored when the
            option ``slice_timing`` is False.
        """
        return self.fit_batch(
            [self.prepare(signal, aif, mask, ref_mask, gamma_fit_aif, slice_times_s)],
            return_residue,
        )[0]

    def prepare(
        self,
        signal: np.ndarray,
        aif: Any = "auto",
        mask: np.ndarray | None = None,
        ref_mask: np.ndarray | None = None,
        gamma_fit_aif: bool | None = None,
        slice_times_s: Any = None,
    ) -> PreparedDSC:
        """Everything of :meth:`fit` before the per-voxel deconvolution: mask, dR2* (on the
        backend), bolus arrival, AIF. Parameters as for :meth:`fit`; raises its input errors.

        The option ``skip`` drops the first frames (non-steady state) before anything else: a
        curve given as ``aif`` then has the series' full length and loses them too.

        With a gamma-variate AIF (``gamma_fit_aif``) the deconvolution uses the fitted first
        pass, but CBV divides the tissue area by the *measured* AIF's area: both integrals then
        cover the same window (first pass, recirculation and steady state alike). Dividing the
        whole tissue area by the first-pass area inflated CBV by the recirculating fraction.
        """
        t_start = time.perf_counter()
        opts = self.options
        signal = np.asarray(signal)
        if signal.ndim not in (2, 4):
            raise InputError(None, "signal", f"expected (V, T) or (X, Y, Z, T); got {signal.shape}")
        skip = int(opts.skip)
        if skip:
            if skip >= signal.shape[-1] - 4:
                raise InputError(
                    None, "--skip", f"{skip} frames skipped leave too few of {signal.shape[-1]}"
                )
            signal = signal[..., skip:]
            if not isinstance(aif, str) and np.asarray(aif).dtype != bool:
                aif = np.asarray(aif, np.float64).reshape(-1)[skip:]
        n_t = signal.shape[-1]
        if n_t < 4:
            raise InputError(None, "signal", f"need at least 4 frames; got {n_t}")
        grid = VoxelGrid.for_signal(signal, mask)
        ref_local = None if ref_mask is None else grid.local(ref_mask, "ref_mask")
        block = np.ascontiguousarray(grid.gather(signal), dtype=self.dtype)
        backend = get_backend(self.device)

        # bolus arrival on the mean of the usable voxels (one arrival for the whole volume)
        if opts.baseline is not None:
            n_base = int(opts.baseline)
        else:
            # a row of positive values (no NaN) is finite iff its maximum is: one pass less
            # than isfinite(block).all(1), and the maximum is baseline_frames' too
            top = block.max(axis=1)
            good = (block > 0).all(axis=1) & np.isfinite(top)
            if not good.any():
                raise GpuperfError("no voxel in the mask has a finite, positive signal")
            n_base = baseline_frames(block, good, top)
        if n_base >= n_t - 2:
            raise InputError(None, "baseline", f"{n_base} baseline frames leave too few of {n_t}")
        dr2s, flags = signal_to_dr2s(backend.asarray(block), opts.te_s, n_base, backend.xp)
        usable = backend.to_host(flags) == 0
        aif_curve, aif_vox_local = self._aif(backend, grid, dr2s, usable, aif, n_t)
        aif_info: dict[str, Any] = {}
        aif_area = None
        if opts.gamma_fit_aif if gamma_fit_aif is None else gamma_fit_aif:
            from gpuperf.dsc.aif import fit_gamma_aif

            measured = np.asarray(aif_curve, np.float64)
            _check_aif(measured, n_t, opts.tr_s)
            aif_curve, aif_info = fit_gamma_aif(measured, opts.tr_s)
            aif_area = float(trapz(measured, opts.tr_s))
            aif_info["CBVNormalisation"] = "area of the measured AIF"
        aif_curve = np.asarray(aif_curve, np.float64)
        _check_aif(aif_curve, n_t, opts.tr_s)
        offsets = None
        if slice_times_s is not None and opts.slice_timing:
            offsets = _slice_offsets(slice_times_s, signal.shape, grid, aif_vox_local)
            aif_info["AIFSliceTime_s"] = offsets[1]
            offsets = offsets[0]
        return PreparedDSC(
            backend=backend,
            dr2s=dr2s,
            flags=flags,
            aif=aif_curve,
            aif_voxels=aif_vox_local,
            n_baseline=n_base,
            grid=grid,
            ref=ref_local,
            usable=usable,
            aif_info=aif_info,
            t_start=t_start,
            aif_area=aif_area,
            time_offsets=offsets,
        )

    def _aif(
        self, backend: Backend, grid: VoxelGrid, dr2s: Any, usable: np.ndarray, aif: Any, n_t: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The AIF curve and the fitted voxels (indices into V) averaged into it, or None."""
        if isinstance(aif, str):
            if aif != "auto":
                raise InputError(None, "aif", f"expected 'auto', a curve or a mask; got {aif!r}")
            sel = auto_aif(
                dr2s,
                self.options.tr_s,
                usable,
                **self.options.aif_options,
                xp=backend.xp,
                to_host=backend.to_host,
            )
            return sel.curve, sel.voxels
        a = np.asarray(aif)
        if a.dtype == bool:
            vox = np.flatnonzero(grid.local_or_flat(a, "aif") & usable)
            if vox.size == 0:
                raise InputError(None, "aif", "no usable AIF-mask voxel inside the mask")
            return backend.to_host(dr2s[backend.xp.asarray(vox)].mean(axis=0)), vox
        curve = a.astype(np.float64).reshape(-1)
        if curve.size != n_t:
            raise InputError(None, "aif", f"AIF has {curve.size} samples, data {n_t}")
        return curve, None

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
            [
                (p.dr2s, p.flags, p.aif, p.aif_voxels, p.aif_area, p.time_offsets, p.usable)
                for p in prepared
            ],
            return_residue,
        )
        return [self._finish(p, f) for p, f in zip(prepared, fits, strict=True)]

    def _finish(self, p: PreparedDSC, fit: DSCFit) -> DSCFit:
        """Reference-region rCBF, rCBV, rMTT and the maps back onto the input grid."""
        grid = p.grid
        fit.n_baseline = p.n_baseline
        fit.info.update(p.aif_info)
        if p.ref is not None:
            for name in ("cbf", "cbv", "mtt"):
                setattr(fit, "r" + name, _relative(getattr(fit, name), p.ref, p.usable, name))
        for name in MAP_NAMES:
            vals = getattr(fit, name)
            if vals is not None:
                setattr(fit, name, grid.scatter(vals))
        fit.maps = {k: grid.scatter(v) for k, v in fit.maps.items()}
        fit.status = grid.scatter_status(fit.status)
        if p.aif_voxels is not None:  # flat C-order indices into the input grid
            fit.aif_voxels = grid.c_indices(p.aif_voxels)
        fit.mask = grid.mask
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
        flags[bad] = int(Status.NONFINITE_INPUT)
        c[bad] = 0
        aif = np.asarray(aif, np.float64).reshape(-1)
        items = [(c, flags, aif, None, None, None, None)]
        return self._fit_dr2s_many(backend, items, return_residue)[0]

    # ------------------------------------------------------------------------------------------
    def _fit_dr2s_many(
        self, backend: Backend, items: Sequence[tuple], return_residue: bool
    ) -> list[DSCFit]:
        """Deconvolve subjects ``(dr2s (V, N), flags (V,), aif (N,), aif_voxels, aif_area,
        time_offsets, usable)``: each is prepared and finished alone; the method runs all of
        them (oSVD: one selection queue)."""
        subjects = [self._start(backend, *it, return_residue) for it in items]
        self.deconvolution.run(backend, subjects, self.options, self.memory_budget)
        return [self._end(backend, sub) for sub in subjects]

    def _start(
        self,
        backend: Backend,
        dr2s: Any,
        flags: Any,
        aif: np.ndarray,
        aif_voxels: np.ndarray | None,
        aif_area: float | None,
        time_offsets: np.ndarray | None,
        usable: np.ndarray | None,
        return_residue: bool,
    ) -> Subject:
        """Per subject, before the deconvolution: leakage, CBV, TTP, the AIF's plan.

        ``aif_area``: the area CBV divides by (default the AIF's own); ``time_offsets`` (V,) s:
        slice time of each voxel minus the AIF's, added to Tmax and TTP; ``usable`` (V,) host
        ``flags == 0`` when already known (else downloaded)."""
        xp = backend.xp
        opts = self.options
        dt = opts.tr_s
        v, n = dr2s.shape
        _check_aif(aif, n, dt)
        # leakage reference: usable, not the AIF
        candidates = backend.to_host(flags) == 0 if usable is None else usable.copy()
        if aif_voxels is not None:
            candidates[aif_voxels] = False
        dr2s, leak_maps = self.leakage_correction.correct(
            dr2s, dt, candidates, xp, backend.to_host, aif=aif, options=opts
        )
        sub = Subject(dr2s=dr2s, flags=flags, aif=aif, aif_voxels=aif_voxels, v=v, n=n)
        sub.leakage_maps = leak_maps
        sub.k2 = leak_maps.get("k2")
        sub.time_offsets = time_offsets
        area = trapz(aif, dt) if aif_area is None else aif_area
        sub.cbv = 100.0 * (opts.kh / opts.rho) * trapz(dr2s, dt, xp) / area
        sub.ttp = xp.argmax(dr2s, axis=1).astype(self.dtype) * dt
        sub.rmax = xp.empty(v, dtype=self.dtype)
        sub.tmax_i = xp.empty(v, dtype=xp.int32)
        thr = opts.resolved_threshold
        sub.thr = xp.full(v, np.nan if thr is None else thr, dtype=self.dtype)
        sub.oi = xp.full(v, np.nan, dtype=self.dtype)
        sub.residue = xp.empty((v, n), dtype=self.dtype) if return_residue else None
        sub.plan = self._plan(aif, xp)
        per_voxel = self.deconvolution.memory_per_voxel(n, self.dtype.itemsize)
        # >= 256 voxels a chunk: results are then bitwise independent of the chunk size
        sub.chunks = chunk_slices(
            v, per_voxel, self.memory_budget, backend, min_voxels=MIN_CHUNK_VOXELS
        )
        return sub

    def _plan(self, aif: np.ndarray, xp: Any) -> Any:
        """The method's plan for ``aif`` (what depends on the AIF only), kept for the same AIF
        again: the QC curves of a run (:meth:`fit_concentration` of a few of its voxels with
        its AIF) need not redo the fit's. A plan is read, never written, by the methods."""
        a = np.asarray(aif)
        key = (a.dtype.str, a.shape, a.tobytes(), id(xp))
        if self._plan_memo is None or self._plan_memo[0] != key:
            opts = self.options
            self._plan_memo = (key, self.deconvolution.plan(aif, opts.tr_s, opts, self.dtype, xp))
        return self._plan_memo[1]

    def _end(self, backend: Backend, sub: Subject) -> DSCFit:
        """Per subject, after the deconvolution: CBF, MTT, Tmax, status, host maps."""
        xp = backend.xp
        opts = self.options
        rmax, flags, cbv = sub.rmax, sub.flags, sub.cbv
        cbf = 6000.0 * (opts.kh / opts.rho) * rmax
        flags |= xp.where(rmax > 0, 0, int(Status.NONPOSITIVE_FLOW)).astype(xp.int32)
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt = xp.where(rmax > 0, 60.0 * cbv / xp.where(rmax > 0, cbf, 1), np.nan)
        tmax = sub.tmax_i.astype(self.dtype) * opts.tr_s
        ttp = sub.ttp
        if sub.time_offsets is not None:  # 2D readouts: times relative to the AIF's slice
            off = xp.asarray(sub.time_offsets, dtype=self.dtype)
            tmax = tmax + off
            ttp = ttp + off
        h = backend.to_host
        status = h(flags).astype(np.int32)
        bad = (status & int(INPUT_FLAGS)) != 0

        def out(a: Any) -> np.ndarray:
            arr = h(a).astype(np.float32)
            arr[bad] = np.nan
            return arr

        k2 = sub.k2
        kep = sub.leakage_maps.get("kep")
        plan_sets = getattr(sub.plan, "set_threshold", None)
        return DSCFit(
            cbf=out(cbf),
            cbv=out(cbv),
            mtt=out(mtt),
            tmax=out(tmax),
            ttp=out(ttp),
            threshold=out(sub.thr),
            oi=out(sub.oi),
            status=status,
            aif=sub.aif,
            k2=None if k2 is None else np.where(bad, np.nan, k2).astype(np.float32),
            kep=None if kep is None else np.where(bad, np.nan, kep).astype(np.float32),
            aif_voxels=sub.aif_voxels,
            residue=None if sub.residue is None else h(sub.residue),
            info={"osvd_sets": None if plan_sets is None else plan_sets.tolist()},
            maps={k: out(v) for k, v in sub.maps.items()},
        )


def _same_floats(values: tuple, floats: tuple) -> bool:
    """Whether ``values`` are already these floats (type included: an int 1 would be written
    as 1, not 1.0, in the sidecars)."""
    return all(type(v) is float and v == f for v, f in zip(values, floats, strict=True))


#: Float maps of a fit, scattered back onto the input grid and written in this order (leakage
#: and relative maps only when computed).
MAP_NAMES = (
    "cbf",
    "cbv",
    "mtt",
    "tmax",
    "ttp",
    "threshold",
    "oi",
    "k2",
    "kep",
    "rcbf",
    "rcbv",
    "rmtt",
)


def _relative(values: np.ndarray, ref: np.ndarray, usable: np.ndarray, name: str) -> np.ndarray:
    """``values / mean(values in the reference region)`` (finite, usable voxels only)."""
    sel = ref & usable & np.isfinite(values)
    if not sel.any():
        raise InputError(None, "ref_mask", "no usable voxel of the reference mask in the mask")
    mean = float(np.mean(values[sel]))
    if mean <= 0:
        label = name.upper()
        raise GpuperfError(f"mean {label} in the reference mask is {mean:.4g}: r{label} undefined")
    return (values / mean).astype(np.float32)


def _slice_offsets(
    slice_times_s: Any, shape: tuple, grid: VoxelGrid, aif_voxels: np.ndarray | None
) -> tuple[np.ndarray, float]:
    """Per fitted voxel, its slice time minus the AIF's (s), and the AIF's slice time.

    ``slice_times_s``: (Z,) along the third axis of a 4D signal, or one value per voxel of the
    spatial grid. The AIF's slice time is the mean over its voxels (0 for an external curve).
    """
    st = np.asarray(slice_times_s, dtype=np.float64)
    spatial = tuple(shape[:-1])
    if len(spatial) == 3 and st.ndim == 1:
        if st.size != spatial[2]:
            raise InputError(
                None, "SliceTiming", f"{st.size} values for {spatial[2]} slices (third axis)"
            )
        st = np.broadcast_to(st[None, None, :], spatial)
    elif st.shape != spatial:
        raise InputError(None, "SliceTiming", f"shape {st.shape} != the data's {spatial}")
    if not np.all(np.isfinite(st)) or np.any(st < 0):
        raise InputError(None, "SliceTiming", "expected finite times >= 0 (s)")
    per_voxel = grid.gather(np.ascontiguousarray(st))
    aif_time = 0.0 if aif_voxels is None else float(per_voxel[aif_voxels].mean())
    return per_voxel - aif_time, aif_time


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
        Input status flags (:class:`gpuperf.status.Status`).
    aif : ndarray (N,)
        AIF dR2* (1/s), float64.
    aif_voxels : ndarray or None
        Indices into the V voxels averaged into the AIF.
    n_baseline : int
    grid : VoxelGrid
        The input grid, its flattening order, the mask and its flat indices.
    ref : ndarray of bool (V,) or None
        Reference region for rCBV.
    usable : ndarray of bool (V,)
    aif_info : dict
        Gamma-variate fit of the AIF, when asked for (and the AIF's slice time).
    t_start : float
        perf_counter() at the start of :meth:`DSCModel.prepare`.
    aif_area : float or None
        Area CBV divides by when it is not the AIF's own (the measured AIF's with a
        gamma-variate AIF).
    time_offsets : ndarray (V,) or None
        Slice time of each voxel minus the AIF's (s), added to Tmax and TTP.
    """

    backend: Any
    dr2s: Any
    flags: Any
    aif: np.ndarray
    aif_voxels: np.ndarray | None
    n_baseline: int
    grid: VoxelGrid
    ref: np.ndarray | None
    usable: np.ndarray
    aif_info: dict
    t_start: float
    aif_area: float | None = None
    time_offsets: np.ndarray | None = None

    @property
    def n_voxels(self) -> int:
        return int(self.grid.idx.size)

    @property
    def n_frames(self) -> int:
        return int(self.dr2s.shape[1])

    # the grid's fields, under their former names
    spatial = property(lambda self: self.grid.spatial)
    order = property(lambda self: self.grid.order)
    idx = property(lambda self: self.grid.idx)
    mask = property(lambda self: self.grid.mask)
    n_grid = property(lambda self: self.grid.n_grid)
