"""What more GPUs bought: one sweep run on different numbers of GPUs, compared (`runner scaling`).

    python -m runner scaling RUN_DIR RUN_DIR [...] --out DIR

Each RUN_DIR is a sweep folder (sweep.json and the merged Parquet files). A run's wall time is the sweep's
own: every invocation's, summed, so a sweep that was cut and resumed counts the time it ran and not the
pause between. The speed-up is against the run with the fewest GPUs, and the efficiency is that speed-up
over the ratio of GPUs. Writes DIR/scaling.md and DIR/scaling_timeline.png: one panel per run, one lane
per GPU, every task a bar coloured by kind (runner/timeline.py), on one time axis, with a resumed sweep's
invocations laid end to end.

The comparison is only fair between runs of the same sweep file, code and kind of GPU: the table says
when they differ.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from runner import files, timeline
from runner.plots import figure


class ScalingError(ValueError):
    """A folder that cannot be compared; the message names it."""


@dataclasses.dataclass
class Run:
    path: Path
    sweep: dict
    invocations: list[tuple[pd.Timestamp, float]]  # (start, wall seconds), oldest first
    tasks: pd.DataFrame                            # timeline tasks of every invocation, with `lane` and `x0`

    @property
    def gpus(self) -> int:
        return int((self.sweep.get("cluster") or {}).get("gpus") or 0)

    @property
    def wall_s(self) -> float:
        return float(sum(w for _, w in self.invocations))

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.gpus} GPU{'s' if self.gpus != 1 else ''})"


def load_run(path: str | Path) -> Run:
    path = Path(path)
    try:
        sweep = files.read_json(path / "sweep.json")
    except FileNotFoundError:
        raise ScalingError(f"{path}: no sweep.json (not a sweep folder, or its sweep never started)") from None
    except (OSError, ValueError) as e:
        raise ScalingError(f"{path}/sweep.json: unreadable ({e})") from None
    invs = timeline.invocations(sweep)
    if not invs:
        raise ScalingError(f"{path}/sweep.json: no invocation with a start and a wall time")
    tasks, _, _ = timeline.load(path)
    return Run(path, sweep, invs, tasks)


def _differences(runs: list[Run]) -> list[str]:
    """What makes the comparison unfair, in words."""
    notes = []
    for key, what in (("config", "sweep settings"), ("git_commit", "code commit"), ("data_source", "data")):
        values = {json.dumps(r.sweep.get(key), sort_keys=True) for r in runs}
        if len(values) > 1:
            notes.append(f"the runs differ in {what} (`{key}` in sweep.json)")
    kinds = {tuple(sorted((r.sweep.get("cluster") or {}).get("gpu_kinds") or [])) for r in runs}
    if len(kinds) > 1:
        notes.append("the runs ran on different kinds of GPU: " + ", ".join("/".join(k) or "none" for k in kinds))
    for r in runs:
        if r.sweep.get("interrupted") or r.sweep.get("shortened"):
            notes.append(f"`{r.path.name}` is {'interrupted' if r.sweep.get('interrupted') else 'shortened'}")
    return notes


def section(runs: list[Run], figure_name: str = "scaling_timeline.png") -> list[str]:
    base = min(runs, key=lambda r: (r.gpus, r.wall_s))
    lines = ["# Scaling: the same sweep on different numbers of GPUs", ""]
    diffs = _differences(runs)
    lines += (["**Not a like-for-like comparison:** " + "; ".join(diffs) + ".", ""] if diffs else
              ["The runs share their sweep settings, code commit, data and kind of GPU.", ""])
    lines += ["Wall time is each sweep's own, summed over its invocations (a cut and resumed sweep counts the time "
              f"it ran, not the pause). Speed-up and efficiency are against `{base.path.name}`.", "",
              "| Run | GPUs | Nodes | Commit | Invocations | Wall (s) | Speed-up | Wall / base | Efficiency |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        speed = base.wall_s / r.wall_s if r.wall_s else float("nan")
        eff = speed / (r.gpus / base.gpus) if base.gpus and r.gpus else float("nan")
        lines.append(f"| `{r.path.name}` | {r.gpus} | {(r.sweep.get('cluster') or {}).get('nodes', '—')} | "
                     f"`{str(r.sweep.get('git_commit') or 'unknown')[:10]}` | {len(r.invocations)} | {r.wall_s:.0f} | "
                     f"{speed:.2f}x | {1 / speed:.2f} | {100 * eff:.0f}% |")
    kinds = list(timeline.COLORS)
    lines += ["", "Where the time went: seconds of work summed over the steps of each kind (runner/timeline.py), "
              "and how busy the GPUs were over the wall time (an actor's process start not counted).", "",
              "| Run | " + " | ".join(kinds) + " | GPUs busy |",
              "|---|" + "---|" * (len(kinds) + 1)]
    for r in runs:
        t = r.tasks
        secs = timeline.seconds_by_kind(t) if len(t) else {}
        per_kind = [f"{secs[k]:.0f}" if k in secs else "—" for k in kinds]
        busy = list(timeline.lane_stats(t, r.wall_s)["busy_s"]) if len(t) else []
        lanes = max(r.gpus, len(busy), 1)
        busy_pct = f"{100 * sum(busy) / (lanes * r.wall_s):.0f}%" if r.wall_s and busy else "—"
        lines.append(f"| `{r.path.name}` | " + " | ".join(per_kind) + f" | {busy_pct} |")
    return lines + ["", f"![timelines]({figure_name})", ""]


def draw(runs: list[Run], path: Path):
    from matplotlib.patches import Patch
    lanes = [sorted(r.tasks["lane"].unique()) if len(r.tasks) else [] for r in runs]
    fig = figure((12, 1.2 + sum(0.5 * max(len(ls), 1) + 0.6 for ls in lanes)))
    axes = fig.subplots(len(runs), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [max(len(ls), 1) for ls in lanes]})[:, 0]
    for ax, r, run_lanes in zip(axes, runs, lanes):
        if run_lanes:
            timeline.draw_lanes(ax, r.tasks, run_lanes)
        else:
            ax.text(0.5, 0.5, "no steps recorded (runs/<sweep>/steps/)", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="grey")
            ax.set_yticks([])
        for start in [sum(w for _, w in r.invocations[:i]) for i in range(1, len(r.invocations))]:
            ax.axvline(start, color="black", linestyle="--", linewidth=0.8)  # a resumed invocation begins
        ax.axvline(r.wall_s, color="grey", linewidth=1.2)
        ax.set_title(f"{r.label}: {r.wall_s:.0f} s wall over {len(r.invocations)} invocation(s)", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1].set_xlim(0, 1.01 * max(r.wall_s for r in runs))
    axes[-1].set_xlabel("seconds of the sweep's own wall time (dashed: a resumed invocation starts; grey: the end)")
    axes[0].legend(handles=[Patch(color=c, label=k) for k, c in timeline.COLORS.items()], fontsize=8,
                   loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    files.write_figure(fig, path, dpi=110)
    return fig


def run(args) -> int:
    """The `scaling` verb."""
    try:
        runs = [load_run(p) for p in args.run_dirs]
    except ScalingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draw(runs, out / "scaling_timeline.png")
    text = "\n".join(section(runs)) + "\n"
    files.write_text(out / "scaling.md", text)
    print(text)
    print(f"written: {out / 'scaling.md'}, {out / 'scaling_timeline.png'}")
    return 0
