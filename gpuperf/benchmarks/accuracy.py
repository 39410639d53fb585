"""Method-accuracy benchmark: bias and spread of each method on phantoms with known truth.

DSC (``dsc_accuracy``)
    Tissue curves from :func:`gpuperf.dsc.simulate.tissue_curve` (indicator dilution with an
    exponential residue, so ``CBV = CBF * MTT / 60`` and ``Tmax = bolus delay``), turned into
    signal ``S = S0 exp(-TE dR2*)`` with Gaussian noise of SD ``S0 / SNR``, and fitted by
    ``DSCModel(method=...).fit(signal, aif=<noise-free AIF dR2*>)`` for sSVD, cSVD, oSVD and
    Tikhonov (GCV). TE is chosen so that the centre tissue curve dips 30 % at the bolus peak
    (:func:`dsc_te_s`), which gives SNR its usual meaning. Three sweeps, one factor at a time
    around CBF 60 ml/100g/min, MTT 4 s, delay 0 s, SNR 50 (TR 1.5 s, 60 frames):

    - ``delay``: bolus delay of the tissue relative to the AIF, 0-4 s (Wu et al., MRM 50:164,
      2003: sSVD's CBF depends on the delay; block-circulant methods should not);
    - ``snr``: 20-200;
    - ``mtt``: 2-12 s (short MTTs are under-resolved at TR 1.5 s: SVD underestimates CBF).

ASL (``asl_accuracy``)
    pCASL difference signals from the Buxton kinetic model (gpuperf's NumPy twin,
    ``t = tau + PLD``), PLDs 0.25-2.5 s (7), tau 1.8 s, with Gaussian noise of SD
    ``peak dM(CBF 60, ATT 1.2 s) / SNR``; fitted by ``ASLModel(method='gkm')``. The consensus
    single-PLD formula (Alsop et al., MRM 73:102, 2015) gets the same number of samples, all at
    PLD 1.8 s. Sweeps: ``snr`` 5-100 at ATT 1.2 s, and ``att`` 0.5-2.5 s at SNR 20.

osipy 0.1.4, when installed, is run on the very same noisy data (its oSVD on dR2*, and its
multi-PLD fit) and appears as methods ``osipy_osvd`` and ``osipy_gkm``.

Statistics per condition (``summarize``): errors of CBF/CBV/MTT in % of the truth, of Tmax
and ATT in seconds; mean and SD, and the robust median and quartiles (plotted); ``n_valid`` counts
finite estimates, and the statistics use those only (``n_valid`` says how many failed).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

#: DSC acquisition of the phantom.
DSC_TR_S = 1.5
#: Signal dip of the centre condition's tissue curve at the bolus peak. The echo time is set
#: to produce it (see :func:`dsc_te_s`): the phantom's concentration scale with TE 30 ms dips
#: grey matter by only ~4 %, which would make every SNR a contrast-to-noise ratio near 1.
DSC_PEAK_DROP = 0.30
DSC_FRAMES = 60
DSC_BASELINE = 5  # the AIF arrives at 8 s: frames 0-4 are pre-bolus
DSC_S0 = 1000.0
DSC_METHODS = ("ssvd", "csvd", "osvd", "tikhonov")
#: Centre of the DSC sweeps.
DSC_CENTRE = {"cbf": 60.0, "mtt_s": 4.0, "delay_s": 0.0, "snr": 50.0}
DSC_SWEEPS = {
    "delay": ("delay_s", (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)),
    "snr": ("snr", (20.0, 35.0, 50.0, 100.0, 200.0)),
    "mtt": ("mtt_s", (2.0, 3.0, 4.0, 6.0, 8.0, 12.0)),
}

#: ASL acquisition of the phantom (multi-PLD pCASL, single-PLD consensus at 1.8 s).
ASL_PLDS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
ASL_TAU_S = 1.8
ASL_SINGLE_PLD_S = 1.8
ASL_M0 = 1000.0
ASL_CENTRE = {"cbf": 60.0, "att_s": 1.2, "snr": 20.0}
ASL_SWEEPS = {
    "snr": ("snr", (5.0, 10.0, 20.0, 50.0, 100.0)),
    "att": ("att_s", (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)),
}

#: Quantities whose bias is reported in seconds rather than % of the truth.
ABSOLUTE = ("tmax", "att")

TSV_COLUMNS = (
    "modality",
    "method",
    "sweep",
    "condition",
    "value",
    "quantity",
    "unit",
    "truth",
    "mean",
    "median",
    "bias",
    "sd",
    "median_bias",
    "q25",
    "q75",
    "bias_unit",
    "n",
    "n_valid",
)


def summarize(estimates: np.ndarray, truth: float, absolute: bool = False) -> dict[str, Any]:
    """Bias and spread of ``estimates`` around ``truth``, classic and robust.

    Parameters
    ----------
    estimates : ndarray (n,)
        Non-finite values count as failures (excluded, reported through ``n_valid``).
    truth : float
    absolute : bool
        Errors in the quantity's unit (True) or in % of the truth (False).

    Returns
    -------
    dict
        ``mean``, ``median`` (in the quantity's unit); ``bias`` (mean error) and ``sd``;
        ``median_bias`` (median error) and ``q25``/``q75`` (quartiles of the error), robust
        against the few voxels where a ratio such as MTT = CBV/CBF explodes; all errors in
        ``bias_unit`` ('%' of the truth or 'abs'); ``n``, ``n_valid``.
    """
    est = np.asarray(estimates, dtype=np.float64).reshape(-1)
    ok = est[np.isfinite(est)]
    relative = not absolute and truth != 0
    out: dict[str, Any] = {"n": int(est.size), "n_valid": int(ok.size),
                           "bias_unit": "%" if relative else "abs"}  # fmt: skip
    keys = ("mean", "median", "bias", "sd", "median_bias", "q25", "q75")
    if ok.size == 0:
        return {**out, **{k: np.nan for k in keys}}
    err = ok - truth
    if relative:
        err = 100.0 * err / abs(truth)
    q25, q50, q75 = (float(v) for v in np.percentile(err, [25, 50, 75]))
    return {
        **out,
        "mean": float(ok.mean()),
        "median": float(np.median(ok)),
        "bias": float(err.mean()),
        "sd": float(err.std(ddof=1)) if err.size > 1 else 0.0,
        "median_bias": q50,
        "q25": q25,
        "q75": q75,
    }


def _conditions(
    sweeps: Mapping[str, tuple[str, Sequence[float]]], centre: Mapping[str, float]
) -> list[tuple[str, str, float, dict[str, float]]]:
    """(sweep, factor, value, full parameter set) for every condition, one factor at a time."""
    out = []
    for sweep, (factor, values) in sweeps.items():
        for value in values:
            params = dict(centre)
            params[factor] = float(value)
            out.append((sweep, factor, float(value), params))
    return out


# -- DSC ----------------------------------------------------------------------------------------
def dsc_phantom(
    voxels_per_condition: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, float, dict[str, float]]], np.ndarray]:
    """Noisy DSC signals for every condition of :data:`DSC_SWEEPS`.

    Returns
    -------
    signal : ndarray (C * n, T) float64
        Condition ``i`` occupies rows ``i*n .. (i+1)*n``.
    aif : ndarray (T,)
        Noise-free AIF dR2* (1/s).
    conditions : list of (sweep, factor, value, params)
    t_s : ndarray (T,)
    """
    from gpuperf.dsc.simulate import aif_curve, tissue_curve

    rng = np.random.default_rng(seed)
    t = np.arange(DSC_FRAMES) * DSC_TR_S
    conds = _conditions(DSC_SWEEPS, DSC_CENTRE)
    n = int(voxels_per_condition)
    signal = np.empty((len(conds) * n, DSC_FRAMES))
    for i, (_s, _f, _v, p) in enumerate(conds):  # a loop over conditions, not voxels
        dr2s = tissue_curve(t, p["cbf"], p["mtt_s"], p["delay_s"])
        clean = DSC_S0 * np.exp(-dsc_te_s() * dr2s)
        noise = rng.normal(0.0, DSC_S0 / p["snr"], (n, DSC_FRAMES))
        signal[i * n : (i + 1) * n] = np.abs(clean[None, :] + noise)
    return signal, aif_curve(t), conds, t


def dsc_truth(params: Mapping[str, float]) -> dict[str, float]:
    """True CBF (ml/100g/min), CBV (ml/100g), MTT (s) and Tmax (s) of a DSC condition."""
    return {
        "cbf": params["cbf"],
        "cbv": params["cbf"] * params["mtt_s"] / 60.0,
        "mtt": params["mtt_s"],
        "tmax": params["delay_s"],
    }


DSC_UNITS = {"cbf": "ml/100g/min", "cbv": "ml/100g", "mtt": "s", "tmax": "s"}


def dsc_te_s() -> float:
    """Echo time (s) at which the centre condition's tissue signal dips by DSC_PEAK_DROP."""
    from gpuperf.dsc.simulate import tissue_curve

    t = np.arange(DSC_FRAMES) * DSC_TR_S
    c = DSC_CENTRE
    peak = tissue_curve(t, c["cbf"], c["mtt_s"], c["delay_s"]).max()
    return float(-np.log1p(-DSC_PEAK_DROP) / peak)


def _osipy_dsc_maps(signal: np.ndarray, aif: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    from gpuperf.benchmarks.baselines import osipy_osvd

    # osipy takes dR2*: the same conversion gpuperf makes (S0 = mean of the pre-bolus frames)
    s0 = signal[:, :DSC_BASELINE].mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        dr2s = -np.log(signal / s0) / dsc_te_s()
    dr2s = np.where(np.isfinite(dr2s), dr2s, 0.0)
    return osipy_osvd(dr2s, aif, t)


def dsc_accuracy(
    voxels_per_condition: int = 500,
    methods: Iterable[str] = DSC_METHODS,
    seed: int = 0,
    device: str = "auto",
    include_osipy: bool = True,
) -> list[dict[str, Any]]:
    """Bias and spread of CBF, CBV, MTT, Tmax for each DSC method and condition.

    Parameters
    ----------
    voxels_per_condition : int
        Noisy replicates per condition.
    methods : iterable of str
        gpuperf ``DSCModel`` methods.
    seed : int
    device : {'auto', 'cpu', 'gpu'}
    include_osipy : bool
        Also run osipy 0.1.4's oSVD (method ``osipy_osvd``) when it is installed.

    Returns
    -------
    list of dict
        One row per (method, condition, quantity), keys :data:`TSV_COLUMNS`.
    """
    from gpuperf.benchmarks.baselines import osipy_version
    from gpuperf.dsc import DSCModel

    signal, aif, conds, t = dsc_phantom(voxels_per_condition, seed)
    n = int(voxels_per_condition)
    maps_by_method: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        model = DSCModel(
            te_s=dsc_te_s(), tr_s=DSC_TR_S, method=method, baseline=DSC_BASELINE, device=device
        )
        fit = model.fit(signal.astype(np.float32), aif=aif)
        maps_by_method[method] = {q: np.asarray(getattr(fit, q)) for q in DSC_UNITS}
    if include_osipy and osipy_version() is not None:
        maps_by_method["osipy_osvd"] = _osipy_dsc_maps(signal, aif, t)
    rows = []
    for method, maps in maps_by_method.items():
        for i, (sweep, factor, value, params) in enumerate(conds):
            truth = dsc_truth(params)
            for q, unit in DSC_UNITS.items():
                est = maps[q][i * n : (i + 1) * n]
                stats = summarize(est, truth[q], absolute=q in ABSOLUTE)
                rows.append({"modality": "dsc", "method": method, "sweep": sweep,
                             "condition": factor, "value": value, "quantity": q, "unit": unit,
                             "truth": truth[q], **stats})  # fmt: skip
    return rows


# -- DSC on realistic physiology (residue shapes, recirculation, delays) ----------------------
#: Methods of the physiology grid: the model-based fit beside the SVD family.
PHYSIO_METHODS = ("parametric", "osvd", "csvd", "ssvd")
PHYSIO_SHAPES = ("exponential", "gamma", "box", "lognormal")
PHYSIO_CBF = (20.0, 40.0, 60.0)
PHYSIO_MTT_S = (4.0, 6.0, 8.0, 10.0, 12.0)
PHYSIO_DELAYS_S = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
#: AIF of the grid (and of its tissue curves): second pass 25 % of the first, plateau 5 %.
PHYSIO_AIF = {"recirculation": 0.25, "steady_state": 0.05}
#: Noise levels (None: noise-free) and noisy replicates per (shape, CBF, MTT, delay).
PHYSIO_SNRS = (None, 100.0)
PHYSIO_REPLICATES = 10
#: Accuracy targets of issue #11 (|median CBF error| per CBF x MTT cell, over all delays).
PHYSIO_TARGETS = {
    None: {"exponential": 10.0, "gamma": 10.0, "box": 10.0, "lognormal": 15.0},
    100.0: {"exponential": 25.0, "gamma": 25.0, "box": 25.0, "lognormal": 25.0},
}
PHYSIO_COLUMNS = (
    "method", "residue", "snr", "cbf", "mtt_s", "n", "n_valid", "cbf_median_bias",
    "cbf_q25", "cbf_q75", "cbv_median_bias", "mtt_median_bias",
)  # fmt: skip


def dsc_physiology_phantom(
    snr: float | None, replicates: int = 1, seed: int = 0, shapes: Sequence[str] = PHYSIO_SHAPES
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float, float, float]]]:
    """Signals of the physiology grid: every residue shape x CBF x MTT x delay.

    Tissue curves: :func:`gpuperf.dsc.simulate.tissue_curve` with the residue shape and the
    recirculating AIF :data:`PHYSIO_AIF`; signal ``S0 exp(-TE dR2*)`` (TE of
    :func:`dsc_te_s`) plus Gaussian noise of SD ``S0 / snr`` (magnitude), ``replicates``
    rows per condition (1 when noise-free).

    Returns
    -------
    signal (C * replicates, T), the measured AIF dR2* (T,), conditions (shape, cbf, mtt, delay).
    """
    from gpuperf.dsc.simulate import aif_curve, tissue_curve

    t = np.arange(DSC_FRAMES) * DSC_TR_S
    reps = 1 if snr is None else int(replicates)
    conds = [(sh, f, m, d) for sh in shapes for f in PHYSIO_CBF for m in PHYSIO_MTT_S
             for d in PHYSIO_DELAYS_S]  # fmt: skip
    te = dsc_te_s()
    rng = np.random.default_rng(seed)
    signal = np.empty((len(conds) * reps, DSC_FRAMES))
    for i, (sh, f, m, d) in enumerate(conds):  # a loop over conditions, not voxels
        clean = DSC_S0 * np.exp(-te * tissue_curve(t, f, m, d, residue=sh, **PHYSIO_AIF))
        rows = np.repeat(clean[None, :], reps, axis=0)
        if snr is not None:
            rows = np.abs(rows + rng.normal(0.0, DSC_S0 / snr, rows.shape))
        signal[i * reps : (i + 1) * reps] = rows
    return signal, aif_curve(t, **PHYSIO_AIF), conds


