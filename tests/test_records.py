"""The record's one owner (ablate/records/schema.py): generated docs, JSON Schema, validation on read."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from ablate import records
from ablate.records.__main__ import SCHEMA_FILE, generated

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(ROOT.glob("reports/*/records/**/result.json"))


def test_the_docs_table_and_the_json_schema_are_generated_from_the_schema_classes():
    for path, text in generated().items():
        assert path.read_text() == text, f"{path} is out of date: run python -m ablate.records"
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == list(records.RECORD_KEYS)
    table = generated()[ROOT / "docs" / "record.md"]
    for key in ("`cost.seq_len`", "`init.upstream_run_id`", "`family.switches`", "`env.scan_backend`"):
        assert key in table


@pytest.mark.parametrize("path", COMMITTED[:: max(1, len(COMMITTED) // 12)], ids=lambda p: p.parent.name)
def test_committed_records_of_earlier_code_still_validate(path):
    record = json.loads(path.read_text())
    assert records.validate(record) == []
    jsonschema.validate(record, json.loads(SCHEMA_FILE.read_text()))


def _a_record() -> dict:
    return json.loads(COMMITTED[0].read_text())


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["task"].update(chance="ten"), "task.chance='ten' is a str, expected a number or null"),
    (lambda r: r["env"].update(git_dirty="yes"), "env.git_dirty='yes' is a str, expected true or false or null"),
    (lambda r: r["cost"].update(input_size="96x96"), "cost.input_size='96x96' is a str, expected a list"),
    (lambda r: r["cost"].update(steps=12.5), "cost.steps=12.5 is a float, expected a number (integer) or null"),
    (lambda r: r["cost"].update(input_size=[96, "96"]), "cost.input_size[1]='96' is a str, expected a number (integer)"),
    (lambda r: r["factors"].update(seed=[0]), "factors.seed=[0] is a list, expected a scalar (bool, number, string or null)"),
    (lambda r: r.update(error={"type": 1, "message": "m", "traceback": "t"}), "error.type=1 is a int, expected a string"),
    (lambda r: r.update(status="done"), "status='done', expected one of completed, failed"),
    (lambda r: r.pop("env"), "missing keys: env"),
    (lambda r: r.update(init={"upstream_run_id": 7}), "init.upstream_run_id=7 is a int, expected a string or null"),
    (lambda r: r["metrics"].update(top1=True), "metrics.top1=True is a bool, expected a number"),
    (lambda r: r.update(cost=[1]), "cost=[1] is a list, expected a JSON object"),
])
def test_validation_names_the_key_that_is_wrong(change, problem, tmp_path):
    record = copy.deepcopy(_a_record())
    change(record)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError) as raised:
        records.read(path)
    assert str(raised.value).startswith(f"{path}: ") and problem in str(raised.value)
    with pytest.raises(jsonschema.ValidationError):  # the JSON Schema says the same
        jsonschema.validate(record, json.loads(SCHEMA_FILE.read_text()))


def test_a_record_is_written_with_every_block_typed_and_read_back_equal(tmp_path):
    record = records.Record(
        run_id="0" * 16, sweep="s", status=records.Status.COMPLETED, error=None, config={"seed": 0},
        overrides=["seed=0"], factors={"model.name": "pico", "task": "shapes", "task.image_size": "32x32", "seed": 0},
        task=records.TaskInfo("shapes", "classification", "top1", True, 10.0), metrics={"top1": 55.0},
        cost=records.Cost([32, 32], params=10, macs=100, extras={"expansion_ratio": 2.5}), tuning=None,
        env=records.Env("0.1", None, None, "2", "1", "3.11", "cpu", "h", None, "cpp", "t0", "t1"),
        family=records.FamilyFacts("mambaout", ("ssm",), (("ssm", ("no SSM", "SSM")),)),
        init=records.Init("1" * 16), curve=records.CurveSummary("curve.json", 0, None, None),
    )
    store = records.CellStore(tmp_path, record.run_id)
    store.make()
    written = store.write(record)
    read = records.read(store.dir / records.RESULT_FILE)
    assert read == written and read["schema"] == records.SCHEMA
    assert read["cost"]["expansion_ratio"] == 2.5 and "extras" not in read["cost"]  # extras sit beside the fields
    assert read["family"]["switches"] == {"ssm": ["no SSM", "SSM"]}
    assert records.FamilyFacts.from_json(read["family"]) == record.family
    assert read["init"] == {"upstream_run_id": "1" * 16, "checkpoint": None, "sha256": None}
    jsonschema.validate(read, json.loads(SCHEMA_FILE.read_text()))
