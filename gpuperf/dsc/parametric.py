"""Model-based DSC deconvolution (``--method parametric``) on the batched LM engine.

Mouridsen et al., JCBFM 34:1511 (2014): the capillary transit times are gamma-distributed
with mean MTT and shape a, so the residue is ``R(t) = Q(a, a t / MTT)`` (the regularised upper
incomplete gamma function) and each tissue curve is fitted as

    C_t(t) = (rho/kH) CBF (C_a conv R)(t - delay)

with four parameters (CBF, MTT, a, delay). Outputs: CBF, CBV = CBF MTT, MTT, CTH = MTT/sqrt(a)
(capillary transit-time heterogeneity, Jespersen & Ostergaard, JCBFM 32:264, 2012), delay,
the fit's standard errors, chi2 and status.

Why: the SVD family reads CBF low because the rectangle rule gives the first residue sample
full weight (``max r ~ F max(1/2, e^{-TR/MTT})``) and truncation smooths the rest (see
``docs/dsc.md``). A model fit has no truncation, and the convolution here is integrated with a
continuous AIF (:func:`continuous_aif`: gamma-variate first pass plus the linearly
interpolated remainder, on a grid :data:`OVERSAMPLE` times finer than the frames) instead of a
frame-constant one. The fit model is ``dsc_gamma_residue`` (``kernels/models/
dsc_gamma_residue.cuh`` and its NumPy twin), run by :func:`gpuperf.fit.fit_lm` on the GPU or
the CPU.

Start values come from an oSVD pass (CBF from the residue maximum, MTT from CBV/CBF, delay
from Tmax, circularly unwrapped); the fit is bounded and started from several shapes
(:data:`START_SHAPES`), keeping per voxel the start with the lowest chi2. The bolus delay is
the arrival fitted on the rising edge of the first pass (:data:`ARRIVAL_FRACTION`), where every
residue is close to R(0) = 1, and is held while flow, MTT and shape are fitted: at short MTT the
four-parameter fit is flat along a shape/delay ridge and noise moves the flow along it
(docs/dsc.md). An F-test frees the delay again where the data reject the held one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpuperf.dsc.methods import OSVD, Deconvolution, Subject
from gpuperf.status import Status

if TYPE_CHECKING:
    from gpuperf.backend import Backend
    from gpuperf.dsc.options import DSCOptions

#: Fine nodes per frame of the continuous AIF table.
OVERSAMPLE = 8
#: Shapes a the fit starts from (exponential-like, gamma-like, narrow); best chi2 kept.
START_SHAPES = (1.5, 6.0)
#: Bounds: MTT (s), shape a, delay (s).
MTT_BOUNDS_S = (0.5, 40.0)
SHAPE_BOUNDS = (1.0, 50.0)
DELAY_BOUNDS_S = (-6.0, 12.0)
#: Flow bound: this many times the oSVD estimate (or the largest one when that is <= 0).
FLOW_UPPER_FACTOR = 20.0
#: LM iteration cap per start.
MAX_ITER = 200
#: First-pass window of the AIF's gamma-variate: until the curve falls below this peak fraction.
FIRST_PASS_FRACTION = 0.3
#: Fit window of the tissue curves: frames up to where the (3-frame smoothed) curve falls below
#: this fraction of its peak after the peak. The flow is carried by the upslope and the peak;
#: the tail is where residue shapes unlike the gamma's (heavy-tailed lognormal), recirculation
#: and leakage dominate, and fitting it biases the flow of such shapes (docs/dsc.md: lognormal
#: +24 % at MTT 4 s on the whole curve, +9 % with this window). None: the whole curve.
TISSUE_WINDOW_FRACTION: float | None = 0.5
#: Bolus arrival from the rising edge: frames until the (3-frame smoothed) curve first reaches
#: this fraction of its peak. There every residue is close to R(0) = 1 whatever its shape, so
#: the delay fitted there (flow and delay free, R = 1, then once more with the fitted residue)
#: does not ride the shape/delay ridge of the whole fit; the flow, MTT and shape are then
#: fitted with that delay held (docs/dsc.md, "Bolus arrival from the rising edge"). None: the
#: delay is fitted with the other three parameters.
ARRIVAL_FRACTION: float | None = 0.5


def _gamma_first_pass(aif: np.ndarray, t: np.ndarray) -> tuple[float, float, float, float] | None:
    """Gamma-variate ``(A, t0, a, b)`` fitted to the first pass of the AIF (None if it fails)."""
    from gpuperf.fit import MODELS, fit_lm

    y = np.asarray(aif, np.float64)
    peak = int(np.argmax(y))
    low = np.flatnonzero(y[peak:] < FIRST_PASS_FRACTION * y[peak])
    stop = peak + (int(low[0]) if low.size else y.size - 1 - peak)
    w = np.zeros_like(y)
    w[: stop + 1] = 1.0
    p0 = MODELS["gammavar"].initial_guess(t[:, None], y[None, :])
    res = fit_lm("gammavar", t, y[None, :], p0, weights=w, dtype=np.float64, device="cpu")
    p = res.params[0]
    if int(res.status[0]) & int(Status.FIT_FAILED) or not np.isfinite(p).all():
        return None
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


def continuous_aif(
    aif: np.ndarray, tr_s: float, oversample: int = OVERSAMPLE
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The AIF as a continuous curve on a grid ``oversample`` times finer than the frames.

    A gamma-variate fitted to the first pass (Thompson 1964; Benner 1997) gives the shape
    between frames; the remainder (measured minus gamma-variate: recirculation, steady state,
    the fit's misfit) is interpolated linearly. The result equals the measured AIF at every
    frame, so nothing of the measured curve is lost; it only stops the AIF from being constant
    (or linear) over a frame around the bolus peak. Without a usable gamma fit, the AIF is
    interpolated linearly.

    Returns
    -------
    t_fine : (M,) s ; c_fine : (M,) the AIF ; info : dict (gamma parameters or None)
    """
    y = np.asarray(aif, np.float64).reshape(-1)
    t = np.arange(y.size) * tr_s
    t_fine = np.arange((y.size - 1) * oversample + 1) * (tr_s / oversample)
    gv = _gamma_first_pass(y, t)
    if gv is None:
        return t_fine, np.interp(t_fine, t, y), {"gamma_first_pass": None}
    from gpuperf.dsc.aif import gamma_variate

    first = gamma_variate(t, *gv)
    c_fine = gamma_variate(t_fine, *gv) + np.interp(t_fine, t, y - first)
    return (
        t_fine,
        c_fine,
        {"gamma_first_pass": dict(zip(("A", "t0_s", "a", "b_s"), gv, strict=True))},
    )


