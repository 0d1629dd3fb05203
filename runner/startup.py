"""How long each task's fresh worker process took to start, split by what it waited for.

Every task runs in a fresh Ray worker (max_calls=1: runner/sweep.py says why), and the timeline shows a gap
before each task's first bar. The rows say where that gap goes (columns from runner/worker_setup.py):

    worker_started_at   the worker's setup hook begins (Ray has started the process and imported itself)
    worker_ready_at     the hook's imports are done (torch, this project), inside a shared host hold,
                        so this includes any wait for another task's timing
    started_at          the task's first row begins: after its CUDA context, its fetches of checkpoint and
                        data from the object store and, for a bench task, the GPU's launch floor
"""
from __future__ import annotations

import pandas as pd

COLUMNS = ["ray_node_id", "pid", "worker_started_at", "worker_ready_at", "started_at"]


def processes(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per task process that recorded its start: imports_s and setup_s (seconds). `frames` are the
    sweep folder's merged rows by kind, as runner/timeline.read_frames gives them (read once per report)."""
    parts = [df[COLUMNS] for df in frames.values() if set(COLUMNS) <= set(df.columns)]
    if not parts:
        return pd.DataFrame(columns=["imports_s", "setup_s"])
    rows = pd.concat(parts).dropna(subset=["worker_started_at", "worker_ready_at", "started_at"])
    if rows.empty:
        return pd.DataFrame(columns=["imports_s", "setup_s"])
    for c in ("worker_started_at", "worker_ready_at", "started_at"):
        rows[c] = pd.to_datetime(rows[c], utc=True, format="ISO8601")
    per = rows.groupby(["ray_node_id", "pid", "worker_started_at"], dropna=False).agg(
        ready=("worker_ready_at", "first"), first=("started_at", "min")).reset_index()
    return pd.DataFrame({"imports_s": (per["ready"] - per["worker_started_at"]).dt.total_seconds(),
                         "setup_s": (per["first"] - per["ready"]).dt.total_seconds()})


def section(frames: dict[str, pd.DataFrame]) -> list[str]:
    """The report's "**Task start-up.**" paragraph (markdown lines), or nothing when no row recorded it."""
    p = processes(frames)
    if p.empty:
        return []
    return [f"**Task start-up.** {len(p)} task processes recorded their start (runner/startup.py). Imports "
            f"(torch and this project, waiting for any timing on the host): median {p.imports_s.median():.1f} s, "
            f"longest {p.imports_s.max():.1f} s, {p.imports_s.sum():.0f} s in all. From there to the task's first "
            f"row (CUDA context, fetching checkpoint and data, the launch floor): median "
            f"{p.setup_s.median():.1f} s, longest {p.setup_s.max():.1f} s, {p.setup_s.sum():.0f} s in all. "
            "Ray's own start of each process comes before both and is not in them.", ""]
