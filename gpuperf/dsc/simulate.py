"""A small DSC phantom with known truth, written as NIfTI + BIDS-style sidecar.

Tissue curves follow the indicator-dilution model ``C_t = (rho/kH) F (C_a(t - delay) conv R)``
with an exponential residue ``R(t) = exp(-t / MTT)`` (so ``CBV = CBF * MTT / 60``); the AIF is
a gamma-variate. The brain is an ellipsoid split into four perfusion regions (x) and four bolus
delays 0, 1, 2, 3 s (y); two blocks leak contrast (BSW model, one K2 > 0, one K2 < 0); a column
of voxels is pure artery (for the automatic AIF). The signal is
``S = S0 exp(-TE dR2*) + noise``.

For accuracy studies (:mod:`gpuperf.benchmarks.accuracy`) :func:`tissue_curve` also offers the
residue shapes of realistic transit-time distributions (:data:`RESIDUE_SHAPES`: exponential,
gamma of shape 3, box = plug flow, lognormal), an AIF with recirculation (a dispersed second
pass and a slow steady-state term, :func:`aif_curve`) and bolus dispersion between the
measured artery and the tissue (an exponential vascular transport function, Calamante et al.,
MRM 44:466, 2000).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.dsc.aif import gamma_variate
from gpuperf.dsc.leakage import cumulative_integral
from gpuperf.dsc.options import KH_DEFAULT, RHO_DEFAULT

#: (CBF ml/100g/min, MTT s) of the four regions along x.
REGIONS = ((60.0, 4.0), (25.0, 4.8), (40.0, 6.0), (15.0, 8.0))
#: Bolus delays (s) of the four bands along y.
DELAYS_S = (0.0, 1.0, 2.0, 3.0)
#: AIF gamma-variate (A, t0 s, a, b s): peak dR2* about 40 1/s.
AIF_PARAMS = (40.0 / (3.0 * 1.5) ** 3 / np.exp(-3.0), 8.0, 3.0, 1.5)
#: K2 (1/s) of the two leaky blocks.
K2_VALUES = (0.01, -0.01)
S0_BRAIN = 1000.0
S0_BACKGROUND = 20.0


#: Residue shapes of :func:`residue_function` (the transit-time distribution they come from).
RESIDUE_SHAPES = ("exponential", "gamma", "box", "lognormal")
#: Shape of the "gamma" residue's transit-time distribution (CTH = MTT / sqrt(3)).
GAMMA_RESIDUE_SHAPE = 3.0
#: Log-SD of the "lognormal" transit-time distribution: the coefficient of variation of the
#: "gamma" one (1/sqrt(3)), sqrt(ln(1 + CV^2)) = 0.536; only the shape differs (a later,
#: steeper fall and a heavier tail).
LOGNORMAL_SIGMA = float(np.sqrt(np.log(1.0 + 1.0 / GAMMA_RESIDUE_SHAPE)))
#: Recirculation: second pass delay (s) after the first, its dispersion (s), and the time
#: constant (s) of the steady-state term (fractions are arguments of :func:`aif_curve`).
RECIRCULATION_DELAY_S = 9.0
RECIRCULATION_DISPERSION_S = 3.0
STEADY_STATE_TIME_S = 12.0


def _first_pass(t_s: np.ndarray, delay_s: float) -> np.ndarray:
    amp, t0, a, b = AIF_PARAMS
    return gamma_variate(t_s, amp, t0 + delay_s, a, b)


def _disperse(curve: np.ndarray, dt_s: float, beta_s: float) -> np.ndarray:
    """``curve conv (1/beta) e^{-t/beta}`` on a uniform grid (trapezoid weights)."""
    if beta_s <= 0:
        return curve
    k = np.exp(-np.arange(curve.size) * dt_s / beta_s) / beta_s
    out = np.convolve(curve, k)[: curve.size] * dt_s
    return out - 0.5 * dt_s * k[0] * curve


def aif_curve(
    t_s: np.ndarray,
    delay_s: float = 0.0,
    recirculation: float = 0.0,
    steady_state: float = 0.0,
    dispersion_s: float = 0.0,
) -> np.ndarray:
    """The phantom's AIF dR2* (1/s) at times ``t_s`` (uniform) shifted by ``delay_s``.

    Parameters
    ----------
    recirculation : float
        Area of the second pass as a fraction of the first pass's: the first pass dispersed by
        an exponential of :data:`RECIRCULATION_DISPERSION_S` and delayed by
        :data:`RECIRCULATION_DELAY_S`.
    steady_state : float
        Plateau (fraction of the first-pass peak) reached with time constant
        :data:`STEADY_STATE_TIME_S` after the first pass's arrival (contrast in the blood pool).
    dispersion_s : float
        Exponential dispersion (time constant, s) of the whole curve (bolus dispersion on the
        way from the measured artery to the tissue).
    """
    t = np.asarray(t_s, dtype=np.float64)
    first = _first_pass(t, delay_s)
    if recirculation == 0 and steady_state == 0 and dispersion_s == 0:
        return first
    dt = float(t[1] - t[0])
    out = first.copy()
    if recirculation:
        second = _disperse(
            _first_pass(t, delay_s + RECIRCULATION_DELAY_S), dt, RECIRCULATION_DISPERSION_S
        )
        out += recirculation * second
    if steady_state:
        t0 = AIF_PARAMS[1] + delay_s
        ramp = np.clip(1.0 - np.exp(-(t - t0) / STEADY_STATE_TIME_S), 0.0, None)
        out += steady_state * first.max() * ramp
    return _disperse(out, dt, dispersion_s)


def residue_function(t_s: np.ndarray, mtt_s: float, shape: str = "exponential") -> np.ndarray:
    """Residue ``R(t) = 1 - CDF(t)`` of a transit-time distribution with mean ``mtt_s``.

    ``exponential``: ``e^{-t/MTT}`` (one well-mixed compartment); ``gamma``: gamma
    distribution of shape :data:`GAMMA_RESIDUE_SHAPE` (Mouridsen et al., JCBFM 34:1511, 2014);
    ``box``: every transit time equal (plug flow), ``R = 1`` for t < MTT; ``lognormal``:
    log-SD :data:`LOGNORMAL_SIGMA`, mean MTT (a heavy tail).
    """
    from scipy.special import erfc, gammaincc

    t = np.asarray(t_s, dtype=np.float64)
    if shape == "exponential":
        return np.exp(-t / mtt_s)
    if shape == "gamma":
        a = GAMMA_RESIDUE_SHAPE
        return gammaincc(a, np.maximum(t, 0.0) * a / mtt_s)
    if shape == "box":
        return (t < mtt_s).astype(np.float64)
    if shape == "lognormal":
        sig = LOGNORMAL_SIGMA
        mu = np.log(mtt_s) - 0.5 * sig * sig
        with np.errstate(divide="ignore"):
            z = (np.log(np.maximum(t, 1e-300)) - mu) / (sig * np.sqrt(2.0))
        return np.where(t > 0, 0.5 * erfc(z), 1.0)
    raise ValueError(f"unknown residue shape {shape!r}; known: {', '.join(RESIDUE_SHAPES)}")


def tissue_curve(
    t_s: np.ndarray,
    cbf: float,
    mtt_s: float,
    delay_s: float = 0.0,
    kh: float = KH_DEFAULT,
    rho: float = RHO_DEFAULT,
    oversample: int = 20,
    residue: str = "exponential",
    recirculation: float = 0.0,
    steady_state: float = 0.0,
    dispersion_s: float = 0.0,
) -> np.ndarray:
    """Tissue dR2* (1/s) by fine-grid convolution of the AIF with a residue.

    ``(rho/kH) * (CBF/6000) * int C_a(tau - delay) R(t - tau) dtau`` with ``R`` from
    :func:`residue_function` (exponential by default) and the AIF of :func:`aif_curve` (with
    its recirculation and dispersion arguments). The integral uses trapezoid weights on a grid
    ``oversample`` times finer than the frames.
    """
    dt = float(t_s[1] - t_s[0])
    fine_dt = dt / oversample
    tf = np.arange(t_s.size * oversample) * fine_dt
    ca = aif_curve(tf, delay_s, recirculation, steady_state, dispersion_s)
    res = residue_function(tf, mtt_s, residue)
    conv = np.convolve(ca, res)[: tf.size] * fine_dt
    if residue != "exponential" or recirculation or steady_state or dispersion_s:
        conv -= 0.5 * fine_dt * res[0] * ca  # trapezoid: the k = 0 term at half weight
    return (rho / kh) * (cbf / 6000.0) * conv[::oversample]


def phantom_arrays(
    shape: tuple[int, int, int] = (32, 32, 4),
    n_frames: int = 60,
    tr_s: float = 1.5,
    te_s: float = 0.03,
    noise_sd: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the phantom in memory.

    Parameters
    ----------
    shape : (X, Y, Z) voxels
    n_frames : int
    tr_s, te_s : float
        Frame interval and echo time (s).
    noise_sd : float
        Gaussian noise SD as a fraction of the brain S0 (0: noise-free).
    seed : int

    Returns
    -------
    dict with ``signal`` (X, Y, Z, T) float32, ``brain``, ``artery``, ``leaky`` masks, truth
    maps ``cbf``, ``cbv``, ``mtt``, ``delay``, ``k2`` (NaN outside the brain), ``aif`` (T,),
    ``t_s``, ``te_s``, ``tr_s``, ``seed``.
    """
    nx, ny, nz = shape
    t = np.arange(n_frames) * tr_s
    x, y, z = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    rx, ry = (nx - 1) / 2, (ny - 1) / 2
    brain = ((x - rx) / (0.47 * nx)) ** 2 + ((y - ry) / (0.47 * ny)) ** 2 <= 1.0
    region = np.clip((x * 4) // nx, 0, 3)
    band = np.clip((y * 4) // ny, 0, 3)
    artery = np.zeros(shape, bool)
    cx, cy = int(rx), int(ry)
    artery[cx : cx + 2, cy : cy + 2, :] = True
    leaky = np.zeros(shape, np.int8)  # 1: K2 > 0, 2: K2 < 0
    leaky[nx // 4 : nx // 4 + 3, ny // 2 - 5 : ny // 2 - 2, :] = 1
    leaky[3 * nx // 4 - 3 : 3 * nx // 4, ny // 2 + 2 : ny // 2 + 5, :] = 2
    leaky &= brain.astype(np.int8) * 3
    leaky[artery] = 0
    tissue = brain & ~artery

    dr2s = np.zeros(shape + (n_frames,))
    cbf = np.full(shape, np.nan)
    mtt = np.full(shape, np.nan)
    delay = np.full(shape, np.nan)
    for r, (f, m) in enumerate(REGIONS):  # loops over regions and delays, not voxels
        for d, dl in enumerate(DELAYS_S):
            sel = tissue & (region == r) & (band == d)
            dr2s[sel] = tissue_curve(t, f, m, dl)
            cbf[sel], mtt[sel], delay[sel] = f, m, dl
    # leakage relative to the mean of the non-leaky tissue curves (what BSW estimates)
    ref = dr2s[tissue & (leaky == 0)].mean(axis=0)
    integ = cumulative_integral(ref, tr_s)
    k2 = np.where(tissue, 0.0, np.nan)
    for code, k in zip((1, 2), K2_VALUES, strict=True):
        sel = leaky == code
        dr2s[sel] -= k * integ
        k2[sel] = k
    dr2s[artery] = aif_curve(t)
    cbf[artery] = np.nan
    cbv = cbf * mtt / 60.0
    s0 = np.where(brain, S0_BRAIN, S0_BACKGROUND)
    signal = s0[..., None] * np.exp(-te_s * dr2s)
    if noise_sd > 0:
        rng = np.random.default_rng(seed)
        signal = np.abs(signal + rng.normal(0.0, noise_sd * S0_BRAIN, signal.shape))
    return {
        "signal": signal.astype(np.float32),
        "brain": brain,
        "artery": artery,
        "tissue": tissue,
        "leaky": leaky,
        "cbf": cbf,
        "cbv": cbv,
        "mtt": mtt,
        "delay": np.where(brain, delay, np.nan),
        "k2": k2,
        "aif": aif_curve(t),
        "t_s": t,
        "te_s": te_s,
        "tr_s": tr_s,
        "seed": seed,
        "dr2s": dr2s,
    }


def write_phantom(
    out_dir: str | PathLike,
    prefix: str = "phantom",
    overwrite: bool = False,
    *,
    noise_sd: float = 0.005,
    **phantom: Any,
) -> dict[str, Path]:
    """Write the phantom: ``<prefix>_dsc.nii.gz`` + ``.json``, truth maps and masks.

    Parameters
    ----------
    out_dir : path-like
    prefix : str
    overwrite : bool
        Replace existing files (otherwise :class:`~gpuperf.errors.OutputExistsError`).
    noise_sd : float
        As :func:`phantom_arrays`, but noisy by default (0.005).
    **phantom
        The other parameters of :func:`phantom_arrays` (``shape``, ``n_frames``, ``tr_s``,
        ``te_s``, ``seed``), declared there only; ``tr_s`` and ``te_s`` are written to the
        sidecar as BIDS fields.

    Returns
    -------
    dict name -> path: ``series``, ``sidecar``, ``brainmask``, ``arterymask``,
    ``truth_cbf``, ``truth_cbv``, ``truth_mtt``, ``truth_delay``, ``truth_k2``.
    """
    import nibabel as nib

    from gpuperf.io.outputs import OutputWriter

    out = Path(out_dir)
    ph = phantom_arrays(noise_sd=noise_sd, **phantom)
    tr_s, te_s, seed = ph["tr_s"], ph["te_s"], ph["seed"]
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    files = {
        "series": (f"{prefix}_dsc.nii.gz", ph["signal"]),
        "brainmask": (f"{prefix}_brainmask.nii.gz", ph["brain"].astype(np.uint8)),
        "arterymask": (f"{prefix}_arterymask.nii.gz", ph["artery"].astype(np.uint8)),
        "truth_cbf": (f"{prefix}_truth_cbf.nii.gz", ph["cbf"]),
        "truth_cbv": (f"{prefix}_truth_cbv.nii.gz", ph["cbv"]),
        "truth_mtt": (f"{prefix}_truth_mtt.nii.gz", ph["mtt"]),
        "truth_delay": (f"{prefix}_truth_delay.nii.gz", ph["delay"]),
        "truth_k2": (f"{prefix}_truth_k2.nii.gz", ph["k2"]),
    }
    names = [name for name, _ in files.values()] + [f"{prefix}_dsc.json"]
    # all files or none, existing ones only with overwrite (the pipelines' writer)
    with OutputWriter(out, "", overwrite=overwrite) as writer:
        writer.expect(names, ext="")
        paths = {}
        for key, (name, data) in files.items():
            dtype = np.uint8 if data.dtype == np.uint8 else np.float32
            img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
            img.header.set_xyzt_units("mm", "sec")
            if key == "series":
                zooms = img.header.get_zooms()
                img.header.set_zooms(zooms[:3] + (tr_s,))
            paths[key] = writer.add_image(name, img)
        paths["sidecar"] = writer.add_json(
            f"{prefix}_dsc.json",
            {
                "EchoTime": te_s,
                "RepetitionTime": tr_s,
                "MagneticFieldStrength": 3,
                "Description": "gpuperf DSC phantom (simulated)",
                "PhantomRegions_CBF_MTT": [list(r) for r in REGIONS],
                "PhantomDelays_s": list(DELAYS_S),
                "PhantomK2_per_s": list(K2_VALUES),
                "NoiseSD": noise_sd,
                "Seed": seed,
            },
        )
        writer.commit()
    return paths
