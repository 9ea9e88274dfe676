"""Pretrain, then fine-tune (task.backbone_from, ablate.chain): the chain through the real command line.

One upstream cell (imagenet_toy, the SSM arm) is trained once for the module; the fine-tuning cells
start from it. Everything runs on generated data in the real formats (ImageNet's JPEG layout,
ADE20K's), pico, a few steps on the CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from ablate import chain
from ablate.config import compose
from ablate.tasks.toydata import generate_imagenet_toy
from hydra_plugins.ablate_grid_sweeper.grid_sweeper import grid_jobs
from conftest import load_records, run_cli

BASE = ["model=pico", "trainer=cpu", "logger=none", "model.init=fan_in", "trainer.warmup_epochs=0"]
UPSTREAM = [*BASE, "task=imagenet_toy", "task.train_size=40", "task.val_size=20", "trainer.max_steps=3",
            "trainer.batch_size=8", "task.image_size=[32,32]"]
# lr ~0 and no weight decay for one step: the fine-tuned backbone's final weights are its weights at step 0
DOWNSTREAM = [*BASE, "task=ade20k_toy", "task.backbone_from=imagenet_toy", "task.train_size=8", "task.val_size=4",
              "trainer.max_steps=1", "trainer.batch_size=4", "trainer.lr=1e-12", "trainer.min_lr=0",
              "trainer.weight_decay=0", "task.multiscale_eval=false"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A folder whose results hold one completed imagenet_toy cell of the SSM arm, seed 0."""
    tmp = tmp_path_factory.mktemp("chain")
    run_cli(["-m", *UPSTREAM, "model.ssm=true", "sweep=pretrain"], tmp)
    return tmp


def _record(results: Path, task: str, ssm: bool) -> dict:
    (record,) = [r for r in load_records(results) if r["task"]["name"] == task and r["factors"]["model.ssm"] is ssm]
    return record


def test_a_single_run_after_a_failed_upstream_is_skipped_and_exits_1(tmp_path):
    run_cli(["-m", *UPSTREAM, "model.ssm=false", "task.val_size=7", "sweep=pretrain"], tmp_path, check=False)
    proc = run_cli([*DOWNSTREAM, "model.ssm=false"], tmp_path, check=False)
    assert proc.returncode == 1
    assert _record(tmp_path / "results", "ade20k_toy", False)["status"] == "skipped"


def test_the_fine_tuned_backbone_starts_from_the_upstream_checkpoint(pretrained):
    run_cli([*DOWNSTREAM, "model.ssm=true"], pretrained)
    results = pretrained / "results"
    upstream, downstream = _record(results, "imagenet_toy", True), _record(results, "ade20k_toy", True)
    assert downstream["status"] == "completed"
    source = results / "runs" / upstream["run_id"] / "checkpoint.pt"
    assert downstream["init"] == {"upstream_run_id": upstream["run_id"], "checkpoint": str(source),
                                  "sha256": chain.sha256(source)}
    pretrained_weights = torch.load(source, weights_only=True)["model"]
    tuned = torch.load(results / "runs" / downstream["run_id"] / "checkpoint.pt", weights_only=True)["model"]
    backbone = {key.removeprefix("features.backbone."): value for key, value in tuned.items()
                if key.startswith("features.backbone.")}
    expected = {key: value for key, value in pretrained_weights.items() if not key.startswith("head.")}
    assert set(backbone) == set(expected)  # the classifier head dropped, nothing else
    assert any(".ssm." in key or "A_log" in key for key in expected)  # the SSM's parameters are carried over
    for key, value in expected.items():
        torch.testing.assert_close(backbone[key], value, rtol=0, atol=1e-8, msg=key)


def test_another_arm_is_refused_with_what_differs(pretrained):
    proc = run_cli([*DOWNSTREAM, "model.ssm=false"], pretrained, check=False)
    assert proc.returncode == 1
    record = _record(pretrained / "results", "ade20k_toy", False)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "UpstreamError"
    assert "model.ssm (true there, false here)" in record["error"]["message"]
    assert "backbone_from=imagenet_toy" in record["error"]["message"]


