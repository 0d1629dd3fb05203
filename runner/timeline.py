"""Where a sweep's time went, over all its invocations: a lane per GPU, a bar per step, `timeline.png`.

Reads `runs/<sweep>/steps/*.parquet` (runner/engine/steps.py: every training task and every call on a
benchmark actor, with when the driver submitted it, when it began and ended in its process, and when it
landed) and sweep.json (each invocation's wall time). The report gives, for the whole sweep:

    per GPU      busy seconds (the union of its steps' work) and busy % of the summed wall time
    per kind     seconds of work: train, start (an actor's process start: Ray, imports, CUDA context), load
                 (models and data into an actor), prepare (compile, capture), time, pairs (decided from the rounds), check, profile,
                 recheck; plus Ray's overhead around them (scheduling, argument and result transfer)
    idle         wall time no step of ours ran on a GPU (Ray's start, between phases, the report)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner import files
from runner.plots import figure
from runner.report_format import markdown_table
from runner.results import STEPS_SCHEMA, read_folder

COLORS = {"train": "#4C72B0", "start": "#CCCCCC", "load": "#8C8C8C", "prepare": "#DA8BC3", "time": "#55A868",
          "pairs": "#DD8452", "check": "#937860", "profile": "#C44E52", "recheck": "#8172B3"}
TASK_COLUMNS = ["kind", "name", "status", "start", "end", "submitted", "landed", "gpu_uuid", "node", "hostname", "pid"]


def read_steps(run_dir: Path) -> pd.DataFrame:
    """Every step of every invocation (one row each, times as UTC timestamps), sorted by start; steps that
    never began (an actor that died) keep NaT starts and are counted, not drawn."""
    df = read_folder(Path(run_dir) / "steps", STEPS_SCHEMA)
    for c in ("submitted", "start", "end", "landed"):
        df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601", errors="coerce")
    return df.sort_values("start", kind="stable").reset_index(drop=True)[TASK_COLUMNS]


def assign_lanes(tasks: pd.DataFrame) -> pd.DataFrame:
    """Add `lane`: "<host> GPU n" for a GPU's steps (n counted per host in UUID order), "<host> CPU" else."""
    tasks = tasks.copy()
    host = tasks["hostname"].fillna(tasks["node"].astype(str).str[:8]).fillna("host ?")
    gpus = tasks[tasks["gpu_uuid"].notna()].assign(h=host).groupby("gpu_uuid")["h"].first()
    order = gpus.rename("h").reset_index().sort_values(["h", "gpu_uuid"])
    names = {u: f"{h} GPU {i}" for _, g in order.groupby("h") for i, (u, h) in enumerate(zip(g["gpu_uuid"], g["h"]))}
    tasks["lane"] = tasks["gpu_uuid"].map(names).astype(object)
    tasks.loc[tasks["lane"].isna(), "lane"] = host[tasks["lane"].isna()] + " CPU"
    return tasks


def busy_seconds(starts: pd.Series, ends: pd.Series) -> float:
    """Seconds covered by the union of the intervals (overlaps counted once)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(zip(starts, ends)):
        if cur_e is None or s > cur_e:
            total += (cur_e - cur_s).total_seconds() if cur_e is not None else 0.0
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + ((cur_e - cur_s).total_seconds() if cur_e is not None else 0.0)


def seconds_by_kind(tasks: pd.DataFrame) -> dict[str, float]:
    """Summed work seconds per kind, in the order the kinds run (kinds without steps left out)."""
    return {k: float((g["end"] - g["start"]).dt.total_seconds().sum())
            for k in COLORS for g in [tasks[tasks["kind"] == k]] if len(g)}


def overhead_seconds(tasks: pd.DataFrame) -> float:
    """Ray's share around the work: submitted -> start plus end -> landed, summed over steps."""
    before = (tasks["start"] - tasks["submitted"]).dt.total_seconds().clip(lower=0)
    after = (tasks["landed"] - tasks["end"]).dt.total_seconds().clip(lower=0)
    return float(before.sum() + after.sum())


def invocations(sweep: dict) -> list[tuple[pd.Timestamp, float]]:
    """(start, wall_s) of each invocation of a sweep: its earlier ones (`previous_runs`) and the last."""
    out = []
    for r in list(sweep.get("previous_runs") or []) + [sweep]:
        start = pd.to_datetime(r.get("started_at"), utc=True, errors="coerce")
        if not pd.isna(start) and isinstance(r.get("wall_s"), (int, float)):
            out.append((start, float(r["wall_s"])))
    return sorted(out, key=lambda s: s[0])


