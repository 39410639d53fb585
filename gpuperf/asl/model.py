"""ASL quantification in the DIPY idiom: ``ASLModel(...).fit(deltam, m0=...) -> ASLFit``.

The model holds what does not depend on the data (labelling type, timings, constants, method);
``fit`` takes difference signals (control - label, one sample per PLD or per repeat) and M0, and
returns maps. Two methods:

- ``whitepaper``: consensus single-PLD formulas (Alsop et al., MRM 73:102, 2015), closed form;
  with several PLDs the per-PLD estimates are averaged.
- ``gkm``: Buxton general kinetic model (Buxton et al., MRM 40:383, 1998) fitted voxelwise
  for CBF and ATT (optionally aBV and aBAT) by the batched Levenberg-Marquardt fitter
  :func:`gpuperf.fit.fit_lm` (CuPy kernel or NumPy twin).

``auto`` picks ``whitepaper`` for one PLD and ``gkm`` for several.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuperf.asl import constants as K
from gpuperf.asl.quantify import whitepaper_pasl, whitepaper_pcasl
from gpuperf.backend import get_backend
from gpuperf.errors import InputError
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL, BUXTON_PCASL_ARTERIAL

METHODS = ("auto", "whitepaper", "gkm")

#: Status codes of :attr:`ASLFit.status`. 0-2 are the fitter's (converged, max-iter, failed).
STATUS_CONVERGED = 0
STATUS_MAX_ITER = 1
STATUS_FAILED = 2
STATUS_BAD_INPUT = 3  # M0 <= 0 or non-finite data: not fitted
STATUS_AT_KINK = 4  # optimum at a kink of the model (ATT = t - tau or ATT = t): see _snap_kinks
STATUS_OUTSIDE = -1  # outside the mask
STATUS_MEANINGS = {
    -1: "outside mask",
    0: "converged (or closed form)",
    1: "maximum iterations reached",
    2: "fit failed",
    3: "invalid input (M0 <= 0 or non-finite data)",
    4: "converged with ATT at a kink of the model (ATT = PLD or tau + PLD); CBF refitted "
    "with ATT held there",
}
#: A max-iteration ATT closer than this to a kink of the model is tested as a kink optimum (s).
KINK_TOLERANCE_S = 2e-3


@dataclass
class ASLFit:
    """Maps of one ASL fit; arrays have the spatial shape of the data (NaN outside the mask).

    Attributes
    ----------
    cbf : ndarray
        Cerebral blood flow, ml/100g/min.
    att : ndarray or None
        Arterial transit time, s (kinetic model only).
    cbf_stderr, att_stderr : ndarray or None
        Standard errors from the fit covariance (GKM), or, for the consensus formula with
        repeats, the standard error of the mean over repeats.
    status : ndarray int8
        See :data:`STATUS_MEANINGS`.
    residual : ndarray or None
        RMS residual of the fit in signal units of the series (GKM).
    abv, abat, abv_stderr, abat_stderr : ndarray or None
        Arterial blood volume (%) and arrival time (s) when ``arterial=True``.
    method : str
        'whitepaper' or 'gkm'.
    constants : dict
        Every constant used (for sidecars).
    backend, device : str
    elapsed_s : float
    n_iter : ndarray or None
    """

    cbf: np.ndarray
    status: np.ndarray
    method: str
    constants: dict[str, Any]
    att: np.ndarray | None = None
    cbf_stderr: np.ndarray | None = None
    att_stderr: np.ndarray | None = None
    residual: np.ndarray | None = None
    abv: np.ndarray | None = None
    abat: np.ndarray | None = None
    abv_stderr: np.ndarray | None = None
    abat_stderr: np.ndarray | None = None
    n_iter: np.ndarray | None = None
    backend: str = "numpy"
    device: str = ""
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ASLModel:
    """ASL acquisition, constants and method.

    Parameters
    ----------
    labeling_type : {'PCASL', 'CASL', 'PASL'}
    pld_s : array_like (K,)
        PostLabelingDelay of each sample (s); for PASL the inversion time TI. Repeats allowed.
    tau_s : float or array_like (K,)
        Labelling duration (CASL/PCASL) or bolus duration TI1 (PASL), s.
    method : {'auto', 'whitepaper', 'gkm'}
    t1_tissue_s, t1_blood_s : float
        T1 of tissue (kinetic model only) and of arterial blood, s.
    lambda_ : float
        Blood/brain partition coefficient, ml/g.
    alpha : float, optional
        Labelling efficiency (default 0.85 PCASL, 0.68 CASL, 0.98 PASL).
    bs_factor : float
        Background-suppression factor multiplying ``alpha`` (1: none); see
        :func:`gpuperf.asl.constants.background_suppression_factor`.
    arterial : bool
        Add the macrovascular component (aBV, aBAT) to the (p)CASL kinetic model.
    att_start_s : float, optional
        Starting ATT (default 1.3 s (p)CASL, 0.7 s PASL).
    cbf_bounds, att_bounds : (float, float)
    max_iter : int
        Trial steps per voxel (default 50, see :data:`gpuperf.asl.constants.MAX_ITER`).
    device : {'auto', 'cpu', 'gpu'}
    dtype : float32 or float64
    memory_budget : int, optional
        Bytes per chunk (passed to the fitter).
    """

    def __init__(
        self,
        labeling_type: str,
        pld_s: Any,
        tau_s: Any,
        *,
        method: str = "auto",
        t1_tissue_s: float = K.T1_TISSUE_S,
        t1_blood_s: float = 1.65,
        lambda_: float = K.LAMBDA_ML_G,
        alpha: float | None = None,
        bs_factor: float = 1.0,
        arterial: bool = False,
        att_start_s: float | None = None,
        cbf_bounds: tuple[float, float] = K.CBF_BOUNDS,
        att_bounds: tuple[float, float] = K.ATT_BOUNDS,
        max_iter: int = K.MAX_ITER,
        device: str = "auto",
        dtype: Any = np.float32,
        memory_budget: int | None = None,
    ) -> None:
        lt = str(labeling_type).upper()
        if lt not in K.ALPHA_BY_TYPE:
            raise InputError(
                None, "labeling_type", f"expected PCASL, CASL or PASL, found {labeling_type!r}"
            )
        self.labeling_type = lt
        self.pld_s = np.atleast_1d(np.asarray(pld_s, dtype=np.float64))
        self.tau_s = np.broadcast_to(np.asarray(tau_s, dtype=np.float64), self.pld_s.shape).copy()
        if not np.all(np.isfinite(self.pld_s)) or np.any(self.pld_s < 0):
            raise InputError(None, "pld_s", "PLDs must be finite and >= 0 s")
        if not np.all(np.isfinite(self.tau_s)) or np.any(self.tau_s <= 0):
            raise InputError(None, "tau_s", "labelling/bolus durations must be finite and > 0 s")
        if method not in METHODS:
            raise InputError(None, "method", f"expected one of {METHODS}, found {method!r}")
        n_pld = np.unique(np.round(self.pld_s, 6)).size
        self.method = ("whitepaper" if n_pld == 1 else "gkm") if method == "auto" else method
        if arterial and (self.method != "gkm" or lt == "PASL"):
            raise InputError(
                None,
                "arterial",
                "the arterial component needs a (p)CASL kinetic-model fit (several PLDs)",
            )
        self.t1_tissue_s = float(t1_tissue_s)
        self.t1_blood_s = float(t1_blood_s)
        self.lambda_ = float(lambda_)
        self.alpha = float(K.ALPHA_BY_TYPE[lt] if alpha is None else alpha)
        self.bs_factor = float(bs_factor)
        for name, v in (
            ("t1_tissue_s", self.t1_tissue_s),
            ("t1_blood_s", self.t1_blood_s),
            ("lambda_", self.lambda_),
            ("alpha", self.alpha),
            ("bs_factor", self.bs_factor),
        ):
            if not (np.isfinite(v) and v > 0):
                raise InputError(None, name, f"must be a positive number, found {v}")
        self.arterial = bool(arterial)
        self.att_start_s = float(K.ATT_START_S[lt] if att_start_s is None else att_start_s)
        self.cbf_bounds = tuple(float(b) for b in cbf_bounds)
        self.att_bounds = tuple(float(b) for b in att_bounds)
        self.max_iter = int(max_iter)
        self.device = device
        self.dtype = np.dtype(dtype)
        self.memory_budget = memory_budget

    # ------------------------------------------------------------------------------------------
    @property
    def alpha_effective(self) -> float:
        """Labelling efficiency after background suppression, ``alpha * bs_factor``."""
        return self.alpha * self.bs_factor

    @property
    def kinetic_model(self):
        """The fitter model (NumPy twin object carrying its CUDA header name)."""
        if self.labeling_type == "PASL":
            return BUXTON_PASL
        return BUXTON_PCASL_ARTERIAL if self.arterial else BUXTON_PCASL

    def sample_times(self) -> np.ndarray:
        """Fitter abscissa (K, 2): ``(t, tau)`` with ``t = tau + PLD`` ((p)CASL) or ``TI`` (PASL).

        The (p)CASL ``t`` counts from the start of labelling: using the PLD alone (a defect
        seen in an existing tool) shifts every sample by tau.
        """
        t = self.pld_s if self.labeling_type == "PASL" else self.tau_s + self.pld_s
        return np.stack([t, self.tau_s], axis=1)

    def consts(self) -> np.ndarray:
        """Kinetic-model constants (T1 tissue, T1 blood, lambda, alpha effective)."""
        return np.array([self.t1_tissue_s, self.t1_blood_s, self.lambda_, self.alpha_effective])

    def constants(self) -> dict[str, Any]:
        """Every constant the model uses, named with units (recorded in sidecars)."""
        d: dict[str, Any] = {
            "Method": self.method,
            "ArterialSpinLabelingType": self.labeling_type,
            "PostLabelingDelaySeconds": sorted({round(float(v), 6) for v in self.pld_s}),
            (
                "BolusDurationTI1Seconds"
                if self.labeling_type == "PASL"
                else "LabelingDurationSeconds"
            ): sorted({round(float(v), 6) for v in self.tau_s}),
            "T1BloodSeconds": self.t1_blood_s,
            "PartitionCoefficientMlPerG": self.lambda_,
            "LabelingEfficiency": self.alpha,
            "BackgroundSuppressionFactor": self.bs_factor,
            "EffectiveLabelingEfficiency": self.alpha_effective,
            "M0b": "M0 / lambda",
        }
        if self.method == "gkm":
            d.update(
                {
                    "Model": self.kinetic_model.name,
                    "T1TissueSeconds": self.t1_tissue_s,
                    "SampleTimeDefinition": "t = TI"
                    if self.labeling_type == "PASL"
                    else "t = LabelingDuration + PostLabelingDelay",
                    "ATTStartSeconds": self.att_start_s,
                    "CBFBounds": list(self.cbf_bounds),
                    "ATTBoundsSeconds": list(self.att_bounds),
                    "MaxIterations": self.max_iter,
                    "FitPrecision": self.dtype.name,
                }
            )
            if self.arterial:
                d.update(
                    {
                        "aBVBoundsPercent": list(K.ABV_BOUNDS),
                        "aBATBoundsSeconds": list(K.ABAT_BOUNDS),
                    }
                )
        return d

    def fit_key(self) -> tuple:
        """Everything the fit of a voxel depends on besides its data, as a hashable tuple.

        Two models with equal keys fit any voxel identically, so the voxels of several
        subjects can be concatenated and fitted in one call (the cohort runner's batching).
        Sample order matters (the data columns follow ``pld_s``), so the arrays enter as bytes.
        """
        return (
            self.method,
            self.labeling_type,
            self.pld_s.tobytes(),
            self.tau_s.tobytes(),
            self.t1_tissue_s,
            self.t1_blood_s,
            self.lambda_,
            self.alpha,
            self.bs_factor,
            self.arterial,
            self.att_start_s,
            self.cbf_bounds,
            self.att_bounds,
            self.max_iter,
            str(self.device),
            self.dtype.name,
            self.memory_budget,
        )

    # ------------------------------------------------------------------------------------------
    def fit(self, data: Any, m0: Any, mask: Any = None, reporter: Any = None) -> ASLFit:
        """Quantify CBF (and ATT) voxelwise.

        Parameters
        ----------
        data : ndarray (..., K)
            Difference signals (control - label), one sample per entry of ``pld_s``.
        m0 : float or ndarray (...)
            Equilibrium magnetisation of tissue per voxel (same signal units as ``data``),
            already corrected for short TR. A reference-region calibration passes
            ``lambda * M0b`` as a scalar.
        mask : ndarray of bool (...), optional
            Voxels to quantify (default: all).
        reporter : gpuperf.progress.Reporter, optional

        Returns
        -------
        ASLFit
        """
        t0 = time.perf_counter()
        data = np.asarray(data, dtype=self.dtype)
        if data.ndim < 1 or data.shape[-1] != self.pld_s.size:
            raise InputError(
                None,
                "data",
                f"last axis must hold {self.pld_s.size} samples (one "
                f"per PLD entry), found shape {data.shape}",
            )
        spatial = data.shape[:-1]
        m0 = np.broadcast_to(np.asarray(m0, dtype=self.dtype), spatial)
        if mask is None:
            mask = np.ones(spatial, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial:
            raise InputError(None, "mask", f"shape {mask.shape} does not match data {spatial}")
        y_all = data[mask]
        m0_all = m0[mask]
        valid = np.isfinite(y_all).all(axis=1) & np.isfinite(m0_all) & (m0_all > 0)
        y = np.ascontiguousarray(y_all[valid] / m0_all[valid, None], dtype=self.dtype)
        backend = get_backend(self.device)
        if self.method == "whitepaper":
            maps = self._fit_whitepaper(y)
        else:
            maps = self._fit_gkm(y, reporter)
            maps["residual"] = maps["residual"] * m0_all[valid]
        status = np.full(spatial, STATUS_OUTSIDE, dtype=np.int8)
        inside = np.full(int(mask.sum()), STATUS_BAD_INPUT, dtype=np.int8)
        inside[valid] = maps.pop("status")
        status[mask] = inside
        out: dict[str, Any] = {}
        extra = {k: maps.pop(k) for k in list(maps) if k.startswith("_")}
        for name, vals in maps.items():
            if vals is None:
                out[name] = None
                continue
            full = np.full(spatial, np.nan, dtype=np.float32)
            sub = np.full(int(mask.sum()), np.nan, dtype=np.float32)
            sub[valid] = vals
            full[mask] = sub
            out[name] = full
        n_iter = extra.get("_n_iter")
        if n_iter is not None:
            full = np.zeros(spatial, dtype=np.int32)
            sub = np.zeros(int(mask.sum()), dtype=np.int32)
            sub[valid] = n_iter
            full[mask] = sub
            n_iter = full
        return ASLFit(
            status=status,
            method=self.method,
            constants=self.constants(),
            n_iter=n_iter,
            backend=backend.name,
            device=backend.device_name,
            elapsed_s=time.perf_counter() - t0,
            **out,
        )

    def _fit_whitepaper(self, y: np.ndarray) -> dict[str, Any]:
        """Closed form per sample, then mean over samples (repeats and PLDs)."""
        backend = get_backend(self.device)
        yd = backend.asarray(y, dtype=np.float64)
        pld = backend.asarray(self.pld_s[None, :])
        tau = backend.asarray(self.tau_s[None, :])
        kw = {"t1_blood_s": self.t1_blood_s, "lambda_": self.lambda_, "alpha": self.alpha_effective}
        if self.labeling_type == "PASL":
            per_sample = whitepaper_pasl(yd, pld, tau, **kw)
        else:
            per_sample = whitepaper_pcasl(yd, pld, tau, **kw)
        n = y.shape[1]
        cbf = per_sample.mean(axis=1)
        stderr = (per_sample.std(axis=1, ddof=1) / np.sqrt(n)) if n > 1 else None
        return {
            "cbf": backend.to_host(cbf).astype(np.float32),
            "cbf_stderr": None if stderr is None else backend.to_host(stderr).astype(np.float32),
            "status": np.zeros(y.shape[0], dtype=np.int8),
        }

    def initial_params(self, y: np.ndarray) -> np.ndarray:
        """Starting values (V, P): ATT at ``att_start_s`` and CBF from a linear least-squares
        scale of the model at that ATT (the signal is nearly linear in CBF)."""
        model = self.kinetic_model
        x = self.sample_times()
        ref = np.array([[50.0, self.att_start_s] + ([0.0, 0.0] if self.arterial else [])])
        g, _ = model.evaluate(np, ref, x, self.consts())
        g = g[0]
        gg = float(g @ g)
        lo, hi = self.cbf_bounds
        if gg > 0:
            cbf0 = 50.0 * (y.astype(np.float64) @ g) / gg
        else:
            cbf0 = np.full(y.shape[0], 50.0)
        span = hi - lo
        cbf0 = np.clip(np.nan_to_num(cbf0, nan=50.0), lo + 1e-3 * span, hi - 1e-3 * span)
        cols = [cbf0, np.full(y.shape[0], self.att_start_s)]
        if self.arterial:
            cols += [np.full(y.shape[0], 0.5), np.full(y.shape[0], 0.5 * self.att_start_s)]
        return np.stack(cols, axis=1).astype(self.dtype)

    def _fit_gkm(self, y: np.ndarray, reporter: Any) -> dict[str, Any]:
        from gpuperf.fit import fit_lm

        n_vox, n = y.shape
        p0 = self.initial_params(y)
        if n_vox == 0:
            empty = np.zeros(0, dtype=np.float32)
            res = {
                "cbf": empty,
                "att": empty,
                "cbf_stderr": empty,
                "att_stderr": empty,
                "residual": empty,
                "status": np.zeros(0, np.int8),
                "_n_iter": np.zeros(0),
            }
            if self.arterial:
                res.update(abv=empty, abat=empty, abv_stderr=empty, abat_stderr=empty)
            return res
        common = {
            "consts": self.consts(),
            "max_iter": self.max_iter,
            "dtype": self.dtype,
            "device": self.device,
            "memory_budget": self.memory_budget,
            "reporter": reporter,
        }
        tissue_model = BUXTON_PASL if self.labeling_type == "PASL" else BUXTON_PCASL
        r = fit_lm(
            tissue_model,
            self.sample_times(),
            y,
            p0[:, :2],
            lower=np.array([self.cbf_bounds[0], self.att_bounds[0]]),
            upper=np.array([self.cbf_bounds[1], self.att_bounds[1]]),
            **common,
        )
        params = np.asarray(r.params, dtype=np.float64)
        stderr = np.asarray(r.stderr, dtype=np.float64)
        chi2 = np.asarray(r.chi2, dtype=np.float64)
        status = np.asarray(r.status, dtype=np.int8)
        n_iter = np.asarray(r.n_iter)
        self._snap_kinks(y, params, stderr, chi2, status, common)
        if self.arterial:
            params, stderr, chi2, status, n_iter = self._fit_arterial(
                y, params, stderr, chi2, status, n_iter, common
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
        if self.arterial:
            res.update(
                abv=params[:, 2],
                abat=params[:, 3],
                abv_stderr=stderr[:, 2],
                abat_stderr=stderr[:, 3],
            )
        return res

    def kinks(self) -> np.ndarray:
        """ATT values (s) where the tissue model is not differentiable: ``t_n - tau_n`` (the
        sample sees the whole bolus from there on) and ``t_n`` (arrival at the sample)."""
        x = self.sample_times()
        return np.unique(np.round(np.concatenate([x[:, 0] - x[:, 1], x[:, 0]]), 9))

    def _snap_kinks(self, y, params, stderr, chi2, status, common) -> None:
        """Finish voxels whose optimum sits on a kink of the model (in place).

        d(signal)/dATT jumps where ATT crosses ``t_n - tau_n`` or ``t_n``; an optimum exactly
        there is non-smooth and Levenberg-Marquardt only creeps towards it (linear
        convergence), ending at the iteration limit. For such voxels (status 1 with ATT within
        :data:`KINK_TOLERANCE_S` of a kink) ATT is set to the kink and CBF refitted with ATT
        fixed; the result is kept when chi2 does not increase, with status 4. The ATT standard
        error comes from J^T J at that point with both parameters free (one-sided J).
        """
        from gpuperf.fit import fit_lm

        cand = np.flatnonzero((status == STATUS_MAX_ITER) & np.isfinite(params[:, 1]))
        if cand.size == 0:
            return
        kinks = self.kinks()
        nearest = kinks[np.abs(params[cand, 1][:, None] - kinks[None, :]).argmin(axis=1)]
        near = np.abs(params[cand, 1] - nearest) < KINK_TOLERANCE_S
        cand, nearest = cand[near], nearest[near]
        if cand.size == 0:
            return
        tissue = BUXTON_PASL if self.labeling_type == "PASL" else BUXTON_PCASL
        lower = np.array([self.cbf_bounds[0], self.att_bounds[0]])
        upper = np.array([self.cbf_bounds[1], self.att_bounds[1]])
        p0 = np.stack([params[cand, 0], nearest], axis=1)
        kw = {**common, "reporter": None}
        r = fit_lm(
            tissue,
            self.sample_times(),
            y[cand],
            p0,
            lower=lower,
            upper=upper,
            fixed=np.array([False, True]),
            **kw,
        )
        c2 = np.asarray(r.chi2, dtype=np.float64)
        ok = (np.asarray(r.status) == STATUS_CONVERGED) & (c2 <= chi2[cand] * (1 + 1e-6))
        if not ok.any():
            return
        idx = cand[ok]
        p_new = np.asarray(r.params, dtype=np.float64)[ok]
        # covariance at the kink with both free: zero iterations evaluate J^T J only
        cov = fit_lm(
            tissue,
            self.sample_times(),
            y[idx],
            p_new,
            lower=lower,
            upper=upper,
            **{**kw, "max_iter": 0},
        )
        params[idx] = p_new
        stderr[idx] = np.asarray(cov.stderr, dtype=np.float64)
        chi2[idx] = c2[ok]
        status[idx] = STATUS_AT_KINK

    def abat_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate aBAT values (s) and the half-widths of their intervals.

        The arterial box ``[aBAT, aBAT + tau)`` contains sample ``t`` iff
        ``t - tau < aBAT <= t``, so which samples it covers changes only at the breakpoints
        ``{t_n, t_n - tau_n}``; between two breakpoints aBV absorbs ``e^{-aBAT/T1b}`` and chi2
        is the same. aBAT is therefore identifiable only up to such an interval: the fit tries
        the midpoint of every interval inside the aBAT bounds (aBAT held fixed, CBF, ATT, aBV
        free) and keeps the best.
        """
        x = self.sample_times()
        lo, hi = K.ABAT_BOUNDS
        brk = np.concatenate([[lo], x[:, 0], x[:, 0] - x[:, 1]])
        brk = np.unique(np.clip(brk, lo, min(hi, float(x[:, 0].max()))))
        mids = 0.5 * (brk[1:] + brk[:-1])
        half = 0.5 * np.diff(brk)
        keep = half > 1e-6
        return mids[keep], half[keep]

    def _fit_arterial(self, y, params, stderr, chi2, status, n_iter, common):
        """Tissue + arterial fit: best chi2 over the aBAT intervals of :meth:`abat_candidates`.

        The arterial term is a box in t; its edges carry no gradient and, within one interval,
        d/daBAT is proportional to d/daBV, so aBAT cannot be a free LM parameter. Each
        candidate interval is fitted with aBAT fixed at its midpoint; the tissue-only fit
        (aBV = 0, aBAT undefined) is kept wherever no arterial solution lowers chi2.
        ``abat_stderr`` reports the half-width of the chosen interval (the resolution the
        sampling allows), not a covariance-based error.
        """
        from gpuperf.fit import fit_lm

        n_vox = y.shape[0]
        best_p = np.concatenate([params, np.zeros((n_vox, 1)), np.full((n_vox, 1), np.nan)], 1)
        best_se = np.concatenate([stderr, np.full((n_vox, 2), np.nan)], 1)
        best_chi2 = np.where(np.isfinite(chi2), chi2, np.inf)
        best_status, best_iter = status.copy(), n_iter.copy()
        lower = np.array(
            [self.cbf_bounds[0], self.att_bounds[0], K.ABV_BOUNDS[0], K.ABAT_BOUNDS[0]]
        )
        upper = np.array(
            [self.cbf_bounds[1], self.att_bounds[1], K.ABV_BOUNDS[1], K.ABAT_BOUNDS[1]]
        )
        att_t = np.where(np.isfinite(params[:, 1]), params[:, 1], self.att_start_s)
        cbf_t = np.where(np.isfinite(params[:, 0]), params[:, 0], 50.0)
        fixed = np.array([False, False, False, True])
        # ATT starts: the tissue-only fit (biased by arterial signal), the default, and later
        # (ATT kinks make the arterial chi2 multimodal)
        att_starts = (
            att_t,
            np.full(n_vox, self.att_start_s),
            np.full(n_vox, self.att_start_s + 0.7),
        )
        starts = [
            (abat, half, a0)
            for abat, half in zip(*self.abat_candidates(), strict=True)
            for a0 in att_starts
        ]
        for abat, half, a0 in starts:
            p0 = np.stack([cbf_t, a0, np.full(n_vox, 1.0), np.full(n_vox, abat)], axis=1)
            p0 = np.clip(p0, lower, upper)
            r = fit_lm(
                BUXTON_PCASL_ARTERIAL,
                self.sample_times(),
                y,
                p0,
                lower=lower,
                upper=upper,
                fixed=fixed,
                **common,
            )
            c2 = np.asarray(r.chi2, dtype=np.float64)
            rp = np.asarray(r.params, dtype=np.float64)
            # an arterial solution must beat the current one by more than rounding (0.1 % of
            # chi2) with a non-negligible aBV (> 0.001 %), else the simpler fit stands
            better = (
                (np.asarray(r.status) != STATUS_FAILED)
                & np.isfinite(c2)
                & (c2 < best_chi2 * (1 - 1e-3))
                & (rp[:, 2] > 1e-3)
            )
            best_p[better] = rp[better]
            se = np.asarray(r.stderr, dtype=np.float64)
            se[:, 3] = half
            best_se[better] = se[better]
            best_chi2[better] = c2[better]
            best_status[better] = np.asarray(r.status, dtype=np.int8)[better]
            best_iter[better] = np.asarray(r.n_iter)[better]
        best_chi2[~np.isfinite(best_chi2)] = np.nan
        return best_p, best_se, best_chi2, best_status, best_iter
