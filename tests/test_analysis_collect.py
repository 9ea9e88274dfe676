"""Reading records into one table and pairing the arms (ablate.analysis.collect)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_analysis_factory import make_record, paired, write_sweep

from ablate import records
from ablate.analysis.collect import collect, pair

SSM = ("model.ssm", True, False)


def test_a_sweep_becomes_one_row_per_record_with_factors_and_costs(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "results", "s", paired([80.0, 81.0], [80.5, 81.5]), ["model.ssm=true,false"])
    collection = collect([sweep])
    runs = collection.runs
    assert len(runs) == 4 and collection.problems.empty
    assert {"model.ssm", "seed", "task", "task.image_size", "cost.macs", "cost.seq_len", "metrics.top1"} <= set(runs)
    assert sorted(runs["value"]) == [80.0, 80.5, 81.0, 81.5]
    assert collection.sweeps[0].jobs == 4
    assert collection.sweeps[0].commands == ("python run.py -m model.ssm=true,false",)


def test_pairs_match_on_every_other_factor_and_seed(tmp_path: Path) -> None:
    recs = paired([80.0, 81.0, 82.0], [80.5, 80.0, 83.0]) + paired([70.0], [75.0], image_size=(64, 64))
    collection = collect([write_sweep(tmp_path / "results", "s", recs)])
    pairing = pair(collection.runs, collection.factors, *SSM)
    assert len(pairing.pairs) == 4 and pairing.unpaired.empty
    small = pairing.pairs[pairing.pairs["task.image_size"] == "32x32"].sort_values("seed")
    assert list(small["diff"]) == pytest.approx([0.5, -1.0, 1.0])
    # the whole-group override `model=femto` is covered by model.name: no separate factor
    assert "model" not in collection.factors and "model.name" in pairing.cell_factors


def test_unpaired_cells_are_reported_with_the_overrides_that_fill_them(tmp_path: Path) -> None:
    recs = paired([80.0, 81.0], [80.5, 81.5])
    recs.append(make_record(value=79.0, ssm=False, seed=2))  # treatment seed 2 never ran
    recs.append(make_record(value=78.0, ssm=False, seed=3))
    recs.append(make_record(value=None, ssm=True, seed=3, status="diverged"))
    collection = collect([write_sweep(tmp_path / "results", "s", recs)])
    unpaired = pair(collection.runs, collection.factors, *SSM).unpaired
    assert list(unpaired["seed"]) == [2, 3]
    assert list(unpaired["missing"]) == ["treatment", "treatment"]
    assert list(unpaired["missing_status"]) == ["no record", "diverged"]
    assert unpaired["overrides"].iloc[0] == "model=femto model.ssm=true task=shapes task.image_size=[32,32] seed=2"


def test_corrupt_mismatched_and_missing_records_are_listed_never_dropped(tmp_path: Path) -> None:
    results = tmp_path / "results"
    good = paired([80.0], [80.5])
    old_schema = dict(make_record(seed=5), schema="ablate.result/0")
    no_metric = make_record(seed=6)
    no_metric["metrics"] = {}
    sweep = write_sweep(results, "s", good + [old_schema, no_metric])
    (results / "runs" / old_schema["run_id"] / "result.json").write_text(json.dumps(old_schema))
    (results / "runs" / good[0]["run_id"] / "result.json").write_text('{"schema": "ablate.res')  # torn file
    (results / "runs" / no_metric["run_id"] / "result.json").write_text(json.dumps(no_metric))
    (sweep / "7" / ".hydra").mkdir(parents=True)
    (sweep / "7" / ".hydra" / "overrides.yaml").write_text("- seed=7\n")  # died before its cell.json
    gone = make_record(seed=8)
    records.write_json_atomic(sweep / "8" / "cell.json", {"run_id": gone["run_id"], "run_dir": str(results / "runs" / "gone"),
                                                          "overrides": ["seed=8"]})
    collection = collect([sweep])
    problems = dict(zip(collection.problems["problem"], collection.problems["kind"]))
    assert len(collection.runs) == 1
    assert any("schema='ablate.result/0'" in p for p in problems)
    assert any(p.startswith("unreadable record") for p in problems)
    assert any("lacks its primary metric 'top1'" in p for p in problems)
    assert any("no cell.json" in p and "seed=7" in p for p in problems)
    assert any("job 8 points here, no record (seed=8)" == p for p in problems)
    assert sorted(problems.values()) == ["missing record"] * 2 + ["unreadable record"] * 3


def test_several_sweeps_and_a_results_root_read_each_record_once(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shared = paired([80.0], [80.5])
    one = write_sweep(results, "one", shared)
    two = write_sweep(results, "two", shared + paired([70.0], [71.0], image_size=(64, 64)))
    collection = collect([one, two], results_root=results)
    assert len(collection.runs) == 4 and collection.problems.empty
    assert [s.name for s in collection.sweeps] == ["one", "two"]


def test_records_that_differ_only_in_config_get_the_key_as_a_factor(tmp_path: Path) -> None:
    # two experiments with different epochs defaults (not overridden): same factors, different cells
    recs = paired([80.0], [80.5], epochs=1) + paired([85.0], [86.0], epochs=5)
    collection = collect([write_sweep(tmp_path / "results", "s", recs)])
    assert "trainer.epochs" in collection.factors
    assert any("trainer.epochs" in note for note in collection.notes)
    pairing = pair(collection.runs, collection.factors, *SSM)
    assert sorted(pairing.pairs["diff"]) == pytest.approx([0.5, 1.0])


def test_a_missing_sweep_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere: sweep folder does not exist \(expected results/sweeps/<sweep>/\)"):
        collect([tmp_path / "nowhere"])


def test_an_empty_sweep_gives_empty_tables(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    collection = collect([tmp_path / "empty"])
    pairing = pair(collection.runs, collection.factors, *SSM)
    assert collection.runs.empty and pairing.pairs.empty and pairing.unpaired.empty


def _written_before_causal_and_match_macs(record: dict) -> dict:
    """`record` as the runner wrote it before MambaOut had those settings (nor records a family block)."""
    old = json.loads(json.dumps(record))
    for key in ("causal", "match_macs"):
        del old["config"]["model"][key]
        del old["factors"][f"model.{key}"]
    del old["family"]
    return old


def test_records_older_than_a_setting_are_read_with_the_behaviour_they_had_never_dropped(tmp_path: Path) -> None:
    from ablate.analysis.hypotheses import evaluate, load_hypotheses

    old = [_written_before_causal_and_match_macs(r) for r in paired([80.0, 81.0, 82.0], [80.2, 81.1, 82.3])]
    # the report asks for every factor a hypothesis scopes on (H1's model.match_macs, H3's model.causal)
    collection = collect([write_sweep(tmp_path / "results", "old", old)], extra_factors=["model.causal", "model.match_macs"])
    runs = collection.runs
    assert len(runs) == 6 and (runs["model.match_macs"] == False).all() and (runs["model.causal"] == False).all()  # noqa: E712
    assert sorted(collection.notes) == [
        "6 record(s) were written before model.causal existed: read as model.causal=false, the only behaviour there was then",
        "6 record(s) were written before model.match_macs existed: read as model.match_macs=false, the only behaviour "
        "there was then"]
    # H1's scope asks for model.match_macs=false: the old records are in it, all three pairs
    (h1,) = [h for h in load_hypotheses(None) if h.id == "H1-embedded"]
    assert evaluate(h1, collection).pairing.pairs["seed"].tolist() == [0, 1, 2]
    # a current record is read as written, and a DeiT record (no SSM) never gets MambaOut's settings
    assert records.predated_settings(paired([80.0], [81.0])[0]) == {}
    assert records.predated_settings({"config": {"model": {"name": "deit_tiny", "causal": False}}}) == {}
