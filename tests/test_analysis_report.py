"""The report end to end on a synthetic sweep: sections, CSVs, determinism, CLI, Hydra callback."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, distribution_to_json
from omegaconf import OmegaConf
from test_analysis_factory import make_record, paired, write_sweep

from ablate.analysis import report
from ablate.analysis.callback import ReportCallback
from ablate.analysis.collect import collect, pair
from ablate.analysis.hypotheses import CONF_DIR, DECISIONS
from ablate.analysis.summaries import crossover_table, sequence_points
from ablate.records.tuning import SUMMARY_FILE

TAU = 1152  # femto: 6 x 192
DET_SIZES = [(256, 256), (512, 512), (768, 768), (1024, 1024)]  # L = 256, 1024, 2304, 4096
# the hypotheses these records are built for (the controls H2-iso and H3 need arms they lack)
PAPER_HYPOTHESES = ("h1.yaml", "h1_embedded.yaml", "h2.yaml")
H9 = "id: H9\nclaim: On detection the arms are equivalent within 5 points.\nscope: {task_kind: detection}\ntest: equivalence\nmargin: 5\n"
SECTIONS = ["# Ablation report: study", "## Verdicts at a glance", "## What was run", "## Verdicts\n",
            "## What the numbers say", "### H1:", "### H2:", "### H9:", "## Results per task", "### det (detection; map, higher is better)",
            "### shapes (classification; top1, higher is better)", "## Training curves", "## Sequence length", "Crossovers:",
            "## Tuning protocol", "## Problems", "### Failed, diverged and pruned runs", "### Missing pairs",
            "### Sanity", "### Unreadable, missing or incomplete records", "## Files"]


def _study_records() -> list[dict]:
    rng = np.random.default_rng(0)
    recs = []
    for size in [(32, 32), (64, 64)]:  # short classification, no effect of the SSM
        control = 80 + rng.normal(0, 1, 4)
        recs += paired(control, control + rng.normal(0, 0.05, 4), image_size=size)
    for size in DET_SIZES:  # the SSM's advantage is 2 log(L / tau): it starts to pay exactly at L = tau
        length = (size[0] // 16) ** 2
        control = 40 + rng.normal(0, 1, 3)
        recs += paired(control, control + 2 * np.log(length / TAU), image_size=size, task="det", kind="detection",
                       metric="map")
    recs.append(make_record(value=None, ssm=True, seed=7, status="failed"))
    recs.append(make_record(value=81.0, ssm=True, seed=8))  # its control never ran
    return recs


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    results = root / "results"
    sweep = write_sweep(results, "study", _study_records(), ["model.ssm=true,false", "seed=0,1,2"])
    (results / "runs" / "torn").mkdir()
    (results / "runs" / "torn" / "result.json").write_text('{"schema": ')
    (sweep / "99" / ".hydra").mkdir(parents=True)
    (sweep / "99" / ".hydra" / "overrides.yaml").write_text("- seed=9\n")
    hypotheses = root / "hypothesis"
    hypotheses.mkdir()
    for name in PAPER_HYPOTHESES:
        shutil.copy(CONF_DIR / name, hypotheses / name)
    (hypotheses / "h9.yaml").write_text(H9)
    path = report.write_report([sweep], root / "out", hypotheses, results_root=results)
    return {"root": root, "results": results, "sweep": sweep, "hypotheses": hypotheses, "report": path}


def test_every_section_is_present_in_order(study: dict[str, Path]) -> None:
    text = study["report"].read_text()
    positions = [text.find(heading) for heading in SECTIONS]
    assert -1 not in positions, [h for h, p in zip(SECTIONS, positions) if p == -1]
    assert positions == sorted(positions)
    assert "`python run.py -m model.ssm=true,false seed=0,1,2`" in text
    for figure in ("det_metric_vs_gmacs.png", "det_bars.png", "det_difference_vs_length.png", "shapes_bars.png"):
        assert f"]({figure})" in text and (study["report"].parent / figure).stat().st_size > 0


def test_the_first_screen_holds_one_row_per_hypothesis_with_its_verdict_effect_pairs_and_mde(
        study: dict[str, Path]) -> None:
    lines = study["report"].read_text().splitlines()[:40]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in lines if line.startswith("| H")}
    assert set(rows) == {"H1", "H1-embedded", "H2", "H9"}
    verdicts = pd.read_csv(study["report"].parent / "verdicts.csv")
    h2 = verdicts[(verdicts["hypothesis"] == "H2") & (verdicts["part"] == "superiority") & (verdicts["n_pairs"] > 0)]
    _, claim, verdict, effect, pairs, mde = rows["H2"]
    assert claim.startswith("For long-sequence tasks the SSM helps")
    assert int(pairs) == int(h2["n_pairs"].sum()) and effect.startswith(f"{len(h2)} cell groups: diff")
    assert verdict.startswith("**") and verdict.strip("*").split("*")[0] in DECISIONS
    assert any(line.startswith("- ") and "cells read" in line and "seeds 0, 1, 2" in line for line in lines)
    assert any(line.startswith("- compute: ") for line in lines)


def test_a_second_run_is_byte_identical(study: dict[str, Path]) -> None:
    again = report.write_report([study["sweep"]], study["root"] / "again", study["hypotheses"], results_root=study["results"])
    first_dir = study["report"].parent
    for name in sorted(p.name for p in first_dir.iterdir()):
        assert (first_dir / name).read_bytes() == (again.parent / name).read_bytes(), name


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a report forks workers only with two cores or more")
def test_a_report_written_with_workers_equals_one_written_in_one_process(study: dict[str, Path], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from ablate.analysis import workers

    monkeypatch.setattr(workers, "_fork", lambda: None)  # one core, threads, or no process could be started
    here = report.write_report([study["sweep"]], tmp_path / "here", study["hypotheses"], results_root=study["results"])
    # `ablate report` in a process of its own (one thread): forked workers read the records and draw the
    # figures, and this process never imports matplotlib
    code = ("import sys\nfrom ablate import cli\n"
            f"cli.main(['report', {str(study['sweep'])!r}, '--results', {str(study['results'])!r}, '--hypotheses', "
            f"{str(study['hypotheses'])!r}, '--out', {str(tmp_path / 'workers')!r}])\n"
            "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "False"
    names = sorted(p.name for p in here.parent.iterdir())
    assert len([name for name in names if name.endswith(".png")]) >= 4
    assert names == sorted(p.name for p in (tmp_path / "workers").iterdir())
    for name in names:
        assert (here.parent / name).read_bytes() == (tmp_path / "workers" / name).read_bytes(), name


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a report forks workers only with two cores or more")
def test_a_worker_that_dies_fails_what_it_ran_and_the_next_report_forks_others() -> None:
    code = ("import os\nfrom concurrent.futures.process import BrokenProcessPool\nfrom ablate.analysis.workers import Workers\n"
            "with Workers() as workers:\n    killed = workers.submit(os._exit, 9)\n"
            "    try:\n        killed.result()\n    except BrokenProcessPool:\n        print('broken')\n"
            "with Workers() as workers:\n    print(workers.submit(str, 5).result(), workers.submit(os.getpid).result() != os.getpid())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["broken", "5", "True"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a report forks workers only with two cores or more")
def test_the_workers_end_when_the_report_process_is_killed() -> None:
    code = ("import time\nfrom ablate.analysis.workers import Workers\n"
            "workers = Workers()\nbusy = [workers.submit(time.sleep, 120) for _ in range(2)]\n"
            "print('ready', flush=True)\ntime.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        children = [pid for pid in os.listdir("/proc") if pid.isdigit() and _parent_of(pid) == parent.pid]
        assert len(children) == 2
        parent.kill()  # SIGKILL: no chance to stop them itself
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in children)
    finally:
        parent.kill()


def _parent_of(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _running(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_verdicts_csv_has_one_row_per_hypothesis_part_and_cell(study: dict[str, Path]) -> None:
    verdicts = pd.read_csv(study["report"].parent / "verdicts.csv")
    assert list(verdicts.columns[:3]) == ["hypothesis", "part", "scope"]
    assert {"n_pairs", "diff", "ci_low", "ci_high", "p", "p_adj", "decision"} <= set(verdicts.columns)
    assert set(verdicts["decision"]) <= set(DECISIONS)
    parts = verdicts.groupby(["hypothesis", "part"]).size().to_dict()
    # H1 and H1-embedded (shapes only): two short shapes sizes; H2: det at L = 2304 and 4096, one det
    # trend series; H9: four det sizes
    assert parts == {("H1", "efficiency"): 2, ("H1", "non_inferiority"): 2, ("H1-embedded", "efficiency"): 2,
                     ("H1-embedded", "non_inferiority"): 2, ("H2", "superiority"): 2, ("H2", "trend"): 1,
                     ("H9", "equivalence"): 4}
    assert set(verdicts.query("hypothesis != 'H9'")["decision"]) == {"supported"}
    text = study["report"].read_text()
    assert "| H1           | For short-sequence" in text and "| **supported**" in text


def test_the_crossover_lands_where_the_data_puts_it(study: dict[str, Path]) -> None:
    collection = collect([study["sweep"]])
    points = sequence_points(pair(collection.runs, collection.factors, "model.ssm", True, False))
    crossings = crossover_table(points)
    (row,) = crossings[crossings["task"] == "det"].to_dict("records")  # shapes: noise around 0, not clear
    assert not crossings[crossings["task"] == "shapes"]["clear"].any()
    assert row["seq_len_star"] == pytest.approx(TAU, rel=1e-6) and row["ratio"] == pytest.approx(1.0, rel=1e-6)
    assert row["between"] == "1024-2304" and row["direction"] == "treatment starts to pay" and row["clear"]
    assert "| model.name=femto | 1024-2304   | 1152 | 1152 | 1.00   | treatment starts to pay |" in study["report"].read_text()


def test_failures_missing_pairs_and_unreadable_records_are_reported(study: dict[str, Path]) -> None:
    text = study["report"].read_text()
    assert "| failed   | RuntimeError: CUDA out of memory |" in text
    assert "`model=femto model.ssm=false task=shapes task.image_size=[32,32] seed=8`" in text
    assert "runs/torn/result.json" in text and "unreadable record" in text
    assert "no cell.json: the job stopped before its cell started (seed=9)" in text


def test_results_csv_has_one_row_per_readable_record(study: dict[str, Path]) -> None:
    runs = pd.read_csv(study["report"].parent / "results.csv")
    assert len(runs) == len(_study_records())
    assert {"model.ssm", "seed", "cost.macs", "cost.seq_len", "metrics.top1"} <= set(runs.columns)
    assert runs["overrides"].str.startswith("model=femto model.ssm=").all()


def test_cli_writes_to_reports_sweep_under_the_current_directory(study: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    small = write_sweep(tmp_path / "results", "small", paired([80.0, 81.0, 82.0], [80.1, 81.0, 81.9]))
    monkeypatch.chdir(tmp_path)
    assert report.main([str(small)]) == 0
    assert capsys.readouterr().out.strip() == "reports/small/report.md"
    assert (tmp_path / "reports" / "small" / "verdicts.csv").exists()
    assert capsys.readouterr().err == ""  # timings only when asked
    assert report.main([str(small), "--timings"]) == 0
    timings = re.fullmatch(r"ablate report: timings: read ([\d.]+) s, analysis ([\d.]+) s, render ([\d.]+) s",
                           capsys.readouterr().err.strip())
    assert timings and all(float(seconds) >= 0 for seconds in timings.groups())


def test_cli_bad_input_is_one_line_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main([str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: sweep folder does not exist" in err
    (tmp_path / "hyp").mkdir()
    (tmp_path / "hyp" / "h.yaml").write_text("id: X\nclaim: c\ntest: maybe\n")
    (tmp_path / "s").mkdir()
    assert report.main([str(tmp_path / "s"), "--hypotheses", str(tmp_path / "hyp")]) == 1
    assert "h.yaml: test='maybe' is not allowed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([])


def test_a_hypothesis_on_another_factor_gets_its_own_tables_and_no_ssm_words(tmp_path: Path) -> None:
    # trainer.epochs 3 vs 1, both arms without the SSM: the descriptive sections follow the hypothesis
    recs = [make_record(value=v, epochs=e, seed=s) for s, (one, three) in enumerate([(60, 70), (62, 71), (61, 73)])
            for e, v in ((1, one), (3, three))]
    sweep = write_sweep(tmp_path / "results", "epochs", recs)
    hypotheses = tmp_path / "hyp"
    hypotheses.mkdir()
    (hypotheses / "e.yaml").write_text(
        "id: E1\nclaim: three epochs beat one\ntest: superiority\nfactor: trainer.epochs\ntreatment: 3\n"
        "control: 1\nlabels: {3: three epochs, 1: one epoch}\n")
    text = report.write_report([sweep], tmp_path / "out", hypotheses).read_text()
    body = text[text.index("## Results per task"):text.index("## Tuning protocol")]
    problems = text[text.index("## Problems"):]
    assert "Arms of trainer.epochs: one epoch (control, 1) and three epochs (treatment, 3)." in body
    header = next(line for line in body.splitlines() if line.startswith("| cell group") and "pairs" in line)
    assert [c.strip() for c in header.split("|")[4:6]] == ["top1, one epoch", "top1, three epochs"]
    assert "+10.333" in body  # mean paired diff (10 + 9 + 12) / 3
    assert "SSM" not in body and "SSM" not in problems
    assert (tmp_path / "out" / "shapes_bars.png").exists()


def test_default_out_dir_joins_several_sweep_names() -> None:
    assert report.default_out_dir([Path("results/sweeps/a"), Path("results/sweeps/b")]) == Path("reports/a+b")
    assert report.default_out_dir([], Path("results")) == Path("reports/all-runs")


def test_tuning_section_reads_the_tuners_summary_not_its_storage(tmp_path: Path) -> None:
    storage = tmp_path / "never" / "t.db"  # opening the storage would create it (or fail)
    tuning = {"study": "lr-search", "trial": 3, "params": ["trainer.lr"], "storage": f"sqlite:///{storage}"}
    sweep = write_sweep(tmp_path / "results", "t", [make_record(tuning=tuning)])
    collection = collect([sweep])
    assert "section skipped: no tuning.json in the reported sweep folders" in report._tuning_section(collection)
    space = {"trainer.lr": distribution_to_json(FloatDistribution(1e-4, 1e-1, log=True))}  # as the tuner writes it
    summary = {"storage": f"sqlite:///{storage}", "direction": "maximize", "n_trials": 4, "studies": [
        {"study": "lr-search", "arm": "model.ssm=true", "space": space, "n_trials": 4, "sampler": None,
         "pruner": None, "trials": {"complete": 3, "pruned": 1, "fail": 0, "not_run": 0},
         "best": {"trial": 3, "value": 61.5, "params": {"trainer.lr": 0.001}}, "final": {}}]}
    (sweep / SUMMARY_FILE).write_text(json.dumps(summary))
    text = report._tuning_section(collection)
    assert "| `trainer.lr` | float in [0.0001, 0.1], log scale |" in text
    assert "| `lr-search` | model.ssm=true | 4 | 3 | 1 | 0 | 61.5 | 3 | `trainer.lr`=0.001 |" in text
    assert not storage.parent.exists()
    # the section stands on the file alone: writing it in a fresh process imports neither Optuna nor the tuner
    code = ("import sys\nfrom ablate.analysis import collect, report\n"
            f"print(report._tuning_section(collect.collect([collect.Path({str(sweep)!r})])))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('optuna', 'ablate.tune', 'torch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "| `lr-search` | model.ssm=true | 4 | 3 | 1 | 0 | 61.5 | 3 | `trainer.lr`=0.001 |" in done.stdout


def test_callback_writes_the_report_and_never_raises(study: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    small = write_sweep(tmp_path / "results", "cb", paired([80.0, 81.0, 82.0], [80.1, 81.0, 81.9], sweep="cb"))
    callback = ReportCallback(out_dir=str(tmp_path / "out"))
    assert callback.close_sweep(OmegaConf.create({"hydra": {"sweep": {"dir": str(small)}}})) == 0
    assert (tmp_path / "out" / "report.md").exists()
    out = capsys.readouterr().out
    assert out.startswith("ablate: report written to ") and out.endswith("ablate: sweep cb: 6 of 6 cells completed\n")
    gone = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}})
    assert callback.close_sweep(gone) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ablate: no report for ") and lines[1].startswith("ablate: sweep gone: cells unknown")
    assert len(lines) == 2
    callback.on_multirun_end(gone)  # a library's callback reports; it does not end the process
    with pytest.raises(SystemExit) as ended:
        ReportCallback(out_dir=str(tmp_path / "out"), exit_with_outcome=True).on_multirun_end(gone)
    assert ended.value.code == 1
    ReportCallback(out_dir=str(tmp_path / "out"), exit_with_outcome=True).on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(small)}}}))  # every cell completed: no exit


APP = """
import sys
sys.path.insert(0, {tests!r})
import hydra
from hydra.core.hydra_config import HydraConfig
from pathlib import Path
from ablate import records
from test_analysis_factory import make_record

