"""Buxton general kinetic model for ASL: NumPy twins of ``kernels/models/buxton_*.cuh``.

All models return the *normalised* difference signal ``dM / M0`` (M0 = equilibrium tissue
magnetisation of the voxel), so every constant is shared by all voxels. Parameters are CBF in
ml/100g/min and ATT in s so that bounds such as [0, 300] and [0, 5] apply directly.

Notation (Buxton et al., MRM 40:383, 1998; Alsop et al., MRM 73:102, 2015):
``f = CBF / 6000`` (ml/g/s), ``M0b = M0 / lambda``, ``T1app = 1 / (1/T1t + f/lambda)``,
``t`` = time since the start of labelling (``tau + PLD`` for (p)CASL, ``TI`` for PASL),
``tau`` = labelling duration (pCASL) or bolus duration TI1 (PASL, QUIPSS II / Q2TIPS).

Every model here is written once in C++ (the ``.cuh`` header, run by the batched fitter on the
GPU and, through the host build, on the CPU) and once here; tests hold them together.
"""

from __future__ import annotations

from typing import Any

from gpuperf.fit.models.base import Model

#: ml/100g/min -> ml/g/s
_PER_MIN_100G = 6000.0

#: Below this |z| the functions phi and phi' use their Taylor series (cancellation otherwise).
PHI_SERIES_LIMIT = 0.5


def _phi(xp: Any, z: Any) -> tuple[Any, Any]:
    """``phi(z) = (e^z - 1) / z`` and its derivative, stable near z = 0.

    ``phi'(z) = (e^z (z - 1) + 1) / z^2``. Near 0 both use their Taylor series
    ``sum z^n / (n+1)!`` and ``sum n z^(n-1) / (n+1)!`` (truncation error < 1e-8 for |z| < 0.5),
    exactly as ``gp_asl_phi`` in ``kernels/models/buxton_pasl.cuh``.
    """
    small = xp.abs(z) < PHI_SERIES_LIMIT
    zs = xp.where(small, 1.0, z)  # keeps the direct branch finite where it is not used
    ez = xp.exp(zs)
    phi_direct = (ez - 1.0) / zs
    dphi_direct = (ez * (zs - 1.0) + 1.0) / (zs * zs)
    # Horner form of the two series (terms up to z^7)
    phi_series = 1.0 + z * (
        1 / 2
        + z
        * (
            1 / 6
            + z
            * (
                1 / 24
                + z * (1 / 120 + z * (1 / 720 + z * (1 / 5040 + z * (1 / 40320 + z / 362880))))
            )
        )
    )
    dphi_series = 1 / 2 + z * (
        2 / 6
        + z
        * (
            3 / 24
            + z * (4 / 120 + z * (5 / 720 + z * (6 / 5040 + z * (7 / 40320 + z * 8 / 362880))))
        )
    )
    return xp.where(small, phi_series, phi_direct), xp.where(small, dphi_series, dphi_direct)


def _by_phase(
    xp: Any, during: Any, after: Any, first: tuple, second: tuple, axis: int = -1
) -> tuple[Any, Any]:
    """Model value and Jacobian (CBF, ATT) from their expressions while the bolus arrives
    (``first``) and after it has passed (``second``), each ``(value, d/df, d/dATT)``; 0 before
    ATT. d/df becomes d/dCBF (CBF in ml/100 g/min). The Jacobian's parameter axis is ``axis``
    (-1: voxel-major (V, N, 2); 0: sample-major (2, N, V)).

    Each element is selected into place (the ``second`` value, then ``first`` during the bolus,
    then 0 before arrival), the Jacobian straight into its stacked array: no temporaries.
    """
    before = ~(during | after)
    val = xp.array(second[0], copy=True)
    xp.copyto(val, first[0], where=during)
    xp.copyto(val, 0.0, where=before)
    jac = xp.empty((2, *val.shape) if axis == 0 else (*val.shape, 2), dtype=val.dtype)
    for k, (a, b) in enumerate(((first[1], second[1]), (first[2], second[2]))):
        out = jac[k] if axis == 0 else jac[..., k]
        xp.copyto(out, b)
        xp.copyto(out, a, where=during)
        xp.copyto(out, 0.0, where=before)
    j_f = jac[0] if axis == 0 else jac[..., 0]
    xp.divide(j_f, _PER_MIN_100G, out=j_f)
    return val, jac


