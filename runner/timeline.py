"""Where a sweep's time went: one bar per task on one lane per GPU, idle time per lane, `timeline.png`.

Reads the merged files of a sweep folder (training.parquet, results.parquet, pairs.parquet,
rechecks.parquet; any may be missing). A task is timed by its rows' `started_at` / `finished_at`, stamped
inside the task (runner/tasks.py): rows written before `started_at` existed, and rows the driver wrote for
a task that died, have no start and are counted but not drawn. So a lane's idle time is everything its
GPU spent outside a task's own clock: Ray starting, the gaps between phases, and each task's fresh worker
process (Ray worker start, imports, arguments) before the task's function begins.

Lanes: a row with a `gpu_uuid` is on that GPU ("<node>/GPU n", n counted per node in UUID order). A CPU
row is on its Ray node (or its pid when the node is not recorded); tasks that overlap on one CPU node
(trainings take one CPU each) are packed into slots, one lane each, so no bar hides another.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from runner import startup
from runner.plots import figure

# (kind, merged file, the column that names the task, its start and end columns); kinds in the order they
# run. A bench task times all its variants, then its pairs, then checks each variant (runner/tasks.py): a
# variant's "bench" bar is its preparing and timing (round-robin with the group's others: see
# _end_to_end_per_process), its "check" bar the kernel breakdown and the checks.
# Rows older than `timed_at` have one bench bar to `finished_at`, checks included, and no check bar.
SOURCES = (("train", "training.parquet", "model", "started_at", "finished_at"),
           ("bench", "results.parquet", "variant_id", "started_at", "timed_at"),
           ("pair", "pairs.parquet", "variant_id", "started_at", "finished_at"),
           ("check", "results.parquet", "variant_id", "checks_started_at", "finished_at"),
           ("re-check", "rechecks.parquet", "variant_id", "started_at", "finished_at"))
COLORS = {"train": "#4C72B0", "bench": "#55A868", "pair": "#DD8452", "check": "#937860", "re-check": "#8172B3"}
TASK_COLUMNS = ["kind", "name", "status", "start", "end", "gpu_uuid", "node", "hostname", "pid"]


# ---- rows -> tasks -------------------------------------------------------------------------------------

def read_frames(run_dir: Path) -> dict[str, pd.DataFrame]:
    """kind -> that kind's merged rows; a missing or unreadable file is an empty frame (no bars)."""
    frames = {}
    for kind, name, *_ in SOURCES:
        path = Path(run_dir) / name
        try:
            frames[kind] = pd.read_parquet(path) if path.exists() else pd.DataFrame()
        except Exception:  # a damaged merged file costs its bars, not the report
            frames[kind] = pd.DataFrame()
    return frames


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def tasks_from_frames(frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per task (a training's epoch rows, a bench's repeat rows are one task), and per kind the
    number of tasks without a start (not drawn)."""
    parts, untimed = [], {}
    for kind, _, key, start, end in SOURCES:
        df = frames.get(kind, pd.DataFrame())
        if df.empty or key not in df.columns:
            continue
        ends = _col(df, end)
        if kind == "bench":  # rows from before the split: the bar runs to the task row's end
            ends = ends.where(ends.notna(), _col(df, "finished_at"))
        if kind == "check":  # a row without checks (skipped, failed, or older than the split) has no bar
            df = df[_col(df, start).notna()]
            if df.empty:
                continue
        t = pd.DataFrame({"kind": kind, "name": df[key].astype(str), "status": _col(df, "status"),
                          "start": pd.to_datetime(_col(df, start), utc=True, format="ISO8601"),
                          "end": pd.to_datetime(ends, utc=True, format="ISO8601"),
                          "gpu_uuid": _col(df, "gpu_uuid"), "node": _col(df, "ray_node_id"),
                          "hostname": _col(df, "hostname"), "pid": _col(df, "pid")})
        missing = t["start"].isna() | t["end"].isna()
        untimed[kind] = int(t.loc[missing, "name"].nunique())
        # A task's rows share its start; the last row (a training's summary) ends it and holds its status.
        timed = t[~missing].sort_values("end", kind="stable")
        parts.append(timed.groupby(["name", "start"], sort=False).agg(
            {"kind": "first", "status": "last", "end": "max", "gpu_uuid": "first", "node": "first",
             "hostname": "first", "pid": "first"}).reset_index())
    tasks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TASK_COLUMNS)
    tasks = _end_to_end_per_process(tasks[TASK_COLUMNS])
    return tasks.sort_values("start", kind="stable").reset_index(drop=True), untimed


def _end_to_end_per_process(tasks: pd.DataFrame) -> pd.DataFrame:
    """One process's bars of a kind laid end to end: a bench or re-check task times its variants' repeats
    round-robin (runner/round_robin.py), so each variant's row runs from its preparation to its last repeat,
    across the others'. In order of their ends, each bar keeps its end and starts where the one before ended
    (or at the earliest start still to place): no second is counted twice (seconds per kind, a CPU node's
    slots), their union and gaps stay as they were, and bars timed one after another are left as they are.
    Rows without node or pid are left as they are."""
    tasks = tasks.copy()
    for _, g in tasks.groupby(["kind", "node", "pid"], sort=False):
        g = g.sort_values("end", kind="stable")
        earliest_left = g["start"][::-1].cummin()[::-1]  # the earliest start of this bar and those after it
        covered = None
        for i in g.index:
            tasks.at[i, "start"] = earliest_left[i] if covered is None else max(covered, earliest_left[i])
            covered = tasks.at[i, "end"]
    return tasks


# ---- lanes ---------------------------------------------------------------------------------------------

def _node_labels(tasks: pd.DataFrame) -> dict[str, str]:
    """ray_node_id -> its hostname; node ids sharing a hostname (a local multi-node cluster) get an id tail."""
    hosts = tasks.dropna(subset=["node"]).groupby("node")["hostname"].first()
    clash = hosts.dropna().duplicated(keep=False)
    return {n: (f"{h}:{n[:6]}" if clash.get(n, False) else h) if isinstance(h, str) else str(n)[:8]
            for n, h in hosts.items()}


def _pack(starts: list, ends: list) -> list[int]:
    """Slot of each interval (sorted by start): the first slot free at its start (greedy interval packing)."""
    free_at: list = []  # per slot, when its last task ends
    slots = []
    for s, e in zip(starts, ends):
        slot = next((i for i, f in enumerate(free_at) if f <= s), len(free_at))
        if slot == len(free_at):
            free_at.append(e)
        free_at[slot] = e
        slots.append(slot)
    return slots


def assign_lanes(tasks: pd.DataFrame) -> pd.DataFrame:
    """Add `lane` (its label): a GPU's tasks on that GPU's lane, a CPU node's on packed slot lanes."""
    tasks = tasks.copy()
    names = _node_labels(tasks)
    node = tasks["node"].map(lambda n: names.get(n) if isinstance(n, str) else None).fillna(tasks["hostname"])
    on_gpu = tasks["gpu_uuid"].notna()
    # A GPU's node: any of its rows that names one (training rows carry no hostname).
    gpus = tasks[on_gpu].assign(n=node[on_gpu]).groupby("gpu_uuid")["n"].first().fillna("node ?")
    gpus = gpus.reset_index().sort_values(["n", "gpu_uuid"])
    index = {u: f"{n}/GPU {i}" for _, g in gpus.groupby("n") for i, (u, n) in enumerate(zip(g["gpu_uuid"], g["n"]))}
    tasks["lane"] = tasks["gpu_uuid"].map(index).astype(object)  # object even when no task had a GPU
    node = node.fillna(tasks["pid"].map(lambda p: None if pd.isna(p) else f"pid {int(p)}")).fillna("node ?")
    for n in node[~on_gpu].unique():
        rows = tasks.index[~on_gpu & (node == n)]  # already sorted by start
        slots = _pack(list(tasks.loc[rows, "start"]), list(tasks.loc[rows, "end"]))
        tasks.loc[rows, "lane"] = [f"{n}/CPU" + (f" slot {s}" if max(slots) > 0 else "") for s in slots]
    return tasks


# ---- figures and numbers -------------------------------------------------------------------------------

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


def lane_stats(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per lane: tasks, busy and idle seconds over the span from the first start to the last end."""
    if tasks.empty:
        return pd.DataFrame(columns=["lane", "tasks", "busy_s", "idle_s"])
    span = (tasks["end"].max() - tasks["start"].min()).total_seconds()
    rows = [{"lane": lane, "tasks": len(g), "busy_s": busy_seconds(g["start"], g["end"])}
            for lane, g in tasks.groupby("lane", sort=True)]
    out = pd.DataFrame(rows)
    out["idle_s"] = (span - out["busy_s"]).clip(lower=0.0)
    return out


def draw_lanes(ax, tasks: pd.DataFrame, lanes: list[str], x0: pd.Series, x1: pd.Series) -> None:
    """A bar per task (from x0 to x1 seconds) on its lane's row, coloured by kind; red and hatched = not ok."""
    for y, lane in enumerate(lanes):
        for i in tasks.index[tasks["lane"] == lane]:
            ok = tasks.at[i, "status"] == "ok"
            ax.barh(y, max(x1[i] - x0[i], 0.01), left=x0[i], height=0.7, color=COLORS[tasks.at[i, "kind"]],
                    edgecolor="black" if ok else "red", linewidth=0.4, hatch=None if ok else "//")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes, fontsize=8)
    ax.invert_yaxis()


def seconds_by_kind(tasks: pd.DataFrame) -> dict[str, float]:
    """Summed task seconds per kind, in the order the kinds run (kinds without tasks left out)."""
    return {k: float((g["end"] - g["start"]).dt.total_seconds().sum())
            for k in COLORS for g in [tasks[tasks["kind"] == k]] if len(g)}


def draw(tasks: pd.DataFrame, stats: pd.DataFrame, path: Path):
    """The timeline: a lane per GPU (or CPU slot), a bar per task coloured by kind; hatched = not ok."""
    from matplotlib.patches import Patch
    lanes = list(stats["lane"])
    fig = figure((12, max(2.5, 0.55 * len(lanes) + 1.6)))
    ax = fig.add_subplot()
    t0 = tasks["start"].min()
    draw_lanes(ax, tasks, lanes, (tasks["start"] - t0).dt.total_seconds(), (tasks["end"] - t0).dt.total_seconds())
    ax.set_yticklabels([f"{r.lane}\nidle {r.idle_s:.0f} s" for r in stats.itertuples()], fontsize=8)
    span = (tasks["end"].max() - t0).total_seconds()
    ax.set_xlim(0, span * 1.01 if span > 0 else 1)
    ax.set_xlabel("seconds since the sweep's first task started")
    ax.set_title(f"Where the time went: {len(tasks)} tasks on {len(lanes)} lane(s), {span:.1f} s first start "
                 "to last end (gaps: idle; hatched: error / skipped)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    kinds = [k for k in COLORS if (tasks["kind"] == k).any()]
    ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in kinds], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def load(run_dir: Path, frames: dict[str, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, dict[str, int], dict]:
    """Tasks (with lanes) of the sweep folder's latest invocation; per kind the tasks not drawn (no start),
    plus under "earlier" those of earlier invocations; and sweep.json. `frames`: its rows already read."""
    run_dir = Path(run_dir)
    try:
        sweep = json.loads((run_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        sweep = {}
    tasks, untimed = tasks_from_frames(read_frames(run_dir) if frames is None else frames)
    since = pd.to_datetime(sweep.get("started_at"), utc=True, errors="coerce") if isinstance(sweep, dict) else None
    if since is not None and not pd.isna(since):
        # A resumed sweep keeps rows from earlier invocations: they would stretch the axis over the pause.
        untimed["earlier"] = int((tasks["start"] < since.floor("s")).sum())
        tasks = tasks[tasks["start"] >= since.floor("s")].reset_index(drop=True)
    return assign_lanes(tasks), untimed, sweep if isinstance(sweep, dict) else {}


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def section(run_dir: str | Path, out_dir: str | Path | None = None) -> list[str]:
    """The report's "Where the time went" (markdown lines); draws out_dir/timeline.png when tasks are timed."""
    frames = read_frames(Path(run_dir))
    tasks, untimed, sweep = load(Path(run_dir), frames)
    if tasks.empty and not any(untimed.values()):
        return []
    lines = ["## Where the time went", ""]
    if tasks.empty:
        why = ("every row was reused from an earlier invocation" if untimed.get("earlier")
               else "no task row records `started_at` (rows written before it existed)")
        return lines + [f"No timeline: {why}.", ""]
    stats = lane_stats(tasks)
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw(tasks, stats, out / "timeline.png")
    span = (tasks["end"].max() - tasks["start"].min()).total_seconds()
    wall = sweep.get("wall_s")
    lines += [f"{len(tasks)} tasks ran from the first start to the last end in {span:.1f} s"
              + (f" (this invocation's wall time, Ray's start included: {float(wall):.1f} s)"
                 if isinstance(wall, (int, float)) else "") + ". Idle: time a lane ran none of its tasks "
              "(between phases, and each fresh worker process starting before its task's clock begins).", "",
              "![timeline](timeline.png)", ""]
    per_kind = [[k, int((tasks["kind"] == k).sum()), f"{sec:.1f}"] for k, sec in seconds_by_kind(tasks).items()]
    lines += _table(["kind", "tasks", "summed s"], per_kind) + [""]
    lines += _table(["lane", "tasks", "busy s", "idle s", "busy %"],
                    [[r.lane, r.tasks, f"{r.busy_s:.1f}", f"{r.idle_s:.1f}",
                      f"{100 * r.busy_s / span:.0f}" if span > 0 else "—"] for r in stats.itertuples()]) + [""]
    return lines + _host_wait(Path(run_dir)) + startup.section(frames) + _not_drawn(untimed)


def host_waits(run_dir: Path) -> pd.Series | None:
    """Each benchmarked variant's wait for the host lock (seconds); None without results or the column."""
    path = Path(run_dir) / "results.parquet"
    try:
        df = pd.read_parquet(path, columns=["variant_id", "host_wait_s"]) if path.exists() else None
    except (OSError, ValueError, KeyError):  # an older file without the column
        return None
    if df is None or df["host_wait_s"].isna().all():
        return None
    return df.dropna(subset=["host_wait_s"]).drop_duplicates("variant_id")["host_wait_s"]


def _host_wait(run_dir: Path) -> list[str]:
    """What keeping every timing alone on its host cost: the benchmarks' waits for the host lock."""
    w = host_waits(run_dir)
    if w is None:
        return []
    return [f"Benchmarks waited {w.sum():.1f} s in all (longest {w.max():.1f} s, {len(w)} variants) for the host "
            "to themselves: a timing holds the machine exclusively while other tasks may only prepare, "
            "compile or check (runner/hostlock.py).", ""]


def _not_drawn(untimed: dict[str, int]) -> list[str]:
    parts = [f"{n} {k} task(s) without `started_at` (older rows, or a task that died)"
             for k, n in untimed.items() if n and k != "earlier"]
    if untimed.get("earlier"):
        parts.append(f"{untimed['earlier']} task(s) of earlier invocations of this sweep (rows reused)")
    return ["Not drawn: " + "; ".join(parts) + ".", ""] if parts else []