def test_a_rerun_reuses_the_finished_pretraining(pretrained):
    source = next((pretrained / "results" / "runs").glob("*/checkpoint.pt"))
    before = source.stat().st_mtime_ns
    proc = run_cli(["-m", *UPSTREAM, "model.ssm=true", "sweep=pretrain"], pretrained)
    assert "already completed" in proc.stdout + proc.stderr
    assert source.stat().st_mtime_ns == before


CHAIN_GRIDS = """\
# @package _global_
# The chain as one sweep: the SSM-off arm's pretraining fails (7 validation images for 10 classes),
# the SSM arm's completes; both arms fine-tune from their own. The fine-tuning grid comes first.
trainer:
  batch_size: 4
hydra:
  sweeper:
    params:
      model.ssm: true,false
    grids:
      - task: ade20k_toy
        task.backbone_from: imagenet_toy
        task.train_size: 8
        task.val_size: 4
        task.multiscale_eval: false
        trainer.max_steps: 1
      - task: imagenet_toy
        model.ssm: false
        task.val_size: 7
      - task: imagenet_toy
        model.ssm: true
        task.train_size: 40
        task.val_size: 20
        task.image_size: "[32,32]"
        trainer.max_steps: 3
"""


def chain_experiment(tmp: Path) -> str:
    """hydra.searchpath holding experiment/chain.yaml (CHAIN_GRIDS), for `+experiment=chain`."""
    (tmp / "conf" / "experiment").mkdir(parents=True)
    (tmp / "conf" / "experiment" / "chain.yaml").write_text(CHAIN_GRIDS)
    return f"hydra.searchpath=[file://{tmp / 'conf'}]"


def check_chain_sweep(results: Path) -> None:
    """Of the CHAIN_GRIDS sweep: the SSM arm fine-tuned from its own pretraining, the other skipped."""
    failed, pretrained = _record(results, "imagenet_toy", False), _record(results, "imagenet_toy", True)
    skipped, tuned = _record(results, "ade20k_toy", False), _record(results, "ade20k_toy", True)
    assert (failed["status"], pretrained["status"]) == ("failed", "completed")
    assert skipped["status"] == "skipped"
    assert skipped["init"] == {"upstream_run_id": failed["run_id"], "checkpoint": None, "sha256": None}
    assert f"upstream cell {failed['run_id']} (imagenet_toy) is failed" in skipped["error"]["message"]
    assert skipped["metrics"] == {}  # never trained from scratch
    assert tuned["status"] == "completed"
    assert tuned["init"]["upstream_run_id"] == pretrained["run_id"]
    assert tuned["init"]["sha256"] == chain.sha256(results / "runs" / pretrained["run_id"] / "checkpoint.pt")


def test_a_sweep_runs_the_upstream_first_and_skips_the_cells_of_a_failed_one(tmp_path):
    # grid order puts the fine-tuning cells first; the sweeper and the local pool run them after
    proc = run_cli(["-m", *BASE, "+experiment=chain", chain_experiment(tmp_path), "hydra/launcher=local",
                    "hydra.launcher.max_parallel=2", "sweep=chain"], tmp_path, check=False)
    assert proc.returncode == 1  # a cell failed
    check_chain_sweep(tmp_path / "results")
    assert "1 failed, 1 skipped" in proc.stdout + proc.stderr


def _config(task: str, seed: int, ssm: bool, upstream: str | None = None) -> dict:
    return {"task": {"name": task, "backbone_from": upstream}, "seed": seed,
            "model": {"name": "pico", "ssm": ssm, "scan": "cross"}}


def test_dependencies_pair_each_fine_tuning_cell_with_its_own_arm_and_seed():
    configs = [_config("imagenet_toy", seed, ssm) for seed in (0, 1) for ssm in (True, False)]
    configs += [_config("coco_toy", 1, False, "imagenet_toy"), _config("coco_toy", 0, True, "imagenet_toy"),
                _config("coco_toy", 2, True, "imagenet_toy")]
    assert chain.dependencies(configs) == [[], [], [], [], [3], [0], []]


