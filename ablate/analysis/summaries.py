"""Descriptive tables behind the report: per cell group arm summaries, efficiency, sequence length.

All of them compare the arms of one pairing (the report uses model.ssm: SSM on vs off). Intervals
here are descriptive, at DESCRIPTIVE_CONFIDENCE; the verdicts use 1 - 2*alpha (see stats.py).
"""
from __future__ import annotations

import math

import pandas as pd

from ablate.analysis import stats
from ablate.analysis.collect import COMPLETED, Pairing, at_level, series_factors, with_cells

DESCRIPTIVE_CONFIDENCE = 0.95
GIGA = 1e9  # MACs -> GMACs (one multiply-add = one MAC, per image)
MEGA = 1e6  # parameters -> millions


def arm_summary(runs: pd.DataFrame, pairing: Pairing) -> pd.DataFrame:
    """One row per cell group: each arm's metric (all its completed seeds), the paired difference,
    and the efficiency numbers (GMACs, SSM GMACs, params, metric per GMAC, throughput, Pareto)."""
    cells = with_cells(runs, pairing.cell_factors)
    cells = cells[(cells["status"] == COMPLETED) & cells["value"].notna()]
    rows = []
    pairs_of = dict(tuple(pairing.pairs.groupby("cell", sort=False)))
    for cell, group in cells.groupby("cell", sort=False):
        control = group[at_level(group[pairing.factor], pairing.control)]
        treatment = group[at_level(group[pairing.factor], pairing.treatment)]
        if control.empty and treatment.empty:
            continue
        pairs = pairs_of.get(cell, pairing.pairs.iloc[:0])
        low, high = stats.bootstrap_ci(pairs["diff"], DESCRIPTIVE_CONFIDENCE)
        first = group.iloc[0]
        higher = bool(first["higher_is_better"])
        row = {
            "cell": cell, "label": first["label"], "task": first["task"], "task_kind": first["task_kind"],
            "metric": first["metric"], "higher_is_better": higher, "model.name": first["model.name"],
            "task.image_size": first["task.image_size"], "seq_len": first["cost.seq_len"], "tau": first["cost.tau"],
            "n_pairs": len(pairs), "diff": pairs["diff"].mean() if len(pairs) else math.nan,
            "ci_low": low, "ci_high": high,
        }
        for suffix, arm in (("c", control), ("t", treatment)):
            row.update(_arm_numbers(arm, suffix))
        row["macs_overhead"] = row["gmacs_t"] / row["gmacs_c"] - 1
        row["throughput_ratio"] = row["throughput_t"] / row["throughput_c"]
        row["dominant"] = _dominant(row, higher)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["task", "model.name", "seq_len", "label"], kind="stable").reset_index(drop=True)


def _arm_numbers(arm: pd.DataFrame, suffix: str) -> dict[str, float]:
    values = arm["value"].astype(float)
    gmacs = arm["cost.macs"].astype(float).mean() / GIGA
    mean, sd, n = values.mean(), values.std(ddof=1), len(arm)
    # half-width of the t interval of the mean over the arm's seeds; 0 with one seed (none to show)
    ci = stats.t_quantile((1 + DESCRIPTIVE_CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    return {
        f"n_{suffix}": n, f"mean_{suffix}": mean, f"sd_{suffix}": sd, f"half_ci_{suffix}": ci,
        f"gmacs_{suffix}": gmacs, f"gmacs_ssm_{suffix}": arm["cost.macs_ssm"].astype(float).mean() / GIGA,
        f"params_{suffix}": arm["cost.params"].astype(float).mean() / MEGA,
        f"per_gmac_{suffix}": mean / gmacs, f"throughput_{suffix}": arm["cost.eval_throughput"].astype(float).mean(),
    }


def _dominant(row: dict, higher_is_better: bool) -> str:
    """Which arm Pareto-dominates the other on (metric mean, MACs): no worse on both, better on one."""
    if any(math.isnan(row[k]) for k in ("mean_t", "mean_c", "gmacs_t", "gmacs_c")):
        return ""  # an arm without a completed run
    sign = 1 if higher_is_better else -1
    for arm, other in (("t", "c"), ("c", "t")):
        metric_gain = sign * (row[f"mean_{arm}"] - row[f"mean_{other}"])
        macs_saving = row[f"gmacs_{other}"] - row[f"gmacs_{arm}"]
        if metric_gain >= 0 and macs_saving >= 0 and (metric_gain > 0 or macs_saving > 0):
            return "treatment" if arm == "t" else "control"
    return "neither"


def sequence_points(pairing: Pairing) -> pd.DataFrame:
    """Mean paired difference per (series, sequence length); a series is a cell group without its
    image size. Only series swept over two or more sequence lengths are kept."""
    pairs = with_cells(pairing.pairs, series_factors(pairing), "series", "series_label")
    rows = []
    for (series, seq_len), group in pairs.groupby(["series", "cost.seq_len"], sort=False):
        low, high = stats.bootstrap_ci(group["diff"], DESCRIPTIVE_CONFIDENCE)
        first = group.iloc[0]
        sign = 1 if first["higher_is_better"] else -1
        rows.append({
            "series": series, "series_label": first["series_label"], "task": first["task"],
            "metric": first["metric"], "image_size": first["task.image_size"], "seq_len": int(seq_len),
            "tau": first["cost.tau"], "n_pairs": len(group), "diff": group["diff"].mean(),
            "advantage": sign * group["diff"].mean(), "ci_low": low, "ci_high": high,
            "regime": regime(seq_len, first["cost.tau"]),
        })
    points = pd.DataFrame(rows, columns=[
        "series", "series_label", "task", "metric", "image_size", "seq_len", "tau", "n_pairs", "diff",
        "advantage", "ci_low", "ci_high", "regime"])
    swept = points.groupby("series")["seq_len"].transform("nunique") >= 2
    return points[swept].sort_values(["task", "series_label", "seq_len"], kind="stable").reset_index(drop=True)


def regime(seq_len: float, tau: float) -> str:
    """short (L < tau) | long (L > tau) | at τ; empty when tau is unknown (docs/study.md §2)."""
    if tau is None or math.isnan(tau):
        return ""
    return "short" if seq_len < tau else "long" if seq_len > tau else "at τ"


def crossover_table(points: pd.DataFrame) -> pd.DataFrame:
    """Each sign change of the treatment's mean advantage along L, with L* and L*/tau.

    The paper predicts the SSM starts to pay near L = 6*D = tau, i.e. L*/tau near 1.
    """
    rows = []
    for _, series in points.groupby("series", sort=False):
        taus = series["tau"].dropna().unique()
        for found in stats.crossovers(series["seq_len"].tolist(), series["advantage"].tolist()):
            tau = float(taus[0]) if len(taus) == 1 else math.nan  # tau is one number per variant
            rows.append({
                "task": series["task"].iloc[0], "series_label": series["series_label"].iloc[0],
                "between": f"{found.below}-{found.above}", "seq_len_star": found.seq_len, "tau": tau,
                "ratio": found.seq_len / tau, "clear": _clear(series, found),
                "direction": "treatment starts to pay" if found.upward else "treatment stops paying",
            })
    columns = ["task", "series_label", "between", "seq_len_star", "tau", "ratio", "direction", "clear"]
    return pd.DataFrame(rows, columns=columns)


def _clear(series: pd.DataFrame, found: stats.Crossover) -> bool:
    """Both bracketing sizes' CIs exclude zero: the sign change is not noise around a null effect."""
    bracket = series[series["seq_len"].isin([found.below, found.above])]
    return bool(((bracket["ci_low"] > 0) | (bracket["ci_high"] < 0)).all())