def dsc_physiology_accuracy(
    methods: Iterable[str] = PHYSIO_METHODS,
    snrs: Sequence[float | None] = PHYSIO_SNRS,
    replicates: int = PHYSIO_REPLICATES,
    seed: int = 0,
    device: str = "auto",
    shapes: Sequence[str] = PHYSIO_SHAPES,
) -> list[dict[str, Any]]:
    """Median CBF/CBV/MTT error per (method, residue shape, SNR, CBF, MTT) cell, over delays.

    The grid of issue #11: residue shapes exponential, gamma (shape 3), box and lognormal,
    CBF 20-60 ml/100g/min, MTT 4-12 s, bolus delays -2 to +3 s, TR 1.5 s, a recirculating
    AIF, noise-free and SNR 100 (``replicates`` noisy rows per condition). Each method fits the
    signals through ``DSCModel.fit`` with the measured (noise-free) AIF. Errors in %.

    Returns
    -------
    list of dict, keys :data:`PHYSIO_COLUMNS` (``snr`` None when noise-free).
    """
    from gpuperf.dsc import DSCModel

    rows: list[dict[str, Any]] = []
    for snr in snrs:
        signal, aif, conds = dsc_physiology_phantom(snr, replicates, seed, shapes)
        reps = signal.shape[0] // len(conds)
        for method in methods:
            model = DSCModel(te_s=dsc_te_s(), tr_s=DSC_TR_S, method=method,
                             baseline=DSC_BASELINE, device=device)  # fmt: skip
            fit = model.fit(signal.astype(np.float32), aif=aif)
            est = {q: np.asarray(getattr(fit, q), np.float64).reshape(len(conds), reps)
                   for q in ("cbf", "cbv", "mtt")}  # fmt: skip
            for sh in shapes:
                for f in PHYSIO_CBF:
                    for m in PHYSIO_MTT_S:
                        sel = [i for i, c in enumerate(conds) if c[:3] == (sh, f, m)]
                        truth = {"cbf": f, "cbv": f * m / 60.0, "mtt": m}
                        err = {q: 100.0 * (est[q][sel].reshape(-1) / truth[q] - 1.0)
                               for q in truth}  # fmt: skip
                        ok = np.isfinite(err["cbf"])
                        q25, q50, q75 = (np.percentile(err["cbf"][ok], [25, 50, 75])
                                         if ok.any() else (np.nan,) * 3)  # fmt: skip
                        rows.append({
                            "method": method, "residue": sh, "snr": snr, "cbf": f, "mtt_s": m,
                            "n": int(ok.size), "n_valid": int(ok.sum()),
                            "cbf_median_bias": float(q50), "cbf_q25": float(q25),
                            "cbf_q75": float(q75),
                            "cbv_median_bias": float(np.nanmedian(err["cbv"])),
                            "mtt_median_bias": float(np.nanmedian(err["mtt"])),
                        })  # fmt: skip
    return rows