def test_grid_jobs_put_fine_tuning_cells_after_the_cells_they_start_from():
    grids = [{"task": "coco_toy", "task.backbone_from": "imagenet_toy"}, {"task": "imagenet_toy"}]
    jobs = grid_jobs(["seed=0,1"], grids, [], OverridesParser.create())
    tasks = [next(o for o in job if o.startswith("task=")) for job in jobs]
    assert tasks == ["task=imagenet_toy"] * 2 + ["task=coco_toy"] * 2


def test_several_completed_upstream_recipes_are_ambiguous(tmp_path):
    config = {**_config("coco_toy", 0, True, "imagenet_toy"), "sweep": "s"}
    for run_id, steps in (("a" * 16, 10), ("b" * 16, 20)):
        folder = tmp_path / "runs" / run_id
        folder.mkdir(parents=True)
        record = {"schema": "ablate.result/1", "run_id": run_id, "sweep": "s", "status": "completed", "error": None,
                  "config": {**_config("imagenet_toy", 0, True), "trainer": {"max_steps": steps}},
                  "overrides": [], "factors": {"model.name": "pico", "task": "imagenet_toy",
                                               "task.image_size": "32x32", "seed": 0},
                  "task": {"name": "imagenet_toy", "metric": "top1"}, "metrics": {"top1": 50.0}, "cost": {},
                  "tuning": None, "env": {}}
        (folder / "result.json").write_text(json.dumps(record))
    with pytest.raises(chain.UpstreamError, match="2 completed imagenet_toy cells .* task.backbone_ckpt"):
        chain.find_upstream(config, tmp_path)


def test_imagenet_toy_is_written_in_imagenets_layout(tmp_path):
    folder = generate_imagenet_toy(tmp_path, (32, 32), train_per_class=2, val_per_class=1, seed=0, num_classes=3)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.JPEG")) == [
        "train/n01440764/n01440764_1.JPEG", "train/n01440764/n01440764_2.JPEG",
        "train/n01443537/n01443537_1.JPEG", "train/n01443537/n01443537_2.JPEG",
        "train/n01484850/n01484850_1.JPEG", "train/n01484850/n01484850_2.JPEG",
        "val/n01440764/ILSVRC2012_val_00000001.JPEG", "val/n01443537/ILSVRC2012_val_00000002.JPEG",
        "val/n01484850/ILSVRC2012_val_00000003.JPEG",
    ]
    assert (folder / "val/n01443537/ILSVRC2012_val_00000002.JPEG").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG


def test_plan_shows_each_fine_tuning_cell_its_upstream_row_and_the_whole_detectors_cost(tmp_path):
    from ablate.launch import plan

    jobs = plan.expand(["+experiment=pretrain_demo", f"paths.results={tmp_path}"])
    cache: dict = {}
    rows = [plan.plan_cell(job, cache) for job in jobs]
    configs = [row["_config"] for row in rows]
    plan.upstream_column(rows)
    assert len(rows) == 12 and all("_config" not in row for row in rows)
    for row, config in zip(rows, configs):
        if config["task"]["name"] == "imagenet_toy":
            assert row["upstream"] == ""
            continue
        run_id, planned = row["upstream"].split(" ")
        assert planned == "(planned)"
        upstream = configs[[r["run_id"] for r in rows].index(run_id)]
        assert upstream["task"]["name"] == "imagenet_toy"
        assert (upstream["seed"], upstream["model"]) == (config["seed"], config["model"])
    coco = next(i for i, config in enumerate(configs) if config["task"]["name"] == "coco_toy")
    cfg = compose(jobs[coco])
    task = instantiate(cfg.task)
    whole = task.cost(task.build_model(cfg.model))["detector_macs"]
    assert rows[coco]["train_PFLOP"] == pytest.approx(
        3 * 2 * whole * rows[coco]["steps"] * cfg.trainer.batch_size / 1e15, rel=1e-9)
