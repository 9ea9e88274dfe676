"""Resumable sweeps through run.py: SIGKILL + restart, half-done sweeps, shared cells, concurrent jobs.

Training is counted by the loop's last log line ("step N/N") in each cell's train.log, which the job
appends to on every attempt; a reused cell logs "reused" instead.
"""
from __future__ import annotations

import fcntl
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ablate import records
from ablate.train import checkpoint
from conftest import ROOT, clean_env, load_records, run_cli

# A longer single cell for the kill test: 6 epochs of 10 steps, a checkpoint every 5 steps, a log line per step.
LONG = ["model=pico", "task=shapes", "trainer=cpu", "logger=none", "trainer.max_steps=60", "trainer.batch_size=8",
        "task.train_size=80", "task.val_size=40", "trainer.warmup_epochs=0", "trainer.checkpoint_every=5",
        "trainer.log_every=1", "trainer.num_workers=0", "model.ssm=true"]
DEADLINE_S = 300  # a guard against a hung child, not a timing assertion
NO_REPORT = ["~hydra.callbacks.report"]  # the end-of-multirun report is tested elsewhere (test_job.py)


def _cmd(args: list[str], results: Path, data: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *args, f"paths.results={results}", f"paths.data={data}"]


def _trainings(run_dir: Path, steps: int = 3) -> int:
    """How many attempts trained this cell to the end (one 'step N/N' line each)."""
    log = run_dir / "train.log"
    return log.read_text().count(f" step {steps}/{steps} ") if log.exists() else 0


def _reuses(run_dir: Path) -> int:
    return (run_dir / "train.log").read_text().count("reused, not retrained")


def _runs(results: Path) -> dict[tuple[bool, int], Path]:
    """(ssm, seed) -> run folder, for every cell with a record."""
    out = {}
    for record in load_records(results):
        key = (record["factors"]["model.ssm"], record["factors"]["seed"])
        assert key not in out, f"two records for the cell {key}"
        out[key] = results / "runs" / record["run_id"]
    return out


def _popen(cmd: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stderr=subprocess.STDOUT, **kwargs)


