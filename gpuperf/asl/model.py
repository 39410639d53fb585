"""ASL quantification in the DIPY idiom: ``ASLModel(...).fit(deltam, m0=...) -> ASLFit``.

The model holds what does not depend on the data (labelling type, timings and the method
options of :class:`gpuperf.asl.options.ASLOptions`); ``fit`` takes difference signals
(control - label, one sample per PLD or per repeat) and M0, masks and checks the voxels, hands
``dM/M0`` to the method of :data:`gpuperf.asl.kinetics.METHODS` and puts the maps back on the
grid. Methods:

- ``whitepaper``: consensus single-PLD formulas (Alsop et al., MRM 73:102, 2015), closed form;
  with several PLDs the per-PLD estimates are averaged.
- ``gkm``: Buxton general kinetic model (Buxton et al., MRM 40:383, 1998) fitted voxelwise
  for CBF and ATT (optionally aBV and aBAT) by :func:`gpuperf.fit.fit_lm`
  (:mod:`gpuperf.asl.fitting`, :mod:`gpuperf.asl.kinks`, :mod:`gpuperf.asl.arterial`).

``auto`` picks ``whitepaper`` for one PLD and ``gkm`` for several. Statuses are
:class:`gpuperf.status.Status` flags.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuperf import status as st
from gpuperf.asl import constants as K
from gpuperf.asl.arterial import abat_candidates
from gpuperf.asl.fitting import initial_params
from gpuperf.asl.kinetics import METHODS, KineticModel, kinetic_model_for, resolve_method
from gpuperf.asl.kinks import KINK_TOLERANCE_S, kinks
from gpuperf.asl.options import ASLOptions
from gpuperf.backend import get_backend
from gpuperf.errors import InputError
from gpuperf.io.nifti import gather, scatter
from gpuperf.status import Status

#: Flags an ASL status map can carry (listed in its sidecar).
STATUS_FLAGS = (
    Status.NONPOSITIVE_INPUT,
    Status.NONFINITE_INPUT,
    Status.OUTSIDE_MASK,
    Status.MAX_ITER,
    Status.FIT_FAILED,
    Status.AT_KINK,
)
#: Flags of a voxel whose maps are trusted (converged, or converged at a kink).
OK_FLAGS = (int(Status.OK), int(Status.AT_KINK))

__all__ = ["KINK_TOLERANCE_S", "STATUS_FLAGS", "ASLFit", "ASLModel"]

#: Keyword arguments of ASLModel that name an option differently.
_ALIASES = {"method": "model"}


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
    status : ndarray int32
        :class:`gpuperf.status.Status` flags (``OUTSIDE_MASK`` outside the mask).
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
    """ASL acquisition and method options.

    Parameters
    ----------
    labeling_type : {'PCASL', 'CASL', 'PASL'}
    pld_s : array_like (K,)
        PostLabelingDelay of each sample (s); for PASL the inversion time TI. Repeats allowed.
    tau_s : float or array_like (K,)
        Labelling duration (CASL/PCASL) or bolus duration TI1 (PASL), s.
    options : ASLOptions, optional
        The method options (default: ``ASLOptions()``).
    device : {'auto', 'cpu', 'gpu'}
    dtype : float32 or float64
    memory_budget : int, optional
        Bytes per chunk (passed to the fitter).
    **kwargs
        Fields of :class:`~gpuperf.asl.options.ASLOptions` overriding ``options``
        (``method`` is accepted for ``model``): ``t1_tissue_s``, ``t1_blood_s`` (None: 1.65 s,
        3 T), ``lambda_``, ``alpha`` (None: 0.85 PCASL, 0.68 CASL, 0.98 PASL), ``bs_factor``
        (None: 1), ``arterial``, ``att_start_s`` (None: 1.3 s (p)CASL, 0.7 s PASL),
        ``cbf_bounds``, ``att_bounds``, ``max_iter``.
    """

    def __init__(
        self,
        labeling_type: str,
        pld_s: Any,
        tau_s: Any,
        *,
        options: ASLOptions | None = None,
        device: str = "auto",
        dtype: Any = np.float32,
        memory_budget: int | None = None,
        **kwargs: Any,
    ) -> None:
        changes = {_ALIASES.get(k, k): v for k, v in kwargs.items()}
        opts = ASLOptions.resolve(options, changes, "ASLModel")
        lt = str(labeling_type).upper()
        if kinetic_model_for(lt) is None:
            raise InputError(
                None, "labeling_type", f"expected PCASL, CASL or PASL, found {labeling_type!r}"
            )
        self.labeling_type = lt
        self.pld_s = np.atleast_1d(np.asarray(pld_s, dtype=np.float64))
        self.tau_s = np.broadcast_to(np.asarray(tau_s, dtype=np.float64), self.pld_s.shape).copy()
        if not np.all(np.isfinite(self.pld_s)) or np.any(self.pld_s < 0):
            raise InputError(None, "PostLabelingDelay", "PLDs must be finite and >= 0 s")
        if not np.all(np.isfinite(self.tau_s)) or np.any(self.tau_s <= 0):
            raise InputError(
                None, "LabelingDuration", "labelling/bolus durations must be finite and > 0 s"
            )
        n_pld = np.unique(np.round(self.pld_s, 6)).size
        self.method = resolve_method(opts.model, n_pld)
        if opts.arterial and (
            not METHODS[self.method].fits or kinetic_model_for(lt, arterial=True) is None
        ):
            raise InputError(
                None,
                "arterial",
                "the arterial component needs a (p)CASL kinetic-model fit (several PLDs)",
            )
        self.options = opts
        self.kinetics: KineticModel = kinetic_model_for(lt, opts.arterial)
        self.t1_tissue_s = float(opts.t1_tissue_s)
        self.t1_blood_s = float(
            K.T1_BLOOD_BY_FIELD_S[3.0] if opts.t1_blood_s is None else opts.t1_blood_s
        )
        self.lambda_ = float(opts.lambda_)
        self.alpha = float(K.ALPHA_BY_TYPE[lt] if opts.alpha is None else opts.alpha)
        self.bs_factor = float(1.0 if opts.bs_factor is None else opts.bs_factor)
        self.arterial = bool(opts.arterial)
        self.att_start_s = float(
            K.ATT_START_S[lt] if opts.att_start_s is None else opts.att_start_s
        )
        self.cbf_bounds = tuple(float(b) for b in opts.cbf_bounds)
        self.att_bounds = tuple(float(b) for b in opts.att_bounds)
        self.max_iter = int(opts.max_iter)
        self.device = device
        self.dtype = np.dtype(dtype)
        self.memory_budget = memory_budget

    def with_samples(self, pld_s: Any, tau_s: Any) -> ASLModel:
        """This model (method, constants, options) at other sample timings, e.g. a fine PLD
        grid to draw its curves on: a copy with ``pld_s`` and ``tau_s`` replaced (the method
        stays the one resolved for this model's samples)."""
        other = copy.copy(self)
        other.pld_s = np.atleast_1d(np.asarray(pld_s, dtype=np.float64))
        other.tau_s = np.broadcast_to(np.asarray(tau_s, dtype=np.float64), other.pld_s.shape).copy()
        return other

    # ------------------------------------------------------------------------------------------
    @property
    def alpha_effective(self) -> float:
        """Labelling efficiency after background suppression, ``alpha * bs_factor``."""
        return self.alpha * self.bs_factor

    @property
    def kinetic_model(self):
        """The fitter model (NumPy twin object carrying its CUDA header name)."""
        return self.kinetics.signal

    def sample_times(self) -> np.ndarray:
        """Fitter abscissa (K, 2): ``(t, tau)`` with ``t = tau + PLD`` ((p)CASL) or ``TI`` (PASL).

        The (p)CASL ``t`` counts from the start of labelling: using the PLD alone (a defect
        seen in an existing tool) shifts every sample by tau.
        """
        t = self.tau_s + self.pld_s if self.kinetics.time_from_labelling_start else self.pld_s
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
                "LabelingDurationSeconds"
                if self.kinetics.time_from_labelling_start
                else "BolusDurationTI1Seconds"
            ): sorted({round(float(v), 6) for v in self.tau_s}),
            "T1BloodSeconds": self.t1_blood_s,
            "PartitionCoefficientMlPerG": self.lambda_,
            "LabelingEfficiency": self.alpha,
            "BackgroundSuppressionFactor": self.bs_factor,
            "EffectiveLabelingEfficiency": self.alpha_effective,
            "M0b": "M0 / lambda",
        }
        d.update(METHODS[self.method].constants(self))
        return d

    def map_names(self) -> list[str]:
        """Names of the maps the method produces (``status`` included)."""
        return METHODS[self.method].map_names(self)

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
    def fit(
        self,
        data: Any,
        m0: Any,
        mask: Any = None,
        reporter: Any = None,
        time_offset_s: Any = None,
    ) -> ASLFit:
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
        time_offset_s : float or ndarray (...), optional
            Per-voxel delay (s) between the start of the volume's readout and this voxel's
            slice: 2D readouts read slice k ``SliceTiming[k]`` later, so its effective delay
            is ``PLD + SliceTiming[k]`` (PASL: ``TI + SliceTiming[k]``) in the consensus
            formula and the kinetic model (:func:`gpuperf.asl.bids.slice_time_offsets`).
            None or all zero: every voxel at its nominal PLD (3D readouts).

        Returns
        -------
        ASLFit
            Voxels with non-finite data or M0 carry ``NONFINITE_INPUT``, M0 <= 0
            ``NONPOSITIVE_INPUT`` (NaN maps); outside the mask ``OUTSIDE_MASK``.
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
        everything = bool(mask.all())  # the pipeline's voxel block: no gathering copy
        y_all = data.reshape(-1, data.shape[-1]) if everything else gather(data, mask)
        m0_all = m0.reshape(-1) if everything else gather(m0, mask)
        flags = input_flags(y_all, m0_all)
        valid = flags == 0
        if valid.all():
            y = y_all / m0_all[:, None]
        else:
            y = y_all[valid] / m0_all[valid, None]
        y = np.ascontiguousarray(y, dtype=self.dtype)
        offset = None
        if time_offset_s is not None:
            off = np.broadcast_to(np.asarray(time_offset_s, dtype=np.float64), spatial)
            if not np.all(np.isfinite(off)) or np.any(off < 0):
                raise InputError(None, "time_offset_s", "slice-time offsets must be finite, >= 0")
            if np.any(off != 0):
                offset = np.ascontiguousarray(gather(off, mask)[valid])
        backend = get_backend(self.device)
        maps = METHODS[self.method].quantify(self, y, reporter, offset)
        if "residual" in maps:
            maps["residual"] = maps["residual"] * m0_all[valid]
        flags[valid] = maps.pop("status")
        status = scatter(flags, mask, fill=int(Status.OUTSIDE_MASK), dtype=st.DTYPE)
        fitted = mask.copy()
        fitted[mask] = valid  # the voxels the method saw
        extra = {k: maps.pop(k) for k in list(maps) if k.startswith("_")}
        out = {k: None if v is None else scatter(v, fitted) for k, v in maps.items()}
        n_iter = extra.get("_n_iter")
        if n_iter is not None:
            n_iter = scatter(n_iter, fitted, fill=0, dtype=np.int32)
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

    def initial_params(self, y: np.ndarray) -> np.ndarray:
        """Starting values of the kinetic-model fit (:func:`gpuperf.asl.fitting.initial_params`)."""
        return initial_params(self, y)

    def kinks(self) -> np.ndarray:
        """ATT values (s) where the tissue model is not differentiable
        (:func:`gpuperf.asl.kinks.kinks`)."""
        return kinks(self.sample_times())

    def abat_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate aBAT values and half-widths (:func:`gpuperf.asl.arterial.abat_candidates`)."""
        return abat_candidates(self.sample_times())


def input_flags(y: np.ndarray, m0: np.ndarray) -> np.ndarray:
    """Status flags (V,) of voxels that cannot be quantified: ``NONFINITE_INPUT`` for NaN/inf
    data or M0, ``NONPOSITIVE_INPUT`` for a finite M0 <= 0; 0 elsewhere."""
    finite_m0 = np.isfinite(m0)
    flags = np.where(np.isfinite(y).all(axis=1) & finite_m0, 0, int(Status.NONFINITE_INPUT)).astype(
        st.DTYPE
    )
    flags[finite_m0 & (m0 <= 0)] |= int(Status.NONPOSITIVE_INPUT)
    return flags
