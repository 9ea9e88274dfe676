"""Time `ablate report --results ROOT` on a generated results folder of N records.

    python bench/bench_report.py                 # 10,000 and 100,000 records
    python bench/bench_report.py --records 2000  # one size
    python bench/bench_report.py --runs 5        # the run of median total of 5 per size (default 3)
    python bench/bench_report.py --profile       # also print the top functions (cProfile) of the largest size

The records are synthetic, valid `ablate.result/1` records laid out as the job runner lays them out
(tests/test_analysis_factory.py writes them): both arms of the SSM switch for 2 tasks x 2 variants x
5 image sizes (short and long around tau), and as many seeds as it takes to reach N. The report is
the real command line in a fresh process, so the time includes imports, reading every record,
the hypothesis tests, the figures and the CSVs, broken down into start-up (the interpreter, the
imports before the report starts, and the exit), read (a worker reads the records while the report's
process imports scipy and statsmodels), analysis and render (`ablate report --timings`). Targets:
10,000 records <= 5 s, 100,000 <= 60 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_analysis_factory import make_record  # noqa: E402  (the tests' record factory: one copy)

CELLS = [(task, variant, size) for task in ("shapes", "pathfinder") for variant in ("femto", "tiny")
         for size in (32, 64, 128, 224, 384)]


def write_records(results: Path, count: int) -> None:
    """`count` records under results/runs/<run_id>/result.json: the cells x both arms x seeds."""
    n = 0
    seed = 0
    while n < count:
        for task, variant, size in CELLS:
            for ssm in (False, True):
                if n == count:
                    return
                value = 60.0 + (seed % 7) + (1.5 if ssm else 0.0) + size / 100
                record = make_record(value=value, ssm=ssm, seed=seed, task=task, variant=variant,
                                     image_size=(size, size), sweep="bench", chance=10.0)
                folder = results / "runs" / record["run_id"]
                folder.mkdir(parents=True)
                (folder / "result.json").write_text(json.dumps(record))
                n += 1
        seed += 1


def time_report(results: Path, out: Path, profile: bool) -> dict[str, float]:
    """Seconds of one `ablate report` in a fresh process: total, and its phases (read, analysis, render,
    from --timings; start-up = the rest: the interpreter and the imports)."""
    command = [sys.executable, *(["-m", "cProfile", "-s", "cumulative"] if profile else []), "-m", "ablate.cli",
               "report", "--results", str(results), "--out", str(out), "--timings"]
    tic = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"ablate report failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if profile:
        print("\n".join(line for line in proc.stdout.splitlines()[:60]))
    phases = {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+) s", proc.stderr.split("timings:")[-1])}
    return {"total": seconds, "start-up": seconds - sum(phases.values()), **phases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, action="append", help="record count (repeatable)")
    parser.add_argument("--runs", type=int, default=3, help="reports per size; the one of median total is shown")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    sizes = args.records or [10_000, 100_000]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ablate-bench-report-") as tmp:
        for count in sizes:
            base = Path(tmp) / str(count)
            write_records(base / "results", count)
            profile = args.profile and count == max(sizes)
            runs = sorted((time_report(base / "results", base / "report", profile) for _ in range(args.runs)),
                          key=lambda seconds: seconds["total"])
            rows.append((count, runs[len(runs) // 2], [run["total"] for run in runs]))
    print(f"ablate report --results ROOT, {os.cpu_count()} cores; seconds (the run of median total of {args.runs})")
    columns = list(rows[0][1])
    print(f"{'records':>10}" + "".join(f"  {name:>10}" for name in columns) + "  totals of every run")
    for count, seconds, totals in rows:
        print(f"{count:>10}" + "".join(f"  {seconds[name]:>10.2f}" for name in columns) + "  "
              + ", ".join(f"{total:.2f}" for total in totals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
