"""Storage URLs and study helpers: resume checks, the interrupted-trial rule, the budget."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from ablate.tune import study as st
from ablate.tune.errors import TuneConfigError
from ablate.secrets import redact
from ablate.tune.storage import dereference, open_storage, resolve_storage_url

SPACE = {"x": FloatDistribution(-5.0, 5.0)}
TPE = {"_target_": "optuna.samplers.TPESampler", "seed": 0}
MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_study(url: str, name: str = "s", **kwargs) -> optuna.Study:
    settings = dict(direction="maximize", space=SPACE, n_trials=4, sampler=TPE, pruner=MEDIAN,
                    arm=None)
    settings.update(kwargs)
    return st.open_study(open_storage(url), name, **settings)


def test_storage_urls_resolve_to_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_url(None, Path("sweep")) == f"sqlite:///{tmp_path}/sweep/optuna.db"
    assert resolve_storage_url("sqlite:///a.db", Path("x")) == f"sqlite:///{tmp_path}/a.db"
    assert resolve_storage_url("journal://j.log", Path("x")) == f"journal://{tmp_path}/j.log"
    assert resolve_storage_url("journal:///srv/j.log", Path("x")) == "journal:///srv/j.log"
    pg = "postgresql://me:secret@db:5432/optuna"
    assert resolve_storage_url(pg, Path("x")) == pg
    assert redact(pg) == "postgresql://me:***@db:5432/optuna"
    with pytest.raises(TuneConfigError, match=r"hydra.sweeper.storage='optuna.db': expected"):
        resolve_storage_url("optuna.db", Path("x"))


def test_storage_references_reach_jobs_as_references_and_open_the_url_behind_them(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/ref/optuna.db"
    monkeypatch.setenv("ABLATE_TEST_URL", url)
    (tmp_path / "url.txt").write_text(url + "\n")
    assert resolve_storage_url("env:ABLATE_TEST_URL", Path("x")) == "env:ABLATE_TEST_URL"
    assert resolve_storage_url("file:url.txt", Path("x")) == f"file:{tmp_path}/url.txt"
    assert dereference(f"file:{tmp_path}/url.txt") == dereference("env:ABLATE_TEST_URL") == url
    new_study("env:ABLATE_TEST_URL")
    assert optuna.load_study(study_name="s", storage=open_storage(f"file:{tmp_path}/url.txt"))
    monkeypatch.setenv("ABLATE_TEST_URL", "ftp://x")  # the URL behind a reference is checked too
    with pytest.raises(TuneConfigError, match="hydra.sweeper.storage='env:ABLATE_TEST_URL': unknown"):
        resolve_storage_url("env:ABLATE_TEST_URL", Path("x"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(TuneConfigError, match=r"tuning.storage=file:empty.txt: empty.txt is empty"):
        dereference("file:empty.txt")


@pytest.mark.parametrize("scheme", ["sqlite:///", "journal://"])
def test_a_study_survives_reopening_the_storage(tmp_path: Path, scheme: str) -> None:
    url = f"{scheme}{tmp_path}/store/optuna.x"
    study = new_study(url)
    trial = study.ask(SPACE)
    study.tell(trial, 1.5)
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [t.value for t in again.trials] == [1.5]
    assert st.decode_space(again.user_attrs[st.SPACE]) == SPACE
    assert again.user_attrs[st.N_TRIALS] == 4 and again.user_attrs[st.PRUNER] == MEDIAN


def test_resuming_with_another_space_or_direction_is_refused(tmp_path: Path) -> None:
    url = f"journal://{tmp_path}/o.log"
    new_study(url)
    with pytest.raises(TuneConfigError, match="differs from the one study 's' was created with"):
        new_study(url, space={"x": FloatDistribution(0.0, 1.0)})
    with pytest.raises(TuneConfigError, match="direction=minimize: study 's' was created with maximize"):
        new_study(url, direction="minimize")


def test_a_resumed_seeded_sampler_does_not_replay_its_first_proposals(tmp_path: Path) -> None:
    url = f"journal://{tmp_path}/o.log"
    first = new_study(url).ask(SPACE).params
    resumed = new_study(url).ask(SPACE).params
    assert resumed != first
    fresh = new_study(f"journal://{tmp_path}/other.log").ask(SPACE).params
    assert fresh == first  # same seed, same start: what makes arms comparable


def test_interrupted_trials_are_failed_and_their_parameters_reenqueued(tmp_path: Path) -> None:
    url = f"journal://{tmp_path}/o.log"
    study = new_study(url)
    done = study.ask(SPACE)
    study.tell(done, 1.0)
    ours, untagged, foreign = (study.ask(SPACE) for _ in range(3))
    ours.set_user_attr(st.SWEEP_DIR, "/sweeps/a")
    foreign.set_user_attr(st.SWEEP_DIR, "/sweeps/b")  # another worker's live trial
    assert st.used_budget(study) == 4

    assert st.recover_interrupted(study, "/sweeps/a") == [ours.number, untagged.number]

    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:4]] == [TrialState.COMPLETE, TrialState.FAIL,
                                             TrialState.FAIL, TrialState.RUNNING]
    assert "interrupted" in trials[ours.number].user_attrs[st.NOT_RUN]
    assert st.used_budget(study) == 2  # the finished trial and the other worker's
    retried = [study.ask(SPACE) for _ in range(2)]
    assert [t.params for t in retried] == [ours.params, untagged.params]
    assert [t.user_attrs[st.RETRY_OF] for t in retried] == [ours.number, untagged.number]


def test_completed_twin_and_best_trial(tmp_path: Path) -> None:
    study = new_study(f"journal://{tmp_path}/o.log")
    assert st.best_trial(study) is None
    pruned = study.ask(SPACE)
    study.tell(pruned, state=TrialState.PRUNED)
    assert st.completed_twin(study, pruned.params) is None  # only COMPLETE trials are reused
    done = study.ask(SPACE)
    study.tell(done, 2.0)
    assert st.completed_twin(study, dict(done.params)).number == done.number
    assert st.best_trial(study).number == done.number


def test_sampler_and_pruner_nodes_are_checked() -> None:
    assert isinstance(st.build_pruner(None), optuna.pruners.NopPruner)
    with pytest.raises(TuneConfigError, match="hydra.sweeper.sampler=.*expected a node whose _target_ is an optuna sampler"):
        st.build_sampler({"_target_": "optuna.pruners.NopPruner"})
    with pytest.raises(TuneConfigError, match="hydra.sweeper.pruner=.*optuna pruner"):
        st.build_pruner({"_target_": "optuna.samplers.RandomSampler"})