def physiology_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Worst |median CBF error| over the CBF x MTT cells per (method, residue, SNR), against
    the targets :data:`PHYSIO_TARGETS`."""
    out = []
    keys = dict.fromkeys((r["method"], r["residue"], r["snr"]) for r in rows)
    for method, sh, snr in keys:
        cells = [r for r in rows if (r["method"], r["residue"], r["snr"]) == (method, sh, snr)]
        worst = max(cells, key=lambda r: abs(r["cbf_median_bias"]))
        target = PHYSIO_TARGETS.get(snr, {}).get(sh)
        out.append({"method": method, "residue": sh, "snr": snr,
                    "worst_cbf_median_bias": worst["cbf_median_bias"],
                    "worst_cell": {"cbf": worst["cbf"], "mtt_s": worst["mtt_s"]},
                    "median_cbf_bias": float(np.median([r["cbf_median_bias"] for r in cells])),
                    "target_pct": target,
                    "meets_target": None if target is None
                    else bool(abs(worst["cbf_median_bias"]) <= target)})  # fmt: skip
    return out


def physiology_table(items: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`physiology_summary` (for docs/dsc.md)."""
    lines = ["| method | residue | SNR | worst cell median CBF error | median over cells | "
             "target | met |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for h in items:
        snr = "noise-free" if h["snr"] is None else f"{h['snr']:g}"
        tgt = "" if h["target_pct"] is None else f"±{h['target_pct']:g} %"
        met = {None: "", True: "yes", False: "**no**"}[h["meets_target"]]
        lines.append(f"| {h['method']} | {h['residue']} | {snr} | "
                     f"{h['worst_cbf_median_bias']:+.1f} % | {h['median_cbf_bias']:+.1f} % | "
                     f"{tgt} | {met} |")  # fmt: skip
    return "\n".join(lines)


# -- ASL ----------------------------------------------------------------------------------------
def _asl_consts() -> np.ndarray:
    from gpuperf.asl import constants as K

    return np.array([K.T1_TISSUE_S, 1.65, K.LAMBDA_ML_G, K.ALPHA_BY_TYPE["PCASL"]])


def _buxton(cbf: float, att: float, pld_s: Sequence[float]) -> np.ndarray:
    from gpuperf.fit.models.buxton import BUXTON_PCASL

    pld = np.asarray(pld_s, dtype=np.float64)
    x = np.stack([ASL_TAU_S + pld, np.full(pld.size, ASL_TAU_S)], axis=1)
    return BUXTON_PCASL.evaluate(np, np.array([[cbf, att]]), x, _asl_consts())[0][0]


def asl_phantom(
    voxels_per_condition: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, float, dict[str, float]]]]:
    """Noisy multi-PLD and single-PLD dM (signal units, M0 = 1000) for every ASL condition.

    Returns
    -------
    multi : ndarray (C * n, 7)
        At :data:`ASL_PLDS_S`.
    single : ndarray (C * n, 7)
        Seven repeats at :data:`ASL_SINGLE_PLD_S` (same scan time as ``multi``).
    conditions : list of (sweep, factor, value, params)
    """
    rng = np.random.default_rng(seed)
    conds = _conditions(ASL_SWEEPS, ASL_CENTRE)
    k = len(ASL_PLDS_S)
    n = int(voxels_per_condition)
    peak = ASL_M0 * _buxton(ASL_CENTRE["cbf"], ASL_CENTRE["att_s"], ASL_PLDS_S).max()
    multi = np.empty((len(conds) * n, k))
    single = np.empty((len(conds) * n, k))
    for i, (_s, _f, _v, p) in enumerate(conds):  # a loop over conditions, not voxels
        sd = peak / p["snr"]
        rows = slice(i * n, (i + 1) * n)
        clean_multi = ASL_M0 * _buxton(p["cbf"], p["att_s"], ASL_PLDS_S)
        clean_single = ASL_M0 * _buxton(p["cbf"], p["att_s"], [ASL_SINGLE_PLD_S] * k)
        multi[rows] = clean_multi[None, :] + rng.normal(0.0, sd, (n, k))
        single[rows] = clean_single[None, :] + rng.normal(0.0, sd, (n, k))
    return multi, single, conds


