"""ablate.train.checkpoint (atomic save, safe load, RNG state) and ablate.train.preemption.

Writers and signal targets are forked children of the test process: they start at once (no
second torch import) and their signal handlers stay out of pytest's process.
"""
import errno
import io
import multiprocessing
import os
import pickle
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.train import checkpoint, preemption

FORK = multiprocessing.get_context("fork")


def wait_until(condition, what: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_save_then_load_round_trips_a_training_state(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7, "epoch": 1,
             "rng": checkpoint.rng_state(), "wandb_run_id": "abc123"}
    checkpoint.save(tmp_path / "run" / "checkpoint.pt", state)

    loaded = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert (loaded["step"], loaded["epoch"], loaded["wandb_run_id"]) == (7, 1, "abc123")
    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(loaded["model"])
    assert torch.equal(restored.weight, model.weight)
    torch.optim.AdamW(restored.parameters(), lr=1e-3).load_state_dict(loaded["optimizer"])
    assert checkpoint.load(tmp_path / "absent.pt") is None
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.pt"]  # no temp file left


def _write_forever(path: Path, first_step: int) -> None:
    torch.set_num_threads(1)  # a forked child must not touch the parent's thread pool
    step = first_step
    while True:
        checkpoint.save(path, {"step": step, "payload": torch.full((1_000_000,), float(step))})
        step += 1


def test_sigkill_while_saving_never_leaves_a_torn_checkpoint(tmp_path, reap):
    path = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    last = -1
    for _ in range(6):
        writer = reap(FORK.Process(target=_write_forever, args=(path, last + 1)))
        writer.start()
        # Let it finish at least one save of its own, then kill it at an arbitrary moment.
        wait_until(lambda: (checkpoint.load(path) or {"step": -1})["step"] > last, "a completed save")
        time.sleep(rng.uniform(0, 0.05))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(timeout=30)
        state = checkpoint.load(path)  # raises on a torn file
        assert torch.equal(state["payload"], torch.full((1_000_000,), float(state["step"])))
        assert state["step"] > last
        last = state["step"]
        # The killed writer's temp file (if any) is the only one, and the next save removes it.
        assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) <= 1
    checkpoint.save(path, {"step": last + 1})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _draws() -> list:
    return [torch.rand(3).tolist(), random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.randint(0, 1000, (4,)).tolist()]


def test_rng_state_round_trip_through_a_file_repeats_the_draws(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    _draws()  # leaves a cached Gaussian in both random and numpy, which the state must carry
    checkpoint.save(tmp_path / "c.pt", {"rng": checkpoint.rng_state()})
    expected = _draws()

    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    assert _draws() == expected


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))  # what loading this pickle would run


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "evil": _Payload(marker)}, tmp_path / "c.pt")
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load checkpoint {tmp_path / 'c.pt'}"):
        checkpoint.load(tmp_path / "c.pt")
    assert not marker.exists()
    with pytest.raises(checkpoint.UnsafeCheckpoint):
        checkpoint.load(tmp_path / "c.pt")


def test_an_unsafe_checkpoint_is_moved_aside_never_loaded(tmp_path, caplog):
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "evil": _Payload(marker)}, tmp_path / "checkpoint.pt")
    assert checkpoint.load_for_resume(tmp_path / "checkpoint.pt")[0] is None
    assert not marker.exists() and not (tmp_path / "checkpoint.pt").exists()
    (kept,) = (tmp_path / "history").iterdir()
    assert kept.name.startswith("checkpoint-unusable-") and "NOT loaded" in caplog.text


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not a checkpoint at all\n" * 10)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_named_as_such_and_moved_to_history(tmp_path, how, caplog):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": 3, "payload": torch.zeros(10_000)})
    _damage(path, how)
    with pytest.raises(checkpoint.UnusableCheckpoint, match="torn, empty or not a checkpoint") as raised:
        checkpoint.load(path)
    assert not isinstance(raised.value, pickle.UnpicklingError)  # not mistaken for an unsafe one
    assert checkpoint.load_for_resume(path)[0] is None
    assert not path.exists() and len(list((tmp_path / "history").glob("checkpoint-unusable-*.pt"))) == 1
    assert "the cell restarts from step 0" in caplog.text


