"""The report's figures, as PNG files (matplotlib's Agg canvas via Figure; no pyplot state).

Each function draws one task and returns the file name it wrote (relative to the report folder).
The report draws them in its worker processes (workers.py); matplotlib is imported by the drawing
functions, so a report whose figures are drawn there never imports it itself.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ablate import atomic


def import_matplotlib() -> None:
    """Import what the drawing functions use (a worker does it while the records are read)."""
    import matplotlib.figure  # noqa: F401


# arm key -> (role, colour, marker); the arms' names come from the comparison (`names`: {"t": ..., "c": ...})
ARM_STYLE = {"c": ("control", "tab:blue", "o"), "t": ("treatment", "tab:orange", "s")}


def _arm_label(names: Mapping[str, str], arm: str) -> str:
    return f"{names[arm]} ({ARM_STYLE[arm][0]})"


PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same records, same bytes


def slug(text: str) -> str:
    """A file-name-safe form of a task name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "task"


def _figure(width: float = 6.0, bottom: float = 0.12, top: float = 0.92) -> Any:
    """A matplotlib Figure; fixed margins: a layout engine would redraw the figure and double its cost."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 4.2))
    figure.subplots_adjust(left=0.11, right=0.97, top=top, bottom=bottom)
    return figure


def _plain_log_axis(axes: Any) -> None:
    """Log x axis labelled with plain numbers, no crowded minor labels."""
    from matplotlib import ticker

    axes.set_xscale("log")
    axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())


def _save(figure: Any, out_dir: Path, name: str) -> str:
    atomic.write(out_dir / name, lambda handle: figure.savefig(handle, format="png", dpi=100, metadata=PNG_METADATA))
    return name


def metric_vs_gmacs(summary: pd.DataFrame, pairs: pd.DataFrame, out_dir: Path, names: Mapping[str, str]) -> str:
    """Each cell group's two arms at (GMACs, mean metric), joined by a line: the pair's cost step; the
    paired seeds as small points around the means."""
    task, metric = summary["task"].iloc[0], summary["metric"].iloc[0]
    figure = _figure()
    axes = figure.add_subplot()
    for _, row in summary.iterrows():
        axes.plot([row["gmacs_c"], row["gmacs_t"]], [row["mean_c"], row["mean_t"]], color="0.7", lw=1, zorder=1)
    for arm, (_, color, marker) in ARM_STYLE.items():
        axes.scatter(pairs[f"cost.macs_{arm}"].astype(float) / 1e9, pairs[f"v_{arm}"], color=color, marker=marker,
                     s=10, alpha=0.5, zorder=2)
        axes.scatter(summary[f"gmacs_{arm}"], summary[f"mean_{arm}"], color=color, marker=marker, edgecolor="0.1",
                     s=45, label=_arm_label(names, arm), zorder=3)
    _plain_log_axis(axes)
    axes.set(xlabel="GMACs per image (log)", ylabel=f"{metric} (large: mean; small: seeds)",
             title=f"{task}: {metric} vs cost")
    axes.legend(loc="best", fontsize=8)
    return _save(figure, out_dir, f"{slug(task)}_metric_vs_gmacs.png")


def difference_vs_length(points: pd.DataFrame, pairs: pd.DataFrame, out_dir: Path, names: Mapping[str, str]) -> str:
    """Mean paired difference (treatment - control) against tokens L, with its CI, each seed's
    difference as a point, and tau marked. `pairs`: the task's pairs (`cost.seq_len`, `diff`, `series`)."""
    from matplotlib import ticker

    task, metric = points["task"].iloc[0], points["metric"].iloc[0]
    figure = _figure(top=0.82)
    axes = figure.add_subplot()
    for (series_key, label), series in points.groupby(["series", "series_label"], sort=False):
        error = np.vstack([series["diff"] - series["ci_low"], series["ci_high"] - series["diff"]])
        line = axes.errorbar(series["seq_len"], series["diff"], yerr=np.nan_to_num(error), marker="o", capsize=3,
                             label=label)
        seeds = pairs[pairs["series"] == series_key]
        axes.scatter(seeds["cost.seq_len"].astype(float), seeds["diff"], color=line[0].get_color(), s=10, alpha=0.6,
                     zorder=3)
    for tau in sorted(points["tau"].dropna().unique()):
        axes.axvline(tau, color="tab:red", ls="--", lw=1)
        axes.annotate(f" τ={int(tau)}", (tau, 0.98), xycoords=("data", "axes fraction"), ha="left", va="top",
                      fontsize=8, color="tab:red")
    axes.axhline(0, color="0.5", lw=0.8)
    _plain_log_axis(axes)
    lengths = sorted(points["seq_len"].unique())
    axes.set_xticks(lengths, [str(length) for length in lengths])  # the swept sizes, as numbers
    taus = points["tau"].dropna().unique()
    if len(taus) == 1:  # one variant: L in units of its tau on the top axis
        tau = float(taus[0])
        top = axes.secondary_xaxis("top", functions=(lambda length: length / tau, lambda ratio: ratio * tau))
        top.set_xticks([length / tau for length in lengths], [f"{length / tau:.3g}" for length in lengths])
        top.xaxis.set_minor_locator(ticker.NullLocator())
        top.set_xlabel("L / τ", fontsize=8)
    axes.set(xlabel="tokens L at stride 16 (log)", ylabel=f"{metric}: {names['t']} - {names['c']}")
    axes.set_title(f"{task}: difference vs sequence length (points: seeds; bars: 95% CI)", fontsize=10)
    axes.legend(loc="best", fontsize=7)
    return _save(figure, out_dir, f"{slug(task)}_difference_vs_length.png")


