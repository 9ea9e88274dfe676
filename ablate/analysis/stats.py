"""Paired statistics: the numbers behind every verdict, on plain arrays (no records, no pandas).

Conventions used throughout the analysis:
    diff       treatment - control, per pair, in the metric's own units (e.g. top-1 points)
    advantage  how much better the arm a claim favours is: diff, sign-flipped when the metric is
               lower-is-better and/or when the claim favours the control arm
Every test is one-sided at `alpha` (TOST for equivalence), so the matching confidence interval is
the two-sided 1 - 2*alpha one (90% at alpha = 0.05).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

TESTS = ("non_inferiority", "superiority", "equivalence")
ARMS = ("treatment", "control")
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # fixed: the same records always give the same interval


def import_libraries() -> None:
    """Import scipy.stats and statsmodels now. They take about a second on two cores, so the functions
    here import them on first use, and a report imports them while a worker reads its records."""
    import scipy.stats  # noqa: F401
    import statsmodels.stats.multitest  # noqa: F401
    import statsmodels.stats.weightstats  # noqa: F401


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison: n pairs, mean diff (treatment - control) with its CI, d_z, p."""

    n: int
    diff: float
    ci_low: float
    ci_high: float
    d_z: float
    p: float


def bootstrap_ci(diffs: Sequence[float], confidence: float) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded). NaN for fewer than 2 values.

    Percentile rather than BCa: with the 3-5 seeds a sweep affords, BCa's jackknife acceleration
    is unstable and degenerates (NaN) whenever the differences are tied.
    """
    values = np.asarray(diffs, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    return _percentile_bootstrap(tuple(values.tolist()), confidence)


@functools.lru_cache(maxsize=4096)
def _percentile_bootstrap(values: tuple[float, ...], confidence: float) -> tuple[float, float]:
    """Cached: a report asks for the same cell group's interval several times (summary table, each
    hypothesis, figures), and the seeded draw makes the answer a function of the values alone."""
    from scipy import stats

    # the resampled means of these values, drawn once for every confidence level asked (scipy's
    # bootstrap_result with no new resamples: the interval equals a fresh draw's, bit for bit)
    result = stats.bootstrap((np.asarray(values),), np.mean, confidence_level=confidence, method="percentile",
                             n_resamples=0, bootstrap_result=_resampled_means(values))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@functools.lru_cache(maxsize=256)  # 80 kB each
def _resampled_means(values: tuple[float, ...]) -> Any:
    """scipy's BootstrapResult of the mean of `values`: BOOTSTRAP_RESAMPLES seeded resamples."""
    from scipy import stats

    return stats.bootstrap((np.asarray(values),), np.mean, method="percentile", n_resamples=BOOTSTRAP_RESAMPLES,
                           rng=np.random.default_rng(BOOTSTRAP_SEED))


def cohens_dz(diffs: Sequence[float]) -> float:
    """Cohen's d_z: mean paired difference over its standard deviation (ddof=1).

    NaN for fewer than 2 pairs or zero spread (the effect size is undefined then).
    """
    values = np.asarray(diffs, dtype=float)
    if len(values) < 2:
        return math.nan
    sd = float(np.std(values, ddof=1))
    return float(np.mean(values)) / sd if sd > 0 else math.nan


def paired_test(
    treatment: Sequence[float],
    control: Sequence[float],
    *,
    test: str,
    favours: str,
    margin: float,
    higher_is_better: bool,
    alpha: float,
) -> PairedResult:
    """Paired comparison of two arms under a declared test; p is one-sided (TOST for equivalence).

    superiority:      H1: advantage of the favoured arm > margin (margin 0: plain superiority)
    non_inferiority:  H1: advantage of the favoured arm > -margin
    equivalence:      H1: -margin < diff < margin (TOST, statsmodels.ttost_paired)
    The t-tests are paired t-tests (a one-sample t-test of the per-pair differences). p is NaN
    with fewer than 2 pairs. When every difference is identical the t statistic is undefined but
    the answer is not: p is 0 when that difference lies strictly inside the alternative, else 1.
    """
    if test not in TESTS:
        raise ValueError(f"test={test!r} is not one of {', '.join(TESTS)}")
    if favours not in ARMS:
        raise ValueError(f"favours={favours!r} is not one of {', '.join(ARMS)}")
    t = np.asarray(treatment, dtype=float)
    c = np.asarray(control, dtype=float)
    diffs = t - c
    n = len(diffs)
    low, high = bootstrap_ci(diffs, 1 - 2 * alpha)
    mean = float(np.mean(diffs)) if n else math.nan
    if n < 2:
        return PairedResult(n, mean, low, high, cohens_dz(diffs), math.nan)
    sign = (1.0 if higher_is_better else -1.0) * (1.0 if favours == "treatment" else -1.0)
    null = margin if test == "superiority" else -margin
    if np.all(diffs == diffs[0]):
        inside = abs(mean) < margin if test == "equivalence" else sign * mean > null
        return PairedResult(n, mean, low, high, cohens_dz(diffs), 0.0 if inside else 1.0)
    if test == "equivalence":
        from statsmodels.stats.weightstats import ttost_paired

        p = float(ttost_paired(t, c, -margin, margin)[0])
    else:
        from scipy import stats

        p = float(stats.ttest_1samp(sign * diffs, null, alternative="greater").pvalue)
    return PairedResult(n, mean, low, high, cohens_dz(diffs), p)


