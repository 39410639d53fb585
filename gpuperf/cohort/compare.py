"""Group comparisons and correlations over the rows of the group table.

The unit of analysis is the subject: one value per subject (and session) x modality x map x
region, the region mean of the group table (``measure = mean``) or the mean relative to the
reference region (``measure = rel_mean``). Groups and covariates come from the BIDS
``participants.tsv``.

- ``group_stats.tsv``: every group against the reference group (:func:`compare_groups`).
- ``group_correlations.tsv``: every continuous participant column (e.g. EDSS, SDMT) against
  the values, over all subjects with both, and within each group (:func:`correlate`).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gpuperf.cohort import stats
from gpuperf.errors import InputError

# the statistics table's columns are defined with the group page that shows them
from gpuperf.report.cohort import STATS_COLUMNS as STATS_COLUMNS

#: Columns of the group table used as per-subject values.
MEASURES = ("mean", "rel_mean")
#: Missing-value spellings in participants.tsv.
NA = {"", "n/a", "na", "nan"}
#: Participant columns never treated as variables.
ID_COLUMNS = ("participant_id", "session_id")

STATS_DESCRIPTIONS = {
    "modality": "Acquisition: 'dsc' or 'asl'.",
    "session": "Session compared ('ses-<label>'); n/a without sessions.",
    "map": "Map name (cbf, cbv, cbf_gm, ...).",
    "region": "Region name (mask desc or atlas label).",
    "measure": "Per-subject value compared: 'mean' (region mean, absolute, map units) or "
    "'rel_mean' (region mean / reference-region mean).",
    "group": "Group compared with the reference group (participants.tsv column).",
    "reference_group": "Reference group (e.g. control).",
    "n": "Subjects of the group with a finite value.",
    "n_reference": "Subjects of the reference group with a finite value.",
    "mean": "Mean over the group's subjects.",
    "mean_reference": "Mean over the reference group's subjects.",
    "difference": "mean - mean_reference.",
    "relative_difference": "difference / mean_reference.",
    "ci_low": "Lower bound of the 95% CI of the difference (Welch, Welch-Satterthwaite df).",
    "ci_high": "Upper bound of the 95% CI of the difference (Welch).",
    "effect_size": "Hedges' g (pooled SD, small-sample correction 1 - 3/(4 df - 1)).",
    "p_value": "Two-sided p value of Welch's t test.",
    "covariates": "Covariates of the adjusted model (comma separated); n/a without.",
    "adjusted_difference": "Group coefficient of the OLS model value ~ 1 + group + covariates.",
    "adjusted_ci_low": "Lower bound of its 95% CI (t distribution, n - p df).",
    "adjusted_ci_high": "Upper bound of its 95% CI.",
    "adjusted_p_value": "Two-sided p value of the group coefficient.",
}
CORR_COLUMNS = (
    "modality",
    "session",
    "map",
    "region",
    "measure",
    "variable",
    "group",
    "n",
    "r",
    "ci_low",
    "ci_high",
    "p_value",
    "rho",
)
CORR_DESCRIPTIONS = {
    "modality": "Acquisition: 'dsc' or 'asl'.",
    "session": "Session ('ses-<label>'); n/a without sessions.",
    "map": "Map name.",
    "region": "Region name.",
    "measure": "'mean' (absolute) or 'rel_mean' (relative to the reference region).",
    "variable": "Continuous participants.tsv column (e.g. EDSS, SDMT, age).",
    "group": "Subjects included: 'all' or one group.",
    "n": "Subjects with both values finite.",
    "r": "Pearson's correlation coefficient.",
    "ci_low": "Lower bound of the 95% CI of r (Fisher z).",
    "ci_high": "Upper bound of the 95% CI of r (Fisher z).",
    "p_value": "Two-sided p value of r (t test, n - 2 df).",
    "rho": "Spearman's rank correlation.",
}


def read_participants(path: str | PathLike) -> dict[str, dict[str, str]]:
    """``participants.tsv`` as ``{"sub-01": {"group": "control", "age": "34", ...}}``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", "participants table does not exist")
    with open(p, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "participant_id" not in rows[0]:
        raise InputError(p, "participant_id", "expected a TSV with a participant_id column")
    out = {}
    for r in rows:
        pid = (r.pop("participant_id") or "").strip()
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        out[pid] = {k: (v or "").strip() for k, v in r.items() if k is not None}
    return out


def _number(text: str) -> float:
    if text.lower() in NA:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def numeric_columns(
    participants: Mapping[str, Mapping[str, str]], skip: Sequence[str]
) -> list[str]:
    """Columns whose present values all parse as numbers and take at least 3 distinct values."""
    cols: list[str] = []
    for rec in participants.values():
        cols += [c for c in rec if c not in cols]
    out = []
    for c in cols:
        if c in skip or c in ID_COLUMNS:
            continue
        vals = [rec.get(c, "") for rec in participants.values()]
        present = [v for v in vals if v.lower() not in NA]
        nums = [_number(v) for v in present]
        if present and all(np.isfinite(nums)) and len(set(nums)) >= 3:
            out.append(c)
    return out


def covariate_matrix(
    participants: Mapping[str, Mapping[str, str]], subjects: Sequence[str], names: Sequence[str]
) -> np.ndarray:
    """Design columns of the covariates for ``subjects``: numeric columns as they are,
    text columns dummy-coded (one 0/1 column per level but the first, sorted); NaN where a
    subject's value is missing. Raises when a covariate is not a participants.tsv column."""
    cols = []
    for name in names:
        if not any(name in rec for rec in participants.values()):
            raise InputError(None, "covariate", f"{name!r} is not a column of participants.tsv")
        raw = [participants.get(s, {}).get(name, "") for s in subjects]
        nums = [_number(v) for v in raw]
        present = [v for v in raw if v.lower() not in NA]
        if all(np.isfinite(_number(v)) for v in present):
            cols.append(np.array(nums))
            continue
        levels = sorted(set(present))
        for lev in levels[1:]:
            cols.append(np.array([np.nan if v.lower() in NA else float(v == lev) for v in raw]))
    return np.column_stack(cols) if cols else np.zeros((len(subjects), 0))


def _values(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[str, float]]:
    """(modality, session, map, region, measure) -> {subject: value}."""
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        for m in MEASURES:
            v = r.get(m)
            v = math.nan if v is None else float(v)
            if m == "rel_mean" and r.get("reference_region") is None:
                continue
            out[(r["modality"], r["session"], r["map"], r["region"], m)][r["subject"]] = v
    return out


def compare_groups(
    rows: Sequence[Mapping[str, Any]],
    participants: Mapping[str, Mapping[str, str]],
    group_by: str,
    reference_group: str,
    covariates: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Rows of ``group_stats.tsv``: every group of ``group_by`` against ``reference_group``,
    for every modality x session x map x region x measure of the group-table ``rows``.
    Subjects missing from ``participants`` or without a group are left out."""
    groups = sorted(
        {rec.get(group_by, "") for rec in participants.values()} - {"", "n/a"} - {reference_group}
    )
    out = []
    for (mod, ses, mp, region, measure), by_sub in sorted(
        _values(rows).items(), key=lambda kv: tuple(str(k) for k in kv[0])
    ):
        subs = sorted(by_sub)
        grp = [participants.get(s, {}).get(group_by, "") for s in subs]
        vals = np.array([by_sub[s] for s in subs])
        ref = np.array([g == reference_group for g in grp])
        cov = covariate_matrix(participants, subs, covariates) if covariates else None
        for g in groups:
            sel = np.array([x == g for x in grp])
            if not sel.any():
                continue
            c = stats.welch(vals[sel], vals[ref])
            if c.n == 0 or c.n_reference == 0:
                continue  # e.g. lesions, which controls do not have: see group_lesions.tsv
            row: dict[str, Any] = {
                "modality": mod,
                "session": ses,
                "map": mp,
                "region": region,
                "measure": measure,
                "group": g,
                "reference_group": reference_group,
                "n": c.n,
                "n_reference": c.n_reference,
                "mean": c.mean,
                "mean_reference": c.mean_reference,
                "difference": c.difference,
                "relative_difference": c.relative_difference,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "effect_size": c.effect_size,
                "p_value": c.p_value,
                "covariates": ",".join(covariates) if covariates else None,
                "adjusted_difference": math.nan,
                "adjusted_ci_low": math.nan,
                "adjusted_ci_high": math.nan,
                "adjusted_p_value": math.nan,
            }
            if cov is not None:
                both = sel | ref
                a = stats.ols_group_effect(vals[both], sel[both], cov[both])
                row.update(
                    adjusted_difference=a.difference,
                    adjusted_ci_low=a.ci_low,
                    adjusted_ci_high=a.ci_high,
                    adjusted_p_value=a.p_value,
                )
            out.append(row)
    return out


def correlate(
    rows: Sequence[Mapping[str, Any]],
    participants: Mapping[str, Mapping[str, str]],
    variables: Sequence[str],
    group_by: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``group_correlations.tsv``: each variable against each value series, over all
    subjects (``group = all``) and within each group of ``group_by``."""
    out = []
    for (mod, ses, mp, region, measure), by_sub in sorted(
        _values(rows).items(), key=lambda kv: tuple(str(k) for k in kv[0])
    ):
        subs = sorted(by_sub)
        vals = np.array([by_sub[s] for s in subs])
        grp = [participants.get(s, {}).get(group_by, "") if group_by else "" for s in subs]
        sets = [("all", np.ones(len(subs), bool))]
        if group_by:
            sets += [(g, np.array([x == g for x in grp])) for g in sorted(set(grp) - {"", "n/a"})]
        for var in variables:
            x = np.array([_number(participants.get(s, {}).get(var, "")) for s in subs])
            for label, sel in sets:
                c = stats.correlation(x[sel], vals[sel])
                if c.n < 3:
                    continue
                out.append(
                    {
                        "modality": mod,
                        "session": ses,
                        "map": mp,
                        "region": region,
                        "measure": measure,
                        "variable": var,
                        "group": label,
                        "n": c.n,
                        "r": c.r,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "p_value": c.p_value,
                        "rho": c.rho,
                    }
                )
    return out