ASL_UNITS = {"cbf": "ml/100g/min", "att": "s"}


def asl_accuracy(
    voxels_per_condition: int = 500,
    seed: int = 0,
    device: str = "auto",
    include_osipy: bool = True,
) -> list[dict[str, Any]]:
    """Bias and spread of CBF/ATT for the kinetic-model fit and the consensus formula.

    Methods: ``gkm`` (multi-PLD Buxton fit), ``consensus`` (single-PLD formula at 1.8 s, CBF
    only) and, when installed, ``osipy_gkm`` (osipy 0.1.4's multi-PLD fit on the same data).
    Returns rows with keys :data:`TSV_COLUMNS`.
    """
    from gpuperf.asl import ASLModel
    from gpuperf.benchmarks.baselines import osipy_asl_fit, osipy_version

    multi, single, conds = asl_phantom(voxels_per_condition, seed)
    n = int(voxels_per_condition)
    k = len(ASL_PLDS_S)
    maps_by_method: dict[str, dict[str, np.ndarray]] = {}
    gkm = ASLModel("PCASL", ASL_PLDS_S, ASL_TAU_S, method="gkm", device=device)
    fit = gkm.fit(multi, ASL_M0)
    maps_by_method["gkm"] = {"cbf": np.asarray(fit.cbf), "att": np.asarray(fit.att)}
    wp = ASLModel("PCASL", [ASL_SINGLE_PLD_S] * k, ASL_TAU_S, method="whitepaper", device=device)
    maps_by_method["consensus"] = {"cbf": np.asarray(wp.fit(single, ASL_M0).cbf)}
    if include_osipy and osipy_version() is not None:
        c = _asl_consts()
        maps_by_method["osipy_gkm"] = osipy_asl_fit(
            multi, ASL_M0, ASL_PLDS_S, ASL_TAU_S,
            t1_tissue_s=c[0], t1_blood_s=c[1], lambda_=c[2], alpha=c[3],
        )  # fmt: skip
    rows = []
    for method, maps in maps_by_method.items():
        for i, (sweep, factor, value, params) in enumerate(conds):
            truth = {"cbf": params["cbf"], "att": params["att_s"]}
            for q, est_all in maps.items():
                stats = summarize(est_all[i * n : (i + 1) * n], truth[q], absolute=q in ABSOLUTE)
                rows.append({"modality": "asl", "method": method, "sweep": sweep,
                             "condition": factor, "value": value, "quantity": q,
                             "unit": ASL_UNITS[q], "truth": truth[q], **stats})  # fmt: skip
    return rows


