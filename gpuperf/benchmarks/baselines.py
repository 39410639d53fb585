"""Reference implementations gpuperf is measured against (benchmarks only, never at runtime).

Each baseline reproduces how another tool or a straightforward implementation does the job:

``svd_loop``
    Voxel-by-voxel truncated-SVD deconvolution with the pseudo-inverse built once, as MATLAB
    DSC toolboxes run it (a Python loop over voxels, one matrix-vector product each).
``numpy_circulant_sweep``
    Plain vectorised NumPy oSVD: the block-circulant SVD once, then for every threshold of the
    sweep one GEMM for all voxels and the oscillation index; the lowest threshold below the
    limit wins (Wu et al., MRM 50:164, 2003). What one writes without FFTs or kernels.
``scipy_loop_asl_fit``
    Voxel-by-voxel ``scipy.optimize.curve_fit`` of the Buxton kinetic model, as ASLPrep fits
    multi-PLD ASL; the model function is gpuperf's own NumPy twin, so only the fitting strategy
    differs.
``osipy_osvd`` / ``osipy_asl_fit``
    Adapters to osipy 0.1.4 (OSIPI's NumPy/CuPy perfusion library; optional, installed with
    ``pip install --no-deps --ignore-requires-python osipy==0.1.4`` plus pydantic, pyyaml,
    pydicom, matplotlib, scipy, nibabel). Read from its source (0.1.4):

    - DSC: ``osipy.dsc.parameters.compute_perfusion_maps(..., deconvolution_method="oSVD")``
      fits with ``OSVDFitter`` on ``BoundDSCModel(matrix_type="circulant")``, whose matrix is
      ``_build_circulant_matrix_xp(...)[:n, :n]``: the top-left N x N block of the 2N
      circulant, i.e. the lower-triangular Toeplitz matrix of sSVD. Its "oSVD" is therefore
      delay-sensitive. It also sweeps 20 thresholds 0.01-0.5, uses first differences in its
      oscillation index, keeps per voxel the threshold with the *smallest* OI below the limit
      (Wu 2003: the lowest threshold whose OI is below it), clips negative residues before
      MTT/Tmax, and scales CBF by
      ``6000/rho`` without kH (CBV gets kH), so CBF reads 1/kH = 1.36x high.
    - ASL: ``osipy.asl.quantification.multi_pld.quantify_multi_pld`` fits the Buxton pCASL
      model by its own Levenberg-Marquardt with the PLD used as the time since the start of
      labelling (it should be tau + PLD) and M0 in place of M0b = M0/lambda; bounds CBF
      [0, 200], ATT [0.1, 5] s; PLDs, tau and T1s in ms.

    :mod:`gpuperf.benchmarks.accuracy` measures what these choices do on phantoms with known
    truth (``osipy_checks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gpuperf.errors import GpuperfError

#: The osipy release the adapters were written against.
OSIPY_VERSION = "0.1.4"
#: Haematocrit factor and brain density gpuperf uses (REFERENCE: kH 0.733, rho 1.04 g/ml).
KH = 0.733
RHO = 1.04
#: Wu (2003) threshold sweep and OI limit.
OSVD_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
OI_LIMIT = 0.035


class BaselineUnavailableError(GpuperfError):
    """An optional baseline (osipy, SciPy) is not installed."""


# -- osipy -------------------------------------------------------------------------------------
def osipy_version() -> str | None:
    """osipy's version, or None when it is not installed."""
    try:
        import osipy
    except ImportError:
        return None
    return str(getattr(osipy, "__version__", "unknown"))


def _require_osipy() -> None:
    version = osipy_version()
    if version is None:
        raise BaselineUnavailableError(
            "osipy is not installed: pip install --no-deps --ignore-requires-python "
            "osipy==0.1.4 pydantic pyyaml pydicom matplotlib scipy nibabel"
        )


