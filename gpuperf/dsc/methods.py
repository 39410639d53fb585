"""The registry of DSC deconvolution methods: one object and one registry line per method.

A method turns the dR2* curves of a subject (``(V, N)`` on the backend) and its AIF into, per
voxel, the maximum of the residue ``r = (rho/kH) F R(t)``, its time index, the threshold (or
regularisation) used and, optionally, the residue itself. :class:`gpuperf.dsc.DSCModel` does
everything around it (signal conversion, leakage, CBV, TTP, chunking, scaling, status) and never
switches on a method's name; the CLI choices (``--method``) and :class:`DSCOptions` validation
come from :func:`names`.

A linear method is :class:`OperatorMethod`: :meth:`~OperatorMethod.plan` builds what depends on
the AIF only (once per subject), :meth:`~OperatorMethod.apply` deconvolves one chunk of voxels.
oSVD overrides :meth:`Deconvolution.run` to queue the chunks of several subjects into one
threshold-selection launch. Adding a method (see ``docs/dsc.md``)::

    class MyMethod(OperatorMethod):
        name = "mine"
        description = "..."
        def plan(self, aif, dt_s, options, dtype, xp): ...
        def apply(self, conc, plan, aif, dt_s, options, xp): return residue, None

    register(MyMethod())

Methods: sSVD (Ostergaard et al., MRM 36:715, 1996), cSVD and oSVD (Wu et al., MRM 50:164,
2003), Tikhonov with fixed mu or per-voxel GCV (Calamante et al., MRM 50:1237, 2003).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuperf.backend import Backend, chunk_slices
from gpuperf.dsc import deconvolution as dec
from gpuperf.dsc import osvd as osvd_mod
from gpuperf.dsc.constants import DISCRETISATIONS
from gpuperf.dsc.registry import METHODS
from gpuperf.options import Choice, registry_add, registry_get
from gpuperf.status import Status

if TYPE_CHECKING:
    from gpuperf.dsc.options import DSCOptions

#: Fewest voxels of a chunk: results are then bitwise independent of the chunk size.
MIN_CHUNK_VOXELS = 256


@dataclass
class Subject:
    """Working state of one subject during the deconvolution (filled by the method).

    Attributes
    ----------
    dr2s : backend array (V, N)
        Curves to deconvolve (leakage-corrected when asked).
    flags : backend int32 array (V,)
        :class:`gpuperf.status.Status` flags; a method may add its own.
    aif : ndarray (N,), float64
    plan : Any
        What :meth:`Deconvolution.plan` built for this subject's AIF.
    chunks : list of slice
        Voxel chunks that fit the memory budget.
    rmax, tmax_i, thr, oi : backend arrays (V,)
        Outputs: residue maximum, its index, threshold used (NaN if none), oscillation index
        (NaN unless the method computes it).
    residue : backend array (V, N) or None
        Filled when the caller asked for residues.
    leakage_maps : dict
        Per-voxel maps of the leakage correction (``k2``, ``kep``; host arrays).
    time_offsets : ndarray (V,) or None
        Slice time of each voxel minus the AIF's (s; 2D readouts).
    """

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
    plan: Any = None
    chunks: list = field(default_factory=list)
    #: Extra per-voxel maps of the method (name -> host (V,) array; ``gpuperf.maps`` names).
    maps: dict = field(default_factory=dict)
    leakage_maps: dict = field(default_factory=dict)
    time_offsets: np.ndarray | None = None


class Deconvolution(Choice):
    """A deconvolution method (base class; see the module docstring).

    ``name`` is its ``--method`` value (:class:`~gpuperf.options.Choice`).

    Attributes
    ----------
    default_threshold : float or None
        Relative threshold used when ``DSCOptions.threshold`` is None (None: not a threshold
        method).
    work_arrays : int
        Working memory per voxel in units of ``4 * N * itemsize`` bytes (for chunking).
    flags : tuple of Status
        Status flags the method itself may set (for the status map's sidecar).
    discretisations : tuple of str
        ``DSCOptions.discretisation`` values it implements (:data:`gpuperf.dsc.constants.
        DISCRETISATIONS`); others are refused naming ``--discretisation``. Every method takes
        ``rectangle`` (the default, accepted without loading the method); block-circulant
        methods take only it: the edge weights need a causal origin.
    """

    default_threshold: float | None = None
    work_arrays: int = 6
    flags: tuple[Status, ...] = ()
    discretisations: tuple[str, ...] = ("rectangle",)
    #: Extra maps the method writes (``Subject.maps`` keys, :mod:`gpuperf.maps` names).
    map_names: tuple[str, ...] = ()

    def memory_per_voxel(self, n_frames: int, itemsize: int) -> int:
        """Bytes of working memory one voxel of ``n_frames`` needs."""
        return 4 * n_frames * itemsize * self.work_arrays

    def plan(self, aif: np.ndarray, dt_s: float, options: DSCOptions, dtype: Any, xp: Any) -> Any:
        """What depends on the AIF only (built once per subject)."""
        return None

    def run(
        self,
        backend: Backend,
        subjects: Sequence[Subject],
        options: DSCOptions,
        memory_budget: int | None,
    ) -> None:
        """Deconvolve every subject, filling ``rmax``, ``tmax_i``, ``thr``, ``oi``,
        ``residue`` and flags (each subject alone, chunk by chunk)."""
        raise NotImplementedError

    def check(self, options: DSCOptions) -> None:
        """Refuse options this method cannot use (default: accept)."""


class OperatorMethod(Deconvolution):
    """A method applied chunk by chunk: ``apply(chunk) -> residue, threshold per voxel``."""

    def apply(
        self, conc: Any, plan: Any, aif: np.ndarray, dt_s: float, options: DSCOptions, xp: Any
    ) -> tuple[Any, Any]:
        """Residues (V, N) of one chunk, and the per-voxel threshold used (or None: the
        option's threshold)."""
        return conc @ plan, None

    def run(self, backend, subjects, options, memory_budget):
        xp = backend.xp
        for sub in subjects:
            for sl in sub.chunks:
                r, thr = self.apply(sub.dr2s[sl], sub.plan, sub.aif, options.tr_s, options, xp)
                if thr is not None:
                    sub.thr[sl] = thr
                sub.tmax_i[sl] = xp.argmax(r, axis=1).astype(xp.int32)
                sub.rmax[sl] = r.max(axis=1)
                if sub.residue is not None:
                    sub.residue[sl] = r


class SSVD(OperatorMethod):
    name = "ssvd"
    description = "standard truncated SVD, lower-triangular Toeplitz (Ostergaard 1996)"
    default_threshold = dec.SSVD_THRESHOLD
    discretisations = DISCRETISATIONS

    def plan(self, aif, dt_s, options, dtype, xp):
        thr = options.resolved_threshold
        matrix = dec.toeplitz_matrix(aif, dt_s, options.discretisation)
        return xp.asarray(dec.truncated_pinv(matrix, thr).T, dtype=dtype)


class CSVD(OperatorMethod):
    name = "csvd"
    description = "block-circulant SVD, delay-insensitive (Wu 2003)"
    default_threshold = dec.CSVD_THRESHOLD

    def plan(self, aif, dt_s, options, dtype, xp):
        return xp.asarray(dec.csvd_operator(aif, dt_s, options.resolved_threshold), dtype=dtype)


class Tikhonov(OperatorMethod):
    name = "tikhonov"
    description = (
        "Tikhonov filter, fixed mu or GCV (Calamante 2003): block-circulant, or causal "
        "Toeplitz with trapezoid/Volterra weights"
    )
    discretisations = DISCRETISATIONS

    def plan(self, aif, dt_s, options, dtype, xp):
        if options.discretisation == "rectangle":
            return None
        # trapezoid/Volterra: the causal Toeplitz matrix, filtered in its SVD basis
        return dec.toeplitz_svd(aif, dt_s, options.discretisation)

    def apply(self, conc, plan, aif, dt_s, options, xp):
        if plan is not None:
            return dec.tikhonov_svd(conc, plan, options.mu, xp)
        return dec.tikhonov(conc, aif, dt_s, options.mu, xp)


class OSVD(Deconvolution):
    name = "osvd"
    description = "oscillation-index SVD: lowest threshold with OI < limit per voxel (Wu 2003)"
    work_arrays = 8
    flags = (Status.OSVD_NO_PASS,)

    def plan(self, aif, dt_s, options, dtype, xp):
        return osvd_mod.make_plan(aif, dt_s, options.osvd_thresholds)

    def run(self, backend, subjects, options, memory_budget):
        """All subjects' chunks through one queue: their threshold selection is one kernel
        launch on a GPU (:class:`OSVDQueue`)."""
        total = sum(sub.v for sub in subjects)
        per_voxel = self.memory_per_voxel(subjects[0].n, subjects[0].dr2s.dtype.itemsize)
        # a launch holds at most what one chunk of the whole batch would hold
        launch = chunk_slices(
            total, per_voxel, memory_budget, backend, min_voxels=MIN_CHUNK_VOXELS
        )[0]
        queue = OSVDQueue(backend, options.oi_limit, launch.stop - launch.start)
        for sub in subjects:
            for sl in sub.chunks:
                queue.add(sub, sl, osvd_mod.coefficients(sub.dr2s[sl], sub.plan, backend.xp))
        queue.flush()


class OSVDQueue:
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
        self.pending: list[tuple[Subject, slice, Any]] = []
        self.n_pending = 0

    def add(self, sub: Subject, sl: slice, coef: Any) -> None:
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

    def _store(self, sub: Subject, sl: slice, coef: Any, res: osvd_mod.OSVDResult) -> None:
        xp = self.backend.xp
        sub.rmax[sl] = res.rmax
        sub.tmax_i[sl] = res.tmax_index
        sub.thr[sl] = xp.asarray(sub.plan.set_threshold, dtype=sub.thr.dtype)[res.set_index]
        sub.oi[sl] = res.oi
        sub.flags[sl] |= xp.where(res.passed, 0, int(Status.OSVD_NO_PASS)).astype(xp.int32)
        if sub.residue is not None:
            sub.residue[sl] = osvd_mod.residue(coef, sub.plan, res.set_index, xp)


_RESULT_FIELDS = ("rmax", "tmax_index", "set_index", "oi", "passed")


def register(method: Deconvolution) -> Deconvolution:
    """Add a method to the registry (its name becomes a ``--method`` choice)."""
    if not method.name:
        raise ValueError("a deconvolution method needs a name")
    return registry_add(METHODS, method.name, method, "deconvolution method")


def unregister(name: str) -> None:
    """Remove a method (tests that register their own)."""
    METHODS.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered method names (:data:`gpuperf.dsc.registry.METHODS`)."""
    return METHODS.names()


def get(name: str) -> Deconvolution:
    """The method called ``name``; InputError naming ``--method`` otherwise."""
    return registry_get(METHODS, name, "--method")
