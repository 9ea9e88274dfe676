"""A run in a terminal: the progress bar and the log lines never share a row."""
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import ROOT, clean_env

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_in_terminal(cmd: list[str], cwd: Path, timeout_s: float = 300) -> str:
    """`cmd` with stdout and stderr on a pseudo-terminal of 24 x 120 (tqdm draws nothing 0 columns
    wide); everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=clean_env(), close_fds=True)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def test_log_lines_and_the_progress_bar_never_share_a_row(tmp_path):
    text = run_in_terminal([
        sys.executable, str(ROOT / "run.py"), "model=pico", "task=shapes", "trainer=cpu", "logger=none",
        "trainer.max_steps=12", "trainer.log_every=1", "task.train_size=400", "task.val_size=40",
        "trainer.progress=true", f"paths.results={tmp_path / 'results'}", f"paths.data={tmp_path / 'data'}"], tmp_path)
    rows = re.split(r"[\r\n]", ANSI.sub("", text))  # what the terminal shows, row by row and redraw by redraw
    assert any(row.startswith("train:") and "/12" in row for row in rows)  # the bar was drawn
    steps = [row for row in rows if re.search(r"step \d+/12 epoch", row)]
    assert len(steps) == 12
    broken = [row for row in steps if not row.startswith("[")]  # a log line that begins after bar text
    assert not broken, broken[:3]


def test_plan_shows_its_progress_on_a_terminal_and_only_its_table_elsewhere(tmp_path):
    import json

    from test_analysis_factory import paired, write_sweep

    pilot = write_sweep(tmp_path / "results", "pilot", paired([80.0, 81.0, 82.0], [80.4, 81.2, 82.5]))
    args = [sys.executable, "-m", "ablate.cli", "plan", "model=pico", "task=shapes", "trainer=cpu",
            "model.ssm=true,false", f"paths.results={tmp_path / 'results'}", f"paths.data={tmp_path / 'data'}",
            "--pilot", str(pilot)]
    shown = ANSI.sub("", run_in_terminal(args, tmp_path))
    assert f"ablate plan: reading the pilot at {pilot} and testing its hypotheses ..." in shown
    assert re.search(r"composing cells: +\d+%.*\| [012]/2", shown)  # the bar
    piped = subprocess.run([*args, "--json"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                           timeout=300, check=True)
    assert piped.stderr == "" and len(json.loads(piped.stdout)["cells"]) == 2  # no bar, no line: only the table