@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg):
    failed = cfg.seed == 2 and cfg.ssm  # a failing cell is recorded, not raised (as ablate.job does)
    record = make_record(value=None if failed else 80.0 + cfg.seed + 0.1 * cfg.ssm, ssm=cfg.ssm, seed=cfg.seed,
                         status="failed" if failed else "completed")
    run_dir = Path("results/runs") / record["run_id"]
    records.write_json_atomic(run_dir / "result.json", record)
    cell = {{"run_id": record["run_id"], "run_dir": str(run_dir.resolve()), "overrides": record["overrides"]}}
    records.write_json_atomic(Path(HydraConfig.get().runtime.output_dir) / "cell.json", cell)

main()
"""
CONFIG = """
ssm: false
seed: 0
hydra:
  sweep: {dir: results/sweeps/tiny, subdir: "${hydra.job.num}"}
  callbacks:
    report: {_target_: ablate.analysis.callback.ReportCallback, out_dir: out, exit_with_outcome: true}
"""


def test_hydra_multirun_ends_with_a_report(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP.format(tests=str(Path(__file__).parent)))
    (tmp_path / "config.yaml").write_text(CONFIG)
    done = subprocess.run([sys.executable, "app.py", "-m", "ssm=true,false", "seed=0,1,2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # seed 2 of the SSM arm failed
    assert "ablate: report written to out/report.md" in done.stdout
    assert "ablate: sweep tiny: 5 of 6 cells completed" in done.stdout and done.stdout.endswith(", 1 failed\n")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| tiny    | results/sweeps/tiny | 6      | `python app.py -m ssm=true,false seed=0,1,2` |" in text
    assert "| failed   | RuntimeError: CUDA out of memory |" in text


def test_training_curves_and_sanity_flags(tmp_path: Path) -> None:
    import json

    # Seeds 0-2 of both arms; the SSM arm's seeds scatter 10x more, and its seed 2 never lowered its loss.
    control, treatment = [70.0, 70.5, 71.0], [60.0, 70.0, 80.0]
    recs = paired(control, treatment, image_size=(32, 32))
    results = tmp_path / "results"
    sweep = write_sweep(results, "curves", recs)
    for record in recs:
        stuck = record["factors"]["model.ssm"] and record["factors"]["seed"] == 2
        train = [[10, 2.3, 1e-3], [20, 2.3 if stuck else 1.2, 1e-3], [30, 2.31 if stuck else 0.6, 1e-3]]
        curve = {"train": train, "eval": [[15, {"top1": 30.0}], [30, {"top1": record["metrics"]["top1"]}]]}
        run_dir = results / "runs" / record["run_id"]
        (run_dir / "curve.json").write_text(json.dumps(curve))
        record["curve"] = {"file": "curve.json", "points": 3, "first_loss": train[0][1], "last_loss": train[-1][1]}
        (run_dir / "result.json").write_text(json.dumps(record))
    path = report.write_report([sweep], tmp_path / "out", CONF_DIR)
    text = path.read_text()
    curves = text[text.index("## Training curves"):text.index("## Sequence length")]
    (figure,) = [line for line in curves.splitlines() if line.startswith("![training curves")]
    name = figure[figure.index("(") + 1:-1]
    assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG") and name in text[text.index("## Files"):]
    sanity = text[text.index("### Sanity"):text.index("### Unreadable")]
    stuck_id = next(r["run_id"] for r in recs if r["factors"]["model.ssm"] and r["factors"]["seed"] == 2)
    assert stuck_id in sanity and sanity.count("| 2.3 ") == 1 and "| 2.31 " in sanity
    assert "| SSM " in sanity.split("sd > 3x")[1] and "| 10 " in sanity.split("sd > 3x")[1]

    # A deleted and a corrupt curve.json: the report still renders, without those two curves, and names both files.
    (results / "runs" / recs[0]["run_id"] / "curve.json").unlink()
    (results / "runs" / recs[1]["run_id"] / "curve.json").write_text('{"train": ')
    text = report.write_report([sweep], tmp_path / "out2", CONF_DIR).read_text()
    problems = text[text.index("### Unreadable"):]
    assert f"runs/{recs[0]['run_id']}/curve.json" in problems and "training curve missing" in problems
    assert f"runs/{recs[1]['run_id']}/curve.json" in problems and "training curve unreadable" in problems
    assert text.count("![training curves") == 1  # the other four runs of the cell group are still drawn


def test_a_record_with_a_bad_typed_field_is_a_named_problem_and_the_report_goes_on(tmp_path: Path) -> None:
    recs = paired([80.0, 81.0, 82.0], [80.1, 81.0, 81.9])
    word, text_cost = make_record(seed=5), make_record(seed=6)
    word["metrics"]["top1"] = "high"
    text_cost["cost"]["macs"] = "lots"
    sweep = write_sweep(tmp_path / "results", "typed", recs + [word, text_cost])
    text = report.write_report([sweep], tmp_path / "out").read_text()
    problems = text.split("### Unreadable, missing or incomplete records")[1]
    for record, field in ((word, "metrics.top1='high' is a str, expected a number"),
                          (text_cost, "cost.macs='lots' is a str, expected a number")):
        row = next(line for line in problems.splitlines() if record["run_id"] in line)
        assert f"runs/{record['run_id']}/result.json" in row and field in row and "unreadable record" in row
    assert "- Records read: 6" in text


def test_records_of_another_schema_version_are_refused_in_one_first_screen_line(tmp_path: Path) -> None:
    recs = paired([80.0, 81.0, 82.0], [80.1, 81.0, 81.9])
    old = [make_record(seed=s) for s in (5, 6)]
    for record in old:
        record["schema"] = "ablate.result/0"
    typed = make_record(seed=7)
    typed["metrics"]["top1"] = "high"
    text = report.write_report([write_sweep(tmp_path / "results", "old", recs + old + [typed])], tmp_path / "out").read_text()
    first_screen = text[:text.index("## What was run")]
    assert ("- **3 record(s) refused, not read: 2 of 'ablate.result/0' (this version reads 'ablate.result/1'), 1 with "
            "a value of the wrong type; each is listed under Problems**") in first_screen.splitlines()
    clean = report.write_report([write_sweep(tmp_path / "clean" / "results", "clean", recs)], tmp_path / "out2").read_text()
    assert "refused" not in clean


def test_zero_records_read_is_a_one_line_error_saying_where_to_look(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def error_of(*argv: str) -> str:
        assert report.main([*argv, "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ablate report: no record read from ")
        return err

    (tmp_path / "empty").mkdir()
    assert "it holds no records; a sweep folder is results/sweeps/<sweep>/" in error_of(str(tmp_path / "empty"))
    results = tmp_path / "results"
    write_sweep(results, "s", paired([80.0], [80.5]))
    assert f"a results root: use --results {results}" in error_of(str(results))
    (tmp_path / "parent" / "sweeps" / "s").mkdir(parents=True)
    assert f"holds sweeps/: give one of {tmp_path / 'parent' / 'sweeps'}/<sweep>" in error_of(str(tmp_path / "parent"))
    stray = tmp_path / "copied" / "a" / "result.json"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    err = error_of("--results", str(tmp_path / "copied"))
    assert f"1 result.json file(s) lie outside the layout (e.g. {stray})" in err
    assert "--results ROOT reads ROOT/runs/<run_id>/result.json" in err
    assert not (tmp_path / "out" / "report.md").exists()


def test_report_artefacts_replace_planted_links_never_write_through_them(study: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    targets = {}
    for name in ("report.md", "results.csv", "verdicts.csv", "shapes_bars.png"):
        targets[name] = tmp_path / f"victim-{name}"
        targets[name].write_text("precious\n")
        (out / name).symlink_to(targets[name])
    report.write_report([study["sweep"]], out, study["hypotheses"], results_root=study["results"])
    for name, target in targets.items():
        assert target.read_text() == "precious\n", name
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
    assert (out / "report.md").read_bytes() == study["report"].read_bytes()


def test_arms_at_chance_are_named_on_the_first_screen(tmp_path: Path) -> None:
    recs = paired([10.0, 10.5, 9.5], [10.0, 10.2, 9.9], image_size=(32, 32), chance=10.0)
    path = report.write_report([write_sweep(tmp_path / "results", "chance", recs)], tmp_path / "out", CONF_DIR)
    head = path.read_text().splitlines()[:4]
    assert any("Warning: in 1 of 1 cell group(s) an arm is not clearly above chance" in line for line in head)
    learned = paired([70.0, 70.5, 71.0], [70.2, 70.4, 71.1], image_size=(32, 32), chance=10.0)
    clean = report.write_report([write_sweep(tmp_path / "r2", "ok", learned)], tmp_path / "out2", CONF_DIR)
    assert "Warning: in" not in clean.read_text()


def _arm_column(text: str, heading: str) -> list[str]:
    """The `arm` cells of the first table after `heading`."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    column = [cell.strip() for cell in table[0].split("|")].index("arm")
    return [line.split("|")[column].strip() for line in table[2:]]