def training_curves(group: pd.DataFrame, curves: list[dict], title: str, out_dir: Path, name: str,
                    names: Mapping[str, str]) -> str:
    """Training loss against step for every run of one cell group (colour: arm, one line per seed),
    and beside it the primary metric at each evaluation when the runs evaluated more than once.

    `group` has one row per run with columns `arm` ("c" | "t"), `seed` and `metric`; `curves` are the
    runs' curve.json contents in the same order.
    """
    evaluated = any(len(curve["eval"]) > 1 for curve in curves)
    figure = _figure(10.0 if evaluated else 6.0)
    loss_axes = figure.add_subplot(1, 2 if evaluated else 1, 1)
    eval_axes = figure.add_subplot(1, 2, 2) if evaluated else None
    labelled = set()
    for (_, run), curve in zip(group.iterrows(), curves):
        _, color, marker = ARM_STYLE[run["arm"]]
        label = None if run["arm"] in labelled else _arm_label(names, run["arm"])
        labelled.add(run["arm"])
        steps, losses = [p[0] for p in curve["train"]], [p[1] for p in curve["train"]]
        loss_axes.plot(steps, losses, color=color, lw=1, alpha=0.8, label=label)
        if eval_axes is not None:
            points = [(step, values.get(run["metric"])) for step, values in curve["eval"]]
            eval_axes.plot([s for s, _ in points], [v for _, v in points], color=color, marker=marker, ms=3, lw=1)
    loss_axes.set(xlabel="optimizer step", ylabel="training loss (mean since the previous point)", title=title)
    loss_axes.legend(loc="best", fontsize=8)
    if eval_axes is not None:
        eval_axes.set(xlabel="optimizer step", ylabel=f"{group['metric'].iloc[0]} (evaluation)")
    return _save(figure, out_dir, name)


def arm_bars(summary: pd.DataFrame, pairs: pd.DataFrame, out_dir: Path, names: Mapping[str, str]) -> str:
    """Both arms of every cell group of a task: the mean over seeds with its 95% CI, each paired seed
    as a point, and the two arms of a seed joined by a thin line."""
    from matplotlib.collections import LineCollection

    task, metric = summary["task"].iloc[0], summary["metric"].iloc[0]
    figure = _figure(max(5.0, 1.2 * len(summary) + 2), bottom=0.22)
    axes = figure.add_subplot()
    x = np.arange(len(summary))
    offsets = dict(zip(ARM_STYLE, (-0.2, 0.2)))
    for arm, (_, color, _) in ARM_STYLE.items():
        axes.bar(x + offsets[arm], summary[f"mean_{arm}"], 0.4, yerr=summary[f"half_ci_{arm}"],
                 color=color, alpha=0.45, label=_arm_label(names, arm), capsize=3)
    joins = []  # one segment per paired seed, drawn as one collection (a line each: seconds per 1,000)
    for position, cell in zip(x, summary["cell"]):
        seeds = pairs[pairs["cell"] == cell]
        joins += [((position + offsets["c"], v_c), (position + offsets["t"], v_t))
                  for v_c, v_t in zip(seeds["v_c"], seeds["v_t"])]
        for arm, (_, color, marker) in ARM_STYLE.items():
            axes.scatter(np.full(len(seeds), position + offsets[arm]), seeds[f"v_{arm}"], color=color, marker=marker,
                         edgecolor="0.2", s=16, zorder=4)
    axes.add_collection(LineCollection(joins, colors="0.3", linewidths=0.6, alpha=0.7, zorder=3, gid="seed_pairs"))
    # tick labels: the cell label without the task (the title has it), one factor per line
    short = ["\n".join(part.split("=", 1)[1] for part in label.split(", ") if not part.startswith("task="))
             for label in summary["label"]]
    axes.set_xticks(x, short, fontsize=8)
    axes.set(ylabel=f"{metric} (bar: mean, 95% CI; points: seeds)", title=f"{task}: both arms per cell group")
    figure.legend(loc="lower center", ncols=2, fontsize=8)
    return _save(figure, out_dir, f"{slug(task)}_bars.png")
