"""trainer.devices=N: DDP ranks of one job on CPU (gloo), against one process, through run.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablate import records
from ablate.train import checkpoint
from ablate.train.distributed import shard
from conftest import ROOT, children, clean_env, kill_mid_run, load_records, logged_step, run_cli

# pico on shapes: 80 training images, global batch 32 (2 steps an epoch), a log point every step
CELL = ["model=pico", "task=shapes", "trainer=cpu", "logger=none", "trainer.batch_size=32", "task.train_size=80",
        "task.val_size=40", "trainer.warmup_epochs=0", "trainer.log_every=1", "model.ssm=true"]
DEADLINE_S = 300  # a guard against a hang, not a timing assertion


def test_a_shard_is_a_contiguous_equal_part_of_every_element():
    import torch

    batch = (torch.arange(8), [f"img{i}" for i in range(8)], torch.arange(16).view(8, 2))
    images, names, boxes = shard(batch, 1, 2)
    assert images.tolist() == [4, 5, 6, 7] and names == ["img4", "img5", "img6", "img7"]
    assert boxes.tolist() == [[8, 9], [10, 11], [12, 13], [14, 15]]
    whole = shard(batch, 0, 1)
    assert whole[0].equal(batch[0]) and whole[1] == batch[1] and whole[2].equal(batch[2])


def test_two_gloo_ranks_of_16_images_train_as_one_process_of_32(tmp_path):
    args = CELL + ["trainer.max_steps=6", "sweep=ddp"]
    for name in ("two", "one"):
        (tmp_path / name).mkdir()
    run_cli(args + ["trainer.devices=2"], tmp_path / "two")
    run_cli(args, tmp_path / "one")
    (two,), (one,) = load_records(tmp_path / "two" / "results"), load_records(tmp_path / "one" / "results")
    assert two["run_id"] == one["run_id"]  # trainer.devices does not name a different cell
    assert two["cost"]["world_size"] == 2 and one["cost"]["world_size"] == 1
    assert two["cost"]["train_throughput"] > 0 and two["cost"]["steps"] == 6
    runs = [tmp_path / name / "results" / "runs" / one["run_id"] for name in ("two", "one")]
    curves = [json.loads((run / "curve.json").read_text()) for run in runs]
    losses = [[point[1] for point in curve["train"]] for curve in curves]
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5, abs=1e-6)
    weights = [checkpoint.load(run / "checkpoint.pt")["model"] for run in runs]
    for key in weights[1]:
        assert (weights[0][key].float() - weights[1][key].float()).abs().max().item() <= 1e-5, key


def test_rank_0s_per_step_metrics_reach_the_jobs_wandb_run(tmp_path):
    args = [a for a in CELL if a != "logger=none"] + ["logger=wandb", "trainer.max_steps=6", "sweep=wandb"]
    run_cli(args + ["trainer.devices=2"], tmp_path, env=clean_env(HOME=str(tmp_path)))  # no key: offline
    (record,) = load_records(tmp_path / "results")
    run_dir = tmp_path / "results" / "runs" / record["run_id"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # one run, the job's
    rows = wandb_history(offline)
    steps = [(row["_step"], row["train/loss"]) for row in rows if "train/loss" in row]
    curve = json.loads((run_dir / "curve.json").read_text())["train"]
    assert steps == [(step, pytest.approx(loss, rel=1e-6)) for step, loss, _ in curve]  # every step of rank 0
    assert [row["eval/top1"] for row in rows if "eval/top1" in row] == [record["metrics"]["top1"]]


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline wandb run file: its LevelDB-style log of protobuf records
    (a 7-byte header, then 32 KiB blocks of chunks: crc32c, length, type = full/first/middle/last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records_, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        partial = body if kind in (1, 2) else partial + body
        if kind in (1, 4):
            records_.append(partial)
    rows = []
    for raw in records_:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def _ranks(pid: int) -> list[int]:
    """The rank processes of job `pid`: its children started by multiprocessing's spawn (not its
    resource tracker)."""
    return children(pid, b"spawn_main")


def test_a_rank_that_dies_fails_the_cell_at_once_without_a_hang(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "run.py"), *CELL, "trainer.max_steps=400", "trainer.devices=2", "sweep=dies",
           f"paths.results={results}", f"paths.data={tmp_path / 'data'}"]

    def one_rank(pid: int) -> list[int]:
        ranks = _ranks(pid)
        assert len(ranks) == 2, ranks  # the elastic agent runs in the job process: its children are the ranks
        return [max(ranks)]

    returncode, out = kill_mid_run(cmd, tmp_path, logged_step(results, 3), one_rank)
    assert returncode == 1, out[-3000:]
    (record,) = load_records(results)
    assert record["status"] == records.Status.FAILED and record["error"]["type"] == "RankFailed"
    assert record["error"]["message"].startswith("rank ") and " of 2 failed" in record["error"]["message"]


def test_ddp_resumes_after_the_job_is_killed_and_ends_as_an_uninterrupted_run(tmp_path):
    results = tmp_path / "results"
    args = CELL + ["trainer.max_steps=24", "trainer.checkpoint_every=4", "trainer.devices=2", "sweep=resume"]
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"paths.results={results}", f"paths.data={tmp_path / 'data'}"]
    ranks: list[int] = []

    def the_job(pid: int) -> list[int]:
        ranks.extend(_ranks(pid))
        return [pid]

    returncode, _ = kill_mid_run(cmd, tmp_path, logged_step(results, 10), the_job)  # after the checkpoint of step 8
    assert returncode == -signal.SIGKILL and len(ranks) == 2
    end = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in ranks):  # PR_SET_PDEATHSIG: the ranks follow their job
        assert time.monotonic() < end, "a rank outlived its killed job"
        time.sleep(0.05)
    assert 8 <= resume_to_the_end(tmp_path, cmd, args) < 24


def resume_to_the_end(tmp_path: Path, cmd: list[str], args: list[str]) -> int:
    """Rerun the stopped DDP job `cmd`: it resumes from its checkpoint and ends with the metrics and
    loss curve of one uninterrupted process. Returns the step it resumed from."""
    results = tmp_path / "results"
    (run_dir,) = (results / "runs").iterdir()
    stopped_at = checkpoint.load(run_dir / "checkpoint.pt")["step"]
    assert not (run_dir / "result.json").exists()
    subprocess.run(cmd, cwd=tmp_path, env=clean_env(), check=True, capture_output=True, timeout=DEADLINE_S)
    (tmp_path / "straight").mkdir()
    run_cli(args + ["trainer.devices=1"], tmp_path / "straight")
    (resumed,), (straight,) = load_records(results), load_records(tmp_path / "straight" / "results")
    assert resumed["cost"]["resumed_from_step"] == stopped_at and resumed["status"] == records.Status.COMPLETED
    assert resumed["metrics"] == pytest.approx(straight["metrics"], rel=1e-5, abs=1e-6)
    losses = [[p[1] for p in json.loads((r / "curve.json").read_text())["train"]]
              for r in (run_dir, tmp_path / "straight" / "results" / "runs" / straight["run_id"])]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    return stopped_at


def test_ddp_stopped_by_sigterm_saves_the_step_it_stopped_at_and_resumes_to_an_uninterrupted_run(tmp_path):
    results = tmp_path / "results"
    # No periodic checkpoint before the end: the only one mid-run is the one the signal asks for.
    args = CELL + ["trainer.max_steps=24", "trainer.checkpoint_every=1000", "trainer.devices=2", "sweep=sigterm"]
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"paths.results={results}", f"paths.data={tmp_path / 'data'}"]
    returncode, out = kill_mid_run(cmd, tmp_path, logged_step(results, 6), lambda pid: [pid], sig=signal.SIGTERM)
    assert returncode == -signal.SIGTERM, out[-3000:]  # ended by the signal, as a one-process job does
    assert 6 <= resume_to_the_end(tmp_path, cmd, args) < 24


FAULTY = ["task._target_=faulty_task.FaultyShapes", "trainer.max_steps=8", "sweep=faulty"]


def _faulty_run(tmp_path: Path, fault: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = clean_env(ABLATE_TEST_FAULT=fault, PYTHONPATH=str(ROOT / "tests" / "apps" / "faulty"))
    started = time.monotonic()
    proc = run_cli(CELL + FAULTY + ["trainer.devices=2", *extra], tmp_path, env=env, timeout=DEADLINE_S, check=False)
    return proc, time.monotonic() - started


def test_a_rank_that_hangs_fails_the_job_after_dist_timeout_min_naming_that_rank(tmp_path):
    timeout_min = 0.25
    proc, took = _faulty_run(tmp_path, "hang:1:3", f"trainer.dist_timeout_min={timeout_min}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == records.Status.FAILED and record["error"]["type"] == "RankFailed"
    assert record["error"]["message"] == (
        f"rank 0 of 2 failed: CollectiveTimeout: a collective timed out after {timeout_min:g} min "
        "(trainer.dist_timeout_min): rank 1 never joined it (hung, or far slower than the others)")
    # The job's start (imports, spawning ranks, the data) takes ~20-40 s here; the bound is the issue's.
    assert took < timeout_min * 60 + 60 + 60, took


def test_a_rank_that_raises_fails_the_job_at_once_with_its_exception(tmp_path):
    proc, took = _faulty_run(tmp_path, "raise:1:3")
    assert proc.returncode == 1, proc.stderr[-3000:]
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == records.Status.FAILED and record["error"]["type"] == "RankFailed"
    assert record["error"]["message"] == "rank 1 of 2 failed: RuntimeError: injected failure on rank 1 at step 3"
    assert took < 60 + 60, took


SRUN_TASK_1_OF_2 = {  # what srun gives task 1 of a job of 2 tasks on one node (tests/test_slurm.py runs real ones)
    "SLURM_JOB_ID": "1234", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu-17",
    "SUBMITIT_EXECUTOR": "slurm",  # a job hydra/launcher=slurm submitted
}


def test_a_task_of_an_srun_step_of_two_is_a_rank_and_a_batch_script_is_not(monkeypatch):
    from ablate.train.distributed import slurm_ranks

    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_")) or k in ("MASTER_ADDR", "MASTER_PORT")]:
        monkeypatch.delenv(key)
    for key, value in SRUN_TASK_1_OF_2.items():
        monkeypatch.setenv(key, value)
    ranks = slurm_ranks()
    assert (ranks.rank, ranks.world, ranks.local_rank, ranks.nodes, ranks.master_addr) == (1, 2, 1, 1, "gpu-17")
    assert os.environ["MASTER_PORT"] == str(ranks.master_port) and os.environ["WORLD_SIZE"] == "2"
    assert slurm_ranks().master_port == ranks.master_port  # from the job id: every task, every attempt agree
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")  # the batch script of that job: SLURM_PROCID=0, no step
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert slurm_ranks() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # a job of one task
    assert slurm_ranks() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.delenv("SUBMITIT_EXECUTOR")  # `srun -n 2 python run.py` by hand: not a job of ours
    assert slurm_ranks() is None
