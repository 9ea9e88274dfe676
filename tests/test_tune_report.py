"""The report's tuning section (ablate.analysis.tuning), from the tuner's tuning.json."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json
from optuna.trial import TrialState

from ablate.analysis.tuning import edge_side, tuning_section
from ablate.records.tuning import describe, dimension
from ablate.tune import study as st
from ablate.tune.storage import load_study, open_storage

SPACE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "x": FloatDistribution(-5.0, 5.0),
    "depth": IntDistribution(1, 8),
    "opt": CategoricalDistribution(("adam", "sgd")),
}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_arm(url: str, name: str, arm: str, trials: list[tuple[dict, float | None]],
             n_trials: int = 3) -> None:
    study = st.open_study(open_storage(url), name, direction="maximize", space=SPACE,
                          n_trials=n_trials, pruner=None, arm=arm,
                          sampler={"_target_": "optuna.samplers.TPESampler", "seed": 0})
    for params, value in trials:
        study.enqueue_trial(params)
        trial = study.ask(SPACE)
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)


def summary(url: str, names: list[str]) -> dict:
    """What the tuner writes to tuning.json for these studies."""
    return {"storage": url, "direction": "maximize",
            "studies": [st.study_summary(load_study(url, name)) for name in names]}


def test_section_shows_space_budget_best_and_edge_warnings(tmp_path: Path) -> None:
    url = f"journal://{tmp_path}/o.log"
    # arm "on": best lr 1.3e-4 is at the lower edge (in log space too).
    make_arm(url, "s[m=on]", "m=on", [
        ({"lr": 1.3e-4, "x": 0.0, "depth": 4, "opt": "adam"}, 0.9),
        ({"lr": 1e-2, "x": 1.0, "depth": 2, "opt": "sgd"}, 0.5),
        ({"lr": 1e-3, "x": 1.0, "depth": 2, "opt": "sgd"}, None),
    ])
    # arm "off": best x=4.8 sits at the upper edge; lr 3e-3 is interior in log space (it would
    # be at the lower edge in linear space).
    make_arm(url, "s[m=off]", "m=off", [
        ({"lr": 3e-3, "x": 4.8, "depth": 4, "opt": "sgd"}, 0.7),
        ({"lr": 3e-3, "x": 0.0, "depth": 4, "opt": "sgd"}, 0.6),
        ({"lr": 3e-3, "x": 0.5, "depth": 4, "opt": "sgd"}, 0.65),
    ])
    text = tuning_section(summary(url, ["s[m=on]", "s[m=off]"]))
    assert "| `lr` | float in [0.0001, 0.1], log scale |" in text
    assert "| `opt` | one of adam, sgd |" in text
    assert "| `s[m=on]` | m=on | 3 | 2 | 0 | 1 | 0.9 | 0 | `lr`=0.00013, `x`=0, `depth`=4, `opt`=adam |" in text
    assert "| `s[m=off]` | m=off | 3 | 3 | 0 | 0 | 0.7 | 0 |" in text
    warnings = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(warnings) == 2
    assert "`s[m=on]`: best `lr`=0.00013 lies within 5% of the lower bound 0.0001" in warnings[0]
    assert "`s[m=off]`: best `x`=4.8 lies within 5% of the upper bound 5" in warnings[1]


def test_unequal_budgets_and_empty_arms_are_flagged(tmp_path: Path) -> None:
    url = f"journal://{tmp_path}/o.log"
    make_arm(url, "a", "m=on", [({"lr": 1e-3, "x": 0.0, "depth": 4, "opt": "adam"}, 0.5)])
    make_arm(url, "b", "m=off", [], n_trials=5)
    text = tuning_section(summary(url, ["a", "b"]))
    assert "the arms had different budgets: the comparison is unfair" in text
    assert "`b` has no completed trial" in text
    assert "| `b` | m=off | 5 | 0 | 0 | 0 | — | — | — |" in text


def test_foreign_studies_and_empty_summaries_are_errors(tmp_path: Path) -> None:
    url = f"journal://{tmp_path}/o.log"
    optuna.create_study(storage=open_storage(url), study_name="plain")
    with pytest.raises(ValueError, match="not created by the optuna_fair sweeper"):
        summary(url, ["plain"])
    with pytest.raises(ValueError, match="tuning.json lists no study"):
        tuning_section({"storage": url, "studies": []})


def space(distribution: object) -> object:
    """The report's view of an Optuna distribution: read back from the JSON the tuner writes."""
    return dimension(distribution_to_json(distribution))


def test_edge_is_measured_in_log_space_for_log_params() -> None:
    log_lr = space(FloatDistribution(1e-4, 1e-1, log=True))
    assert edge_side(1.3e-4, log_lr) == "lower"
    assert edge_side(3e-3, log_lr) is None
    assert edge_side(3e-3, space(FloatDistribution(1e-4, 1e-1))) == "lower"
    assert edge_side(0.09, log_lr) == "upper"
    assert edge_side(8, space(IntDistribution(1, 8))) == "upper"
    assert describe(space(IntDistribution(32, 128, step=32))) == "int in [32, 128], step 32"
    assert describe(space(FloatDistribution(0.0, 1.0, step=0.25))) == "float in [0, 1], step 0.25"
    assert describe(space(CategoricalDistribution(("adam", None, 3)))) == "one of adam, None, 3"


def test_a_space_entry_that_is_no_optuna_distribution_is_named() -> None:
    with pytest.raises(ValueError, match=r"name is not one of FloatDistribution, IntDistribution, "
                                         r"CategoricalDistribution"):
        dimension('{"name": "UniformDistribution", "attributes": {"low": 0, "high": 1}}')
