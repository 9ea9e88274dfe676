"""The training loop: task-agnostic, resumable, one screen for the core (`fit`).

AdamW (timm's optimizer factory: no weight decay on norms, biases, A_log and D) with a linear warm-up
and a cosine, multi-step or poly schedule in optimizer steps, optional gradient clipping, AMP on GPU (bf16, or fp16 with
a grad scaler) and fp32 on CPU. The data order is a function of (seed, epoch) alone, so both arms of
a paired comparison see the same batches. A non-finite loss stops the job as `diverged`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from torch import nn

from ablate.config import PRECISIONS, SCHEDULES
from ablate import records
from ablate.records import CURVE_FILE, CurveSummary, write_json_atomic
from ablate.tasks.base import Task
from ablate.train import checkpoint, preemption
from ablate.train.distributed import (barrier, from_rank0, gather_to_rank0, max_over_ranks, mean_over_ranks, outlive_rank0,
                                     rank_and_world, shard)
from ablate.train.lr import effective_lr
from ablate.train.stops import Diverged, Pruned

log = logging.getLogger("ablate.train")
EvalHook = Callable[[int, dict], None]  # on_eval(step, metrics); raises Pruned to stop early


@dataclass
class Curve:
    """The training curve of a cell, kept in the checkpoint (so a resumed job continues it exactly)
    and written beside the record as curve.json: {"train": [[step, mean loss since the previous
    point, lr], ...], "eval": [[step, {metric: value}], ...]}."""

    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)

    def summary(self) -> CurveSummary:
        """The record's `curve` block: where the curve is and how the training loss moved."""
        losses = [point[1] for point in self.train]
        return CurveSummary(CURVE_FILE, len(losses), losses[0] if losses else None, losses[-1] if losses else None)

    def write(self, run_dir: Path) -> None:
        write_json_atomic(Path(run_dir) / CURVE_FILE, {"train": self.train, "eval": self.eval})

    @classmethod
    def read(cls, run_dir: Path) -> "Curve":
        """The curve a run wrote (empty when it wrote none, e.g. it failed before its first step)."""
        path = Path(run_dir) / CURVE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()


@dataclass
class FitResult:
    metrics: dict[str, float]
    steps: int
    train_seconds: float  # optimizer steps only (no evaluation, no checkpointing)
    train_images: int
    eval_seconds: float  # the final evaluation
    resumed_from_step: Optional[int]
    checkpoint_set_aside: Optional[dict] = None  # {"file", "why"}: a checkpoint found unusable, kept in history/


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "rng")