def osipy_osvd(
    dr2s: np.ndarray, aif: np.ndarray, time_s: np.ndarray, method: str = "oSVD"
) -> dict[str, np.ndarray]:
    """osipy 0.1.4 DSC perfusion maps (its default oSVD path) for a block of voxels.

    Parameters
    ----------
    dr2s : ndarray (V, T)
        Tissue dR2* (1/s).
    aif : ndarray (T,)
        Arterial dR2* (1/s).
    time_s : ndarray (T,)
        Frame times (s), uniformly spaced.
    method : {'oSVD', 'cSVD', 'sSVD', 'tikhonov'}
        osipy's deconvolution method name.

    Returns
    -------
    dict
        ``cbf`` (ml/100g/min), ``cbv`` (ml/100g), ``mtt`` (s), ``tmax`` (s), each (V,), as
        osipy reports them (its own kH/rho conventions; see the module docstring).
    """
    _require_osipy()
    from osipy.dsc.parameters.maps import compute_perfusion_maps

    dr2s = np.asarray(dr2s, dtype=np.float64)
    # osipy's ParameterMap insists on 3D volumes: present the block as (V, 1, 1, T).
    maps = compute_perfusion_maps(
        dr2s.reshape(dr2s.shape[0], 1, 1, dr2s.shape[1]),
        np.asarray(aif, dtype=np.float64),
        np.asarray(time_s, dtype=np.float64),
        mask=np.ones((dr2s.shape[0], 1, 1), dtype=bool),
        deconvolution_method=method,
    )
    out = {
        "cbf": maps.cbf.values,
        "cbv": maps.cbv.values,
        "mtt": maps.mtt.values,
        "tmax": maps.tmax.values if maps.tmax is not None else np.full(dr2s.shape[0], np.nan),
    }
    return {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in out.items()}


def osipy_asl_fit(
    delta_m: np.ndarray,
    m0: float | np.ndarray,
    pld_s: Sequence[float],
    tau_s: float,
    *,
    t1_blood_s: float = 1.65,
    t1_tissue_s: float = 1.3,
    alpha: float = 0.85,
    lambda_: float = 0.9,
) -> dict[str, np.ndarray]:
    """osipy 0.1.4 multi-PLD pCASL fit (``quantify_multi_pld``) for a block of voxels.

    Parameters
    ----------
    delta_m : ndarray (V, K)
        Control - label difference at each PLD.
    m0 : float or ndarray (V,)
        Equilibrium magnetisation of tissue.
    pld_s : sequence (K,)
        Post-labelling delays (s): converted to the ms osipy expects.
    tau_s : float
        Labelling duration (s).
    t1_blood_s, t1_tissue_s, alpha, lambda_ :
        Constants passed to osipy (its ``MultiPLDParams``).

    Returns
    -------
    dict
        ``cbf`` (ml/100g/min) and ``att`` (s, converted from osipy's ms), each (V,).
    """
    _require_osipy()
    from osipy.asl.labeling import LabelingScheme
    from osipy.asl.quantification.multi_pld import MultiPLDParams, quantify_multi_pld

    delta_m = np.asarray(delta_m, dtype=np.float64)
    params = MultiPLDParams(
        labeling_scheme=LabelingScheme.PCASL,
        plds=np.asarray(pld_s, dtype=np.float64) * 1000.0,
        label_duration=float(tau_s) * 1000.0,
        t1_blood=t1_blood_s * 1000.0,
        t1_tissue=t1_tissue_s * 1000.0,
        partition_coefficient=lambda_,
        labeling_efficiency=alpha,
    )
    n_vox = delta_m.shape[0]
    m0_arr = np.broadcast_to(np.asarray(m0, dtype=np.float64), (n_vox,)).copy()
    # osipy's ParameterMap insists on 3D volumes: present the block as (V, 1, 1, K).
    res = quantify_multi_pld(delta_m.reshape(n_vox, 1, 1, -1), m0_arr.reshape(n_vox, 1, 1), params)
    return {
        "cbf": np.asarray(res.cbf_map.values, dtype=np.float64).reshape(-1),
        "att": np.asarray(res.att_map.values, dtype=np.float64).reshape(-1) / 1000.0,
    }