# -- ASL 2D slice timing -----------------------------------------------------------------------
#: Readout delays of the slices of the 2D phantom (s): a 2D EPI readout of ~20-25 slices spans
#: 0.7-1.0 s (bids-examples asl002: 0-0.73 s, asl004: 0-1.04 s, 2d_mb_pcasl: 0-0.53 s).
ASL_SLICE_TIMES_S = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9)


def asl_slice_timing_accuracy(
    voxels_per_condition: int = 500, seed: int = 0, device: str = "auto"
) -> list[dict[str, Any]]:
    """CBF/ATT bias per slice of a 2D readout, slice timing honoured vs ignored (sweep ``slice``).

    The phantom of :func:`asl_phantom` at its centre (CBF 60, ATT 1.2 s, SNR 20), with every
    sample of slice k read ``SliceTiming[k]`` (:data:`ASL_SLICE_TIMES_S`) later: effective delay
    PLD + SliceTiming[k]. Methods ``gkm_2d`` / ``consensus_2d`` pass the slice times
    (``ASLModel.fit(time_offset_s=...)``); ``gkm_2d_ignored`` / ``consensus_2d_ignored`` fit
    the same data at the nominal PLDs (the behaviour before issue #10, and of tools that drop
    ``SliceTiming``). Returns rows with keys :data:`TSV_COLUMNS`.
    """
    from gpuperf.asl import ASLModel
    from gpuperf.fit.models.buxton import BUXTON_PCASL, slice_timed

    rng = np.random.default_rng(seed + 10)
    n = int(voxels_per_condition)
    k = len(ASL_PLDS_S)
    c = ASL_CENTRE
    peak = ASL_M0 * _buxton(c["cbf"], c["att_s"], ASL_PLDS_S).max()
    sd = peak / c["snr"]
    dt = np.repeat(np.asarray(ASL_SLICE_TIMES_S, dtype=np.float64), n)
    truth_p = np.column_stack([np.full(dt.size, c["cbf"]), np.full(dt.size, c["att_s"]), dt])
    model = slice_timed(BUXTON_PCASL)
    data = {}
    for name, plds in (("gkm", ASL_PLDS_S), ("consensus", [ASL_SINGLE_PLD_S] * k)):
        x = np.stack([ASL_TAU_S + np.asarray(plds), np.full(k, ASL_TAU_S)], axis=1)
        clean = ASL_M0 * model.evaluate(np, truth_p, x, _asl_consts())[0]
        data[name] = clean + rng.normal(0.0, sd, clean.shape)
    gkm = ASLModel("PCASL", ASL_PLDS_S, ASL_TAU_S, method="gkm", device=device)
    wp = ASLModel("PCASL", [ASL_SINGLE_PLD_S] * k, ASL_TAU_S, method="whitepaper", device=device)
    maps: dict[str, dict[str, np.ndarray]] = {}
    for suffix, off in (("_2d", dt), ("_2d_ignored", None)):
        f = gkm.fit(data["gkm"], ASL_M0, time_offset_s=off)
        maps["gkm" + suffix] = {"cbf": np.asarray(f.cbf), "att": np.asarray(f.att)}
        maps["consensus" + suffix] = {
            "cbf": np.asarray(wp.fit(data["consensus"], ASL_M0, time_offset_s=off).cbf)
        }
    rows = []
    truth = {"cbf": c["cbf"], "att": c["att_s"]}
    for method, m in maps.items():
        for i, v in enumerate(ASL_SLICE_TIMES_S):
            for q, est in m.items():
                stats = summarize(est[i * n : (i + 1) * n], truth[q], absolute=q in ABSOLUTE)
                rows.append({"modality": "asl", "method": method, "sweep": "slice",
                             "condition": "slice_time_s", "value": float(v), "quantity": q,
                             "unit": ASL_UNITS[q], "truth": truth[q], **stats})  # fmt: skip
    return rows