def _smoothed(conc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-frame running mean of curves (V, N) (edges repeated) and its per-curve peak index."""
    y = np.asarray(conc, np.float64)
    pad = np.pad(y, ((0, 0), (1, 1)), mode="edge")
    sm = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3.0
    return sm, np.argmax(sm, axis=1)[:, None]


def first_pass_weights(conc: np.ndarray, fraction: float | None) -> np.ndarray | None:
    """0/1 weights (V, N): 1 up to the first frame after the peak where the 3-frame running
    mean of the curve is below ``fraction`` of its maximum (every frame when it never is)."""
    if fraction is None:
        return None
    sm, pk = _smoothed(conc)
    n = sm.shape[1]
    idx = np.arange(n)[None, :]
    low = (idx > pk) & (sm < fraction * np.take_along_axis(sm, pk, axis=1))
    stop = np.where(low.any(axis=1), np.argmax(low, axis=1), n - 1)
    return (idx <= stop[:, None]).astype(sm.dtype)


def rising_edge_weights(conc: np.ndarray, fraction: float | None) -> np.ndarray | None:
    """0/1 weights (V, N): 1 up to the first frame where the 3-frame running mean of the curve
    reaches ``fraction`` of its maximum (the rising edge of the first pass, baseline included)."""
    if fraction is None:
        return None
    sm, pk = _smoothed(conc)
    idx = np.arange(sm.shape[1])[None, :]
    stop = np.argmax(sm >= fraction * np.take_along_axis(sm, pk, axis=1), axis=1)
    return (idx <= stop[:, None]).astype(sm.dtype)


def start_values(
    rmax: np.ndarray, tmax_i: np.ndarray, cbv_ratio: np.ndarray, n: int, tr_s: float
) -> np.ndarray:
    """Start (flow, MTT, delay) per voxel from an oSVD pass.

    ``flow = max r``; ``MTT = (int C_t / int C_a) / max r``; delay = Tmax, read as negative
    when it lies in the second half of the (circulant, 2N-long) window.
    """
    flow = np.where(np.isfinite(rmax) & (rmax > 0), rmax, np.nan)
    mtt = cbv_ratio / flow
    ti = np.asarray(tmax_i, np.float64)
    delay = np.where(ti > n // 2, ti - n, ti) * tr_s
    return np.stack([flow, mtt, delay], axis=1)


#: Significance level of the F-test that frees the delay again (:func:`arrival_rejected`).
ARRIVAL_TEST_LEVEL = 0.05


def arrival_rejected(
    chi2_held: np.ndarray,
    chi2_free: np.ndarray,
    n_used: np.ndarray,
    level: float = ARRIVAL_TEST_LEVEL,
) -> np.ndarray:
    """Whether freeing the delay improves chi2 significantly (extra-sum-of-squares F-test).

    ``F = (chi2_held - chi2_free) / (chi2_free / (n - 4))`` against F(1, n - 4) at ``level``
    (n: frames in the fit window). Noise-free curves always reject (chi2_free ~ 0).
    """
    dof = np.maximum(np.asarray(n_used, np.float64) - 4.0, 1.0)
    gain = np.asarray(chi2_held, np.float64) - np.asarray(chi2_free, np.float64)
    scale = np.asarray(chi2_free, np.float64) / dof
    from scipy.stats import f as f_dist

    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(scale > 0, gain / scale, np.where(gain > 0, np.inf, 0.0))
    return np.isfinite(chi2_free) & (stat > f_dist.ppf(1.0 - level, 1.0, dof))


def _masked(res: Any, keep: np.ndarray) -> Any:
    """``res`` with chi2 set to +inf where not ``keep`` (so :func:`_best_of` never picks it)."""
    res.chi2 = np.where(keep, res.chi2, np.inf)
    return res


def _best_of(results: list[Any]) -> Any:
    """Per voxel, the fit with the lowest finite chi2 (the first one on ties)."""
    best = results[0]
    for res in results[1:]:
        better = np.isfinite(res.chi2) & ~(res.chi2 >= best.chi2)
        for name in ("params", "stderr", "chi2", "status", "n_iter"):
            old, new = getattr(best, name), getattr(res, name)
            sel = better.reshape((-1,) + (1,) * (old.ndim - 1))
            setattr(best, name, np.where(sel, new, old))
    return best


def fit_parametric(
    conc: np.ndarray,
    aif: np.ndarray,
    tr_s: float,
    start: np.ndarray,
    *,
    dtype: Any = np.float32,
    device: str = "cpu",
    memory_budget: int | None = None,
    start_shapes: tuple[float, ...] = START_SHAPES,
    weights: np.ndarray | None = None,
    arrival_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Fit the gamma-residue model to curves (host arrays), best of several starts.

    Parameters
    ----------
    conc : (V, N) tissue curves (dR2* or concentration), frames ``tr_s`` apart.
    aif : (N,) the AIF in the same units.
    start : (V, 3) start flow (1/s), MTT (s), delay (s) (:func:`start_values`); non-finite rows
        start from the medians of the finite ones.
    device : 'cpu', 'gpu' or 'host' (as :func:`gpuperf.fit.fit_lm`).
    weights : (V, N), optional
        Weights of chi2 (e.g. :func:`first_pass_weights`); default every frame.
    arrival_weights : (V, N), optional
        The rising edge (:func:`rising_edge_weights`). When given, the delay is the bolus
        arrival fitted there, first with R = 1 (flow and delay free), then once more with the
        residue fitted with that delay held; flow, MTT and shape are fitted with the final delay
        held (its stderr is the rising-edge fit's). Default: all four parameters free.

    Returns
    -------
    dict of (V,) arrays: ``flow`` (1/s), ``mtt``, ``shape``, ``delay``, ``cth`` (s), their
    ``*_stderr``, ``chi2`` and ``status`` (:class:`gpuperf.status.Status` flags of the kept
    fit).
    """
    from gpuperf.fit import fit_lm
    from gpuperf.fit.models.dsc_gamma_residue import aif_table

    y = np.asarray(conc, dtype=dtype)
    v, n = y.shape
    t_fine, c_fine, _ = continuous_aif(aif, tr_s)
    consts = aif_table(float(t_fine[0]), float(t_fine[1] - t_fine[0]), c_fine)
    t = np.arange(n) * tr_s
    st = np.array(start, dtype=np.float64, copy=True)
    for k in range(3):
        col = st[:, k]
        ok = np.isfinite(col)
        fill = float(np.median(col[ok])) if ok.any() else (0.01, 4.0, 0.0)[k]
        col[~ok] = fill
    flow_max = np.nanmax(st[:, 0]) if v else 1.0
    flow0 = np.where(st[:, 0] > 0, st[:, 0], max(flow_max, 1e-6) * 0.1)
    mtt0 = np.clip(st[:, 1], *MTT_BOUNDS_S)
    delay0 = np.clip(st[:, 2], *DELAY_BOUNDS_S)
    lower = np.tile([0.0, MTT_BOUNDS_S[0], SHAPE_BOUNDS[0], DELAY_BOUNDS_S[0]], (v, 1))
    upper = np.stack(
        [
            FLOW_UPPER_FACTOR * np.maximum(flow0, max(flow_max, 1e-6)),
            np.full(v, MTT_BOUNDS_S[1]),
            np.full(v, SHAPE_BOUNDS[1]),
            np.full(v, min(DELAY_BOUNDS_S[1], (n - 1) * tr_s / 2)),
        ],
        axis=1,
    )

    def run(p0: np.ndarray, w: np.ndarray | None, fixed: tuple[bool, ...]) -> Any:
        return fit_lm("dsc_gamma_residue", t, y, p0, lower=lower, upper=upper, consts=consts,
                      weights=w, fixed=np.array(fixed), max_iter=MAX_ITER, dtype=dtype,
                      device=device, memory_budget=memory_budget)  # fmt: skip

    def starts(flow: np.ndarray, mtt: np.ndarray, delay: np.ndarray) -> list[np.ndarray]:
        return [np.stack([flow, mtt, np.full(v, a0), delay], axis=1) for a0 in start_shapes]

    free = (False, False, False, False)
    arrival = None
    if arrival_weights is None:
        best = _best_of([run(p0, weights, free) for p0 in starts(flow0, mtt0, delay0)])
    else:
        # rising edge with R = 1 (a plug flow of the longest MTT): flow and delay free
        flat = np.stack([flow0, upper[:, 1], upper[:, 2], delay0], axis=1)
        edge = (False, True, True, False)
        held = (False, False, False, True)
        arrival = run(flat, arrival_weights, edge)
        d1 = arrival.params[:, 3]
        first = _best_of([run(p0, weights, held) for p0 in starts(flow0, mtt0, d1)])
        # the same rising edge with the residue just fitted, then the final fit
        arrival = run(first.params, arrival_weights, edge)
        p1 = first.params.astype(np.float64)
        best = _best_of([run(p0, weights, held)
                         for p0 in starts(p1[:, 0], p1[:, 1], arrival.params[:, 3])])  # fmt: skip
        # the delay freed again from there; kept only where the data reject the held arrival
        loose = run(best.params, weights, free)
        n_used = np.count_nonzero(weights, axis=1) if weights is not None else np.full(v, n)
        rejects = arrival_rejected(best.chi2, loose.chi2, n_used)
        best = _best_of([best, _masked(loose, rejects)])
        arrival_kept = ~rejects
    p, se = best.params.astype(np.float64), best.stderr.astype(np.float64)
    status = best.status.astype(np.int32)
    if arrival is not None:
        se[:, 3] = np.where(arrival_kept, arrival.stderr[:, 3], se[:, 3])
        status |= arrival.status.astype(np.int32) & int(Status.FIT_FAILED)
    flow, mtt, a, delay = p.T
    out = {
        "flow": flow,
        "mtt": mtt,
        "shape": a,
        "delay": delay,
        "cth": mtt / np.sqrt(a),
        "flow_stderr": se[:, 0],
        "mtt_stderr": se[:, 1],
        "shape_stderr": se[:, 2],
        "delay_stderr": se[:, 3],
        "chi2": best.chi2.astype(np.float64),
        "status": status,
    }
    return out


def residue_curve(
    flow: np.ndarray, mtt: np.ndarray, a: np.ndarray, delay: np.ndarray, n: int, tr_s: float
) -> np.ndarray:
    """``F R(t - delay)`` at the frames (V, N), 0 before the delay (for ``return_residue``)."""
    from scipy.special import gammaincc

    t = np.arange(n) * tr_s
    s = t[None, :] - delay[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = gammaincc(a[:, None], np.maximum(s, 0.0) * (a / mtt)[:, None])
    return np.where(s >= 0, flow[:, None] * r, 0.0)


class Parametric(Deconvolution):
    """``--method parametric``: gamma transit-time residue fitted per voxel (Mouridsen 2014)."""

    name = "parametric"
    description = "model-based: gamma transit-time residue fitted on the LM engine (Mouridsen 2014)"
    work_arrays = 8
    flags = (Status.MAX_ITER, Status.FIT_FAILED)
    #: Maps this method adds to the fit (``DSCFit.maps``).
    map_names = ("cth", "delay", "cbf_stderr", "mtt_stderr", "delay_stderr", "chi2")

    def plan(self, aif, dt_s, options, dtype, xp):
        return OSVD().plan(aif, dt_s, options, dtype, xp)

    def run(
        self,
        backend: Backend,
        subjects: list[Subject] | Any,
        options: DSCOptions,
        memory_budget: int | None,
    ) -> None:
        """oSVD start values for every subject, then the fit, chunk by chunk."""
        xp = backend.xp
        # the oSVD pass writes rmax/tmax_i/thr/oi/flags: run it on scratch copies
        scratch = [
            Subject(
                dr2s=s.dr2s,
                flags=xp.zeros_like(s.flags),
                aif=s.aif,
                aif_voxels=s.aif_voxels,
                v=s.v,
                n=s.n,
                rmax=xp.empty_like(s.rmax),
                tmax_i=xp.empty_like(s.tmax_i),
                thr=xp.empty_like(s.thr),
                oi=xp.empty_like(s.oi),
                plan=s.plan,
                chunks=s.chunks,
            )
            for s in subjects
        ]
        OSVD().run(backend, scratch, options, memory_budget)
        device = "gpu" if backend.is_gpu else "cpu"
        h = backend.to_host
        kscale = options.kh / options.rho
        for sub, sc in zip(subjects, scratch, strict=True):
            dt = sub.dr2s.dtype
            # CBV/(100 kH/rho) = int C_t / int C_a
            ratio = h(sub.cbv).astype(np.float64) / (100.0 * kscale)
            start = start_values(h(sc.rmax), h(sc.tmax_i), ratio, sub.n, options.tr_s)
            curves = h(sub.dr2s)
            fit = fit_parametric(
                curves,
                sub.aif,
                options.tr_s,
                start,
                dtype=np.dtype(dt),
                device=device,
                memory_budget=memory_budget,
                weights=first_pass_weights(curves, TISSUE_WINDOW_FRACTION),
                arrival_weights=rising_edge_weights(curves, ARRIVAL_FRACTION),
            )
            flow = fit["flow"]
            sub.rmax = xp.asarray(flow.astype(dt))
            sub.cbv = xp.asarray((100.0 * kscale * flow * fit["mtt"]).astype(dt))
            ti = np.clip(np.rint(np.maximum(fit["delay"], 0.0) / options.tr_s), 0, sub.n - 1)
            sub.tmax_i = xp.asarray(np.nan_to_num(ti).astype(np.int32))
            sub.flags |= xp.asarray(fit["status"].astype(np.int32))
            delay = fit["delay"]
            if sub.time_offsets is not None:  # 2D readouts: relative to the AIF's slice time
                delay = delay + np.asarray(sub.time_offsets, np.float64)
            sub.maps = {
                "cth": fit["cth"],
                "delay": delay,
                "cbf_stderr": 6000.0 * kscale * fit["flow_stderr"],
                "mtt_stderr": fit["mtt_stderr"],
                "delay_stderr": fit["delay_stderr"],
                "chi2": fit["chi2"],
            }
            if sub.residue is not None:
                sub.residue[...] = xp.asarray(
                    residue_curve(
                        flow, fit["mtt"], fit["shape"], fit["delay"], sub.n, options.tr_s
                    ).astype(dt)
                )