POWER = 0.8  # the power at which minimum detectable effects and seed counts are quoted


def t_quantile(q: float, df: int) -> float:
    """Student's t quantile (scipy), for callers that should not import scipy themselves."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def mde(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Minimum detectable effect of a one-sided paired t-test: (t_{1-alpha} + t_{power}) * sd / sqrt(n),
    both quantiles of Student's t with n - 1 degrees of freedom (the standard closed form for a
    design with n pairs whose differences have standard deviation sd). NaN for n < 2 or no sd."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    return float((t_quantile(1 - alpha, df) + t_quantile(power, df)) * sd / math.sqrt(n))


def pairs_needed(sd: float, effect: float, alpha: float, power: float = POWER, most: int = 10_000) -> int | None:
    """The fewest pairs (seeds) whose `mde` is at most `effect`; None if more than `most` or undefined."""
    if not (math.isfinite(sd) and math.isfinite(effect)) or effect <= 0:
        return None
    if sd == 0:
        return 2
    if mde(sd, most, alpha, power) > effect:
        return None
    low, high = 1, most  # mde falls as n grows: mde(low) > effect >= mde(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if mde(sd, middle, alpha, power) > effect else (low, middle)
    return high


def holm(pvalues: Sequence[float], alpha: float) -> np.ndarray:
    """Holm-adjusted p-values; NaN entries (untested cells) stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    tested = ~np.isnan(p)
    if tested.sum() == 1:
        # a family of one needs no correction (and statsmodels' Holm runs gc.collect() on every call)
        adjusted[tested] = p[tested]
    elif tested.any():
        from statsmodels.stats.multitest import multipletests

        adjusted[tested] = multipletests(p[tested], alpha=alpha, method="holm")[1]
    return adjusted


@dataclass(frozen=True)
class Crossover:
    """Where the mean advantage changes sign between two swept sequence lengths."""

    seq_len: float  # L*, tokens
    below: int  # bracketing sequence lengths
    above: int
    upward: bool  # True: the treatment starts to pay as L grows


def crossovers(seq_lens: Sequence[float], advantage: Sequence[float]) -> list[Crossover]:
    """Sign changes of the mean advantage along L, each located by linear interpolation in log L.

    `seq_lens` must be sorted ascending and distinct; `advantage` is the treatment's mean
    advantage at each. A mean of exactly 0 has no sign: such points are passed over, and the
    change is located between their neighbours.
    """
    found = []
    points = [(length, a) for length, a in zip(seq_lens, advantage) if a != 0]
    for (l1, a1), (l2, a2) in zip(points, points[1:]):
        if a1 * a2 > 0:
            continue
        fraction = -a1 / (a2 - a1)
        log_star = math.log(l1) + fraction * (math.log(l2) - math.log(l1))
        found.append(Crossover(math.exp(log_star), int(l1), int(l2), upward=a2 > a1))
    return found


def trend(seq_lens: Sequence[float], advantage: Sequence[float]) -> tuple[float, float]:
    """Spearman rho of the per-pair advantage against L, with the one-sided p for rho > 0."""
    if len(set(seq_lens)) < 2 or len(set(advantage)) < 2:
        return math.nan, math.nan
    from scipy import stats

    result = stats.spearmanr(seq_lens, advantage, alternative="greater")
    return float(result.statistic), float(result.pvalue)