# -- osipy -----------------------------------------------------------------------------------------
OSIPY_DELAYS_S = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
OSIPY_ATTS_S = (0.5, 1.0, 1.5, 2.0, 2.5)
OSIPY_ASL_CBF = 45.0


def osipy_checks(device: str = "cpu") -> list[dict[str, Any]]:
    """Noise-free checks of osipy 0.1.4 against the truth and gpuperf (empty without osipy).

    DSC delay test (CBF 60 ml/100g/min, MTT 4 s, delays 0-4 s): CBF from osipy's oSVD, cSVD
    and sSVD and from gpuperf's oSVD and cSVD. osipy's CBF omits kH, so ``osipy_*_x_kh`` rows
    multiply it by kH = 0.733 to compare like with like. ASL (CBF 45, ATT 0.5-2.5 s): CBF and
    ATT from osipy's multi-PLD fit and gpuperf's kinetic-model fit.

    Returns
    -------
    list of dict
        ``modality, test, value, method, quantity, truth, estimate, error_pct`` (``error`` in s
        for ATT).
    """
    from gpuperf.asl import ASLModel
    from gpuperf.benchmarks.baselines import KH, osipy_asl_fit, osipy_osvd, osipy_version
    from gpuperf.dsc import DSCModel
    from gpuperf.dsc.simulate import aif_curve, tissue_curve

    if osipy_version() is None:
        return []
    rows: list[dict[str, Any]] = []

    def add(modality, test, value, method, quantity, truth, estimate):
        err = estimate - truth if quantity == "att" else 100.0 * (estimate - truth) / truth
        unit = "s" if quantity == "att" else "%"
        rows.append({"modality": modality, "test": test, "value": value, "method": method,
                     "quantity": quantity, "truth": truth, "estimate": float(estimate),
                     "error": float(err), "error_unit": unit})  # fmt: skip

    t = np.arange(DSC_FRAMES) * DSC_TR_S
    aif = aif_curve(t)
    curves = np.stack([tissue_curve(t, 60.0, 4.0, d) for d in OSIPY_DELAYS_S])
    gp = {}
    for m in ("osvd", "csvd"):
        model = DSCModel(te_s=0.03, tr_s=DSC_TR_S, method=m, device=device)  # TE unused here
        gp[m] = np.asarray(model.fit_concentration(curves, aif).cbf, dtype=np.float64)
    osipy = {m: osipy_osvd(curves, aif, t, method=m)["cbf"] for m in ("oSVD", "cSVD", "sSVD")}
    for i, d in enumerate(OSIPY_DELAYS_S):
        for m, v in gp.items():
            add("dsc", "delay_s", d, f"gpuperf_{m}", "cbf", 60.0, v[i])
        for m, v in osipy.items():
            add("dsc", "delay_s", d, f"osipy_{m.lower()}", "cbf", 60.0, v[i])
            add("dsc", "delay_s", d, f"osipy_{m.lower()}_x_kh", "cbf", 60.0, KH * v[i])

    # CBF 45, not osipy's starting value 60: where its model predicts no signal at any PLD
    # (ATT beyond the last PLD) its fit stays at the start, which must not look right.
    dm = np.stack([ASL_M0 * _buxton(OSIPY_ASL_CBF, a, ASL_PLDS_S) for a in OSIPY_ATTS_S])
    o = osipy_asl_fit(dm, ASL_M0, ASL_PLDS_S, ASL_TAU_S, t1_tissue_s=_asl_consts()[0],
                      t1_blood_s=_asl_consts()[1], lambda_=_asl_consts()[2],
                      alpha=_asl_consts()[3])  # fmt: skip
    g = ASLModel("PCASL", ASL_PLDS_S, ASL_TAU_S, method="gkm", device=device).fit(dm, ASL_M0)
    for i, a in enumerate(OSIPY_ATTS_S):
        add("asl", "att_s", a, "osipy_gkm", "cbf", OSIPY_ASL_CBF, o["cbf"][i])
        add("asl", "att_s", a, "osipy_gkm", "att", a, o["att"][i])
        add("asl", "att_s", a, "gpuperf_gkm", "cbf", OSIPY_ASL_CBF, float(g.cbf[i]))
        add("asl", "att_s", a, "gpuperf_gkm", "att", a, float(g.att[i]))
    return rows


