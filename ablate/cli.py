"""The `ablate` command: small tools around the sweep runner (run.py does the training).

    ablate models [--size H W] [--json]     params / MACs / tokens / tau of every variant x arm
    ablate plan <run.py -m overrides>       the job matrix of a sweep, without running it
    ablate report SWEEP_DIR [...]           hypothesis tests and report.md for finished sweeps

The settings a sweep and `ablate plan` take (every group's options; each model, trainer and task
setting with its type, default and allowed values): python run.py --help [model=NAME task=NAME]
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "models": ("ablate.models.summary", "params, MACs, tokens and tau of every variant and arm"),
    "plan": ("ablate.launch.plan", "print a sweep's job matrix and estimated cost without running it"),
    "report": ("ablate.analysis.report", "test the hypotheses on finished sweeps and write report.md"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [__doc__.strip(), "", "commands:"] + [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ablate: unknown command {argv[0]!r}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
