"""Group statistics against scipy.stats and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from gpuperf.cohort import compare, stats

statsmodels = pytest.importorskip("statsmodels.api", reason="statsmodels (the test extra)")


@pytest.fixture
def samples():
    rng = np.random.default_rng(7)
    return rng.normal(45.0, 6.0, 9), rng.normal(50.0, 3.0, 13)


def test_welch_matches_scipy(samples):
    x, y = samples
    c = stats.welch(x, y)
    ref = sps.ttest_ind(x, y, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.difference == pytest.approx(x.mean() - y.mean(), rel=1e-12)
    assert c.relative_difference == pytest.approx((x.mean() - y.mean()) / y.mean(), rel=1e-12)
    assert (c.n, c.n_reference) == (9, 13)
    # NaN values are dropped, as scipy's nan_policy="omit"
    c2 = stats.welch(np.r_[x, np.nan], np.r_[np.nan, y])
    assert c2.p_value == pytest.approx(ref.pvalue, rel=1e-10) and c2.n == 9


def test_hedges_g_matches_statsmodels(samples):
    from statsmodels.stats.meta_analysis import effectsize_smd

    x, y = samples
    g, _ = effectsize_smd(x.mean(), x.std(ddof=1), x.size, y.mean(), y.std(ddof=1), y.size)
    assert stats.hedges_g(x, y) == pytest.approx(float(g), rel=1e-10)
    assert stats.welch(x, y).effect_size == pytest.approx(float(g), rel=1e-10)
    # and by hand: pooled SD, J = 1 - 3 / (4 df - 1)
    df = x.size + y.size - 2
    sp = math.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / df)
    assert stats.hedges_g(x, y) == pytest.approx(
        (x.mean() - y.mean()) / sp * (1 - 3 / (4 * df - 1)), rel=1e-12
    )
    assert math.isnan(stats.hedges_g([1.0], y)) and math.isnan(stats.hedges_g([2, 2], [2, 2]))


def test_ols_adjusted_matches_statsmodels():
    rng = np.random.default_rng(3)
    n = 24
    group = np.arange(n) % 2 == 0
    age = rng.uniform(20, 60, n)
    sex = (rng.uniform(size=n) > 0.5).astype(float)
    y = 50 - 5 * group - 0.2 * age + 2 * sex + rng.normal(0, 2, n)
    y[4] = np.nan  # dropped
    a = stats.ols_group_effect(y, group, np.column_stack([age, sex]))
    keep = np.isfinite(y)
    x = statsmodels.add_constant(np.column_stack([group.astype(float), age, sex])[keep])
    fit = statsmodels.OLS(y[keep], x).fit()
    lo, hi = fit.conf_int(0.05)[1]
    assert a.n == n - 1
    assert a.difference == pytest.approx(fit.params[1], rel=1e-9)
    assert (a.ci_low, a.ci_high) == pytest.approx((lo, hi), rel=1e-9)
    assert a.p_value == pytest.approx(fit.pvalues[1], rel=1e-7)
    # rank-deficient design (a covariate equal to the group): NaN, not a number
    bad = stats.ols_group_effect(y, group, group[:, None].astype(float))
    assert math.isnan(bad.difference)


def test_correlation_matches_scipy():
    rng = np.random.default_rng(11)
    x = rng.normal(size=15)
    y = 0.6 * x + rng.normal(scale=0.8, size=15)
    c = stats.correlation(x, y)
    ref = sps.pearsonr(x, y)
    ci = ref.confidence_interval(0.95)
    assert c.r == pytest.approx(ref.statistic, rel=1e-12)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert c.rho == pytest.approx(sps.spearmanr(x, y).statistic, rel=1e-12)
    assert math.isnan(stats.correlation([1, 2], [3, 4]).r)


def _rows(values, region="NAWM"):
    return [
        {
            "subject": s,
            "session": None,
            "modality": "asl",
            "map": "cbf",
            "region": region,
            "mean": v,
            "rel_mean": None,
            "reference_region": None,
        }
        for s, v in values.items()
    ]


def test_compare_groups_rows():
    part = {
        "sub-01": {"group": "control", "age": "30", "sex": "F", "edss": "n/a"},
        "sub-02": {"group": "control", "age": "41", "sex": "M", "edss": "n/a"},
        "sub-03": {"group": "control", "age": "35", "sex": "F", "edss": "n/a"},
        "sub-04": {"group": "patient", "age": "33", "sex": "M", "edss": "2.0"},
        "sub-05": {"group": "patient", "age": "45", "sex": "F", "edss": "3.5"},
        "sub-06": {"group": "patient", "age": "39", "sex": "F", "edss": "6.0"},
        "sub-07": {"group": "patient", "age": "28", "sex": "M", "edss": "1.0"},
    }
    vals = {"sub-01": 30.0, "sub-02": 31.0, "sub-03": 29.5, "sub-04": 27.0, "sub-05": 26.0}
    vals |= {"sub-06": 25.0, "sub-07": 28.5}
    rows = compare.compare_groups(_rows(vals), part, "group", "control", ["age", "sex"])
    assert len(rows) == 1  # rel_mean without a reference region gives no rows
    r = rows[0]
    assert tuple(r) == compare.STATS_COLUMNS
    assert (r["group"], r["reference_group"], r["n"], r["n_reference"]) == (
        "patient",
        "control",
        4,
        3,
    )
    ctl, pat = [30.0, 31.0, 29.5], [27.0, 26.0, 25.0, 28.5]
    ref = sps.ttest_ind(pat, ctl, equal_var=False)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert r["covariates"] == "age,sex"
    y = np.array(ctl + pat)
    design = np.column_stack(
        [np.r_[0, 0, 0, 1, 1, 1, 1], [30, 41, 35, 33, 45, 39, 28], [0, 1, 0, 1, 0, 0, 1]]
    ).astype(float)
    fit = statsmodels.OLS(y, statsmodels.add_constant(design)).fit()
    assert r["adjusted_difference"] == pytest.approx(fit.params[1], rel=1e-9)
    assert r["adjusted_p_value"] == pytest.approx(fit.pvalues[1], rel=1e-7)
    assert compare.numeric_columns(part, skip=["group"]) == ["age", "edss"]
    corr = compare.correlate(_rows(vals), part, ["edss"], "group")
    assert {c["group"] for c in corr} == {"all", "patient"}  # controls have no EDSS
    c = next(c for c in corr if c["group"] == "patient")
    ref = sps.pearsonr([2.0, 3.5, 6.0, 1.0], pat)
    assert c["n"] == 4 and c["r"] == pytest.approx(ref.statistic, rel=1e-12)