def _columns(p: Any, n: int, axis: int) -> list[Any]:
    """The first ``n`` parameters as per-voxel arrays that broadcast against the samples:
    columns (V, 1) of p (V, P) for ``axis=-1`` (:meth:`Model.evaluate`), rows (1, V) of
    p (P, V) for ``axis=0`` (:meth:`Model.evaluate_samples`)."""
    return [p[:, k : k + 1] if axis == -1 else p[k : k + 1] for k in range(n)]


def _sample_times(x: Any, axis: int) -> tuple[Any, Any]:
    """Columns ``t`` and ``tau`` of ``x`` (N, 2) as (1, N) rows (``axis=-1``) or (N, 1)
    columns (``axis=0``)."""
    if axis == -1:
        return x[:, 0][None, :], x[:, 1][None, :]
    return x[:, 0:1], x[:, 1:2]


class _BuxtonBase(Model):
    """Shared metadata. ``consts`` = (t1_tissue_s, t1_blood_s, lambda_ml_g, alpha_eff)."""

    param_names: tuple[str, ...] = ("cbf", "att")
    param_units: tuple[str, ...] = ("ml/100g/min", "s")
    x_names: tuple[str, ...] = ("t_s", "tau_s")
    const_names: tuple[str, ...] = ("t1_tissue_s", "t1_blood_s", "lambda_ml_g", "alpha")
    default_lower: tuple[float, ...] | None = (0.0, 0.0)
    default_upper: tuple[float, ...] | None = (300.0, 5.0)

    def evaluate_at(
        self, xp: Any, p: Any, t: Any, tau: Any, c: Any, axis: int = -1
    ) -> tuple[Any, Any]:
        raise NotImplementedError

    def evaluate_samples(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """:meth:`evaluate` sample-major (p (P, V) -> (N, V), (P, N, V)): the same arithmetic
        broadcast the other way round, hence the same values, without a transposed copy."""
        return self.evaluate_at(xp, p, *_sample_times(x, 0), c, axis=0)


class BuxtonPCASL(_BuxtonBase):
    """(p)CASL tissue compartment of the Buxton general kinetic model.

    ``dM/M0(t) = 0``                                                     for t < ATT,
    ``2 alpha (f/lambda) T1app e^{-ATT/T1b} (1 - e^{-(t-ATT)/T1app})``    for ATT <= t < ATT+tau,
    ``2 alpha (f/lambda) T1app e^{-ATT/T1b} e^{-(t-tau-ATT)/T1app} (1 - e^{-tau/T1app})`` after
    (Buxton et al. 1998, eq. 5 with the (p)CASL delivery function; ``t = tau + PLD``).

    x columns: ``t_s`` (= tau + PLD, s), ``tau_s`` (labelling duration, s).
    """

    name = "buxton_pcasl"
    cuda_header = "models/buxton_pcasl.cuh"
    cuda_struct = "BuxtonPCASL"

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """Model value and Jacobian.

        Parameters
        ----------
        xp : module
            ``numpy`` or ``cupy``.
        p : array (V, 2)
            CBF (ml/100g/min), ATT (s).
        x : array (N, 2)
            ``t = tau + PLD`` (s), ``tau`` (s).
        c : sequence (4,)
            T1 tissue (s), T1 blood (s), lambda (ml/g), effective labelling efficiency alpha.

        Returns
        -------
        f : array (V, N)
            dM / M0.
        J : array (V, N, 2)
            Derivatives with respect to CBF and ATT.
        """
        return self.evaluate_at(xp, p, *_sample_times(x, -1), c)

    def evaluate_at(
        self, xp: Any, p: Any, t: Any, tau: Any, c: Any, axis: int = -1
    ) -> tuple[Any, Any]:
        """:meth:`evaluate` at sample times ``t`` and durations ``tau`` broadcastable to (V, N)
        (per-voxel times: :class:`SliceTimed`); with ``axis=0``, p (P, V) and ``t``, ``tau``
        broadcastable to (N, V): :meth:`evaluate_samples`' layout."""
        return _pcasl_tissue(xp, *_columns(p, 2, axis), t, tau, c, axis)


def _pcasl_tissue(xp: Any, cbf: Any, att: Any, t: Any, tau: Any, c: Any, axis: int = -1):
    """Value (V, N) and Jacobian (V, N, 2) of the (p)CASL tissue term (``BuxtonPCASL``);
    with ``axis=0`` (per-voxel ``cbf``, ``att`` as (1, V) rows) (N, V) and (2, N, V).

    Each element takes exactly one branch of the kernel's ``if``; the exponential of that
    branch (``u`` during the bolus, ``v`` after it) is computed once as ``e``. Shared
    subexpressions are computed once (``q = z / T1app``, ``1 - w``; ``w = e^{-tau/T1app}``
    per voxel when every sample has the same ``tau``): the same operations on the same
    values as the kernel, fewer of them.
    """
    t1t, t1b, lam, alpha = (float(v) for v in c[:4])
    tau = _uniform(xp, tau)
    f = cbf / _PER_MIN_100G
    s = 2.0 * alpha / lam
    tapp = 1.0 / (1.0 / t1t + f / lam)
    dtapp_df = -tapp * tapp / lam
    e_att = xp.exp(-att / t1b)
    d = t - att
    after = d >= tau
    during = (d >= 0) & ~after
    # time since arrival (during) or since the end of the bolus (after); 0 before arrival
    z = xp.where(after, d - tau, xp.where(during, d, 0.0))
    q = z / tapp
    e = xp.exp(-q)  # (-z) / T1app is -(z / T1app) exactly: IEEE division rounds symmetrically
    one_e = 1.0 - e
    # during the bolus (u = e)
    g1 = s * f * tapp * e_att * one_e
    g1_att = s * f * e_att * (-(tapp / t1b) * one_e - e)
    g1_f = s * e_att * (tapp * one_e + f * dtapp_df * (one_e - e * z / tapp))
    # after the bolus has passed (v = e)
    w = xp.exp(-tau / tapp)
    one_w = 1.0 - w
    h = tapp * e * one_w
    g2 = s * f * e_att * h
    g2_att = g2 * (1.0 / tapp - 1.0 / t1b)
    dh_dtapp = e * one_w * (1.0 + q) - e * w * tau / tapp
    g2_f = s * e_att * (h + f * dtapp_df * dh_dtapp)
    return _by_phase(xp, during, after, (g1, g1_f, g1_att), (g2, g2_f, g2_att), axis)


def _uniform(xp: Any, a: Any) -> Any:
    """``a`` reduced to one broadcastable element when all its elements are equal (one
    labelling duration for every sample): operations on it then run once per voxel rather
    than once per sample, on the same values."""
    if a.size > 1 and bool((a == a.ravel()[0]).all()):
        return a.ravel()[:1].reshape((1,) * a.ndim)
    return a


class BuxtonPASL(_BuxtonBase):
    """PASL (QUIPSS II / Q2TIPS) tissue compartment of the Buxton general kinetic model.

    With ``k = 1/T1b - 1/T1app`` and ``F(d) = (e^{k d} - 1)/k = d phi(k d)`` (Buxton 1998, eq. 6;
    REFERENCE.md gives it in terms of ``q(t)``: ``(t-ATT) q = F(t-ATT)``):

    ``dM/M0(t) = 0``                                               for t < ATT,
    ``2 alpha (f/lambda) e^{-t/T1b} F(t - ATT)``                   for ATT <= t < ATT+tau,
    ``2 alpha (f/lambda) e^{-t/T1b} e^{k (t-ATT-tau)} F(tau)``     after.

    x columns: ``t_s`` (= TI, s), ``tau_s`` (= TI1, bolus duration, s).
    """

    name = "buxton_pasl"
    cuda_header = "models/buxton_pasl.cuh"
    cuda_struct = "BuxtonPASL"

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """Model value (V, N) and Jacobian (V, N, 2); arguments as :meth:`BuxtonPCASL.evaluate`
        with ``x = (TI, TI1)``."""
        return self.evaluate_at(xp, p, *_sample_times(x, -1), c)

    def evaluate_at(
        self, xp: Any, p: Any, t: Any, tau: Any, c: Any, axis: int = -1
    ) -> tuple[Any, Any]:
        """:meth:`evaluate` at ``t`` (TI) and ``tau`` (TI1) broadcastable to (V, N) (``axis``
        as :meth:`BuxtonPCASL.evaluate_at`)."""
        t1t, t1b, lam, alpha = (float(v) for v in c[:4])
        cbf, att = _columns(p, 2, axis)
        f = cbf / _PER_MIN_100G
        s = 2.0 * alpha / lam
        k = (1.0 / t1b - 1.0 / t1t) - f / lam
        b = xp.exp(-t / t1b)
        d = t - att
        after = d >= tau
        during = (d >= 0) & ~after
        dc = xp.maximum(d, 0.0)
        da = xp.maximum(d - tau, 0.0)
        # one phi and one exponential per element, as the kernel's single branch:
        # during: phi(k d), e^{k d}; after: phi(k tau), e^{k (d - tau)}
        phi, dphi = _phi(xp, k * xp.where(after, tau, dc))
        ek = xp.exp(k * xp.where(after, da, dc))
        # during
        big_f = dc * phi
        g1 = s * f * b * big_f
        g1_att = -s * f * b * ek
        g1_f = s * b * (big_f - (f / lam) * dc * dc * dphi)
        # after
        f_tau = tau * phi
        g2 = s * f * b * ek * f_tau
        g2_att = -k * g2
        g2_f = s * b * (ek * f_tau - (f / lam) * (da * ek * f_tau + ek * tau * tau * dphi))
        return _by_phase(xp, during, after, (g1, g1_f, g1_att), (g2, g2_f, g2_att), axis)


class BuxtonPCASLArterial(_BuxtonBase):
    """(p)CASL tissue compartment plus a macrovascular (arterial blood) component.

    Adds ``2 alpha (aBV/lambda) e^{-aBAT/T1b}`` on ``aBAT <= t < aBAT + tau`` (plug flow through
    the arteries, Chappell et al., MRM 63:1357, 2010; REFERENCE.md). ``aBV`` is the arterial
    blood volume fraction scaled by M0b = M0/lambda, i.e. the value in the same units as the
    tissue signal (dimensionless, reported in %). ``aBAT`` in s.

    The component is a box in t: its edges carry no gradient, so aBAT is only informed through
    ``e^{-aBAT/T1b}`` and by which samples fall inside the box; fits should start aBAT at a
    value below ATT and bound it (the pipeline uses [0, ATT bound]).
    """

    name = "buxton_pcasl_arterial"
    cuda_header = "models/buxton_pcasl_arterial.cuh"
    cuda_struct = "BuxtonPCASLArterial"
    param_names = ("cbf", "att", "abv", "abat")
    param_units = ("ml/100g/min", "s", "%", "s")
    default_lower = (0.0, 0.0, 0.0, 0.0)
    default_upper = (300.0, 5.0, 10.0, 5.0)

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """Model value (V, N) and Jacobian (V, N, 4); p = (CBF, ATT, aBV %, aBAT s)."""
        return self.evaluate_at(xp, p, *_sample_times(x, -1), c)

    def evaluate_at(
        self, xp: Any, p: Any, t: Any, tau: Any, c: Any, axis: int = -1
    ) -> tuple[Any, Any]:
        """:meth:`evaluate` at ``t`` and ``tau`` broadcastable to (V, N) (``axis`` as
        :meth:`BuxtonPCASL.evaluate_at`)."""
        t1t, t1b, lam, alpha = (float(v) for v in c[:4])
        cbf, att, abv, abat = _columns(p, 4, axis)
        val, jac = _pcasl_tissue(xp, cbf, att, t, tau, c, axis)
        abv = abv / 100.0
        inside = (t >= abat) & (t < abat + tau)
        art_unit = xp.where(inside, 2.0 * alpha / lam * xp.exp(-abat / t1b), 0.0)
        val = val + abv * art_unit
        j_abv = art_unit / 100.0
        j_abat = -abv * art_unit / t1b
        extra = [xp.expand_dims(j, axis) for j in (j_abv, j_abat)]
        return val, xp.concatenate([jac, *extra], axis=axis)


class SliceTimed(Model):
    """A Buxton model whose samples are read ``dt`` later in this voxel: ``t -> t + dt``.

    2D readouts acquire slice k ``SliceTiming[k]`` after the start of the volume, so the
    effective delay of every sample of a voxel in that slice is ``PLD + SliceTiming[k]``
    ((p)CASL; PASL: ``TI + SliceTiming[k]``). The offset is the last parameter, ``dt`` (s),
    held fixed by the caller (``fit_lm(..., fixed=[..., True])``) at the voxel's value given
    in ``p0``: one launch fits every slice. Its Jacobian column is 0 (it is data, not a fitted
    parameter), so leaving it free makes the fit FAILED rather than silently wrong.
    C++: ``GpSliceTimed<Base>`` in ``kernels/models/buxton_sliced.cuh``.
    """

    cuda_header = "models/buxton_sliced.cuh"

    def __init__(self, base: Model) -> None:
        self.base = base
        self.name = f"{base.name}_sliced"
        self.cuda_struct = f"{base.cuda_struct}Sliced"
        self.param_names = (*base.param_names, "dt")
        self.param_units = (*base.param_units, "s")
        self.x_names = base.x_names
        self.const_names = base.const_names
        self.default_lower = (*base.default_lower, -float("inf"))
        self.default_upper = (*base.default_upper, float("inf"))

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """Value (V, N) and Jacobian (V, N, P + 1) at ``t + dt`` of each voxel (dt = p[:, -1])."""
        t = x[:, 0][None, :] + p[:, -1:]
        f, jac = self.base.evaluate_at(xp, p[:, :-1], t, x[:, 1][None, :], c)
        return f, xp.concatenate([jac, xp.zeros_like(jac[..., :1])], axis=-1)

    def evaluate_samples(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """:meth:`evaluate` sample-major: p (P + 1, V) -> (N, V), (P + 1, N, V)."""
        t = x[:, 0:1] + p[-1:]
        f, jac = self.base.evaluate_at(xp, p[:-1], t, x[:, 1:2], c, axis=0)
        return f, xp.concatenate([jac, xp.zeros_like(jac[:1])], axis=0)

    def __repr__(self) -> str:
        return f"SliceTimed({self.base!r})"


BUXTON_PCASL = BuxtonPCASL()
BUXTON_PASL = BuxtonPASL()
BUXTON_PCASL_ARTERIAL = BuxtonPCASLArterial()
BUXTON_PCASL_SLICED = SliceTimed(BUXTON_PCASL)
BUXTON_PASL_SLICED = SliceTimed(BUXTON_PASL)
BUXTON_PCASL_ARTERIAL_SLICED = SliceTimed(BUXTON_PCASL_ARTERIAL)


def slice_timed(model: Model) -> Model:
    """The :class:`SliceTimed` variant of a registered Buxton model."""
    for m in (BUXTON_PCASL_SLICED, BUXTON_PASL_SLICED, BUXTON_PCASL_ARTERIAL_SLICED):
        if m.base.name == model.name:
            return m
    raise KeyError(f"no slice-timed variant of {model.name!r}")
