"""`ablate plan`: compose a sweep without running it and print its job matrix and cost.

    ablate plan model.ssm=true,false task=shapes,pathfinder seed=0,1 +experiment=demo

Takes the same overrides as `python run.py -m`, expands them exactly as Hydra's basic sweeper does
(sweeper params from the config first, command line after), composes every cell, and prints one row
per cell: factors, params and MACs per image, seq_len vs tau, whether the cell is already completed,
the cell a fine-tuning cell starts from (task.backbone_from: a planned cell, or a finished one), and
each job's ranks (trainer.devices per node x trainer.nodes), and
the training cost estimate: steps x batch x MACs x 3 (forward + backward ~ 3x forward; a dense
task's MACs are its whole detector's or segmenter's at task.cost_size), in PFLOP
(2 FLOPs per MAC) and GPU-hours at `--tflops` sustained per GPU (per cell and in total). Exits 1 on any config error, before any job
would be submitted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError
from tabulate import tabulate

from ablate import cell, chain, records
from ablate.config import ConfigError, compose, validate
from ablate.models import family_of
from ablate.tasks.base import DataError


DEFAULT_TFLOPS = 100.0  # sustained training TFLOP/s per GPU, for the GPU-hours estimate


def expand(arguments: list[str]) -> list[list[str]]:
    """The per-job override lists a `run.py -m ARGUMENTS` would launch: the grid sweeper's (its params
    x each of its grids x the command line, in that order; hydra_plugins/ablate_grid_sweeper)."""
    from hydra_plugins.ablate_grid_sweeper.grid_sweeper import grid_jobs

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(arguments)
    plain = [a for a, o in zip(arguments, parsed) if not o.is_sweep_override()]
    sweeper = compose(plain, return_hydra_config=True).hydra.sweeper
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    grids = [dict(grid) for grid in sweeper.get("grids") or []]
    return grid_jobs(params, grids, arguments, parser)


def plan_cell(overrides: list[str], cost_cache: dict, tflops: float = DEFAULT_TFLOPS) -> dict[str, Any]:
    cfg = compose(overrides)
    validate(cfg)  # each job would raise this at its start
    config, run_id = cell.resolve(cfg)  # as the job does: the same run_id
    result = Path(cfg.paths.results) / "runs" / run_id / records.RESULT_FILE
    status = json.loads(result.read_text()).get("status", "?") if result.exists() else "new"
    task = instantiate(cfg.task)
    # the cost depends on the task and the model as the cell defines them (inert keys at their defaults)
    key = json.dumps([config["task"], config["model"]], sort_keys=True, default=str)
    if key not in cost_cache:
        cost_cache[key] = task.cost(task.build_model(cfg.model))
    cost = cost_cache[key]
    steps = cfg.trainer.max_steps
    if steps is None:
        samples = task.planned_train_samples()  # a generated dataset's size: nothing is generated here
        try:
            if samples is None:
                task.prepare()  # a dataset on disk, which prepare() only reads
            steps = cfg.trainer.epochs * task.steps_per_epoch(cfg.trainer.batch_size, samples)
        except DataError:
            steps = None  # data not on this machine: the cost stays unknown rather than guessed
    family = family_of(cfg.model.name)
    # the whole network trains: a dense task's detector or segmenter (at task.cost_size), not its backbone alone
    macs = next((cost[key] for key in ("detector_macs", "segmenter_macs") if key in cost), cost["macs"])
    train_flops = None if steps is None else 3 * 2 * macs * steps * cfg.trainer.batch_size
    return {
        "cell": " ".join(o for o in overrides), "run_id": run_id, "status": status,
        "_config": config,  # for upstream_column; not printed
        "params_M": cost["params"] / 1e6, "GMACs": cost["macs"] / 1e9, "GMACs_ssm": cost["macs_ssm"] / 1e9,
        "seq_len": family.seq_len(cfg.task.image_size), "tau": family.tau(cfg.model.name),
        "steps": steps, "train_PFLOP": None if train_flops is None else train_flops / 1e15,
        # the job's ranks (one GPU each), and its GPU-hours, whatever their number (wall-clock: / ranks)
        "devices": cfg.trainer.devices, "nodes": cfg.trainer.nodes,
        "GPU_h": None if train_flops is None else train_flops / (tflops * 1e12) / 3600,
    }


def upstream_column(rows: list[dict[str, Any]]) -> None:
    """Give every row an `upstream` (cells with task.backbone_from only, ablate.chain): the run id of the
    planned cell it starts from, else of the cell under paths.results (with its status), else why there
    is none. Drops each row's `_config`."""
    configs = [row.pop("_config") for row in rows]
    if not any(chain.upstream_task(config) for config in configs):
        return
    deps = chain.dependencies(configs)
    for row, config, ups in zip(rows, configs, deps):
        if chain.upstream_task(config) is None:
            row["upstream"] = ""
        elif ups:
            row["upstream"] = f"{rows[ups[0]]['run_id']} (planned)"
        else:
            try:
                found = chain.find_upstream(config, Path(config["paths"]["results"]))
                row["upstream"] = f"{found.run_id} ({found.record['status']})"
            except chain.UpstreamError:
                row["upstream"] = "none: the job will fail"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="the same overrides as `python run.py -m ...` (`python run.py "
                                                     "--help` lists every group and setting with what it allows)")
    parser.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS,
                        help=f"sustained training TFLOP/s per GPU for the GPU-hours estimate (default {DEFAULT_TFLOPS:g})")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--pilot", type=Path, metavar="DIR",
                        help="a pilot sweep folder (or a results root): its seed-to-seed sd gives, per hypothesis "
                             "and cell group, the paired seeds needed to resolve the margin or effect at 80%% power")
    args = parser.parse_args(argv)
    if args.tflops <= 0:
        parser.error(f"--tflops={args.tflops} must be positive")
    if args.pilot is not None and not args.pilot.is_dir():
        parser.error(f"--pilot={args.pilot} is not a folder; give a sweep folder (results/sweeps/NAME) or a results root")
    try:
        jobs = expand(args.overrides)
        cache: dict = {}
        rows = [plan_cell(job, cache, args.tflops) for job in _progress(jobs, "composing cells")]
        upstream_column(rows)
    except (HydraException, ValueError, KeyError) as exc:
        if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
            exc = exc.__cause__  # the task's own message, not Hydra's "Error in call to target ..."
        cause = exc.__cause__
        if isinstance(cause, ValidationError) and cause.full_key:  # a value of the wrong type on the command line
            exc = ConfigError(f"{cause.full_key}={cause.value!r} is not allowed: {str(cause.msg).splitlines()[0]}")
        print(f"ablate plan: {(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 1
    if args.pilot is not None and sys.stderr.isatty():
        print(f"ablate plan: reading the pilot at {args.pilot} and testing its hypotheses ...", file=sys.stderr)
    seeds = pilot_rows(args.pilot) if args.pilot is not None else None
    known = [r["train_PFLOP"] for r in rows if r["train_PFLOP"] is not None]
    total_pflop = sum(known)
    gpu_hours = total_pflop * 1e15 / (args.tflops * 1e12) / 3600
    if args.json:
        print(json.dumps({"cells": rows, "total_PFLOP": total_pflop, "gpu_hours": gpu_hours}
                         | ({"seeds_needed": seeds} if seeds is not None else {}), indent=2))
        return 0
    print(tabulate(rows, headers="keys", floatfmt=".4g", missingval="?"))
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    unknown = len(rows) - len(known)
    if not known:  # never "0 GPU-hours" for work whose size this machine cannot see
        cost = f"training cost unknown: none of the {unknown} cells has its data on this machine"
    else:
        cost = (f"training cost {'at least ' if unknown else ''}{total_pflop:.4g} PFLOP = {gpu_hours:.3g} GPU-hours "
                f"at {args.tflops:g} TFLOP/s" + (f"; {unknown} cells without data on this machine are not counted"
                                                  if unknown else ""))
    print(f"\n{len(rows)} cells ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))}); {cost}")
    if seeds is not None:
        print(f"\nSeeds needed at 80% power, from the pilot at {args.pilot} (sd of its paired differences):")
        print(tabulate(seeds, headers="keys", floatfmt=".3g", missingval="?") if seeds
              else "the pilot has no cell group with 2 or more paired seeds in any hypothesis' scope")
    return 0


def _progress(items: list, what: str) -> Any:
    """`items` with a progress bar on a terminal (composing a cell takes about a second); as they are elsewhere."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="cell", leave=False)


def pilot_rows(pilot: Path) -> list[dict[str, Any]]:
    """Per hypothesis part and cell group of a pilot: its paired sd, the effect to resolve, and the
    fewest paired seeds whose minimum detectable effect (one-sided paired t, 80% power) reaches it."""
    from ablate.analysis import stats
    from ablate.analysis.collect import collect
    from ablate.analysis.hypotheses import evaluate, load_hypotheses, power_target

    is_root = (pilot / "runs").is_dir()
    collection = collect([] if is_root else [pilot], pilot if is_root else None)
    out = []
    for hypothesis in load_hypotheses():
        rows = evaluate(hypothesis, collection).rows
        for _, row in rows[(rows["part"] != "trend") & (rows["n_pairs"] >= 2)].iterrows():
            target, what = power_target(row["margin"], row["diff"])
            needed = stats.pairs_needed(row["sd_diff"], target, hypothesis.alpha)
            out.append({"hypothesis": hypothesis.id, "part": row["part"], "cell group": row["cell"],
                        "pilot pairs": int(row["n_pairs"]), "sd": row["sd_diff"],
                        "to resolve": f"{what.removeprefix('the ')} {target:.3g}", "seeds needed": needed})
    return out


if __name__ == "__main__":
    sys.exit(main())
