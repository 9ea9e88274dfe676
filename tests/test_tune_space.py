"""Search-space parsing with Hydra's override parser (ablate.tune.space)."""
from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ablate.tune.errors import TuneConfigError
from ablate.tune.space import parse_plan

PARSER = OverridesParser.create()


def plan(*arguments: str, params: dict | None = None, per_arm: str | None = None):
    return parse_plan(params, list(arguments), per_arm, PARSER)


def test_stock_plugin_syntax_maps_to_optuna_distributions() -> None:
    p = plan(
        "x=interval(-5, 5)",
        "depth=int(interval(1, 8))",
        "lr=tag(log, interval(1e-4, 1e-1))",
        "width=range(32, 129, 32)",
        "frac=range(0, 1, 0.25)",
        "opt=choice(adam, sgd)",
        "flag=true,false",
    )
    assert p.distributions() == {
        "x": FloatDistribution(-5.0, 5.0),
        "depth": IntDistribution(1, 8),
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "width": IntDistribution(32, 128, step=32),  # Python's range: the stop is excluded
        "frac": FloatDistribution(0.0, 0.75, step=0.25),
        "opt": CategoricalDistribution(("adam", "sgd")),
        "flag": CategoricalDistribution((True, False)),
    }
    assert p.arms[0].label is None and p.fixed == ()


def test_written_values_parse_back_to_the_same_value() -> None:
    p = plan("lr=tag(log, interval(1e-6, 1e-1))", "depth=int(interval(1, 8))",
             "name='a b',c", "flag=true,false")
    values = {"lr": 1e-05, "depth": 3, "name": "a b", "flag": False}
    written = p.param_overrides(values)
    parsed = {o.key_or_group: o.value() for o in PARSER.parse_overrides(written)}
    assert parsed == values


def test_cli_replaces_config_params_and_plain_overrides_stay_fixed() -> None:
    p = plan("task=shapes", "x=interval(0, 1)", "+trainer.epochs=3",
             params={"x": "interval(-5, 5)", "y": "choice(1, 2)"})
    assert p.distributions() == {"x": FloatDistribution(0.0, 1.0),
                                 "y": CategoricalDistribution((1, 2))}
    assert p.fixed == ("task=shapes", "+trainer.epochs=3")


def test_per_arm_factor_levels_become_arms_not_a_dimension() -> None:
    p = plan("model.ssm=true,false", "x=interval(0, 1)", per_arm="model.ssm")
    assert [a.label for a in p.arms] == ["model.ssm=true", "model.ssm=false"]
    assert [a.overrides for a in p.arms] == [("model.ssm=True",), ("model.ssm=False",)]
    assert list(p.distributions()) == ["x"]
    single = plan("+model.ssm=false", "x=interval(0, 1)", per_arm="model.ssm")
    assert [a.overrides for a in single.arms] == [("+model.ssm=false",)]


@pytest.mark.parametrize(
    "arguments, per_arm, message",
    [
        (["x=tag(log, interval(0, 1))"], None, "log interval needs bounds > 0"),
        (["x=interval(2, 1)"], None, "interval needs start < end"),
        (["x=tag(wide, interval(0, 1))"], None, "unsupported tag(s) wide"),
        (["x=shuffle(range(1, 5))"], None, "shuffle has no meaning"),
        (["x=range(1, 2)"], None, "at least two values"),
        (["task=shapes"], None, "empty search space"),
        (["x=interval(0, 1)"], "model.ssm", "per_arm=model.ssm: no levels given"),
        (["x=interval(0, 1)", "model.ssm=interval(0, 1)"], "model.ssm", "not an interval"),
    ],
)
def test_bad_space_is_one_clear_line(arguments: list[str], per_arm: str | None, message: str) -> None:
    with pytest.raises(TuneConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        plan(*arguments, per_arm=per_arm)
    assert "\n" not in str(info.value)