class _FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_enospc_and_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": 1})
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(fd, mode))
    with pytest.raises(OSError, match=f"No space left on device \\(ENOSPC\\) writing {path}") as raised:
        checkpoint.save(path, {"step": 2, "payload": torch.zeros(1000)})  # torch hides it as 'unexpected pos'
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _loop(marker: Path, step_s: float, displaced=None) -> None:
    """A training loop in miniature: polls requested() at each step, 'saves', then proceed()."""
    if displaced is not None:
        signal.signal(*displaced)
    preemption.install()
    marker.with_suffix(".ready").touch()
    while True:
        time.sleep(step_s)
        if preemption.requested():
            marker.write_text("saved")
            preemption.proceed()


def _start_loop(reap, tmp_path: Path, step_s: float = 0.05, displaced=None):
    marker = tmp_path / "marker"
    child = reap(FORK.Process(target=_loop, args=(marker, step_s, displaced)))
    child.start()
    wait_until(marker.with_suffix(".ready").exists, "the loop to install its handlers")
    return child, marker


def test_sigterm_outside_slurm_saves_then_ends_the_process_by_sigterm(tmp_path, reap):
    child, marker = _start_loop(reap, tmp_path)
    os.kill(child.pid, signal.SIGTERM)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGTERM  # the default action, only after the save
    assert marker.read_text() == "saved"


def test_a_second_signal_does_not_wait_for_the_loop(tmp_path, reap):
    child, marker = _start_loop(reap, tmp_path, step_s=600)  # a step that would never end in time
    os.kill(child.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(child.pid, signal.SIGTERM)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGTERM
    assert not marker.exists()


def _requeue_like_submitit(signum, frame):
    sys.exit(42)  # submitit's USR2 handler requeues the job, then exits


def _log_like_submitit(signum, frame):
    pass  # submitit's SIGTERM handler only logs


def test_preemption_signal_goes_to_the_displaced_handler_after_the_save(tmp_path, reap):
    child, marker = _start_loop(reap, tmp_path, displaced=(signal.SIGUSR2, _requeue_like_submitit))
    os.kill(child.pid, signal.SIGUSR2)
    child.join(timeout=30)
    assert child.exitcode == 42
    assert marker.read_text() == "saved"


def test_sigterm_under_a_handler_that_returns_still_stops_the_job(tmp_path, reap):
    child, marker = _start_loop(reap, tmp_path, displaced=(signal.SIGTERM, _log_like_submitit))
    os.kill(child.pid, signal.SIGTERM)
    child.join(timeout=30)
    assert child.exitcode == 128 + signal.SIGTERM
    assert marker.read_text() == "saved"


def test_nothing_requested_means_nothing_to_proceed_with():
    assert not preemption.requested()
    with pytest.raises(RuntimeError, match="no preemption is pending"):
        preemption.proceed()


def _generate_slowly(root: Path) -> None:
    """A job generating a dataset (20 s of it) with the preemption handlers installed."""
    from ablate.tasks.toydata.imagefolder import cached_dataset

    def build(folder: Path) -> dict:
        (folder / "started").touch()
        for _ in range(200):
            time.sleep(0.1)
        return {}
    preemption.install()
    with preemption.immediate():
        cached_dataset(root, "slow", 1, {"image_size": [8, 8], "seed": 0}, build)


def test_sigterm_while_a_dataset_is_generated_stops_at_once_and_leaves_nothing_to_trust(tmp_path, reap):
    root = tmp_path / "data"
    child = reap(FORK.Process(target=_generate_slowly, args=(root,)))
    child.start()
    wait_until(lambda: any(root.glob(".*tmp-*/started")), "the generation to start")
    sent = time.monotonic()
    os.kill(child.pid, signal.SIGTERM)
    child.join(timeout=30)
    assert child.exitcode == 128 + signal.SIGTERM and time.monotonic() - sent < 2.0
    assert list(root.iterdir()) == []  # the half-built folder is gone; no finished one was published
