"""End to end through run.py: records, failures inside a multirun, reuse of completed cells, wandb offline."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from ablate import records
from ablate.config import compose
from conftest import ROOT, clean_env, load_records, run_cli


def test_tiny_job_writes_a_valid_record(tmp_path, tiny_args):
    run_cli(tiny_args + ["model.ssm=true", "sweep=one"], tmp_path)
    (record,) = load_records(tmp_path / "results")
    assert records.validate(record) == []
    jsonschema.validate(record, json.loads((ROOT / "docs" / "record.schema.json").read_text()))
    assert record["status"] == "completed" and record["error"] is None
    assert record["task"] == {"name": "shapes", "kind": "classification", "metric": "top1", "higher_is_better": True,
                              "chance": 10.0}
    assert record["data"] == {"train_images": 80, "val_images": 40, "corrupt_train_images": 0}
    assert 0.0 <= record["metrics"]["top1"] <= 100.0 and record["metrics"]["top5"] >= record["metrics"]["top1"]
    cost = record["cost"]
    assert cost["params"] > 0 and cost["macs"] > cost["macs_ssm"] > 0
    assert cost["input_size"] == [32, 32] and cost["seq_len"] == 4 and cost["tau"] == 144
    assert cost["steps"] == 3 and cost["train_throughput"] > 0 and cost["eval_throughput"] > 0
    assert record["factors"]["model.ssm"] is True and record["factors"]["task.image_size"] == "32x32"
    assert record["config"]["trainer"]["lr"] == 2e-3 and record["sweep"] == "one"
    assert record["env"]["torch"] and record["env"]["finished_at"] >= record["env"]["started_at"]
    run_dir = tmp_path / "results" / "runs" / record["run_id"]
    assert (run_dir / "checkpoint.pt").is_file() and "step 3/3" in (run_dir / "train.log").read_text()
    # the last step's log line: this attempt's images/s (the record's train_throughput) and no time left
    speed, eta = re.search(r" step 3/3 .* ([0-9.]+) img/s ETA (\S+)", (run_dir / "train.log").read_text()).groups()
    assert abs(float(speed) - cost["train_throughput"]) <= 0.06 and eta == "0:00:00"
    curve = json.loads((run_dir / "curve.json").read_text())
    # 3 steps with log_every=10: one point, at the last step, the mean of the 3 losses; then the evaluation
    assert [point[0] for point in curve["train"]] == [3] and curve["eval"] == [[3, record["metrics"]]]
    assert record["curve"] == {"file": "curve.json", "points": 1, "first_loss": curve["train"][0][1],
                               "last_loss": curve["train"][0][1]}


def test_failing_job_is_recorded_and_the_sweep_goes_on_then_rerun_reuses(tmp_path, tiny_args):
    # A zero image side makes those two jobs raise; the other two complete. The sweep ends with one
    # line counting its cells, and the multirun exits 1: not every cell completed.
    args = ["-m"] + tiny_args + ["model.ssm=true,false", "task.image_size=[32,32],[0,32]", "sweep=mixed"]
    proc = run_cli(args, tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "ablate: sweep mixed: 2 of 4 cells completed, 2 failed" in proc.stdout
    by_size = {}
    for record in load_records(tmp_path / "results"):
        by_size.setdefault(record["factors"]["task.image_size"], []).append(record)
    assert [r["status"] for r in by_size["32x32"]] == ["completed", "completed"]
    assert [r["status"] for r in by_size["0x32"]] == ["failed", "failed"]
    error = by_size["0x32"][0]["error"]
    assert error["type"] == "ConfigError" and "task.image_size=[0, 32] is not allowed" in error["message"]
    assert "Traceback" in error["traceback"]

    # The multirun ended with a report of the real records, failures listed, one seed -> no verdict.
    report = (tmp_path / "reports" / "mixed" / "report.md").read_text()
    for section in ("## What was run", "## Verdicts", "## Results per task", "## Sequence length", "## Problems"):
        assert section in report, section
    assert "insufficient evidence" in report and "task.image_size=[0, 32]" in report
    verdicts = (tmp_path / "reports" / "mixed" / "verdicts.csv").read_text()
    assert verdicts.startswith("hypothesis,") and "H1" in verdicts
    results = (tmp_path / "reports" / "mixed" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 4
    cells = sorted((tmp_path / "results" / "sweeps" / "mixed").rglob("cell.json"))
    assert len(cells) == 4

    # Same command again: completed cells are reused (files untouched), failed ones are retried.
    done = {r["run_id"]: (tmp_path / "results" / "runs" / r["run_id"] / "result.json").stat().st_mtime_ns
            for r in by_size["32x32"]}
    assert run_cli(args, tmp_path, check=False).returncode == 1  # the zero-side cells fail again
    for run_id, mtime in done.items():
        assert (tmp_path / "results" / "runs" / run_id / "result.json").stat().st_mtime_ns == mtime
        assert "reused" in (tmp_path / "results" / "runs" / run_id / "train.log").read_text()
    failed_dir = tmp_path / "results" / "runs" / by_size["0x32"][0]["run_id"]
    assert len(list((failed_dir / "history").glob("result-*.json"))) == 1  # the first attempt kept


def test_a_complete_sweep_exits_0_and_a_cell_without_a_record_counts_as_unfinished(tmp_path, tiny_args):
    from ablate.analysis.callback import sweep_outcome

    proc = run_cli(["-m", *tiny_args, "seed=0,1", "sweep=whole", f"paths.reports={tmp_path / 'elsewhere'}"], tmp_path)
    assert proc.returncode == 0 and "ablate: sweep whole: 2 of 2 cells completed\n" in proc.stdout
    assert (tmp_path / "elsewhere" / "whole" / "report.md").exists() and not (tmp_path / "reports").exists()
    sweep = tmp_path / "results" / "sweeps" / "whole"
    (sweep / "9" / ".hydra").mkdir(parents=True)  # a job that died before its cell started
    assert sweep_outcome(sweep) == ("sweep whole: 2 of 3 cells completed, 1 without a record", 1)
    # a second sweep sharing seed 1: that cell is reused, and the closing line says so
    proc = run_cli(["-m", *tiny_args, "seed=1,2", "sweep=again", f"paths.reports={tmp_path / 'elsewhere'}"], tmp_path)
    assert "ablate: sweep again: 2 of 2 cells completed (1 reused from other sweeps)\n" in proc.stdout


def test_keys_the_ssm_off_arm_does_not_use_make_no_second_cell(tmp_path, tiny_args):
    # 2 arms x 2 scan orders = 4 jobs, but scan is inert without the SSM: 3 cells are trained
    proc = run_cli(["-m", *tiny_args, "model.ssm=true,false", "model.scan=cross,raster", "sweep=inert"], tmp_path)
    assert "ablate: sweep inert: 3 of 3 cells completed\n" in proc.stdout
    recs = load_records(tmp_path / "results")
    assert sorted((r["factors"]["model.ssm"], r["factors"]["model.scan"]) for r in recs) == [
        (False, "cross"), (True, "cross"), (True, "raster")]
    off = next(r for r in recs if not r["factors"]["model.ssm"])
    assert off["config"]["model"]["scan"] == "cross"  # the record holds the inert key at its default
    pointers = [json.loads(p.read_text()) for p in (tmp_path / "results" / "sweeps" / "inert").glob("*/cell.json")]
    by_run = {}
    for pointer in pointers:
        by_run.setdefault(pointer["run_id"], []).append(" ".join(pointer["overrides"]))
    assert len(pointers) == 4 and len(by_run) == 3
    (shared,) = [jobs for jobs in by_run.values() if len(jobs) == 2]
    assert all("model.ssm=False" in job for job in shared)  # the two SSM-off jobs: one cell
    log = (tmp_path / "results" / "runs" / off["run_id"] / "train.log").read_text()
    assert log.count("already completed") == 1  # the second SSM-off job reused the first one's cell


def test_a_single_run_that_fails_exits_1_with_its_record(tmp_path, tiny_args):
    proc = run_cli(tiny_args + ["trainer.device=cuda:7"], tmp_path, check=False)  # no such GPU here
    (record,) = load_records(tmp_path / "results")
    assert proc.returncode == 1 and record["status"] == "failed", proc.stderr[-2000:]


def test_nonfinite_loss_is_recorded_as_diverged(tmp_path, tiny_args):
    run_cli(tiny_args + ["trainer.lr=1e30", "trainer.max_steps=20", "trainer.warmup_epochs=0"], tmp_path)
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == "diverged" and "loss=" in record["error"]["message"]


def test_wandb_offline_writes_under_the_run_folder_without_network(tmp_path, tiny_args):
    args = [a for a in tiny_args if a != "logger=none"] + ["logger=wandb"]
    cmd_env = clean_env(HOME=str(tmp_path))  # no ~/.netrc, no API key -> offline
    unshare = shutil.which("unshare")
    if unshare:  # run inside a network namespace with no interfaces up: any network attempt would fail
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            cmd = [unshare, "-n", sys.executable, str(ROOT / "run.py"), *args,
                   f"paths.results={tmp_path / 'results'}", f"paths.data={tmp_path / 'data'}"]
            proc = subprocess.run(cmd, cwd=tmp_path, env=cmd_env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:
            run_cli(args, tmp_path, env=cmd_env)
    else:
        run_cli(args, tmp_path, env=cmd_env)
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == "completed"
    run_dir = tmp_path / "results" / "runs" / record["run_id"]
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert offline_runs[0].name.endswith(run_id)
    assert any(p.suffix == ".wandb" for p in offline_runs[0].iterdir())
    # the job says where the run is and how to upload it; its name carries the seed and the image size
    hint = re.search(r"wandb: offline run (\S+) \(no API key\); upload it with: wandb sync (\S+)",
                     (run_dir / "train.log").read_text())
    assert hint and Path(hint.group(2)) == offline_runs[0]
    assert hint.group(1) == f"shapes-pico-nossm-nocausal-seed0-32x32-{record['run_id'][:8]}"


def test_a_bad_non_semantic_setting_in_a_multirun_never_touches_the_completed_cell(tmp_path, tiny_args):
    run_cli(tiny_args + ["sweep=first"], tmp_path)
    (before,) = load_records(tmp_path / "results")
    # trainer.device is not part of the run_id: the bad value names the completed cell, which must stay.
    proc = run_cli(["-m", *tiny_args, "trainer.device=gpu", "seed=0,1", "sweep=second"], tmp_path, check=False)
    after = {r["factors"]["seed"]: r for r in load_records(tmp_path / "results")}
    assert after[0] == before and after[1]["status"] == "failed"
    assert "trainer.device='gpu' is not allowed" in after[1]["error"]["message"]
    log = proc.stdout + proc.stderr
    assert "its earlier record is kept" in log and "Traceback" not in log


def test_a_setting_that_breaks_the_lr_rule_fails_its_cell_in_one_line(tmp_path, tiny_args):
    proc = run_cli(["-m", *tiny_args, "trainer.lr_base_size=0", "sweep=zero"], tmp_path, check=False)
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == "failed" and record["error"]["type"] == "ConfigError"
    assert "trainer.lr_base_size=0 is not allowed: a number >= 1" in record["error"]["message"]
    assert "ZeroDivisionError" not in proc.stdout + proc.stderr


def _read_only_under(monkeypatch, root: Path) -> None:
    """Every write under `root` fails with EROFS, as on a read-only mount (root ignores chmod)."""
    import builtins
    import errno
    import os
    import tempfile

    def guard(path) -> None:
        if Path(os.path.abspath(path)).is_relative_to(root):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_open, real_os_open, real_mkdir, real_mkstemp = builtins.open, os.open, os.mkdir, tempfile.mkstemp

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            guard(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guard(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: (guard(path), real_mkdir(path, *a, **k))[1])
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, dir=None, **k: (guard(dir), real_mkstemp(*a, dir=dir, **k))[1])


def _tree(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_a_read_only_results_folder_serves_completed_cells_and_fails_the_rest_in_one_line(
        tmp_path, tiny_args, monkeypatch, caplog):
    from ablate import job
    from ablate.train import preemption

    results = tmp_path / "results"
    paths = [f"paths.results={results}", f"paths.data={tmp_path / 'data'}"]
    run_cli(tiny_args + ["sweep=ro"], tmp_path)
    (done,) = load_records(results)
    done_cfg, new_cfg = compose(tiny_args + paths), compose(tiny_args + paths + ["seed=1"])
    monkeypatch.setattr(preemption, "install", lambda: None)  # no signal handlers in pytest's process
    before = _tree(results)
    _read_only_under(monkeypatch, results)

    assert job.run(done_cfg, overrides=[]) == done  # reused, no lock or log line needed
    failed = job.run(new_cfg, overrides=[])
    assert failed["status"] == "failed" and failed["error"]["type"] == "OSError"
    assert "Read-only file system" in failed["error"]["message"]
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "cannot run" in line and "give a writable paths.results" in line
    assert _tree(results) == before  # nothing written, nothing touched


def test_a_full_disk_fails_the_cell_naming_enospc_and_keeps_the_sweep_going(tmp_path, tiny_args, monkeypatch, caplog):
    import errno
    import os

    from ablate import atomic, job
    from ablate.train import preemption

    results = tmp_path / "results"
    cfg = compose(tiny_args + [f"paths.results={results}", f"paths.data={tmp_path / 'data'}"])
    monkeypatch.setattr(preemption, "install", lambda: None)
    real_write = atomic.write

    def full(path, content):
        if Path(path).is_relative_to(results):
            raise atomic.write_error(Path(path), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        real_write(path, content)

    monkeypatch.setattr(atomic, "write", full)
    record = job.run(cfg, overrides=[])
    assert record["status"] == "failed" and record["error"]["type"] == "OSError"
    assert "No space left on device (ENOSPC) writing" in record["error"]["message"]
    assert "checkpoint.pt" in record["error"]["message"]
    assert not list(results.glob("runs/*/result.json")) and not list(results.glob("runs/*/checkpoint.pt"))
    assert any("its record was not written" in r.getMessage() and "ENOSPC" in r.getMessage() for r in caplog.records)


def test_wandb_with_a_key_but_no_server_goes_offline_at_once_and_the_cell_completes(tmp_path, tiny_args):
    import time

    from ablate import tracking

    closed = "http://127.0.0.1:9"  # the discard port on loopback: nothing listens, nothing leaves the machine
    tic = time.monotonic()
    assert "cannot connect to http://127.0.0.1:9 (Connection refused)" in tracking.unreachable(closed)
    assert time.monotonic() - tic < 1.0
    args = [a for a in tiny_args if a != "logger=none"] + ["logger=wandb"]
    env = clean_env(HOME=str(tmp_path), WANDB_API_KEY="f" * 40, WANDB_BASE_URL=closed)
    proc = run_cli(args, tmp_path, env=env)
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == "completed"
    run_dir = tmp_path / "results" / "runs" / record["run_id"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (line,) = [line for line in (run_dir / "train.log").read_text().splitlines() if "logging offline" in line]
    assert "WARNING" in line and f"wandb sync {offline}" in line
    assert "logging offline" in proc.stderr + proc.stdout


def test_wandb_server_that_accepts_but_never_answers_falls_back_offline_after_the_init_timeout(tmp_path, monkeypatch):
    import contextlib
    import socket
    import threading
    import time

    import wandb

    from ablate import tracking

    listener = socket.create_server(("127.0.0.1", 0))  # loopback only; accepts, never answers
    accepted = []

    def accept_forever() -> None:
        with contextlib.suppress(OSError):  # until the listener is closed
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    for key, value in clean_env(HOME=str(tmp_path), WANDB_API_KEY="f" * 40,
                                WANDB_BASE_URL=f"http://127.0.0.1:{listener.getsockname()[1]}").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tracking, "INIT_TIMEOUT_S", 3.0)
    tic = time.monotonic()
    tracker = tracking.WandbTracker({"project": "p", "mode": None}, run_dir=tmp_path, run_id="0123456789abcdef",
                                    sweep="s", config={"a": 1}, task_name="t", variant="pico", arms={"ssm": False},
                                    resume=True)
    took = time.monotonic() - tic
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish({"status": "completed"}, failed=False)
    listener.close()
    wandb.teardown()
    assert tracker.run.settings.mode == "offline" and took < 60, took
    assert len(list((tmp_path / "wandb").glob("offline-run-*-0123456789abcdef-0"))) == 1


def test_the_log_lines_eta_reads_hours_minutes_seconds():
    from ablate.train.loop import _clock

    assert [_clock(s) for s in (0, 59.6, 3661.4, 36000)] == ["0:00:00", "0:01:00", "1:01:01", "10:00:00"]


def test_a_stale_cell_is_flagged_when_reused_and_rerun_stale_recomputes_exactly_it(tmp_path, tiny_args):
    args = ["-m", *tiny_args, "seed=0,1", "sweep=stale"]
    run_cli(args, tmp_path)
    old, fresh = sorted(load_records(tmp_path / "results"), key=lambda r: r["factors"]["seed"])
    old_dir = tmp_path / "results" / "runs" / old["run_id"]
    old["env"].update(git_commit="0" * 40, git_dirty=False)  # as if computed by an earlier version of the code
    records.write_json_atomic(old_dir / "result.json", old)

    run_cli(args, tmp_path)  # both reused; the stale one is flagged in its log and in the report
    assert "is stale: computed at commit 000000000000, the code is now at" in (old_dir / "train.log").read_text()
    report = (tmp_path / "reports" / "stale" / "report.md").read_text()
    stale_part = report.split("### Stale results")[1].split("###")[0]
    listed = {r["run_id"] for r in (old, fresh) if r["run_id"] in stale_part}
    dirty = records.code_version()[1]  # a dirty checkout makes the fresh record stale too
    assert listed == ({old["run_id"], fresh["run_id"]} if dirty else {old["run_id"]})

    run_cli(args + ["+rerun=stale"], tmp_path)
    trainings = {r["run_id"]: (tmp_path / "results" / "runs" / r["run_id"] / "train.log").read_text().count(" step 3/3 ")
                 for r in (old, fresh)}
    redone = records.read(old_dir / "result.json")
    assert redone["env"]["git_commit"] == records.code_version()[0] and redone["cost"]["resumed_from_step"] is None
    if dirty:  # every record computed here is stale, so both ran again
        assert trainings == {old["run_id"]: 2, fresh["run_id"]: 2}
    else:
        assert trainings == {old["run_id"]: 2, fresh["run_id"]: 1}


def test_staleness_names_the_commits_or_the_dirty_tree():
    assert records.staleness({"git_commit": "a" * 40, "git_dirty": False}, "a" * 40) is None
    assert records.staleness({"git_commit": "a" * 40, "git_dirty": False}, "b" * 40) == (
        "computed at commit aaaaaaaaaaaa, the code is now at bbbbbbbbbbbb")
    assert records.staleness({"git_commit": "a" * 40, "git_dirty": True}, "a" * 40) == (
        "computed from a tree with uncommitted changes (at commit aaaaaaaaaaaa)")
    assert records.staleness({"git_commit": None}, "a" * 40) is None  # not known: not flagged


def test_a_sweep_logs_its_verdicts_and_cells_to_one_wandb_run_in_its_group(tmp_path, tiny_args):
    import pandas as pd

    args = ["-m", *(a for a in tiny_args if a != "logger=none"), "logger=wandb", "model.ssm=true,false", "sweep=wb"]
    proc = run_cli(args, tmp_path, env=clean_env(HOME=str(tmp_path)))  # no key: offline
    assert "ablate: the sweep's verdicts and cells are logged to wandb run wb-report (group wb)" in proc.stdout
    (run_dir,) = (tmp_path / "results" / "sweeps" / "wb" / "wandb").glob("offline-run-*")
    tables = {path.name.split("_")[0]: json.loads(path.read_text())
              for path in (run_dir / "files" / "media" / "table").glob("*.table.json")}
    cells = pd.DataFrame(tables["cells"]["data"], columns=tables["cells"]["columns"])
    records_ = {r["run_id"]: r for r in load_records(tmp_path / "results")}
    assert sorted(cells["run_id"]) == sorted(records_) and set(cells["status"]) == {"completed"}
    assert set(cells["reused_from"]) == {""}  # trained in this sweep
    for _, row in cells.iterrows():  # the primary metric of each cell, as its record has it
        assert row["metric"] == "top1" and row["value"] == pytest.approx(records_[row["run_id"]]["metrics"]["top1"])
        assert row["model.ssm"] == records_[row["run_id"]]["factors"]["model.ssm"]
    verdicts = pd.DataFrame(tables["verdicts"]["data"], columns=tables["verdicts"]["columns"])
    assert {"hypothesis", "decision"} <= set(verdicts.columns) and len(verdicts)
    assert (run_dir / "files" / "report.md").read_text().startswith("# Ablation report: wb")
