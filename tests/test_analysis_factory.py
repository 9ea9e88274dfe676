"""Synthetic ablate.result/1 records laid out on disk the way the job runner does (ablate/job.py).

Imported by the other test_analysis_* modules; its own tests check the records are valid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ablate import records
from ablate.models import family_of

STAGE3_WIDTH = {"femto": 192, "tiny": 384}  # tau = 6 x stage-3 width (docs/study.md §2)
RECORD_KEYS = [f"model.{key}" for key in family_of("femto").record_keys]  # what the job puts in every record


# The `family` block a MambaOut job writes (tests/test_occlusion.py checks it against a real job's record).
MAMBAOUT_FACTS = {"name": "mambaout", "record_keys": ["ssm", "scan", "causal", "match_macs"],
                  "switches": {"ssm": ["no SSM", "SSM"], "causal": ["fully visible", "causal"]}}


def make_record(
    *,
    value: float | None = 80.0,
    ssm: bool = False,
    seed: int = 0,
    task: str = "shapes",
    kind: str = "classification",
    metric: str = "top1",
    higher_is_better: bool = True,
    variant: str = "femto",
    image_size: Sequence[int] = (32, 32),
    status: str = "completed",
    sweep: str = "synthetic",
    epochs: int = 1,
    tuning: dict | None = None,
    chance: float | None = None,
    causal: bool = False,
    match_macs: bool = False,
    extra_metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One valid record. MACs grow with the token count; the SSM arm adds 15 % (all in macs_ssm), and
    the iso-MAC control (match_macs) has the SSM arm's MACs without a scan."""
    h, w = image_size
    config = {
        "model": {"name": variant, "ssm": ssm, "scan": "cross", "d_state": 16, "causal": causal, "match_macs": match_macs},
        "task": {"name": task, "image_size": [h, w], "data_root": "/data"},
        "trainer": {"epochs": epochs, "device": "cpu"},
        "paths": {"results": "/results"}, "seed": seed, "sweep": sweep, "tuning": tuning,
    }
    overrides = [f"model={variant}", f"model.ssm={str(ssm).lower()}", f"task={task}",
                 f"task.image_size=[{h},{w}]", f"seed={seed}"]
    overrides += [f"model.{key}=true" for key, on in (("causal", causal), ("match_macs", match_macs)) if on]
    seq_len = (h // 16) * (w // 16)
    base_macs = 200_000_000 + 5_000_000 * seq_len
    macs_ssm = int(0.15 * base_macs) if ssm else 0
    widening = int(0.15 * base_macs) if match_macs else 0
    completed = status == "completed"
    return {
        "schema": records.SCHEMA, "run_id": records.run_id(config), "sweep": sweep, "status": status,
        "error": None if completed else {"type": "RuntimeError", "message": "CUDA out of memory", "traceback": "..."},
        "config": config, "overrides": overrides, "factors": records.factors(config, overrides, always=RECORD_KEYS),
        "task": {"name": task, "kind": kind, "metric": metric, "higher_is_better": higher_is_better, "chance": chance},
        "metrics": {metric: value, "loss": 1.0, **(extra_metrics or {})} if completed and value is not None else {},
        "cost": {
            "params": 7_300_000 + (250_000 if ssm else 0), "macs": base_macs + macs_ssm + widening, "macs_ssm": macs_ssm,
            "input_size": [h, w], "seq_len": seq_len, "tau": 6 * STAGE3_WIDTH[variant],
            "train_throughput": 500.0 if ssm else 800.0, "eval_throughput": 2000.0 if ssm else 3000.0,
            "peak_memory_mb": 512.0, "wall_seconds": 10.0, "steps": 100,
        },
        "tuning": tuning,
        "env": {"ablate": "0.1.0", "git_commit": "abc1234", "torch": "2.14.1", "timm": "1.0.9", "python": "3.11",
                "device": "cpu (2 cores, 2 threads)", "hostname": "node1", "slurm_job_id": None,
                "started_at": f"2025-01-01T00:00:{seed:02d}+00:00", "finished_at": "2025-01-01T01:00:00+00:00"},
        "family": MAMBAOUT_FACTS,
    }


def paired(control: Iterable[float], treatment: Iterable[float], **cell: Any) -> list[dict]:
    """Records of both arms of one cell group, seed i for the i-th value of each arm."""
    out = []
    for seed, (c, t) in enumerate(zip(control, treatment)):
        out.append(make_record(value=c, ssm=False, seed=seed, **cell))
        out.append(make_record(value=t, ssm=True, seed=seed, **cell))
    return out


def write_sweep(results: Path, sweep: str, recs: Sequence[dict], command: Sequence[str] = ()) -> Path:
    """results/runs/<id>/result.json and results/sweeps/<sweep>/<job>/cell.json (+ .hydra/)."""
    sweep_dir = results / "sweeps" / sweep
    for job, record in enumerate(recs):
        run_dir = results / "runs" / record["run_id"]
        records.write_json_atomic(run_dir / "result.json", record)
        job_dir = sweep_dir / str(job)
        records.write_json_atomic(job_dir / "cell.json", {
            "run_id": record["run_id"], "run_dir": str(run_dir), "overrides": record["overrides"]})
        (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(record["overrides"]))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    hydra = {"hydra": {"job": {"name": "run"}, "overrides": {"task": list(command)}}}
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(hydra))
    return sweep_dir


def test_factory_records_are_valid_and_distinct(tmp_path: Path) -> None:
    recs = paired([80.0, 81.0], [80.5, 81.5]) + [make_record(status="failed", value=None, seed=9)]
    assert all(records.validate(r) == [] for r in recs)
    assert len({r["run_id"] for r in recs}) == len(recs)
    sweep = write_sweep(tmp_path / "results", "s", recs)
    assert len(list(sweep.glob("*/cell.json"))) == 5
    assert all(records.read(p) for p in (tmp_path / "results").glob("runs/*/result.json"))


def test_factory_cost_follows_the_paper_token_count() -> None:
    record = make_record(image_size=(224, 224), variant="tiny", ssm=True)
    assert record["cost"]["seq_len"] == 196  # 224/16 squared
    assert record["cost"]["tau"] == 2304  # 6 x 384, tau_small
    assert record["cost"]["macs_ssm"] > 0 and record["factors"]["model.ssm"] is True