def _controls_records() -> list[dict]:
    """Shapes: causal vs fully-visible (5 seeds); det at two long sizes: SSM, no SSM and no SSM at iso-MAC."""
    rng = np.random.default_rng(7)
    recs = []
    visible = 80 + rng.normal(0, 0.5, 5)
    for seed, v in enumerate(visible):
        recs += [make_record(value=v, seed=seed), make_record(value=v - 3 + rng.normal(0, 0.3), seed=seed, causal=True)]
    for size in ((768, 768), (1024, 1024)):
        for seed in range(3):
            base = 40 + seed
            recs += [make_record(value=base, seed=seed, image_size=size, task="det", kind="detection", metric="map"),
                     make_record(value=base + 1, seed=seed, image_size=size, task="det", kind="detection",
                                 metric="map", match_macs=True),
                     make_record(value=base + 2 + rng.normal(0, 0.1), ssm=True, seed=seed, image_size=size,
                                 task="det", kind="detection", metric="map")]
    return recs


def test_h3_and_h2_iso_on_hand_built_records_and_the_three_arm_cost_table(tmp_path: Path) -> None:
    path = report.write_report([write_sweep(tmp_path / "results", "controls", _controls_records())],
                               tmp_path / "out", CONF_DIR)
    verdicts = pd.read_csv(path.parent / "verdicts.csv")
    decided = verdicts.groupby(["hypothesis", "part"])["decision"].agg(set).to_dict()
    assert decided[("H3", "superiority")] == decided[("H3-embedded", "superiority")] == {"supported"}
    h3 = verdicts.query("hypothesis == 'H3'").iloc[0]
    assert h3["n_pairs"] == 5 and -3.6 < h3["diff"] < -2.4  # causal - fully visible
    # H2-iso pairs the SSM arm with the widened control only (+1 map point), H2 with the plain one (+2)
    iso = verdicts.query("hypothesis == 'H2-iso' and part == 'superiority'")
    plain = verdicts.query("hypothesis == 'H2' and part == 'superiority'")
    assert list(iso["n_pairs"]) == list(plain["n_pairs"]) == [3, 3]
    assert iso["diff"].round(0).tolist() == [1.0, 1.0] and plain["diff"].round(0).tolist() == [2.0, 2.0]
    assert set(iso["decision"]) == set(plain["decision"]) == {"supported"}
    text = path.read_text()
    arms = text[text.index("## Arms and their cost"):]
    assert _arm_column(arms, "### det") == ["no SSM", "no SSM widened to iso-MAC", "SSM"] * 2  # both sizes, by GMACs
    assert _arm_column(arms, "### shapes") == ["fully visible", "causal"]
    # each task's tables compare its own hypothesis' arms: det SSM vs no SSM (H2), shapes causal (H3)
    results = text[text.index("## Results per task"):text.index("## Arms and their cost")]
    assert "Arms of model.ssm: no SSM (control, false) and SSM (treatment, true)." in results
    assert "Arms of model.causal: fully visible (control, false) and causal (treatment, true)." in results
    assert "| top1, fully visible " in results and "| top1, causal " in results
    # no unpaired cell of H2's comparison names the widened control: its scope leaves it out
    assert "model.ssm=true model.match_macs=true" not in text