def osipy_findings(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Headline numbers from :func:`osipy_checks` (ranges of the error over each test)."""

    def rng(method: str, quantity: str = "cbf") -> list[float] | None:
        e = [r["error"] for r in rows if r["method"] == method and r["quantity"] == quantity]
        return [round(min(e), 2), round(max(e), 2)] if e else None

    same = [
        abs(a["estimate"] - b["estimate"])
        for a in rows
        if a["method"] == "osipy_csvd"
        for b in rows
        if b["method"] == "osipy_ssvd" and b["value"] == a["value"]
    ]
    return {
        "dsc_cbf_error_pct_range_over_delays_0_4s": {
            m: rng(m)
            for m in (
                "gpuperf_osvd",
                "gpuperf_csvd",
                "osipy_osvd",
                "osipy_osvd_x_kh",
                "osipy_csvd_x_kh",
                "osipy_ssvd_x_kh",
            )  # fmt: skip
        },
        "osipy_csvd_minus_ssvd_max_abs": max(same) if same else None,
        "asl_cbf_error_pct_range_over_att_0p5_2p5s": {
            m: rng(m) for m in ("osipy_gkm", "gpuperf_gkm")
        },
        "asl_att_error_s_range": {m: rng(m, "att") for m in ("osipy_gkm", "gpuperf_gkm")},
    }


# -- plots and the run ---------------------------------------------------------------------------
SWEEP_LABELS = {
    ("dsc", "delay"): "bolus delay of tissue after the AIF (s)",
    ("dsc", "snr"): "SNR of the baseline signal",
    ("dsc", "mtt"): "true MTT (s)",
    ("asl", "snr"): "SNR (peak dM of CBF 60, ATT 1.2 s / noise SD)",
    ("asl", "att"): "true ATT (s)",
}


def plot_sweep(rows: Sequence[Mapping[str, Any]], modality: str, sweep: str, path: Path) -> None:
    """One PNG: a panel per quantity, error vs the swept factor, one line per method.

    Points are the median error and bars span the interquartile range: robust summaries, so
    that the few voxels where a ratio (MTT = CBV/CBF) explodes do not hide everything else.
    Means and SDs are in the TSV.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["modality"] == modality and r["sweep"] == sweep]
    quantities = list(dict.fromkeys(r["quantity"] for r in sel))
    methods = list(dict.fromkeys(r["method"] for r in sel))
    fig, axes = plt.subplots(
        1, len(quantities), figsize=(4.2 * len(quantities), 3.8), squeeze=False
    )
    for ax, q in zip(axes[0], quantities, strict=True):
        unit = "% of truth"
        for j, m in enumerate(methods):
            pts = [r for r in sel if r["quantity"] == q and r["method"] == m]
            if not pts:
                continue
            if pts[0]["bias_unit"] == "abs":
                unit = pts[0]["unit"]
            x = np.array([r["value"] for r in pts])
            med = np.array([r["median_bias"] for r in pts])
            lo = med - np.array([r["q25"] for r in pts])
            hi = np.array([r["q75"] for r in pts]) - med
            # small horizontal offsets keep overlapping error bars readable
            span = x.max() - x.min() if x.size > 1 else 1.0
            if sweep == "snr":
                xs = x * (1.0 + 0.02 * (j - (len(methods) - 1) / 2))
            else:
                xs = x + (j - (len(methods) - 1) / 2) * 0.012 * span
            # one colour per method in every panel (a method may lack a quantity, e.g. ATT)
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", ms=3, capsize=2, label=m,
                        color=f"C{j}")  # fmt: skip
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_title(f"{q.upper()} error")
        ax.set_ylabel(f"median error, IQR bars ({unit})")
        ax.set_xlabel(SWEEP_LABELS.get((modality, sweep), sweep))
        if sweep == "snr":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:  # the legend of the panel with most methods
        h, lab = ax.get_legend_handles_labels()
        if len(lab) > len(labels):
            handles, labels = h, lab
    axes[0][0].legend(handles, labels, fontsize=8)
    n = sel[0]["n"] if sel else 0
    fig.suptitle(
        f"{modality.upper()} accuracy vs {sweep}: error of {n} noisy voxels per point "
        "(median, bars: 25th-75th percentile); other factors at their centre values",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_accuracy(
    out_dir: str | PathLike,
    *,
    voxels_per_condition: int = 500,
    seed: int = 0,
    device: str = "auto",
    include_osipy: bool = True,
    overwrite: bool = False,
    console: Any = None,
    physiology_replicates: int | None = None,
) -> dict[str, Any]:
    """Run the DSC and ASL accuracy benchmarks and write TSV + PNG + JSON summary.

    Writes into ``out_dir`` (atomically, :class:`gpuperf.io.outputs.OutputWriter`):
    ``accuracy_dsc.tsv``, ``accuracy_asl.tsv``, ``accuracy_<modality>_<sweep>.png`` and
    ``accuracy_summary.json`` (settings, versions, headline numbers).

    Parameters
    ----------
    out_dir : path-like
    voxels_per_condition : int
        Noisy replicates per condition (500: about 10 s on two CPU cores).
    seed : int
    device : {'auto', 'cpu', 'gpu'}
    include_osipy : bool
        Add osipy 0.1.4 when installed.
    overwrite : bool
    console : rich Console, optional
        Prints progress and a headline table.
    physiology_replicates : int, optional
        Noisy rows per condition of the DSC physiology grid (``accuracy_dsc_physiology.tsv``,
        :func:`dsc_physiology_accuracy`); 0 leaves the grid out. Default:
        :data:`PHYSIO_REPLICATES` when ``voxels_per_condition >= 100`` (a full run), else 0
        (smoke runs with a handful of voxels).

    Returns
    -------
    dict
        The summary written to ``accuracy_summary.json`` plus ``files``.
    """
    from gpuperf.backend import get_backend
    from gpuperf.benchmarks.baselines import osipy_version
    from gpuperf.io.outputs import OutputWriter
    from gpuperf.provenance import provenance

    t0 = time.perf_counter()
    if physiology_replicates is None:
        physiology_replicates = PHYSIO_REPLICATES if voxels_per_condition >= 100 else 0
    backend = get_backend(device)
    say = console.print if console is not None else (lambda *a, **k: None)
    settings = {
        "voxels_per_condition": voxels_per_condition, "seed": seed,
        "dsc": {"tr_s": DSC_TR_S, "te_s": round(dsc_te_s(), 4), "frames": DSC_FRAMES,
                "baseline_frames": DSC_BASELINE, "centre": DSC_CENTRE,
                "sweeps": {k: list(v[1]) for k, v in DSC_SWEEPS.items()},
                "aif": "noise-free gamma-variate (gpuperf.dsc.simulate.aif_curve)",
                "peak_tissue_signal_drop_at_centre": DSC_PEAK_DROP,
                "noise": "Gaussian, SD = S0 / SNR, magnitude"},
        "asl": {"plds_s": ASL_PLDS_S, "tau_s": ASL_TAU_S, "single_pld_s": ASL_SINGLE_PLD_S,
                "centre": ASL_CENTRE, "sweeps": {k: list(v[1]) for k, v in ASL_SWEEPS.items()},
                "noise": "Gaussian, SD = peak dM(CBF 60, ATT 1.2 s) / SNR"},
        "osipy": osipy_version() if include_osipy else None,
    }  # fmt: skip
    writer = OutputWriter(
        out_dir,
        "accuracy",
        provenance=provenance(backend, settings),
        overwrite=overwrite,
    )
    expected = ["dsc.tsv", "asl.tsv", "summary.json"]
    expected += [f"dsc_{s}.png" for s in DSC_SWEEPS] + [f"asl_{s}.png" for s in ASL_SWEEPS]
    expected.append("asl_slice.png")
    if settings["osipy"]:
        expected.append("osipy.tsv")
    if physiology_replicates > 0:
        expected.append("dsc_physiology.tsv")
    writer.expect(expected, ext="")
    say("DSC accuracy (sSVD, cSVD, oSVD, Tikhonov" + (", osipy" if settings["osipy"] else "")
        + f"; {voxels_per_condition} voxels per condition) ...", highlight=False)  # fmt: skip
    dsc_rows = dsc_accuracy(voxels_per_condition, seed=seed, device=device,
                            include_osipy=include_osipy)  # fmt: skip
    say("ASL accuracy (kinetic model, consensus formula) ...", highlight=False)
    asl_rows = asl_accuracy(voxels_per_condition, seed=seed, device=device,
                            include_osipy=include_osipy)  # fmt: skip
    asl_rows += asl_slice_timing_accuracy(voxels_per_condition, seed=seed, device=device)
    osipy_rows = osipy_checks(device) if settings["osipy"] else []
    physio_rows: list[dict[str, Any]] = []
    if physiology_replicates > 0:
        say("DSC on realistic physiology (parametric and SVD; residue shapes, recirculation, "
            "delays) ...", highlight=False)  # fmt: skip
        physio_rows = dsc_physiology_accuracy(replicates=physiology_replicates, seed=seed,
                                              device=device)  # fmt: skip
    with writer:
        for name, rows in (("dsc", dsc_rows), ("asl", asl_rows)):
            writer.add_tsv(name, {c: [r[c] for r in rows] for c in TSV_COLUMNS})
        if osipy_rows:
            writer.add_tsv("osipy", {c: [r[c] for r in osipy_rows] for c in osipy_rows[0]})
        if physio_rows:
            writer.add_tsv("dsc_physiology", {c: ["" if r[c] is None else r[c]
                                                  for r in physio_rows]
                                              for c in PHYSIO_COLUMNS})  # fmt: skip
        for s in DSC_SWEEPS:
            writer.add_file(f"dsc_{s}", lambda p, s=s: plot_sweep(dsc_rows, "dsc", s, p), ".png")
        for s in (*ASL_SWEEPS, "slice"):
            writer.add_file(f"asl_{s}", lambda p, s=s: plot_sweep(asl_rows, "asl", s, p), ".png")
        summary = {"Description": "gpuperf method-accuracy benchmark (see TSV columns: bias "
                   "and sd are % of the truth, or seconds for tmax)",
                   "Headline": headline(dsc_rows + asl_rows)}  # fmt: skip
        if physio_rows:
            summary["DSCPhysiology"] = physiology_summary(physio_rows)
        if osipy_rows:
            summary["OsipyVersion"] = settings["osipy"]
            summary["OsipyFindings"] = osipy_findings(osipy_rows)
        writer.add_json("summary", summary, with_provenance=True)
        files = writer.commit(elapsed_s=time.perf_counter() - t0)
    if console is not None:
        console.print(headline_table(summary["Headline"]))
        if "OsipyFindings" in summary:
            import json

            findings = json.dumps(summary["OsipyFindings"], indent=1)
            console.print(f"osipy {settings['osipy']} (noise-free checks): {findings}",
                          highlight=False)  # fmt: skip
        console.print(f"wrote {len(files)} files under {out_dir}", highlight=False)
    return {**summary, "Settings": settings, "files": [str(f) for f in files],
            "elapsed_s": time.perf_counter() - t0}  # fmt: skip


def headline(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Key numbers: CBF bias per method at the sweep ends (DSC delay 0/3 s, ASL ATT 0.5/2.5 s)."""
    picks = [("dsc", "delay", 0.0), ("dsc", "delay", 3.0), ("dsc", "snr", 20.0),
             ("asl", "att", 0.5), ("asl", "att", 2.5), ("asl", "snr", 5.0)]  # fmt: skip
    out = []
    for modality, sweep, value in picks:
        for r in rows:
            if (r["modality"], r["sweep"], r["value"], r["quantity"]) == (
                modality, sweep, value, "cbf"
            ):  # fmt: skip
                out.append({"modality": modality, "method": r["method"],
                            "condition": f"{r['condition']}={value:g}", "truth": r["truth"],
                            "cbf_bias_pct": r["bias"], "cbf_sd_pct": r["sd"],
                            "cbf_median_bias_pct": r["median_bias"],
                            "n_valid": r["n_valid"], "n": r["n"]})  # fmt: skip
    return out


def headline_table(items: Sequence[Mapping[str, Any]]):
    """Rich table of :func:`headline`."""
    from rich.table import Table

    table = Table(title="CBF bias and spread (% of truth)")
    num = ("mean bias %", "SD %", "median bias %", "valid")
    for c in ("modality", "condition", "method", *num):
        table.add_column(c, justify="right" if c in num else "left")
    for h in items:
        table.add_row(h["modality"], h["condition"], h["method"], f"{h['cbf_bias_pct']:+.1f}",
                      f"{h['cbf_sd_pct']:.1f}", f"{h['cbf_median_bias_pct']:+.1f}",
                      f"{h['n_valid']}/{h['n']}")  # fmt: skip
    return table
