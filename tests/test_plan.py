"""`ablate plan`: the job matrix of a known sweep, its cost, its status before/after a cell ran, errors."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from ablate.config import CONF_DIR
from ablate.launch import plan
from ablate.models import build_model, count_cost
from conftest import run_cli

SWEEP = ["model=pico", "task=shapes", "trainer=cpu", "model.ssm=true,false", "seed=0,1", "trainer.max_steps=3"]


def _paths(tmp_path) -> list[str]:
    return [f"paths.results={tmp_path / 'results'}", f"paths.data={tmp_path / 'data'}"]


def _plan_json(capsys, args: list[str]) -> dict:
    capsys.readouterr()  # drop anything printed before
    assert plan.main(["--json", *args]) == 0
    out = capsys.readouterr()
    return json.loads(out.out)


def _cell_factors(row: dict) -> tuple[bool, int]:
    parts = dict(item.split("=", 1) for item in row["cell"].split())
    return parts["model.ssm"].lower() == "true", int(parts["seed"])


def test_plan_of_a_known_sweep_counts_cells_cost_and_status(tmp_path, capsys):
    args = SWEEP + _paths(tmp_path)
    planned = _plan_json(capsys, args)
    rows = planned["cells"]
    assert len(rows) == 4
    assert sorted(_cell_factors(r) for r in rows) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert len({r["run_id"] for r in rows}) == 4  # every cell its own content hash
    assert [r["status"] for r in rows] == ["new"] * 4

    batch = 32  # trainer=cpu's batch size
    expected = {ssm: count_cost(build_model("pico", ssm=ssm, num_classes=10), (32, 32)) for ssm in (True, False)}
    assert expected[True].macs > expected[False].macs  # the SSM arm costs more
    for row in rows:
        ssm, _ = _cell_factors(row)
        cost = expected[ssm]
        assert row["params_M"] == pytest.approx(cost.params / 1e6, rel=1e-12)
        assert row["GMACs"] == pytest.approx(cost.macs / 1e9, rel=1e-12)
        assert row["GMACs_ssm"] == pytest.approx(cost.macs_ssm / 1e9, rel=1e-12)
        assert (row["seq_len"], row["tau"], row["steps"]) == (4, 144, 3)
        assert row["train_PFLOP"] == pytest.approx(3 * 2 * cost.macs * 3 * batch / 1e15, rel=1e-12)
        assert row["GPU_h"] == pytest.approx(row["train_PFLOP"] * 1e15 / 100e12 / 3600, rel=1e-12)
        assert (row["devices"], row["nodes"]) == (1, 1)
    total = 2 * sum(3 * 2 * c.macs * 3 * batch / 1e15 for c in expected.values())
    assert planned["total_PFLOP"] == pytest.approx(total, rel=1e-12)
    assert planned["gpu_hours"] == pytest.approx(total * 1e15 / 100e12 / 3600, rel=1e-12)

    # Run one of the cells through run.py with the same settings (logger is not part of the cell).
    run_cli(["model=pico", "task=shapes", "trainer=cpu", "model.ssm=true", "seed=0", "trainer.max_steps=3",
             "logger=none", "sweep=one"], tmp_path)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")]
    assert record["status"] == "completed"

    after = _plan_json(capsys, args)["cells"]
    assert [r["run_id"] for r in after] == [r["run_id"] for r in rows]  # planning is deterministic
    done = [r for r in after if r["status"] == "completed"]
    assert len(done) == 1 and _cell_factors(done[0]) == (True, 0)
    assert done[0]["run_id"] == record["run_id"]
    assert record["cost"]["macs"] == expected[True].macs and record["cost"]["params"] == expected[True].params
    assert sorted(r["status"] for r in after) == ["completed", "new", "new", "new"]

    # The table form says the same in its summary line.
    capsys.readouterr()
    assert plan.main(args) == 0
    out = capsys.readouterr().out
    assert "4 cells (1 completed, 3 new)" in out
    assert out.count(record["run_id"]) == 1


def test_plan_lists_every_cell_of_the_experiments_grids(tmp_path, capsys):
    # experiments/demo.yaml sweeps model.ssm: true,false and seed: 0,1,2 over two grids: shapes, and occlusion
    # at 96 px with its own recipe -> 6 + 6 = 12 cells, what `run.py -m +experiment=demo` runs. No max_steps
    # for shapes: the plan counts epochs x full batches of its planned training set.
    demo = OmegaConf.load(CONF_DIR / "experiment" / "demo.yaml")
    assert dict(demo.hydra.sweeper.params) == {"model.ssm": "true,false", "seed": "0,1,2"}
    shapes_grid, occlusion_grid = demo.hydra.sweeper.grids
    rows = _plan_json(capsys, ["+experiment=demo"] + _paths(tmp_path))["cells"]
    assert len(rows) == 12 and len({r["run_id"] for r in rows}) == 12
    shapes = [r for r in rows if "occlusion" not in r["cell"]]
    assert sorted(_cell_factors(r) for r in shapes) == [(False, 0), (False, 1), (False, 2), (True, 0), (True, 1), (True, 2)]
    assert {r["steps"] for r in shapes} == {demo.trainer.epochs * (demo.task.train_size // demo.trainer.batch_size)}
    assert {r["seq_len"] for r in shapes} == {4}
    for row in shapes:
        macs = row["GMACs"] * 1e9
        assert row["train_PFLOP"] == pytest.approx(3 * 2 * macs * row["steps"] * demo.trainer.batch_size / 1e15, rel=1e-9)
    occlusion = [r for r in rows if "occlusion" in r["cell"]]
    assert len(occlusion) == 6 and {r["seq_len"] for r in occlusion} == {36}  # 96x96
    assert {r["steps"] for r in occlusion} == {occlusion_grid["trainer.max_steps"]}

    # The command line comes last, as in the sweeper: seed=7 wins in every grid.
    rows = _plan_json(capsys, ["+experiment=demo", "seed=7", "trainer.max_steps=2"] + _paths(tmp_path))["cells"]
    assert len(rows) == 4 and {_cell_factors(r)[1] for r in rows} == {7} and {r["steps"] for r in rows} == {2}


@pytest.mark.parametrize("bad, message", [
    ("model.ssm=true,maybe", "model.ssm='maybe' is not allowed: Value 'maybe' is not a valid bool"),
    ("task.image_size=[32,32],[0,32]", "task.image_size=[0, 32]"),
    ("+rerun=al", "rerun='al' is not allowed"),
    ("trainer.sched=bar", "trainer.sched='bar' is not allowed: one of: cosine, multistep, poly"),
    ("trainer.precision=fp8", "trainer.precision='fp8' is not allowed"),
    ("trainer.checkpoint_every=0", "trainer.checkpoint_every=0 is not allowed"),
    ("trainer.lr=abc", "trainer.lr='abc' is not allowed: Value 'abc' of type 'str' could not be converted to Float"),
])
def test_plan_config_error_exits_1_with_one_line_before_anything_runs(tmp_path, capsys, bad, message):
    capsys.readouterr()
    code = plan.main(["model=pico", "task=shapes", "trainer=cpu", "seed=0,1", "trainer.max_steps=3", bad]
                     + _paths(tmp_path))
    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""  # no partial table
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate plan: ")
    assert message in lines[0]  # the cell's own error, not a wrapper's
    assert not (tmp_path / "results").exists()  # nothing ran, nothing written


def test_plan_run_id_matches_the_record_schema(tmp_path, capsys):
    # run_id ignores non-semantic keys: logger, sweep name, device, workers -> same rows.
    base = _plan_json(capsys, SWEEP + _paths(tmp_path))["cells"]
    other = _plan_json(capsys, SWEEP + ["logger=none", "sweep=elsewhere", "trainer.num_workers=3"]
                       + _paths(tmp_path))["cells"]
    assert [r["run_id"] for r in other] == [r["run_id"] for r in base]
    assert all(len(r["run_id"]) == 16 for r in base)
    changed = _plan_json(capsys, SWEEP + ["trainer.max_steps=4"] + _paths(tmp_path))["cells"]
    assert not {r["run_id"] for r in changed} & {r["run_id"] for r in base}


def test_plan_shares_the_jobs_cell_identity_for_inert_keys(tmp_path, capsys):
    rows = _plan_json(capsys, ["model=pico", "task=shapes", "trainer=cpu", "trainer.max_steps=3",
                               "model.ssm=true,false", "model.scan=cross,raster"] + _paths(tmp_path))["cells"]
    ids = {}
    for row in rows:
        parts = dict(item.split("=", 1) for item in row["cell"].split())
        ids[parts["model.ssm"].lower(), parts["model.scan"]] = row["run_id"]
    assert len(ids) == 4 and len(set(ids.values())) == 3
    assert ids["false", "cross"] == ids["false", "raster"]
    assert ids["true", "cross"] != ids["true", "raster"]
    # an iso-MAC control matches the SSM arm of its scan order, so there the scan is live
    rows = _plan_json(capsys, ["model=pico", "task=shapes", "trainer=cpu", "trainer.max_steps=3", "model.match_macs=true",
                               "model.scan=cross,raster"] + _paths(tmp_path))["cells"]
    assert len({row["run_id"] for row in rows}) == 2


def test_plan_counts_a_generated_datasets_steps_without_generating_it(tmp_path, capsys):
    args = ["model=pico", "trainer=cpu", "trainer.epochs=2", "trainer.batch_size=64", "task.train_size=1010"]
    for task, images in (("shapes", 1010), ("pathfinder", 1010)):
        (row,) = _plan_json(capsys, args + [f"task={task}"] + _paths(tmp_path))["cells"]
        assert row["steps"] == 2 * (images // 64)
    assert not (tmp_path / "data").exists()  # nothing generated, nothing written
    from ablate.config import compose
    from hydra.utils import instantiate

    for task, images in (("shapes", 1010), ("pathfinder", 1010)):  # the generated set has the planned size
        cfg = compose([f"task={task}", "task.train_size=1010", "task.val_size=10", "task.image_size=[32,32]",
                       f"paths.data={tmp_path / 'data'}"])
        generated = instantiate(cfg.task)
        assert generated.planned_train_samples() == images
        generated.prepare()
        assert generated.num_train_samples() == images


def test_pilot_gives_the_seeds_a_power_calculation_gives(tmp_path, capsys):
    import numpy as np
    from test_analysis_factory import paired, write_sweep

    from ablate.analysis.stats import pairs_needed

    rng = np.random.default_rng(0)
    control = 80 + rng.normal(0, 1.0, 4)
    treatment = control + rng.normal(0, 0.6, 4)
    pilot = write_sweep(tmp_path / "pilot", "p", paired(control, treatment, image_size=(32, 32)))
    out = _plan_json(capsys, ["--pilot", str(pilot), "model=pico", "task=shapes", "trainer.max_steps=3"]
                     + _paths(tmp_path))
    h1 = {row["part"]: row for row in out["seeds_needed"] if row["hypothesis"] == "H1"}
    sd = float(np.std(treatment - control, ddof=1))
    assert h1["non_inferiority"]["sd"] == pytest.approx(sd, rel=1e-9)
    assert h1["non_inferiority"]["to resolve"] == "margin 0.3"
    assert h1["non_inferiority"]["seeds needed"] == pairs_needed(sd, 0.3, 0.05) > 4
    assert h1["non_inferiority"]["pilot pairs"] == 4


def test_pilot_that_is_not_a_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        plan.main(["--pilot", str(tmp_path / "nope"), "model=pico"])
    assert info.value.code == 2 and "--pilot=" in capsys.readouterr().err


def test_plan_never_prints_a_cost_it_cannot_see_as_zero(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ABLATE_IMAGENET", raising=False)
    nowhere = ["model=pico", "trainer.max_steps=null", "model.ssm=true,false", *_paths(tmp_path)]
    assert plan.main(["task=imagenet", *nowhere]) == 0  # no ImageNet here: steps unknown
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "2 cells (2 new); training cost unknown: none of the 2 cells has its data on this machine"
    assert plan.main(["task=imagenet,shapes", "trainer.epochs=1", *nowhere]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "training cost at least " in last and "; 2 cells without data on this machine are not counted" in last