def _unresumable(state: dict, model: nn.Module, total_steps: int, run_id: str) -> Optional[str]:
    """Why a checkpoint cannot continue this cell (None when it can): keys, the model's shapes, the
    step within the plan, and the cell it was written for (a file copied from another run folder)."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    own = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict) or saved.keys() != own.keys():
        return "holds another model's weights (its parameter names differ from this cell's)"
    shapes = [key for key in own if getattr(saved[key], "shape", None) != own[key].shape]
    if shapes:
        return f"holds {shapes[0]} of shape {tuple(saved[shapes[0]].shape)}, this cell's is {tuple(own[shapes[0]].shape)}"
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        return f"is at step {step!r}, outside this cell's plan of {total_steps} steps"
    if state.get("total_steps", total_steps) != total_steps or state.get("run_id", run_id) != run_id:
        return (f"was written for cell {state.get('run_id', run_id)} with {state.get('total_steps', total_steps)} "
                f"steps, not this cell ({run_id}, {total_steps} steps)")
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but no CUDA device is visible; use trainer.device=cpu or auto")
    return device


def resolve_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32."""
    if name not in PRECISIONS:
        raise ValueError(f"trainer.precision={name!r} is not known; choose from: {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name != "fp32" and device.type != "cuda":
        raise ValueError(f"trainer.precision={name} needs a CUDA device; on {device} use fp32 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int, total_steps: int):
    """timm's schedulers, stepped per optimizer step, with a linear warm-up from warmup_lr."""
    warmup = dict(warmup_t=round(cfg.warmup_epochs * steps_per_epoch), warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    if cfg.sched == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.min_lr, **warmup)
    if cfg.sched == "multistep":  # mmdetection's 1x schedule: x0.1 at epochs 8 and 11 of 12
        milestones = [round(epoch * steps_per_epoch) for epoch in cfg.decay_milestones]
        return MultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=cfg.decay_rate, **warmup)
    if cfg.sched == "poly":  # mmsegmentation's schedule: (1 - t/T)^power down to min_lr
        return PolyLRScheduler(optimizer, t_initial=total_steps, power=cfg.poly_power, lr_min=cfg.min_lr, **warmup)
    raise ValueError(f"trainer.sched={cfg.sched!r} is not known; choose from: {', '.join(SCHEDULES)}")


def fit(
    model: nn.Module,
    task: Task,
    cfg: Any,
    run_dir: Path,
    seed: int,
    on_eval: Optional[EvalHook] = None,
    tracker: Any = None,
) -> FitResult:
    """Train `model` on `task` with trainer config `cfg`, resuming from run_dir/checkpoint.pt if present.

    Inside a process group (trainer.devices > 1, see ablate/train/distributed.py) every rank calls
    this: each trains on its shard of every global batch under DDP and evaluates its share of the
    validation split; rank 0 merges the evaluations and alone writes.
    """
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"trainer.batch_size={cfg.batch_size} is not divisible by trainer.devices={world}: "
                         f"every rank takes an equal share of the global batch")
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    amp_dtype = resolve_precision(cfg.precision, device)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    )
    model.to(device).train()
    train_model = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                   if world > 1 else model)
    steps_per_epoch = task.steps_per_epoch(cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = create_optimizer_v2(
        model, opt=cfg.opt, lr=effective_lr(cfg), weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), eps=cfg.eps
    )
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ckpt_path = Path(run_dir) / records.CHECKPOINT_FILE

    curve, window = Curve(), []  # window: losses since the last curve point

    def save(step: int) -> None:
        if rank:  # every rank holds the same state (same seeds, same updates): rank 0 saves it
            return
        checkpoint.save(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "rng": checkpoint.rng_state(),
            "wandb_id": getattr(tracker, "run_id", None), "curve": {"train": curve.train, "eval": curve.eval},
            "loss_window": list(window), "run_id": Path(run_dir).name, "total_steps": total_steps,
        })
        curve.write(run_dir)

    state, set_aside = checkpoint.load_for_resume(
        ckpt_path, map_location=device, check=lambda state: _unresumable(state, model, total_steps, Path(run_dir).name))
    if state is None:
        step, resumed_from = 0, None
        # after model init, so augmentation draws match across arms. The same on every rank: each loads
        # the whole global batch, so its augmentation draws are one process's (drop-path masks repeat
        # across the shards of a batch)
        seed_everything(seed + 1)
    else:
        for obj, key in ((model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            obj.load_state_dict(state[key])
        checkpoint.set_rng_state(state["rng"])
        step = resumed_from = state["step"]
        curve = Curve(**state.get("curve", {}))  # a checkpoint from before curves existed starts an empty one
        window = list(state.get("loss_window", []))  # so a resumed curve equals an uninterrupted one
        if rank == 0:
            log.info("resumed from %s at step %d/%d", ckpt_path, step, total_steps)

    with _progress(cfg, total_steps, step, show=rank == 0) as bar:
        train_seconds, train_images = 0.0, 0
        while step < total_steps:
            epoch, start_batch = divmod(step, steps_per_epoch)
            for batch in task.train_batches(cfg.batch_size, seed, epoch, start_batch, cfg.num_workers):
                tic = time.perf_counter()
                images = task.batch_size_of(batch)  # the global batch: all ranks
                if world > 1:
                    batch = shard(batch, rank, world)
                scheduler.step_update(num_updates=step)
                with autocast():
                    loss = task.training_step(train_model, batch, device)
                loss_value = mean_over_ranks(loss.item())  # the global batch's loss, the same on every rank
                window.append(loss_value)
                if not math.isfinite(loss_value):
                    curve.train.append([step + 1, loss_value, optimizer.param_groups[0]["lr"]])
                    if rank == 0:
                        curve.write(run_dir)  # the curve up to the blow-up is the diagnosis
                    raise Diverged(f"loss={loss_value} at step {step} (epoch {epoch}); lr={optimizer.param_groups[0]['lr']:.3g}")
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                train_seconds += time.perf_counter() - tic
                train_images += images
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch)
                if step % cfg.log_every == 0 or step == total_steps:
                    lr = optimizer.param_groups[0]["lr"]
                    curve.train.append([step, sum(window) / len(window), lr])
                    window.clear()
                    speed = train_images / train_seconds  # this attempt's optimizer steps only (no eval, no saves)
                    eta = (total_steps - step) * train_seconds / (step - (resumed_from or 0))
                    if rank == 0:
                        log.info("step %d/%d epoch %d loss %.4f lr %.3g %.1f img/s ETA %s", step, total_steps, epoch,
                                 loss_value, lr, speed, _clock(eta))
                    if tracker is not None:
                        tracker.log({"train/loss": loss_value, "train/lr": lr, "train/epoch": epoch,
                                     "train/images_per_s": speed}, step=step)
                stop_signal = max_over_ranks(preemption.pending())  # a signal to any rank stops them all here
                if step % cfg.checkpoint_every == 0 or stop_signal:
                    save(step)
                    if stop_signal:
                        barrier()  # rank 0's checkpoint is on disk before any rank hands over
                        if rank:
                            outlive_rank0()  # rank 0 hands over first: under Slurm it requeues the whole job
                        preemption.proceed(stop_signal)  # requeue (Slurm) or exit; the next attempt resumes here
                if step >= total_steps:
                    break
            epoch_done = step % steps_per_epoch == 0 and step < total_steps
            if cfg.eval_every and epoch_done and (step // steps_per_epoch) % cfg.eval_every == 0:
                _evaluate(model, task, device, autocast, step, on_eval, tracker, curve)

    save(step)  # final weights: a later dense-task job can start its backbone from them
    tic = time.perf_counter()
    metrics = _evaluate(model, task, device, autocast, step, on_eval, tracker, curve)
    if rank == 0:
        curve.write(run_dir)
    return FitResult(metrics, step, train_seconds, train_images, time.perf_counter() - tic, resumed_from, set_aside)


def _evaluate(model, task, device, autocast, step, on_eval, tracker, curve: Curve) -> dict[str, float]:
    rank, world = rank_and_world()
    with autocast():  # each rank its share of the validation split; rank 0 merges them
        shards = gather_to_rank0(task.evaluate_shard(model, device, rank, world))
    (metrics,) = from_rank0([task.merge_metrics(shards) if rank == 0 else None])
    curve.eval.append([step, dict(metrics)])
    model.train()
    if rank == 0:
        log.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    if tracker is not None:
        tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
    pruned = None
    if on_eval is not None:  # rank 0's hook; every rank stops together when it prunes
        try:
            on_eval(step, metrics)
        except Pruned as exc:
            pruned = str(exc)
    (pruned,) = from_rank0([pruned])
    if pruned is not None:
        raise Pruned(pruned)
    return metrics


def _clock(seconds: float) -> str:
    """H:MM:SS (training time left: steps to go at this attempt's mean seconds per step)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@contextlib.contextmanager
def _progress(cfg: Any, total: int, initial: int, show: bool) -> Iterator[Any]:
    """A tqdm bar of the optimizer steps when stderr is a terminal (else None); while it is shown, log
    lines go through tqdm.write above it, so that a line and the bar never share a row."""
    if not (show and cfg.progress and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True,
                                       leave=False) as bar:
        yield bar