# -- DSC baselines ------------------------------------------------------------------------------
def _pinv(matrix: np.ndarray, threshold: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(matrix)
    keep = s >= threshold * s[0]
    inv_s = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    return (vt.T * inv_s) @ u.T


def _conv_matrix(aif: np.ndarray, dt_s: float, circulant: bool) -> np.ndarray:
    a = np.asarray(aif, dtype=np.float64)
    n = a.size
    size = 2 * n if circulant else n
    ap = np.zeros(size)
    ap[:n] = a
    idx = np.arange(size)[:, None] - np.arange(size)[None, :]
    if circulant:
        return ap[idx % size] * dt_s
    return np.where(idx >= 0, ap[np.clip(idx, 0, None)], 0.0) * dt_s


def oscillation_index(r: np.ndarray) -> np.ndarray:
    """Wu (2003) eq. 8 over the last axis: ``(1/L)(1/max r) sum_k |r_k - 2r_{k-1} + r_{k-2}|``."""
    second = np.abs(r[..., 2:] - 2.0 * r[..., 1:-1] + r[..., :-2]).sum(axis=-1)
    peak = r.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, second / (r.shape[-1] * peak), np.inf)


def svd_loop(
    conc: np.ndarray,
    aif: np.ndarray,
    dt_s: float,
    method: str = "ssvd",
    threshold: float | None = None,
    kh: float = KH,
    rho: float = RHO,
) -> dict[str, np.ndarray]:
    """Voxel-by-voxel SVD deconvolution (the way MATLAB toolboxes loop).

    Parameters
    ----------
    conc : ndarray (V, N)
        Tissue concentration (or dR2*) curves.
    aif : ndarray (N,)
        Arterial curve, same units.
    dt_s : float
        Frame interval (s).
    method : {'ssvd', 'csvd', 'osvd'}
        sSVD (Toeplitz, threshold 0.2), cSVD (2N block-circulant, 0.1) or oSVD (circulant,
        per-voxel lowest threshold of 0.05..0.95 with OI < 0.035).
    threshold : float, optional
        Overrides the sSVD/cSVD threshold.
    kh, rho : float
        Haematocrit factor and density: ``CBF = 6000 (kH/rho) max r``.

    Returns
    -------
    dict
        ``cbf`` (ml/100g/min), ``tmax`` (s), each (V,).
    """
    conc = np.asarray(conc, dtype=np.float64)
    n_vox, n = conc.shape
    circulant = method in ("csvd", "osvd")
    a = _conv_matrix(aif, dt_s, circulant)
    if method == "osvd":
        pinvs = [_pinv(a, p) for p in OSVD_THRESHOLDS]
    else:
        default = 0.2 if method == "ssvd" else 0.1
        pinvs = [_pinv(a, default if threshold is None else threshold)]
    cbf = np.empty(n_vox)
    tmax = np.empty(n_vox)
    pad = np.zeros(a.shape[0])
    for v in range(n_vox):  # the loop is the point of this baseline
        pad[:n] = conc[v]
        r = pinvs[-1] @ pad
        for p in pinvs:  # oSVD: lowest threshold whose residue oscillates little enough
            r_p = p @ pad
            if len(pinvs) == 1 or oscillation_index(r_p) < OI_LIMIT:
                r = r_p
                break
        r = r[:n]
        k = int(np.argmax(r))
        cbf[v] = 6000.0 * (kh / rho) * r[k]
        tmax[v] = k * dt_s
    return {"cbf": cbf, "tmax": tmax}


