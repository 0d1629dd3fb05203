"""Runs once in every Ray worker process of a sweep, before its first task (Ray's `worker_process_setup_hook`).

A worker's start is host work too: importing torch, its CUDA libraries and this project takes a core for
seconds. Outside any hold it overlapped the other GPU's timings; on 2x H200 (reports/h200x2-default/, at
42d5e65) the first variant of a bench task that started beside another task's start read 1.2-2.1x its
re-check. Here the imports happen inside a shared hold (runner/hostlock.py), so a starting worker waits
for a timing instead of slowing it. What stays outside: the interpreter's and Ray's own start, before the hook.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone

HOOK = "runner.worker_setup.setup"  # the runtime_env value (runner/sweep.py sets it)

# When this worker's hook began and when its imports were done (ISO UTC, ms), for every row the worker
# writes (tasks.place): with the row's started_at they split a task's start-up into Ray's start of the
# process, the imports (with any wait for a timing) and the task's own set-up (CUDA context, fetches).
# Empty outside a Ray worker with the hook (tests, `runner train`): the columns are None then.
times: dict[str, str] = {}


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def setup() -> None:
    times["worker_started_at"] = _stamp()
    try:
        from runner import hostlock

        with hostlock.busy():
            import torch  # noqa: F401
            import runner.tasks  # noqa: F401
    except Exception as e:  # a hook that raises kills the worker: a slower timing beats a dead sweep
        print(f"{HOOK}: {type(e).__name__}: {e}", file=sys.stderr)
    times["worker_ready_at"] = _stamp()
