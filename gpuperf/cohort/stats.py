"""Two-group statistics of the group stage: Welch's t, Hedges' g, covariate-adjusted
differences (ordinary least squares) and correlations with confidence intervals.

Small, explicit formulas on NumPy arrays, with the t and normal distributions from
``scipy.stats``; the tests hold them against ``scipy.stats`` and ``statsmodels``.

References
----------
- Welch, B. L. (1947). The generalization of "Student's" problem when several different
  population variances are involved. Biometrika 34, 28-35.
- Hedges, L. V. & Olkin, I. (1985). Statistical Methods for Meta-Analysis, ch. 5 (the
  small-sample correction ``J = 1 - 3 / (4 df - 1)``).
- Fisher, R. A. (1921). On the "probable error" of a coefficient of correlation (the z
  transform used for the CI of Pearson's r).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Two-sided confidence level of every interval.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """Group ``x`` against the reference group ``y`` (Welch's unequal-variance t test)."""

    n: int
    n_reference: int
    mean: float
    mean_reference: float
    difference: float
    relative_difference: float
    ci_low: float
    ci_high: float
    effect_size: float
    p_value: float


@dataclass(frozen=True)
class Adjusted:
    """Group coefficient of an ordinary least-squares model with covariates."""

    n: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass(frozen=True)
class Correlation:
    """Pearson's r with its Fisher-z CI and t-test p value, and Spearman's rho."""

    n: int
    r: float
    ci_low: float
    ci_high: float
    p_value: float
    rho: float


def _finite(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def hedges_g(x: Sequence[float], y: Sequence[float]) -> float:
    """Hedges' g of ``x`` against ``y``: Cohen's d with the pooled SD (ddof=1) times the
    small-sample correction ``J = 1 - 3 / (4 (n_x + n_y - 2) - 1)`` (Hedges & Olkin 1985).

    NaN when a group has fewer than 2 values or the pooled SD is 0.
    """
    a, b = _finite(x), _finite(y)
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return math.nan
    df = na + nb - 2
    sp = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / df)
    if sp == 0:
        return math.nan
    return float((a.mean() - b.mean()) / sp * (1.0 - 3.0 / (4.0 * df - 1.0)))


def welch(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    """Compare ``x`` with the reference group ``y``: difference of means ``mean(x) - mean(y)``,
    its Welch CI and two-sided p value (Welch-Satterthwaite degrees of freedom), and Hedges' g.

    Non-finite values are dropped. Statistics that need more values than there are (a CI
    needs 2 per group) are NaN.
    """
    from scipy import stats

    a, b = _finite(x), _finite(y)
    na, nb = a.size, b.size
    ma = float(a.mean()) if na else math.nan
    mb = float(b.mean()) if nb else math.nan
    diff = ma - mb
    rel = diff / mb if nb and mb != 0 else math.nan
    lo = hi = p = math.nan
    if na >= 2 and nb >= 2:
        va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
        se = math.sqrt(va + vb)
        if se > 0:
            df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
            t = diff / se
            q = stats.t.ppf(0.5 + confidence / 2, df)
            lo, hi = diff - q * se, diff + q * se
            p = float(2 * stats.t.sf(abs(t), df))
    return Comparison(na, nb, ma, mb, diff, rel, lo, hi, hedges_g(a, b), p)


def ols_group_effect(
    y: Sequence[float],
    in_group: Sequence[bool],
    covariates: np.ndarray,
    confidence: float = CONFIDENCE,
) -> Adjusted:
    """Difference between groups adjusted for covariates: the coefficient of the group
    indicator in ``y ~ 1 + group + covariates``, fitted by ordinary least squares
    (``numpy.linalg.lstsq``), with its t-distribution CI and p value (``n - p`` degrees of
    freedom, ``p`` the number of columns of the design).

    Parameters
    ----------
    y : (n,) float
    in_group : (n,) bool
        True for the compared group, False for the reference group.
    covariates : (n, k) float
        Numeric covariates (categorical ones already dummy-coded). Rows with a non-finite
        ``y`` or covariate are dropped.
    """
    from scipy import stats

    yv = np.asarray(y, dtype=np.float64).ravel()
    g = np.asarray(in_group, dtype=np.float64).ravel()
    c = np.asarray(covariates, dtype=np.float64).reshape(yv.size, -1)
    keep = np.isfinite(yv) & np.isfinite(c).all(axis=1)
    yv, g, c = yv[keep], g[keep], c[keep]
    x = np.column_stack([np.ones_like(yv), g, c])
    n, p = x.shape
    nan = Adjusted(n, math.nan, math.nan, math.nan, math.nan)
    if n <= p or np.linalg.matrix_rank(x) < p:
        return nan
    beta, *_ = np.linalg.lstsq(x, yv, rcond=None)
    resid = yv - x @ beta
    df = n - p
    sigma2 = float(resid @ resid) / df
    cov = sigma2 * np.linalg.inv(x.T @ x)
    se = math.sqrt(cov[1, 1])
    b = float(beta[1])
    if se == 0:
        return Adjusted(n, b, b, b, math.nan if b == 0 else 0.0)
    q = stats.t.ppf(0.5 + confidence / 2, df)
    return Adjusted(n, b, b - q * se, b + q * se, float(2 * stats.t.sf(abs(b / se), df)))


def correlation(
    x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE
) -> Correlation:
    """Pearson's r between ``x`` and ``y`` (pairs with both finite), its CI from Fisher's z
    (``atanh(r) +- z_(1-a/2) / sqrt(n - 3)``), its two-sided p value (t with ``n - 2`` degrees
    of freedom), and Spearman's rho (Pearson's r of the ranks, ties averaged)."""
    from scipy import stats

    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or a.std() == 0 or b.std() == 0:
        return Correlation(n, math.nan, math.nan, math.nan, math.nan, math.nan)
    r = float(np.clip(np.corrcoef(a, b)[0, 1], -1.0, 1.0))
    rho = float(np.corrcoef(stats.rankdata(a), stats.rankdata(b))[0, 1])
    if abs(r) == 1.0:
        return Correlation(n, r, r, r, 0.0, rho)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    p = float(2 * stats.t.sf(abs(t), n - 2))
    lo = hi = math.nan
    if n > 3:
        z, dz = math.atanh(r), stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
        lo, hi = math.tanh(z - dz), math.tanh(z + dz)
    return Correlation(n, r, lo, hi, p, rho)
