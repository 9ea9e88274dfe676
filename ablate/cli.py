"""The `ablate` command: small tools around the sweep runner (run.py does the training).

    ablate models [--size H W] [--json]     params / MACs / tokens / tau of every variant x arm
    ablate plan <run.py -m overrides>       the job matrix of a sweep, without running it
    ablate report SWEEP_DIR [...]           hypothesis tests and report.md for finished sweeps
    ablate settings [model=NAME task=NAME]  each setting of that model, the trainer and that task:
                                            type, default and allowed values (= python run.py --help)

A sweep is `python run.py -m group=option key=value,value ...`; the groups and their options:
"""
from __future__ import annotations

import gc
import importlib
import sys

COMMANDS = {
    "models": ("ablate.models.summary", "params, MACs, tokens and tau of every variant and arm"),
    "plan": ("ablate.launch.plan", "print a sweep's job matrix and estimated cost without running it"),
    "report": ("ablate.analysis.report", "test the hypotheses on finished sweeps and write report.md"),
    "settings": ("ablate.config", "every setting of a model, the trainer and a task, with what it allows"),
}
ENTRY = {"settings": "settings_main"}  # the function a command's module runs, when it is not `main`


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None  # the `ablate` command itself, not a caller in Python
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        from ablate.groups import group_lines

        lines = [__doc__.strip(), *(f"  {line}" for line in group_lines()), "", "commands:"]
        lines += [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ablate: unknown command {argv[0]!r}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    status = getattr(module, ENTRY.get(argv[0], "main"))(argv[1:])
    if from_command_line:
        # the process ends now: its cycle collector need not walk every object on the way out (0.2 s
        # after a report, which has loaded pandas, scipy and statsmodels)
        gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(main())
