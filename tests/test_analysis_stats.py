"""Known-answer tests of the paired statistics (ablate.analysis.stats)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ablate.analysis import stats

CONTROL = np.array([80.0, 81.0, 79.0])
DIFFS = np.array([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3 -> t = 2 / (1 / sqrt 3) = 3.4641, df 2


def test_superiority_is_a_one_sided_paired_t_test() -> None:
    result = stats.paired_test(CONTROL + DIFFS, CONTROL, test="superiority", favours="treatment", margin=0.0,
                               higher_is_better=True, alpha=0.05)
    assert result.n == 3 and result.diff == pytest.approx(2.0)
    assert result.p == pytest.approx(0.037090, abs=1e-5)  # P(t_2 > 3.4641)
    assert result.d_z == pytest.approx(2.0)  # mean / sd = 2 / 1


def test_favouring_control_or_a_lower_is_better_metric_flips_the_direction() -> None:
    kwargs = dict(test="superiority", margin=0.0, alpha=0.05)
    for_control = stats.paired_test(CONTROL + DIFFS, CONTROL, favours="control", higher_is_better=True, **kwargs)
    lower_better = stats.paired_test(CONTROL + DIFFS, CONTROL, favours="treatment", higher_is_better=False, **kwargs)
    assert for_control.p == pytest.approx(1 - 0.037090, abs=1e-5)
    assert lower_better.p == pytest.approx(for_control.p)
    assert for_control.diff == pytest.approx(2.0)  # diff is always treatment - control


def test_non_inferiority_tests_against_minus_the_margin() -> None:
    # control claimed non-inferior: treatment's advantage must be < margin. Diffs 1,2,3 vs margin 3:
    # t = (3 - 2) / (1 / sqrt 3) = 1.7321 -> p = P(t_2 > 1.7321) = 0.11270
    result = stats.paired_test(CONTROL + DIFFS, CONTROL, test="non_inferiority", favours="control", margin=3.0,
                               higher_is_better=True, alpha=0.05)
    assert result.p == pytest.approx(0.112702, abs=1e-5)


def test_equivalence_is_tost() -> None:
    # TOST p = max of the two one-sided p; bounds +-4 around mean 2 with se 1/sqrt 3:
    # upper: t = (2 - 4) * sqrt 3 = -3.4641 -> p = 0.037090; lower: t = 6 * sqrt 3 -> p ~ 0.0028
    result = stats.paired_test(CONTROL + DIFFS, CONTROL, test="equivalence", favours="treatment", margin=4.0,
                               higher_is_better=True, alpha=0.05)
    assert result.p == pytest.approx(0.037090, abs=1e-5)


def test_one_pair_gives_no_p() -> None:
    one = stats.paired_test([81.0], [80.0], test="superiority", favours="treatment", margin=0.0,
                            higher_is_better=True, alpha=0.05)
    assert one.n == 1 and math.isnan(one.p) and math.isnan(one.ci_low) and one.diff == 1.0


@pytest.mark.parametrize("test, favours, margin, p", [
    ("superiority", "treatment", 0.0, 0.0),  # +1 every time: strictly superior
    ("superiority", "treatment", 1.0, 1.0),  # not by more than a margin of 1
    ("non_inferiority", "control", 0.3, 1.0),  # the treatment is 1 better: control is inferior
    ("equivalence", "treatment", 2.0, 0.0),  # |1| < 2
])
def test_identical_differences_are_decided_by_where_they_lie(test: str, favours: str, margin: float, p: float) -> None:
    tied = stats.paired_test([81.0, 82.0, 83.0], [80.0, 81.0, 82.0], test=test, favours=favours, margin=margin,
                             higher_is_better=True, alpha=0.05)
    assert tied.p == p and (tied.ci_low, tied.ci_high) == (1.0, 1.0) and math.isnan(tied.d_z)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    diffs = [0.4, -0.1, 0.3, 0.2, 0.0, 0.5]
    first = stats.bootstrap_ci(diffs, 0.9)
    assert first == stats.bootstrap_ci(diffs, 0.9)
    assert first[0] < np.mean(diffs) < first[1]
    assert min(diffs) <= first[0] and first[1] <= max(diffs)  # a percentile CI stays within the data
    wider = stats.bootstrap_ci(diffs, 0.99)
    assert wider[0] <= first[0] and first[1] <= wider[1]


def test_a_bootstrap_interval_equals_a_fresh_seeded_draw_at_every_confidence() -> None:
    from scipy.stats import bootstrap

    diffs = [0.4, -0.1, 0.3, 0.2, 0.0, 0.5, 0.7]
    for confidence in (0.95, 0.9, 0.99):  # one set of resampled means serves every level
        fresh = bootstrap((np.asarray(diffs),), np.mean, confidence_level=confidence, method="percentile",
                          n_resamples=stats.BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
        assert stats.bootstrap_ci(diffs, confidence) == (fresh.confidence_interval.low, fresh.confidence_interval.high)


def test_holm_known_answer_and_untested_cells() -> None:
    adjusted = stats.holm([0.01, 0.04, math.nan, 0.03], alpha=0.05)
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone: 0.03, 0.06, 0.06
    assert adjusted[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[2])


def test_crossover_interpolates_in_log_length() -> None:
    (found,) = stats.crossovers([256, 1024, 4096], [-2.0, -1.0, 1.0])
    assert found.seq_len == pytest.approx(2048.0)  # halfway in log between 1024 and 4096
    assert (found.below, found.above, found.upward) == (1024, 4096, True)
    down = stats.crossovers([100, 400], [3.0, -1.0])
    assert down[0].seq_len == pytest.approx(100 * 4 ** 0.75) and not down[0].upward


def test_crossover_skips_exact_zeros_and_constant_signs() -> None:
    assert stats.crossovers([10, 20, 40], [1.0, 2.0, 3.0]) == []
    (found,) = stats.crossovers([100, 200, 400], [-1.0, 0.0, 1.0])
    assert found.seq_len == pytest.approx(200.0) and (found.below, found.above) == (100, 400)


def test_trend_is_a_one_sided_spearman() -> None:
    rho, p = stats.trend([100, 100, 400, 400, 1600, 1600], [-1.0, -0.8, 0.1, 0.2, 1.0, 1.3])
    assert rho == pytest.approx(0.956183, abs=1e-5)  # ties in L get average ranks
    assert p < 0.01
    assert all(math.isnan(v) for v in stats.trend([100, 100], [1.0, 2.0]))


def test_unknown_test_or_arm_is_rejected_in_one_line() -> None:
    with pytest.raises(ValueError, match="test='superior' is not one of non_inferiority, superiority, equivalence"):
        stats.paired_test([1.0], [0.0], test="superior", favours="treatment", margin=0, higher_is_better=True, alpha=0.05)
    with pytest.raises(ValueError, match="favours='both'"):
        stats.paired_test([1.0], [0.0], test="superiority", favours="both", margin=0, higher_is_better=True, alpha=0.05)


def test_mde_is_the_paired_t_closed_form_and_pairs_needed_inverts_it() -> None:
    from scipy import stats as st

    from ablate.analysis.stats import mde, pairs_needed

    for sd, n, alpha in ((1.0, 5, 0.05), (2.8, 3, 0.05), (0.4, 20, 0.025)):
        expected = (st.t.ppf(1 - alpha, n - 1) + st.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
        assert mde(sd, n, alpha) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(mde(1.0, 1, 0.05)) and math.isnan(mde(math.nan, 5, 0.05))
    n = pairs_needed(1.0, 0.3, 0.05)
    assert mde(1.0, n, 0.05) <= 0.3 < mde(1.0, n - 1, 0.05)  # the fewest seeds, not just enough
    assert n == 71
    assert pairs_needed(1.0, 0.0, 0.05) is None and pairs_needed(0.0, 0.3, 0.05) == 2