def place(tasks: pd.DataFrame, invs: list[tuple[pd.Timestamp, float]]) -> pd.DataFrame:
    """Add `x0` / `x1`: seconds on the sweep's own clock, its invocations laid end to end (the pauses
    between invocations left out)."""
    tasks = tasks.copy()
    offsets = [sum(w for _, w in invs[:i]) for i in range(len(invs))]
    x0 = []
    for start in tasks["start"]:
        i = max([k for k, (s, _) in enumerate(invs) if s.floor("s") <= start] or [0])
        x0.append(offsets[i] + (start - invs[i][0]).total_seconds() if invs else 0.0)
    tasks["x0"] = x0
    tasks["x1"] = tasks["x0"] + (tasks["end"] - tasks["start"]).dt.total_seconds()
    return tasks


def lane_stats(tasks: pd.DataFrame, wall_s: float) -> pd.DataFrame:
    """Per lane: steps, busy seconds (work of any kind but an actor's start) and busy % of `wall_s`."""
    rows = []
    for lane, g in tasks.groupby("lane", sort=True):
        work = g[g["kind"] != "start"]
        busy = busy_seconds(work["start"], work["end"])
        rows.append({"lane": lane, "steps": len(g), "busy_s": busy, "busy_pct": 100 * busy / wall_s if wall_s else None})
    return pd.DataFrame(rows, columns=["lane", "steps", "busy_s", "busy_pct"])


def draw_lanes(ax, tasks: pd.DataFrame, lanes: list[str]) -> None:
    """A bar per step (x0..x1) on its lane, coloured by kind; red and hatched when it did not end ok."""
    for y, lane in enumerate(lanes):
        for r in tasks[tasks["lane"] == lane].itertuples():
            ok = r.status == "ok"
            ax.barh(y, max(r.x1 - r.x0, 0.01), left=r.x0, height=0.7, color=COLORS.get(r.kind, "#999999"),
                    edgecolor="black" if ok else "red", linewidth=0.3, hatch=None if ok else "//")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes, fontsize=8)
    ax.invert_yaxis()


def draw(tasks: pd.DataFrame, stats: pd.DataFrame, wall_s: float, path: Path):
    from matplotlib.patches import Patch

    lanes = list(stats["lane"])
    fig = figure((12, max(2.5, 0.55 * len(lanes) + 1.6)))
    ax = fig.add_subplot()
    draw_lanes(ax, tasks, lanes)
    ax.set_yticklabels([f"{r.lane}\nbusy {r.busy_pct:.0f}%" for r in stats.itertuples()], fontsize=8)
    ax.set_xlim(0, max(wall_s, float(tasks["x1"].max()), 1.0) * 1.01)
    ax.set_xlabel("seconds of the sweep's wall time (invocations end to end)")
    ax.set_title(f"Where the time went: {len(tasks)} steps on {len(lanes)} lane(s) in {wall_s:.0f} s", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    kinds = [k for k in COLORS if (tasks["kind"] == k).any()]
    ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in kinds], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    files.write_figure(fig, path, dpi=110)
    return fig


def load(run_dir: Path) -> tuple[pd.DataFrame, float, int]:
    """(steps with lanes and x0/x1, the summed wall time of every invocation, invocations)."""
    try:
        sweep = files.read_json(Path(run_dir) / "sweep.json")
    except (OSError, ValueError):
        sweep = {}
    invs = invocations(sweep if isinstance(sweep, dict) else {})
    steps = read_steps(run_dir).dropna(subset=["start", "end"])
    return (place(assign_lanes(steps), invs) if len(steps) else steps), sum(w for _, w in invs), len(invs)


def section(run_dir: str | Path, out_dir: str | Path | None = None) -> list[str]:
    """The report's "Where the time went" (markdown lines); draws out_dir/timeline.png."""
    steps, wall, n_inv = load(Path(run_dir))
    if steps.empty:
        return []
    stats = lane_stats(steps, wall)
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw(steps, stats, wall, out / "timeline.png")
    kinds = seconds_by_kind(steps)
    lines = ["## Where the time went", "",
             f"{n_inv} invocation(s), {wall:.0f} s of wall time in all (Ray's start and the report included); "
             f"{len(steps)} steps (runner/engine/steps.py). Busy: a step of ours working on that lane "
             "(an actor's process start not counted).", "", "![timeline](timeline.png)", ""]
    lines += markdown_table(["lane", "steps", "busy s", "busy % of wall"],
                    [[r.lane, r.steps, f"{r.busy_s:.0f}", f"{r.busy_pct:.0f}" if r.busy_pct is not None else "—"]
                     for r in stats.itertuples()]) + [""]
    rows = [[k, int((steps["kind"] == k).sum()), f"{s:.1f}"] for k, s in kinds.items()]
    rows.append(["Ray around the steps (scheduling, transfers)", len(steps), f"{overhead_seconds(steps):.1f}"])
    return lines + markdown_table(["kind", "steps", "seconds"], rows) + [""]