def _lines(proc: subprocess.Popen, silence_s: float) -> Iterator[str]:
    """proc's stdout lines as they come; raises queue.Empty when none comes for silence_s (a hung
    child fails the test instead of blocking it in a read)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    while (line := lines.get(timeout=silence_s)) is not None:
        yield line


def _wait_for(predicate, what: str, procs=()) -> None:
    end = time.monotonic() + DEADLINE_S
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"a job ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_sigkill_then_restart_resumes_and_ends_with_the_uninterrupted_metrics(tmp_path, reap):
    results, data = tmp_path / "results", tmp_path / "data"
    other = tmp_path / "uninterrupted"
    cmd = _cmd(LONG + ["sweep=killed"], results, data)
    # An uninterrupted run of the same cell in another results folder, alongside (compared at the end).
    with open(tmp_path / "straight.out", "w") as out:
        straight_proc = reap(_popen(_cmd(LONG + ["sweep=straight"], other, data), tmp_path, stdout=out))
    proc = reap(_popen(cmd, tmp_path, stdout=subprocess.PIPE, text=True))
    state = None
    # The loop logs "step N/60" (stdout, unbuffered) before it saves the checkpoint of step N. Once a
    # step past 15 is logged, load the checkpoint; kill at once when it is mid-epoch (an epoch is 10
    # steps: 15, 25, ...), the harder case for a resume (data order and RNG state inside an epoch).
    for line in _lines(proc, DEADLINE_S):
        match = re.search(r" step (\d+)/60 ", line)
        if match and int(match.group(1)) >= 16:
            ckpts = list((results / "runs").glob("*/checkpoint.pt"))
            assert len(ckpts) == 1
            state = checkpoint.load(ckpts[0])
            if state["step"] >= 10 and state["step"] % 10 == 5:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=DEADLINE_S)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    assert state is not None and 10 <= state["step"] < 60
    (run_dir,) = (results / "runs").iterdir()
    assert not (run_dir / "result.json").exists()  # killed mid-training: no record yet
    killed_at = checkpoint.load(run_dir / "checkpoint.pt")["step"]
    # Usually the mid-epoch checkpoint read before the kill; the job may have saved the next one (5
    # steps later, at an epoch end) in the moment before the signal landed: resume from either.
    assert 10 <= killed_at < 60 and killed_at % 5 == 0 and killed_at >= state["step"]

    # The same command again: resumes from the checkpoint and completes.
    again = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = records.read(run_dir / "result.json")
    assert resumed["status"] == "completed"
    assert resumed["cost"]["resumed_from_step"] == killed_at and resumed["cost"]["steps"] == 60
    log = (run_dir / "train.log").read_text()
    assert log.count("resumed from") == 1 and f"at step {killed_at}/60" in log
    assert _trainings(run_dir, 60) == 1  # the first attempt never reached step 60
    assert log.count(f" step {killed_at + 1}/60 ") == 2  # the step after the checkpoint ran in both attempts

    # The uninterrupted run of the same cell: the same final metrics.
    assert straight_proc.wait(timeout=DEADLINE_S) == 0, (tmp_path / "straight.out").read_text()[-3000:]
    (straight,) = load_records(other)
    assert straight["run_id"] == resumed["run_id"]
    assert straight["cost"]["resumed_from_step"] is None
    assert set(straight["metrics"]) == set(resumed["metrics"]) >= {"top1", "top5", "loss"}
    assert resumed["metrics"] == pytest.approx(straight["metrics"], rel=1e-6)
    # And the final weights agree as well, not only the rounded-off accuracy.
    weights = checkpoint.load(run_dir / "checkpoint.pt")["model"]
    reference = checkpoint.load(other / "runs" / straight["run_id"] / "checkpoint.pt")["model"]
    assert weights.keys() == reference.keys()
    for key in weights:
        assert weights[key].float().sub(reference[key].float()).abs().max().item() <= 1e-6, key


def test_rerun_of_a_half_done_sweep_trains_only_the_unfinished_cells(tmp_path, tiny_args):
    results = tmp_path / "results"
    args = ["-m"] + tiny_args + ["model.ssm=true,false", "seed=0,1", "sweep=half"] + NO_REPORT
    run_cli(args, tmp_path)
    runs = _runs(results)
    assert len(runs) == 4 and all(_trainings(d) == 1 for d in runs.values())

    # Simulate an interrupted sweep: one cell never started (its folder is gone), one crashed (failed record,
    # no checkpoint); the other two completed.
    never, crashed = runs[(True, 1)], runs[(False, 0)]
    done = {k: d for k, d in runs.items() if d not in (never, crashed)}
    for path in never.iterdir():
        if path.is_file():
            path.unlink()
    never.rmdir()
    record = json.loads((crashed / "result.json").read_text())
    record.update(status="failed", metrics={}, error={"type": "RuntimeError", "message": "killed", "traceback": ""})
    records.write_json_atomic(crashed / "result.json", record)
    (crashed / "checkpoint.pt").unlink()
    mtimes = {k: (d / "result.json").stat().st_mtime_ns for k, d in done.items()}

    run_cli(args, tmp_path)
    after = _runs(results)
    assert after == runs  # same cells, same run_ids
    assert _trainings(never) == 1 and _trainings(crashed) == 2  # both unfinished cells trained again
    for key, run_dir in done.items():  # the completed ones were reused, untouched
        assert _trainings(run_dir) == 1 and _reuses(run_dir) == 1
        assert (run_dir / "result.json").stat().st_mtime_ns == mtimes[key]
    for run_dir in after.values():
        assert records.read(run_dir / "result.json")["status"] == "completed"
    (archived,) = (crashed / "history").glob("result-*.json")
    assert json.loads(archived.read_text())["status"] == "failed"  # the crashed attempt's record kept
    assert not (never / "history").exists()

    # +rerun=all retrains every cell and keeps each earlier record (and checkpoint) under history/.
    previous = {k: json.loads((d / "result.json").read_text()) for k, d in after.items()}
    run_cli(args + ["+rerun=all"], tmp_path)
    assert _runs(results) == runs
    for key, run_dir in after.items():
        assert _trainings(run_dir) == (3 if run_dir == crashed else 2), key
        assert _reuses(run_dir) == (1 if key in done else 0)
        history = sorted((run_dir / "history").glob("result-*.json"))
        assert len(history) == (2 if run_dir == crashed else 1), key
        kept = [json.loads(p.read_text()) for p in history]
        assert previous[key] in kept  # the record it replaced, unchanged
        assert len(list((run_dir / "history").glob("checkpoint-*.pt"))) == 1
        new = records.read(run_dir / "result.json")
        assert new["status"] == "completed" and new["cost"]["resumed_from_step"] is None  # trained from scratch
        assert new["env"]["started_at"] >= previous[key]["env"]["finished_at"]


def test_two_sweeps_that_share_a_cell_compute_it_once(tmp_path, tiny_args):
    results = tmp_path / "results"
    run_cli(["-m"] + tiny_args + ["seed=0,1", "sweep=A"] + NO_REPORT, tmp_path)
    run_cli(["-m"] + tiny_args + ["seed=1,2", "sweep=B"] + NO_REPORT, tmp_path)
    by_seed = {r["factors"]["seed"]: r for r in load_records(results)}
    assert sorted(by_seed) == [0, 1, 2]  # three cells, not four
    for seed, record in by_seed.items():
        run_dir = results / "runs" / record["run_id"]
        assert _trainings(run_dir) == 1, seed  # each cell trained exactly once
    shared = results / "runs" / by_seed[1]["run_id"]
    assert _reuses(shared) == 1 and by_seed[1]["sweep"] == "A"  # B reused A's record

    pointers = {}
    for sweep in ("A", "B"):
        cells = [json.loads(p.read_text()) for p in sorted((results / "sweeps" / sweep).rglob("cell.json"))]
        assert len(cells) == 2, sweep
        pointers[sweep] = {c["run_id"]: c for c in cells}
    assert set(pointers["A"]) == {by_seed[0]["run_id"], by_seed[1]["run_id"]}
    assert set(pointers["B"]) == {by_seed[1]["run_id"], by_seed[2]["run_id"]}
    for sweep in ("A", "B"):  # both sweeps point at the one shared run folder
        assert Path(pointers[sweep][by_seed[1]["run_id"]]["run_dir"]) == shared


def test_concurrent_jobs_of_one_cell_train_once_and_leave_a_valid_record(tmp_path, tiny_args, reap):
    from ablate.launch.plan import plan_cell

    results, data = tmp_path / "results", tmp_path / "data"
    args = tiny_args + ["sweep=together"]
    run_id = plan_cell(args + [f"paths.results={results}", f"paths.data={data}"], {})["run_id"]
    run_dir = results / "runs" / run_id
    run_dir.mkdir(parents=True)
    logs = [tmp_path / f"job{i}.out" for i in range(2)]
    procs = []
    # Hold the cell's lock while both jobs start, so that they certainly overlap: both must wait.
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for out in logs:
            with open(out, "w") as handle:
                procs.append(reap(_popen(_cmd(args, results, data), tmp_path, stdout=handle)))
        _wait_for(lambda: all("waiting for it" in p.read_text() for p in logs), "both jobs to wait", procs)
        fcntl.flock(lock, fcntl.LOCK_UN)
    for proc in procs:
        proc.wait(timeout=DEADLINE_S)
    outputs = [p.read_text() for p in logs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    record = records.read(run_dir / "result.json")  # valid JSON, valid schema
    assert record["status"] == "completed" and record["run_id"] == run_id
    assert _trainings(run_dir) == 1 and _reuses(run_dir) == 1  # one trained, the other reused its record
    assert sorted("reused, not retrained" in o for o in outputs) == [False, True]
    assert not (run_dir / "history").exists()  # nothing was archived: no second attempt
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []  # no torn temp files
    assert [r["run_id"] for r in load_records(results)] == [run_id]


def test_a_torn_checkpoint_is_set_aside_and_its_cell_completes(tmp_path, tiny_args):
    # Three cells, each left with a damaged checkpoint and no record: every retry used to fail on it.
    from test_checkpoint import _damage

    results = tmp_path / "results"
    args = ["-m"] + tiny_args + ["model.ssm=false", "seed=0,1,2", "sweep=torn"] + NO_REPORT
    run_cli(args, tmp_path)
    runs = _runs(results)
    for (_, seed), how in zip(sorted(runs), ("truncated", "empty", "garbage")):
        run_dir = runs[(False, seed)]
        (run_dir / "result.json").unlink()
        _damage(run_dir / "checkpoint.pt", how)

    run_cli(args, tmp_path)
    for run_dir in _runs(results).values():
        record = records.read(run_dir / "result.json")
        assert record["status"] == "completed" and record["cost"]["resumed_from_step"] is None
        assert len(list((run_dir / "history").glob("checkpoint-unusable-*.pt"))) == 1
        assert checkpoint.load(run_dir / "checkpoint.pt")["step"] == 3  # a fresh, good one
        assert "moved to" in (run_dir / "train.log").read_text()


def test_a_checkpoint_that_does_not_fit_its_cell_is_set_aside_never_trusted(tmp_path, tiny_args):
    # Each cell's checkpoint replaced by one that loads but cannot continue it: every retry used to hit a bare
    # KeyError, or worse, report `completed` for a model trained a fraction of its plan.
    results = tmp_path / "results"
    args = ["-m"] + tiny_args + ["model.ssm=false", "seed=0,1,2", "sweep=unfit"] + NO_REPORT
    run_cli(args, tmp_path)
    runs = _runs(results)
    good = checkpoint.load(runs[(False, 0)] / "checkpoint.pt")
    first = next(iter(good["model"]))
    broken = {
        0: ({"step": 3}, "lacks model, optimizer, scheduler, scaler, rng"),
        1: ({**good, "step": 30}, "is at step 30, outside this cell's plan of 3 steps"),
        2: ({**good, "model": {**good["model"], first: good["model"][first][..., :1]}}, f"holds {first} of shape"),
    }
    for seed, (state, _) in broken.items():
        (runs[(False, seed)] / "result.json").unlink()
        checkpoint.save(runs[(False, seed)] / "checkpoint.pt", state)

    run_cli(args, tmp_path)
    for seed, (_, why) in broken.items():
        run_dir = runs[(False, seed)]
        record = records.read(run_dir / "result.json")
        assert record["status"] == "completed" and record["cost"]["resumed_from_step"] is None
        assert record["cost"]["steps"] == 3 and checkpoint.load(run_dir / "checkpoint.pt")["step"] == 3
        (kept,) = (run_dir / "history").glob("checkpoint-unusable-*.pt")
        assert record["checkpoint_set_aside"] == {"file": str(kept), "why": record["checkpoint_set_aside"]["why"]}
        assert record["checkpoint_set_aside"]["why"].startswith(f"checkpoint {run_dir / 'checkpoint.pt'} {why}")
        assert "the cell restarts from step 0" in (run_dir / "train.log").read_text()
