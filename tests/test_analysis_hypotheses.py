"""Hypotheses as YAML, and their verdicts on synthetic records (ablate.analysis.hypotheses)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_analysis_factory import make_record, paired, write_sweep

from ablate.analysis.collect import Collection, collect
from ablate.analysis.hypotheses import (
    CONF_DIR, HypothesisError, evaluate, load_hypotheses, load_hypothesis, mismatches,
)

LONG = (768, 768)  # femto: L = 48 * 48 = 2304 > tau = 1152
LONGER = (1024, 1024)  # L = 4096
SHORT = (32, 32)  # L = 4

H9 = """\
id: H9
claim: On detection the SSM and no SSM are equivalent within 5 mAP points.
scope:
  task_kind: detection
  factors: {trainer.epochs: 1}
test: equivalence
margin: 5
"""


def _collection(tmp_path: Path, recs: list[dict]) -> Collection:
    return collect([write_sweep(tmp_path / "results", "s", recs)], extra_factors=["trainer.epochs"])


def _hypothesis(tmp_path: Path, text: str, name: str = "h.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_hypothesis(path)


def shipped(*ids: str) -> list:
    by_id = {h.id: h for h in load_hypotheses(CONF_DIR)}
    return [by_id[i] for i in ids]


def _noise(n: int, scale: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, n)


def test_shipped_hypotheses_are_the_papers_two_and_h1_at_the_embedded_margin() -> None:
    h1, h1e, h2 = shipped("H1", "H1-embedded", "H2")
    assert (h1.id, h1.test, h1.favours, h1.margin, h1.efficiency) == ("H1", "non_inferiority", "control", 0.3, True)
    assert (h1e.id, h1e.test, h1e.favours, h1e.margin, h1e.scope.task, h1e.scope.regime) == (
        "H1-embedded", "non_inferiority", "control", 2.0, ("shapes",), "short")
    assert (h1.scope.task_kind, h1.scope.regime, h1.factor, h1.treatment, h1.control) == (
        ("classification",), "short", "model.ssm", True, False)
    assert (h2.id, h2.test, h2.favours, h2.scope.regime, h2.trend) == ("H2", "superiority", "treatment", "long", True)
    assert h1.alpha == h2.alpha == 0.05 and h1.min_pairs == h2.min_pairs == 3


def test_a_dropped_in_yaml_file_adds_a_hypothesis(tmp_path: Path) -> None:
    folder = tmp_path / "hypothesis"
    shutil.copytree(CONF_DIR, folder)
    (folder / "h9.YAML").write_text(H9)  # the extension in any case
    loaded = load_hypotheses(folder)
    assert [h.id for h in loaded] == ["H1", "H1-embedded", "H2", "H2-iso", "H2-occlusion", "H2-occlusion-bands", "H3",
                                      "H3-embedded", "H9"]
    assert loaded[-1].test == "equivalence" and loaded[-1].scope.factors == (("trainer.epochs", (1,)),)


@pytest.mark.parametrize("text, message", [
    ("id: X\nclaim: c\ntest: superiority\ntset: 1\n", "unknown key 'tset'; allowed: id, claim, factor,"),
    ("id: X\nclaim: c\ntest: superior\n", "test='superior' is not allowed; allowed: non_inferiority, superiority, equivalence"),
    ("id: X\nclaim: c\ntest: superiority\nscope: {regime: medium}\n", "scope.regime='medium' is not allowed; allowed: short, long, any"),
    ("id: X\nclaim: c\ntest: superiority\nscope: {kind: x}\n", "unknown key scope.'kind'; allowed: task_kind, task, regime"),
    ("id: X\nclaim: c\ntest: non_inferiority\n", "non_inferiority needs a margin > 0"),
    ("id: X\nclaim: c\ntest: superiority\nmetric: top5\n", "higher_is_better is required when metric='top5'"),
    ("id: X\nclaim: c\ntest: superiority\nmin_pairs: 1\n", "min_pairs=1; allowed: an integer >= 2"),
    ("id: X\nclaim: c\ntest: superiority\nlabels: {true: 3}\n", "labels={True: 3}; allowed: a mapping"),
    ("id: X\nclaim: c\ntest: superiority\nlabels: {maybe: SSM}\n",
     "allowed: a mapping from the levels (true, false) to arm names"),
    ("id: X\ntest: superiority\n", "claim is required"),
    ("id: X\nclaim: c\ntest: superiority\ncontrol: true\n", "treatment=True equals control"),
    ("- just\n- a list\n", "expected a mapping of keys"),
    ("id: X\nclaim: c\ntest: superiority\nscope: {task_kind: clasification}\n",
     "scope.task_kind='clasification' is not allowed; allowed: classification, detection, segmentation"),
])
def test_a_bad_hypothesis_file_fails_in_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(HypothesisError) as info:
        _hypothesis(tmp_path, text, "bad.yaml")
    assert message in str(info.value) and str(tmp_path / "bad.yaml") in str(info.value)
    assert "\n" not in str(info.value)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("id: X\nclaim: c\ntest: superiority\n")
    with pytest.raises(HypothesisError, match="b.yaml: id='X' is already declared in .*a.yaml"):
        load_hypotheses(tmp_path)


def test_a_known_effect_is_detected_as_superior(tmp_path: Path) -> None:
    control = 40 + _noise(5, 1.0)
    recs = paired(control, control + 2.0 + _noise(5, 0.2, 1), image_size=LONG, task="det", kind="detection", metric="map")
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    verdict = evaluate(h2, _collection(tmp_path, recs))
    (row,) = verdict.rows[verdict.rows["part"] == "superiority"].to_dict("records")
    assert row["decision"] == "supported" and row["n_pairs"] == 5 and row["p"] < 0.001
    assert row["diff"] == pytest.approx(2.0, abs=0.3) and row["ci_low"] > 0
    assert verdict.parts["superiority"] == "supported"


def test_no_effect_is_not_superior(tmp_path: Path) -> None:
    control = 40 + _noise(5, 1.0)
    recs = paired(control, control + _noise(5, 0.2, 1), image_size=LONG, task="det", kind="detection", metric="map")
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    verdict = evaluate(h2, _collection(tmp_path, recs))
    assert verdict.parts["superiority"] == "not supported" and verdict.decision == "not supported"


def test_a_null_effect_with_enough_seeds_is_non_inferior_and_cheaper(tmp_path: Path) -> None:
    control = 80 + _noise(5, 1.0)
    recs = paired(control, control + _noise(5, 0.05, 2), image_size=SHORT)
    (h1,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H1"]
    verdict = evaluate(h1, _collection(tmp_path, recs))
    assert verdict.parts == {"non_inferiority": "supported", "efficiency": "supported"}
    assert verdict.decision == "supported"
    efficiency = verdict.rows[verdict.rows["part"] == "efficiency"].iloc[0]
    # the SSM arm pays 15 % more MACs for the same top-1: its top-1 per GMAC is 1/1.15 - 1 = -13 % of the control's
    assert efficiency["metric"] == "top1/GMAC, % vs control"
    assert efficiency["diff"] == pytest.approx(100 * (1 / 1.15 - 1), abs=0.2)


def test_a_real_deficit_beyond_the_margin_is_not_non_inferior(tmp_path: Path) -> None:
    control = 80 + _noise(5, 1.0)
    recs = paired(control, control + 1.0 + _noise(5, 0.05, 2), image_size=SHORT)  # the SSM is 1 point better
    (h1,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H1"]
    assert evaluate(h1, _collection(tmp_path, recs)).parts["non_inferiority"] == "not supported"


def test_one_seed_gives_insufficient_evidence_never_a_verdict(tmp_path: Path) -> None:
    recs = paired([40.0], [48.0], image_size=LONG, task="det", kind="detection", metric="map")
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    verdict = evaluate(h2, _collection(tmp_path, recs))
    row = verdict.rows.iloc[0]
    assert row["decision"] == "insufficient evidence" and row["n_pairs"] == 1
    assert "fewer than min_pairs=3" in row["note"]
    assert verdict.decision == "insufficient evidence"


def test_holm_correction_turns_a_borderline_cell_into_not_supported(tmp_path: Path) -> None:
    # treatment - control = 1, 2, 3 in each cell: one-sided p = 0.03709 < 0.05 alone, Holm over two -> 0.07418
    control = np.array([40.0, 41.0, 39.0])
    one = paired(control, control + [1.0, 2.0, 3.0], image_size=LONG, task="det", kind="detection", metric="map")
    two = paired(control, control + [1.0, 2.0, 3.0], image_size=LONGER, task="det", kind="detection", metric="map")
    hypothesis = _hypothesis(tmp_path, "id: X\nclaim: c\ntest: superiority\nscope: {regime: long}\n")
    alone = evaluate(hypothesis, _collection(tmp_path / "a", one)).rows.iloc[0]
    both = evaluate(hypothesis, _collection(tmp_path / "b", one + two)).rows
    assert alone["p"] == pytest.approx(0.037090, abs=1e-5) and alone["decision"] == "supported"
    assert list(both["p_adj"]) == pytest.approx([0.074180, 0.074180], abs=1e-5)
    assert list(both["decision"]) == ["not supported", "not supported"]


def test_scope_regime_and_task_kind_select_records(tmp_path: Path) -> None:
    recs = (paired([80, 81, 82], [80, 81, 82.5], image_size=SHORT)
            + paired([40, 41, 42], [43, 44, 45.5], image_size=LONG, task="det", kind="detection", metric="map"))
    collection = _collection(tmp_path, recs)
    h1, h2 = shipped("H1", "H2")
    assert set(evaluate(h1, collection).rows["cell"].str.extract(r"task=(\w+)")[0]) == {"shapes"}
    assert set(evaluate(h2, collection).rows.query("part == 'superiority'")["cell"].str.extract(r"task=(\w+)")[0]) == {"det"}


def test_user_h3_scope_on_an_unswept_config_key_and_equivalence(tmp_path: Path) -> None:
    control = 40 + _noise(6, 1.0)
    recs = paired(control, control + _noise(6, 0.3, 3), image_size=LONG, task="det", kind="detection", metric="map")
    recs += paired(control, control, image_size=LONG, task="det", kind="detection", metric="map", epochs=5)[:2]
    verdict = evaluate(_hypothesis(tmp_path, H9), _collection(tmp_path, recs))
    (row,) = verdict.rows.to_dict("records")  # the epochs=5 records are out of scope
    assert row["test"] == "equivalence" and row["n_pairs"] == 6 and row["decision"] == "supported"


def test_lower_is_better_metric_reverses_superiority(tmp_path: Path) -> None:
    control = 2.0 + _noise(4, 0.1)
    recs = paired(control, control - 0.5 + _noise(4, 0.05, 1), image_size=LONG, task="seg", kind="segmentation",
                  metric="error", higher_is_better=False)
    hypothesis = _hypothesis(tmp_path, "id: X\nclaim: c\ntest: superiority\n")
    row = evaluate(hypothesis, _collection(tmp_path, recs)).rows.iloc[0]
    assert row["diff"] == pytest.approx(-0.5, abs=0.1) and row["decision"] == "supported"


def test_trend_reads_every_size_of_a_series_that_reaches_the_long_regime(tmp_path: Path) -> None:
    recs = []
    for size in [(256, 256), (512, 512), LONG, LONGER]:
        length = (size[0] // 16) ** 2
        control = 40 + _noise(3, 1.0, length)
        recs += paired(control, control + 2 * np.log(length / 1152) + _noise(3, 0.1, length + 1),
                       image_size=size, task="det", kind="detection", metric="map")
    recs += paired([80, 81, 82], [80, 81, 82], image_size=SHORT)  # shapes never reaches L > tau
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    trend = evaluate(h2, _collection(tmp_path, recs)).rows.query("part == 'trend'")
    (row,) = trend.to_dict("records")
    assert "task=det" in row["cell"] and row["n_pairs"] == 12
    assert row["rho"] > 0.9 and row["decision"] == "supported"


def test_a_trend_through_sizes_where_an_arm_is_at_chance_decides_nothing(tmp_path: Path) -> None:
    # The same rising advantage as above, but the control arm guesses (chance 50) at the two short sizes.
    recs = []
    for size in [(256, 256), (512, 512), LONG, LONGER]:
        length = (size[0] // 16) ** 2
        control = (50.2 if length < 1152 else 60) + _noise(3, 0.3, length)
        recs += paired(control, control + 2 * np.log(length / 256) + _noise(3, 0.1, length + 1),
                       image_size=size, task="pf", chance=50.0)
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    (row,) = evaluate(h2, _collection(tmp_path, recs)).rows.query("part == 'trend'").to_dict("records")
    assert row["rho"] > 0.9 and row["at_chance"] and row["decision"] == "insufficient evidence"
    assert row["note"].startswith("L=256: not clearly above chance: model.ssm=true (mean 50.")
    assert "L=1024: not clearly above chance" in row["note"] and "L=2304" not in row["note"]


def test_a_cell_with_one_arm_only_counts_with_zero_pairs(tmp_path: Path) -> None:
    recs = [make_record(value=v, ssm=False, seed=s, image_size=LONG, task="det", kind="detection", metric="map")
            for s, v in enumerate([40.0, 41.0, 42.0])]
    recs += paired([40, 41, 42], [42, 43, 44], image_size=LONGER, task="det", kind="detection", metric="map")
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    rows = evaluate(h2, _collection(tmp_path, recs)).rows.query("part == 'superiority'")
    row = rows[rows["cell"].str.contains("768x768")].iloc[0]
    assert row["n_pairs"] == 0 and row["decision"] == "insufficient evidence"
    assert "no complete pair" in row["note"]


def test_a_factor_the_records_do_not_sweep_gives_no_cell_groups(tmp_path: Path) -> None:
    recs = paired([70, 71, 72], [72, 73, 74], image_size=SHORT)  # shapes, all fully visible (causal=false)
    (h3,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H3"]
    verdict = evaluate(h3, _collection(tmp_path, recs))
    assert verdict.rows.empty and verdict.decision == "insufficient evidence"
    assert verdict.absent == ("model.causal=true",)


def test_a_trend_with_too_few_seeds_per_length_says_which_lengths_fell_short(tmp_path: Path) -> None:
    recs = []
    for size in ((512, 512), (1024, 1024)):  # two seeds per length, fewer than min_pairs=3
        recs += paired([40, 41], [42, 43], image_size=size, task="det", kind="detection", metric="map")
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    (row,) = evaluate(h2, _collection(tmp_path, recs)).rows.query("part == 'trend'").to_dict("records")
    assert row["n_pairs"] == 0 and row["decision"] == "insufficient evidence"
    assert row["note"] == "0 sequence length(s) with >= 3 pairs; a trend needs 3; L=1024,4096 left out (< 3 pairs)"


@pytest.mark.parametrize("lines, expected", [
    ("factor: model.foo\n", "H9 (h.yaml): factor 'model.foo' is in no record; records carry: model.name, task, task.image_size, seed, model.causal, "
     "model.match_macs, model.scan, model.ssm, trainer.epochs"),
    ("metric: top3\nhigher_is_better: true\n", "H9 (h.yaml): metric 'top3' is in no record; records carry: loss, top1"),
    ("scope: {task: shapez}\n", "H9 (h.yaml): scope.task=shapez matches no record; records have: shapes"),
    ('treatment: "true"\n', "H9 (h.yaml): treatment='true' is a string, but the records' model.ssm values are "
     "booleans (false, true); write it as one of those"),
    ("scope: {factors: {trainer.epoch: 1}}\n", "H9 (h.yaml): scope.factors key 'trainer.epoch' is in no record"),
    ("scope: {task_kind: detection}\n", "H9 (h.yaml): scope.task_kind=detection matches no record; records have: classification"),
    ("scope: {task: shapes, regime: long}\n", "H9 (h.yaml): no record falls in its scope (task=shapes; regime=long (L > τ))"),
])
def test_a_hypothesis_naming_what_no_record_carries_is_reported(tmp_path: Path, lines: str, expected: str) -> None:
    h = _hypothesis(tmp_path, "id: H9\nclaim: c\ntest: superiority\n" + lines)
    collection = _collection(tmp_path, paired(80 + _noise(3, 1.0), 80 + _noise(3, 1.0, 1)))
    found = mismatches(h, collection)
    assert len(found) == 1 and found[0].startswith(expected)


def test_shipped_hypotheses_match_records_without_notes(tmp_path: Path) -> None:
    recs = paired(80 + _noise(3, 1.0), 80 + _noise(3, 1.0, 1)) + paired(
        40 + _noise(3, 1.0), 41 + _noise(3, 1.0, 1), image_size=LONG, task="det", kind="detection", metric="map")
    recs += paired(20 + _noise(3, 1.0), 22 + _noise(3, 1.0, 1), image_size=LONG, task="occlusion", kind="segmentation",
                   metric="iou_occluded", extra_metrics={"iou_visible": 40.0, "occluded_far_minus_near": -3.0})
    collection = _collection(tmp_path, recs)
    assert [line for h in load_hypotheses(CONF_DIR) for line in mismatches(h, collection)] == []


def test_two_arms_at_chance_are_never_non_inferior(tmp_path: Path) -> None:
    # Both arms guess on a 10-class task: trivially "non-inferior" by the t-test, but uninformative.
    control = 10 + _noise(5, 0.2)
    recs = paired(control, control + _noise(5, 0.05, 2), image_size=SHORT, chance=10.0)
    (h1,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H1"]
    verdict = evaluate(h1, _collection(tmp_path, recs))
    assert verdict.decision == "insufficient evidence"
    for _, row in verdict.rows.iterrows():
        assert row["at_chance"] and row["decision"] == "insufficient evidence"
        assert "not clearly above chance: model.ssm=true" in row["note"] and "model.ssm=false" in row["note"]


def test_one_arm_at_chance_is_uninformative_and_learned_arms_decide(tmp_path: Path) -> None:
    (h2,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H2"]
    stuck = paired(50.5 + _noise(5, 0.3), 70 + _noise(5, 1.0, 1), image_size=LONG, chance=50.0, task="pf")
    learned = paired(60 + _noise(5, 1.0), 70 + _noise(5, 1.0, 1), image_size=LONG, chance=50.0, task="pf2")
    rows = evaluate(h2, _collection(tmp_path, stuck + learned)).rows
    superiority = rows[rows["part"] == "superiority"].set_index(rows.loc[rows["part"] == "superiority", "cell"].map(
        lambda cell: cell.split("task=")[1].split(",")[0]))
    assert superiority.loc["pf", "decision"] == "insufficient evidence" and superiority.loc["pf", "at_chance"]
    assert "model.ssm=false (mean 50.5, chance 50)" in superiority.loc["pf", "note"]
    assert "model.ssm=true" not in superiority.loc["pf", "note"]  # the arm that learned is not blamed
    assert superiority.loc["pf2", "decision"] == "supported"


def test_mde_in_each_row_equals_the_closed_form(tmp_path: Path) -> None:
    from scipy import stats as st

    control = 80 + _noise(6, 1.0)
    treatment = control + 0.1 + _noise(6, 0.5, 3)
    (h1,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H1"]
    row = evaluate(h1, _collection(tmp_path, paired(control, treatment, image_size=SHORT))).rows.iloc[0]
    sd = np.std(treatment - control, ddof=1)
    assert row["mde"] == pytest.approx((st.t.ppf(0.95, 5) + st.t.ppf(0.8, 5)) * sd / np.sqrt(6), rel=1e-12)


def test_an_under_powered_not_supported_says_how_many_seeds_would_resolve_it(tmp_path: Path) -> None:
    control = 80 + _noise(3, 1.0)
    treatment = control + _noise(3, 2.0, 4)  # sd of the differences ~2 points, far above the 0.3 margin
    (h1,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H1"]
    row = evaluate(h1, _collection(tmp_path, paired(control, treatment, image_size=SHORT))).rows.iloc[0]
    assert row["decision"] == "not supported" and row["mde"] > 0.3
    from ablate.analysis.stats import pairs_needed

    needed = pairs_needed(float(np.std(treatment - control, ddof=1)), 0.3, 0.05)
    assert row["note"] == f"under-powered: mde {row['mde']:.3g} > the margin 0.3 at 80% power; about {needed} paired seeds would resolve it"


def test_too_few_seeds_of_an_arm_at_chance_say_both(tmp_path: Path) -> None:
    (h1,) = [h for h in load_hypotheses(CONF_DIR) if h.id == "H1"]
    rows = evaluate(h1, _collection(tmp_path, paired([10.0, 10.5], [10.0, 10.0], image_size=SHORT, chance=10.0))).rows
    note = rows[rows["part"] == "non_inferiority"]["note"].iloc[0]
    assert note.startswith("2 paired seed(s), fewer than min_pairs=3; not clearly above chance: model.ssm=true")


def test_an_arm_that_did_not_learn_the_easy_part_decides_nothing(tmp_path: Path) -> None:
    # The SSM arm is far better on the hard metric, but the control never learned the visible lines.
    h = _hypothesis(tmp_path, "id: H9\nclaim: c\ntest: superiority\nlearned: {metric: iou_visible, above: 25}\n")
    recs = []
    for seed in range(3):
        for ssm, value, visible in ((False, 10.0 + seed, 12.0 + seed), (True, 30.0 + seed, 40.0)):
            recs.append(make_record(value=value, ssm=ssm, seed=seed, extra_metrics={"iou_visible": visible}))
    (row,) = evaluate(h, _collection(tmp_path, recs)).rows.to_dict("records")
    assert row["decision"] == "insufficient evidence" and row["at_chance"]
    assert row["note"] == ("did not learn: model.ssm=false (mean iou_visible 13), not above 25 (learned:); "
                           "an arm that did not learn decides nothing")
    # Once both arms clear the threshold the same pairs decide; so do records that do not report the metric.
    for record in recs:
        record["metrics"]["iou_visible"] = 40.0
    (row,) = evaluate(h, _collection(tmp_path / "again", recs)).rows.to_dict("records")
    assert row["decision"] == "supported" and not row["at_chance"]
    for record in recs:
        del record["metrics"]["iou_visible"]
    (row,) = evaluate(h, _collection(tmp_path / "other-task", recs)).rows.to_dict("records")
    assert row["decision"] == "supported" and not row["at_chance"]


@pytest.mark.parametrize("value", ["iou_visible", {"metric": "iou_visible"}, {"metric": "x", "above": "high"}])
def test_a_malformed_learned_gate_is_one_line(tmp_path: Path, value) -> None:
    import yaml as yaml_lib

    with pytest.raises(HypothesisError, match=r"h.yaml: learned"):
        _hypothesis(tmp_path, "id: H9\nclaim: c\ntest: superiority\nlearned: " + yaml_lib.safe_dump(value, default_flow_style=True))