def numpy_circulant_sweep(
    conc: np.ndarray,
    aif: np.ndarray,
    dt_s: float,
    thresholds: Sequence[float] = OSVD_THRESHOLDS,
    oi_limit: float = OI_LIMIT,
    kh: float = KH,
    rho: float = RHO,
) -> dict[str, np.ndarray]:
    """Plain vectorised NumPy oSVD: one GEMM per threshold for all voxels.

    Parameters
    ----------
    conc : ndarray (V, N)
    aif : ndarray (N,)
    dt_s : float
    thresholds : sequence of float
        Relative thresholds, ascending.
    oi_limit : float

    Returns
    -------
    dict
        ``cbf`` (ml/100g/min), ``tmax`` (s), ``threshold`` (chosen), each (V,).
    """
    conc = np.asarray(conc, dtype=np.float64)
    n_vox, n = conc.shape
    a = _conv_matrix(aif, dt_s, circulant=True)
    u, s, vt = np.linalg.svd(a)
    padded = np.zeros((n_vox, 2 * n))
    padded[:, :n] = conc
    proj = padded @ u  # (V, L): U^T c for every voxel
    chosen = np.full(n_vox, -1)
    best = np.zeros((n_vox, 2 * n))
    for i, p in enumerate(thresholds):  # loop over thresholds, vectorised over voxels
        inv_s = np.where(s >= p * s[0], 1.0 / s, 0.0)
        r = (proj * inv_s) @ vt
        take = (chosen < 0) & (oscillation_index(r) < oi_limit)
        best[take] = r[take]
        chosen[take] = i
    last = chosen < 0  # nothing passed: keep the highest threshold, as the toolboxes do
    if last.any():
        inv_s = np.where(s >= thresholds[-1] * s[0], 1.0 / s, 0.0)
        best[last] = (proj[last] * inv_s) @ vt
        chosen[last] = len(thresholds) - 1
    r = best[:, :n]
    return {
        "cbf": 6000.0 * (kh / rho) * r.max(axis=1),
        "tmax": r.argmax(axis=1) * dt_s,
        "threshold": np.asarray(thresholds, dtype=np.float64)[chosen],
    }


# -- ASL baseline -------------------------------------------------------------------------------
def scipy_loop_asl_fit(
    dm_over_m0: np.ndarray,
    pld_s: Sequence[float],
    tau_s: float,
    *,
    t1_tissue_s: float = 1.3,
    t1_blood_s: float = 1.65,
    lambda_: float = 0.9,
    alpha: float = 0.85,
    p0: tuple[float, float] = (50.0, 1.3),
    bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (300.0, 5.0)),
) -> dict[str, np.ndarray]:
    """Voxel-by-voxel ``scipy.optimize.curve_fit`` of the Buxton pCASL model (ASLPrep style).

    Parameters
    ----------
    dm_over_m0 : ndarray (V, K)
        Normalised difference signal at each PLD.
    pld_s : sequence (K,)
        Post-labelling delays (s); the model uses ``t = tau + PLD``.
    tau_s : float
        Labelling duration (s).
    p0 : (CBF, ATT)
        Start (ml/100g/min, s).
    bounds : ((lower CBF, lower ATT), (upper CBF, upper ATT))

    Returns
    -------
    dict
        ``cbf`` (ml/100g/min), ``att`` (s), each (V,); NaN where curve_fit failed.
    """
    try:
        from scipy.optimize import curve_fit
    except ImportError as exc:  # pragma: no cover - scipy is a test dependency
        raise BaselineUnavailableError(f"SciPy is needed for this baseline: {exc}") from None
    from gpuperf.fit.models.buxton import BUXTON_PCASL

    pld = np.asarray(pld_s, dtype=np.float64)
    x = np.stack([tau_s + pld, np.full(pld.size, float(tau_s))], axis=1)
    consts = np.array([t1_tissue_s, t1_blood_s, lambda_, alpha])

    def model(_x: Any, cbf: float, att: float) -> np.ndarray:
        return BUXTON_PCASL.evaluate(np, np.array([[cbf, att]]), x, consts)[0][0]

    def jac(_x: Any, cbf: float, att: float) -> np.ndarray:
        return BUXTON_PCASL.evaluate(np, np.array([[cbf, att]]), x, consts)[1][0]

    y = np.asarray(dm_over_m0, dtype=np.float64)
    out = np.full((y.shape[0], 2), np.nan)
    for v in range(y.shape[0]):  # the loop is the point of this baseline
        try:
            out[v], _ = curve_fit(model, x, y[v], p0=p0, bounds=bounds, jac=jac)
        except (RuntimeError, ValueError):
            pass
    return {"cbf": out[:, 0], "att": out[:, 1]}