def test_writing_a_report_imports_neither_torch_nor_the_models_nor_the_loop(study: dict[str, Path], tmp_path: Path) -> None:
    # A fresh process, as `ablate report` runs: the records are the only link to the other stages.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import ablate.cli\n"
        "from ablate.analysis import report\n"
        f"report.write_report([Path({str(study['sweep'])!r})], Path({str(tmp_path / 'out')!r}), "
        f"Path({str(study['hypotheses'])!r}), results_root=Path({str(study['results'])!r}))\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('ablate.models', 'ablate.train.loop',"
        " 'ablate.tasks', 'ablate.tune.tuner'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "report.md").read_text() == study["report"].read_text()


def test_records_without_a_family_block_name_their_arms_by_key_and_level(tmp_path: Path) -> None:
    from ablate.analysis.hypotheses import load_hypothesis

    h1 = load_hypothesis(CONF_DIR / "h1_embedded.yaml")  # no labels of its own: the family's, if any
    recs = paired(80 + np.arange(3.0), 81 + np.arange(3.0))
    runs = collect([write_sweep(tmp_path / "new" / "results", "new", recs)]).runs
    assert report.comparison([h1], runs).names == {"t": "SSM", "c": "no SSM"}
    for record in recs:
        del record["family"]  # written before the block existed
    runs = collect([write_sweep(tmp_path / "old" / "results", "old", recs)]).runs
    assert report.comparison([h1], runs).names == {"t": "model.ssm=true", "c": "model.ssm=false"}


