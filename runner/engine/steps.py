"""Every unit of work of a sweep, as the driver saw it: the timeline's and the time breakdown's one source.

A step is a training task or one call on a benchmark actor (start, load, prepare, time, pair, check,
profile, recheck). The driver records when it submitted the step and when its result landed; the step
itself records when it began and ended inside its process. So, per step:

    (start - submitted) + (landed - end)   Ray's scheduling, argument and result transfer (and, for a
                                           training task, its worker process's start and imports)
    end - start                            the work itself

Written to `runs/<sweep>/steps/<invocation>.parquet` after each landing (atomic; a resumed sweep adds a
file, so the report sums every invocation); runner/timeline.py reads them all.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from runner import results
from runner.schema import STEPS_SCHEMA


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class StepLog:
    """The steps of this invocation, rewritten to its own file after every landing."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "steps" / f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}.parquet"
        self.rows: list[dict] = []

    def add(self, step: dict | None, *, submitted: str, actor: str = "", status: str = "ok", landed: str | None = None,
            **fallback) -> None:
        """Record one landed step: `step` as the worker reported it, or (a task that died) `fallback`."""
        row = {**fallback, **(step or {}), "submitted": submitted, "landed": landed or now(), "actor": actor,
               "status": status}
        row.setdefault("start", None)
        row.setdefault("end", None)
        self.rows.append({k: row.get(k) for k in STEPS_SCHEMA.names})
        results.write_rows(self.rows, self.path, STEPS_SCHEMA)