def test_a_report_that_cannot_be_written_is_one_line_exit_2_and_keeps_the_previous_one(
        study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    args = [str(study["sweep"]), "--results", str(study["results"]), "--hypotheses", str(study["hypotheses"])]
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    capsys.readouterr()
    assert report.main(args + ["--out", str(blocked / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ablate report: cannot write the report: ") and str(blocked) in err[0]

    out = tmp_path / "out"
    assert report.main(args + ["--out", str(out)]) == 0
    before = (out / "report.md").read_bytes()

    def full_disk(fd, mode):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fdopen", full_disk)
    capsys.readouterr()
    assert report.main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device (ENOSPC) writing " in err[0] and str(out) in err[0]
    monkeypatch.undo()
    assert (out / "report.md").read_bytes() == before and not list(out.glob(".*.tmp"))


def test_the_bars_show_every_paired_seed_as_a_point_joined_to_its_partner(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from ablate.analysis import figures

    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda figure, out_dir, name: drawn.setdefault(name, figure) and name)
    recs = paired([70.0, 72.0, 75.0], [71.0, 74.0, 73.0])
    runs = collect([write_sweep(tmp_path / "results", "s", recs)]).runs
    pairing = pair(runs, ["model.name", "task", "task.image_size", "model.ssm", "seed"], "model.ssm", True, False)
    summary = report.summaries.arm_summary(runs, pairing)
    figures.arm_bars(summary, pairing.pairs, tmp_path, {"t": "SSM", "c": "no SSM"})
    (axes,) = drawn["shapes_bars.png"].axes
    from matplotlib.collections import PathCollection  # scatter's; the CI bars are LineCollections

    points = sorted(float(y) for collection in axes.collections if isinstance(collection, PathCollection)
                    for _, y in collection.get_offsets())
    assert points == [70.0, 71.0, 72.0, 73.0, 74.0, 75.0]
    (pairs,) = [collection for collection in axes.collections if collection.get_gid() == "seed_pairs"]
    joins = [(float(start[1]), float(end[1])) for start, end in pairs.get_segments()]
    assert sorted(joins) == [(70.0, 71.0), (72.0, 74.0), (75.0, 73.0)]  # (control, treatment) per seed


def test_a_template_of_ones_own_renders_the_same_context(study: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    template = tmp_path / "mine.md.j2"
    template.write_text("# {{ title }}\n{% for v in verdicts %}{{ v.hypothesis }}: {{ v.decision }} ({{ v.pairs }} pairs)\n"
                        "{% endfor %}cells {{ ran.cells }}\n")
    args = [str(study["sweep"]), "--results", str(study["results"]), "--hypotheses", str(study["hypotheses"])]
    assert report.main(args + ["--out", str(tmp_path / "out"), "--template", str(template)]) == 0
    (default_row,) = [line for line in study["report"].read_text().splitlines() if line.startswith("| H2 |")]
    _, _, _, verdict, _, pairs, _ = [cell.strip() for cell in default_row.split("|")][:7]
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert lines[0] == "# Ablation report: study" and lines[-1].startswith("cells ")
    assert f"H2: {verdict.strip('*').split('*')[0]} ({pairs} pairs)" in lines  # the default template's numbers
    template.write_text("{{ no_such_thing }}\n")
    capsys.readouterr()
    assert report.main(args + ["--out", str(tmp_path / "bad"), "--template", str(template)]) == 1
    assert capsys.readouterr().err.strip() == f"ablate report: --template {template}: 'no_such_thing' is undefined"


def test_a_long_problem_table_shows_its_first_rows_and_goes_whole_to_a_csv(tmp_path: Path) -> None:
    # 3 paired seeds, then 25 seeds of the SSM arm alone: 25 missing pairs
    recs = paired([80.0, 81.0, 82.0], [80.5, 81.5, 82.5]) + [
        make_record(value=80.0, ssm=True, seed=seed) for seed in range(3, 28)]
    out = tmp_path / "report"
    (out / "missing_pairs_H9.csv").parent.mkdir(parents=True)
    (out / "missing_pairs_H9.csv").write_text("an earlier report's listing\n")
    text = report.write_report([write_sweep(tmp_path / "results", "s", recs)], out).read_text()
    missing = text.split("### Missing pairs")[1].split("###")[0].split("\nFor ")[0]  # the compared arms' table
    rows = [line for line in missing.splitlines() if line.startswith("| ") and "cell group" not in line]
    assert len(rows) == report.LISTED_ROWS == 20
    assert "... and 5 more rows: all 25 in missing_pairs.csv" in missing
    listed = pd.read_csv(out / "missing_pairs.csv")
    assert len(listed) == 25 and sorted(listed["seed"]) == list(range(3, 28))
    assert "missing_pairs.csv (all 25 rows of a problem table)" in text.split("## Files")[1]
    assert not (out / "missing_pairs_H9.csv").exists()  # not this report's: removed, not left to mislead
